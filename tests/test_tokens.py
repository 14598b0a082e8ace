"""Input-token estimates: the tiktoken count, and the body-length bound budgets hold first."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.exchange import Endpoint, Exchange
from proxy.tokens import TokenCounter, byte_bound

COUNTER = TokenCounter()
TEXT = st.text(st.characters(codec="utf-8"), max_size=120)  # emoji, CJK, controls, quotes
PART = st.one_of(TEXT, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
                                max_size=3))
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                 "content": PART})


def exchange(raw: bytes, body: dict[str, Any]) -> Exchange:
    return Exchange(request_id="r", endpoint=Endpoint.CHAT, method="POST",
                    path="/v1/chat/completions", query="", headers=CIMultiDictProxy(CIMultiDict()),
                    client_ip="127.0.0.1", raw_body=raw, body=body, model=body.get("model"))


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(MESSAGE, min_size=1, max_size=6),
       model=st.sampled_from(["gpt-4o-mini", "gpt-4", "gpt-3.5-turbo"]),
       ascii_only=st.booleans())
def test_no_token_count_exceeds_the_body_length(messages: list[dict[str, Any]], model: str,
                                                 ascii_only: bool) -> None:
    body = {"model": model, "messages": messages}
    # compact UTF-8 (orjson) is the shortest spelling a client can send; \\u escapes are longer
    raw = json.dumps(body, ensure_ascii=True).encode() if ascii_only else orjson.dumps(body)
    bound = byte_bound(exchange(raw, body))
    assert bound is not None and bound >= COUNTER.count_request(body, model)


def test_tool_calls_in_a_history_are_counted() -> None:
    arguments = json.dumps({"city": "Paris", "units": "metric", "days": list(range(40))})
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": arguments}}
    bare = {"model": "gpt-4o-mini", "messages": [{"role": "assistant", "content": None}]}
    calling = {"model": "gpt-4o-mini",
               "messages": [{"role": "assistant", "content": None, "tool_calls": [call]}]}
    added = COUNTER.count_request(calling) - COUNTER.count_request(bare)
    assert added >= COUNTER.count_text(arguments)


def test_a_changed_body_has_no_length_bound() -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a@b.io"}]}
    ex = exchange(orjson.dumps(body), body)
    ex.replace_body({"model": "gpt-4o-mini",
                     "messages": [{"role": "user", "content": "<EMAIL_ADDRESS_1>"}]})
    assert byte_bound(ex) is None
    assert byte_bound(exchange(b"", {})) is None
