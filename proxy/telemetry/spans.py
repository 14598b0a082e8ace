"""What telemetry keeps about one request while it runs, and the attributes its spans get from it
(policy notes, the outcome, what the client was told).

The outermost layer opens a `RequestTrace`; the upstream wrapper adds one `UpstreamCall` per call
of the upstream. Everything is ended together when the answer is over, with the times recorded
when things happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from proxy.errors import SidecarError
from proxy.exchange import ANONYMOUS, Endpoint, Exchange, Reply
from proxy.settings import UpstreamConfig
from proxy.telemetry import genai
from proxy.telemetry.genai import Attributes, StreamFacts
from proxy.telemetry.recorder import OK, SpanRecord, Trace, span_context

_SCALARS = (bool, int, float, str)


class UpstreamCall:
    """One call of the upstream: its CLIENT span, its timings and what its answer said."""

    __slots__ = ("attrs", "end_ns", "ended", "error", "facts", "first", "operation", "reply",
                 "routed", "sent", "span_id", "start_ns")

    def __init__(self, span_id: int | None, operation: str | None, attrs: dict[str, Any],
                 routed: Mapping[str, Any] | None) -> None:
        self.span_id = span_id
        self.operation = operation
        self.attrs = attrs  # operation, provider, model, server: span and metric attributes
        self.routed = routed  # the routed upstream's attributes, already in attrs
        self.start_ns = time.time_ns()
        self.sent = time.perf_counter()
        self.first: float | None = None
        self.ended: float | None = None
        self.end_ns = 0
        self.error: BaseException | None = None
        self.reply: Reply | None = None
        self.facts: StreamFacts | None = None

    def failed(self, exc: BaseException) -> None:
        self.error = exc
        self.ended = time.perf_counter()
        self.end_ns = time.time_ns()

    def answered(self, reply: Reply) -> None:
        self.reply = reply
        if reply.stream is None:
            self.ended = time.perf_counter()
            self.end_ns = time.time_ns()
        elif reply.sse:
            self.facts = StreamFacts()
            reply.stream = self._watch(reply.stream)

    async def _watch(self, frames: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        facts = self.facts
        assert facts is not None
        try:
            async with aclosing(frames) as inner:
                async for frame in inner:
                    if self.first is None:
                        self.first = time.perf_counter()
                    facts.feed(frame)
                    yield frame
        finally:
            self.ended = time.perf_counter()
            self.end_ns = time.time_ns()

    @property
    def duration(self) -> float:
        return (self.ended or time.perf_counter()) - self.sent

    @property
    def time_to_first_chunk(self) -> float | None:
        return None if self.first is None else self.first - self.sent


class RequestTrace:
    """One request: its trace and SERVER span id (None without spans), the caller's span and
    the upstream calls made."""

    __slots__ = ("calls", "extra", "noted_at", "overhead", "remote_parent", "span_id",
                 "start_ns", "trace")

    def __init__(self) -> None:
        self.start_ns = time.time_ns()
        self.trace: Trace | None = None
        self.span_id = 0
        self.remote_parent: SpanContext | None = None
        self.extra: Mapping[str, Any] = {}
        self.calls: list[UpstreamCall] = []
        self.noted_at: dict[str, int] = {}
        self.overhead = 0.0

    def context(self) -> SpanContext | None:
        """The SERVER span's context (for the policies' own spans)."""
        return None if self.trace is None else span_context(self.trace, self.span_id)

    def mark_notes(self, ex: Exchange) -> None:
        """Decisions made on the way in are dated when the upstream is called."""
        if ex.notes:
            now = time.time_ns()
            for policy in ex.notes:
                self.noted_at.setdefault(policy, now)


def server_route(ex: Exchange) -> str:
    if ex.endpoint is Endpoint.PASSTHROUGH:
        return "/v1/*"
    return ex.path


def note_attributes(policy: str, note: Mapping[str, Any]) -> Attributes:
    """A note's attributes as `sidecar.<policy>.<key>`; dicts are flattened, None is dropped."""
    out: Attributes = {}
    for key, value in note.items():
        name = key if key.startswith(f"{policy}.") else f"{policy}.{key}"
        _put(out, f"sidecar.{name}", value, depth=0)
    return out


def _put(out: Attributes, name: str, value: Any, depth: int) -> None:
    if value is None:
        return
    if isinstance(value, _SCALARS):
        out[name] = value
    elif isinstance(value, Mapping) and depth < 3:
        for key, item in value.items():
            _put(out, f"{name}.{key}", item, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        out[name] = _sequence(tuple(value))
    else:
        out[name] = str(value)


def _sequence(items: tuple[Any, ...]) -> AttributeValue:
    # OpenTelemetry wants homogeneous sequences of scalars.
    kinds = {type(item) for item in items}
    if len(kinds) == 1 and kinds <= {str, bool, int, float}:
        return items
    return tuple(str(item) for item in items)


def server_span(ex: Exchange, request: RequestTrace, trace_ids: Trace, reply: Reply | None,
                exc: BaseException | None, cache: str | None, end: int) -> SpanRecord:
    """The SERVER span: what was asked and what the client got (status, cache result,
    upstream, limits left, cost, identity)."""
    if exc is None and reply is not None and reply.status < 400 and reply.outcome != "error":
        status, error = reply.status, None
    else:
        status, error = outcome(reply, exc)
    route = "/v1/*" if ex.endpoint is _PASSTHROUGH else ex.path
    common: dict[str, Any] = {"http.request.method": ex.method, "http.route": route,
                              "url.path": ex.path}
    own: dict[str, Any] = {"sidecar.request_id": ex.request_id}
    if request.extra:
        own.update(request.extra)
    if ex.model:
        common[ga.GEN_AI_REQUEST_MODEL] = ex.model
    common["http.response.status_code"] = status
    if cache:
        common["sidecar.cache"] = cache
    _reply_facts(common, own, ex, reply)
    identity = ex.identity
    if identity is ANONYMOUS:
        # No identity layer ran (no [[keys]], no other policy asking who calls): the team is
        # the header's, as the identity layer would have said; a key name needs [[keys]].
        team = ex.headers.get("x-sidecar-team")
        if team:
            common["sidecar.team"] = team
    else:
        if identity.team:
            common["sidecar.team"] = identity.team
        if identity.key_name:
            common["sidecar.key_name"] = identity.key_name
    span_status = OK
    if error is not None:
        common["error.type"] = error
        if status >= 500:
            span_status = Status(StatusCode.ERROR, error)
    parent = request.remote_parent
    return SpanRecord(f"{ex.method} {route}", trace_ids, request.span_id,
                      None if parent is None else parent.span_id, parent, SpanKind.SERVER,
                      request.start_ns, end, common, own, span_status)


def _reply_facts(common: dict[str, Any], own: dict[str, Any], ex: Exchange,
                 reply: Reply | None) -> None:
    """The upstream, the sidecar's own limits left, the cost and a stream's outcome."""
    ours = ex.reply_headers
    theirs = reply.headers if reply is not None else _NO_HEADERS
    for name, value in ours.items():
        lower = name.lower()
        # Only the sidecar's own limits: the upstream's x-ratelimit-* arrive on reply.headers.
        if lower.startswith("x-ratelimit-remaining-") and value.isdigit():
            own[f"sidecar.ratelimit.remaining_{lower[22:]}"] = int(value)
    upstream = ours.get("x-sidecar-upstream")
    if upstream is None:
        upstream = theirs.get("x-sidecar-upstream")
    if upstream is not None:
        common["sidecar.upstream"] = upstream
    cost = ours.get("x-sidecar-cost-usd")
    if cost is None:
        cost = theirs.get("x-sidecar-cost-usd")
    if cost is not None:
        own["sidecar.cost_usd"] = number(cost)
    if reply is not None and reply.stream is not None:
        common["sidecar.stream.outcome"] = reply.outcome


_PASSTHROUGH = Endpoint.PASSTHROUGH
_NO_HEADERS: dict[str, str] = {}


def upstream_attributes(upstream: UpstreamConfig) -> dict[str, Any]:
    parts = urlsplit(upstream.base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {ga.GEN_AI_PROVIDER_NAME: upstream.provider, "server.address": parts.hostname or "",
            "server.port": port}


def outcome(reply: Reply | None, exc: BaseException | None) -> tuple[int, str | None]:
    """(HTTP status the client sees, error.type or None)."""
    if exc is not None:
        if isinstance(exc, SidecarError):
            return exc.status, exc.code or type(exc).__name__
        if isinstance(exc, asyncio.CancelledError):
            return 499, "cancelled"
        return 500, type(exc).__qualname__
    assert reply is not None
    if reply.status >= 400:
        return reply.status, genai.error_code(reply.status, reply.body)
    if reply.outcome == "error":
        return reply.status, "stream_error"
    return reply.status, None


def call_error(call: UpstreamCall) -> str | None:
    if call.error is not None:
        return outcome(None, call.error)[1]
    reply = call.reply
    if reply is None:
        return None
    if reply.status >= 400:
        return genai.error_code(reply.status, reply.body)
    if reply.outcome == "error" and call.facts is not None:
        return call.facts.error_code()
    return None


def header(ex: Exchange, reply: Reply | None, name: str) -> str | None:
    value = ex.reply_headers.get(name)
    if value is None and reply is not None:
        value = reply.headers.get(name)
    return value


def noted(ex: Exchange, key: str) -> str:
    for note in ex.notes.values():
        value = note.get(key)
        if isinstance(value, str):
            return value
    return ""


def number(value: str) -> str | float:
    try:
        return float(value)
    except ValueError:
        return value
