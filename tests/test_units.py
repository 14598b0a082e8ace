from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.units import go_duration, parse_duration, parse_size


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400), ("1h30m", 5400),
    (" 2s ", 2), (1.5, 1.5), (0, 0),
])
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5", "5 parsecs", "-1s", "1h30", True, None, "s5"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(("text", "size"), [
    ("64MB", 64 << 20), ("512KB", 512 << 10), ("1GiB", 1 << 30), ("100", 100), (7, 7),
    ("1.5kb", 1536),
])
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "-1MB", "1XB", True])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.02, "20ms"), (1, "1s"), (360, "6m0s"), (61.5, "1m1.5s"), (3661, "1h1m1s"), (0, "0ms"),
])
def test_go_durations_like_openai_headers(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h", "d"]))
def test_duration_roundtrip(value: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assert parse_duration(f"{value}{unit}") == pytest.approx(value * factor)
