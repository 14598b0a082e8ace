"""Latency of the semantic cache with the local embedder and a large index (not run by CI).

Measures, each over a bounded number of runs: embedding one short prompt; exact search of one
scope holding N entries; a whole lookup (embed + search + guard) that hits and one that misses;
and throughput of concurrent lookups (micro-batching).
    OPENBLAS_NUM_THREADS=1 python bench/semantic_bench.py [--entries 100000] [--runs 300] [--model DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import numpy as np

from proxy.semantic.embedder import LocalEmbedder
from proxy.semantic.engine import SemanticEngine, pack
from proxy.semantic.guard import Guard
from proxy.semantic.index import MemoryVectorIndex

SCOPE = "bench"
PROMPTS = [
    "What is the capital of France?",
    "How do I reverse a list in Python?",
    "Convert 24 miles to kilometers.",
    "Explain photosynthesis to a ten-year-old.",
    "Write a haiku about autumn leaves.",
]
PARAPHRASES = [
    "Tell me the capital of France.",
    "Python: how to reverse a list?",
    "How many kilometers is 24 miles?",
    "Describe photosynthesis for a ten-year-old.",
    "Compose a haiku about autumn leaves.",
]
MISSES = [
    "Which rivers flow through Vienna?",
    "How do I centre a div with CSS grid?",
    "What did the Treaty of Westphalia settle?",
    "Recommend a sci-fi novel about first contact.",
    "Why does bread go stale?",
]


def pct(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))] * 1000


async def timed(runs: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    out = []
    for i in range(runs):
        start = time.perf_counter()
        await call(i)
        out.append(time.perf_counter() - start)
    return out


def report(name: str, samples: list[float]) -> None:
    print(f"| {name} | {pct(samples, 0.5):.2f} | {pct(samples, 0.99):.2f} | {len(samples)} |")


SUBJECTS = ["my laptop", "a sourdough loaf", "the Roman Empire", "quantum computing", "tax returns",
            "a job interview", "climate change", "the stock market", "a wedding speech", "Kubernetes",
            "marathon training", "a vegetable garden", "the French revolution", "SQL joins",
            "a cover letter", "black holes", "a birthday party", "electric cars", "jazz piano",
            "a leaking tap"]
ASKS = ["How do I fix {}?", "Explain {} simply.", "What are common mistakes with {}?",
        "Give me three tips about {}.", "Write a short poem about {}.", "What is the history of {}?",
        "Is {} worth it?", "Summarize the basics of {}.", "Compare {} with the alternatives.",
        "What should a beginner know about {}?"]


async def fill(index: MemoryVectorIndex, embedder: LocalEmbedder, entries: int) -> None:
    """Filler with the shape of real prompt vectors: mixes of 200 embedded prompts plus noise.

    Random unit vectors would be wrong both ways: far from every query (too easy) and isotropic,
    which real sentence embeddings are not (too hard for the pruning bound).
    """
    base = await embedder.embed([a.format(s) for a in ASKS for s in SUBJECTS])
    rng = np.random.default_rng(7)
    block = 10_000
    for start in range(0, entries, block):
        n = min(block, entries - start)
        pick = rng.integers(0, len(base), (n, 2))
        rows = base[pick[:, 0]] + rng.uniform(0.2, 1.0, (n, 1)) * base[pick[:, 1]]
        rows += 0.04 * rng.standard_normal(rows.shape)
        rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
        for j, row in enumerate(rows):
            index.insert(SCOPE, f"r{start + j}", row, pack("filler", b"{}"), float("inf"))


async def main(entries: int, runs: int, model: str) -> None:
    embedder = await LocalEmbedder.load(model)
    index = MemoryVectorIndex(embedder.dim, max_entries=entries + 100)
    engine = SemanticEngine(embedder, index, Guard(embedder.vocab()), threshold=0.8)
    await fill(index, embedder, entries)
    for prompt in PROMPTS:
        await engine.store(SCOPE, prompt, b'{"cached": true}', 3600)
    query = (await embedder.embed(["warm up"]))[0]
    print(f"\n{len(index)} entries in one scope, {embedder.name}, {embedder.runtime}\n")
    print("| operation | p50 ms | p99 ms | runs |\n|---|---|---|---|")
    report("embed one short prompt", await timed(runs, lambda i: embedder.embed(
        [MISSES[i % len(MISSES)] + f" #{i}"])))
    report(f"index search, {len(index)} entries, k=4, floor 0.8 (as lookups run it)",
           await timed(runs, lambda i: index.search(SCOPE, query, 4, 0.8)))
    report(f"index search, {len(index)} entries, k=4, no floor (full scan)",
           await timed(runs, lambda i: index.search(SCOPE, query, 4)))
    hits = 0

    async def hit(i: int) -> None:
        nonlocal hits
        hits += (await engine.lookup(SCOPE, PARAPHRASES[i % len(PARAPHRASES)])).answer is not None

    report("lookup that hits (embed + search + guard)", await timed(runs, hit))
    report("lookup that misses", await timed(
        runs, lambda i: engine.lookup(SCOPE, MISSES[i % len(MISSES)] + f" #{i}")))
    print(f"\nhits among hit lookups: {hits}/{runs}")
    for concurrency in (8, 32):
        rounds = max(1, runs // concurrency)
        start = time.perf_counter()
        before = embedder.batches
        for r in range(rounds):
            await asyncio.gather(*(engine.lookup(SCOPE, f"{MISSES[c % 5]} {r}-{c}")
                                   for c in range(concurrency)))
        took = time.perf_counter() - start
        print(f"{concurrency} concurrent lookups: {rounds * concurrency / took:.0f} lookups/s, "
              f"{rounds * concurrency / max(1, embedder.batches - before):.1f} prompts per "
              f"forward pass, mean {statistics.mean([took / rounds]) * 1000:.1f} ms per round")
    await engine.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--model", default="", help="model directory (default: packaged MiniLM)")
    args = parser.parse_args()
    asyncio.run(main(args.entries, args.runs, args.model))
