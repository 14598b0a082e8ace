"""How the mock upstream writes answers and failures: JSON, SSE, errors, cut connections.

Every function takes the aiohttp request, whose DECISION says which fault (if any) to act out.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from aiohttp import web

from tests.mock_upstream.faults import Decision, Failure
from tests.mock_upstream.shapes import error_body

DECISION = web.RequestKey("decision", Decision)
SEQ = web.RequestKey("seq", int)
TRUNCATED = b'data: {"id": "chatcmpl-broken", "object": "chat.completion.chunk", "choi\n\n'
GARBAGE = b"data: }{ not json\n\n"
EARLY = ("status_5xx", "rate_limit", "hang", "reset")


def headers(request: web.Request) -> dict[str, str]:
    return {
        "x-request-id": f"req_mock{request[SEQ]:06d}",
        "openai-processing-ms": "1",
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-remaining-requests": "9999",
        "x-ratelimit-reset-requests": "6ms",
    }


def json_response(request: web.Request, body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", headers=headers(request))


def bad_request(request: web.Request, message: str, param: str | None) -> web.Response:
    return json_response(request, error_body(message, "invalid_request_error", None, param), 400)


def abort(request: web.Request, *, reset: bool) -> None:
    """Close the connection: a TCP RST when `reset`, else a FIN after what was written."""
    transport = request.transport
    if transport is None:
        return
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()


async def fail_early(request: web.Request, failure: Failure, closing: asyncio.Event) -> web.StreamResponse:
    """Act out a failure that happens before any response byte."""
    if failure.kind == "status_5xx":
        message = "The server had an error while processing your request. Sorry about that!"
        return json_response(request, error_body(message, "server_error"), failure.status)
    if failure.kind == "rate_limit":
        return rate_limited(request, failure.retry_after)
    if failure.kind == "hang":
        # Hang until the mock shuts down; the client's timeout is what the test observes.
        await closing.wait()
    abort(request, reset=True)
    return web.Response()


def rate_limited(request: web.Request, seconds: float) -> web.Response:
    message = "Rate limit reached for requests. Please try again later."
    response = json_response(request, error_body(message, "requests", "rate_limit_exceeded"), 429)
    response.headers["Retry-After"] = str(max(0, round(seconds)))
    response.headers["retry-after-ms"] = str(int(seconds * 1000))
    response.headers["x-ratelimit-remaining-requests"] = "0"
    return response


async def send_json(request: web.Request, data: bytes) -> web.StreamResponse:
    """A JSON answer; drop_mid_stream cuts it halfway, malformed_sse truncates it."""
    failure = request[DECISION].failure
    kind = failure.kind if failure is not None else None
    if kind == "malformed_sse":
        return json_response(request, data[: len(data) // 2])
    if kind != "drop_mid_stream":
        return json_response(request, data)
    response = web.StreamResponse(headers=headers(request))
    response.content_type = "application/json"
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    abort(request, reset=False)
    return response


async def send_stream(request: web.Request, events: list[bytes]) -> web.StreamResponse:
    """An SSE answer, event by event, with chunk_delay, drop_mid_stream and malformed_sse."""
    decision = request[DECISION]
    failure = decision.failure
    response = web.StreamResponse(headers=headers(request))
    response.content_type = "text/event-stream"
    response.charset = "utf-8"
    response.headers["Cache-Control"] = "no-cache"
    await response.prepare(request)
    for index, event in enumerate(events):
        if failure is not None and index == failure.after:
            if failure.kind == "drop_mid_stream":
                abort(request, reset=False)
                return response
            if failure.kind == "malformed_sse":
                await response.write(TRUNCATED + GARBAGE)
        if index and decision.chunk_delay:
            await asyncio.sleep(decision.chunk_delay)
        await response.write(event)
    await response.write_eof()
    return response
