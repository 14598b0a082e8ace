"""Measure the sidecar against a bare aiohttp pass-through in one run, and print markdown tables.

Targets: direct (load generator -> mock), bare (-> bench/passthrough.py -> mock), and the sidecar
once per config, measured in interleaved rounds. The proxies run on core 0; the mock and the load
generators on core 1. Everything started is stopped at the end, on errors and on Ctrl-C too.
Usage: python bench/run.py [--configs bench/configs/none.toml ...] [--duration 12] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from loadgen import BenchError, measure_stream, run_wrk
from processes import Processes, free_port, wait_ready
from report import Measured, Sample, append, combine, section

REPO = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"
PROXY_CPU, LOAD_CPU = 0, 1


@dataclass(frozen=True)
class Target:
    name: str
    base: str


def _config(value: str) -> Path:
    path = Path(value).resolve()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such config file: {value}")
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add = parser.add_argument
    add("--configs", nargs="+", type=_config, default=[REPO / "bench" / "configs" / "none.toml"],
        help="sidecar config files (BENCH_UPSTREAM_URL is set to the mock)")  # fmt: skip
    add("--duration", type=float, default=12.0, help="seconds per measurement, over all rounds")
    add("--rounds", type=int, default=3, help="interleaved rounds; figures are their medians")
    add("--connections", type=int, default=64, help="wrk connections for throughput")
    add("--chunks", type=int, default=50, help="events per streamed answer")
    add("--chunk-delay", type=float, default=0.002, help="seconds between streamed events")
    add("--streams", type=int, default=300, help="most streamed requests per target")
    add("--no-sidecar", action="store_true", help="only direct and bare")
    add("--unique", action="store_true",
        help="a distinct prompt per request (BENCH_UNIQUE=1), so caches only miss and store")
    add("--wait", type=float, default=900.0, help="longest wait for another run on this machine")
    add("--out", type=Path, help="append a dated section to this markdown file")
    return parser


async def check_target(target: Target) -> None:
    """One JSON answer through the target first: a failing target is not measured."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "check"}]}
    headers = {"Authorization": "Bearer sk-bench-client"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(target.base + CHAT, json=body, headers=headers) as resp,
    ):
        text = await resp.text()
    if resp.status != 200 or "Echo" not in text:
        raise BenchError(f"{target.name} answered {resp.status}: {text[:300]}")


async def measure(target: Target, args: argparse.Namespace) -> Sample:
    url = target.base + CHAT
    seconds = max(1.0, args.duration / args.rounds)
    # Light loads first: after 64 connections an aiohttp process needs a while to settle.
    await run_wrk(url, 1, 1)
    latency = await run_wrk(url, 1, seconds, latency=True)
    stream = await measure_stream(url, max(1, args.streams // args.rounds), seconds)
    await run_wrk(url, args.connections, 1)
    throughput = await run_wrk(url, args.connections, seconds)
    return Sample(throughput, latency, stream)


async def start_mock(procs: Processes, chunks: int = 50, chunk_delay: float = 0.002) -> str:
    """The fast mock upstream on the load core; returns its base URL."""
    port = free_port()
    mock_cmd = [sys.executable, "-m", "tests.mock_upstream", "--fast", "--port", str(port),
                "--chunks", str(chunks), "--chunk-delay", str(chunk_delay)]  # fmt: skip
    mock = await procs.start("mock", mock_cmd, cpu=LOAD_CPU, cwd=REPO, env={"PYTHONPATH": str(REPO)})
    mock_base = f"http://127.0.0.1:{port}"
    await wait_ready(mock_base + "/v1/models", mock)
    return mock_base


async def start_targets(args: argparse.Namespace, procs: Processes, logdir: Path) -> list[Target]:
    mock_base = await start_mock(procs, args.chunks, args.chunk_delay)
    port = free_port()
    bare_cmd = [sys.executable, str(REPO / "bench" / "passthrough.py"), "--port", str(port),
                "--upstream", mock_base]  # fmt: skip
    bare = await procs.start("bare", bare_cmd, cpu=PROXY_CPU)
    await wait_ready(f"http://127.0.0.1:{port}/v1/models", bare)
    targets = [Target("direct", mock_base), Target("bare", f"http://127.0.0.1:{port}")]
    for config in [] if args.no_sidecar else args.configs:
        targets.append(await start_sidecar(config, mock_base, procs, logdir))
    for target in targets:
        await check_target(target)
    return targets


async def start_sidecar(config: Path, mock_base: str, procs: Processes, logdir: Path,
                        launcher: Sequence[str] = ("-m", "proxy")) -> Target:
    """A sidecar on the proxy core; `launcher` is what runs `serve` (bench/floors.py swaps it)."""
    port = free_port()
    name = f"sidecar-{config.stem}-{port}"
    command = [sys.executable, *launcher, "serve", "--config", str(config),
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {"BENCH_UPSTREAM_URL": mock_base + "/v1", "BENCH_OTLP_ENDPOINT": mock_base,
           "SIDECAR_STATE__DATA_DIR": str(logdir / name)}
    encodings = REPO.parent / "shared" / "tiktoken"  # as in CI: real token counts, no download
    if "TIKTOKEN_CACHE_DIR" not in os.environ and encodings.is_dir():
        env["TIKTOKEN_CACHE_DIR"] = str(encodings)
    proc = await procs.start(name, command, cpu=PROXY_CPU, env=env, cwd=REPO)
    try:
        await wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
    except RuntimeError as exc:
        raise BenchError(f"{name}: {exc}\n--- its output ---\n{procs.log_tail(name)}") from exc
    return Target(f"sidecar {config.name}", f"http://127.0.0.1:{port}")


async def run_rounds(targets: list[Target], args: argparse.Namespace) -> list[Measured]:
    """Every target once per round, the order rotating, so no target always follows another."""
    samples: dict[str, list[Sample]] = {t.name: [] for t in targets}
    for round_ in range(args.rounds):
        shift = round_ % len(targets)
        for target in targets[shift:] + targets[:shift]:
            print(f"[bench] round {round_ + 1}/{args.rounds}: {target.name}", file=sys.stderr, flush=True)
            samples[target.name].append(await measure(target, args))
    return [combine(t.name, samples[t.name]) for t in targets]


@contextlib.asynccontextmanager
async def exclusive(seconds: float) -> AsyncIterator[None]:
    """One benchmark per machine at a time: two runs sharing the cores would spoil both."""
    with (Path(tempfile.gettempdir()) / "llm-sidecar-bench.lock").open("w") as lock:
        deadline = time.monotonic() + seconds
        waiting = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BenchError("another bench/run.py kept the machine busy too long") from None
                if not waiting:
                    print("[bench] waiting for another bench/run.py to finish", file=sys.stderr, flush=True)
                    waiting = True
                await asyncio.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _workload(args: argparse.Namespace) -> str:
    each = max(1.0, args.duration / args.rounds)
    prompts = "a distinct prompt per request" if args.unique else "the same prompt every time"
    custom = os.environ.get("BENCH_BODY")  # read by bench/post.lua
    body = f"a {len(custom.encode()):,}-byte body from BENCH_BODY" if custom else "~100-byte body"
    return (
        f"Workload: POST {CHAT} ({body}, ~1 KB JSON answer; {prompts}) with wrk; {args.rounds} "
        f"interleaved rounds of {each:g} s per measurement, medians shown; streams: {args.chunks} "
        f"events {args.chunk_delay * 1000:g} ms apart, one at a time, timed to the first body byte."
    )


def pin_load() -> bool | None:
    """None (said on stderr) without wrk; else whether the cores can be split, and if so this
    process moves to the load core, where the mock and wrk it starts inherit it."""
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return None
    pinned = shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) >= 2
    if pinned:
        os.sched_setaffinity(0, {LOAD_CPU})
    return pinned


async def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.unique:
        os.environ["BENCH_UNIQUE"] = "1"  # read by bench/post.lua in every wrk run
    pinned = pin_load()
    if pinned is None:
        return 2
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with tempfile.TemporaryDirectory(prefix="llm-sidecar-bench-") as tmp:
        procs = Processes(Path(tmp), pinned)
        try:
            async with exclusive(args.wait):
                results = await run_rounds(await start_targets(args, procs, Path(tmp)), args)
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
        finally:
            await procs.stop_all()
    placement = (
        f"proxies pinned to core {PROXY_CPU}, mock + load generators on core {LOAD_CPU}"
        if pinned
        else "no CPU pinning"
    )
    text = section(results, argv, placement, _workload(args), args.connections)
    print(text)
    if args.out is not None:
        append(args.out, text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(sys.argv[1:])))
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Ctrl-C or SIGTERM: main() has already stopped everything it started.
        sys.exit(130)
