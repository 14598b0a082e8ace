"""Reading what a sidecar with `exporter = "memory"` traced and measured."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from proxy.telemetry.setup import Providers
from tests.harness import Sidecar

MEMORY = '[tracing]\nexporter = "memory"\n'
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


def providers(sidecar: Sidecar) -> Providers:
    found = sidecar.services.context.extras["telemetry"]
    assert isinstance(found, Providers)
    return found


def spans(sidecar: Sidecar) -> list[ReadableSpan]:
    sidecar.idle()  # every request's spans ended
    exporter = providers(sidecar).spans
    assert exporter is not None
    return list(exporter.get_finished_spans())


def one(found: list[ReadableSpan], kind: SpanKind | None = None, name: str | None = None
        ) -> ReadableSpan:
    matching = [s for s in found if (kind is None or s.kind is kind)
                and (name is None or s.name == name)]
    assert len(matching) == 1, [(s.name, s.kind) for s in found]
    return matching[0]


def points(sidecar: Sidecar, name: str) -> list[Any]:
    """Data points of metric `name` (cumulative), [] when it was never recorded."""
    sidecar.idle()
    data = providers(sidecar).metrics_data()
    found: list[Any] = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def attrs(point_or_span: Any) -> dict[str, Any]:
    return dict(point_or_span.attributes or {})
