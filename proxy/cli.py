"""The `llm-sidecar` command: `serve` and `check-config`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from proxy.config import Config, load_config
from proxy.errors import ConfigError

log = logging.getLogger("proxy")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "check-config":
        return _check(args.file)
    return _serve(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-sidecar", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("SIDECAR_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the sidecar")
    serve.add_argument("--config", help="config TOML file (default: embedded defaults)")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument("--workers", type=int, help="processes sharing the port (SO_REUSEPORT)")
    check = commands.add_parser("check-config", help="validate a config and its policy files")
    check.add_argument("file")
    return parser


def _check(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    enabled = ", ".join(name for name, value in config.policies.items() if value) or "none"
    upstreams = ", ".join(u.name for u in config.settings.upstreams)
    print(f"{path}: ok (upstreams: {upstreams}; policies: {enabled})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    server = config.settings.server
    host = args.host or server.host
    port = args.port if args.port is not None else server.port
    workers = args.workers or server.workers
    if workers > 1 and os.environ.get("SIDECAR_WORKER") is None:
        return _supervise(workers, sys.argv[1:])
    from proxy.server import build_app

    web.run_app(
        build_app(config), host=host, port=port, reuse_port=workers > 1 or None,
        handler_cancellation=True, shutdown_timeout=server.drain_timeout + 5,
        access_log=logging.getLogger("proxy.access") if server.access_log else None,
        print=_banner(config, host, port), loop=_new_loop(),
    )
    return 0


def _banner(config: Config, host: str, port: int) -> Callable[..., None]:
    def announce(*_: Any) -> None:
        names = ", ".join(name for name, value in config.policies.items() if value) or "none"
        log.info("llm-sidecar listening on http://%s:%s/v1 (pid %s; policies: %s)",
                 host, port, os.getpid(), names)

    return announce


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _supervise(workers: int, argv: list[str]) -> int:
    """Run `workers` copies of this command on one port; forward signals; restart crashed ones."""
    env = {**os.environ, "SIDECAR_WORKER": "1"}
    command = [sys.executable, "-m", "proxy", *argv]
    children = [subprocess.Popen(command, env=env) for _ in range(workers)]
    stopping = False

    def stop(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        for index, child in enumerate(children):
            if child.poll() is not None and not stopping:
                log.error("worker %s exited with %s; restarting", child.pid, child.returncode)
                children[index] = subprocess.Popen(command, env=env)
        time.sleep(0.5)
    return max(child.wait() for child in children)
