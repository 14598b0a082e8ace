"""Request coalescing: identical misses in flight at once share one upstream call.

The first request of a key leads a `Flight` and makes the call itself; later ones follow it. A
streamed answer is pumped once into a `Broadcast` and every subscriber replays it from the first
frame as frames arrive, so a slow or vanished client never holds the others up, and the stream
runs while anyone listens.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing, suppress
from typing import Any

import orjson

from proxy.cache.entries import Entry
from proxy.errors import PolicyRejection, envelope
from proxy.exchange import Reply
from proxy.wire import sse

# What a flight fetched: the upstream's reply, or an entry another replica stored meanwhile.
Source = Reply | Entry


class Broadcast:
    """One upstream stream fanned out to any number of subscribers, each from its first frame."""

    def __init__(self, source: Reply, on_end: Callable[[Broadcast], Awaitable[None]]) -> None:
        self.source = source
        self.frames: list[bytes] = []
        self.done = False
        self._arrived = asyncio.Event()
        self._listeners = 0
        self._on_end = on_end
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        assert self.source.stream is not None
        try:
            async with aclosing(self.source.stream) as frames:
                async for frame in frames:
                    self.frames.append(frame)
                    self._wake()
        finally:
            self.done = True
            self._wake()
            # Runs however the stream ended; `source.outcome` says whether it is complete.
            await self._on_end(self)

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = asyncio.Event()

    def subscribe(self, reply: Reply) -> AsyncGenerator[bytes, None]:
        """Every frame so far, then each new one; `reply` takes the source's outcome and usage.

        The subscriber counts from now (not from its first read), so the stream keeps running
        for a follower whose response has not started yet when the leader hangs up.
        """
        self._listeners += 1
        return self._follow(reply)

    async def _follow(self, reply: Reply) -> AsyncGenerator[bytes, None]:
        sent = 0
        try:
            while True:
                while sent < len(self.frames):
                    yield self.frames[sent]
                    sent += 1
                if self.done:
                    break
                await self._arrived.wait()
            reply.outcome = self.source.outcome
            reply.usage = self.source.usage
            if reply.outcome == "aborted":
                yield sse.encode(envelope("The shared upstream stream was cancelled.",
                                          "server_error", code="upstream_stream_cancelled"))
        finally:
            self._listeners -= 1
            if self._listeners == 0 and not self.done:
                # Nobody listens any more: stop paying for tokens nobody reads (never stored).
                self._task.cancel()

    async def aclose(self) -> None:
        if not self._task.done():
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task


class Flight:
    """One upstream call in progress for a key: its leader makes it, followers await `result`.

    The leader calls upstream in its own task (no extra task on the hot path). `result` is the
    fetched reply or entry, None when followers must ask for themselves (the leader's client
    left mid-call, or a policy refused the leader on its own account), or the upstream error.
    """

    __slots__ = ("_flights", "_key", "broadcast", "entry", "result", "usage_shown")

    def __init__(self, flights: Flights, key: str, loop: asyncio.AbstractEventLoop) -> None:
        self.result: asyncio.Future[Source | None] = loop.create_future()
        self.entry: asyncio.Future[Entry | None] = loop.create_future()
        self.broadcast: Broadcast | None = None
        self.usage_shown = False
        self._flights = flights
        self._key = key

    async def source(self) -> Source | None:
        """What the leader fetched; a follower cancelled while waiting leaves the others be."""
        return await asyncio.shield(self.result)

    def deliver(self, source: Source | None) -> None:
        if not self.result.done():
            self.result.set_result(source)

    def fail(self, exc: BaseException) -> None:
        """The leader's call raised: followers share an upstream failure, else ask themselves."""
        if not self.result.done():
            if isinstance(exc, Exception) and not isinstance(exc, PolicyRejection):
                self.result.set_exception(exc)
                self.result.exception()  # retrieved: no warning when nobody followed
            else:
                self.result.set_result(None)
        self.settle(None)

    def settle(self, entry: Entry | None) -> None:
        """Say how the flight ended (the stored entry, or None); it then leaves the registry."""
        if not self.entry.done():
            self.entry.set_result(entry)
            self._flights.forget(self._key, self)


class Flights:
    """The flights in progress, by key (one process; replicas coordinate through a store lock)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flights: dict[str, Flight] = {}
        self._loop = loop  # read once: on Python 3.11 `get_running_loop` is a system call

    def get(self, key: str) -> Flight | None:
        return self._flights.get(key)

    def start(self, key: str) -> Flight:
        """Register a new flight for `key`; the caller leads it and must settle it."""
        flight = Flight(self, key, self._loop)
        self._flights[key] = flight
        return flight

    def forget(self, key: str, flight: Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    def __len__(self) -> int:
        return len(self._flights)

    async def aclose(self) -> None:
        for flight in list(self._flights.values()):
            if flight.broadcast is not None:
                await flight.broadcast.aclose()
            flight.deliver(None)
            flight.settle(None)
        self._flights.clear()


def copy_reply(source: Reply, label: str) -> Reply:
    """A follower's copy of a JSON (or error) reply."""
    reply = Reply(source.status, {**source.headers, "x-sidecar-cache": label}, body=source.body)
    reply.usage = source.usage
    return reply


async def adapt_usage(frames: AsyncGenerator[bytes, None], reply: Reply, have: bool,
                      want: bool) -> AsyncGenerator[bytes, None]:
    """Give a follower the usage chunk it asked for, or hide one it did not ask for.

    The leader's stream carries a usage chunk only if the leader asked; `reply.usage` always
    holds the usage (the cache asks upstream for it), so the chunk can be made up when missing.
    """
    first: bytes | None = None
    async with aclosing(frames) as stream:
        async for frame in stream:
            first = first or frame
            if want and not have and b"[DONE]" in frame and sse.frame_fields(frame)[1] == b"[DONE]":
                yield _usage_chunk(first, reply.usage)
            elif have and not want and b'"usage"' in frame and _is_usage_chunk(frame):
                continue
            yield frame


def _is_usage_chunk(frame: bytes) -> bool:
    payload = sse.frame_json(frame)
    return isinstance(payload, dict) and payload.get("choices") == [] and "usage" in payload


def _usage_chunk(first: bytes | None, usage: Any) -> bytes:
    head: dict[str, Any] = {}
    if first is not None:
        payload = sse.frame_json(first)
        if isinstance(payload, dict):
            head = {k: payload[k] for k in ("id", "object", "created", "model") if k in payload}
    return b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n"
