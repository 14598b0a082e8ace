"""Real clients (the openai SDK, langchain-openai) work unchanged through the sidecar."""

from __future__ import annotations

import base64

import openai
import pytest
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from tests.harness import Sidecar

MESSAGES = [{"role": "user", "content": "hello there"}]


def test_chat_json_and_stream_with_sync_sdk(sidecar: Sidecar) -> None:
    client = sidecar.client()
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert answer.choices[0].message.content == "Echo: hello there"
    assert answer.usage is not None and answer.usage.total_tokens > 0

    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: hello there"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks), "no usage chunk unless the client asked"


def test_stream_usage_when_the_client_asks(sidecar: Sidecar) -> None:
    chunks = list(sidecar.client().chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


async def test_async_sdk_chat_completions_embeddings_models(sidecar: Sidecar) -> None:
    client = sidecar.async_client()
    answer = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert answer.choices[0].message.content == "Echo: hello there"
    stream = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Echo: hello there"

    legacy = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi")
    assert legacy.choices[0].text

    vectors = await client.embeddings.create(model="text-embedding-3-small",
                                             input=["one", "two"])
    assert [d.index for d in vectors.data] == [0, 1]
    assert len(vectors.data[0].embedding) > 0

    models = await client.models.list()
    assert any(m.id == "gpt-4o-mini" for m in models.data)
    await client.close()


def test_embeddings_base64_pass_through_untouched(sidecar: Sidecar) -> None:
    raw = sidecar.client().embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="hello", encoding_format="base64")
    payload = raw.http_response.json()
    assert base64.b64decode(payload["data"][0]["embedding"])


def test_responses_api_json_and_stream(sidecar: Sidecar) -> None:
    client = sidecar.client()
    answer = client.responses.create(model="gpt-4o-mini", input="hello there")
    assert answer.output_text == "Echo: hello there"
    events = list(client.responses.create(model="gpt-4o-mini", input="hello there", stream=True))
    assert events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Echo: hello there"


def test_langchain_chat_invoke_stream_batch_and_embeddings(sidecar: Sidecar) -> None:
    llm = ChatOpenAI(model="gpt-4o-mini", base_url=sidecar.base_url, api_key="sk-test",
                     max_retries=0)
    assert llm.invoke("hello there").content == "Echo: hello there"
    streamed = "".join(str(chunk.content) for chunk in llm.stream("hello there"))
    assert streamed == "Echo: hello there"
    batch = llm.batch(["one", "two", "three"])
    assert [m.content for m in batch] == ["Echo: one", "Echo: two", "Echo: three"]

    embeddings = OpenAIEmbeddings(model="text-embedding-3-small", base_url=sidecar.base_url,
                                  api_key="sk-test", check_embedding_ctx_length=False)
    vectors = embeddings.embed_documents(["alpha", "beta"])
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 0


def test_file_upload_passes_through_streamed(sidecar: Sidecar) -> None:
    content = b"x" * (3 << 20)
    uploaded = sidecar.client().files.create(file=("data.jsonl", content), purpose="batch")
    assert uploaded.bytes == len(content)


def test_upstream_errors_reach_the_sdk_as_the_right_exception(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar('[[upstreams]]\nname = "mock"\nbase_url = "{mock}"\nretries = 0\n')
    sidecar.mock.fault("rate_limit", times=1, retry_after=7)
    with pytest.raises(openai.RateLimitError) as limited:
        sidecar.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert limited.value.response.headers["retry-after"] == "7"
    sidecar.mock.fault("status_5xx", times=1, status=503)
    with pytest.raises(openai.InternalServerError):
        sidecar.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
