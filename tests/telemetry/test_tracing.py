"""End to end: an SDK client through a sidecar with `[tracing]`, spans and metrics kept in memory."""

from __future__ import annotations

import socket

import openai
import pytest
import requests
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import StartSidecar
from tests.telemetry.helpers import (
    CALLER_SPAN,
    CALLER_TRACE,
    MEMORY,
    TRACEPARENT,
    attrs,
    one,
    points,
    spans,
)

NO_RETRY = '[[upstreams]]\nname = "mock"\nbase_url = "{mock}"\nretries = 0\n\n' + MEMORY


def test_json_chat_continues_the_callers_trace(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(MEMORY)
    sidecar.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}], max_tokens=50,
        temperature=0.2, top_p=0.9, seed=7, n=2, extra_headers={"traceparent": TRACEPARENT})
    found = spans(sidecar)
    server = one(found, SpanKind.SERVER)
    client = one(found, SpanKind.CLIENT)
    assert server.name == "POST /v1/chat/completions"
    assert f"{server.context.trace_id:032x}" == CALLER_TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert client.name == "chat gpt-4o-mini"
    assert client.context.trace_id == server.context.trace_id
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    got = attrs(client)
    assert got["gen_ai.operation.name"] == "chat"
    assert got["gen_ai.provider.name"] == "openai"
    assert got["gen_ai.request.model"] == "gpt-4o-mini"
    assert got["gen_ai.request.max_tokens"] == 50
    assert got["gen_ai.request.temperature"] == 0.2
    assert got["gen_ai.request.top_p"] == 0.9
    assert got["gen_ai.request.seed"] == 7
    assert got["gen_ai.request.choice.count"] == 2
    assert got["gen_ai.request.stream"] is False
    assert got["gen_ai.response.id"].startswith("chatcmpl-")
    assert got["gen_ai.response.model"] == "gpt-4o-mini"
    assert list(got["gen_ai.response.finish_reasons"]) == ["stop", "stop"]
    assert got["gen_ai.usage.input_tokens"] > 0 and got["gen_ai.usage.output_tokens"] > 0
    assert got["server.address"] == "127.0.0.1" and got["server.port"] == sidecar.mock.port
    assert "error.type" not in got and "error.type" not in attrs(server)
    assert attrs(server)["http.response.status_code"] == 200


def test_upstream_gets_the_client_spans_traceparent(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(MEMORY)
    sidecar.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": TRACEPARENT})
    client = one(spans(sidecar), SpanKind.CLIENT)
    sent = sidecar.mock.received[-1].headers["traceparent"]
    assert sent == f"00-{CALLER_TRACE}-{client.context.span_id:016x}-01"


def test_server_span_names_the_callers_team(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(MEMORY)
    sidecar.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-sidecar-team": "search"})
    server = attrs(one(spans(sidecar), SpanKind.SERVER))
    assert server["sidecar.team"] == "search" and "sidecar.key_name" not in server


def test_stream_records_time_to_first_chunk_and_usage(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(MEMORY)
    chunks = list(sidecar.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "tell me more"}], stream=True))
    assert chunks and all(c.usage is None for c in chunks)  # usage asked for, but not shown
    client = attrs(one(spans(sidecar), SpanKind.CLIENT))
    assert client["gen_ai.request.stream"] is True
    assert client["gen_ai.response.time_to_first_chunk"] > 0
    assert list(client["gen_ai.response.finish_reasons"]) == ["stop"]
    assert client["gen_ai.usage.output_tokens"] > 0
    first_chunk = points(sidecar, "gen_ai.client.operation.time_to_first_chunk")
    assert [p.count for p in first_chunk] == [1]
    assert list(first_chunk[0].explicit_bounds)[:3] == [0.01, 0.02, 0.04]
    kinds = {attrs(p)["gen_ai.token.type"] for p in points(sidecar, "gen_ai.client.token.usage")}
    assert kinds == {"input", "output"}
    server = attrs(one(spans(sidecar), SpanKind.SERVER))
    assert server["sidecar.stream.outcome"] == "complete"


def test_json_answer_records_no_time_to_first_chunk(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(MEMORY)
    sidecar.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert points(sidecar, "gen_ai.client.operation.time_to_first_chunk") == []
    duration = points(sidecar, "gen_ai.client.operation.duration")
    assert [p.count for p in duration] == [1]
    assert attrs(duration[0])["gen_ai.operation.name"] == "chat"
    usage = {attrs(p)["gen_ai.token.type"]: p.sum for p in points(
        sidecar, "gen_ai.client.token.usage")}
    assert usage["input"] > 0 and usage["output"] > 0


def test_embeddings_span_and_input_tokens(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(MEMORY)
    sidecar.client().embeddings.create(model="text-embedding-3-small", input="some text")
    client = one(spans(sidecar), SpanKind.CLIENT)
    assert client.name == "embeddings text-embedding-3-small"
    assert attrs(client)["gen_ai.usage.input_tokens"] > 0
    assert "gen_ai.request.stream" not in attrs(client)
    usage = points(sidecar, "gen_ai.client.token.usage")
    assert {attrs(p)["gen_ai.token.type"] for p in usage} == {"input"}


def test_upstream_http_error_is_recorded(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(NO_RETRY)
    sidecar.mock.fault("status_5xx", times=1, status=500)
    with pytest.raises(openai.InternalServerError):
        sidecar.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    found = spans(sidecar)
    client, server = one(found, SpanKind.CLIENT), one(found, SpanKind.SERVER)
    assert client.status.status_code is StatusCode.ERROR
    assert attrs(client)["error.type"] == "500"
    assert attrs(server)["http.response.status_code"] == 500
    assert server.status.status_code is StatusCode.ERROR
    duration = points(sidecar, "gen_ai.client.operation.duration")
    assert [attrs(p).get("error.type") for p in duration] == ["500"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_upstream_error_is_recorded(start_sidecar: StartSidecar) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}/v1"
    sidecar = start_sidecar(NO_RETRY.replace("{mock}", dead))
    with pytest.raises(openai.APIStatusError) as raised:
        sidecar.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 502
    found = spans(sidecar)
    server, client = one(found, SpanKind.SERVER), one(found, SpanKind.CLIENT)
    assert attrs(server)["error.type"] == "upstream_unreachable"
    assert attrs(server)["http.response.status_code"] == 502
    assert attrs(client)["error.type"] == "upstream_unreachable"
    assert client.parent is not None and client.parent.span_id == server.context.span_id


def test_stream_broken_midway_is_an_error(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(NO_RETRY)
    sidecar.mock.fault("drop_mid_stream", times=1, after=2)
    with pytest.raises(openai.APIError):
        list(sidecar.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a long answer"}],
            stream=True))
    found = spans(sidecar)
    client, server = one(found, SpanKind.CLIENT), one(found, SpanKind.SERVER)
    assert attrs(client)["error.type"] == "upstream_stream_broken"
    assert attrs(server)["sidecar.stream.outcome"] == "error"


def test_sampled_out_requests_still_propagate_and_count(
        start_sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    sidecar = start_sidecar(MEMORY)
    sidecar.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert spans(sidecar) == []
    flags = sidecar.mock.received[-1].headers["traceparent"].rsplit("-", 1)[1]
    assert int(flags, 16) & 1 == 0  # propagated, marked not sampled
    assert [p.count for p in points(sidecar, "gen_ai.client.operation.duration")] == [1]


def test_metrics_endpoint_serves_prometheus_text(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(MEMORY)
    sidecar.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    response = requests.get(f"{sidecar.url}/metrics", timeout=10)
    assert response.status_code == 200
    text = response.text
    assert "# TYPE gen_ai_client_operation_duration_seconds histogram" in text
    assert 'gen_ai_client_token_usage_count{' in text
    assert "sidecar_overhead_duration_seconds_count 1" in text


def test_tracing_disabled_builds_nothing(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar("[tracing]\nenabled = false\n")
    sidecar.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    context = sidecar.services.context
    assert "telemetry" not in context.extras
    assert not any(p.name == "tracing" for p in sidecar.services.pipeline.policies)
    assert "traceparent" not in sidecar.mock.received[-1].headers
    assert requests.get(f"{sidecar.url}/metrics", timeout=10).status_code == 404


@pytest.mark.parametrize("stream", [False, True])
def test_responses_and_completions_are_genai_operations(start_sidecar: StartSidecar,
                                                         stream: bool) -> None:
    sidecar = start_sidecar(MEMORY)
    client = sidecar.client()
    answer = client.responses.create(model="gpt-4o-mini", input="hello", stream=stream)
    if stream:
        list(answer)  # type: ignore[call-overload]
    client.completions.create(model="gpt-4o-mini", prompt="once upon", max_tokens=5)
    clients = [s for s in spans(sidecar) if s.kind is SpanKind.CLIENT]
    assert sorted(s.name for s in clients) == ["chat gpt-4o-mini", "text_completion gpt-4o-mini"]
    for span in clients:
        got = attrs(span)
        assert got["gen_ai.usage.output_tokens"] > 0, span.name
        assert got["gen_ai.response.finish_reasons"], span.name
        assert got["gen_ai.response.id"], span.name
