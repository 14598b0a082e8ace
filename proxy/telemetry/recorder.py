"""Spans made cheap: ids and the sampling decision when a request starts, the finished spans
recorded once when it ends and handed over together.

An SDK `Span` costs ~15 us to start and end plus ~1 us per attribute (locks, validation), and a
span processor's `on_end` ~2 us per span; here a request's spans are `SpanRecord`s assembled from
facts the layer recorded anyway and queued in one call. Our own attribute values are valid by
construction, so nothing is re-checked on the hot path. Whoever needs the SDK's `ReadableSpan`
(memory and console exporters, policies' own processors) gets one built from the record.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from random import getrandbits
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.types import Attributes

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


def new_id(bits: int) -> int:
    """A random trace (128) or span (64) id, never the invalid zero."""
    value = getrandbits(bits)
    while not value:
        value = getrandbits(bits)
    return value


# A request's trace: (trace id, flags, trace state or None), shared by all its spans.
Trace = tuple[int, TraceFlags, TraceState | None]


class SpanRecord:
    """A finished span as the sidecar recorded it: plain fields (ids as ints) and its
    attributes in two plain dicts. `common` holds those whose values recur from request to
    request (route, model, provider, status...), each key always with values of one type; `own`
    the rest (ids, token counts, timings, anything a policy noted). The exporter encodes
    `common` as one block. `remote_parent` is the caller's span when the parent is remote."""

    __slots__ = ("common", "end", "kind", "name", "own", "parent_id", "remote_parent",
                 "span_id", "start", "status", "trace")

    def __init__(self, name: str, trace_ids: Trace, span_id: int, parent_id: int | None,
                 remote_parent: SpanContext | None, kind: SpanKind, start: int, end: int,
                 common: dict[str, Any], own: dict[str, Any], status: Status) -> None:
        self.name = name
        self.trace = trace_ids
        self.span_id = span_id
        self.parent_id = parent_id
        self.remote_parent = remote_parent
        self.kind = kind
        self.start = start
        self.end = end
        self.common = common
        self.own = own
        self.status = status

    @property
    def context(self) -> SpanContext:
        return span_context(self.trace, self.span_id)

    @property
    def parent(self) -> SpanContext | None:
        if self.remote_parent is not None or self.parent_id is None:
            return self.remote_parent
        return span_context(self.trace, self.parent_id)

    @property
    def attributes(self) -> dict[str, Any]:
        return {**self.common, **self.own}

    def readable(self, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
        return ReadableSpan(self.name, self.context, self.parent, resource, self.attributes,
                            kind=self.kind, status=self.status, start_time=self.start,
                            end_time=self.end, instrumentation_scope=scope)


def span_context(trace_ids: Trace, span_id: int) -> SpanContext:
    return SpanContext(trace_ids[0], span_id, False, trace_ids[1], trace_ids[2])


Sink = Callable[[list[SpanRecord]], None]


def processor_sink(processor: SpanProcessor, resource: Resource,
                   scope: InstrumentationScope) -> Sink:
    """Hands records to an SDK span processor as `ReadableSpan`s (memory, console)."""

    def emit(records: list[SpanRecord]) -> None:
        for record in records:
            processor.on_end(record.readable(resource, scope))

    return emit


def readable(spans: Sequence[SpanRecord | ReadableSpan], resource: Resource,
             scope: InstrumentationScope) -> list[ReadableSpan]:
    return [s.readable(resource, scope) if isinstance(s, SpanRecord) else s for s in spans]


class SpanRecorder:
    """Decides a request's trace and ids, and hands its finished spans to a sink in one call."""

    def __init__(self, sink: Sink, sampler: Sampler, admit: Callable[[], bool]) -> None:
        self.sink = sink
        # Whether spans are wanted at all now (not while the exporter is failing).
        self.admit = admit
        self._follow_parent = sampler is FOLLOW_PARENT
        self._sampler = sampler

    def start(self, headers: Mapping[str, str], name: Callable[[], str],
              ) -> tuple[Trace, int, SpanContext | None, Mapping[str, Any]]:
        """(the request's trace, the SERVER span's id, the caller's span, attributes the
        sampler asks for). `name` is only asked for by samplers other than the default."""
        parent = parse_traceparent(headers)
        span_id = getrandbits(64) or new_id(64)
        if self._follow_parent:  # the default sampler, decided without building a Context
            if parent is None:
                return (getrandbits(128) or new_id(128), _SAMPLED, None), span_id, None, {}
            return (parent.trace_id, parent.trace_flags, parent.trace_state or None), span_id, \
                parent, {}
        trace_id = parent.trace_id if parent is not None else new_id(128)
        parent_context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None
        result = self._sampler.should_sample(parent_context, trace_id, name(), SpanKind.SERVER)
        flags = _SAMPLED if result.decision is Decision.RECORD_AND_SAMPLE else _NOT_SAMPLED
        return (trace_id, flags, result.trace_state or None), span_id, parent, \
            result.attributes or {}


class ChildTracer(trace.Tracer):
    """The tracer the policies get (`ctx.tracer`): the SDK's, with spans started without a
    parent made children of the request's SERVER span. The request's span is not put in the
    OpenTelemetry context on every request; it is found here only when a policy asks."""

    def __init__(self, inner: trace.Tracer, server_span: Callable[[], SpanContext | None]) -> None:
        self._inner = inner
        self._server_span = server_span

    def _parent(self, context: Context | None) -> Context | None:
        if context is not None:
            return context
        current = otel_context.get_current()
        if trace.get_current_span(current).get_span_context().is_valid:
            return None  # a policy's own span is current: it is the parent
        server = self._server_span()
        return None if server is None else trace.set_span_in_context(NonRecordingSpan(server),
                                                                     current)

    def start_span(self, name: str, context: Context | None = None,
                   kind: SpanKind = SpanKind.INTERNAL, attributes: Attributes = None,
                   links: Sequence[trace.Link] | None = None, start_time: int | None = None,
                   record_exception: bool = True,
                   set_status_on_exception: bool = True) -> trace.Span:
        return self._inner.start_span(name, self._parent(context), kind, attributes, links,
                                      start_time, record_exception, set_status_on_exception)

    @contextmanager  # as a decorator too: the parent is looked up at each call
    def start_as_current_span(  # type: ignore[override]  # the API's own decorator is private
            self, name: str, context: Context | None = None,
            kind: SpanKind = SpanKind.INTERNAL, attributes: Attributes = None,
            links: Sequence[trace.Link] | None = None, start_time: int | None = None,
            record_exception: bool = True, set_status_on_exception: bool = True,
            end_on_exit: bool = True) -> Iterator[trace.Span]:
        with self._inner.start_as_current_span(
                name, self._parent(context), kind, attributes, links, start_time,
                record_exception, set_status_on_exception, end_on_exit) as span:
            yield span
