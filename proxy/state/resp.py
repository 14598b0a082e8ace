"""A lean Redis client for the request path: one connection, every command pipelined on it.

redis-py spends ~100 us of CPU on a script call (connection checkout from the pool, command
packing, response callbacks); a request that must wait for its rate-limit or budget answer pays
that on top of the round trip. Here a command is packed into RESP bytes, queued and written with
whatever else the same turn of the event loop sent (one write for many requests under load), and
its reply is parsed by `hiredis`, the C parser redis-py uses too, and matched to its caller in
order. Commands that are not on the request path (scans, admin, the semantic index) keep redis-py.

Failures: a connection that cannot be made, is lost, or leaves a reply waiting past `timeout`
fails every command waiting on it with `ConnectionError` or `TimeoutError` (both `OSError`s, as
from redis-py's socket layer) and is dropped; the next command connects again. Redis's own error
replies raise `redis.exceptions.ResponseError`. The URL's password is sent with AUTH and appears
in no message.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.connection import SSLConnection, parse_url
from redis.exceptions import NoScriptError, ResponseError

_CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect, from a `redis://`, `rediss://` or `unix://` URL."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a unix socket
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """Read by redis-py's own URL parser, so both clients understand a URL alike."""
        parts: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]  # ValueError: other scheme
        return cls(host=parts.get("host", "127.0.0.1"), port=int(parts.get("port", 6379)),
                   path=parts.get("path"),
                   tls=parts.get("connection_class") is SSLConnection,
                   username=parts.get("username"), password=parts.get("password"),
                   db=int(parts.get("db", 0)))


def pack(args: tuple[Any, ...]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send a {type(arg).__name__} to Redis")
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(_CRLF)
    return b"".join(out)


class _Link(asyncio.Protocol):
    """One connection: replies are handed to the waiting futures in the order sent."""

    def __init__(self) -> None:
        # A link lives in the loop that made it: reading the loop once here saves a system call
        # per command (on Python 3.11, `get_running_loop` checks the pid every time).
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.outgoing: list[bytes] = []  # commands of this turn of the loop, written together
        self.batching = False
        self.reader = hiredis.Reader()
        self.error: BaseException | None = None

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue one packed command: the first of a turn of the loop is written at once, those
        after it in the same turn together when the turn ends (one write for many under load)."""
        loop = self.loop
        future: asyncio.Future[Any] = loop.create_future()
        self.waiting.append(future)
        if self.batching:
            self.outgoing.append(command)
        elif self.transport is not None:
            self.transport.write(command)
            self.batching = True
            loop.call_soon(self.flush)
        return future

    def flush(self) -> None:
        self.batching = False
        if self.outgoing:
            data, self.outgoing = self.outgoing, []
            if self.transport is not None:
                self.transport.write(b"".join(data))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are Transports too

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(ConnectionError(f"Redis sent an unreadable reply ({exc})"))
                return
            if reply is False:
                return
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(ConnectionError("Redis sent an unexpected reply"))
                return
            future = waiting.popleft()
            if not future.done():
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(_reply_error(str(reply)))
                else:
                    future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fail(self.error or ConnectionError("the connection to Redis was closed"))

    def fail(self, error: BaseException) -> None:
        """Fail every waiting command and drop the connection (its replies can't be matched)."""
        self.error = self.error or error
        self.outgoing.clear()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(type(error)(*error.args))
        if self.transport is not None:
            self.transport.abort()


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # seen: a failed attempt nobody waited for is not reported as lost


def _reply_error(message: str) -> ResponseError:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


class RespClient:
    """Commands over one pipelined connection, (re)made on demand."""

    def __init__(self, url: str, timeout: float) -> None:
        self.endpoint = Endpoint.from_url(url)
        self.timeout = timeout
        self._link: _Link | None = None
        self._connecting: asyncio.Future[_Link] | None = None
        self._closed = False

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply (ints, bytes, lists as Redis sent them)."""
        link = self._link
        if link is None or link.transport is None:
            link = await self._connect()
        future = link.send(pack(args))
        timer = link.loop.call_later(self.timeout, self._expire, link, future)
        try:
            return await future
        finally:
            timer.cancel()

    async def script(self, sha: str, source: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, loading the script (EVAL) when Redis does not have it."""
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.execute("EVAL", source, len(keys), *keys, *args)

    def _expire(self, link: _Link, future: asyncio.Future[Any]) -> None:
        if not future.done():
            link.fail(TimeoutError(f"Redis did not answer within {self.timeout:g} s"))

    async def _connect(self) -> _Link:
        if self._closed:
            raise ConnectionError("the Redis client is closed")
        connecting = self._connecting
        if connecting is None or connecting.done():
            # One attempt at a time, shared by every command that waits for it; shielded so a
            # cancelled caller does not cancel the others' connection.
            connecting = self._connecting = asyncio.ensure_future(self._open())
            connecting.add_done_callback(_retrieved)
        return await asyncio.shield(connecting)

    async def _open(self) -> _Link:
        loop = asyncio.get_running_loop()
        where = self.endpoint
        link: _Link | None = None
        try:
            async with asyncio.timeout(self.timeout):
                if where.path is not None:
                    _, link = await loop.create_unix_connection(_Link, where.path)
                else:
                    context = ssl.create_default_context() if where.tls else None
                    _, link = await loop.create_connection(_Link, where.host,
                                                           where.port, ssl=context)
                await self._hello(link)
            self._link = link
        except TimeoutError:
            self._drop(link)
            raise TimeoutError(f"Redis did not accept a connection within {self.timeout:g} s")\
                from None
        except OSError as exc:
            self._drop(link)
            raise ConnectionError(f"cannot connect to Redis ({type(exc).__name__})") from None
        except ResponseError as exc:  # AUTH or SELECT refused: name the command, not the secret
            self._drop(link)
            raise ResponseError(str(exc).split(" ", 1)[0] + " while connecting to Redis")\
                from None
        return link

    async def _hello(self, link: _Link) -> None:
        where = self.endpoint
        setup: list[tuple[Any, ...]] = []
        if where.password is not None:
            setup.append(("AUTH", where.username, where.password) if where.username
                         else ("AUTH", where.password))
        if where.db:
            setup.append(("SELECT", where.db))
        if setup:
            await asyncio.gather(*(link.send(pack(command)) for command in setup))

    @staticmethod
    def _drop(link: _Link | None) -> None:
        if link is not None:
            link.fail(ConnectionError("the connection to Redis was closed"))

    async def aclose(self) -> None:
        self._closed = True
        link, self._link = self._link, None
        if link is not None and link.transport is not None:
            link.transport.close()
