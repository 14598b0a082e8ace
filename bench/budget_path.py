"""The budget path in a hot loop: the real policy against its floor, through the same call.

    python bench/budget_path.py [--number 20000]

Each request is an `Exchange` handed to a layer whose `call_next` returns the benchmark's answer,
as in the sidecar but with no HTTP and no upstream. Three layers are timed: one that does nothing
(the base), `bench/floors.py`'s budgets floor, and the real `[[budgets]]` policy built from
`bench/configs/budgets_memory.toml` (two budgets, memory ledger, spend persisted to a temporary
SQLite file) with the caller identified as the sidecar does without `[[keys]]`. It prints the CPU
microseconds per request each adds to the base: the fastest of 5 rounds, everything warm in the CPU
caches, so a lower bound on what each costs inside the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE.parent))

from floors import ANSWER, BODY, BudgetsFloor, LayerFloor  # noqa: E402

from proxy.config import load_config  # noqa: E402
from proxy.exchange import Endpoint, Exchange, Reply  # noqa: E402
from proxy.pipeline import PolicyContext  # noqa: E402
from proxy.policies import auth, budget  # noqa: E402
from proxy.state import StateBackend  # noqa: E402
from proxy.tokens import TokenCounter  # noqa: E402

Step = Callable[[Exchange], Awaitable[Reply]]


async def main(number: int) -> None:
    encodings = REPO.parent / "shared" / "tiktoken"
    if "TIKTOKEN_CACHE_DIR" not in os.environ and encodings.is_dir():
        os.environ["TIKTOKEN_CACHE_DIR"] = str(encodings)
    with tempfile.TemporaryDirectory(prefix="llm-sidecar-budget-") as data:
        env = {**os.environ, "BENCH_UPSTREAM_URL": "http://127.0.0.1:9/v1",
               "SIDECAR_STATE__DATA_DIR": data}
        config = load_config(REPO / "bench" / "configs" / "budgets_memory.toml", env)
        tokens = TokenCounter()
        tokens.load()
        ctx = PolicyContext(settings=config.settings, state=StateBackend.open(config.settings.state),
                            tokens=tokens)
        real = await budget.create(config.policies["budgets"], ctx)
        identity = await auth.create([], ctx)
        assert real is not None
        try:
            await _compare(number, real, identity)
        finally:
            await real.aclose()


async def _compare(number: int, real: budget.BudgetPolicy, identity: auth.AuthPolicy) -> None:
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer sk-bench-client",
                                            "Content-Type": "application/json"}))
    body = orjson.loads(BODY)
    nothing, floor = LayerFloor(), BudgetsFloor()

    async def upstream(ex: Exchange) -> Reply:
        return Reply(200, {"Content-Type": "application/json"}, body=ANSWER)

    async def base(ex: Exchange) -> Reply:
        return await nothing(ex, upstream)

    async def floor_layer(ex: Exchange) -> Reply:
        return await floor(ex, upstream)

    async def real_layer(ex: Exchange) -> Reply:
        identity.identify_into(ex)
        return await real(ex, upstream)

    async def per_request(step: Step) -> float:
        started = time.process_time()
        for _ in range(number):
            await step(Exchange(request_id="r", endpoint=Endpoint.CHAT, method="POST",
                                path="/v1/chat/completions", query="", headers=headers,
                                client_ip="127.0.0.1", raw_body=BODY, body=body,
                                model="gpt-4o-mini"))
        return (time.process_time() - started) / number * 1e6

    fastest = {}
    for name, step in (("base", base), ("floor", floor_layer), ("real", real_layer)):
        fastest[name] = min([await per_request(step) for _ in range(5)])
    print(f"Python {sys.version.split()[0]}: CPU us per request, hot loop, fastest of 5 rounds "
          f"of {number}")
    print(f"a layer that does nothing  {fastest['base']:6.2f}")
    print(f"budgets floor              {fastest['floor'] - fastest['base']:+6.2f}")
    print(f"[[budgets]], identity step {fastest['real'] - fastest['base']:+6.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=20_000, help="requests per round")
    asyncio.run(main(parser.parse_args().number))
