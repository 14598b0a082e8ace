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
from opentelemetry.trace import SpanContext
from opentelemetry.util.types import AttributeValue

from proxy.errors import SidecarError
from proxy.exchange import Endpoint, Exchange, Reply
from proxy.settings import UpstreamConfig
from proxy.telemetry import genai
from proxy.telemetry.genai import Attributes, StreamFacts

_SCALARS = (bool, int, float, str)


class UpstreamCall:
    """One call of the upstream: its CLIENT span, its timings and what its answer said."""

    __slots__ = ("attrs", "context", "end_ns", "ended", "error", "facts", "first", "operation",
                 "reply", "sent", "start_ns")

    def __init__(self, context: SpanContext | None, operation: str | None,
                 attrs: dict[str, Any]) -> None:
        self.context = context
        self.operation = operation
        self.attrs = attrs  # operation, provider, model, server: span and metric attributes
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
        self._end()

    def answered(self, reply: Reply) -> None:
        self.reply = reply
        if reply.stream is not None and reply.sse:
            self.facts = StreamFacts()
            reply.stream = self._watch(reply.stream)
            return
        if reply.stream is None:
            self._end()

    def _end(self) -> None:
        self.ended = time.perf_counter()
        self.end_ns = time.time_ns()

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
            self._end()

    @property
    def duration(self) -> float:
        return (self.ended or time.perf_counter()) - self.sent

    @property
    def time_to_first_chunk(self) -> float | None:
        return None if self.first is None else self.first - self.sent


class RequestTrace:
    """The SERVER span of one request (its context, its caller) and the upstream calls made."""

    __slots__ = ("calls", "context", "extra", "noted_at", "overhead", "parent", "start_ns")

    def __init__(self) -> None:
        self.start_ns = time.time_ns()
        self.context: SpanContext | None = None
        self.parent: SpanContext | None = None
        self.extra: Mapping[str, Any] = {}
        self.calls: list[UpstreamCall] = []
        self.noted_at: dict[str, int] = {}
        self.overhead = 0.0

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
        out[name] = _sequence(list(value))
    else:
        out[name] = str(value)


def _sequence(items: list[Any]) -> AttributeValue:
    # OpenTelemetry wants homogeneous sequences of scalars.
    kinds = {type(item) for item in items}
    if len(kinds) == 1 and kinds <= {str, bool, int, float}:
        return items
    return [str(item) for item in items]


def server_attributes(ex: Exchange, request: RequestTrace) -> dict[str, Any]:
    attrs: dict[str, Any] = {"http.request.method": ex.method, "http.route": server_route(ex),
                             "url.path": ex.path, "sidecar.request_id": ex.request_id,
                             **request.extra}
    if ex.model:
        attrs[ga.GEN_AI_REQUEST_MODEL] = ex.model
    return attrs


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


def server_facts(ex: Exchange, reply: Reply | None, cache: str | None) -> dict[str, Any]:
    """What the client got beyond the status: cache result, upstream, limits left, identity."""
    facts: dict[str, Any] = {}
    if cache:
        facts["sidecar.cache"] = cache
    for name, value in ex.reply_headers.items():
        lower = name.lower()
        # Only the sidecar's own limits: the upstream's x-ratelimit-* arrive on reply.headers.
        if lower.startswith("x-ratelimit-remaining-") and value.isdigit():
            facts[f"sidecar.ratelimit.remaining_{lower[22:]}"] = int(value)
    upstream = header(ex, reply, "x-sidecar-upstream")
    if upstream is not None:
        facts["sidecar.upstream"] = upstream
    cost = header(ex, reply, "x-sidecar-cost-usd")
    if cost is not None:
        facts["sidecar.cost_usd"] = number(cost)
    if reply is not None and reply.stream is not None:
        facts["sidecar.stream.outcome"] = reply.outcome
    identity = ex.identity
    if identity.team:
        facts["sidecar.team"] = identity.team
    if identity.key_name:
        facts["sidecar.key_name"] = identity.key_name
    return facts
