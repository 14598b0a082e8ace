"""`[pii]` end to end through the openai SDK: the upstream only ever reads redacted text, and the
client gets its own values back, in JSON answers, streams, tool calls and the Responses API."""

from __future__ import annotations

import logging
from typing import Any

import openai
import orjson
import pytest

from tests.conftest import StartSidecar
from tests.harness import Sidecar

EMAIL, PHONE, CARD = "alice.smith@example.org", "+1-212-555-0123", "4111 1111 1111 1111"
# Long enough that a port, a request id or a timing in a log line cannot contain one by chance.
RAW = (EMAIL, PHONE, CARD, CARD.replace(" ", ""), "4111 1111", "alice.smith")
PSEUDO = '[pii]\naction = "pseudonymize"\n'


def upstream_saw(sidecar: Sidecar) -> str:
    return "\n".join(r.body.decode("utf-8", "replace") for r in sidecar.mock.received)


def assert_clean(sidecar: Sidecar) -> None:
    seen = upstream_saw(sidecar)
    assert seen, "the upstream received nothing"
    for value in RAW:
        assert value not in seen


@pytest.fixture
def pseudo(start_sidecar: StartSidecar) -> Sidecar:
    return start_sidecar(PSEUDO)


def test_chat_json_answer_restored(pseudo: Sidecar) -> None:
    pseudo.mock.script("I will email <EMAIL_1> and call <PHONE_1>.")
    reply = pseudo.client().chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "system", "content": f"The user is {EMAIL}."},
        {"role": "user", "content": [{"type": "text", "text": f"Call me on {PHONE}"}]}])
    assert reply.choices[0].message.content == f"I will email {EMAIL} and call {PHONE}."
    assert_clean(pseudo)
    sent = pseudo.mock.received[-1].json["messages"]
    assert sent[0]["content"] == "The user is <EMAIL_1>."


def test_chat_stream_restores_placeholders_split_across_chunks(pseudo: Sidecar) -> None:
    pseudo.mock.script(pieces=["Writing to <EM", "AIL", "_1>", " now."])
    stream = pseudo.client().chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": f"I am {EMAIL}"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == f"Writing to {EMAIL} now."
    assert_clean(pseudo)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_arguments_restored_and_history_redacted(pseudo: Sidecar, stream: bool) -> None:
    pseudo.mock.script(tool_calls=[{"name": "send_mail", "arguments": {"to": "<EMAIL_1>"}}])
    messages: list[Any] = [
        {"role": "user", "content": f"mail {EMAIL}"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c0", "type": "function",
         "function": {"name": "lookup", "arguments": orjson.dumps({"phone": PHONE}).decode()}}]},
        {"role": "tool", "tool_call_id": "c0", "content": f"{PHONE} belongs to {EMAIL}"}]
    tools: Any = [{"type": "function", "function": {"name": "send_mail", "parameters": {
        "type": "object", "properties": {"to": {"type": "string"}}}}}]
    client = pseudo.client()
    if stream:
        args = ""
        for chunk in client.chat.completions.create(model="gpt-4o", messages=messages,
                                                    tools=tools, stream=True):
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                args += call.function.arguments or "" if call.function else ""
    else:
        reply = client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools)
        calls = reply.choices[0].message.tool_calls or []
        args = calls[0].function.arguments  # type: ignore[union-attr]
    assert orjson.loads(args) == {"to": EMAIL}
    assert_clean(pseudo)


@pytest.mark.parametrize("stream", [False, True])
def test_legacy_completions(pseudo: Sidecar, stream: bool) -> None:
    client = pseudo.client()
    if stream:
        text = "".join(c.choices[0].text for c in client.completions.create(
            model="gpt-4o-mini", prompt=f"Hello {EMAIL}", stream=True) if c.choices)
    else:
        text = client.completions.create(model="gpt-4o-mini", prompt=[f"Hello {EMAIL}"]
                                         ).choices[0].text
    assert EMAIL in text      # the mock echoes the (redacted) prompt; the client sees its value
    assert_clean(pseudo)


def test_embeddings_input_redacted(pseudo: Sidecar) -> None:
    pseudo.client().embeddings.create(model="text-embedding-3-small",
                                      input=[f"profile of {EMAIL}", "plain"])
    assert_clean(pseudo)
    assert pseudo.mock.received[-1].json["input"] == ["profile of <EMAIL_1>", "plain"]


@pytest.mark.parametrize("stream", [False, True])
def test_responses_api(pseudo: Sidecar, stream: bool) -> None:
    client = pseudo.client()
    pseudo.mock.script(pieces=["Sure <EMA", "IL_1>, noted <PHO", "NE_1>."])
    kwargs: dict[str, Any] = {"model": "gpt-4o-mini", "instructions": f"Customer: {EMAIL}",
                              "input": [{"role": "user", "content": f"call {PHONE}"}]}
    if stream:
        deltas, final = "", None
        for event in client.responses.create(stream=True, **kwargs):
            if event.type == "response.output_text.delta":
                deltas += event.delta
            if event.type == "response.completed":
                final = event.response.output_text
        assert deltas == final == f"Sure {EMAIL}, noted {PHONE}."
    else:
        assert client.responses.create(**kwargs).output_text == f"Sure {EMAIL}, noted {PHONE}."
    assert_clean(pseudo)


def test_block_refuses_with_envelope_naming_types_only(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar('[pii]\naction = "redact"\nactions = { credit_card = "block" }\n')
    with pytest.raises(openai.BadRequestError) as info:
        sidecar.client().chat.completions.create(model="gpt-4o", messages=[
            {"role": "user", "content": f"pay with {CARD}, mail {EMAIL}"}])
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "pii_detected"
    assert "credit_card" in error["message"] and "4111" not in str(info.value.response.text)
    assert sidecar.mock.count() == 0


def test_redact_mode_and_response_scan(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar('[pii]\nresponses = true\n')
    sidecar.mock.script("Ask bob.jones@corp.example.net, or see [EMAIL].")
    text = sidecar.client().chat.completions.create(model="gpt-4o", messages=[
        {"role": "user", "content": f"who is {EMAIL}?"}]).choices[0].message.content
    assert text == "Ask [EMAIL], or see [EMAIL]."
    assert upstream_saw(sidecar).count("who is [EMAIL]?") == 1


def test_response_scan_in_stream(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar('[pii]\nresponses = true\n')
    sidecar.mock.script(pieces=["Reach bob.jo", "nes@corp.exa", "mple.net or ", "+44 20 7946 0958."])
    stream = sidecar.client().chat.completions.create(
        model="gpt-4o", stream=True, messages=[{"role": "user", "content": "hi"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Reach [EMAIL] or [PHONE]."


def test_fail_closed_when_detection_raises(start_sidecar: StartSidecar,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.pii.detector import Detector

    sidecar = start_sidecar(PSEUDO)

    def broken(self: Detector, text: str) -> list[Any]:
        raise RuntimeError(f"boom on {text}")

    monkeypatch.setattr(Detector, "scan", broken)
    with pytest.raises(openai.InternalServerError) as info:
        sidecar.client().chat.completions.create(model="gpt-4o", messages=[
            {"role": "user", "content": EMAIL}])
    assert EMAIL not in info.value.response.text
    assert sidecar.mock.count() == 0


def test_no_raw_values_in_logs_or_upstream(start_sidecar: StartSidecar,
                                           caplog: pytest.LogCaptureFixture) -> None:
    sidecar = start_sidecar(PSEUDO)
    caplog.set_level(logging.DEBUG)
    client = sidecar.client()
    messages: Any = [{"role": "user", "content": f"{EMAIL} {PHONE} {CARD}"}]
    client.chat.completions.create(model="gpt-4o", messages=messages)
    list(client.chat.completions.create(model="gpt-4o", messages=messages, stream=True))
    client.embeddings.create(model="text-embedding-3-small", input=EMAIL)
    client.responses.create(model="gpt-4o", input=f"{EMAIL} {PHONE}")
    assert sidecar.mock.count() == 4
    assert_clean(sidecar)
    for value in RAW:
        assert value not in caplog.text


def test_cache_hit_answers_each_user_with_their_own_values(start_sidecar: StartSidecar) -> None:
    pytest.importorskip("proxy.policies.cache")
    sidecar = start_sidecar(PSEUDO + '[cache]\nenabled = true\nscope = "global"\n')
    client = sidecar.client()
    answers = [client.chat.completions.create(model="gpt-4o", messages=[
        {"role": "user", "content": f"Write a greeting for {who}"}]).choices[0].message.content
        for who in ("ann@a.example", "bob@b.example")]
    assert sidecar.mock.count() == 1
    assert answers == ["Echo: Write a greeting for ann@a.example",
                       "Echo: Write a greeting for bob@b.example"]


def test_streamed_cache_hit_restores_each_users_values(start_sidecar: StartSidecar) -> None:
    pytest.importorskip("proxy.policies.cache")
    sidecar = start_sidecar(PSEUDO + '[cache]\nenabled = true\nscope = "global"\n')
    client = sidecar.client()
    texts = []
    for who in ("ann@a.example", "bob@b.example"):
        stream = client.chat.completions.create(model="gpt-4o", stream=True, messages=[
            {"role": "user", "content": f"Write a greeting for {who}"}])
        texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    assert texts == ["Echo: Write a greeting for ann@a.example",
                     "Echo: Write a greeting for bob@b.example"]
    assert "ann@a.example" not in upstream_saw(sidecar)


async def test_counts_not_values_reach_span_notes_and_metrics() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from proxy.exchange import Endpoint, Exchange, Reply
    from proxy.pii import PiiConfig, compile_engine
    from proxy.policies.pii import PiiPolicy

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    policy = PiiPolicy(compile_engine(PiiConfig(action="pseudonymize", responses=True)), meter)
    body = {"model": "m", "messages": [{"role": "user", "content": f"{EMAIL} and {EMAIL}, {PHONE}"}]}
    ex = Exchange(request_id="r", endpoint=Endpoint.CHAT, method="POST", path="/v1/chat/completions",
                  query="", headers=CIMultiDictProxy(CIMultiDict()), client_ip="127.0.0.1",
                  raw_body=orjson.dumps(body), body=body)

    async def upstream(sent: Exchange) -> Reply:
        assert EMAIL.encode() not in sent.body_bytes()
        return Reply.from_json(200, {"choices": [{"index": 0, "message": {
            "role": "assistant", "content": "<EMAIL_1>, ask eve@corp.example.net"}}]})

    reply = await policy(ex, upstream)
    assert reply.json()["choices"][0]["message"]["content"] == f"{EMAIL}, ask [EMAIL]"
    assert ex.notes["pii"] == {"pii.request.email": 2, "pii.request.phone": 1,
                               "pii.request.total": 3, "pii.response.email": 1,
                               "pii.response.total": 1}
    data = reader.get_metrics_data()
    assert data is not None
    points: set[tuple[Any, Any]] = {
        (tuple(sorted((p.attributes or {}).items())), getattr(p, "value", None))
        for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        for p in m.data.data_points}
    assert ((("direction", "request"), ("entity", "email")), 2) in points
    assert ((("direction", "response"), ("entity", "email")), 1) in points
    assert EMAIL not in repr(ex.notes) + repr(points)
