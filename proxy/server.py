"""Builds the aiohttp application: routes, the lifecycle of everything a request needs, and the
one place where errors become responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from proxy.config import Config
from proxy.drain import Drain
from proxy.errors import (
    BodyTooLarge,
    NotFound,
    SidecarError,
    error_body,
    error_event,
    internal_error_body,
)
from proxy.exchange import Endpoint, Exchange, Reply
from proxy.pipeline import Clock, Pipeline, PolicyContext, SystemClock
from proxy.policies import create_policies
from proxy.pricing import Pricing
from proxy.routing.router import Router
from proxy.state import StateBackend
from proxy.tokens import TokenCounter
from proxy.upstream import UpstreamClient
from proxy.wire.request import API_PATHS, endpoint_of, parse_body

log = logging.getLogger("proxy.server")


@dataclass(slots=True)
class Services:
    """Everything built at startup that requests use."""

    config: Config
    router: Router
    pipeline: Pipeline
    context: PolicyContext
    ids: RequestIds


class RequestIds:
    """`x-request-id` for requests that bring none: a random per-process prefix and a counter.

    Unique across processes and restarts like a random id, without a system call per request.
    """

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


CONFIG = web.AppKey("config", Config)
DRAIN = web.AppKey("drain", Drain)
CLOCK = web.AppKey("clock", Clock)
SERVICES = web.AppKey("services", Services)
_JSON = {"Content-Type": "application/json"}


def build_app(config: Config, clock: Clock | None = None) -> web.Application:
    app = web.Application(client_max_size=config.settings.server.max_body_size)
    app[CONFIG] = config
    app[CLOCK] = clock or SystemClock()
    app[DRAIN] = Drain(config.settings.server.drain_timeout)
    app.on_shutdown.append(app[DRAIN].begin)
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_route("*", "/admin/{tail:.*}", _admin)
    for path in API_PATHS:  # exact paths resolve at once; the catch-all takes the rest
        app.router.add_route("*", path, _proxy)
    app.router.add_route("*", "/v1/{tail:.*}", _proxy)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    settings = config.settings
    tokens = TokenCounter()
    await asyncio.to_thread(tokens.load)
    state = StateBackend.open(settings.state)
    client = UpstreamClient()
    await client.start()
    try:
        router = Router(settings, client, app[CLOCK])
        context = PolicyContext(settings=settings, state=state, tokens=tokens, clock=app[CLOCK],
                                upstream=router)
        context.extras["route"] = router.route
        context.extras["pricing"] = await asyncio.to_thread(
            Pricing.load, settings.pricing.models, settings.pricing.default)
        policies = await create_policies(config.policies, context)
        pipeline = Pipeline(policies, context.terminal(router), context.steps)
        try:
            app[SERVICES] = Services(config, router, pipeline, context, RequestIds())
            # Everything built so far lives as long as the app: keep it out of the collector's
            # generations so full collections under load stay short. Each young collection walks
            # every in-flight request's objects, so collect young objects rarely: requests free
            # almost everything by reference counting, and cycles wait a little longer.
            gc.freeze()
            thresholds = gc.get_threshold()
            gc.set_threshold(20_000, 20, 100)
            try:
                yield
            finally:
                gc.set_threshold(*thresholds)
        finally:
            await pipeline.aclose()
    finally:
        await client.aclose()
        await state.aclose()


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def _readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    checks = {"state": await services.context.state.ready()}
    for name, check in services.context.readiness.items():
        try:
            checks[name] = await check()
        except Exception:
            checks[name] = False
    ready = all(checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    render = request.app[SERVICES].context.extras.get("prometheus")
    if render is None:
        return _error(NotFound("Metrics are off: enable [tracing] to serve /metrics."), {})
    return web.Response(body=render(), content_type="text/plain", charset="utf-8")


async def _admin(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    admin_key = services.config.settings.server.admin_key
    if admin_key is None:
        return _error(NotFound("The admin API is off: set server.admin_key to enable it."), {})
    presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(presented.encode(), admin_key.get_secret_value().encode()):
        return _error(SidecarError("A valid admin key is required.", status=401,
                                   type="invalid_request_error", code="invalid_admin_key"), {})
    handler = services.context.admin_routes.get((request.method, request.match_info["tail"]))
    if handler is None:
        return _error(NotFound(f"Unknown admin route: {request.method} {request.path}"), {})
    try:
        return await handler(request)
    except SidecarError as exc:
        return _error(exc, {})


async def _proxy(request: web.Request) -> web.StreamResponse:
    drain = request.app[DRAIN]
    task = request.task
    drain.track(task)
    try:
        return await _handle(request, drain)
    finally:
        drain.untrack(task)


async def _handle(request: web.Request, drain: Drain) -> web.StreamResponse:
    started = time.perf_counter()
    services = request.app[SERVICES]
    request_id = request.headers.get("x-request-id") or services.ids()
    ex: Exchange | None = None
    try:
        ex = await _exchange(request, services, request_id, started)
        reply = await services.pipeline(ex)
    except SidecarError as exc:
        headers = dict(ex.reply_headers) if ex is not None else {}
        return _error(exc, _finish_headers(headers, request_id, started, ex))
    except asyncio.CancelledError:
        if drain.absorb():
            return _error(_shutting_down(), {"x-request-id": request_id})
        raise
    except Exception:
        log.exception("unhandled error in request %s", request_id)
        return _internal_error(request_id)
    return await _write(request, ex, reply, drain)


async def _exchange(request: web.Request, services: Services, request_id: str,
                    started: float) -> Exchange:
    endpoint = endpoint_of(request.method, request.path)
    body = None
    raw = b""
    if endpoint is not Endpoint.PASSTHROUGH and endpoint is not Endpoint.MODELS:
        limit = services.config.settings.server.max_body_size
        if (request.content_length or 0) > limit:
            raise BodyTooLarge(f"The request body exceeds the {limit} byte limit.")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLarge(f"The request body exceeds the {limit} byte limit.") from None
        body = parse_body(endpoint, raw)
    model = body.get("model") if body is not None else None
    ex = Exchange(
        request_id=request_id, endpoint=endpoint, method=request.method, path=request.path,
        query=request.query_string, headers=request.headers, client_ip=_client_ip(request, services),
        raw_body=raw, body=body, model=model, stream=bool(body and body.get("stream") is True),
        started=started,
    )
    if endpoint is Endpoint.PASSTHROUGH and request.body_exists:
        ex.body_stream = request.content.iter_chunked(1 << 16)
    ex.upstream = services.router.route(model)
    return ex


def _client_ip(request: web.Request, services: Services) -> str:
    if services.config.settings.server.trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded:
            return forwarded.split(",")[0].strip()
    return request.remote or ""


async def _write(request: web.Request, ex: Exchange, reply: Reply,
                 drain: Drain) -> web.StreamResponse:
    headers = _finish_headers({**reply.headers, **ex.reply_headers}, ex.request_id, ex.started, ex)
    if reply.stream is None:
        return web.Response(status=reply.status, body=reply.body, headers=headers)
    if reply.sse:
        headers["Content-Type"] = "text/event-stream; charset=utf-8"
        headers["Cache-Control"] = "no-cache"
    response = web.StreamResponse(status=reply.status, headers=headers)
    stream = reply.stream
    try:
        # Start the chain of stream wrappers before anything can fail: an async generator closed
        # before its first step skips its `finally`, and with it the policies' accounting.
        first = await anext(stream, b"")
        await response.prepare(request)
        if first:
            await response.write(first)
        async for chunk in stream:
            await response.write(chunk)
        await response.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away; closing the stream below cancels the upstream
    except asyncio.CancelledError:
        if not drain.absorb():
            raise  # the client went away
        with contextlib.suppress(Exception):
            if reply.sse:
                await response.write(error_event(_shutting_down(), ex.endpoint is Endpoint.RESPONSES))
            await response.write_eof()
    finally:
        await stream.aclose()
    return response


def _shutting_down() -> SidecarError:
    return SidecarError("The sidecar is shutting down and its drain deadline passed.",
                        status=503, type="server_error", code="server_shutting_down")


def _finish_headers(headers: dict[str, str], request_id: str, started: float,
                    ex: Exchange | None) -> dict[str, str]:
    waited = ex.upstream_wait if ex is not None else 0.0
    headers["x-request-id"] = request_id
    headers["x-sidecar-overhead-ms"] = f"{(time.perf_counter() - started - waited) * 1000:.3f}"
    return headers


def _error(exc: SidecarError, headers: dict[str, str]) -> web.Response:
    """The one place an error becomes a response: OpenAI's envelope, its status and headers."""
    return web.Response(status=exc.status, body=error_body(exc),
                        headers={**headers, **exc.headers, **_JSON})


def _internal_error(request_id: str) -> web.Response:
    return web.Response(status=500, body=internal_error_body(),
                        headers={"x-request-id": request_id, **_JSON})
