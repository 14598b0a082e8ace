"""Builds one app's telemetry plumbing from `[tracing]` and the standard `OTEL_*` environment
(which wins over the file), and shuts it down without stalling on a dead collector.

Providers are per app, never installed globally (`set_tracer_provider` is never called), so two
sidecars or two tests in one process share no spans or metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    InMemoryMetricReader,
    MetricExporter,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from proxy import __version__
from proxy.telemetry import metrics, otlp
from proxy.telemetry.batcher import SpanBatcher
from proxy.telemetry.export import (
    ExportLog,
    GuardedMetricExporter,
    GuardedSpanExporter,
    MetricPusher,
)
from proxy.telemetry.otlp import RecordExporter, SpanEncoder
from proxy.telemetry.recorder import FOLLOW_PARENT, Sink, SpanRecorder, processor_sink

if TYPE_CHECKING:
    from proxy.telemetry.policy import TracingConfig

log = logging.getLogger("proxy.telemetry")
SCOPE = InstrumentationScope("llm-sidecar", __version__)


class Providers:
    """One app's OpenTelemetry plumbing: the span recorder and processor, the metric stores, the
    SDK providers the policies' own instruments and spans go through, and the exporters."""

    def __init__(self, resource: Resource, tracer_provider: TracerProvider | None,
                 recorder: SpanRecorder | None, spans: InMemorySpanExporter | None,
                 health: ExportLog, flush_timeout: float) -> None:
        self.resource = resource
        self.tracer_provider = tracer_provider
        self.recorder = recorder
        self.spans = spans
        self.health = health
        self.flush_timeout = flush_timeout
        self.pull = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.pull], resource=resource,
                                            shutdown_on_exit=False)
        self.policy_meter = metrics.RecordingMeter(
            self.meter_provider.get_meter("llm-sidecar", __version__))
        self.instruments = metrics.Instruments(self.policy_meter)
        self.guards: list[GuardedSpanExporter | GuardedMetricExporter] = []
        self.pusher: MetricPusher | None = None

    def metrics_data(self) -> MetricsData:
        """Everything measured so far (cumulative): ours and the policies' own instruments."""
        theirs = self.pull.get_metrics_data()
        ours = ResourceMetrics(self.resource, [ScopeMetrics(SCOPE,
                                                            self.instruments.export(), "")], "")
        return MetricsData([*(theirs.resource_metrics if theirs else []), ours])

    def shutdown(self) -> None:
        """Flush what can be flushed within `flush_timeout` overall, then stop; blocking, so call
        it from a thread."""
        deadline = time.monotonic() + self.flush_timeout
        if self.pusher is not None:
            self.pusher.stop()
            if not self.health.failing:
                self.pusher.push(timeout=self.flush_timeout)
        if not self.health.failing and self.tracer_provider is not None:
            self.tracer_provider.force_flush(_millis_left(deadline))
        for guard in self.guards:
            guard.abandon()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        self.meter_provider.shutdown(timeout_millis=_millis_left(deadline) + 1000)
        self.health.detach()


def _millis_left(deadline: float) -> int:
    return max(int((deadline - time.monotonic()) * 1000), 0)


def build(config: TracingConfig, env: Mapping[str, str]) -> Providers:
    resource = Resource.create({
        "service.name": config.service_name, "service.version": __version__,
        **config.resource_attributes,
    }).merge(OTELResourceDetector().detect())
    health = ExportLog(_target(config, env))
    guards: list[GuardedSpanExporter | GuardedMetricExporter] = []
    spans: InMemorySpanExporter | None = None
    tracer_provider: TracerProvider | None = None
    recorder: SpanRecorder | None = None
    if config.traces:
        processor, sink, spans = _span_processor(config, env, health, guards, resource)
        chosen = sampler(config, env)
        tracer_provider = TracerProvider(resource=resource, sampler=chosen,
                                         shutdown_on_exit=False)
        if processor is not None and sink is not None:
            tracer_provider.add_span_processor(processor)
            recorder = SpanRecorder(sink, chosen, health.admit_spans)
    providers = Providers(resource, tracer_provider, recorder, spans, health,
                          min(config.timeout, 5.0))
    exporter = _metric_exporter(config, env, health, guards)
    if exporter is not None:
        interval = env.get("OTEL_METRIC_EXPORT_INTERVAL", "")
        seconds = int(interval) / 1000 if interval.isdigit() else config.metric_interval
        providers.pusher = MetricPusher(providers.metrics_data, exporter, seconds, config.timeout)
        providers.pusher.start()
    providers.guards = guards
    health.attach()
    return providers


def _exporter(env: Mapping[str, str], variable: str, default: str) -> str:
    # OTEL_*_EXPORTER may list several; the first one we know wins.
    for name in env.get(variable, "").split(","):
        if name.strip() in ("otlp", "console", "memory", "none"):
            return name.strip()
    return default


def _protocol(config: TracingConfig, env: Mapping[str, str], signal: str) -> str:
    return (env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or config.protocol).strip()


def _target(config: TracingConfig, env: Mapping[str, str]) -> str:
    return (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or config.endpoint
            or ("localhost:4317" if _protocol(config, env, "TRACES") == "grpc"
                else "http://localhost:4318"))


def _otlp_args(config: TracingConfig, env: Mapping[str, str], signal: str,
               grpc: bool) -> dict[str, Any]:
    """Constructor arguments only where the file sets something the environment does not."""
    args: dict[str, Any] = {}
    if config.endpoint and not (env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                                or env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")):
        base = config.endpoint.rstrip("/")
        args["endpoint"] = base if grpc else f"{base}/v1/{signal}"
    if config.headers and not env.get("OTEL_EXPORTER_OTLP_HEADERS"):
        args["headers"] = dict(config.headers)
    if not (env.get("OTEL_EXPORTER_OTLP_TIMEOUT")
            or env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT")):
        args["timeout"] = config.timeout
    return args


def _span_processor(config: TracingConfig, env: Mapping[str, str], health: ExportLog,
                    guards: list[GuardedSpanExporter | GuardedMetricExporter], resource: Resource,
                    ) -> tuple[SpanProcessor | None, Sink | None, InMemorySpanExporter | None]:
    """The processor the SDK's spans go to, the sink of our own span records (the same
    processor), and for `memory` the exporter holding them."""
    kind = _exporter(env, "OTEL_TRACES_EXPORTER", config.exporter)
    if kind == "none":
        return None, None, None
    if kind in ("memory", "console"):
        memory = InMemorySpanExporter() if kind == "memory" else None
        processor: SpanProcessor = (SimpleSpanProcessor(memory) if memory is not None
                                    else BatchSpanProcessor(ConsoleSpanExporter()))
        return processor, processor_sink(processor, resource, SCOPE), memory
    encoder = SpanEncoder(resource, SCOPE)
    guard = GuardedSpanExporter(_otlp_span_exporter(config, env, encoder), health)
    guards.append(guard)
    batcher = SpanBatcher(guard, env)
    return batcher, batcher.add, None


def _otlp_span_exporter(config: TracingConfig, env: Mapping[str, str],
                        encoder: SpanEncoder) -> RecordExporter:
    # Imported there: only the chosen transport is loaded (grpc costs ~100 ms to import).
    if _protocol(config, env, "TRACES") == "grpc":
        return otlp.grpc_exporter(encoder, **_otlp_args(config, env, "traces", grpc=True))
    return otlp.http_exporter(encoder, **_otlp_args(config, env, "traces", grpc=False))


def _metric_exporter(config: TracingConfig, env: Mapping[str, str], health: ExportLog,
                     guards: list[GuardedSpanExporter | GuardedMetricExporter],
                     ) -> MetricExporter | None:
    kind = _exporter(env, "OTEL_METRICS_EXPORTER", config.exporter)
    if not config.metrics or kind in ("none", "memory"):
        return None
    if kind == "console":
        return ConsoleMetricExporter()
    guard = GuardedMetricExporter(_otlp_metric_exporter(config, env), health)
    guards.append(guard)
    return guard


def _otlp_metric_exporter(config: TracingConfig, env: Mapping[str, str]) -> MetricExporter:
    if _protocol(config, env, "METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        return OTLPMetricExporter(**_otlp_args(config, env, "metrics", grpc=True))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HTTPMetricExporter,
    )
    return HTTPMetricExporter(**_otlp_args(config, env, "metrics", grpc=False))


SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio")


def sampler(config: TracingConfig, env: Mapping[str, str]) -> Sampler:
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or config.sampler
    ratio = config.sample_ratio
    arg = env.get("OTEL_TRACES_SAMPLER_ARG")
    if arg:
        try:
            ratio = min(max(float(arg), 0.0), 1.0)
        except ValueError:
            log.warning("OTEL_TRACES_SAMPLER_ARG=%r is not a number; using %s", arg, ratio)
    if name not in SAMPLERS:
        log.warning("OTEL_TRACES_SAMPLER=%r is not supported; using %s", name, config.sampler)
        name = config.sampler
    if name == "parentbased_always_on":
        return FOLLOW_PARENT
    root: Sampler = TraceIdRatioBased(ratio) if name.endswith("traceidratio") else (
        ALWAYS_OFF if name.endswith("always_off") else ALWAYS_ON)
    return ParentBased(root) if name.startswith("parentbased_") else root
