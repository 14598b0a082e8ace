"""The shared index on a real redis-server: replicas see each other's entries, purge, TTL, outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
from redis.exceptions import RedisError

from proxy.semantic.redis_index import RedisVectorIndex
from proxy.state.redis import RedisConnection
from tests.redis_server import RedisServer, redis_server, redis_server_session, redis_url

__all__ = ["redis_server", "redis_server_session", "redis_url"]  # fixtures used below

pytestmark = pytest.mark.redis


def unit(*values: float) -> np.ndarray:
    vec = np.asarray(values, dtype=np.float32)
    return vec / np.linalg.norm(vec)


class WallClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


Make = Callable[..., Awaitable[RedisVectorIndex]]


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[Make]:
    made: list[tuple[RedisVectorIndex, RedisConnection]] = []

    async def make(clock: Callable[[], float] = time.time,
                   url: str = redis_url) -> RedisVectorIndex:
        conn = RedisConnection(url, "test", 0.5)
        index = RedisVectorIndex(conn, 3, poll=0.05, clock=clock)
        await index.start()
        made.append((index, conn))
        return index

    yield make
    for index, conn in made:
        await index.aclose()
        await conn.aclose()


async def eventually(check: Callable[[], Awaitable[object]], attempts: int = 100) -> bool:
    """True once `check()` is truthy; bounded, so a broken sync fails instead of hanging."""
    for _ in range(attempts):
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_an_entry_written_by_one_replica_is_found_by_another(replicas: Make) -> None:
    a, b = await replicas(), await replicas()
    await a.add("tenant", unit(1, 0, 0), b"answer", 60)

    async def seen() -> bool:
        return [c.payload for c in await b.search("tenant", unit(1, 0, 0), 3)] == [b"answer"]

    assert await eventually(seen)
    assert await b.search("other-tenant", unit(1, 0, 0), 3) == []


async def test_a_replica_started_later_loads_existing_entries(replicas: Make) -> None:
    a = await replicas()
    await a.add("tenant", unit(0, 1, 0), b"old", 60)
    late = await replicas()
    assert [c.payload for c in await late.search("tenant", unit(0, 1, 0), 3)] == [b"old"]


async def test_purge_reaches_every_replica(replicas: Make) -> None:
    a, b = await replicas(), await replicas()
    await a.add("ns=x|t", unit(1, 1, 0), b"x", 60)
    await a.add("ns=y|t", unit(1, 1, 0), b"y", 60)
    assert await eventually(lambda: b.search("ns=x|t", unit(1, 1, 0), 3))
    assert await b.purge("ns=x|") == 1
    assert await a.search("ns=x|t", unit(1, 1, 0), 3) == []

    async def purged_on_a() -> bool:
        return len(a._mirror) == 1

    assert await eventually(purged_on_a)
    assert [c.payload for c in await a.search("ns=y|t", unit(1, 1, 0), 3)] == [b"y"]


async def test_expired_entries_are_not_served(replicas: Make) -> None:
    clock = WallClock()
    a = await replicas(clock)
    await a.add("t", unit(1, 0, 1), b"soon stale", 30)
    clock.offset = 31
    assert await a.search("t", unit(1, 0, 1), 3) == []
    assert await (await replicas(clock)).search("t", unit(1, 0, 1), 3) == []


async def test_redis_down_raises_for_the_caller_to_fail_open(
        redis_server: RedisServer, replicas: Make) -> None:
    a = await replicas(url=redis_server.url)
    await a.add("t", unit(1, 0, 0), b"x", 60)
    redis_server.stop()
    with pytest.raises((RedisError, OSError)):
        await a.search("t", unit(1, 0, 0), 3)
    with pytest.raises((RedisError, OSError)):
        await a.add("t", unit(1, 0, 0), b"y", 60)
    redis_server.start()
    await a.add("t", unit(0, 0, 1), b"back", 60)
    assert [c.payload for c in await a.search("t", unit(0, 0, 1), 1)] == [b"back"]
