from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import RequestError
from proxy.exchange import Endpoint
from proxy.wire.request import endpoint_of, parse_body


@pytest.mark.parametrize(("method", "path", "endpoint"), [
    ("POST", "/v1/chat/completions", Endpoint.CHAT),
    ("GET", "/v1/chat/completions", Endpoint.PASSTHROUGH),  # stored completions listing
    ("POST", "/v1/responses", Endpoint.RESPONSES),
    ("GET", "/v1/responses/resp_1", Endpoint.PASSTHROUGH),
    ("GET", "/v1/models", Endpoint.MODELS),
    ("POST", "/v1/files", Endpoint.PASSTHROUGH),
])
def test_endpoints(method: str, path: str, endpoint: Endpoint) -> None:
    assert endpoint_of(method, path) is endpoint


def test_embeddings_and_completions_require_their_inputs() -> None:
    with pytest.raises(RequestError) as raised:
        parse_body(Endpoint.EMBEDDINGS, b'{"model": "text-embedding-3-small"}')
    assert raised.value.param == "input"
    with pytest.raises(RequestError) as raised:
        parse_body(Endpoint.COMPLETIONS, b'{"model": "m"}')
    assert raised.value.param == "prompt"


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_parser(raw: bytes) -> None:
    try:
        body = parse_body(Endpoint.CHAT, raw)
    except RequestError as exc:
        assert exc.status == 400 and exc.message
    else:
        assert isinstance(body, dict)


@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False)
                    | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=10))
def test_wrong_types_for_known_fields_name_the_field(value: object) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": value}
    try:
        parse_body(Endpoint.CHAT, orjson.dumps(body))
    except RequestError as exc:
        assert exc.param == "max_tokens"
        assert not (isinstance(value, int) and not isinstance(value, bool)) and value is not None
    else:
        assert value is None or (isinstance(value, int) and not isinstance(value, bool))
