"""Evaluate the semantic cache on labelled prompt pairs: false hits on negatives, hits on positives.

Each pair's `a` is stored in its own namespace, then `b` is asked there, through the same engine
(local embedder, memory index, guard) the policy uses. Reads the data by path, never copies it:
    python bench/semantic_eval.py [--data ../shared/eval/semantic_dev.jsonl] [--thresholds 0.8,0.85]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from proxy.semantic.embedder import LocalEmbedder
from proxy.semantic.engine import SemanticEngine
from proxy.semantic.guard import Guard
from proxy.semantic.index import MemoryVectorIndex

CLEAN_KINDS = ("qqp_entity_swap", "qqp_number_swap")


def group_of(row: dict[str, Any]) -> str:
    return "target" if row["source"].startswith("synthetic") or row["kind"] in CLEAN_KINDS else ""


async def run(rows: list[dict[str, Any]], threshold: float, guarded: bool,
              embedder: LocalEmbedder) -> list[tuple[bool, str]]:
    guard = Guard(embedder.vocab(), disabled=frozenset() if guarded else _ALL_RULES)
    engine = SemanticEngine(embedder, MemoryVectorIndex(384), guard, threshold)
    await asyncio.gather(*(engine.store(f"pair-{i}", r["a"], b"{}", 3600.0)
                           for i, r in enumerate(rows)))
    found = await asyncio.gather(*(engine.lookup(f"pair-{i}", r["b"]) for i, r in enumerate(rows)))
    return [(f.answer is not None, f.reason) for f in found]


_ALL_RULES = frozenset(
    {"numbers", "operators", "quoted", "entities", "negation", "order", "units", "slot"}
)


def table(rows: list[dict[str, Any]], hits: list[tuple[bool, str]], key: str) -> list[str]:
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for row, (hit, _) in zip(rows, hits, strict=True):
        for name in (row[key], "TARGET (synthetic + qqp swaps)" if group_of(row) else None):
            if name is None:
                continue
            s = stats[name]
            s[0 if row["same"] else 2] += 1
            s[1 if row["same"] else 3] += int(hit)
    lines = [f"| {key} | positives | hit rate | negatives | false-hit rate |", "|---|---|---|---|---|"]
    for name in sorted(stats):
        pos, hit_count, neg, false = stats[name]
        hr = f"{hit_count / pos:.1%}" if pos else "-"
        fr = f"{false / neg:.1%}" if neg else "-"
        lines.append(f"| {name} | {pos} | {hr} | {neg} | {fr} |")
    return lines


async def evaluate(rows: list[dict[str, Any]], thresholds: list[float], model: str,
                   details: bool) -> None:
    embedder = await LocalEmbedder.load(model)
    try:
        for threshold in thresholds:
            for guarded in (False, True):
                hits = await run(rows, threshold, guarded, embedder)
                label = "guard on" if guarded else "threshold only"
                print(f"\n### threshold {threshold}, {label}\n")
                print("\n".join(table(rows, hits, "source")))
                if details and guarded:
                    print("\n" + "\n".join(table(rows, hits, "kind")))
                    reasons = Counter((r["same"], why) for r, (_, why) in zip(rows, hits, strict=True))
                    print("\nreasons (same, reason): " + ", ".join(
                        f"{k}: {v}" for k, v in sorted(reasons.items())))
    finally:
        await embedder.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/eval/semantic_dev.jsonl")
    parser.add_argument("--thresholds", default="0.75,0.8,0.85,0.9")
    parser.add_argument("--model", default="", help="model directory (default: packaged MiniLM)")
    parser.add_argument("--details", action="store_true", help="per-kind table and guard reasons")
    args = parser.parse_args()
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line]
    thresholds = [float(t) for t in args.thresholds.split(",")]
    asyncio.run(evaluate(rows, thresholds, args.model, args.details))


if __name__ == "__main__":
    main()
