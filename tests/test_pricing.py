"""Prices and costs: the packaged table, snapshot resolution, overrides, and cost from usage."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.pricing import ModelPrice, Pricing, read_usage

M = 1_000_000


@pytest.fixture(scope="module")
def pricing() -> Pricing:
    return Pricing.load()


def chat_usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, object]:
    return {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def test_gpt_4o_list_price(pricing: Pricing) -> None:
    # 1M input + 1M output of gpt-4o: $2.50 + $10.00
    assert pricing.cost("gpt-4o", chat_usage(M, M)) == pytest.approx(12.50)


def test_dated_snapshots_resolve_to_their_family(pricing: Pricing) -> None:
    family = pricing.cost("gpt-4o", chat_usage(1000, 500))
    assert pricing.cost("gpt-4o-2024-08-06", chat_usage(1000, 500)) == family
    assert pricing.cost("gpt-4-0613", chat_usage(M, 0)) == pytest.approx(30.0)
    assert pricing.cost("openai/gpt-4o-mini", chat_usage(M, 0)) == pytest.approx(0.15)
    assert pricing.cost("GPT-4o-Mini-2024-07-18", chat_usage(M, 0)) == pytest.approx(0.15)


def test_a_snapshot_with_its_own_price_is_not_its_family(pricing: Pricing) -> None:
    assert pricing.cost("gpt-4o-2024-05-13", chat_usage(M, 0)) == pytest.approx(5.0)


def test_a_prefix_is_not_a_family(pricing: Pricing) -> None:
    assert pricing.lookup("gpt-4o-mini-search-preview") is None
    assert pricing.lookup("gpt-4o-mini") is not None


def test_cached_input_is_charged_at_the_cached_price(pricing: Pricing) -> None:
    # 1M prompt of which 400k cached on gpt-4o: 600k * 2.50 + 400k * 1.25 per 1M
    cost = pricing.cost("gpt-4o", chat_usage(M, 0, cached=400_000))
    assert cost == pytest.approx(0.6 * 2.50 + 0.4 * 1.25)


def test_reasoning_tokens_are_not_charged_twice(pricing: Pricing) -> None:
    plain = pricing.cost("o3", chat_usage(100, 1000))
    assert pricing.cost("o3", chat_usage(100, 1000, reasoning=800)) == plain


def test_responses_api_usage(pricing: Pricing) -> None:
    usage = {"input_tokens": M, "input_tokens_details": {"cached_tokens": M // 2},
             "output_tokens": M, "output_tokens_details": {"reasoning_tokens": 10}}
    assert pricing.cost("gpt-4.1", usage) == pytest.approx(0.5 * 2.0 + 0.5 * 0.5 + 8.0)


def test_embeddings_usage(pricing: Pricing) -> None:
    usage = {"prompt_tokens": M, "total_tokens": M}
    assert pricing.cost("text-embedding-3-small", usage) == pytest.approx(0.02)


def test_config_overrides_and_adds_models() -> None:
    pricing = Pricing.load({"gpt-4o": ModelPrice(input=1.0, output=2.0),
                            "my-llama": ModelPrice(input=0.1, output=0.3)})
    assert pricing.cost("gpt-4o-2024-11-20", chat_usage(M, M)) == pytest.approx(3.0)
    assert pricing.cost("my-llama", chat_usage(M, M)) == pytest.approx(0.4)
    # no cached price given: cached input costs the input price
    assert pricing.cost("my-llama", chat_usage(M, 0, cached=M)) == pytest.approx(0.1)


def test_unknown_model_is_charged_the_default_and_warned_once(
        pricing: Pricing, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "proxy.pricing")
    assert pricing.lookup("some-new-model") is None
    first = pricing.cost("some-new-model", chat_usage(M, M))
    again = pricing.cost("some-new-model", chat_usage(M, M))
    assert first is not None and first > 0 and first == again
    warnings = [r for r in caplog.records if "some-new-model" in r.getMessage()]
    assert len(warnings) == 1


def test_no_price_at_all_gives_no_cost() -> None:
    assert Pricing({}, None).cost("anything", chat_usage(10, 10)) is None


def test_missing_or_foreign_usage_gives_no_cost(pricing: Pricing) -> None:
    assert pricing.cost("gpt-4o", None) is None
    assert pricing.cost("gpt-4o", {"tokens": 12}) is None


counts = st.one_of(st.integers(-5, 10**7), st.none(), st.text(max_size=3), st.booleans())


@given(prompt=counts, completion=counts, cached=counts, reasoning=counts)
def test_usage_reader_never_trusts_odd_numbers(prompt: object, completion: object, cached: object,
                                                reasoning: object) -> None:
    tokens = read_usage({"prompt_tokens": prompt, "completion_tokens": completion,
                         "prompt_tokens_details": {"cached_tokens": cached},
                         "completion_tokens_details": {"reasoning_tokens": reasoning}})
    assert tokens is not None
    assert 0 <= tokens.cached_input <= tokens.input
    assert 0 <= tokens.reasoning <= tokens.output
