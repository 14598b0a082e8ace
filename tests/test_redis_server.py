"""The throw-away redis-server helper: it answers, restarts on its port empty, and cleans up."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.redis_server import RedisServer, RedisUnavailable, redis_or_skip


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_or_skip() as started:
        yield started


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[aioredis.Redis]:
    # A fresh client each time: what is under test is the server, not redis-py's reconnects.
    client = aioredis.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_serves_and_restarts_on_the_same_port_empty(server: RedisServer) -> None:
    async with connect(server.url) as client:
        await client.set("k", "v")
        assert await client.get("k") == b"v"
    port = server.port
    await asyncio.to_thread(server.stop)
    async with connect(server.url) as client:
        with pytest.raises(RedisConnectionError):
            await client.get("k")
    await asyncio.to_thread(server.start)
    assert server.port == port
    async with connect(server.url) as client:
        assert await client.get("k") is None  # no persistence: a restart loses everything
        await client.set("k", "again")
    await asyncio.to_thread(server.restart)
    async with connect(server.url) as client:
        assert await client.exists("k") == 0


async def test_flush_empties_a_shared_server(server: RedisServer) -> None:
    async with connect(server.url) as client:
        await client.set("k", "v")
        await asyncio.to_thread(server.flush)
        assert await client.dbsize() == 0


def test_close_kills_the_process_and_removes_its_dir() -> None:
    with redis_or_skip() as server:
        pid = server.pid
        workdir = server.workdir
        assert pid is not None and workdir is not None and workdir.is_dir()
    assert not server.running
    assert not workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_missing_executable_skips() -> None:
    with pytest.raises(RedisUnavailable):
        RedisServer(executable="no-such-redis-server")
    with pytest.raises(pytest.skip.Exception), redis_or_skip("no-such-redis-server"):
        pass
