"""The Prometheus text rendering of OpenTelemetry metrics."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from proxy.telemetry.prometheus import render


def _meter() -> tuple[MeterProvider, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader], shutdown_on_exit=False), reader


def test_counter_histogram_and_gauge() -> None:
    provider, reader = _meter()
    meter = provider.get_meter("t")
    meter.create_counter("sidecar.cache.lookups", "{lookup}", "Lookups.").add(3, {"result": "hit"})
    duration = meter.create_histogram("gen_ai.client.operation.duration", "s", "Duration.",
                                      explicit_bucket_boundaries_advisory=[0.1, 1.0])
    for value in (0.05, 0.5, 0.7, 5.0):
        duration.record(value, {"gen_ai.operation.name": "chat"})
    meter.create_up_down_counter("sidecar.inflight").add(2)
    text = render(reader).decode()
    assert "# TYPE sidecar_cache_lookups counter" in text
    assert 'sidecar_cache_lookups_total{result="hit"} 3\n' in text
    assert "# TYPE gen_ai_client_operation_duration_seconds histogram" in text
    name = "gen_ai_client_operation_duration_seconds"
    labels = 'gen_ai_operation_name="chat"'
    assert f'{name}_bucket{{{labels},le="0.1"}} 1' in text
    assert f'{name}_bucket{{{labels},le="1.0"}} 3' in text  # cumulative
    assert f'{name}_bucket{{{labels},le="+Inf"}} 4' in text
    assert f"{name}_count{{{labels}}} 4" in text
    assert f"{name}_sum{{{labels}}} 6.25" in text
    assert "# TYPE sidecar_inflight gauge" in text and "sidecar_inflight 2\n" in text
    provider.shutdown()


def test_nothing_recorded_renders_empty() -> None:
    provider, reader = _meter()
    assert render(reader) == b""
    provider.shutdown()


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


@given(st.text(max_size=40))
def test_label_values_survive_escaping(value: str) -> None:
    provider, reader = _meter()
    provider.get_meter("t").create_counter("c").add(1, {"tag": value})
    line = next(x for x in render(reader).decode().split("\n") if x.startswith("c_total"))
    match = re.fullmatch(r'c_total\{tag="((?:[^"\\]|\\.)*)"\} 1', line)
    assert match is not None, line
    assert _unescape(match.group(1)) == value
    provider.shutdown()
