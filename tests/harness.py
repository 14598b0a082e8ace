"""Runs the mock upstream and the sidecar on an event loop in a background thread.

Sync SDK clients (openai.OpenAI, langchain's ChatOpenAI) block their thread; with the servers on a
loop of their own, sync and async clients drive the sidecar exactly as an application would.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
from aiohttp import web

from proxy.config import load_config
from proxy.pipeline import Clock
from proxy.server import DRAIN, SERVICES, Services, build_app
from tests.mock_upstream import MockUpstream
from tests.redis_server import free_port

__all__ = ["LoopThread", "Sidecar", "free_port", "sidecar_config", "start_app", "wait_healthy"]

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@dataclass
class Sidecar:
    """A running sidecar: its URL, its app (for its services) and the mock behind it."""

    url: str
    app: web.Application
    runner: web.AppRunner
    mock: MockUpstream
    thread: LoopThread
    config_path: Path
    closed: bool = field(default=False)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def services(self) -> Services:
        return self.app[SERVICES]

    def idle(self, seconds: float = 5.0) -> None:
        """Wait until no request is in flight. A client may see an answer's last byte (or its
        error) before the sidecar has finished with it: ended its spans, settled its counts."""
        drain = self.app[DRAIN]
        deadline = time.monotonic() + seconds
        while drain.tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def client(self, api_key: str = "sk-test-client", **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, **kwargs)

    def async_client(self, api_key: str = "sk-test-client", **kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, **kwargs)

    def stop(self) -> None:
        if not self.closed:
            self.closed = True
            self.thread.run(self.runner.cleanup())


def sidecar_config(mock: MockUpstream, text: str) -> str:
    """The test's TOML with the mock as the upstream unless the test names its own upstreams."""
    text = text.replace("{mock}", mock.base_url)
    if "[[upstreams]]" in text:
        return text
    head = f'[[upstreams]]\nname = "mock"\nbase_url = "{mock.base_url}"\n'
    return head + "\n" + text if not text.lstrip().startswith("[") else text + "\n" + head


async def start_app(config_path: Path, env: Mapping[str, str] | None,
                    clock: Clock | None) -> tuple[web.Application, web.AppRunner, str]:
    config = load_config(config_path, env)
    app = build_app(config, clock)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return app, runner, f"http://127.0.0.1:{port}"


def wait_healthy(url: str, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "the sidecar exited during startup"
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("the sidecar did not become healthy")
