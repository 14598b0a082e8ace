"""Cache keys: what makes two requests the same answer, and what keeps them apart."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cache.keys import canonical_bytes, digest, entry_key, purge_pattern, scope_id
from proxy.exchange import Identity
from proxy.state.kv import glob_regex

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
BODIES = st.dictionaries(st.text(min_size=1, max_size=12), JSON_VALUES, max_size=8)


def key_of(raw: bytes | str) -> str:
    return digest(canonical_bytes(orjson.loads(raw)))


def reorder(value: Any, flip: bool) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        return {k: reorder(v, flip) for k, v in (reversed(items) if flip else items)}
    if isinstance(value, list):
        return [reorder(v, flip) for v in value]
    return value


@settings(max_examples=150, deadline=None)
@given(BODIES, st.booleans(), st.sampled_from([None, 0, 1, 2, 4]))
def test_key_order_and_whitespace_do_not_matter(body: dict[str, Any], flip: bool,
                                                indent: int | None) -> None:
    compact = orjson.dumps(body)
    spaced = json.dumps(reorder(body, flip), indent=indent, separators=None if indent else (" , ", " : "))
    assert key_of(compact) == key_of(spaced)


@settings(max_examples=100, deadline=None)
@given(BODIES, st.text(min_size=1, max_size=12), JSON_VALUES)
def test_changing_a_field_that_matters_changes_the_key(body: dict[str, Any], name: str,
                                                        value: Any) -> None:
    if name in {"stream", "stream_options", "user", "metadata"} or value is None:
        return
    changed = {**body, name: value}
    if canonical_bytes(changed) == canonical_bytes(body):
        return  # the same value (e.g. 1.0 for 1): the same request
    assert key_of(orjson.dumps(changed)) != key_of(orjson.dumps(body))


def test_transport_and_bookkeeping_fields_are_not_in_the_key() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    noisy = {**base, "stream": True, "stream_options": {"include_usage": True}, "user": "u1",
             "metadata": {"trace": "x"}}
    assert key_of(orjson.dumps(base)) == key_of(orjson.dumps(noisy))


def test_integral_floats_and_nulls_are_canonical_but_defaults_are_not_filled_in() -> None:
    base = {"model": "m", "messages": [], "temperature": 1}
    assert key_of(b'{"model":"m","messages":[],"temperature":1.0}') == key_of(orjson.dumps(base))
    assert key_of(b'{"model":"m","messages":[],"temperature":1,"seed":null}') == key_of(
        orjson.dumps(base))
    assert key_of(b'{"model":"m","messages":[]}') != key_of(orjson.dumps(base))
    assert key_of(b'{"model":"m","messages":[],"temperature":0.5}') != key_of(orjson.dumps(base))


def test_every_output_changing_field_changes_the_key() -> None:
    base: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    variants = [
        {"model": "m2"},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"tool_choice": "required"}, {"response_format": {"type": "json_object"}},
        {"temperature": 0.2}, {"top_p": 0.5}, {"max_tokens": 5}, {"max_completion_tokens": 5},
        {"seed": 7}, {"n": 2}, {"stop": ["x"]}, {"logit_bias": {"1": 2}}, {"logprobs": True},
        {"reasoning_effort": "low"}, {"reasoning": {"effort": "high"}}, {"some_new_param": 1},
    ]
    keys = {key_of(orjson.dumps({**base, **v})) for v in variants}
    assert len(keys) == len(variants) and key_of(orjson.dumps(base)) not in keys


def test_scopes_share_only_within_their_group() -> None:
    alice = Identity(key_id="k1", user="alice", team="search")
    bob = Identity(key_id="k2", user="bob", team="search")
    anon = Identity(key_id="k3")
    assert scope_id(alice, "global") == scope_id(bob, "global")
    assert scope_id(alice, "team") == scope_id(bob, "team")
    assert scope_id(alice, "user") != scope_id(bob, "user")
    assert scope_id(alice, "key") != scope_id(bob, "key")
    assert scope_id(anon, "team") == scope_id(anon, "key")  # no team: falls back to its key
    assert "alice" not in scope_id(alice, "user") and "search" not in scope_id(alice, "team")


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=20), st.text(max_size=20), st.text(max_size=20))
def test_purge_patterns_select_exactly_their_namespace_and_model(namespace: str, model: str,
                                                                 other: str) -> None:
    key = entry_key("c", 3, namespace, model, "k.abc", "d" * 32)
    assert glob_regex(purge_pattern(None, namespace, model)).fullmatch(key)
    assert glob_regex(purge_pattern(3, namespace=namespace)).fullmatch(key)
    assert glob_regex(purge_pattern(key="d" * 32)).fullmatch(key)
    if other != namespace:
        assert not glob_regex(purge_pattern(None, namespace=other)).fullmatch(key)
    if other != model:
        assert not glob_regex(purge_pattern(None, model=other)).fullmatch(key)


@settings(max_examples=150, deadline=None)
@given(BODIES)
def test_integral_floats_key_like_ints_at_any_depth(body: dict[str, Any]) -> None:
    def as_floats(value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and abs(value) < 2**53:
            return float(value)
        if isinstance(value, dict):
            return {k: as_floats(v) for k, v in value.items()}
        if isinstance(value, list):
            return [as_floats(v) for v in value]
        return value

    assert key_of(orjson.dumps(as_floats(body))) == key_of(orjson.dumps(body))
    assert key_of(b'{"a": [1.0, {"b": 1e16}], "c": "1.0, 1e5"}') == key_of(
        b'{"c": "1.0, 1e5", "a": [1, {"b": 10000000000000000.0}]}')
