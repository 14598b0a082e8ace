"""The processes a benchmark run starts (mock, pass-through, sidecars), pinned to a core.

Every process gets its own session and dies with the runner; `stop_all()` in a `finally` ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # Linux: SIGKILL this child if the runner dies without cleaning up (even by SIGKILL).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class Processes:
    """Starts commands with their output in `logdir`, and stops every one of them."""

    def __init__(self, logdir: Path, pin: bool) -> None:
        self._logdir = logdir
        self._pin = pin
        self._running: dict[int, tuple[str, asyncio.subprocess.Process]] = {}

    async def start(
        self,
        name: str,
        command: Sequence[str],
        *,
        cpu: int | None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> asyncio.subprocess.Process:
        pinned = ["taskset", "-c", str(cpu), *command] if self._pin and cpu is not None else command
        log = (self._logdir / f"{name}.log").open("wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                *pinned,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        self._running[proc.pid] = (name, proc)
        return proc

    def log_tail(self, name: str, size: int = 2000) -> str:
        path = self._logdir / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    async def stop(self, proc: asyncio.subprocess.Process) -> None:
        self._running.pop(proc.pid, None)
        if proc.returncode is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), wait)
                return
            except TimeoutError:
                continue

    async def stop_all(self) -> None:
        for _, proc in list(self._running.values()):
            await self.stop(proc)


async def wait_ready(url: str, proc: asyncio.subprocess.Process, seconds: float = 30.0) -> None:
    """Poll `url` until it answers below 500; fail early if the process died."""
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"exited with code {proc.returncode} before answering {url}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s")
