"""Provider setup from `[tracing]` and the OTEL_* environment."""

from __future__ import annotations

from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from proxy.telemetry.policy import TracingConfig
from proxy.telemetry.setup import build, sampler


def test_sampler_from_file_and_environment() -> None:
    config = TracingConfig(sampler="parentbased_traceidratio", sample_ratio=0.5)
    from_file = sampler(config, {})
    assert isinstance(from_file, ParentBased)
    assert "0.5" in from_file.get_description()
    from_env = sampler(config, {"OTEL_TRACES_SAMPLER": "traceidratio",
                                "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert isinstance(from_env, TraceIdRatioBased) and from_env.rate == 0.25


def test_unknown_sampler_in_environment_falls_back_to_the_file() -> None:
    chosen = sampler(TracingConfig(sampler="always_off"), {"OTEL_TRACES_SAMPLER": "jaeger_remote"})
    assert chosen.get_description() == "AlwaysOffSampler"


def test_exporter_none_keeps_metrics_for_prometheus() -> None:
    providers = build(TracingConfig(), {"OTEL_TRACES_EXPORTER": "none",
                                        "OTEL_METRICS_EXPORTER": "none"})
    try:
        assert providers.spans is None and providers.guards == []
        assert providers.recorder is None and providers.pusher is None
    finally:
        providers.shutdown()


def test_grpc_exporters_are_built_when_asked() -> None:
    providers = build(TracingConfig(protocol="grpc", endpoint="http://127.0.0.1:9", timeout=0.2), {})
    try:
        assert len(providers.guards) == 2
    finally:
        providers.shutdown()
