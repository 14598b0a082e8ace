"""The in-process mock OpenAI upstream: a real aiohttp server on 127.0.0.1 with fault switches.

`async with MockUpstream() as mock:` then point a client or the sidecar at `mock.base_url`.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.mock_upstream import shapes, wire
from tests.mock_upstream.embeddings import embeddings_json
from tests.mock_upstream.faults import Failure, FaultKind, FaultPlan
from tests.mock_upstream.responses import input_text, input_tokens, response_events, response_json
from tests.mock_upstream.shapes import JSON, Meta, Reply, ToolCall

DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "text-embedding-3-large")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Received:
    """One request as the mock saw it, and the failure it was given (None: answered normally)."""

    seq: int
    method: str
    path: str
    query: Mapping[str, str]
    headers: CIMultiDictProxy[str]
    body: bytes
    json: Any
    fault: str | None


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def _tool_call(call: ToolCall | Mapping[str, Any]) -> ToolCall:
    if isinstance(call, ToolCall):
        return call
    args = call.get("arguments", "{}")
    return ToolCall(str(call["name"]), args if isinstance(args, str) else orjson.dumps(args).decode())


class MockUpstream:
    """An OpenAI-compatible server with deterministic answers, scripts and fault switches.

    Answers are "Echo: <last user text>" split into `chunks` stream pieces; ids are unique per
    request, so a test can tell an upstream answer from a cached one. `received` records every
    request (and the fault it got); `script()` forces replies; `fault()` / `chaos()` break them.
    After `aclose()`, `start()` listens again on the same port (an upstream coming back).
    """

    def __init__(
        self,
        *,
        chunks: int = 5,
        seed: int = 0,
        models: Sequence[str] = DEFAULT_MODELS,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.chunks = chunks
        self.models = tuple(models)
        self.received: list[Received] = []
        self._clock = clock
        self._address = (host, port)
        self._faults = FaultPlan(seed)
        self._scripts: deque[Reply] = deque()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self._address[0]}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def count(self, path: str | None = None) -> int:
        """Requests received so far, all or for one path."""
        return sum(1 for r in self.received if path is None or r.path == path)

    @property
    def faulted(self) -> list[Received]:
        return [r for r in self.received if r.fault is not None]

    def fault_counts(self) -> Counter[str]:
        return Counter(r.fault for r in self.received if r.fault is not None)

    def reset(self, seed: int | None = None) -> None:
        """Forget requests, scripts and fault rules; restart the fault RNG."""
        self.received.clear()
        self._scripts.clear()
        self._faults.clear(seed)

    def script(
        self,
        content: str | None = None,
        *,
        pieces: Sequence[str] | None = None,
        tool_calls: Sequence[ToolCall | Mapping[str, Any]] = (),
        finish_reason: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        times: int = 1,
    ) -> None:
        """Force the next `times` generation replies (chat, completions, responses)."""
        reply = Reply(
            content,
            tuple(pieces) if pieces is not None else None,
            tuple(_tool_call(c) for c in tool_calls),
            finish_reason,
            prompt_tokens,
            completion_tokens,
        )
        self._scripts.extend([reply] * times)

    def fault(
        self,
        kind: FaultKind,
        *,
        times: int | None = None,
        probability: float | None = None,
        path: str = "*",
        seconds: float = 1.0,
        status: int = 0,
        retry_after: float = 1.0,
        after: int = 2,
    ) -> None:
        """Turn a fault on for the next `times` requests, with `probability`, or for good.

        `seconds`: latency / chunk_delay; `status`: 500/502/503 (0 picks one at random);
        `retry_after`: 429 wait; `after`: good stream events before drop_mid_stream/malformed_sse.
        """
        failure = Failure(kind, status, retry_after, after)
        self._faults.add(
            kind, times=times, probability=probability, path=path, seconds=seconds, failure=failure
        )

    def chaos(self, rate: float, kinds: Sequence[FaultKind], *, path: str = "*") -> None:
        """Fail `rate` of the requests, spread evenly over `kinds` (one seeded draw per request).

        Delays last 50 ms; a `hang` holds its request until the client gives up.
        """
        for kind in kinds:
            self.fault(kind, probability=rate / len(kinds), path=path, seconds=0.05)

    async def __aenter__(self) -> MockUpstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        self._closing = asyncio.Event()
        app = web.Application(middlewares=[self._middleware], client_max_size=1 << 30)
        for method, path, handler in self._routes():
            app.router.add_route(method, path, handler)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._address[0], self.port or self._address[1]))
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def aclose(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/chat/completions", self._chat),
            ("POST", "/v1/completions", self._completions),
            ("POST", "/v1/embeddings", self._embeddings),
            ("POST", "/v1/responses", self._responses),
            ("GET", "/v1/models", self._models),
            ("POST", "/v1/files", self._files),
            ("*", "/{tail:.*}", self._echo),
        ]

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        decision = self._faults.draw(request.path)
        failure = decision.failure
        seq = len(self.received)
        self.received.append(
            Received(
                seq,
                request.method,
                request.path,
                dict(request.query),
                CIMultiDictProxy(CIMultiDict(request.headers)),
                body,
                _loads(body),
                failure.kind if failure else None,
            )
        )
        request[wire.DECISION], request[wire.SEQ] = decision, seq + 1
        if decision.latency:
            await asyncio.sleep(decision.latency)
        if failure is not None and failure.kind in wire.EARLY:
            return await wire.fail_early(request, failure, self._closing)
        return await handler(request)

    async def _generation(
        self,
        request: web.Request,
        build: Callable[[JSON, Meta, Reply | None], tuple[JSON, list[bytes]] | str],
        prefix: str,
    ) -> web.StreamResponse:
        """Shared path of chat, completions and responses: validate, plan, answer JSON or SSE."""
        body = _loads(await request.read())
        if not isinstance(body, dict):
            return wire.bad_request(request, "We could not parse the JSON body.", None)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return wire.bad_request(request, "you must provide a model parameter", "model")
        meta = Meta(f"{prefix}mock{request[wire.SEQ]:06d}", int(self._clock()), model)
        built = build(body, meta, self._scripts.popleft() if self._scripts else None)
        if isinstance(built, str):
            return wire.bad_request(request, built, None)
        obj, events = built
        if body.get("stream") is True:
            return await wire.send_stream(request, events)
        return await wire.send_json(request, orjson.dumps(obj))

    @staticmethod
    async def _answer(request: web.Request, obj: JSON) -> web.StreamResponse:
        return await wire.send_json(request, orjson.dumps(obj))

    @staticmethod
    def _include_usage(body: JSON) -> bool:
        options = body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        def build(body: JSON, meta: Meta, reply: Reply | None) -> tuple[JSON, list[bytes]] | str:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return "'messages' must be a non-empty array"
            text, tokens = shapes.last_user_text(messages), shapes.messages_tokens(messages)
            plan = shapes.plan_reply(body, text, tokens, reply, self.chunks)
            events = shapes.chat_events(plan, meta, self._include_usage(body))
            return shapes.chat_json(plan, meta), events

        return await self._generation(request, build, "chatcmpl-")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        def build(body: JSON, meta: Meta, reply: Reply | None) -> tuple[JSON, list[bytes]] | str:
            text = shapes.prompt_text(body.get("prompt"))
            plan = shapes.plan_reply(body, text, shapes.count_tokens(text), reply, self.chunks)
            events = shapes.completion_events(plan, meta, self._include_usage(body))
            return shapes.completion_json(plan, meta), events

        return await self._generation(request, build, "cmpl-")

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        def build(body: JSON, meta: Meta, reply: Reply | None) -> tuple[JSON, list[bytes]] | str:
            plain = {k: v for k, v in body.items() if k != "n"}
            text = input_text(body.get("input"))
            plan = shapes.plan_reply(plain, text, input_tokens(body), reply, self.chunks)
            return response_json(plan, meta, body), response_events(plan, meta, body)

        return await self._generation(request, build, "resp_")

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = _loads(await request.read())
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return wire.bad_request(request, "you must provide a model parameter", "model")
        result = embeddings_json(body, body["model"])
        if isinstance(result, str):
            return wire.bad_request(request, result, "input")
        return await self._answer(request, result)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, shapes.models_json(self.models, int(self._clock())))

    async def _files(self, request: web.Request) -> web.StreamResponse:
        fields = _multipart(request.headers.get("Content-Type", ""), await request.read())
        upload = fields.get("file")
        if upload is None:
            return wire.bad_request(request, "a multipart 'file' field is required", "file")
        filename, content = upload
        return await self._answer(
            request,
            {
                "id": f"file-mock{request[wire.SEQ]:06d}",
                "object": "file",
                "bytes": len(content),
                "created_at": int(self._clock()),
                "filename": filename,
                "purpose": fields.get("purpose", ("", b""))[1].decode(),
                "status": "processed",
                "expires_at": None,
                "status_details": None,
            },
        )

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        return await self._answer(
            request,
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "body_length": len(body),
            },
        )


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str, bytes]]:
    """Fields of a multipart/form-data body as name -> (filename, bytes); enough for a mock."""
    marker = "boundary="
    if marker not in content_type:
        return {}
    boundary = content_type.split(marker, 1)[1].split(";", 1)[0].strip().strip('"')
    fields: dict[str, tuple[str, bytes]] = {}
    for part in body.split(b"--" + boundary.encode())[1:]:
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = head.decode("latin-1")
        name = _param(disposition, "name")
        if name is not None:
            fields[name] = (_param(disposition, "filename") or "", content.removesuffix(b"\r\n"))
    return fields


def _param(header: str, key: str) -> str | None:
    for item in header.replace("\r\n", ";").split(";"):
        name, _, value = item.strip().partition("=")
        if name == key:
            return value.strip('"')
    return None
