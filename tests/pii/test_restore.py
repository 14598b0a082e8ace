"""Restoring pseudonyms in whole texts and in streams split anywhere, and the output scanner's
hold-back: what a client reads is the same however the upstream chunks its stream."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.pii import PiiConfig, Redaction, compile_engine
from proxy.pii.restore import OutputScanner, StreamRestorer, restore

ENGINE = compile_engine(PiiConfig(action="pseudonymize"))
VALUES = ["alice@example.com", "+1-212-555-0123", "10.0.0.7", 'pa"ss\\word\nx']


def _session() -> tuple[Redaction, list[str]]:
    session = ENGINE.session()
    tokens = [session.pseudonyms.placeholder("email", VALUES[0]),
              session.pseudonyms.placeholder("phone", VALUES[1]),
              session.pseudonyms.placeholder("ip_address", VALUES[2]),
              session.pseudonyms.placeholder("secret", VALUES[3])]
    return session, tokens


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


pieces = st.lists(st.sampled_from(["<EMAIL_1>", "<PHONE_1>", "<IP_ADDRESS_1>", "<SECRET_1>",
                                   "<EMAIL_9>", "<", ">", "<EMAIL_", " hi ", "a<b", "é", "\n"]),
                  max_size=20)


@settings(max_examples=300, deadline=None)
@given(parts=pieces, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=30))
def test_stream_restoration_is_exact_for_any_split(parts: list[str], cuts: list[int]) -> None:
    session, _ = _session()
    text = "".join(parts)
    restorer = StreamRestorer(session.pseudonyms)
    out = "".join(restorer.feed(chunk) for chunk in _split(text, cuts)) + restorer.flush()
    assert out == restore(text, session.pseudonyms)
    assert VALUES[0] in out or "<EMAIL_1>" not in text


def test_restore_whole_and_json_escaped() -> None:
    session, tokens = _session()
    text = f"to {tokens[0]} pw {tokens[3]} unknown <EMAIL_7>"
    pseudonyms = session.pseudonyms
    assert restore(text, pseudonyms) == f"to {VALUES[0]} pw {VALUES[3]} unknown <EMAIL_7>"
    assert restore('{"pw": "' + tokens[3] + '"}', pseudonyms, json_escape=True) == (
        '{"pw": "pa\\"ss\\\\word\\nx"}')


def test_restorer_holds_back_only_a_possible_placeholder() -> None:
    session, _ = _session()
    restorer = StreamRestorer(session.pseudonyms)
    assert restorer.feed("a < b and <EM") == "a < b and "
    assert restorer.feed("AIL_1> done <x") == f"{VALUES[0]} done <x"


TEXT = ("Hello, please write to maria.gonzalez@example.es or call +34 612 34 56 78. "
        "Server 192.168.0.12 and key sk-proj-abc123DEF456ghi789JKL012mno are internal. "
        "Order 4815162342 is unrelated. ") * 2


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(TEXT)), max_size=40))
def test_output_scanner_redacts_the_same_for_any_split(cuts: list[int]) -> None:
    whole = ENGINE.session().output_text(TEXT)
    scanner = OutputScanner(ENGINE.session(), holdback=64)
    out = "".join(scanner.feed(chunk) for chunk in _split(TEXT, cuts)) + scanner.flush()
    assert out == whole
    for raw in ("maria.gonzalez", "612 34 56 78", "192.168.0.12", "sk-proj"):
        assert raw not in out


def test_output_scanner_hold_back_is_bounded() -> None:
    scanner = OutputScanner(ENGINE.session(), holdback=64)
    emitted = scanner.feed("word " * 100)
    assert len(emitted) >= 500 - 64 - 5
