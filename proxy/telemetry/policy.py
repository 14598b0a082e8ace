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
from contextvars import ContextVar
from random import getrandbits
from typing import Any, Literal

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from pydantic import BaseModel, ConfigDict, Field

from proxy import __version__
from proxy.errors import RateLimited
from proxy.exchange import Exchange, Reply
from proxy.pipeline import Handler, PolicyContext
from proxy.settings import UpstreamConfig
from proxy.telemetry import genai, metrics, prometheus, setup
from proxy.telemetry.recorder import OK, ChildTracer, SpanRecord, Trace, new_id
from proxy.telemetry.spans import (
    RequestTrace,
    UpstreamCall,
    call_error,
    note_attributes,
    noted,
    server_route,
    server_span,
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
    policy = TracingPolicy(config, providers, ctx.settings.upstreams,
                           _restores_values(ctx.settings.pii))
    if providers.tracer_provider is not None:
        ctx.tracer = ChildTracer(providers.tracer_provider.get_tracer("llm-sidecar", __version__),
                                 policy.server_span)
    if config.prometheus:
        ctx.extras["prometheus"] = lambda: prometheus.render_data(
            providers.metrics_data()).encode()
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
        # The request being served, for the upstream wrapper and the policies' spans.
        self._current: ContextVar[RequestTrace | None] = ContextVar("sidecar-request",
                                                                    default=None)
        self._upstreams = {u.name: upstream_attributes(u) for u in upstreams}
        self._failed = False

    async def aclose(self) -> None:
        await asyncio.to_thread(self._providers.shutdown)

    def server_span(self) -> SpanContext | None:
        request = self._current.get()
        return None if request is None else request.context()

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        request = RequestTrace()
        if ex.stream:
            ex.needs_usage = True  # token metrics for streams too; the client sees no difference
        if self._spans is not None:
            request.trace, request.span_id, request.remote_parent, request.extra = (
                self._spans.start(ex.headers, lambda: f"{ex.method} {server_route(ex)}"))
        token = self._current.set(request)
        try:
            reply = await call_next(ex)
        except BaseException as exc:
            request.overhead = time.perf_counter() - ex.started - ex.upstream_wait
            self._finish_safely(ex, request, None, exc)
            raise
        finally:
            self._current.reset(token)
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
        current = self._current

        async def traced(ex: Exchange) -> Reply:
            request = current.get()
            if request is None:
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
        if ex.notes:
            request.mark_notes(ex)
        operation = genai.OPERATIONS.get(ex.endpoint._value_)
        attrs: dict[str, Any] = {}
        if operation is not None:
            attrs[ga.GEN_AI_OPERATION_NAME] = operation
            if ex.model:
                attrs[ga.GEN_AI_REQUEST_MODEL] = ex.model
        upstream = ex.upstream
        routed = self._upstreams.get(upstream.name) if upstream is not None else None
        if routed is not None:
            attrs.update(routed)
        span_id = None
        trace_ids = request.trace
        if trace_ids is not None:
            span_id = getrandbits(64) or new_id(64)
            headers = ex.upstream_headers
            headers["traceparent"] = f"00-{trace_ids[0]:032x}-{span_id:016x}-{trace_ids[1]:02x}"
            if trace_ids[2] is not None:
                headers["tracestate"] = trace_ids[2].to_header()
        call = UpstreamCall(span_id, operation, attrs, routed)
        request.calls.append(call)
        return call

    def _finish(self, ex: Exchange, request: RequestTrace, reply: Reply | None,
                exc: BaseException | None) -> None:
        trace_ids = request.trace
        spans = self._spans
        records: list[SpanRecord] | None = None
        if trace_ids is not None and trace_ids[1] & 1 and spans is not None and spans.admit():
            records = []
        measures = [self._end_call(ex, request, call, reply, records) for call in request.calls]
        self._metrics.record_request(request.overhead, [m for m in measures if m is not None])
        cache = ex.reply_headers.get("x-sidecar-cache")
        if cache is None and reply is not None:
            cache = reply.headers.get("x-sidecar-cache")
        if cache:
            _add(self._metrics.derived(metrics.CACHE_LOOKUPS), (("result", cache),))
        if isinstance(exc, RateLimited):
            _add(self._metrics.derived(metrics.RATELIMIT_REFUSALS),
                 (("kind", exc.type), ("limit", noted(ex, "rule"))))
        if records is None or spans is None or trace_ids is None:
            return
        end = time.time_ns()
        if ex.notes:
            self._note_spans(ex, request, trace_ids, end, records)
        records.append(server_span(ex, request, trace_ids, reply, exc, cache, end))
        spans.sink(records)

    def _end_call(self, ex: Exchange, request: RequestTrace, call: UpstreamCall,
                  final: Reply | None, records: list[SpanRecord] | None,
                  ) -> metrics.CallMeasures | None:
        """Ends the call's CLIENT span (when recording); returns what its metrics measure."""
        attrs = call.attrs
        reply = call.reply
        if reply is not None:
            # The router may have fallen back to another upstream than the one routed to.
            used = self._upstreams.get(reply.headers.get("x-sidecar-upstream", ""))
            if used is not None and used is not call.routed:
                attrs.update(used)
        if call.error is None and reply is not None and reply.status < 400 and (
                reply.outcome != "error"):
            error = None
        else:
            error = call_error(call)
        # The span's attributes: `common` recur from request to request, `own` do not.
        common: genai.Attributes = dict(attrs) if records is not None else {}
        own: genai.Attributes = {}
        tokens_in = tokens_out = None
        if reply is not None and error is None:
            if call.facts is not None:
                if records is not None:
                    call.facts.attributes(common, own)
                usage = reply.usage
            else:
                payload = reply.json()
                if records is not None:
                    genai.response_attributes(payload, common, own)
                usage = payload.get("usage") if isinstance(payload, dict) else None
            if usage:
                tokens_in, tokens_out = genai.usage_tokens(usage, own)
        if records is not None and call.span_id is not None:
            records.append(self._call_span(ex, request, call, common, own, error, final))
        if call.operation is None:
            return None
        key = (call.operation, attrs.get(ga.GEN_AI_PROVIDER_NAME),
               attrs.get(ga.GEN_AI_REQUEST_MODEL))
        return key, error, call.duration, call.time_to_first_chunk, tokens_in, tokens_out

    def _call_span(self, ex: Exchange, request: RequestTrace, call: UpstreamCall,
                   common: genai.Attributes, own: genai.Attributes, error: str | None,
                   final: Reply | None) -> SpanRecord:
        assert call.span_id is not None and request.trace is not None
        if call.operation is not None:
            genai.request_attributes(ex, call.operation, common, own)
            if self._capture:
                messages = genai.input_messages(ex)
                if messages is not None:
                    own[ga.GEN_AI_INPUT_MESSAGES] = messages
        if call.first is not None:
            own[ga.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = call.first - call.sent
        if self._capture_output and final is not None and final.stream is None:
            output = genai.output_messages(final.json())
            if output is not None:
                own[ga.GEN_AI_OUTPUT_MESSAGES] = output
        status = OK
        if error is not None:
            common["error.type"] = error
            status = Status(StatusCode.ERROR, error)
        reply = call.reply
        if reply is not None:
            common["http.response.status_code"] = reply.status
            attempts = reply.headers.get("x-sidecar-attempts")
            if attempts is not None and attempts.isdigit():
                common["sidecar.attempts"] = int(attempts)
        operation = call.operation
        name = f"{operation} {ex.model}" if operation and ex.model else (operation or ex.method)
        return SpanRecord(name, request.trace, call.span_id, request.span_id, None,
                          SpanKind.CLIENT, call.start_ns, call.end_ns or time.time_ns(), common,
                          own, status)

    def _note_spans(self, ex: Exchange, request: RequestTrace, trace_ids: Trace, now: int,
                    records: list[SpanRecord]) -> None:
        for policy, note in ex.notes.items():
            at = request.noted_at.get(policy, now)
            records.append(SpanRecord(f"policy {policy}", trace_ids, new_id(64),
                                      request.span_id, None, SpanKind.INTERNAL, at, at, {},
                                      note_attributes(policy, note), OK))


def _add(counter: metrics.CounterStore | None, key: metrics.Key) -> None:
    if counter is not None:
        counter.add(1, key)
