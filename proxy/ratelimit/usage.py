"""What a request costs in tokens before it runs (estimate) and after (real usage), and a stream
wrapper that reports a stream's end however it ends, even when it never started.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from types import TracebackType
from typing import Any

from proxy.exchange import Endpoint, Exchange, Reply
from proxy.tokens import TokenCounter

TOKEN_ENDPOINTS = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS,
                             Endpoint.RESPONSES})
CACHE_HITS = frozenset({"hit", "semantic-hit"})
_OUTPUT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


async def input_tokens(ex: Exchange, counter: TokenCounter) -> int:
    if ex.endpoint not in TOKEN_ENDPOINTS or ex.body is None:
        return 0
    return await counter.count_exchange(ex)


def output_cap(ex: Exchange) -> int | None:
    """Output tokens the request may produce: its max_tokens (times `n`); None when it sets none."""
    if ex.endpoint not in TOKEN_ENDPOINTS or ex.body is None or ex.endpoint is Endpoint.EMBEDDINGS:
        return 0
    body = ex.body
    for name in _OUTPUT_FIELDS:
        cap = body.get(name)
        if isinstance(cap, int):
            return max(0, cap) * choices(ex)
    return None


def choices(ex: Exchange) -> int:
    count = ex.body.get("n") if ex.body and ex.endpoint in (Endpoint.CHAT, Endpoint.COMPLETIONS) else 1
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1


def is_cache_hit(ex: Exchange, reply: Reply) -> bool:
    label = ex.reply_headers.get("x-sidecar-cache") or reply.headers.get("x-sidecar-cache")
    return label in CACHE_HITS


def real_tokens(ex: Exchange, reply: Reply) -> int | None:
    """Tokens the answer really used (0 for cache hits and errors); None when unknown."""
    if is_cache_hit(ex, reply) or not reply.ok:
        return 0
    usage = reply.final_usage()
    if not usage:
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens", "input_tokens",
                                    "output_tokens")]
    counted = [p for p in parts if isinstance(p, int)]
    return sum(counted) if counted else None


class EndGuard(AsyncGenerator[bytes, None]):
    """Wraps a stream so `on_end` runs exactly once when it finishes, fails or is closed.

    Unlike a generator's `finally`, this also runs when the stream is closed before its first
    frame (the client left before the response started), so a concurrency slot is never lost.
    """

    __slots__ = ("_done", "_inner", "_on_drop", "_on_end")

    def __init__(self, inner: AsyncGenerator[bytes, None], on_end: Callable[[], Awaitable[None]],
                 on_drop: Callable[[], None]) -> None:
        self._inner = inner
        self._on_end = on_end
        self._on_drop = on_drop  # sync: it runs from __del__, where nothing can be awaited
        self._done = False

    async def _finish(self) -> None:
        if not self._done:
            self._done = True
            await self._on_end()

    async def asend(self, value: None) -> bytes:
        try:
            return await self._inner.asend(value)
        except BaseException:
            await self._finish()
            raise

    async def athrow(self, typ: Any, val: Any = None, tb: TracebackType | None = None) -> bytes:
        try:
            return await self._inner.athrow(typ, val, tb)
        except BaseException:
            await self._finish()
            raise

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            await self._finish()

    def __del__(self) -> None:
        # Dropped unclosed, e.g. inside an outer generator that never started: finish anyway.
        if not self._done:
            self._done = True
            self._on_drop()
