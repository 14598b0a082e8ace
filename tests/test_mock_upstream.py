"""The mock upstream speaks OpenAI well enough for the real `openai` SDK, and its faults are real.

Every fault is checked the way a client sees it: the SDK's exception, or aiohttp's raw bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator

import aiohttp
import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests.mock_upstream import MockUpstream
from tests.mock_upstream.fast import serve_fast
from tests.mock_upstream.faults import FaultKind

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "what is up"}]
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    async with MockUpstream() as upstream:
        yield upstream


@pytest.fixture
async def client(mock: MockUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=mock.base_url, api_key="sk-test", max_retries=0, timeout=5) as sdk:
        yield sdk


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def raw_stream(http: aiohttp.ClientSession, url: str, body: dict[str, object]) -> bytes:
    async with http.post(url, json=body) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        return await resp.read()


def data_lines(raw: bytes) -> list[bytes]:
    return [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]


async def test_chat_json_answers_deterministically(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "be brief"},
        *USER,
    ]
    first = await client.chat.completions.create(model="gpt-4o", messages=messages)
    second = await client.chat.completions.create(model="gpt-4o", messages=messages)
    assert first.choices[0].message.content == "Echo: what is up"
    assert first.choices[0].finish_reason == "stop"
    assert first.model == "gpt-4o"
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (11, 4)
    assert first.usage.total_tokens == 15
    assert first.id != second.id  # tells an upstream answer from a cached one
    assert mock.count("/v1/chat/completions") == 2
    assert mock.received[0].headers["authorization"] == "Bearer sk-test"
    assert mock.received[0].json["messages"] == messages


async def test_chat_stream_with_include_usage(
    client: openai.AsyncOpenAI, mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: what is up"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 10
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {chunks[0].id}
    body = {"model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    raw = await raw_stream(http, f"{mock.base_url}/chat/completions", body)
    assert raw.endswith(b"data: [DONE]\n\n")
    events = [orjson.loads(d) for d in data_lines(raw)[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert [e["usage"] for e in events[:-1]] == [None] * (len(events) - 1)  # present and null


async def test_stream_without_include_usage_has_no_usage(
    mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    mock.chunks = 2
    raw = await raw_stream(
        http, f"{mock.base_url}/chat/completions", {"model": "m", "messages": USER, "stream": True}
    )
    events = [orjson.loads(d) for d in data_lines(raw)[:-1]]
    assert len(events) == 4  # role, two pieces, finish
    assert all("usage" not in e for e in events)


async def test_n_and_max_tokens(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        n=2,
        max_tokens=2,
    )
    assert [c.message.content for c in reply.choices] == ["Echo: what", "Echo 1:"]
    assert [c.finish_reason for c in reply.choices] == ["length", "length"]


async def test_scripted_pieces_are_streamed_exactly_once(
    mock: MockUpstream, client: openai.AsyncOpenAI
) -> None:
    mock.script(pieces=["Hel", "lo", " world"], prompt_tokens=7, completion_tokens=3)
    stream = await client.chat.completions.create(
        model="m",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    pieces = [c.choices[0].delta.content for c in chunks if c.choices]
    assert pieces == ["", "Hel", "lo", " world", None]
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 3)
    after = await client.chat.completions.create(model="m", messages=USER)
    assert after.choices[0].message.content == "Echo: what is up"


async def test_scripted_tool_call_needs_tools_in_the_request(
    mock: MockUpstream, client: openai.AsyncOpenAI
) -> None:
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    mock.script(tool_calls=[call], times=3)
    reply = await client.chat.completions.create(model="m", messages=USER, tools=TOOLS)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.content is None and message.tool_calls is not None
    assert message.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    stream = await client.chat.completions.create(
        model="m",
        messages=USER,
        tools=TOOLS,
        stream=True,
    )
    fragments = [
        tc.function.arguments or ""
        async for c in stream
        for tc in (c.choices[0].delta.tool_calls or [])
        if tc.function is not None
    ]
    assert json.loads("".join(fragments)) == {"city": "Paris"}
    plain = await client.chat.completions.create(model="m", messages=USER)
    assert plain.choices[0].message.tool_calls is None


async def test_legacy_completions(client: openai.AsyncOpenAI) -> None:
    reply = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi")
    assert reply.object == "text_completion"
    assert reply.choices[0].text == "Echo: say hi"
    stream = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi", stream=True)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks) == "Echo: say hi"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_embeddings_float_base64_and_dimensions(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    texts = ["the cat sat on the mat", "the cat sat on a mat", "quarterly tax filing deadline"]
    default = await client.embeddings.create(model="text-embedding-3-small", input=texts)
    assert mock.received[-1].json["encoding_format"] == "base64"  # the SDK's default
    floats = await client.embeddings.create(
        model="text-embedding-3-small", input=texts, encoding_format="float"
    )
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    vectors = [d.embedding for d in floats.data]
    assert len(vectors[0]) == 1536
    assert math.isclose(sum(x * x for x in vectors[0]), 1.0, rel_tol=1e-5)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(vectors[0], vectors[1]) > 0.7 > 0.2 > cosine(vectors[0], vectors[2])
    assert default.usage.prompt_tokens == 6 + 6 + 4
    small = await client.embeddings.create(model="text-embedding-3-large", input=[[1, 2, 3]], dimensions=8)
    assert len(small.data[0].embedding) == 8 and small.usage.prompt_tokens == 3


async def test_responses_json_and_stream(client: openai.AsyncOpenAI) -> None:
    reply = await client.responses.create(model="gpt-4o", input="hello there")
    assert reply.output_text == "Echo: hello there"
    assert reply.usage is not None and reply.usage.output_tokens == 3
    kinds = []
    async with client.responses.stream(model="gpt-4o", input="hello there") as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_response()
    assert final.output_text == "Echo: hello there"
    assert final.usage is not None and final.usage.total_tokens == final.usage.input_tokens + 3
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "response.output_text.delta" in kinds
    cut = await client.responses.create(model="gpt-4o", input="hello there", max_output_tokens=1)
    assert cut.status == "incomplete" and cut.output_text == "Echo:"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"


async def test_models_files_and_other_paths(
    mock: MockUpstream, client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    models = [m.id async for m in client.models.list()]
    assert "gpt-4o-mini" in models
    uploaded = await client.files.create(file=("data.jsonl", b"x" * 100_000), purpose="batch")
    assert uploaded.bytes == 100_000 and uploaded.filename == "data.jsonl"
    assert uploaded.purpose == "batch"
    async with http.delete(f"{mock.base_url}/batches/b1?limit=2", data=b"abc") as resp:
        echo = await resp.json()
    assert echo == {"method": "DELETE", "path": "/v1/batches/b1", "query": {"limit": "2"}, "body_length": 3}


async def test_bad_request_is_an_openai_error(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="", messages=USER)
    assert caught.value.param == "model"


async def test_status_5xx_once_then_recovers(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    mock.fault("status_5xx", times=1, status=503)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == 503
    assert caught.value.type == "server_error"
    reply = await client.chat.completions.create(model="m", messages=USER)
    assert reply.choices[0].message.content == "Echo: what is up"
    assert [r.fault for r in mock.received] == ["status_5xx", None]


async def test_rate_limit_says_when_to_retry(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    mock.fault("rate_limit", times=1, retry_after=2.5)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="m", messages=USER)
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.response.headers["retry-after-ms"] == "2500"
    mock.fault("rate_limit", times=1, retry_after=0.01)
    reply = await client.with_options(max_retries=1).chat.completions.create(
        model="m",
        messages=USER,
    )
    assert reply.choices[0].message.content == "Echo: what is up"
    assert mock.fault_counts() == {"rate_limit": 2}
    assert mock.count() == 3  # the SDK retried exactly once


@pytest.mark.parametrize("kind", ["hang", "latency"])
async def test_hang_and_latency_hit_the_client_timeout(
    mock: MockUpstream, client: openai.AsyncOpenAI, kind: FaultKind
) -> None:
    mock.fault(kind, times=1, seconds=30)
    with pytest.raises(openai.APITimeoutError):
        await client.with_options(timeout=0.2).chat.completions.create(model="m", messages=USER)
    assert mock.count() == 1


async def test_reset_closes_before_any_byte(
    mock: MockUpstream, client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    mock.fault("reset", times=2)
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="m", messages=USER)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.post(f"{mock.base_url}/embeddings", json={"model": "e", "input": "x"}):
            pass
    assert [r.fault for r in mock.received] == ["reset", "reset"]


async def test_drop_mid_stream_cuts_after_k_events(
    mock: MockUpstream, client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    mock.fault("drop_mid_stream", times=2, after=3)
    seen = []
    stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            seen.append(chunk)
    assert len(seen) == 3
    body = {"model": "m", "messages": USER, "stream": True}
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(f"{mock.base_url}/chat/completions", json=body) as resp:
            async for data in resp.content.iter_any():
                received += data
    assert len(data_lines(received)) == 3 and b"[DONE]" not in received


async def test_malformed_sse_breaks_the_sdk_but_the_stream_ends(
    mock: MockUpstream, client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    mock.fault("malformed_sse", times=2, after=1)
    stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
    with pytest.raises(ValueError):  # json.JSONDecodeError from the SDK's SSE decoder
        async for _ in stream:
            pass
    raw = await raw_stream(
        http, f"{mock.base_url}/chat/completions", {"model": "m", "messages": USER, "stream": True}
    )
    lines = data_lines(raw)
    assert raw.endswith(b"data: [DONE]\n\n")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(lines[1])


async def test_chunk_delay_stalls_between_events(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    mock.fault("chunk_delay", times=1, seconds=30)
    seen = []
    stream = await client.with_options(timeout=0.3).chat.completions.create(
        model="m",
        messages=USER,
        stream=True,
    )
    with pytest.raises((httpx.ReadTimeout, openai.APITimeoutError)):
        async for chunk in stream:
            seen.append(chunk)
    assert len(seen) == 1  # headers and the first event came at once; the second never did


async def run_chaos(seed: int, requests: int) -> tuple[list[str], MockUpstream]:
    outcomes = []
    async with MockUpstream(seed=seed) as mock, aiohttp.ClientSession() as http:
        mock.chaos(0.3, ["status_5xx", "rate_limit", "reset", "malformed_sse"])
        body = {"model": "m", "messages": USER}
        for _ in range(requests):
            try:
                async with http.post(f"{mock.base_url}/chat/completions", json=body) as resp:
                    text = await resp.text()
                    ok = resp.status != 200 or text.endswith("}")
                    outcomes.append(str(resp.status) if ok else "truncated")
            except aiohttp.ClientError:
                outcomes.append("error")
    return outcomes, mock


async def test_chaos_rate_is_seeded_and_reproducible() -> None:
    first, mock = await run_chaos(7, 200)
    again, _ = await run_chaos(7, 200)
    other, _ = await run_chaos(8, 200)
    assert first == again != other
    failed = [o for o in first if o != "200"]
    assert 30 <= len(failed) <= 90
    assert len(mock.faulted) == len(failed)
    assert set(mock.fault_counts()) == {"status_5xx", "rate_limit", "reset", "malformed_sse"}
    assert {o for o in failed} <= {"500", "502", "503", "429", "error", "truncated"}


async def test_reset_forgets_everything(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    mock.script("scripted")
    mock.fault("status_5xx")
    mock.reset()
    reply = await client.chat.completions.create(model="m", messages=USER)
    assert reply.choices[0].message.content == "Echo: what is up"
    assert mock.count() == 1 and mock.faulted == []


async def test_fast_mode_speaks_the_same_protocol() -> None:
    server = await serve_fast("127.0.0.1", 0, chunks=50, chunk_delay=0.0)
    port = server.sockets[0].getsockname()[1]
    async with (
        server,
        openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0, timeout=5
        ) as sdk,
    ):
        reply = await sdk.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert (reply.choices[0].message.content or "").startswith("Echo: token0")
        stream = await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]  # same keep-alive connection as the first request
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(pieces) == 50 and "".join(pieces) == reply.choices[0].message.content
        assert chunks[-1].usage is not None
        vectors = await sdk.embeddings.create(model="text-embedding-3-small", input="x")
        assert len(vectors.data[0].embedding) == 1536


async def test_restart_listens_on_the_same_port(mock: MockUpstream, http: aiohttp.ClientSession) -> None:
    port = mock.port
    await mock.aclose()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"{mock.base_url}/models"):
            pass
    await mock.start()
    assert mock.port == port
    async with http.get(f"{mock.base_url}/models") as resp:
        assert resp.status == 200
