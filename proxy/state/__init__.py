"""Shared state: which backend runs (memory or Redis) and its lifecycle and health."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from proxy.settings import StateConfig
from proxy.state.redis import RedisConnection


@dataclass(slots=True)
class StateBackend:
    """The configured backend. Policies build their own stores from it (memory or Redis)."""

    config: StateConfig
    redis: RedisConnection | None = None

    @property
    def kind(self) -> str:
        return self.config.backend

    @property
    def data_dir(self) -> Path:
        return Path(self.config.data_dir)

    @classmethod
    def open(cls, config: StateConfig) -> StateBackend:
        if config.backend == "redis":
            return cls(config, RedisConnection(config.url, config.key_prefix, config.timeout))
        return cls(config)

    async def ready(self) -> bool:
        return True if self.redis is None else await self.redis.ping()

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
