"""Load generators for bench/run.py: wrk for throughput and latency, a small client for streams.

The same generator drives every target (direct, bare, sidecar), so differences are the proxies'.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

LUA = Path(__file__).with_name("post.lua")
STREAM_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Stream a long answer to the benchmark."}],
    }
).encode()
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-client"}


class BenchError(RuntimeError):
    """A measurement could not be made (tool missing, target failing)."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: completed requests, errors, and latency percentiles in milliseconds."""

    requests: int
    seconds: float
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class StreamSamples:
    """Sequential streamed requests: milliseconds to the first body byte and to the end."""

    ttfb_ms: tuple[float, ...]
    total_ms: tuple[float, ...]
    errors: int


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN when there are no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def run_wrk(url: str, connections: int, seconds: float, latency: bool = False) -> WrkResult:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    command += ["--latency"] if latency else []
    command += ["-s", str(LUA), url]
    # A fresh nonce per run: with BENCH_UNIQUE, prompts never repeat across runs either.
    env = {**os.environ, "BENCH_NONCE": os.urandom(6).hex()}
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=seconds + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [line for line in out.decode().splitlines() if line.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"wrk failed on {url}: {err.decode().strip() or out.decode()[-500:]}")
    data = json.loads(lines[-1][6:])
    duration = data["duration_us"] / 1e6
    return WrkResult(
        requests=data["requests"],
        seconds=duration,
        errors=data["errors"] + data["status_errors"],
        rps=data["requests"] / duration if duration else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


def stream_body() -> bytes:
    """The streamed request; with BENCH_UNIQUE=1 its prompt is never sent twice."""
    if os.environ.get("BENCH_UNIQUE") != "1":
        return STREAM_BODY
    marker = b'"content": "'
    return STREAM_BODY.replace(marker, marker + os.urandom(8).hex().encode() + b" ", 1)


async def _one_stream(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    start = time.perf_counter()
    async with session.post(url, data=stream_body(), headers=HEADERS) as resp:
        first = await resp.content.readany()
        ttfb = time.perf_counter() - start
        rest = await resp.content.read()
        total = time.perf_counter() - start
    if resp.status != 200 or not first or not (first + rest).rstrip().endswith(b"[DONE]"):
        raise BenchError(f"stream from {url} answered {resp.status} without a full stream")
    return ttfb * 1000, total * 1000


async def measure_stream(url: str, requests: int, seconds: float) -> StreamSamples:
    """Up to `requests` streams one after another, stopping after `seconds`."""
    ttfbs: list[float] = []
    totals: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=1)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for _ in range(requests):
            if time.monotonic() > deadline:
                break
            try:
                ttfb, total = await _one_stream(session, url)
            except (aiohttp.ClientError, TimeoutError, BenchError):
                errors += 1
                continue
            ttfbs.append(ttfb)
            totals.append(total)
    return StreamSamples(tuple(ttfbs), tuple(totals), errors)
