"""The scan skips text that cannot hold a value cheaply; nothing it skips may hide a real one:
values after non-latin text, at either end, inside number tables, next to look-alikes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.pii import PiiEngine


def found(engine: PiiEngine, text: str) -> list[tuple[str, str]]:
    return [(m.entity, text[m.start:m.end]) for m in engine.detector.scan(text)]


KEY = "sk-proj-abc123DEF456ghi789JKL012mno"


@pytest.mark.parametrize(("text", "expected"), [
    ("电话 (212) 555-0123\uff0c邮箱 zhang@example.com 😀 10.0.0.1",
     [("phone", "(212) 555-0123"), ("email", "zhang@example.com"), ("ip_address", "10.0.0.1")]),
    ("Grüße, José \u2014 café +44 20 7946 0958 ✓", [("phone", "+44 20 7946 0958")]),
    ("4111 1111 1111 1111", [("credit_card", "4111 1111 1111 1111")]),
    ("bob@example.com", [("email", "bob@example.com")]),
    (f"{KEY}", [("secret", KEY)]),
    (f"key=({KEY})", [("secret", KEY)]),
    (f"a risk-free task-based {KEY}", [("secret", KEY)]),
    ("AKIAIOSFODNN7EXAMPLE", [("secret", "AKIAIOSFODNN7EXAMPLE")]),
    ("ends with 192.168.1.1", [("ip_address", "192.168.1.1")]),
    ("SSN:536221234", [("ssn", "536221234")]),
    ("social security number (on file)   536221234.", [("ssn", "536221234")]),
])
def test_values_anywhere_are_found(engine: PiiEngine, text: str,
                                   expected: list[tuple[str, str]]) -> None:
    assert found(engine, text) == expected


def test_values_inside_a_number_table_are_found(engine: PiiEngine) -> None:
    rows = [f"{i},{i * 37 % 1000},{i * 7919 % 100000}.{i % 100:02d},2024-0{i % 9 + 1}-1{i % 9}"
            for i in range(1, 40)]
    rows[20] += ",call +1-212-555-0123"
    rows[30] += ",card 4111 1111 1111 1111, host 10.20.30.40, SSN 536-22-1234"
    assert found(engine, "\n".join(rows)) == [
        ("phone", "+1-212-555-0123"), ("credit_card", "4111 1111 1111 1111"),
        ("ip_address", "10.20.30.40"), ("ssn", "536-22-1234")]


VALUES = [("phone", "+1-212-555-0123"), ("credit_card", "4111 1111 1111 1111"),
          ("ip_address", "10.20.30.40"), ("ssn", "536-22-1234"), ("email", "ana@example.org"),
          ("phone", "+44 20 7946 0958"), ("iban", "DE89 3704 0044 0532 0130 00")]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(9, 80), placed=st.lists(
    st.tuples(st.integers(0, 79), st.sampled_from(VALUES)), min_size=1, max_size=4,
    unique_by=lambda p: p[0]))
def test_values_anywhere_in_a_table_of_dates_and_decimals_are_found(
        engine: PiiEngine, size: int, placed: list[tuple[int, tuple[str, str]]]) -> None:
    # Dense enough for the one-pass cluster search; every row holds a date (never a phone).
    rows = [f"{i},{i * 37 % 1000},{i * 7919 % 100000}.{i % 100:02d},2024-0{i % 9 + 1}-1{i % 9}"
            for i in range(1, size + 1)]
    expected = []
    for row, (entity, value) in sorted((r % size, v) for r, v in placed):
        rows[row] += f", {value}"
        expected.append((entity, value))
    assert found(engine, "\n".join(rows)) == expected


@pytest.mark.parametrize(("address", "valid"), [
    ("0.0.0.0", True), ("255.255.255.255", True), ("10.0.0.1", True),
    ("256.1.1.1", False), ("010.1.1.1", False), ("1.02.3.4", False),
])
def test_ipv4_octets(engine: PiiEngine, address: str, valid: bool) -> None:
    assert found(engine, f"host {address} down") == ([("ip_address", address)] if valid else [])


def test_lookalikes_next_to_trigger_characters(engine: PiiEngine) -> None:
    text = ("Version 3.11.2 - build 2024-03-18 09:12; ratio 1:2; x = 5; user_id = 42; "
            "A1 to A4 sizes; see https://example.com/docs; ISBN 978-3-16-148410-0.")
    assert found(engine, text) == []
