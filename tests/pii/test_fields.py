"""Every text the upstream reads is redacted, per endpoint, and nothing else is touched; answers
get their values back in content, tool-call arguments and Responses output."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from proxy.pii import PiiEngine
from proxy.pii.fields import redact_request, restore_response

EMAIL, PHONE = "alice@example.com", "+1-212-555-0123"


def test_chat_request_covers_all_roles_parts_and_tool_calls(engine: PiiEngine) -> None:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": [
        {"role": "system", "content": f"User email: {EMAIL}"},
        {"role": "user", "content": [{"type": "text", "text": f"call {PHONE}"},
                                     {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "lookup", "arguments": orjson.dumps({"email": EMAIL}).decode()}}]},
        {"role": "tool", "tool_call_id": "c1", "content": f"found {EMAIL} at 10.0.0.1"},
    ], "user": "u-1"}
    session = engine.session()
    assert redact_request("chat.completions", body, session)
    dumped = orjson.dumps(body).decode()
    assert EMAIL not in dumped and PHONE not in dumped and "10.0.0.1" not in dumped
    assert body["messages"][0]["content"] == "User email: <EMAIL_1>"
    assert body["messages"][1]["content"][0]["text"] == "call <PHONE_1>"
    assert orjson.loads(body["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {
        "email": "<EMAIL_1>"}
    assert body["messages"][3]["content"] == "found <EMAIL_1> at <IP_ADDRESS_1>"
    assert body["messages"][1]["content"][1]["image_url"]["url"] == "https://x/a.png"


def test_completions_and_embeddings_leave_token_arrays(engine: PiiEngine) -> None:
    legacy = {"model": "m", "prompt": [f"to {EMAIL}", "plain"]}
    assert redact_request("completions", legacy, engine.session())
    assert legacy["prompt"] == ["to <EMAIL_1>", "plain"]
    embeddings: dict[str, Any] = {"model": "e", "input": [f"{EMAIL}", [1, 2, 3]]}
    assert redact_request("embeddings", embeddings, engine.session())
    assert embeddings["input"] == ["<EMAIL_1>", [1, 2, 3]]
    tokens = {"model": "e", "input": [[5, 6], [7]]}
    assert not redact_request("embeddings", tokens, engine.session())


def test_responses_request_input_items_and_instructions(engine: PiiEngine) -> None:
    body: dict[str, Any] = {"model": "m", "instructions": f"Reply to {EMAIL}", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": f"my phone {PHONE}"}]},
        {"type": "function_call", "call_id": "c", "name": "f",
         "arguments": orjson.dumps({"to": EMAIL}).decode()},
        {"type": "function_call_output", "call_id": "c", "output": f"sent to {EMAIL}"},
    ]}
    assert redact_request("responses", body, engine.session())
    dumped = orjson.dumps(body).decode()
    assert EMAIL not in dumped and PHONE not in dumped
    simple = {"model": "m", "input": f"hi {EMAIL}"}
    assert redact_request("responses", simple, engine.session())
    assert simple["input"] == "hi <EMAIL_1>"


def test_clean_request_is_unchanged(engine: PiiEngine) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "What is 2+2?"}]}
    before = copy.deepcopy(body)
    assert not redact_request("chat.completions", body, engine.session())
    assert body == before


def test_chat_answer_restored_with_json_escaping(engine: PiiEngine) -> None:
    session = engine.session()
    redact_request("chat.completions", {"messages": [
        {"role": "user", "content": f"{EMAIL} pw postgres://u:p\"w@h/db"}]}, session)
    args = orjson.dumps({"to": "<EMAIL_1>", "pw": "<SECRET_1>"}).decode()
    answer: dict[str, Any] = {"choices": [{"index": 0, "message": {
        "role": "assistant", "content": "Sent to <EMAIL_1>.",
        "tool_calls": [{"id": "t", "type": "function",
                        "function": {"name": "send", "arguments": args}}]}}]}
    assert restore_response("chat.completions", answer, session, scan_output=False)
    message = answer["choices"][0]["message"]
    assert message["content"] == f"Sent to {EMAIL}."
    assert orjson.loads(message["tool_calls"][0]["function"]["arguments"]) == {
        "to": EMAIL, "pw": 'p"w'}


def test_answer_output_scan_redacts_new_pii_but_restores_own(engine: PiiEngine) -> None:
    session = engine.session()
    redact_request("completions", {"prompt": f"for {EMAIL}"}, session)
    answer: dict[str, Any] = {"choices": [{"index": 0,
                              "text": "Hi <EMAIL_1>, cc bob@corp.example.net"}]}
    restore_response("completions", answer, session, scan_output=True)
    assert answer["choices"][0]["text"] == f"Hi {EMAIL}, cc [EMAIL]"
    assert session.output_counts == {"email": 1}


def test_responses_answer_output_items(engine: PiiEngine) -> None:
    session = engine.session()
    redact_request("responses", {"input": f"for {EMAIL}"}, session)
    answer: dict[str, Any] = {"output": [
        {"type": "message", "id": "m", "content": [{"type": "output_text", "text": "ok <EMAIL_1>"}]},
        {"type": "function_call", "id": "f", "arguments": '{"e": "<EMAIL_1>"}'}]}
    restore_response("responses", answer, session, scan_output=False)
    assert answer["output"][0]["content"][0]["text"] == f"ok {EMAIL}"
    assert orjson.loads(answer["output"][1]["arguments"]) == {"e": EMAIL}


def test_placeholders_the_client_wrote_are_neither_issued_nor_restored(engine: PiiEngine) -> None:
    session = engine.session()
    body = {"messages": [{"role": "user", "content": f"Fill <EMAIL_1> in the template for {EMAIL}"}]}
    redact_request("chat.completions", body, session)
    assert body["messages"][0]["content"] == "Fill <EMAIL_1> in the template for <EMAIL_2>"
    answer: dict[str, Any] = {"choices": [{"index": 0, "message": {"content": "<EMAIL_1> <EMAIL_2>"}}]}
    restore_response("chat.completions", answer, session, scan_output=False)
    assert answer["choices"][0]["message"]["content"] == f"<EMAIL_1> {EMAIL}"
