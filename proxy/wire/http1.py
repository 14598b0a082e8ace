"""HTTP/1.1 to the upstreams for API calls: keep-alive connections over asyncio protocols, parsed
by httptools (llhttp), with one timer per request for every timeout.

An API call needs a small part of a general HTTP client: one request with a bytes body, then a JSON
answer or an SSE stream. aiohttp's client spends more CPU per request than all of the sidecar's own
work, so API calls use this path; raw pass-through (uploads, arbitrary methods) stays on aiohttp.

Errors: `ConnectFailed` (no connection), `Disconnected` (the peer closed or reset before the answer
was complete), `MalformedResponse` (not HTTP), and `TimeoutError` (`phase` says which timeout).
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

_HIGH_WATER = 1 << 18  # pause reading a stream whose reader is this far behind
_KEEPALIVE = 15.0  # an idle connection older than this is closed, not reused


class Http1Error(Exception):
    """Base of this module's errors."""


class ConnectFailed(Http1Error):
    pass


class Disconnected(Http1Error):
    pass


class MalformedResponse(Http1Error):
    pass


class PhaseTimeout(TimeoutError):
    """A timeout; `phase` is "connect", "first_byte", "idle" or "total"."""

    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an upstream's requests go: scheme, host and port, and the base URL's path prefix.

    `key` names the connection pool (scheme, host, port): upstreams that differ only in path or
    name share connections, and a pool lookup hashes a string (cached), not this dataclass.
    """

    tls: bool
    host: str
    port: int
    prefix: str
    host_header: str
    key: str

    @classmethod
    def parse(cls, base_url: str) -> Origin:
        parts = urlsplit(base_url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        default = (tls and port == 443) or (not tls and port == 80)
        shown = f"[{host}]" if ":" in host else host
        return cls(tls, host, port, parts.path.rstrip("/"),
                   shown if default else f"{shown}:{port}",
                   f"{'https' if tls else 'http'}://{shown}:{port}")


@dataclass(frozen=True, slots=True)
class Deadlines:
    connect: float
    first_byte: float
    idle: float
    total: float


class Http1Pool:
    """Idle keep-alive connections per origin, most recently used first."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None,
                 keepalive: float = _KEEPALIVE) -> None:
        self._ssl = ssl_context
        self._keepalive = keepalive
        self._idle: dict[str, deque[_Connection]] = {}  # by Origin.key
        # The loop of the first request: a pool serves one loop. Kept because on Python 3.11
        # `get_running_loop` costs a system call (a pid check) on every call.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: set[_Connection] = set()

    async def request(self, origin: Origin, method: str, target: str,
                      headers: list[tuple[str, str]], body: bytes,
                      deadlines: Deadlines) -> Http1Response:
        """Send one request and wait for the answer's headers; the body is read from the result."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        started = loop.time()
        conn = self._reusable(origin, started) or await self._connect(origin, deadlines.connect)
        head = _head(method, target, origin.host_header, headers, len(body))
        try:
            conn.begin(started, deadlines)
            conn.transport.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                conn.transport.write(body)
            while not conn.headers_done:
                await conn.wait()
        except BaseException:
            conn.discard()
            raise
        return Http1Response(self, origin, conn)

    def release(self, origin: Origin, conn: _Connection) -> None:
        if not conn.reusable():
            conn.discard()
            return
        now = conn.idle_since = conn.loop.time()
        idle = self._idle.setdefault(origin.key, deque())
        while idle and (idle[0].closed or now - idle[0].idle_since >= self._keepalive):
            idle.popleft().discard()
        idle.append(conn)

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.discard()
        self._idle.clear()

    def _reusable(self, origin: Origin, now: float) -> _Connection | None:
        idle = self._idle.get(origin.key)
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._keepalive:
                return conn
            conn.discard()
        return None

    async def _connect(self, origin: Origin, within: float) -> _Connection:
        loop = asyncio.get_running_loop()
        context = (self._ssl or ssl.create_default_context()) if origin.tls else None
        if origin.tls and self._ssl is None:
            self._ssl = context
        conn = _Connection(loop, self._open)
        try:
            async with asyncio.timeout(within):
                await loop.create_connection(
                    lambda: conn, origin.host, origin.port, ssl=context,
                    server_hostname=origin.host if origin.tls else None)
        except TimeoutError:
            conn.discard()
            raise PhaseTimeout("connect") from None
        except (OSError, ssl.SSLError) as exc:
            conn.discard()
            raise ConnectFailed(f"{type(exc).__name__}") from None
        self._open.add(conn)
        return conn


class Http1Response:
    """An answer whose headers have arrived; read its body whole or chunk by chunk, then release."""

    __slots__ = ("_conn", "_decoder", "_origin", "_pool", "headers", "status")

    def __init__(self, pool: Http1Pool, origin: Origin, conn: _Connection) -> None:
        self._pool = pool
        self._origin = origin
        self._conn = conn
        self.status = conn.status
        self.headers: CIMultiDict[str] = CIMultiDict(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for name, value in conn.raw_headers)
        self._decoder = _decoder(self.headers.get("Content-Encoding", ""))

    async def read(self) -> bytes:
        conn = self._conn
        parts: list[bytes] = []
        while not conn.complete:
            parts.append(conn.take())
            await conn.wait()
        parts.append(conn.take())
        return self._decode(b"".join(parts), final=True)

    async def iter_any(self) -> AsyncGenerator[bytes, None]:
        """Each piece of the body as it arrives (decoded)."""
        conn = self._conn
        while True:
            data = conn.take()
            if data:
                decoded = self._decode(data, final=False)
                if decoded:
                    yield decoded
            elif conn.complete:
                tail = self._decode(b"", final=True)
                if tail:
                    yield tail
                return
            else:
                await conn.wait()

    def release(self) -> None:
        """Back to the pool if the answer was read to its end; closed otherwise."""
        if self._conn.complete and not self._conn.body:
            self._pool.release(self._origin, self._conn)
        else:
            self._conn.discard()

    def close(self) -> None:
        self._conn.discard()

    def _decode(self, data: bytes, final: bool) -> bytes:
        if self._decoder is None:
            return data
        try:
            out: bytes = self._decoder.decompress(data)
            return out + self._decoder.flush() if final else out
        except zlib.error as exc:
            self._conn.discard()
            raise MalformedResponse("the answer's compressed body is corrupt") from exc


def _decoder(encoding: str) -> Any:
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
    return None


def _head(method: str, target: str, host: str, headers: list[tuple[str, str]],
          length: int) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers:
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise ValueError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {length}\r\n\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


class _Connection(asyncio.Protocol):
    """One upstream connection and the answer in flight on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, registry: set[_Connection]) -> None:
        self.loop = loop
        self._registry = registry
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.in_use = False
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self._framed = True
        self._keep_alive = False
        self.body: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadlines = Deadlines(0, 0, 0, 0)
        self._started = 0.0
        self._active = 0.0

    def begin(self, now: float, deadlines: Deadlines) -> None:
        self.in_use = True
        self.status = 0
        self.raw_headers = []
        self.headers_done = self.complete = False
        self.body = []
        self._buffered = 0
        self._error = None
        self._deadlines = deadlines
        self._started = self._active = now
        self._timer = self.loop.call_at(self._next_deadline(), self._check_deadline)

    async def wait(self) -> None:
        """Until something arrives; raises what broke the connection."""
        if self._error is not None:
            raise self._error
        if self._paused and not self.body:
            self._paused = False
            self.transport.resume_reading()
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def take(self) -> bytes:
        body = self.body
        if not body:
            return b""
        self.body = []
        self._buffered = 0
        return body[0] if len(body) == 1 else b"".join(body)

    def reusable(self) -> bool:
        return not self.closed and self.complete and self._keep_alive and self._error is None

    def discard(self) -> None:
        self._cancel_timer()
        self.closed = True
        self.in_use = False
        self._registry.discard(self)
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.in_use:
            self.discard()  # bytes nobody asked for: the connection cannot be trusted
            return
        self._active = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(MalformedResponse(f"the upstream's answer is not valid HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._registry.discard(self)
        if self.in_use and not self.complete:
            if self.headers_done and not self._framed:
                self.on_message_complete()  # a body without a length ends with the connection
            else:
                self._fail(Disconnected("the upstream closed the connection"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status < 200:  # an interim answer (103 Early Hints): the real one follows
            self.raw_headers = []
            return
        self.headers_done = True
        self._framed = self.status in (204, 304) or any(
            name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.raw_headers)
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done:
            return
        self.complete = True
        self._keep_alive = self.parser.should_keep_alive()  # only valid until the call returns
        self.in_use = False
        self._cancel_timer()
        self._wake()

    # internals

    def _fail(self, error: BaseException) -> None:
        if self._error is not None:
            return  # the first cause stands; aborting the transport reports a second one
        self._error = error
        self._cancel_timer()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _next_deadline(self) -> float:
        d = self._deadlines
        at = min(self._started + d.total, self._active + d.idle)
        return at if self.headers_done else min(at, self._started + d.first_byte)

    def _check_deadline(self) -> None:
        self._timer = None
        if self.complete or self.closed:
            return
        at = self._next_deadline()
        now = self.loop.time()
        if now < at:
            self._timer = self.loop.call_at(at, self._check_deadline)
            return
        d = self._deadlines
        if now >= self._started + d.total:
            self._fail(PhaseTimeout("total"))
        elif not self.headers_done and now >= self._started + d.first_byte:
            self._fail(PhaseTimeout("first_byte"))
        else:
            self._fail(PhaseTimeout("idle"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
