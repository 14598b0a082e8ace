"""Throughput differences of a few percent between configs, which `bench/run.py` cannot resolve.

    python bench/ab.py [--processes 2] [--rounds 15] [--seconds 3] CONFIG CONFIG...

On these shared cores one process of a config can run 5% slower than another process of the same
config for its whole life, and a burst of other work moves a single window by 10%. So this starts
`--processes` sidecars per config, measures only throughput (wrk, 64 connections, proxies on core
0, mock and wrk on core 1) in many short windows interleaved over every process, and reports per
process the median req/s of its windows, per config the mean of its processes' medians, and each
config against the first. Markdown on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadgen import BenchError, run_wrk
from processes import Processes
from run import CHAT, Target, check_target, exclusive, pin_load, start_mock, start_sidecar


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", type=Path, help="sidecar configs; the first is the base")
    parser.add_argument("--processes", type=int, default=2, help="sidecar processes per config")
    parser.add_argument("--rounds", type=int, default=15, help="windows per process")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one window")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    return parser


@dataclass(frozen=True)
class Variant:
    """One thing to measure: a label, the config its sidecars load, and what runs `serve`."""

    label: str
    config: Path
    launcher: tuple[str, ...] = ("-m", "proxy")


async def interleave(targets: list[Target], args: argparse.Namespace) -> list[float]:
    """Each target's median req/s over `args.rounds` windows, interleaved over all targets."""
    windows: list[list[float]] = [[] for _ in targets]
    for round_ in range(args.rounds):
        shift = round_ % len(targets)
        for index in [*range(shift, len(targets)), *range(shift)]:
            url = targets[index].base + CHAT
            await run_wrk(url, args.connections, 1)  # settle after the other target's load
            windows[index].append((await run_wrk(url, args.connections, args.seconds)).rps)
        print(f"[bench] round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
    return [statistics.median(w) for w in windows]


async def _measure(variants: list[Variant], args: argparse.Namespace, procs: Processes,
                   tmp: Path) -> list[str]:
    mock = await start_mock(procs)
    targets: list[tuple[Variant, Target]] = []
    for copy in range(args.processes):
        (tmp / f"p{copy}").mkdir()
        for variant in variants:
            target = await start_sidecar(variant.config, mock, procs, tmp / f"p{copy}",
                                         launcher=variant.launcher)
            await check_target(target)
            targets.append((variant, target))
    medians = await interleave([t for _, t in targets], args)
    lines = ["| variant | median req/s per process | mean | vs first | CPU us/request added |",
             "|---|---|---:|---:|---:|"]
    base = 0.0
    for variant in variants:
        mine = [m for (v, _), m in zip(targets, medians, strict=True) if v is variant]
        mean = statistics.fmean(mine)
        base = base or mean
        per = ", ".join(f"{m:,.0f}" for m in mine)
        lines.append(f"| {variant.label} | {per} | {mean:,.0f} | {mean / base - 1:+.1%} | "
                     f"{(1 / mean - 1 / base) * 1e6:+.1f} |")
    return lines


async def compare(variants: list[Variant], args: argparse.Namespace, command: str) -> int:
    """Measure `variants` (`args.processes` sidecars each, the first is the base) and print a
    markdown table headed by `command`; the exit status."""
    pinned = pin_load()
    if pinned is None:
        return 2
    with tempfile.TemporaryDirectory(prefix="llm-sidecar-ab-") as tmp:
        procs = Processes(Path(tmp), pinned)
        try:
            async with exclusive(900.0):
                lines = await _measure(variants, args, procs, Path(tmp))
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
        finally:
            await procs.stop_all()
    print("\n".join([f"Command: `{command}`", "", *lines]))
    return 0


async def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    variants = [Variant(config.name, config.resolve()) for config in args.configs]
    return await compare(variants, args, f"python bench/ab.py {' '.join(argv)}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
