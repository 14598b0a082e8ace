"""Graceful shutdown: on SIGTERM in-flight streams finish, or end with an error event at the
drain deadline; no accepted stream is cut silently."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from tests.harness import free_port, wait_healthy
from tests.mock_upstream import MockUpstream


def start(mock: MockUpstream, tmp_path: Path, drain: str) -> tuple[subprocess.Popen[bytes], str]:
    config = tmp_path / "sidecar.toml"
    config.write_text(f'[server]\ndrain_timeout = "{drain}"\n'
                      f'[[upstreams]]\nname = "mock"\nbase_url = "{mock.base_url}"\n'
                      f'[state]\ndata_dir = "{tmp_path / "state"}"\n')
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(config),
                                "--port", str(port)],
                               env={**os.environ, "SIDECAR_LOG_LEVEL": "warning"})
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process)
    return process, url


def stream_after_sigterm(mock: MockUpstream, tmp_path: Path, drain: str, pieces: int) -> list[str]:
    mock.fault("chunk_delay", times=1, seconds=0.1)
    mock.script(pieces=[f"p{i} " for i in range(pieces)])
    process, url = start(mock, tmp_path, drain)
    lines: list[str] = []
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=30, json={
                "model": "gpt-4o-mini", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as response:
            for line in response.iter_lines():
                if line and not lines:
                    threading.Timer(0.05, process.send_signal, (signal.SIGTERM,)).start()
                if line:
                    lines.append(line)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    return lines


def test_in_flight_stream_finishes_within_the_drain(mock: MockUpstream, tmp_path: Path) -> None:
    lines = stream_after_sigterm(mock, tmp_path, "20s", pieces=10)
    assert lines[-1] == "data: [DONE]"
    assert sum(bool(re.search(r'"content": ?"p\d+ "', line)) for line in lines) == 10


def test_stream_past_the_drain_deadline_ends_with_an_error_event(mock: MockUpstream,
                                                                 tmp_path: Path) -> None:
    lines = stream_after_sigterm(mock, tmp_path, "500ms", pieces=100)
    assert "server_shutting_down" in lines[-1] and lines[-1].startswith("data: {\"error\"")
