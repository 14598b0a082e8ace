"""The objects one request travels in: `Exchange` (request side) and `Reply` (answer side).

Policies read and annotate the Exchange on the way in and look at or wrap the Reply on the way out.
A streamed Reply is an async iterator of complete SSE frames that policies may wrap; nothing
waits for a whole stream before the first frame reaches the client.
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from multidict import CIMultiDictProxy

from proxy.settings import UpstreamConfig


class Endpoint(enum.StrEnum):
    CHAT = "chat.completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"
    MODELS = "models"
    PASSTHROUGH = "passthrough"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling. `key_id` is a short SHA-256 of the presented key, never the key."""

    key_id: str
    user: str | None = None
    team: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    key_name: str | None = None


ANONYMOUS = Identity(key_id="anonymous")

Outcome = Literal["pending", "complete", "error", "aborted"]


@dataclass(slots=True, eq=False)
class Exchange:
    """One client request on its way through the pipeline."""

    request_id: str
    endpoint: Endpoint
    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]
    client_ip: str
    raw_body: bytes
    body: dict[str, Any] | None
    model: str | None = None
    stream: bool = False
    identity: Identity = ANONYMOUS
    upstream: UpstreamConfig | None = None
    started: float = field(default_factory=time.perf_counter)
    upstream_wait: float = 0.0
    reply_headers: dict[str, str] = field(default_factory=dict)
    needs_usage: bool = False
    usage_injected: bool = False
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)
    upstream_headers: dict[str, str] = field(default_factory=dict)
    body_stream: AsyncIterator[bytes] | None = None
    body_changed: bool = False
    input_tokens: int | None = None  # the estimate of `body`, once counted (see TokenCounter)

    def body_bytes(self) -> bytes:
        """The bytes to send upstream: the client's own unless a policy changed the body."""
        if self.body_changed and self.body is not None:
            return orjson.dumps(self.body)
        return self.raw_body

    def replace_body(self, body: dict[str, Any]) -> None:
        self.body = body
        self.body_changed = True
        self.input_tokens = None

    def note(self, policy: str, **attributes: Any) -> None:
        """Record a policy's decision; telemetry turns each note into a child span."""
        self.notes.setdefault(policy, {}).update(attributes)


class Reply:
    """An answer: a JSON (or raw) body, or a stream of SSE frames / raw chunks."""

    __slots__ = ("_parsed", "body", "headers", "outcome", "sse", "status", "stream", "usage")

    def __init__(
        self,
        status: int,
        headers: dict[str, str] | None = None,
        *,
        body: bytes | None = None,
        stream: AsyncGenerator[bytes, None] | None = None,
        sse: bool = False,
    ) -> None:
        self.status = status
        self.headers = headers if headers is not None else {}
        self.body = body
        self.stream: AsyncGenerator[bytes, None] | None = stream
        self.sse = sse
        self.usage: dict[str, Any] | None = None
        self.outcome: Outcome = "pending" if stream is not None else "complete"
        self._parsed: Any = None

    @classmethod
    def from_json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
        reply = cls(status, headers, body=orjson.dumps(payload))
        reply.headers.setdefault("Content-Type", "application/json")
        reply._parsed = payload
        return reply

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The parsed JSON body (parsed once); None when there is none or it is not JSON."""
        if self._parsed is None and self.body:
            try:
                self._parsed = orjson.loads(self.body)
            except orjson.JSONDecodeError:
                return None
        return self._parsed

    def replace_json(self, payload: Any) -> None:
        self.body = orjson.dumps(payload)
        self._parsed = payload

    def final_usage(self) -> dict[str, Any] | None:
        """`usage` of a finished answer: from the stream's usage event or the JSON body."""
        if self.usage is not None or self.stream is not None:
            return self.usage
        payload = self.json()
        if isinstance(payload, dict):
            usage = payload.get("usage") or (payload.get("response") or {}).get("usage")
            if isinstance(usage, dict):
                return usage
        return None

    def on_end(self, callback: Callable[[Reply], Awaitable[None]]) -> None:
        """Run `callback` once the answer is over: at once for a body, at a stream's end otherwise.

        For streams it runs however the stream ends (complete, upstream error, client gone), so
        accounting is never lost; `self.outcome` says which.
        """
        if self.stream is None:
            raise RuntimeError("on_end on a non-stream reply: handle it after call_next returns")
        self.stream = _then(self.stream, self, callback)

    def on_complete(self, callback: Callable[[list[bytes]], Awaitable[object]]) -> None:
        """Relay a stream untouched and, only if it completes, hand its frames to `callback`."""
        if self.stream is not None:
            self.stream = _collected(self.stream, self, callback)

    def map_frames(self, transform: Callable[[bytes], bytes | None]) -> None:
        """Rewrite (or drop, by returning None) each frame of a stream as it passes."""
        if self.stream is not None:
            self.stream = _mapped(self.stream, transform)


async def _then(inner: AsyncGenerator[bytes, None], reply: Reply,
                callback: Callable[[Reply], Awaitable[None]]) -> AsyncGenerator[bytes, None]:
    try:
        async with aclosing(inner) as frames:
            async for frame in frames:
                yield frame
    finally:
        if reply.outcome == "pending":
            reply.outcome = "aborted"
        await callback(reply)


async def _mapped(inner: AsyncGenerator[bytes, None],
                  transform: Callable[[bytes], bytes | None]) -> AsyncGenerator[bytes, None]:
    async with aclosing(inner) as frames:
        async for frame in frames:
            out = transform(frame)
            if out is not None:
                yield out


async def _collected(inner: AsyncGenerator[bytes, None], reply: Reply,
                     callback: Callable[[list[bytes]], Awaitable[object]]
                     ) -> AsyncGenerator[bytes, None]:
    frames: list[bytes] = []
    async with aclosing(inner) as stream:
        async for frame in stream:
            frames.append(frame)
            yield frame
    if reply.outcome == "complete":
        await callback(frames)
