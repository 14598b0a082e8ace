"""`[tracing]`: the outermost layer. A SERVER span per request continuing the caller's W3C trace,
a GenAI CLIENT span per upstream call, a span per policy decision, and the GenAI + sidecar metrics.

With `[tracing]` absent or `enabled = false` this module is never called: no span is built.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from pydantic import BaseModel, ConfigDict, Field

from proxy import __version__
from proxy.errors import RateLimited
from proxy.exchange import Exchange, Reply
from proxy.pipeline import Handler, PolicyContext
from proxy.settings import UpstreamConfig
from proxy.telemetry import genai, metrics, prometheus, setup
from proxy.telemetry.recorder import OK, traceparent
from proxy.telemetry.spans import (
    RequestTrace,
    UpstreamCall,
    call_error,
    header,
    note_attributes,
    noted,
    outcome,
    server_attributes,
    server_facts,
    server_route,
    upstream_attributes,
)
from proxy.units import Duration

log = logging.getLogger("proxy.telemetry")

Sampler = Literal["always_on", "always_off", "traceidratio", "parentbased_always_on",
                  "parentbased_always_off", "parentbased_traceidratio"]


class TracingConfig(BaseModel):
    """`[tracing]`. Every `OTEL_*` environment variable wins over the matching key here."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Trace requests and record metrics.")
    capture_content: bool = Field(
        False, description="Record the messages (after PII redaction) on the GenAI span.")
    traces: bool = Field(True, description="Build spans; false keeps only the metrics.")
    metrics: bool = Field(True, description="Export metrics over OTLP (see metric_interval).")
    prometheus: bool = Field(True, description="Serve the metrics as Prometheus text at /metrics.")
    exporter: Literal["otlp", "console", "memory", "none"] = Field(
        "otlp", description="Where spans and metrics go (OTEL_TRACES_EXPORTER / "
                            "OTEL_METRICS_EXPORTER); 'memory' keeps them in process, for tests.")
    endpoint: str = Field("", description="OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT); empty: "
                                          "http://localhost:4318 (http) or localhost:4317 (grpc).")
    protocol: Literal["http/protobuf", "grpc"] = Field(
        "http/protobuf", description="OTLP transport (OTEL_EXPORTER_OTLP_PROTOCOL).")
    headers: dict[str, str] = Field({}, description="Headers sent with every export "
                                                    "(OTEL_EXPORTER_OTLP_HEADERS).")
    timeout: Duration = Field(10.0, description="Timeout of one export (OTEL_EXPORTER_OTLP_TIMEOUT).")
    metric_interval: Duration = Field(60.0, description="Seconds between metric exports "
                                                        "(OTEL_METRIC_EXPORT_INTERVAL, in ms).")
    service_name: str = Field("llm-sidecar", description="service.name (OTEL_SERVICE_NAME).")
    resource_attributes: dict[str, str] = Field(
        {}, description="Extra resource attributes (OTEL_RESOURCE_ATTRIBUTES).")
    sampler: Sampler = Field("parentbased_always_on",
                             description="Trace sampler (OTEL_TRACES_SAMPLER).")
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0, description="Ratio for the traceidratio "
                                                                  "samplers (OTEL_TRACES_SAMPLER_ARG).")


Config = TracingConfig


async def create(config: TracingConfig, ctx: PolicyContext) -> TracingPolicy | None:
    if not config.enabled:
        return None
    providers = setup.build(config, os.environ)
    ctx.meter = providers.policy_meter
    if providers.tracer_provider is not None:
        ctx.tracer = providers.tracer_provider.get_tracer("llm-sidecar", __version__)
    if config.prometheus:
        ctx.extras["prometheus"] = lambda: prometheus.render_data(
            providers.metrics_data()).encode()
    policy = TracingPolicy(config, providers, ctx.settings.upstreams,
                           _restores_values(ctx.settings.pii))
    ctx.extras["telemetry"] = providers
    ctx.wrap_upstream(policy.wrap)
    return policy


def _restores_values(pii: Mapping[str, Any] | None) -> bool:
    # Pseudonymised answers carry the client's real values back out, so they are never captured.
    return pii is not None and "pseudonymize" in repr(pii)


class TracingPolicy:
    name = "tracing"

    def __init__(self, config: TracingConfig, providers: setup.Providers,
                 upstreams: list[UpstreamConfig], restores_values: bool) -> None:
        self._providers = providers
        self._spans = providers.recorder
        self._metrics = providers.instruments
        self._capture = config.capture_content
        self._capture_output = config.capture_content and not restores_values
        self._key = otel_context.create_key("sidecar-request")
        self._upstreams = {u.name: upstream_attributes(u) for u in upstreams}
        self._failed = False

    async def aclose(self) -> None:
        await asyncio.to_thread(self._providers.shutdown)

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        request = RequestTrace()
        if ex.stream:
            ex.needs_usage = True  # token metrics for streams too; the client sees no difference
        context = otel_context.set_value(self._key, request)
        if self._spans is not None:
            request.context, request.parent, request.extra = self._spans.root(
                ex.headers, f"{ex.method} {server_route(ex)}")
            # Spans the policies start themselves (ctx.tracer) become children of this one.
            context = trace.set_span_in_context(NonRecordingSpan(request.context), context)
        token = otel_context.attach(context)
        try:
            reply = await call_next(ex)
        except BaseException as exc:
            request.overhead = time.perf_counter() - ex.started - ex.upstream_wait
            self._finish_safely(ex, request, None, exc)
            raise
        finally:
            otel_context.detach(token)
        request.overhead = time.perf_counter() - ex.started - ex.upstream_wait
        if reply.stream is not None:
            reply.stream = self._at_end(ex, request, reply, reply.stream)
        else:
            self._finish_safely(ex, request, reply, None)
        return reply

    def _finish_safely(self, ex: Exchange, request: RequestTrace, reply: Reply | None,
                       exc: BaseException | None) -> None:
        """Telemetry never fails a request: a bug here is logged (once) and swallowed."""
        try:
            self._finish(ex, request, reply, exc)
        except Exception:
            if not self._failed:
                self._failed = True
                log.exception("telemetry could not record request %s (logged once)",
                              ex.request_id)

    async def _at_end(self, ex: Exchange, request: RequestTrace, reply: Reply,
                      frames: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        try:
            async with aclosing(frames) as inner:
                async for frame in inner:
                    yield frame
        finally:
            self._finish_safely(ex, request, reply, None)

    def wrap(self, upstream: Handler) -> Handler:
        """The CLIENT span around the upstream call; the upstream gets its traceparent."""

        async def traced(ex: Exchange) -> Reply:
            request = otel_context.get_value(self._key)
            if not isinstance(request, RequestTrace):
                return await upstream(ex)
            call = self._start_call(ex, request)
            try:
                reply = await upstream(ex)
            except BaseException as exc:
                call.failed(exc)
                raise
            call.answered(reply)
            return reply

        return traced

    def _start_call(self, ex: Exchange, request: RequestTrace) -> UpstreamCall:
        request.mark_notes(ex)
        operation = genai.OPERATIONS.get(ex.endpoint)
        attrs: dict[str, Any] = {}
        if operation is not None:
            attrs[ga.GEN_AI_OPERATION_NAME] = operation
            if ex.model:
                attrs[ga.GEN_AI_REQUEST_MODEL] = ex.model
        upstream = ex.upstream
        if upstream is not None and upstream.name in self._upstreams:
            attrs.update(self._upstreams[upstream.name])
        context = None
        if self._spans is not None and request.context is not None:
            context = self._spans.child(request.context)
            ex.upstream_headers["traceparent"] = traceparent(context)
            if context.trace_state:
                ex.upstream_headers["tracestate"] = context.trace_state.to_header()
        call = UpstreamCall(context, operation, attrs)
        request.calls.append(call)
        return call

    def _finish(self, ex: Exchange, request: RequestTrace, reply: Reply | None,
                exc: BaseException | None) -> None:
        context = request.context
        recording = self._spans is not None and context is not None and self._spans.recording(
            context)
        for call in request.calls:
            self._end_call(ex, request, call, reply, recording)
        self._metrics.overhead.record(request.overhead)
        cache = header(ex, reply, "x-sidecar-cache")
        if cache:
            _add(self._metrics.derived(metrics.CACHE_LOOKUPS), (("result", cache),))
        if isinstance(exc, RateLimited):
            _add(self._metrics.derived(metrics.RATELIMIT_REFUSALS),
                 (("kind", exc.type), ("limit", noted(ex, "rule"))))
        if not recording or self._spans is None or context is None:
            return
        end = time.time_ns()
        status, error = outcome(reply, exc)
        self._note_spans(ex, request, context, end)
        attrs = server_attributes(ex, request)
        attrs["http.response.status_code"] = status
        attrs.update(server_facts(ex, reply, cache))
        span_status = OK
        if error is not None:
            attrs["error.type"] = error
            if status >= 500:
                span_status = Status(StatusCode.ERROR, error)
        self._spans.emit(f"{ex.method} {server_route(ex)}", context, request.parent,
                         SpanKind.SERVER, request.start_ns, end, attrs, span_status)

    def _end_call(self, ex: Exchange, request: RequestTrace, call: UpstreamCall,
                  final: Reply | None, recording: bool) -> None:
        attrs = call.attrs
        upstream_reply = call.reply
        if upstream_reply is not None:
            # The router may have fallen back to another upstream than the one routed to.
            used = self._upstreams.get(upstream_reply.headers.get("x-sidecar-upstream", ""))
            if used is not None:
                attrs.update(used)
        error = call_error(call)
        answer: genai.Attributes = {}
        tokens_in = tokens_out = None
        if upstream_reply is not None and error is None:
            if call.facts is not None:
                answer = call.facts.attributes() if recording else {}
                usage = upstream_reply.usage
            else:
                payload = upstream_reply.json()
                answer = genai.response_attributes(payload) if recording else {}
                usage = payload.get("usage") if isinstance(payload, dict) else None
            tokens_in, tokens_out, usage_attrs = genai.usage_tokens(usage)
            answer.update(usage_attrs)
        if call.operation is not None:
            self._record_call(call, error, tokens_in, tokens_out)
        if recording and call.context is not None:
            self._emit_call(ex, request, call, answer, error, final)

    def _record_call(self, call: UpstreamCall, error: str | None, tokens_in: int | None,
                     tokens_out: int | None) -> None:
        base = tuple((name, call.attrs[name]) for name in _METRIC_ATTRIBUTES
                     if call.attrs.get(name) is not None)
        self._metrics.duration.record(
            call.duration, (*base, ("error.type", error)) if error else base)
        ttfc = call.time_to_first_chunk
        if ttfc is not None:
            self._metrics.first_chunk.record(ttfc, base)
        if tokens_in is not None:
            self._metrics.tokens.record(tokens_in, (*base, (ga.GEN_AI_TOKEN_TYPE, "input")))
        if tokens_out is not None:
            self._metrics.tokens.record(tokens_out, (*base, (ga.GEN_AI_TOKEN_TYPE, "output")))

    def _emit_call(self, ex: Exchange, request: RequestTrace, call: UpstreamCall,
                   answer: genai.Attributes, error: str | None, final: Reply | None) -> None:
        assert self._spans is not None and call.context is not None
        attrs: dict[str, Any] = dict(call.attrs)
        if call.operation is not None:
            attrs.update(genai.request_attributes(ex, call.operation))
            if self._capture:
                messages = genai.input_messages(ex)
                if messages is not None:
                    attrs[ga.GEN_AI_INPUT_MESSAGES] = messages
        attrs.update(answer)
        ttfc = call.time_to_first_chunk
        if ttfc is not None:
            attrs[ga.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = ttfc
        if self._capture_output and final is not None and final.stream is None:
            output = genai.output_messages(final.json())
            if output is not None:
                attrs[ga.GEN_AI_OUTPUT_MESSAGES] = output
        status = OK
        if error is not None:
            attrs["error.type"] = error
            status = Status(StatusCode.ERROR, error)
        if call.reply is not None:
            attrs["http.response.status_code"] = call.reply.status
            attempts = call.reply.headers.get("x-sidecar-attempts", "")
            if attempts.isdigit():
                attrs["sidecar.attempts"] = int(attempts)
        name = f"{call.operation} {ex.model}" if call.operation and ex.model else (
            call.operation or ex.method)
        self._spans.emit(name, call.context, request.context, SpanKind.CLIENT, call.start_ns,
                         call.end_ns or time.time_ns(), attrs, status)

    def _note_spans(self, ex: Exchange, request: RequestTrace, parent: SpanContext,
                    now: int) -> None:
        assert self._spans is not None
        for policy, note in ex.notes.items():
            at = request.noted_at.get(policy, now)
            self._spans.emit(f"policy {policy}", self._spans.child(parent), parent,
                             SpanKind.INTERNAL, at, at, note_attributes(policy, note))


_METRIC_ATTRIBUTES = (ga.GEN_AI_OPERATION_NAME, ga.GEN_AI_PROVIDER_NAME, ga.GEN_AI_REQUEST_MODEL)


def _add(counter: metrics.CounterStore | None, key: metrics.Key) -> None:
    if counter is not None:
        counter.add(1, key)
