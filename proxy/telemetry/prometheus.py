"""Prometheus text exposition (format 0.0.4) of what an in-memory, cumulative metric reader holds.

Names follow the OpenTelemetry-to-Prometheus rules the collector's exporter also uses: dots become
underscores, `s` adds `_seconds`, counters end in `_total`, so one dashboard fits both paths.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    Metric,
    MetricsData,
    Sum,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BAD_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_BAD_LABEL = re.compile(r"[^a-zA-Z0-9_]")
_UNITS = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}


def render(reader: InMemoryMetricReader) -> bytes:
    data = reader.get_metrics_data()
    return render_data(data).encode() if data is not None else b""


def render_data(data: MetricsData) -> str:
    families: dict[str, list[str]] = {}
    for metric in _metrics(data):
        name = metric_name(metric)
        lines = families.get(name)
        if lines is None:
            lines = families[name] = _header(name, metric)
        lines.extend(_samples(name, metric))
    return "".join("\n".join(lines) + "\n" for lines in families.values())


def _metrics(data: MetricsData) -> Iterable[Metric]:
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            yield from scope.metrics


def metric_name(metric: Metric) -> str:
    name = _BAD_NAME.sub("_", metric.name)
    unit = _UNITS.get(metric.unit or "")
    if unit and not name.endswith(f"_{unit}"):
        name = f"{name}_{unit}"
    return name


def _kind(metric: Metric) -> str:
    data = metric.data
    if isinstance(data, Histogram):
        return "histogram"
    if isinstance(data, Sum) and data.is_monotonic:
        return "counter"
    return "gauge"


def _header(name: str, metric: Metric) -> list[str]:
    description = (metric.description or "").replace("\\", "\\\\").replace("\n", "\\n")
    return [f"# HELP {name} {description}", f"# TYPE {name} {_kind(metric)}"]


def _samples(name: str, metric: Metric) -> list[str]:
    data = metric.data
    lines: list[str] = []
    if isinstance(data, Histogram):
        for point in data.data_points:
            labels = dict(point.attributes or {})
            cumulative = 0
            for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
                cumulative += count
                lines.append(f"{name}_bucket{_labels(labels, le=_number(bound))} {cumulative}")
            lines.append(f"{name}_bucket{_labels(labels, le='+Inf')} {point.count}")
            lines.append(f"{name}_sum{_labels(labels)} {_number(point.sum)}")
            lines.append(f"{name}_count{_labels(labels)} {point.count}")
    elif isinstance(data, Sum | Gauge):
        suffix = "_total" if _kind(metric) == "counter" and not name.endswith("_total") else ""
        for number in data.data_points:
            lines.append(f"{name}{suffix}{_labels(dict(number.attributes or {}))} "
                         f"{_number(number.value)}")
    return lines


def _labels(attributes: Mapping[str, Any], le: str | None = None) -> str:
    pairs = [f'{_label_name(k)}="{_escape(v)}"' for k, v in sorted(attributes.items())]
    if le is not None:
        pairs.append(f'le="{le}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _label_name(key: str) -> str:
    name = _BAD_LABEL.sub("_", key)
    return f"_{name}" if name[:1].isdigit() else name


def _escape(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))
