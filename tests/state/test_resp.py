"""The request path's Redis client, against a real redis-server: answers reach the right caller
however many are in flight, a lost or silent server fails commands quickly and the client
recovers, scripts survive a SCRIPT FLUSH, and the URL's password is used but never shown."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import ResponseError

from proxy.state.resp import Endpoint, RespClient, pack
from tests.redis_server import (
    RedisServer,
    free_port,
    redis_server,
    redis_server_session,
    redis_url,
    send_command,
)

__all__ = ["redis_server", "redis_server_session", "redis_url"]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RespClient]:
    resp = RespClient(redis_url, 1.0)
    yield resp
    await resp.aclose()


async def test_many_commands_in_flight_each_get_their_own_answer(client: RespClient) -> None:
    await asyncio.gather(*(client.execute("SET", f"k{i}", f"v{i}") for i in range(300)))
    values = await asyncio.gather(*(client.execute("GET", f"k{i}") for i in range(300)))
    assert values == [f"v{i}".encode() for i in range(300)]
    assert await client.execute("GET", "missing") is None
    assert await client.execute("INCRBY", "n", 5) == 5


async def test_error_replies_raise_and_the_connection_stays_usable(client: RespClient) -> None:
    await client.execute("SET", "s", "text")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await client.execute("LPUSH", "s", "x")
    assert await client.execute("GET", "s") == b"text"


async def test_scripts_are_loaded_again_after_a_flush(client: RespClient) -> None:
    source = "return tonumber(ARGV[1]) + #KEYS"
    sha = hashlib.sha1(source.encode()).hexdigest()
    assert await client.script(sha, source, ["a", "b"], [40]) == 42
    await client.execute("SCRIPT", "FLUSH")
    assert await client.script(sha, source, ["a"], [1]) == 2


async def test_a_restarted_server_fails_commands_then_serves_again(
        redis_server: RedisServer) -> None:
    client = RespClient(redis_server.url, 1.0)
    try:
        assert await client.execute("PING") == b"PONG"
        redis_server.stop()
        with pytest.raises(OSError):
            await client.execute("PING")
        with pytest.raises(OSError):  # nothing listens: refused at once, not after a timeout
            await asyncio.wait_for(client.execute("PING"), 0.9)
        redis_server.start()
        assert await client.execute("PING") == b"PONG"
    finally:
        await client.aclose()


async def test_a_silent_server_times_out_every_waiting_command() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(f"redis://127.0.0.1:{port}/0", 0.2)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(*(client.execute("GET", "k") for _ in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(result, TimeoutError) for result in results)
        assert loop.time() - started < 1.0
    finally:
        await client.aclose()
        server.close()


async def test_the_urls_password_and_database_are_used(redis_server: RedisServer) -> None:
    secret = "s3cret/with:odd@chars"
    assert send_command(redis_server.port, "CONFIG", "SET", "requirepass", secret) == b"+OK"
    quoted = secret.replace("/", "%2F").replace(":", "%3A").replace("@", "%40")
    client = RespClient(f"redis://:{quoted}@127.0.0.1:{redis_server.port}/3", 1.0)
    wrong = RespClient(f"redis://:not-{quoted}@127.0.0.1:{redis_server.port}/0", 1.0)
    try:
        await client.execute("SET", "where", "db3")
        assert await client.execute("SELECT", 3) == b"OK"
        assert await client.execute("GET", "where") == b"db3"
        with pytest.raises(ResponseError) as refused:
            await wrong.execute("PING")
        assert "s3cret" not in str(refused.value)
    finally:
        await client.aclose()
        await wrong.aclose()


async def test_nothing_listening_is_a_connection_error() -> None:
    client = RespClient(f"redis://127.0.0.1:{free_port()}/0", 1.0)
    with pytest.raises(ConnectionError):
        await client.execute("PING")
    await client.aclose()


def test_urls() -> None:
    assert Endpoint.from_url("redis://127.0.0.1:6390/2") == Endpoint("127.0.0.1", 6390, db=2)
    assert Endpoint.from_url("rediss://user:pw@cache.internal") == Endpoint(
        "cache.internal", 6379, tls=True, username="user", password="pw")
    assert Endpoint.from_url("unix:///run/redis.sock?db=4") == Endpoint(path="/run/redis.sock",
                                                                        db=4)
    with pytest.raises(ValueError):
        Endpoint.from_url("http://127.0.0.1:6379")


@given(st.lists(st.one_of(st.binary(max_size=40), st.text(max_size=40),
                          st.integers(-(2**63), 2**63 - 1)), min_size=1, max_size=8))
def test_commands_are_packed_as_resp_arrays(args: list[bytes | str | int]) -> None:
    """What Redis would read back: the array's length, then each argument's exact bytes."""
    packed = pack(tuple(args))
    header, _, rest = packed.partition(b"\r\n")
    assert header == b"*%d" % len(args)
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        length, _, rest = rest.partition(b"\r\n")
        assert length == b"$%d" % len(data)
        assert rest[:len(data)] == data and rest[len(data):len(data) + 2] == b"\r\n"
        rest = rest[len(data) + 2:]
    assert rest == b""
