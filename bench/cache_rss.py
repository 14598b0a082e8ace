"""Does the memory cache stay within `max_bytes`? Push ~1 GB of distinct answers through a sidecar
whose cache holds 64 MB, and watch the sidecar's resident memory (RSS) while it happens.

Every request is a distinct chat completion with a ~32 KB prompt; the mock upstream echoes it, so
each answer (~32 KB) becomes a cache entry and the cache must evict all but the last 64 MB of them.
Reported: RSS after warm-up (the process itself), peak and final RSS, and their growth over that
baseline, which is what the cache may account for: it must stay within max_bytes + 15%.
Bounded by --total bytes and --max-seconds, whichever comes first.
Usage: python bench/cache_rss.py [--total 1GB] [--max-bytes 64MB] [--max-seconds 240]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from processes import Processes, free_port, wait_ready

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proxy.units import parse_size  # noqa: E402

CONFIG = """policy_files = []
[server]
access_log = false
[[upstreams]]
name = "mock"
base_url = "{mock}/v1"
api_key = "sk-bench-upstream"
[cache]
enabled = true
max_bytes = "{max_bytes}"
max_entries = 1000000
coalesce = false
"""


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


async def drive(base: str, total: int, prompt: int, concurrency: int, deadline: float,
                pid: int, tag: str) -> tuple[int, int, int]:
    """Send distinct requests until `total` answer bytes or the deadline; (requests, bytes, peak)."""
    sent = received = peak = 0
    filler = ("lorem ipsum dolor sit amet " * (prompt // 27 + 1))[:prompt]
    headers = {"Authorization": "Bearer sk-bench-client"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent, received, peak
        while received < total and time.monotonic() < deadline:
            sent += 1
            body = {"model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"{tag}{sent} {filler}"}]}
            async with session.post(base + "/v1/chat/completions", json=body,
                                    headers=headers) as resp:
                data = await resp.read()
                if resp.status != 200 or resp.headers.get("x-sidecar-cache") != "miss":
                    raise RuntimeError(f"unexpected answer {resp.status}: {data[:200]!r}")
                received += len(data)
            if sent % 500 == 0:
                peak = max(peak, rss_kib(pid))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return sent, received, max(peak, rss_kib(pid))


async def main(args: argparse.Namespace) -> int:
    max_bytes = parse_size(args.max_bytes)
    with tempfile.TemporaryDirectory(prefix="cache-rss-") as tmp:
        procs = Processes(Path(tmp), pin=False)
        try:
            mock_port, port = free_port(), free_port()
            mock = await procs.start(
                "mock", [sys.executable, "-m", "tests.mock_upstream", "--port", str(mock_port)],
                cpu=None, cwd=REPO, env={"PYTHONPATH": str(REPO)})
            mock_base = f"http://127.0.0.1:{mock_port}"
            await wait_ready(mock_base + "/v1/models", mock)
            config = Path(tmp) / "cache_rss.toml"
            config.write_text(CONFIG.format(mock=mock_base, max_bytes=args.max_bytes))
            sidecar = await procs.start(
                "sidecar", [sys.executable, "-m", "proxy", "serve", "--config", str(config),
                            "--port", str(port)],
                cpu=None, cwd=REPO, env={"SIDECAR_STATE__DATA_DIR": tmp})
            base = f"http://127.0.0.1:{port}"
            await wait_ready(base + "/healthz", sidecar)
            deadline = time.monotonic() + args.max_seconds
            await drive(base, 2 << 20, args.prompt, 4, deadline, sidecar.pid, "w")  # warm-up: 2 MB
            baseline = rss_kib(sidecar.pid)
            started = time.monotonic()
            count, volume, peak = await drive(base, parse_size(args.total), args.prompt,
                                              args.concurrency, deadline, sidecar.pid, "r")
            elapsed = time.monotonic() - started
            final = rss_kib(sidecar.pid)
        finally:
            await procs.stop_all()
    limit = max_bytes * 1.15 / 1024
    growth = max(peak, final) - baseline
    print(f"requests: {count:,} distinct in {elapsed:.1f} s; answers: {volume / 2**20:,.0f} MiB")
    print(f"RSS baseline (after warm-up): {baseline / 1024:.1f} MiB")
    print(f"RSS peak / final: {peak / 1024:.1f} / {final / 1024:.1f} MiB")
    print(f"growth over baseline: {growth / 1024:.1f} MiB; limit max_bytes + 15% = "
          f"{limit / 1024:.1f} MiB -> {'PASS' if growth <= limit else 'FAIL'}")
    return 0 if growth <= limit else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total", default="1GB", help="answer bytes to push through")
    parser.add_argument("--max-bytes", default="64MB", help="the cache's max_bytes")
    parser.add_argument("--prompt", type=int, default=32 << 10, help="prompt bytes per request")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=240.0, help="stop after this long")
    return parser


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(asyncio.run(main(_parser().parse_args())))
