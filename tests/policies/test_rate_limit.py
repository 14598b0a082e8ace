"""`[[limits]]` as a client sees it: 429s in OpenAI's shape, headers, token reconciliation,
concurrency slots, waiting for capacity, and what happens when Redis is down."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

import httpx
import openai
import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import load_config
from proxy.errors import ConfigError, RateLimited
from proxy.exchange import Endpoint, Exchange, Identity, Reply
from proxy.pipeline import Handler, PolicyContext
from proxy.policies.rate_limit import Config, RateLimitPolicy, create
from proxy.settings import Settings, StateConfig
from proxy.state import StateBackend
from proxy.tokens import TokenCounter
from tests.conftest import ManualClock, StartSidecar
from tests.harness import Sidecar
from tests.redis_server import (  # noqa: F401  (fixtures)
    RedisServer,
    redis_server,
    redis_server_session,
    redis_url,
)

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": "Bearer sk-app"}
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


def post(sidecar: Sidecar, body: dict[str, Any] | None = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{sidecar.base_url}/chat/completions", json=body or CHAT, timeout=10,
                      headers={**AUTH, **(headers or {})})


def until(check: Callable[[], bool], attempts: int = 50) -> bool:
    """Poll a condition the server reaches on its own (bounded; asserts behaviour, not timing)."""
    for _ in range(attempts):
        if check():
            return True
        time.sleep(0.1)
    return False


def estimate(body: dict[str, Any]) -> int:
    return TokenCounter().count_request(body, body["model"]) + int(body.get("max_tokens", 0))


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> str:
    """The `[state]` section: the same behaviour must hold on both backends."""
    if request.param == "memory":
        return ""
    return f'[state]\nbackend = "redis"\nurl = "{request.getfixturevalue("redis_url")}"\n'


def test_refuses_past_the_limit_in_openais_shape(start_sidecar: StartSidecar,
                                                 clock: ManualClock) -> None:
    sidecar = start_sidecar('[[limits]]\nname = "per-key"\nrequests = 2\nwindow = "1m"\n',
                            clock=clock)
    client = sidecar.client()
    first = client.chat.completions.with_raw_response.create(**CHAT)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert GO_DURATION.match(first.headers["x-ratelimit-reset-requests"])
    clock.advance(20)
    client.chat.completions.create(**CHAT)
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(**CHAT)
    error = raised.value.response
    body = error.json()["error"]
    assert error.status_code == 429
    assert body["type"] == "requests" and body["code"] == "rate_limit_exceeded"
    assert "per-key" in body["message"] and "Limit 2" in body["message"]
    # the first request frees the window in ~40s, not a whole window from now
    assert 40 <= int(error.headers["Retry-After"]) <= 42
    assert 40_000 <= int(error.headers["retry-after-ms"]) <= 41_100
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert sidecar.mock.count("/v1/chat/completions") == 2


def test_the_window_slides(start_sidecar: StartSidecar, clock: ManualClock, state: str) -> None:
    sidecar = start_sidecar(state + '[[limits]]\nrequests = 2\nwindow = "1m"\n', clock=clock)
    assert post(sidecar).status_code == 200
    clock.advance(30)
    assert post(sidecar).status_code == 200
    assert post(sidecar).status_code == 429
    clock.advance(31.5)  # the first request has left the window, the second has not
    assert post(sidecar).status_code == 200
    assert post(sidecar).status_code == 429


def test_counters_follow_per_and_match(start_sidecar: StartSidecar, clock: ManualClock) -> None:
    sidecar = start_sidecar(
        '[[limits]]\nname = "big-model"\nper = ["team", "user"]\nmatch = { model = "gpt-4o" }\n'
        'requests = 1\n', clock=clock)
    big = {**CHAT, "model": "gpt-4o"}
    assert post(sidecar, big, {"x-sidecar-team": "a", "x-sidecar-user": "u"}).status_code == 200
    assert post(sidecar, big, {"x-sidecar-team": "a", "x-sidecar-user": "u"}).status_code == 429
    assert post(sidecar, big, {"x-sidecar-team": "b", "x-sidecar-user": "u"}).status_code == 200
    assert post(sidecar, big, {"x-sidecar-team": "a", "x-sidecar-user": "v"}).status_code == 200
    small = post(sidecar, CHAT, {"x-sidecar-team": "a", "x-sidecar-user": "u"})
    assert small.status_code == 200  # no rule applies: the upstream's own headers pass through
    assert small.headers.get("x-ratelimit-limit-requests") != "1"


def test_a_refused_request_charges_no_rule(start_sidecar: StartSidecar, clock: ManualClock,
                                           state: str) -> None:
    sidecar = start_sidecar(
        state + '[[limits]]\nname = "per-user"\nper = "user"\nrequests = 1\n'
        '[[limits]]\nname = "per-key"\nrequests = 3\n', clock=clock)
    assert post(sidecar, None, {"x-sidecar-user": "alice"}).status_code == 200
    refused = post(sidecar, None, {"x-sidecar-user": "alice"})
    assert refused.status_code == 429 and "per-user" in refused.json()["error"]["message"]
    assert post(sidecar, None, {"x-sidecar-user": "bob"}).status_code == 200
    assert post(sidecar, None, {"x-sidecar-user": "carol"}).status_code == 200
    last = post(sidecar, None, {"x-sidecar-user": "dave"})
    assert last.status_code == 429 and "per-key" in last.json()["error"]["message"]


def test_headers_describe_the_tightest_rule(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar('[[limits]]\nname = "loose"\nrequests = 100\ntokens = 100000\n'
                            '[[limits]]\nname = "tight"\nper = "ip"\nrequests = 3\n')
    reply = post(sidecar)
    assert reply.headers["x-ratelimit-limit-requests"] == "3"
    assert reply.headers["x-ratelimit-remaining-requests"] == "2"
    assert reply.headers["x-ratelimit-limit-tokens"] == "100000"
    assert GO_DURATION.match(reply.headers["x-ratelimit-reset-tokens"])


def test_a_request_larger_than_the_limit_is_told_it_never_fits(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar('[[limits]]\nname = "small"\ntokens = 100\n')
    with pytest.raises(openai.RateLimitError) as raised:
        sidecar.client().chat.completions.create(**CHAT, max_tokens=500)
    response = raised.value.response
    assert response.headers["x-should-retry"] == "false"
    assert response.json()["error"]["type"] == "tokens"
    assert "never fit" in response.json()["error"]["message"]
    assert sidecar.mock.count() == 0


def test_tokens_are_reconciled_down_to_real_usage(start_sidecar: StartSidecar, state: str) -> None:
    body = {**CHAT, "max_tokens": 50}
    cost = estimate(body)
    sidecar = start_sidecar(state + f'[[limits]]\ntokens = {2 * cost - 1}\n')
    sidecar.mock.script("ok", prompt_tokens=5, completion_tokens=5, times=2)
    first = post(sidecar, body)
    assert first.headers["x-ratelimit-remaining-tokens"] == str(2 * cost - 1 - 10)
    assert post(sidecar, body).status_code == 200  # fits only because the first cost 10 tokens


def test_tokens_are_reconciled_up_to_real_usage(start_sidecar: StartSidecar, state: str) -> None:
    body = {**CHAT, "max_tokens": 50}
    cost = estimate(body)
    sidecar = start_sidecar(state + f'[[limits]]\ntokens = {2 * cost}\n')
    sidecar.mock.script("long", prompt_tokens=cost, completion_tokens=30)
    assert post(sidecar, body).status_code == 200
    second = post(sidecar, body)
    assert second.status_code == 429 and second.json()["error"]["type"] == "tokens"


def test_streams_are_reconciled_when_they_end(start_sidecar: StartSidecar) -> None:
    body = {**CHAT, "max_tokens": 50}
    cost = estimate(body)
    sidecar = start_sidecar(f'[[limits]]\ntokens = {2 * cost - 1}\n')
    sidecar.mock.script("ok", prompt_tokens=5, completion_tokens=5, times=2)
    chunks = list(sidecar.client().chat.completions.create(**body, stream=True))
    assert all(chunk.usage is None for chunk in chunks)  # the client did not ask for usage
    assert post(sidecar, body).status_code == 200


def test_upstream_failures_cost_no_tokens(start_sidecar: StartSidecar) -> None:
    body = {**CHAT, "max_tokens": 50}
    cost = estimate(body)
    sidecar = start_sidecar(f'[[limits]]\ntokens = {2 * cost - 1}\n'
                            '[[upstreams]]\nname = "mock"\nbase_url = "{mock}"\nretries = 0\n')
    sidecar.mock.fault("status_5xx", times=1, status=500)
    assert post(sidecar, body).status_code == 500
    assert post(sidecar, body).status_code == 200


def test_a_client_that_leaves_frees_its_concurrency_slot(start_sidecar: StartSidecar,
                                                         state: str) -> None:
    sidecar = start_sidecar(state + '[[limits]]\nconcurrent = 1\n')
    sidecar.mock.fault("latency", times=1, seconds=5.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{sidecar.base_url}/chat/completions", json=CHAT, headers=AUTH, timeout=0.5)
    assert until(lambda: post(sidecar).status_code == 200)


def test_a_stream_abandoned_midway_frees_its_slot(start_sidecar: StartSidecar, state: str) -> None:
    sidecar = start_sidecar(state + '[[limits]]\nconcurrent = 1\n')
    sidecar.mock.fault("chunk_delay", times=1, seconds=1.0)
    with httpx.stream("POST", f"{sidecar.base_url}/chat/completions",
                      json={**CHAT, "stream": True}, headers=AUTH, timeout=10) as response:
        assert response.status_code == 200
        frames = response.iter_bytes()  # keep it referenced: dropping it closes the connection
        next(frames)
        assert post(sidecar).status_code == 429  # the stream still holds the slot
    assert until(lambda: post(sidecar).status_code == 200)


def test_finished_requests_give_their_slot_back(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar('[[limits]]\nconcurrent = 1\n')
    for _ in range(3):
        assert len(list(sidecar.client().chat.completions.create(**CHAT, stream=True))) > 1
        assert post(sidecar).status_code == 200


async def test_wait_queues_for_window_capacity(start_sidecar: StartSidecar,
                                               clock: ManualClock) -> None:
    sidecar = start_sidecar('[[limits]]\nrequests = 1\nwindow = "1s"\nwait = "10s"\n', clock=clock)
    assert post(sidecar).status_code == 200
    queued = asyncio.create_task(asyncio.to_thread(post, sidecar))
    await asyncio.sleep(0.3)
    assert not queued.done() and sidecar.mock.count() == 1
    clock.advance(1.1)
    assert (await queued).status_code == 200


async def test_wait_queues_for_a_concurrency_slot(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar('[[limits]]\nname = "upstream-guard"\nper = "upstream"\n'
                            'concurrent = 1\nwait = "10s"\n')
    sidecar.mock.fault("latency", times=1, seconds=1.0)
    first = asyncio.create_task(asyncio.to_thread(post, sidecar))
    assert await asyncio.to_thread(until, lambda: sidecar.mock.count() == 1)
    second = await asyncio.to_thread(post, sidecar)
    assert second.status_code == 200 and (await first).status_code == 200


def test_without_wait_a_busy_slot_is_refused_at_once(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar('[[limits]]\nname = "solo"\nconcurrent = 1\n')
    sidecar.mock.fault("chunk_delay", times=1, seconds=0.5)
    with httpx.stream("POST", f"{sidecar.base_url}/chat/completions",
                      json={**CHAT, "stream": True}, headers=AUTH, timeout=10) as response:
        frames = response.iter_bytes()
        next(frames)
        refused = post(sidecar)
    assert refused.status_code == 429
    assert "Concurrency limit" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after-ms"]) > 0


@pytest.mark.redis
def test_limits_hold_on_redis(start_sidecar: StartSidecar, redis_url: str) -> None:  # noqa: F811
    body = {**CHAT, "max_tokens": 50}
    cost = estimate(body)
    sidecar = start_sidecar(f'[state]\nbackend = "redis"\nurl = "{redis_url}"\n'
                            f'[[limits]]\nrequests = 3\ntokens = {2 * cost - 1}\nconcurrent = 1\n')
    sidecar.mock.script("ok", prompt_tokens=5, completion_tokens=5, times=3)
    assert post(sidecar, body).headers["x-ratelimit-remaining-requests"] == "2"
    chunks = list(sidecar.client("sk-app").chat.completions.create(**body, stream=True))
    assert chunks  # the stream gave its slot back and was reconciled to 10 tokens
    assert post(sidecar, body).status_code == 200
    refused = post(sidecar, body)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "requests"


@pytest.mark.redis
def test_redis_down_fails_open_by_default(start_sidecar: StartSidecar,
                                          redis_server: RedisServer) -> None:  # noqa: F811
    sidecar = start_sidecar(f'[state]\nbackend = "redis"\nurl = "{redis_server.url}"\n'
                            '[[limits]]\nrequests = 1\n')
    assert post(sidecar).status_code == 200
    assert post(sidecar).status_code == 429
    redis_server.stop()
    assert post(sidecar).status_code == 200
    assert post(sidecar).status_code == 200


@pytest.mark.redis
def test_redis_down_fails_closed_when_asked(start_sidecar: StartSidecar,
                                            redis_server: RedisServer) -> None:  # noqa: F811
    sidecar = start_sidecar(f'[state]\nbackend = "redis"\nurl = "{redis_server.url}"\n'
                            '[[limits]]\nname = "strict"\nrequests = 5\nfail_open = false\n')
    assert post(sidecar).status_code == 200
    redis_server.stop()
    down = post(sidecar)
    assert down.status_code == 503
    assert down.json()["error"]["code"] == "state_backend_unavailable"
    assert sidecar.mock.count() == 1


def test_bad_rules_are_reported_by_key(tmp_path: Any) -> None:
    path = tmp_path / "limits.toml"
    path.write_text('[[limits]]\nper = "planet"\nrequests = 1\n[[limits]]\nwindow = "1m"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    problems = "\n".join(raised.value.problems)
    assert "limits[0].per" in problems and "planet" in problems
    assert "limits[1]" in problems and "requests, tokens or concurrent" in problems


async def limits_policy(rules: list[dict[str, Any]], clock: ManualClock) -> RateLimitPolicy:
    context = PolicyContext(settings=Settings(), state=StateBackend.open(StateConfig()),
                            tokens=TokenCounter(), clock=clock)
    policy = await create([Config.model_validate(rule) for rule in rules], context)
    assert policy is not None
    return policy


def exchange(body: dict[str, Any] = CHAT) -> Exchange:
    return Exchange(request_id="r1", endpoint=Endpoint.CHAT, method="POST",
                    path="/v1/chat/completions", query="", headers=CIMultiDictProxy(CIMultiDict()),
                    client_ip="127.0.0.1", raw_body=orjson.dumps(body), body=body,
                    model=body["model"], identity=Identity(key_id="k1"))


def answer(tokens: int, cache: str | None = None) -> Handler:
    async def call_next(ex: Exchange) -> Reply:
        if cache == "semantic-hit":
            ex.reply_headers["x-sidecar-cache"] = cache
        headers = {"x-sidecar-cache": cache} if cache == "hit" else {}
        return Reply.from_json(200, {"usage": {"total_tokens": tokens}}, headers)

    return call_next


async def test_cache_hits_count_requests_but_not_tokens(clock: ManualClock) -> None:
    cost = estimate({**CHAT, "max_tokens": 0}) + 1024  # no max_tokens: the default reservation
    policy = await limits_policy([{"requests": 3, "tokens": cost}], clock)
    try:
        await policy(exchange(), answer(cost, cache="hit"))
        await policy(exchange(), answer(cost, cache="semantic-hit"))
        await policy(exchange(), answer(cost))  # fits only because the hits cost no tokens
        with pytest.raises(RateLimited) as raised:
            await policy(exchange(), answer(cost))
        assert raised.value.type == "requests"
    finally:
        await policy.aclose()


async def test_a_stream_closed_before_its_first_frame_frees_its_slot(clock: ManualClock) -> None:
    policy = await limits_policy([{"concurrent": 1}], clock)

    async def frames() -> AsyncGenerator[bytes, None]:
        yield b"data: {}\n\n"

    async def streamed(ex: Exchange) -> Reply:
        return Reply(200, stream=frames(), sse=True)

    try:
        reply = await policy(exchange(), streamed)
        with pytest.raises(RateLimited):
            await policy(exchange(), streamed)
        assert reply.stream is not None
        await reply.stream.aclose()  # e.g. the client left before the response started
        await policy(exchange(), streamed)
    finally:
        await policy.aclose()


async def test_a_stream_dropped_unclosed_still_frees_its_slot(clock: ManualClock) -> None:
    policy = await limits_policy([{"concurrent": 1}], clock)

    async def frames() -> AsyncGenerator[bytes, None]:
        yield b"data: {}\n\n"

    async def streamed(ex: Exchange) -> Reply:
        return Reply(200, stream=frames(), sse=True)

    async def outer(inner: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        async with aclosing(inner) as items:  # an outer layer's wrapper, never started
            async for item in items:
                yield item

    try:
        reply = await policy(exchange(), streamed)
        assert reply.stream is not None
        wrapper = outer(reply.stream)
        await wrapper.aclose()  # closing a never-started generator does not close what it wraps
        del wrapper
        reply.stream = None
        await asyncio.sleep(0.01)
        await policy(exchange(), streamed)
    finally:
        await policy.aclose()


async def test_counters_follow_what_each_request_carries(clock: ManualClock) -> None:
    # Plans are remembered per caller: requests differing only in a tag or an address must still
    # land on their own counters.
    policy = await limits_policy([{"name": "per-project", "per": "tag:project", "requests": 1},
                                  {"name": "per-ip", "per": "ip", "requests": 2}], clock)

    def tagged(project: str, ip: str = "10.0.0.1") -> Exchange:
        ex = exchange()
        ex.identity, ex.client_ip = Identity(key_id="k1", tags={"project": project}), ip
        return ex

    try:
        await policy(tagged("a"), answer(10))
        with pytest.raises(RateLimited) as raised:
            await policy(tagged("a", "10.0.0.2"), answer(10))
        assert "per-project" in str(raised.value)
        await policy(tagged("b"), answer(10))
        with pytest.raises(RateLimited) as raised:
            await policy(tagged("c"), answer(10))
        assert "per-ip" in str(raised.value)
        await policy(tagged("c", "10.0.0.2"), answer(10))
    finally:
        await policy.aclose()
