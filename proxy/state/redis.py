"""The Redis connection every Redis store shares: client, health, Lua scripts, key naming.

Keys look like `{prefix}:{kind}:{{tag}}:{rest}`; the `{tag}` part is a Redis Cluster hash tag, so
every key one script touches lives on one slot.
"""

from __future__ import annotations

import hashlib
import logging
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from proxy.state.resp import RespClient

log = logging.getLogger("proxy.state")


class RedisConnection:
    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        # A blocking pool waits for a free connection instead of failing past its size under load.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=256, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        self._pool = pool
        self.client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        # The request path's commands (scripts, cache reads and writes) go over one pipelined
        # connection; redis-py serves the rest (scans, admin, the semantic index).
        self.fast = RespClient(url, timeout)
        self.prefix = prefix
        self.healthy = True
        self._sources: dict[str, tuple[str, str]] = {}

    def key(self, kind: str, tag: str, *rest: str) -> str:
        tail = ":".join(rest)
        return f"{self.prefix}:{kind}:{{{tag}}}" + (f":{tail}" if tail else "")

    def _source(self, name: str) -> tuple[str, str]:
        found = self._sources.get(name)
        if found is None:
            source = resources.files("proxy.state").joinpath("lua", f"{name}.lua").read_text()
            found = self._sources[name] = (hashlib.sha1(source.encode()).hexdigest(), source)
        return found

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script (EVALSHA, loaded if Redis lacks it); a failure marks the backend
        unhealthy (logged once) and re-raises."""
        sha, source = self._source(name)
        try:
            result = await self.fast.script(sha, source, keys, args)
        except (RedisError, OSError) as exc:
            self.mark_down(exc)
            raise
        self.mark_up()
        return result

    def mark_down(self, exc: BaseException) -> None:
        if self.healthy:
            self.healthy = False
            log.error("redis state backend unavailable: %s", type(exc).__name__)

    def mark_up(self) -> None:
        if not self.healthy:
            self.healthy = True
            log.warning("redis state backend reachable again")

    async def ping(self) -> bool:
        try:
            await self.fast.execute("PING")
        except (RedisError, OSError) as exc:
            self.mark_down(exc)
            return False
        self.mark_up()
        return True

    async def aclose(self) -> None:
        await self.fast.aclose()
        await self.client.aclose()
        await self._pool.disconnect()
