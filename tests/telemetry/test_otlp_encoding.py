"""The sidecar's own OTLP encoding sends exactly the bytes the SDK's encoder would, for any
attribute values, and leaves spans it did not record to the SDK."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from proxy.telemetry.otlp import SpanEncoder
from proxy.telemetry.recorder import OK, SpanRecord

RESOURCE = Resource.create({"service.name": "llm-sidecar", "team": "search"})
SCOPE = InstrumentationScope("llm-sidecar", "1.2.3")

keys = st.sampled_from(["gen_ai.request.model", "http.response.status_code", "sidecar.a",
                        "sidecar.é", "k" * 130])
scalars = st.one_of(st.text(max_size=200), st.booleans(), st.floats(allow_nan=False),
                    st.integers(min_value=-(2**63), max_value=2**63 - 1),
                    st.integers(min_value=0, max_value=300))
values = st.one_of(scalars, st.none(),
                   st.lists(st.text(max_size=20), max_size=3).map(tuple),
                   st.lists(st.integers(-5, 300), max_size=3).map(tuple))
ids = st.integers(min_value=1, max_value=2**64 - 1)


def _context(trace_id: int, span_id: int, remote: bool = False,
             state: TraceState | None = None) -> SpanContext:
    return SpanContext(trace_id, span_id, remote, TraceFlags(1), state)


def _sdk(spans: list[ReadableSpan]) -> bytes:
    encoded: bytes = encode_spans(spans).SerializePartialToString()
    return encoded


@st.composite
def records(draw: st.DrawFn) -> SpanRecord:
    trace_id = draw(st.integers(min_value=1, max_value=2**128 - 1))
    state = draw(st.sampled_from([None, TraceState([("vendor", "abc"), ("other", "1")])]))
    trace_ids = (trace_id, TraceFlags(draw(st.sampled_from([0, 1]))), state)
    parent_id = draw(st.one_of(st.none(), ids))
    remote = (_context(trace_id, parent_id, True, state)
              if parent_id is not None and draw(st.booleans()) else None)
    # `common` keeps one type per key, as SpanRecord promises.
    common = {"http.route": draw(st.text(max_size=150)), "server.port": draw(st.integers(0, 70000)),
              "gen_ai.request.stream": draw(st.booleans()),
              "gen_ai.response.finish_reasons": draw(st.lists(st.text(max_size=9)).map(tuple))}
    own = draw(st.dictionaries(keys, values, max_size=6))
    status = draw(st.sampled_from([OK, Status(StatusCode.ERROR, "upstream_timeout"),
                                   Status(StatusCode.OK)]))
    start = draw(st.integers(min_value=1, max_value=2**63))
    return SpanRecord(draw(st.text(max_size=140)), trace_ids, draw(ids), parent_id, remote,
                      draw(st.sampled_from(list(SpanKind))), start,
                      start + draw(st.integers(0, 10**12)), common, own, status)


@settings(max_examples=300, deadline=None)
@given(st.lists(records(), min_size=1, max_size=4))
def test_the_bytes_are_the_sdks(batch: list[SpanRecord]) -> None:
    encoder = SpanEncoder(RESOURCE, SCOPE)
    expected = _sdk([record.readable(RESOURCE, SCOPE) for record in batch])
    assert encoder.encode(batch) == expected
    assert encoder.encode(batch) == expected  # and again, from what it remembered


def test_remembered_encodings_keep_the_value_type() -> None:
    """1, 1.0 and True are equal in Python and different in OTLP."""
    encoder = SpanEncoder(RESOURCE, SCOPE)
    batch = [SpanRecord("s", (5, TraceFlags(1), None), 6, None, None, SpanKind.CLIENT, 1, 2, {},
                        {"v": value}, OK)
             for value in (1, 1.0, True, 1, -0.0, 0.0, 0, False)]
    assert encoder.encode(batch) == _sdk([r.readable(RESOURCE, SCOPE) for r in batch])


def test_spans_of_the_policies_go_through_the_sdk_encoder() -> None:
    provider = TracerProvider(resource=RESOURCE)
    with provider.get_tracer("some-policy").start_as_current_span("lookup") as policy_span:
        policy_span.set_attribute("hits", 2)
        policy_span.add_event("miss", {"key": "k"})
    assert isinstance(policy_span, ReadableSpan)
    ours = SpanRecord("POST /v1/chat/completions", (7, TraceFlags(1), None), 8, None, None,
                      SpanKind.SERVER, 1, 2, {"http.route": "/v1/chat/completions"},
                      {"sidecar.request_id": "r1"}, OK)
    decoded = ExportTraceServiceRequest.FromString(
        SpanEncoder(RESOURCE, SCOPE).encode([policy_span, ours]))
    found: dict[str, Any] = {span.name: (scope.scope.name, span)
                             for resource in decoded.resource_spans
                             for scope in resource.scope_spans for span in scope.spans}
    assert found["lookup"][0] == "some-policy"
    assert [event.name for event in found["lookup"][1].events] == ["miss"]
    assert found["POST /v1/chat/completions"][0] == "llm-sidecar"
    expected = ExportTraceServiceRequest.FromString(_sdk([ours.readable(RESOURCE, SCOPE)]))
    assert found["POST /v1/chat/completions"][1] == expected.resource_spans[0].scope_spans[0].spans[0]
