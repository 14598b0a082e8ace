"""W3C traceparent parsing: valid headers round-trip, anything else is ignored, never raised."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.trace import SpanContext, TraceFlags

from proxy.telemetry.recorder import parse_traceparent, traceparent

ids = st.integers(min_value=1, max_value=2**128 - 1)
span_ids = st.integers(min_value=1, max_value=2**64 - 1)


@given(ids, span_ids, st.sampled_from([0, 1]))
def test_valid_traceparent_round_trips(trace_id: int, span_id: int, sampled: int) -> None:
    header = traceparent(SpanContext(trace_id, span_id, False, TraceFlags(sampled)))
    parsed = parse_traceparent({"traceparent": header})
    assert parsed is not None
    assert (parsed.trace_id, parsed.span_id, parsed.trace_flags.sampled) == (
        trace_id, span_id, bool(sampled))
    assert parsed.is_remote


@given(st.text(max_size=80))
def test_anything_else_is_ignored(header: str) -> None:
    parsed = parse_traceparent({"traceparent": header})
    assert parsed is None or len(header.strip()) >= 55


def test_invalid_forms_are_ignored() -> None:
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert parse_traceparent({"traceparent": good}) is not None
    for bad in (
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # forbidden version
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero span id
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # v00 has 4 fields
        "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",  # short trace id
    ):
        assert parse_traceparent({"traceparent": bad}) is None, bad


def test_tracestate_is_kept() -> None:
    parsed = parse_traceparent({
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "vendor=abc,other=1"})
    assert parsed is not None and parsed.trace_state.to_header() == "vendor=abc,other=1"
