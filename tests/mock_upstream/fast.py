"""The benchmark's mock upstream: a bare HTTP/1.1 keep-alive server replaying precomputed answers.

It must never be the bottleneck, so it parses only the request line, Content-Length and `"stream"`.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import cast

import orjson

from tests.mock_upstream import shapes
from tests.mock_upstream.embeddings import embeddings_json
from tests.mock_upstream.responses import response_events, response_json

STREAM = re.compile(rb'"stream"\s*:\s*true')
LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
CHUNKED = re.compile(rb"\r\ntransfer-encoding:\s*chunked", re.IGNORECASE)
CLOSE = re.compile(rb"\r\nconnection:\s*close", re.IGNORECASE)
TEXT = "Echo: " + " ".join(f"token{i}" for i in range(64))


@dataclass(frozen=True)
class Answer:
    """A whole JSON response, or a stream's head and its body pieces (chunked framing included)."""

    head: bytes
    pieces: tuple[bytes, ...]


def _json(obj: object, status: str = "200 OK") -> Answer:
    body = orjson.dumps(obj)
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nx-request-id: req_fast\r\n\r\n"
    ).encode()
    return Answer(head + body, ())


def _stream(events: list[bytes]) -> Answer:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nx-request-id: req_fast\r\n\r\n"
    )
    pieces = [b"%x\r\n%s\r\n" % (len(e), e) for e in events]
    return Answer(head, (*pieces, b"0\r\n\r\n"))


def build_answers(chunks: int) -> dict[tuple[bytes, bool], Answer]:
    """Every answer, keyed by (path, stream?), computed once at start-up."""
    created = int(time.time())
    reply = shapes.Reply(content=TEXT)
    plan = shapes.plan_reply({}, "", 12, reply, chunks)
    chat = shapes.Meta("chatcmpl-fast", created, "gpt-4o-mini")
    legacy = shapes.Meta("cmpl-fast", created, "gpt-4o-mini")
    resp = shapes.Meta("resp_fast", created, "gpt-4o-mini")
    embedding = embeddings_json({"input": "benchmark"}, "text-embedding-3-small")
    return {
        (b"/v1/chat/completions", False): _json(shapes.chat_json(plan, chat)),
        (b"/v1/chat/completions", True): _stream(shapes.chat_events(plan, chat, True)),
        (b"/v1/completions", False): _json(shapes.completion_json(plan, legacy)),
        (b"/v1/completions", True): _stream(shapes.completion_events(plan, legacy, True)),
        (b"/v1/responses", False): _json(response_json(plan, resp, {})),
        (b"/v1/responses", True): _stream(response_events(plan, resp, {})),
        (b"/v1/embeddings", False): _json(embedding),
        (b"/v1/models", False): _json(shapes.models_json(["gpt-4o-mini"], created)),
        # An OTLP/HTTP collector that accepts everything: the tracing benchmark pays for
        # encoding and sending its spans and metrics, not for a failing export.
        (b"/v1/traces", False): _accepted(),
        (b"/v1/metrics", False): _accepted(),
    }


def _accepted() -> Answer:
    # An empty Export*ServiceResponse: zero bytes of protobuf.
    return Answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n", ())


class FastProtocol(asyncio.Protocol):
    """One client connection: parse requests as they complete, answer from the table."""

    def __init__(self, answers: dict[tuple[bytes, bool], Answer], chunk_delay: float) -> None:
        self._answers = answers
        self._delay = chunk_delay
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._missing = _json(
            {"error": {"message": "not found", "type": "invalid_request_error", "param": None, "code": None}},
            "404 Not Found",
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end])
            if CHUNKED.search(head):
                self._transport.write(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\n\r\n")
                self._transport.close()
                return
            match = LENGTH.search(head)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self._buffer) < total:
                return
            body = bytes(self._buffer[end + 4 : total])
            del self._buffer[:total]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        assert self._transport is not None
        path = head.split(b" ", 2)[1].split(b"?", 1)[0]
        answer = self._answers.get((path, bool(STREAM.search(body))), self._missing)
        if self._delay and answer.pieces:
            asyncio.get_running_loop().create_task(self._paced(answer))
        else:
            self._transport.write(answer.head + b"".join(answer.pieces))
        if CLOSE.search(head):
            self._transport.close()

    async def _paced(self, answer: Answer) -> None:
        # Spaced chunks make a proxy that buffers the whole stream visible in time-to-first-byte.
        transport = self._transport
        if transport is None:
            return
        transport.write(answer.head + answer.pieces[0])
        for piece in answer.pieces[1:]:
            await asyncio.sleep(self._delay)
            if transport.is_closing():
                return
            transport.write(piece)


async def serve_fast(host: str, port: int, chunks: int, chunk_delay: float) -> asyncio.Server:
    answers = build_answers(chunks)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: FastProtocol(answers, chunk_delay), host, port, reuse_address=True, backlog=1024
    )
