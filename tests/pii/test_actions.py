"""What each action does to a value, and the pseudonym numbering clients rely on for caching."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from proxy.pii import PiiConfig, PiiEngine
from tests.pii.conftest import MakeEngine

TEXT = "Mail jane.roe@example.org or call +1-212-555-0123, card 4111 1111 1111 1111."


def test_redact(make_engine: MakeEngine) -> None:
    out = make_engine().session().request_text(TEXT)
    assert out == "Mail [EMAIL] or call [PHONE], card [CREDIT_CARD]."


def test_mask_keeps_a_hint(make_engine: MakeEngine) -> None:
    out = make_engine(action="mask").session().request_text(TEXT)
    assert out == "Mail j***@example.org or call +*-***-***-**23, card **** **** **** 1111."


def test_hash_is_stable_per_value_and_keyed(make_engine: MakeEngine) -> None:
    one = make_engine(action="hash", hash_key="k" * 32)
    other = make_engine(action="hash", hash_key="z" * 32)
    first = one.session().request_text("a@example.com b@example.com a@example.com")
    tokens = first.split()
    assert tokens[0] == tokens[2] != tokens[1]
    assert tokens[0].startswith("[EMAIL:")
    assert one.session().request_text("a@example.com") == tokens[0]
    assert other.session().request_text("a@example.com") != tokens[0]


def test_hash_needs_a_key() -> None:
    with pytest.raises(ValidationError, match="hash_key"):
        PiiConfig(action="hash")


def test_per_entity_action_overrides_default(make_engine: MakeEngine) -> None:
    engine = make_engine(action="redact", actions={"email": "mask", "credit_card": "block"})
    session = engine.session()
    out = session.request_text(TEXT)
    assert "j***@example.org" in out and "[PHONE]" in out
    assert session.blocked == {"credit_card"}
    assert "4111" not in out


def test_counts_are_per_entity_type(engine: PiiEngine) -> None:
    session = engine.session()
    session.request_text("a@x.io b@x.io and 10.0.0.1")
    assert session.counts == {"email": 2, "ip_address": 1}


def test_pseudonyms_same_value_same_placeholder(engine: PiiEngine) -> None:
    session = engine.session()
    out = session.request_text("a@x.io, b@x.io, a@x.io")
    assert out == "<EMAIL_1>, <EMAIL_2>, <EMAIL_1>"


def test_requests_differing_only_in_pii_redact_identically(engine: PiiEngine) -> None:
    alice = engine.session().request_text("I am alice@a.io, IP 10.1.1.1, cc alice@a.io")
    bob = engine.session().request_text("I am bob@b.org, IP 172.16.0.9, cc bob@b.org")
    assert alice == bob == "I am <EMAIL_1>, IP <IP_ADDRESS_1>, cc <EMAIL_1>"


def test_output_pseudonymize_and_block_fall_back_to_redact(make_engine: MakeEngine) -> None:
    engine = make_engine(action="pseudonymize", actions={"phone": "block"})
    session = engine.session()
    assert session.output_text("x@y.io +1-212-555-0123") == "[EMAIL] [PHONE]"
    assert session.output_counts == {"email": 1, "phone": 1}
    assert not session.blocked


def test_config_rejects_unknown_names() -> None:
    with pytest.raises(ValidationError):
        PiiConfig(entities=["passport"])
    with pytest.raises(ValidationError):
        PiiConfig(actions={"passport": "redact"})
    with pytest.raises(ValidationError):
        PiiConfig.model_validate({"custom": [{"name": "x", "pattern": "(", "validator": None}]})
    with pytest.raises(ValidationError):
        PiiConfig.model_validate({"custom": [{"name": "x", "pattern": "a", "validator": "nope"}]})
