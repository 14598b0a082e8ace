"""The benchmark's reference: a bare aiohttp pass-through proxy with no policies at all.

Every sidecar figure is a ratio against this, so it does only what any proxy must: read the request,
forward it on one pooled session, stream the answer back chunk by chunk.
Usage: python bench/passthrough.py --port 8091 --upstream http://127.0.0.1:8090
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp
from aiohttp import web

# Connection-level headers are per hop (RFC 9110 section 7.6.1); the body is re-framed here.
HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def _forwardable(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP}


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    url = request.app[UPSTREAM] + request.rel_url.raw_path_qs
    session = request.app[SESSION]
    try:
        upstream = await session.request(
            request.method, url, headers=_forwardable(request.headers), data=body or None
        )
    except aiohttp.ClientError as exc:
        return web.json_response(
            {"error": {"message": f"upstream: {exc}", "type": "upstream_error", "param": None, "code": None}},
            status=502,
        )
    async with upstream:
        response = web.StreamResponse(status=upstream.status, headers=_forwardable(upstream.headers))
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def build_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 << 20)
    app[UPSTREAM] = upstream.rstrip("/")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
        # No decompression and no timeouts beyond the socket's: bytes in, the same bytes out.
        async with aiohttp.ClientSession(
            connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
        ) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(host: str, port: int, upstream: str) -> None:
    runner = web.AppRunner(build_app(upstream), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    print(f"passthrough on http://{host}:{port} -> {upstream}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8090")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        _run(serve(args.host, args.port, args.upstream))


if __name__ == "__main__":
    main()
