"""The exact cache on Redis: shared by replicas, failing open through an outage, versioned."""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import ManualClock, StartSidecar
from tests.harness import Sidecar
from tests.redis_server import RedisServer, redis_or_skip, redis_server_session, redis_url

__all__ = ["redis_server_session", "redis_url"]
HI = [{"role": "user", "content": "hello redis cache"}]


def config(url: str, extra: str = "") -> str:
    return f'[state]\nbackend = "redis"\nurl = "{url}"\n\n[cache]\nenabled = true\n{extra}\n'


def label(sidecar: Sidecar, messages: Any = HI) -> str:
    raw = sidecar.client(api_key="sk-a").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages)
    assert raw.parse().choices[0].message.content
    return str(raw.headers["x-sidecar-cache"])


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    with redis_or_skip() as server:
        yield server


def test_misses_during_a_redis_outage_and_hits_again_after(
        start_sidecar: StartSidecar, private_redis: RedisServer, clock: ManualClock,
        caplog: pytest.LogCaptureFixture) -> None:
    sidecar = start_sidecar(config(private_redis.url), clock=clock)
    assert [label(sidecar), label(sidecar)] == ["miss", "hit"]
    private_redis.stop()
    clock.advance(2)  # past the near cache's second: what is left is Redis, and it is gone
    with caplog.at_level(logging.ERROR, logger="proxy.state"):
        during = [label(sidecar) for _ in range(3)]
        clock.advance(5)
        during.append(label(sidecar))
    assert during == ["miss"] * 4  # every request still answered, from upstream
    ready = httpx.get(sidecar.url + "/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["cache"] is False
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
    private_redis.start()
    clock.advance(5)
    assert httpx.get(sidecar.url + "/readyz").json()["checks"]["cache"] is True
    assert [label(sidecar), label(sidecar)] == ["miss", "hit"]


def test_replicas_share_entries_and_one_upstream_call(start_sidecar: StartSidecar,
                                                      redis_url: str) -> None:
    first = start_sidecar(config(redis_url), name="a.toml")
    second = start_sidecar(config(redis_url), name="b.toml")
    first.mock.fault("latency", seconds=0.4, times=2)
    clients = [s.async_client(api_key="sk-a") for s in (first, second)]

    async def burst() -> list[Any]:
        calls = [clients[i % 2].chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HI) for i in range(20)]
        return await asyncio.gather(*calls)

    replies = asyncio.run(burst())
    assert first.mock.count() == 1
    assert sum(r.headers["x-sidecar-cache"] == "miss" for r in replies) == 1
    assert label(second, [{"role": "user", "content": "new"}]) == "miss"
    assert label(first, [{"role": "user", "content": "new"}]) == "hit"


def test_bumping_the_version_invalidates_everything(start_sidecar: StartSidecar,
                                                    redis_url: str) -> None:
    v1 = start_sidecar(config(redis_url, "version = 1"), name="v1.toml")
    assert label(v1) == "miss"
    v2 = start_sidecar(config(redis_url, "version = 2"), name="v2.toml")
    assert [label(v2), label(v2)] == ["miss", "hit"]
    assert label(v1) == "hit"


def test_redis_holds_compressed_entries_without_keys_or_names(start_sidecar: StartSidecar,
                                                              redis_url: str) -> None:
    sidecar = start_sidecar(config(redis_url, 'scope = "user"'))
    long = [{"role": "user", "content": "tell me a long story " * 200}]
    raw = sidecar.client(api_key="sk-secret-client").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=long, extra_headers={"x-sidecar-user": "alice"})
    assert raw.headers["x-sidecar-cache"] == "miss"
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k for k in client.keys("*") if b":cache:" in k]
        assert len(keys) == 1
        value = client.get(keys[0])
        assert value is not None and value[:1] == b"\x01"  # zlib
        assert len(value) < len(raw.http_response.content)
        stored = zlib.decompress(value[1:])
        assert b"tell me a long story" in stored
        for secret in (b"sk-secret-client", b"alice"):
            assert secret not in keys[0] and secret not in stored
        assert 0 < client.pttl(keys[0]) <= 3600 * 1000
    finally:
        client.close()
