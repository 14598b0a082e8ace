"""Run the mock upstream standalone: `python -m tests.mock_upstream --port P [--fast]`.

`--fast` replays precomputed bytes (for the benchmark); without it the full mock answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from tests.mock_upstream.fast import serve_fast
from tests.mock_upstream.server import MockUpstream


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.mock_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--chunks", type=int, default=5, help="stream pieces per answer")
    parser.add_argument("--fast", action="store_true", help="precomputed answers, least overhead")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between stream events")
    return parser


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _main(args: argparse.Namespace) -> None:
    if args.fast:
        server = await serve_fast(args.host, args.port, args.chunks, args.chunk_delay)
        port = server.sockets[0].getsockname()[1]
        print(f"mock upstream (fast) on http://{args.host}:{port}/v1", flush=True)
        async with server:
            await _until_signalled()
        return
    async with MockUpstream(host=args.host, port=args.port, chunks=args.chunks) as mock:
        if args.chunk_delay:
            mock.fault("chunk_delay", seconds=args.chunk_delay)
        print(f"mock upstream on {mock.base_url}", flush=True)
        await _until_signalled()


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        _run(_main(args))


if __name__ == "__main__":
    main(sys.argv[1:])
