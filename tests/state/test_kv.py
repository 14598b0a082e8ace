"""One contract for the cache's key-value stores, run against memory and a real redis-server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from proxy.errors import StateBackendError
from proxy.state.base import KVStore
from proxy.state.kv import MemoryKVStore, NearCachedKVStore, RedisKVStore, glob_escape
from proxy.state.redis import RedisConnection
from tests.conftest import ManualClock
from tests.redis_server import RedisServer, redis_or_skip, redis_server_session, redis_url

__all__ = ["redis_server_session", "redis_url"]


@pytest.fixture(params=["memory", "redis", "near+redis"])
async def store(request: pytest.FixtureRequest, clock: ManualClock) -> AsyncIterator[KVStore]:
    if request.param == "memory":
        yield MemoryKVStore(8 << 20, 1000, clock.monotonic)
        return
    url = request.getfixturevalue("redis_url")
    connection = RedisConnection(url, "test", 0.5)
    redis_store = RedisKVStore(connection, "kv", clock.monotonic)
    try:
        if request.param == "redis":
            yield redis_store
        else:
            near = MemoryKVStore(8 << 20, 1000, clock.monotonic)
            yield NearCachedKVStore(near, redis_store, 1.0)
    finally:
        await connection.aclose()


async def test_a_value_comes_back_until_it_is_deleted(store: KVStore) -> None:
    assert await store.set("a", b"one", 60) is True
    assert await store.get("a") == b"one"
    assert await store.get("missing") is None
    assert await store.delete("a") is True
    assert await store.delete("a") is False
    assert await store.get("a") is None


async def test_large_values_survive_compression_byte_for_byte(store: KVStore) -> None:
    value = bytes(range(256)) * 4000 + b'{"choices": []}' * 5000
    await store.set("big", value, 60)
    assert await store.get("big") == value


async def test_get_many_answers_in_order_with_gaps(store: KVStore) -> None:
    await store.set("x", b"1", 60)
    await store.set("z", b"3", 60)
    assert await store.get_many(["x", "y", "z"]) == [b"1", None, b"3"]
    assert await store.get_many([]) == []


async def test_a_zero_ttl_stores_nothing(store: KVStore) -> None:
    assert await store.set("a", b"v", 0) is False
    assert await store.get("a") is None


async def test_purge_removes_only_what_matches(store: KVStore) -> None:
    for key in ("c|1|ns|gpt|k|aa", "c|1|ns|gpt|k|bb", "c|1|other|gpt|k|cc", "e|1|ns|emb|k|dd"):
        await store.set(key, b"v", 60)
    assert await store.purge("*|1|ns|*") == 3
    assert await store.get("c|1|other|gpt|k|cc") == b"v"
    assert await store.purge() == 1
    assert await store.get("c|1|other|gpt|k|cc") is None


async def test_purge_treats_escaped_glob_characters_literally(store: KVStore) -> None:
    await store.set("a*b", b"v", 60)
    await store.set("axb", b"v", 60)
    assert await store.purge(glob_escape("a*b")) == 1
    assert await store.get("axb") == b"v"


async def test_a_lock_has_one_owner_until_released(store: KVStore) -> None:
    token = await store.lock("l", 10)
    assert token
    assert await store.lock("l", 10) is None
    await store.unlock("l", "not-the-owner")
    assert await store.lock("l", 10) is None
    await store.unlock("l", token)
    assert await store.lock("l", 10)


async def test_ready(store: KVStore) -> None:
    assert await store.ready() is True


# -- memory only: bounds and TTL by the injected clock ------------------------------------------


async def test_memory_entries_expire_by_the_injected_clock(clock: ManualClock) -> None:
    store = MemoryKVStore(1 << 20, 100, clock.monotonic)
    await store.set("a", b"v", 30)
    clock.advance(29)
    assert await store.get("a") == b"v"
    clock.advance(2)
    assert await store.get("a") is None
    assert store.bytes == 0


async def test_memory_evicts_least_recently_used_past_max_bytes(clock: ManualClock) -> None:
    store = MemoryKVStore(3 * (1000 + 201 + 200), 100, clock.monotonic)
    for key in ("k1", "k2", "k3"):
        await store.set(key, b"x" * 1000, 60)
    assert await store.get("k1") is not None  # k1 is now the most recently used
    await store.set("k4", b"x" * 1000, 60)
    assert await store.get("k2") is None
    assert [await store.get(k) is not None for k in ("k1", "k3", "k4")] == [True, True, True]
    assert store.bytes <= store.max_bytes


async def test_memory_evicts_past_max_entries_and_rejects_oversized(clock: ManualClock) -> None:
    store = MemoryKVStore(10_000, 2, clock.monotonic)
    for key in ("a", "b", "c"):
        await store.set(key, b"v", 60)
    assert len(store) == 2 and await store.get("a") is None
    await store.set("huge", b"x" * 20_000, 60)
    assert await store.get("huge") is None and len(store) == 2


async def test_memory_prefers_evicting_expired_entries(clock: ManualClock) -> None:
    store = MemoryKVStore(10_000, 2, clock.monotonic)
    await store.set("fresh", b"v", 600)
    await store.set("stale", b"v", 5)
    clock.advance(10)
    await store.set("new", b"v", 600)
    assert await store.get("fresh") == b"v" and await store.get("new") == b"v"


# -- redis only: fail open, TTL in Redis, recovery -----------------------------------------------


@pytest.fixture
def private_redis() -> RedisServer:
    with redis_or_skip() as server:
        yield server


async def test_redis_lets_redis_expire_entries(redis_url: str, clock: ManualClock) -> None:
    connection = RedisConnection(redis_url, "test", 0.5)
    try:
        await RedisKVStore(connection, "kv", clock.monotonic).set("a", b"v", 30)
        ttl = await connection.client.pttl("test:kv:a")
        assert 0 < ttl <= 30_000
    finally:
        await connection.aclose()


async def test_redis_down_fails_open_logs_once_and_recovers(
    private_redis: RedisServer, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    connection = RedisConnection(private_redis.url, "test", 0.3)
    store = RedisKVStore(connection, "kv", clock.monotonic)
    try:
        await store.set("a", b"v", 60)
        private_redis.stop()
        with caplog.at_level(logging.ERROR, logger="proxy.state"):
            for _ in range(3):
                assert await store.get("a") is None
                await store.set("b", b"v", 60)
                clock.advance(2)  # past the quiet period: each round really tries Redis
        assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
        assert await store.lock("l", 5) == ""  # nobody can hold a lock: callers go ahead
        assert await store.ready() is False
        with pytest.raises(StateBackendError):
            await store.purge()
        private_redis.start()
        clock.advance(2)
        assert await store.ready() is True
        await store.set("a", b"again", 60)
        assert await store.get("a") == b"again"
    finally:
        await connection.aclose()


async def test_the_near_cache_serves_hot_keys_briefly_then_defers_to_redis(
        redis_url: str, clock: ManualClock) -> None:
    connection = RedisConnection(redis_url, "test", 0.5)
    try:
        shared = RedisKVStore(connection, "kv", clock.monotonic)
        replica = NearCachedKVStore(MemoryKVStore(1 << 20, 100, clock.monotonic), shared, 1.0)
        await shared.set("k", b"v1", 60)
        assert await replica.get("k") == b"v1"
        await shared.purge()  # another replica purges
        assert await replica.get("k") == b"v1"  # still in this process's near cache
        clock.advance(1.5)
        assert await replica.get("k") is None
    finally:
        await connection.aclose()
