"""Real sidecar processes for multi-process tests: N `python -m proxy serve` on free ports.

`with SidecarProcesses(config_path, count=4) as fleet: fleet.urls` starts them, waits for /healthz,
and always stops them (SIGTERM, then SIGKILL), even when a test fails or the runner is killed.
`workers=N` runs one supervisor with N workers on a single port instead (`serve --workers N`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from tests.redis_server import free_port

REPOSITORY = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0


class SidecarStartError(RuntimeError):
    """A sidecar process exited or did not answer /healthz in time; carries its output."""


def _die_with_parent() -> None:
    # Linux: the kernel kills the child when the thread that started it dies, even by SIGKILL.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class SidecarProcesses:
    """`count` sidecar processes with one config; `urls[i]` is process i's base URL (no /v1)."""

    def __init__(self, config: Path, count: int = 1, *, workers: int | None = None,
                 env: Mapping[str, str] | None = None, log_dir: Path | None = None,
                 timeout: float = START_TIMEOUT) -> None:
        self.config = config
        self.count = 1 if workers else count
        self.workers = workers
        self.env = {**os.environ, "PYTHONPATH": str(REPOSITORY), **(env or {})}
        self.log_dir = log_dir or config.parent
        self.timeout = timeout
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start(self) -> None:
        try:
            for index in range(self.count):
                self._spawn(index)
            deadline = time.monotonic() + self.timeout
            for index in range(self.count):
                self._wait_healthy(index, deadline)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, index: int) -> None:
        port = free_port()
        command = [sys.executable, "-m", "proxy", "--log-level", "warning", "serve",
                   "--config", str(self.config), "--host", "127.0.0.1", "--port", str(port)]
        if self.workers:
            command += ["--workers", str(self.workers)]
        log = (self.log_dir / f"sidecar-{index}.log").open("wb")
        main_thread = threading.current_thread() is threading.main_thread()
        self.processes.append(subprocess.Popen(
            command, cwd=REPOSITORY, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if main_thread else None, start_new_session=True))
        log.close()
        self.ports.append(port)

    def _wait_healthy(self, index: int, deadline: float) -> None:
        url = f"{self.urls[index]}/healthz"
        while time.monotonic() < deadline:
            if self.processes[index].poll() is not None:
                raise SidecarStartError(f"sidecar {index} exited: {self.output(index)}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
            time.sleep(0.05)
        raise SidecarStartError(f"sidecar {index} never became healthy: {self.output(index)}")

    def output(self, index: int) -> str:
        """The last lines a process wrote (for failure messages)."""
        path = self.log_dir / f"sidecar-{index}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text[-2000:]

    def kill(self, index: int) -> None:
        """SIGKILL one process (its whole group), as a crash would."""
        process = self.processes[index]
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for index, process in enumerate(self.processes):
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill(index)

    def __enter__(self) -> SidecarProcesses:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
