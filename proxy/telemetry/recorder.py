"""Spans made cheap: ids and the sampling decision when a request starts, the finished span built
once when it ends and handed straight to the span processor.

An SDK `Span` costs ~15 us to start and end plus ~1 us per attribute (locks, validation); here a
request's spans are plain `ReadableSpan`s assembled from facts the layer recorded anyway. Our own
attribute values are valid by construction, so nothing is re-checked on the hot path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

from proxy import __version__

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
OK = Status(StatusCode.UNSET)
# The default sampler (parentbased_always_on); the recorder decides it without calling it.
FOLLOW_PARENT = ParentBased(ALWAYS_ON)


def parse_traceparent(headers: Mapping[str, str]) -> SpanContext | None:
    """The caller's span from W3C `traceparent` (+ `tracestate`); None when absent or invalid."""
    value = headers.get("traceparent")
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match.group(1) == "ff" or (match.group(1) == "00" and match.group(5)):
        return None
    trace_id, span_id = int(match.group(2), 16), int(match.group(3), 16)
    if not trace_id or not span_id:
        return None
    state = headers.get("tracestate")
    return SpanContext(trace_id, span_id, is_remote=True,
                       trace_flags=TraceFlags(int(match.group(4), 16) & TraceFlags.SAMPLED),
                       trace_state=TraceState.from_header([state]) if state else None)


def traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


class SpanRecorder:
    """Makes span contexts and emits finished spans to one processor."""

    def __init__(self, processor: SpanProcessor, sampler: Sampler, resource: Resource,
                 admit: Callable[[], bool]) -> None:
        self._processor = processor
        self._admit = admit
        self._follow_parent = sampler is FOLLOW_PARENT
        self._sampler = sampler
        self._resource = resource
        self._scope = InstrumentationScope("llm-sidecar", __version__)
        self._ids = RandomIdGenerator()

    def root(self, headers: Mapping[str, str], name: str,
             ) -> tuple[SpanContext, SpanContext | None, Mapping[str, Any]]:
        """(the SERVER span's context, the caller's span, attributes the sampler asks for)."""
        parent = parse_traceparent(headers)
        trace_id = parent.trace_id if parent is not None else self._ids.generate_trace_id()
        if self._follow_parent:  # the default sampler, decided without building a Context
            flags = parent.trace_flags if parent is not None else _SAMPLED
            state = parent.trace_state if parent is not None else None
            return SpanContext(trace_id, self._ids.generate_span_id(), is_remote=False,
                               trace_flags=flags, trace_state=state), parent, {}
        parent_context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None
        result = self._sampler.should_sample(parent_context, trace_id, name, SpanKind.SERVER)
        flags = _SAMPLED if result.decision is Decision.RECORD_AND_SAMPLE else _NOT_SAMPLED
        context = SpanContext(trace_id, self._ids.generate_span_id(), is_remote=False,
                              trace_flags=flags, trace_state=result.trace_state)
        return context, parent, result.attributes or {}

    def child(self, parent: SpanContext) -> SpanContext:
        """A child shares its parent's sampling decision, as with the parent-based samplers."""
        return SpanContext(parent.trace_id, self._ids.generate_span_id(), is_remote=False,
                           trace_flags=parent.trace_flags, trace_state=parent.trace_state)

    def recording(self, context: SpanContext) -> bool:
        """Whether this request's spans are wanted: sampled, and the exporter is not failing.
        Asked once per request, before any attribute is built."""
        return bool(context.trace_flags.sampled) and self._admit()

    def emit(self, name: str, context: SpanContext, parent: SpanContext | None, kind: SpanKind,
             start: int, end: int, attributes: dict[str, Any], status: Status = OK) -> None:
        self._processor.on_end(ReadableSpan(
            name, context, parent, self._resource, attributes, kind=kind, status=status,
            start_time=start, end_time=end, instrumentation_scope=self._scope))
