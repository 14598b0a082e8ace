"""The pooled client to the upstreams: routing by model, timeouts, and the streaming relay.

This is the innermost handler of the pipeline. Foreign errors (aiohttp, timeouts) are translated
here into `UpstreamError`s that name the upstream, never its key. A stream that breaks after its
first byte ends with an error event in the stream, so SDKs raise instead of hanging.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from proxy.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
    envelope,
    error_event,
)
from proxy.exchange import Endpoint, Exchange, Reply
from proxy.settings import UpstreamConfig
from proxy.wire import http1, sse

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})
_NOT_FORWARDED = HOP_BY_HOP | {"authorization", "accept-encoding"}
_NOT_RETURNED = HOP_BY_HOP | {"content-encoding", "x-request-id", "set-cookie", "date", "server"}
_RAW_ONLY = frozenset({"content-length", "content-encoding"})
_RAW_ENDPOINTS = frozenset({Endpoint.PASSTHROUGH, Endpoint.MODELS})
_STREAM_ERRORS = (aiohttp.ClientError, http1.Http1Error, TimeoutError, sse.SSEError)
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null')


class Answer(Protocol):
    """An upstream's answer whose headers have arrived, from either HTTP client."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes: ...

    def iter_any(self) -> AsyncIterator[bytes]: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


class _AiohttpAnswer:
    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = response.headers

    async def read(self) -> bytes:
        return await self._response.read()

    def iter_any(self) -> AsyncIterator[bytes]:
        return self._response.content.iter_any()

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


@dataclass(frozen=True, slots=True)
class _Target:
    """What every request to one upstream shares, worked out on its first request."""

    origin: http1.Origin
    deadlines: http1.Deadlines
    timeout: aiohttp.ClientTimeout
    headers: dict[str, str]  # lower-case names: the key, extra headers

    @classmethod
    def of(cls, upstream: UpstreamConfig) -> _Target:
        t = upstream.timeouts
        headers = {name.lower(): value for name, value in upstream.headers.items()}
        if upstream.api_key is not None:
            headers["authorization"] = f"Bearer {upstream.api_key.get_secret_value()}"
        return cls(http1.Origin.parse(upstream.base_url),
                   http1.Deadlines(t.connect, t.first_byte, t.idle, t.total),
                   aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.idle),
                   headers)


class UpstreamClient:
    """One pooled client for every upstream; `send` makes one attempt at one upstream.

    API calls with a JSON body go over `proxy.wire.http1`; raw pass-through and `/v1/models` over
    aiohttp, which streams request bodies and handles any method.
    """

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._pool = http1.Http1Pool()
        self._targets: dict[str, _Target] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
        if self._session is not None:
            await self._session.close()

    async def send(self, ex: Exchange, upstream: UpstreamConfig, model: str | None = None) -> Reply:
        """One attempt; `model` replaces the request's model (a fallback target's own model).

        Raises UpstreamError when no HTTP response arrives; an HTTP error is a Reply.
        """
        strip_usage = _request_usage(ex)
        target = self._targets.get(upstream.name)
        if target is None:
            target = self._targets[upstream.name] = _Target.of(upstream)
        timeouts = upstream.timeouts
        sent = time.perf_counter()
        with _Translated(upstream, min(timeouts.first_byte, timeouts.idle)):
            if ex.body_stream is None and ex.endpoint not in _RAW_ENDPOINTS:
                answer: Answer = await self._pool.request(
                    target.origin, ex.method, _target_path(target.origin.prefix, ex),
                    _request_headers(ex, target), _request_body(ex, model), target.deadlines)
            else:
                answer = await self._raw_request(ex, upstream, target, model)
        ex.upstream_wait += time.perf_counter() - sent
        try:
            return await self._reply(ex, upstream, answer, strip_usage)
        except BaseException:
            answer.close()
            raise

    async def _raw_request(self, ex: Exchange, upstream: UpstreamConfig, target: _Target,
                           model: str | None) -> Answer:
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        timeouts = upstream.timeouts
        data = ex.body_stream if ex.body_stream is not None else _request_body(ex, model) or None
        request = self._session.request(
            ex.method, upstream.base_url + ex.path[3:] + (f"?{ex.query}" if ex.query else ""),
            data=data, headers=_request_headers(ex, target), timeout=target.timeout,
            auto_decompress=ex.endpoint is not Endpoint.PASSTHROUGH,
        )
        # aiohttp's socket-read timeout (idle) already bounds the wait for the headers; a
        # separate timer is only needed when first_byte is the shorter of the two.
        if timeouts.first_byte < timeouts.idle:
            async with asyncio.timeout(timeouts.first_byte):
                return _AiohttpAnswer(await request)
        return _AiohttpAnswer(await request)

    async def _reply(self, ex: Exchange, upstream: UpstreamConfig, response: Answer,
                     strip_usage: bool) -> Reply:
        headers = _response_headers(response, keep_length=ex.endpoint is Endpoint.PASSTHROUGH)
        headers["x-sidecar-upstream"] = upstream.name
        content_type = response.headers.get("Content-Type", "")
        if content_type.startswith("text/event-stream") and response.status == 200:
            reply = Reply(200, headers, sse=True)
            reply.stream = self._relay_sse(ex, upstream, response, reply, strip_usage)
            reply.outcome = "pending"
            return reply
        if ex.endpoint is Endpoint.PASSTHROUGH:
            reply = Reply(response.status, headers)
            reply.stream = _relay_raw(upstream, response, reply)
            reply.outcome = "pending"
            return reply
        with _Translated(upstream, upstream.timeouts.total):
            body = await response.read()
        response.release()
        if response.status >= 400:
            body = _error_body(upstream, response.status, body)
            headers["Content-Type"] = "application/json"
        return Reply(response.status, headers, body=body)

    async def _relay_sse(self, ex: Exchange, upstream: UpstreamConfig,
                         response: Answer, reply: Reply,
                         strip_usage: bool) -> AsyncGenerator[bytes, None]:
        framer = sse.SSEFramer()
        ended = False
        try:
            async for chunk in response.iter_any():
                for frame in framer.feed(chunk):
                    out, final = _inspect(frame, reply, strip_usage)
                    ended = ended or final
                    if out is not None:
                        yield out
            tail = framer.flush()
            if tail.strip():
                out, final = _inspect(tail + b"\n\n", reply, strip_usage)
                ended = ended or final
                if out is not None:
                    yield out
            if not ended:
                raise sse.SSEError(f"upstream '{upstream.name}' ended the stream before it was done")
            reply.outcome = "complete"
            response.release()
        except _STREAM_ERRORS as exc:
            reply.outcome = "error"
            response.close()
            yield error_event(_stream_failure(upstream, exc), ex.endpoint is Endpoint.RESPONSES)
        finally:
            if reply.outcome == "pending":
                reply.outcome = "aborted"
                response.close()


async def _relay_raw(upstream: UpstreamConfig, response: Answer,
                     reply: Reply) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in response.iter_any():
            yield chunk
        reply.outcome = "complete"
        response.release()
    except _STREAM_ERRORS:
        reply.outcome = "error"
        response.close()
    finally:
        if reply.outcome == "pending":
            reply.outcome = "aborted"
            response.close()


def _request_usage(ex: Exchange) -> bool:
    """Ask a stream for its usage when a policy needs it; True if the client did not ask itself."""
    if ex.usage_injected:
        return True
    if not (ex.needs_usage and ex.stream and ex.body is not None):
        return False
    if ex.endpoint not in (Endpoint.CHAT, Endpoint.COMPLETIONS):
        return False
    options = ex.body.get("stream_options") or {}
    if options.get("include_usage") is True:
        return False
    ex.replace_body({**ex.body, "stream_options": {**options, "include_usage": True}})
    ex.usage_injected = True
    return True


def _request_body(ex: Exchange, model: str | None) -> bytes:
    if model is None or ex.body is None:
        return ex.body_bytes()
    return orjson.dumps({**ex.body, "model": model})


def _target_path(prefix: str, ex: Exchange) -> str:
    path = prefix + ex.path[3:]
    return f"{path}?{ex.query}" if ex.query else path


def _request_headers(ex: Exchange, target: _Target) -> list[tuple[str, str]]:
    """The client's headers minus hop-by-hop and sidecar ones, with the sidecar's own on top."""
    own = dict(target.headers)
    if "authorization" not in own and "Authorization" in ex.headers:
        own["authorization"] = ex.headers["Authorization"]
    if ex.body_stream is not None and ex.headers.get("Content-Length"):
        own["content-length"] = ex.headers["Content-Length"]
    for name, value in ex.upstream_headers.items():
        own[name.lower()] = value
    if ex.body is not None:
        own["content-type"] = "application/json"
    own["x-request-id"] = ex.request_id
    if ex.endpoint is not Endpoint.PASSTHROUGH:
        own["accept-encoding"] = "gzip, deflate"
    elif "Accept-Encoding" in ex.headers:
        own["accept-encoding"] = ex.headers["Accept-Encoding"]
    headers = [(name, value) for name, value in ex.headers.items()
               if (lower := name.lower()) not in _NOT_FORWARDED and lower not in own
               and not lower.startswith("x-sidecar-")]
    headers.extend(own.items())
    return headers


def _response_headers(response: Answer, keep_length: bool) -> dict[str, str]:
    """Upstream headers for the client; length and encoding only where bytes pass unchanged."""
    headers: dict[str, str] = {}
    for name, value in response.headers.items():
        lower = name.lower()
        if lower == "x-request-id":
            headers["x-upstream-request-id"] = value
        elif lower not in _NOT_RETURNED or (keep_length and lower in _RAW_ONLY):
            headers[name] = value
    return headers


_FINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})


def _inspect(frame: bytes, reply: Reply, strip_usage: bool) -> tuple[bytes | None, bool]:
    """Validate a frame, keep the final usage, and hide usage the client did not ask for.

    Returns the frame to relay (None: drop it) and whether it ends the stream.
    """
    event, data = sse.frame_fields(frame)
    if data is None:
        return frame, False
    if data == b"[DONE]":
        return frame, True
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise sse.SSEError("the upstream sent an event that is not valid JSON") from exc
    if not isinstance(payload, dict):
        return frame, False
    final = event in _FINAL_EVENTS or payload.get("type") in _FINAL_EVENTS
    usage = payload.get("usage")
    if usage is None and isinstance(payload.get("response"), dict):
        usage = payload["response"].get("usage")
    if isinstance(usage, dict):
        reply.usage = usage
        if strip_usage and payload.get("choices") == []:
            return None, final
    if strip_usage and b'"usage"' in frame:
        return _USAGE_NULL.sub(b"", frame), final
    return frame, final


def _stream_failure(upstream: UpstreamConfig, exc: BaseException) -> UpstreamError:
    if isinstance(exc, http1.PhaseTimeout) and exc.phase == "total":
        return UpstreamTimeout(
            f"upstream '{upstream.name}' did not finish within {upstream.timeouts.total:g}s",
            code="upstream_stream_timeout")
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(
            f"upstream '{upstream.name}' went silent mid-stream for over "
            f"{upstream.timeouts.idle:g}s", code="upstream_stream_timeout")
    if isinstance(exc, sse.SSEError):
        return UpstreamProtocolError(f"{exc}", code="upstream_stream_broken")
    return UpstreamProtocolError(f"upstream '{upstream.name}' dropped the connection mid-stream",
                                 code="upstream_stream_broken")


def _error_body(upstream: UpstreamConfig, status: int, body: bytes) -> bytes:
    """Upstream errors pass through as they are when OpenAI-shaped; anything else is wrapped."""
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        for key in ("message", "type", "param", "code"):
            error.setdefault(key, None)
        return orjson.dumps(payload)
    snippet = body[:200].decode("utf-8", "replace").strip()
    message = f"upstream '{upstream.name}' answered HTTP {status}" + (f": {snippet}" if snippet else "")
    return orjson.dumps(envelope(message, "upstream_error", code=f"upstream_http_{status}"))


class _Translated:
    """Turn aiohttp and timeout errors into UpstreamErrors that name the upstream only."""

    __slots__ = ("upstream", "waited")

    def __init__(self, upstream: UpstreamConfig, waited: float) -> None:
        self.upstream = upstream
        self.waited = waited

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        if exc is None:
            return
        name = self.upstream.name
        if isinstance(exc, TimeoutError):
            raise UpstreamTimeout(f"upstream '{name}' did not answer within {self.waited:g}s") from None
        if isinstance(exc, aiohttp.ClientConnectorError | http1.ConnectFailed):
            raise UpstreamUnreachable(f"upstream '{name}' is unreachable") from None
        if isinstance(exc, http1.Disconnected):
            raise UpstreamUnreachable(
                f"upstream '{name}' closed the connection before answering") from None
        if isinstance(exc, http1.Http1Error):
            raise UpstreamProtocolError(f"upstream '{name}' failed: {exc}") from None
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError
                      | aiohttp.ClientPayloadError):
            raise UpstreamUnreachable(
                f"upstream '{name}' closed the connection before answering") from None
        if isinstance(exc, aiohttp.ClientError):
            raise UpstreamProtocolError(f"upstream '{name}' failed: {type(exc).__name__}") from None
