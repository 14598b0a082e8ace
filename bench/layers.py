"""CPU microseconds per request that each config adds, and each policy layer costs, in-process.

    python bench/layers.py [--requests 3000] [--rounds 5] [--unique] [--body FILE] CONFIG...

Throughput on a shared 2-core machine swings by a third from one minute to the next; CPU time
spent by one process on a fixed workload does not. Here the sidecar's app is built from each
config in this process, with the benchmark's mock upstream on the same event loop, and requests
go straight into the policy pipeline, one after another (no HTTP server, no load generator: what
is left is what the policies and the upstream client cost). For each config it reports the
fastest round's CPU time per request and, per layer, its own CPU time (time inside the layer,
minus time inside the layers below it; the timing itself adds ~1 us per layer).

The rows to compare are configs of one run: `none.toml` first gives the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiohttp import web  # noqa: E402
from multidict import CIMultiDict, CIMultiDictProxy  # noqa: E402

from proxy import pipeline  # noqa: E402
from proxy.config import load_config  # noqa: E402
from proxy.exchange import Exchange, Reply  # noqa: E402
from proxy.server import SERVICES, build_app  # noqa: E402
from proxy.wire.request import endpoint_of, parse_body  # noqa: E402
from tests.mock_upstream.fast import serve_fast  # noqa: E402

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the benchmark."}]}'
PATH = "/v1/chat/completions"
Handler = Callable[[Exchange], Awaitable[Reply]]


class LayerClock:
    """Wraps every policy layer (through `pipeline._bind`) to charge CPU time to it."""

    def __init__(self) -> None:
        self.inside: collections.Counter[str] = collections.Counter()
        self.below: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.order: list[str] = []

    def bind(self, policy: pipeline.Policy, call_next: Handler) -> Handler:
        name = getattr(policy, "name", type(policy).__name__)
        self.order.insert(0, name)
        clock = time.process_time_ns
        inside, below, calls = self.inside, self.below, self.calls

        async def lower(ex: Exchange) -> Reply:
            started = clock()
            try:
                return await call_next(ex)
            finally:
                below[name] += clock() - started

        async def layer(ex: Exchange) -> Reply:
            started = clock()
            try:
                return await policy(ex, lower)
            finally:
                inside[name] += clock() - started
                calls[name] += 1

        return layer

    def reset(self) -> None:
        self.inside.clear()
        self.below.clear()
        self.calls.clear()


async def measure(config_path: Path, args: argparse.Namespace, upstream: str,
                  body: bytes) -> tuple[float, list[tuple[str, float]]]:
    env = {**os.environ, "BENCH_UPSTREAM_URL": upstream + "/v1", "BENCH_OTLP_ENDPOINT": upstream}
    layers = LayerClock()
    original = pipeline._bind
    pipeline._bind = layers.bind  # type: ignore[assignment]
    try:
        app = build_app(load_config(config_path, env))
        runner = web.AppRunner(app)
        await runner.setup()  # runs the app's lifecycle: policies, upstream client, state
    finally:
        pipeline._bind = original  # type: ignore[assignment]
    services = app[SERVICES]
    endpoint = endpoint_of("POST", PATH)
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer sk-bench-client",
                                            "Content-Type": "application/json"}))
    marker = b'"content":"'

    async def one(number: int) -> None:
        raw = body.replace(marker, marker + b"%d " % number, 1) if args.unique else body
        parsed = parse_body(endpoint, raw)
        ex = Exchange(request_id=f"r{number}", endpoint=endpoint, method="POST", path=PATH,
                      query="", headers=headers, client_ip="127.0.0.1", raw_body=raw,
                      body=parsed, model=parsed.get("model"), stream=False)
        ex.upstream = services.router.route(ex.model)
        reply = await services.pipeline(ex)
        if reply.stream is not None:
            async for _ in reply.stream:
                pass

    try:
        for number in range(min(2000, args.requests)):  # warm: caches, pools, encodings
            await one(number)
        best = float("inf")
        best_layers: list[tuple[str, float]] = []
        for round_ in range(args.rounds):
            layers.reset()
            started = time.process_time()
            for number in range(args.requests):
                await one((round_ + 1) * 1_000_000 + number)
            spent = (time.process_time() - started) / args.requests * 1e6
            if spent < best:
                best = spent
                best_layers = [(name, (layers.inside[name] - layers.below[name])
                                / max(1, layers.calls[name]) / 1000) for name in layers.order]
        return best, best_layers
    finally:
        await runner.cleanup()


async def main(args: argparse.Namespace, body: bytes) -> None:
    server = await serve_fast("127.0.0.1", 0, 50, 0.0)
    port = server.sockets[0].getsockname()[1]
    try:
        print(f"{'config':28s} {'us/request':>10s}  own CPU per layer (us)")
        for config in args.configs:
            total, layers = await measure(Path(config), args, f"http://127.0.0.1:{port}", body)
            own = ", ".join(f"{name} {cost:.1f}" for name, cost in layers) or "-"
            print(f"{Path(config).name:28s} {total:10.1f}  {own}", flush=True)
    finally:
        server.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="sidecar config files")
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the fastest is kept")
    parser.add_argument("--unique", action="store_true", help="a distinct prompt per request")
    parser.add_argument("--body", help="a file holding the request body (JSON)")
    return parser


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    arguments: Any = _parser().parse_args()
    asyncio.run(main(arguments, Path(arguments.body).read_bytes() if arguments.body else BODY))
