"""Shared fixtures: the mock upstream, a sidecar in front of it, and a real redis-server."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.pipeline import Clock
from tests.harness import LoopThread, Sidecar, sidecar_config, start_app
from tests.mock_upstream import MockUpstream

_SHARED_TIKTOKEN = Path(__file__).resolve().parents[2] / "shared" / "tiktoken"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _SHARED_TIKTOKEN.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_SHARED_TIKTOKEN)


class ManualClock:
    """An injected clock that moves only when a test says so."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.now = start
        self.mono = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture
def mock(loop_thread: LoopThread) -> Iterator[MockUpstream]:
    upstream = MockUpstream()
    loop_thread.run(upstream.start())
    yield upstream
    loop_thread.run(upstream.aclose())


StartSidecar = Callable[..., Sidecar]


@pytest.fixture
def start_sidecar(loop_thread: LoopThread, mock: MockUpstream, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[StartSidecar]:
    """`start_sidecar(toml, clock=None, env=None)`: a sidecar in front of the mock.

    `toml` is a config file's text; `{mock}` in it becomes the mock's base URL, and the mock is the
    upstream unless the text has its own `[[upstreams]]`. State files go to the test's tmp dir.
    """
    monkeypatch.setenv("SIDECAR_STATE__DATA_DIR", str(tmp_path / "state"))
    started: list[Sidecar] = []

    def start(toml: str = "", clock: Clock | None = None, env: dict[str, str] | None = None,
              name: str = "config.toml") -> Sidecar:
        path = tmp_path / name
        path.write_text(sidecar_config(mock, toml))
        app, runner, url = loop_thread.run(start_app(path, env, clock))
        sidecar = Sidecar(url=url, app=app, runner=runner, mock=mock, thread=loop_thread,
                          config_path=path)
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in reversed(started):
        sidecar.stop()


@pytest.fixture
def sidecar(start_sidecar: StartSidecar) -> Sidecar:
    """A sidecar with no policies in front of the mock."""
    return start_sidecar("")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "redis: needs a real redis-server binary")
