"""The `llm-sidecar` command as a user runs it: `serve` in processes, `--workers`, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.harness import free_port, wait_healthy
from tests.mock_upstream import MockUpstream


def test_serve_with_workers_shares_one_port_and_stops_on_sigterm(
        mock: MockUpstream, tmp_path: Path) -> None:
    config = tmp_path / "sidecar.toml"
    config.write_text(f'[[upstreams]]\nname = "mock"\nbase_url = "{mock.base_url}"\n'
                      f'[state]\ndata_dir = "{tmp_path / "state"}"\n')
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(port),
         "--workers", "2"], env={**os.environ, "SIDECAR_LOG_LEVEL": "warning"})
    try:
        wait_healthy(url, process)
        pids = set()
        for _ in range(200):
            with httpx.Client() as client:  # a new connection each time
                pids.add(client.get(url + "/healthz").json()["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2, "both workers answer on the one port"
        answer = httpx.post(url + "/v1/chat/completions", json={
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.json()["choices"][0]["message"]["content"] == "Echo: hi"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
