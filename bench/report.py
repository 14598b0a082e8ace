"""Turns benchmark samples into the markdown that bench/run.py prints and appends to docs.

Each target was measured in several rounds interleaved with the others; a figure is the median of
its rounds (stream percentiles pool every round's samples), which keeps a passing burst of other
work on a shared machine from deciding a comparison.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loadgen import StreamSamples, WrkResult, percentile


@dataclass(frozen=True)
class Sample:
    """One round of one target."""

    throughput: WrkResult
    latency: WrkResult
    stream: StreamSamples


@dataclass(frozen=True)
class Measured:
    """A target's figures over all its rounds (milliseconds, requests per second)."""

    name: str
    rps: float
    p50: float
    p99: float
    ttfb_p50: float
    ttfb_p99: float
    total_p50: float
    errors: int


def combine(name: str, samples: Sequence[Sample]) -> Measured:
    ttfbs = [t for s in samples for t in s.stream.ttfb_ms]
    totals = [t for s in samples for t in s.stream.total_ms]
    errors = sum(s.throughput.errors + s.latency.errors + s.stream.errors for s in samples)
    return Measured(
        name=name,
        rps=statistics.median(s.throughput.rps for s in samples),
        p50=statistics.median(s.latency.p50_ms for s in samples),
        p99=statistics.median(s.latency.p99_ms for s in samples),
        ttfb_p50=percentile(ttfbs, 50),
        ttfb_p99=percentile(ttfbs, 99),
        total_p50=percentile(totals, 50),
        errors=errors,
    )


def tables(results: Sequence[Measured], connections: int) -> str:
    lines = [
        f"| target | req/s (c={connections}) | p50 ms (c=1) | p99 ms (c=1) | stream TTFB p50 ms "
        "| TTFB p99 ms | stream total p50 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.name} | {r.rps:,.0f} | {r.p50:.2f} | {r.p99:.2f} | {r.ttfb_p50:.2f} | "
        f"{r.ttfb_p99:.2f} | {r.total_p50:.2f} | {r.errors} |"
        for r in results
    ]
    bare = next((r for r in results if r.name == "bare"), None)
    sidecars = [r for r in results if r.name.startswith("sidecar")]
    if bare is None or not sidecars:
        return "\n".join(lines)
    lines += [
        "",
        "| sidecar vs bare | req/s ratio | p50 +ms | p99 +ms | TTFB p50 +ms | TTFB p99 +ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.name} | {r.rps / bare.rps:.2f} | {r.p50 - bare.p50:+.2f} | {r.p99 - bare.p99:+.2f} | "
        f"{r.ttfb_p50 - bare.ttfb_p50:+.2f} | {r.ttfb_p99 - bare.ttfb_p99:+.2f} |"
        for r in sidecars
    ]
    return "\n".join(lines)


def _loop() -> str:
    try:
        return f"uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:
        return "asyncio event loop"


def section(
    results: Sequence[Measured], argv: Sequence[str], pinned: str, workload: str, connections: int
) -> str:
    """A dated markdown section: machine, command, workload, the tables."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = (
        f"Machine: {os.cpu_count()} shared cores ({pinned}); Python {platform.python_version()}, "
        f"{_loop()}, {platform.machine()}. Other work shared the machine: compare rows of one run."
    )
    return "\n".join(
        [
            f"## {now}",
            "",
            machine,
            f"Command: `{' '.join(['python bench/run.py', shlex.join(argv)]).strip()}`",
            workload,
            "",
            tables(results, connections),
            "",
        ]
    )


def append(path: Path, text: str) -> None:
    head = "" if path.exists() else "# Benchmarks\n\nFigures from `bench/run.py`, newest last.\n\n"
    with path.open("a", encoding="utf-8") as out:
        out.write(head + text + "\n")
