"""Lower bounds: what the barest form of each policy's per-request work costs in CPython, alone
and inside the running sidecar, against what its throughput target allows.

    python bench/floors.py tight [--number 20000]
    python bench/floors.py load [--processes 2] [--rounds 6] [--seconds 3] [--floors NAME...]
                                [--configs CONFIG...] [--body FILE]

A floor is the irreducible core of one policy's work on the benchmark's request, written as the
plainest code there is: no configuration, no options, no streams, no error handling, no
correctness beyond the happy path of this one request shape. A real implementation does all of
this and more, so it costs more than its floor.
- cache miss: canonical key (sorted-key JSON without the transport fields, BLAKE2b, the caller's
  key id from a memo), a lookup, the answer kept in a bounded LRU, the two response headers.
- limits (three rules): the prompt's token count (tiktoken), three sliding windows (requests and
  tokens per key, requests per model; each a previous and a current counter) checked and charged,
  a concurrency count, the x-ratelimit headers, then the answer's usage read, the token window
  reconciled and the concurrency slot released.
- budgets: a price estimate reserved on two budgets (the input bounded by the body's length in
  bytes, not counted), then the answer's usage read, its cost settled on both, the cost header.
- tracing: ids and timestamps for a SERVER and a CLIENT span, their attributes from the request
  and the answer's usage, both queued, three histogram records. Not the OTLP encoding, which
  comes on top (on the same core).
- pii: one pass of one regex character class (a digit or an @) over each prompt text, the body
  written back; not a single recognizer, nor the answer. This is the floor of a scanner built
  on `re`, whose every pass costs about 5 us per KB of text.
- layer: a policy that does nothing, for what being a layer costs.

`tight` times each floor in a hot loop: everything warm in the CPU caches, the fastest it can be.
`load` puts each floor, as the only policy, into the real sidecar (`none.toml` otherwise) and
measures throughput like `bench/ab.py` (every prompt distinct, so the cache floor only misses):
there the floor's code and data compete with the HTTP server's for the caches, as a real policy's
do. A floor that already costs more than its target allows means no pure-Python design meets that
target on this stack; one that costs less bounds what a redesign could win.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import hashlib
import os
import random
import re
import sys
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from proxy.exchange import Exchange, Reply  # noqa: E402

Handler = Callable[[Exchange], Awaitable[Reply]]
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the benchmark."}]}'
ANSWER = orjson.dumps({
    "id": "chatcmpl-0123456789abcdef", "object": "chat.completion", "created": 1764000000,
    "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_0123456789",
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": {
        "role": "assistant", "refusal": None, "content": "Hello, benchmark! " * 40}}],
    "usage": {"prompt_tokens": 14, "completion_tokens": 120, "total_tokens": 134},
})
NOT_IN_KEY = frozenset({"stream", "stream_options", "user", "metadata"})
BOUNDS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
FLOORS = ("layer", "cache", "limits", "budgets", "tracing", "pii")


def _texts(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if isinstance(m.get("content"), str)]


def _encoding() -> Any:
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared" / "tiktoken"))
    import tiktoken

    return tiktoken.get_encoding("o200k_base")


class Floor:
    """A policy for the pipeline; nothing to close."""

    async def aclose(self) -> None:
        pass


class LayerFloor(Floor):
    """No work at all: what one policy layer costs by being there."""

    name = "layer-floor"

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        return await call_next(ex)


class CacheFloor(Floor):
    name = "cache-floor"

    def __init__(self) -> None:
        self._scopes: dict[str, str] = {}
        self._store: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    def key(self, body: dict[str, Any], authorization: str, headers: dict[str, str]) -> str | None:
        scope = self._scopes.get(authorization)
        if scope is None:
            scope = self._scopes[authorization] = hashlib.sha256(authorization.encode()).hexdigest()
        trimmed = {k: v for k, v in body.items() if k not in NOT_IN_KEY and v is not None}
        digest = hashlib.blake2b(orjson.dumps(trimmed, option=orjson.OPT_SORT_KEYS),
                                 digest_size=16).hexdigest()
        key = f"c|1||{body['model']}|{scope[:16]}|{digest}"
        headers["x-sidecar-cache-key"] = digest
        if key in self._store:
            headers["x-sidecar-cache"] = "hit"
            return None
        headers["x-sidecar-cache"] = "miss"
        return key

    def keep(self, key: str, answer: bytes) -> None:
        self._store[key] = answer
        if len(self._store) > 50_000:
            self._store.popitem(last=False)

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        assert ex.body is not None
        key = self.key(ex.body, ex.headers.get("Authorization", ""), ex.reply_headers)
        reply = await call_next(ex)
        if key is not None and reply.body is not None and reply.status == 200:
            self.keep(key, reply.body)
        return reply


class LimitsFloor(Floor):
    name = "limits-floor"

    def __init__(self) -> None:
        self._encoding = _encoding()
        self._windows: dict[str, list[float]] = {}
        self._inflight: dict[str, int] = {}

    def _charge(self, name: str, window: float, limit: float, cost: float, now: float) -> float:
        slot = self._windows.get(name)
        start = now // window
        if slot is None:
            slot = self._windows[name] = [start, 0.0, 0.0]
        if start != slot[0]:
            slot[1], slot[2], slot[0] = (slot[2] if start == slot[0] + 1 else 0.0), 0.0, start
        used = slot[1] * (1.0 - (now / window - start)) + slot[2]
        if used + cost > limit:
            raise RuntimeError("refused")
        slot[2] += cost
        return limit - used - cost

    def admit(self, body: dict[str, Any], headers: dict[str, str]) -> int:
        tokens = sum(len(self._encoding.encode_ordinary(t)) for t in _texts(body)) + 1024
        now = time.monotonic()
        key_requests = self._charge("key-r", 60.0, 1e8, 1, now)
        key_tokens = self._charge("key-t", 60.0, 1e11, tokens, now)
        self._charge("model-r", 1.0, 1e7, 1, now)
        self._inflight["upstream"] = self._inflight.get("upstream", 0) + 1
        headers["x-ratelimit-limit-requests"] = "100000000"
        headers["x-ratelimit-remaining-requests"] = str(int(key_requests))
        headers["x-ratelimit-reset-requests"] = "1s"
        headers["x-ratelimit-limit-tokens"] = "100000000000"
        headers["x-ratelimit-remaining-tokens"] = str(int(key_tokens))
        headers["x-ratelimit-reset-tokens"] = "6m0s"
        return tokens

    def settle(self, charged: int, answer: bytes) -> None:
        real = orjson.loads(answer)["usage"]["total_tokens"]
        self._windows["key-t"][2] += real - charged
        self._inflight["upstream"] -= 1

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        assert ex.body is not None
        charged = self.admit(ex.body, ex.reply_headers)
        reply = await call_next(ex)
        self.settle(charged, reply.body or ANSWER)
        return reply


class BudgetsFloor(Floor):
    """Reserves on the cheapest safe estimate: a prompt has no more tokens than UTF-8 bytes, so
    the body's length bounds its input tokens without counting them."""

    name = "budgets-floor"
    PRICE_IN, PRICE_OUT = 150, 600  # nano-dollars per token

    def __init__(self) -> None:
        self._spent = {"per-key-monthly": 0, "per-model-daily": 0}
        self._held = dict.fromkeys(self._spent, 0)

    def reserve(self, raw: bytes) -> int:
        estimate = len(raw) * self.PRICE_IN + 1024 * self.PRICE_OUT
        for name, held in self._held.items():
            if self._spent[name] + held + estimate > 10**18:
                raise RuntimeError("refused")
            self._held[name] = held + estimate
        return estimate

    def settle(self, estimate: int, answer: bytes, headers: dict[str, str]) -> None:
        usage = orjson.loads(answer)["usage"]
        cost = usage["prompt_tokens"] * self.PRICE_IN + usage["completion_tokens"] * self.PRICE_OUT
        for name in self._held:
            self._held[name] -= estimate
            self._spent[name] += cost
        headers["x-sidecar-cost-usd"] = f"{cost / 1e9:.8f}"

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        estimate = self.reserve(ex.raw_body)
        reply = await call_next(ex)
        self.settle(estimate, reply.body or ANSWER, reply.headers)
        return reply


class TracingFloor(Floor):
    name = "tracing-floor"

    def __init__(self) -> None:
        self._random = random.Random()
        self._histograms = [[0] * (len(BOUNDS) + 1) for _ in range(3)]
        self._done: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=4096)

    def start(self) -> tuple[int, int]:
        return self._random.getrandbits(128), time.time_ns()

    def end(self, trace: tuple[int, int], sent: int, model: str, answer: bytes) -> None:
        trace_id, started = trace
        parsed = orjson.loads(answer)
        usage = parsed["usage"]
        client = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                  "gen_ai.request.model": model, "gen_ai.response.model": parsed["model"],
                  "gen_ai.response.id": parsed["id"],
                  "gen_ai.response.finish_reasons": (parsed["choices"][0]["finish_reason"],),
                  "gen_ai.usage.input_tokens": usage["prompt_tokens"],
                  "gen_ai.usage.output_tokens": usage["completion_tokens"],
                  "server.address": "127.0.0.1", "server.port": 18081}
        server = {"http.request.method": "POST", "url.path": "/v1/chat/completions",
                  "http.response.status_code": 200}
        ended = time.time_ns()
        self._done.append((trace_id, self._random.getrandbits(64), "chat " + model, sent, ended,
                           client))
        self._done.append((trace_id, self._random.getrandbits(64), "POST /v1/chat/completions",
                           started, ended, server))
        for histogram, value in zip(self._histograms, ((ended - started) / 1e9, 14, 120),
                                    strict=True):
            histogram[bisect.bisect_left(BOUNDS, value)] += 1

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        trace = self.start()
        sent = time.time_ns()
        reply = await call_next(ex)
        self.end(trace, sent, ex.model or "", reply.body or ANSWER)
        return reply


class PiiFloor(Floor):
    """The least a regex scanner does: one pass of one character class over each prompt text, for
    every place an entity could start (a digit, an @), and the body written back for upstream.
    No recognizer looks closer at any place, nothing is replaced, the answer is not read."""

    name = "pii-floor"
    CANDIDATE = re.compile(r"[0-9@]")

    def redact(self, body: dict[str, Any]) -> bytes:
        places = 0
        for message in body["messages"]:
            text = message.get("content")
            if isinstance(text, str):
                places += len(self.CANDIDATE.findall(text))
        return orjson.dumps(body) if places >= 0 else b""

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        assert ex.body is not None
        ex.raw_body = self.redact(ex.body)
        return await call_next(ex)


def _policy(name: str) -> Any:
    return {"layer": LayerFloor, "cache": CacheFloor, "limits": LimitsFloor,
            "budgets": BudgetsFloor, "tracing": TracingFloor, "pii": PiiFloor}[name]()


def tight(number: int) -> list[tuple[str, float]]:
    """Microseconds per request of each floor in a hot loop (fastest of 5 repeats)."""
    body = orjson.loads(BODY)
    big = orjson.loads((REPO / "bench" / "bodies" / "chat-2kb.json").read_bytes())
    counter = iter(range(1 << 62))
    cache, limits, budgets, tracing, pii = (_policy(name) for name in FLOORS[1:])

    def cache_once() -> None:
        headers: dict[str, str] = {}
        body["n"] = next(counter)  # a distinct request each time: a miss
        key = cache.key(body, "Bearer sk-bench-client", headers)
        if key is not None:
            cache.keep(key, ANSWER)

    def limits_once() -> None:
        limits.settle(limits.admit(body, {}), ANSWER)

    def budgets_once() -> None:
        budgets.settle(budgets.reserve(BODY), ANSWER, {})

    def tracing_once() -> None:
        tracing.end(tracing.start(), time.time_ns(), "gpt-4o-mini", ANSWER)

    def pii_once() -> None:
        pii.redact(big)

    return [(name, min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6)
            for name, fn in zip(FLOORS[1:], (cache_once, limits_once, budgets_once, tracing_once,
                                             pii_once), strict=True)]


def serve(floor: str, argv: list[str]) -> int:
    """The sidecar (`proxy serve ARGS`) with this floor as its only policy."""
    from proxy import cli, server

    async def only_the_floor(configs: Any, ctx: Any) -> list[Any]:
        return [_policy(floor)]

    server.create_policies = only_the_floor  # type: ignore[assignment]
    return cli.main(argv)


async def load(args: argparse.Namespace) -> int:
    """Each floor as the sidecar's only policy, and `args.configs` as they are, against none."""
    sys.path.insert(0, str(REPO / "bench"))
    from ab import Variant, compare

    os.environ["BENCH_UNIQUE"] = "1"  # read by bench/post.lua: the cache floor only misses
    none = REPO / "bench" / "configs" / "none.toml"
    variants = [Variant("none", none),
                *(Variant(f"{name} floor", none, (str(HERE), "serve-floor", name))
                  for name in args.floors),
                *(Variant(Path(config).name, Path(config)) for config in args.configs)]
    return await compare(variants, args, f"python bench/floors.py {' '.join(sys.argv[1:])}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve-floor"]:
        return serve(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    tight_ = commands.add_parser("tight", help="each floor in a hot loop")
    tight_.add_argument("--number", type=int, default=20_000, help="calls per repeat")
    load_ = commands.add_parser("load", help="each floor as the sidecar's only policy, under wrk")
    load_.add_argument("--processes", type=int, default=2, help="sidecar processes per target")
    load_.add_argument("--rounds", type=int, default=6, help="windows per process")
    load_.add_argument("--seconds", type=float, default=3.0, help="length of one window")
    load_.add_argument("--connections", type=int, default=64, help="wrk connections")
    load_.add_argument("--floors", nargs="+", choices=FLOORS, default=list(FLOORS[:5]),
                       help="floors to measure against none.toml")
    load_.add_argument("--configs", nargs="*", default=[],
                       help="real configs to measure in the same run, for comparison")
    load_.add_argument("--body", help="the request body (JSON file); default: the small chat")
    args = parser.parse_args(argv)
    if args.command == "tight":
        print(f"Python {sys.version.split()[0]}: floors in CPU microseconds per request, hot loop")
        for name, micros in tight(args.number):
            print(f"{name:10s} {micros:6.1f}")
        return 0
    if args.body:
        os.environ["BENCH_BODY"] = Path(args.body).read_text()  # read by bench/post.lua
    args.configs = [str(Path(config).resolve()) for config in args.configs]
    return asyncio.run(load(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
