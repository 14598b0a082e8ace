"""Identity from virtual keys, sidecar headers and the body; unknown keys get 401."""

from __future__ import annotations

import hashlib

import httpx
import openai
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import AuthError
from proxy.exchange import Endpoint, Exchange
from proxy.policies.auth import AuthPolicy, parse_tags
from proxy.settings import KeyConfig

UPSTREAM = '[[upstreams]]\nname = "mock"\nbase_url = "{mock}"\napi_key = "sk-upstream"\n'
KEYS = UPSTREAM + f'''
[[keys]]
key_sha256 = "{hashlib.sha256(b"vk-alice").hexdigest()}"
user = "alice"
team = "search"
tags = {{ env = "prod" }}

[[keys]]
key = "vk-bob"
'''


def exchange(headers: dict[str, str], body: dict | None = None) -> Exchange:
    return Exchange(request_id="r", endpoint=Endpoint.CHAT, method="POST",
                    path="/v1/chat/completions", query="",
                    headers=CIMultiDictProxy(CIMultiDict(headers)), client_ip="127.0.0.1",
                    raw_body=b"", body=body)


def policy() -> AuthPolicy:
    return AuthPolicy([
        KeyConfig(key_sha256=hashlib.sha256(b"vk-alice").hexdigest(), user="alice",
                  team="search", tags={"env": "prod"}),
        KeyConfig(key="vk-bob"),  # type: ignore[arg-type]
    ])


def test_virtual_key_identity_is_authoritative_over_headers() -> None:
    who = policy().identify(exchange({"Authorization": "Bearer vk-alice", "x-sidecar-team": "ads",
                                      "x-sidecar-tags": "env=dev,feature=chat"}))
    assert (who.user, who.team) == ("alice", "search")
    assert who.tags == {"env": "prod", "feature": "chat"}
    assert "vk-alice" not in repr(who)


def test_headers_and_body_fill_what_the_key_leaves_unset() -> None:
    who = policy().identify(exchange({"Authorization": "Bearer vk-bob", "x-sidecar-team": "ads"},
                                     {"user": "carol", "metadata": {"app": "web"}}))
    assert (who.user, who.team, dict(who.tags)) == ("carol", "ads", {"app": "web"})


def test_unknown_or_missing_keys_are_refused() -> None:
    with pytest.raises(AuthError):
        policy().identify(exchange({"Authorization": "Bearer vk-mallory"}))
    with pytest.raises(AuthError):
        policy().identify(exchange({}))


def test_without_keys_the_client_key_is_the_identity() -> None:
    open_policy = AuthPolicy([])
    one = open_policy.identify(exchange({"Authorization": "Bearer sk-a"}))
    two = open_policy.identify(exchange({"Authorization": "Bearer sk-b"}))
    assert one.key_id != two.key_id and "sk-a" not in one.key_id
    assert open_policy.identify(exchange({})).key_id == "anonymous"
    # identities are remembered per header: spelled differently, the same key is the same caller
    assert open_policy.identify(exchange({"Authorization": "bearer  sk-a"})).key_id == one.key_id
    assert open_policy.identify(exchange({"Authorization": "Bearer sk-b"})).key_id == two.key_id


@pytest.mark.parametrize(("text", "tags"), [
    ("a=b,c=d", {"a": "b", "c": "d"}), (" a = b , flag", {"a": "b", "flag": "true"}),
    ("", {}), (",,=x", {}),
])
def test_tag_header_parsing(text: str, tags: dict[str, str]) -> None:
    assert parse_tags(text) == tags


def test_end_to_end_virtual_keys(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar(KEYS)
    answer = sidecar.client(api_key="vk-alice").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Echo: hi"
    assert sidecar.mock.received[-1].headers["Authorization"] == "Bearer sk-upstream"
    with pytest.raises(openai.AuthenticationError):
        sidecar.client(api_key="vk-unknown").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    refused = httpx.post(sidecar.url + "/v1/chat/completions",
                         json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert sidecar.mock.count("/v1/chat/completions") == 1
