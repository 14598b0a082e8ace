"""A real, throw-away `redis-server` for tests: free 127.0.0.1 port, own temp dir, no persistence.

`with RedisServer() as redis: redis.url`; `restart()` keeps the port (and loses the data, like a
crashed cache node). Fixtures at the bottom are for `tests/conftest.py` to import.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

START_TIMEOUT = 5.0


class RedisUnavailable(RuntimeError):
    """redis-server is missing or would not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def send_command(port: int, *words: str, timeout: float = 0.5) -> bytes:
    """One RESP command over a fresh connection; returns the first reply line."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"".join(parts))
        return sock.recv(4096).split(b"\r\n", 1)[0]


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGKILL to redis if the thread that started it dies (even SIGKILL).
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class RedisServer:
    """One redis-server process on 127.0.0.1, started in its own temporary directory."""

    def __init__(self, port: int | None = None, executable: str = "redis-server") -> None:
        found = shutil.which(executable)
        if found is None:
            raise RedisUnavailable(f"{executable} is not on PATH")
        self._executable = found
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def workdir(self) -> Path | None:
        return Path(self._dir.name) if self._dir is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start and wait until it answers PING; a busy random port is replaced by another."""
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="redis-test-")
        for _ in range(1 if self._fixed_port else 3):
            if self._spawn(Path(self._dir.name)):
                return
            self.port = self.port if self._fixed_port else free_port()
        self.close()
        raise RedisUnavailable(f"redis-server did not answer PING on port {self.port}")

    def _spawn(self, workdir: Path) -> bool:
        command = [
            self._executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(workdir),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        main_thread = threading.current_thread() is threading.main_thread()
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if main_thread else None,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.running:
            with contextlib.suppress(OSError):
                if send_command(self.port, "PING") == b"+PONG":
                    return True
            time.sleep(0.02)
        self._kill()
        return False

    def stop(self) -> None:
        """Stop the server (its data is gone); the port and directory stay reserved for restart."""
        self._kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush(self) -> None:
        """Empty every database, for a fresh state between tests sharing one server."""
        if send_command(self.port, "FLUSHALL") != b"+OK":
            raise RedisUnavailable("FLUSHALL failed")

    def close(self) -> None:
        self._kill()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.contextmanager
def redis_or_skip(executable: str = "redis-server") -> Iterator[RedisServer]:
    """A started server, or pytest.skip when redis-server is not installed."""
    try:
        server = RedisServer(executable=executable)
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        yield server


@pytest.fixture(scope="session")
def redis_server_session() -> Iterator[RedisServer]:
    """One server for the whole session; use `redis_url` for a flushed one per test."""
    with redis_or_skip() as server:
        yield server


@pytest.fixture
def redis_url(redis_server_session: RedisServer) -> str:
    if not redis_server_session.running:
        redis_server_session.start()
    redis_server_session.flush()
    return redis_server_session.url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private server a test may stop and restart without disturbing others."""
    with redis_or_skip() as server:
        yield server
