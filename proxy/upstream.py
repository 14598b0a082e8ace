"""The pooled client to the upstreams: routing by model, timeouts, and the streaming relay.

This is the innermost handler of the pipeline. Foreign errors (aiohttp, timeouts) are translated
here into `UpstreamError`s that name the upstream, never its key. A stream that breaks after its
first byte ends with an error event in the stream, so SDKs raise instead of hanging.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

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
from proxy.wire import sse

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})
_NOT_FORWARDED = HOP_BY_HOP | {"authorization", "accept-encoding"}
_NOT_RETURNED = HOP_BY_HOP | {"content-encoding", "x-request-id", "set-cookie", "date", "server"}
_RAW_ONLY = frozenset({"content-length", "content-encoding"})
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null')


class UpstreamClient:
    """One pooled HTTP client for every upstream; `send` makes one attempt at one upstream."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[str, aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, ex: Exchange, upstream: UpstreamConfig, model: str | None = None) -> Reply:
        """One attempt; `model` replaces the request's model (a fallback target's own model).

        Raises UpstreamError when no HTTP response arrives; an HTTP error is a Reply.
        """
        strip_usage = _request_usage(ex)
        url = upstream.base_url + ex.path[3:] + (f"?{ex.query}" if ex.query else "")
        timeouts = upstream.timeouts
        timeout = self._timeouts.get(upstream.name)
        if timeout is None:
            timeout = self._timeouts[upstream.name] = aiohttp.ClientTimeout(
                total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.idle)
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        data = _request_data(ex) if model is None or ex.body is None else \
            orjson.dumps({**ex.body, "model": model})
        sent = time.perf_counter()
        request = self._session.request(
            ex.method, url, data=data, headers=_request_headers(ex, upstream),
            timeout=timeout, auto_decompress=ex.endpoint is not Endpoint.PASSTHROUGH,
        )
        with _Translated(upstream, min(timeouts.first_byte, timeouts.idle)):
            # aiohttp's socket-read timeout (idle) already bounds the wait for the headers; a
            # separate timer is only needed when first_byte is the shorter of the two.
            if timeouts.first_byte < timeouts.idle:
                async with asyncio.timeout(timeouts.first_byte):
                    response = await request
            else:
                response = await request
        ex.upstream_wait += time.perf_counter() - sent
        try:
            return await self._reply(ex, upstream, response, strip_usage)
        except BaseException:
            response.close()
            raise

    async def _reply(self, ex: Exchange, upstream: UpstreamConfig,
                     response: aiohttp.ClientResponse, strip_usage: bool) -> Reply:
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
                         response: aiohttp.ClientResponse, reply: Reply,
                         strip_usage: bool) -> AsyncGenerator[bytes, None]:
        framer = sse.SSEFramer()
        ended = False
        try:
            async for chunk in response.content.iter_any():
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
        except (aiohttp.ClientError, TimeoutError, sse.SSEError) as exc:
            reply.outcome = "error"
            response.close()
            yield error_event(_stream_failure(upstream, exc), ex.endpoint is Endpoint.RESPONSES)
        finally:
            if reply.outcome == "pending":
                reply.outcome = "aborted"
                response.close()


async def _relay_raw(upstream: UpstreamConfig, response: aiohttp.ClientResponse,
                     reply: Reply) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in response.content.iter_any():
            yield chunk
        reply.outcome = "complete"
        response.release()
    except (aiohttp.ClientError, TimeoutError):
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


def _request_data(ex: Exchange) -> Any:
    if ex.body_stream is not None:
        return ex.body_stream
    return ex.body_bytes() or None


def _request_headers(ex: Exchange, upstream: UpstreamConfig) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in ex.headers.items():
        lower = name.lower()
        if lower not in _NOT_FORWARDED and not lower.startswith("x-sidecar-"):
            headers.add(name, value)
    if upstream.api_key is not None:
        headers["Authorization"] = f"Bearer {upstream.api_key.get_secret_value()}"
    elif "Authorization" in ex.headers:
        headers["Authorization"] = ex.headers["Authorization"]
    if ex.body_stream is not None and ex.headers.get("Content-Length"):
        headers["Content-Length"] = ex.headers["Content-Length"]
    headers.update(upstream.headers)
    headers.update(ex.upstream_headers)
    if ex.body is not None:
        headers["Content-Type"] = "application/json"
    headers["X-Request-Id"] = ex.request_id
    if ex.endpoint is not Endpoint.PASSTHROUGH:
        headers["Accept-Encoding"] = "gzip, deflate"
    elif "Accept-Encoding" in ex.headers:
        headers["Accept-Encoding"] = ex.headers["Accept-Encoding"]
    return headers


def _response_headers(response: aiohttp.ClientResponse, keep_length: bool) -> dict[str, str]:
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
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise UpstreamUnreachable(f"upstream '{name}' is unreachable") from None
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError
                      | aiohttp.ClientPayloadError):
            raise UpstreamUnreachable(
                f"upstream '{name}' closed the connection before answering") from None
        if isinstance(exc, aiohttp.ClientError):
            raise UpstreamProtocolError(f"upstream '{name}' failed: {type(exc).__name__}") from None
