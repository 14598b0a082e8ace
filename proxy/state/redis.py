"""The Redis connection every Redis store shares: client, health, Lua scripts, key naming.

Keys look like `{prefix}:{kind}:{{tag}}:{rest}`; the `{tag}` part is a Redis Cluster hash tag, so
every key one script touches lives on one slot.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

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
        self.prefix = prefix
        self.healthy = True
        self._scripts: dict[str, AsyncScript] = {}

    def key(self, kind: str, tag: str, *rest: str) -> str:
        tail = ":".join(rest)
        return f"{self.prefix}:{kind}:{{{tag}}}" + (f":{tail}" if tail else "")

    def script(self, name: str) -> AsyncScript:
        """A Lua script from `proxy/state/lua/<name>.lua`, run by EVALSHA (reloaded if flushed)."""
        if name not in self._scripts:
            source = resources.files("proxy.state").joinpath("lua", f"{name}.lua").read_text()
            self._scripts[name] = self.client.register_script(source)
        return self._scripts[name]

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script; a failure marks the backend unhealthy (logged once) and re-raises."""
        try:
            result = await self.script(name)(keys=keys, args=args)
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
            await self.client.ping()
        except (RedisError, OSError) as exc:
            self.mark_down(exc)
            return False
        self.mark_up()
        return True

    async def aclose(self) -> None:
        await self.client.aclose()
        await self._pool.disconnect()
