"""Streamed answers: placeholders split across chunks come back whole, in content and in tool
arguments, and held text is flushed by the finishing chunk or the `.done` event."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.pii import PiiEngine, Redaction
from proxy.pii.restore import restore
from proxy.pii.streams import ChatStream, ResponsesStream

EMAIL = "alice@example.com"


def _session(engine: PiiEngine) -> Redaction:
    session = engine.session()
    session.pseudonyms.placeholder("email", EMAIL)
    return session


def chunk(content: str | None = None, args: str | None = None,
          finish: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    if args is not None:
        delta["tool_calls"] = [{"index": 0, "function": {"arguments": args}}]
    return {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def run_chat(stream: ChatStream, chunks: list[dict[str, Any]]) -> tuple[str, str]:
    content, args = "", ""
    out = [c for ch in chunks for c in stream.chunk(ch)] + stream.finish()
    for event in out:
        for choice in event["choices"]:
            delta = choice.get("delta", {})
            content += delta.get("content") or ""
            for call in delta.get("tool_calls") or ():
                args += call["function"]["arguments"]
    return content, args


def test_chat_stream_restores_split_placeholders(engine: PiiEngine) -> None:
    stream = ChatStream(_session(engine), scan=False)
    content, _ = run_chat(stream, [chunk("Mail <EM"), chunk("AIL"), chunk("_1"),
                                   chunk("> now <EMAIL_"), chunk(None, finish="stop")])
    assert content == f"Mail {EMAIL} now <EMAIL_"


def test_chat_stream_tool_arguments_restored(engine: PiiEngine) -> None:
    stream = ChatStream(_session(engine), scan=False)
    _, args = run_chat(stream, [chunk(args='{"to": "<EMA'), chunk(args='IL_1>"}'),
                                chunk(finish="tool_calls")])
    assert orjson.loads(args) == {"to": EMAIL}


def test_chat_stream_flushes_when_the_stream_just_ends(engine: PiiEngine) -> None:
    stream = ChatStream(_session(engine), scan=True)
    content, _ = run_chat(stream, [chunk("bob@corp.example.net wrote to <EMAIL_1>")])
    assert content == f"[EMAIL] wrote to {EMAIL}"


def test_responses_stream_deltas_done_and_completed(engine: PiiEngine) -> None:
    stream = ResponsesStream(_session(engine), scan=False)
    base = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.output_text.delta", **base, "delta": "Hi <EMAIL"},
        {"type": "response.output_text.delta", **base, "delta": "_1> and <EMAI"},
        {"type": "response.output_text.done", **base, "text": "Hi <EMAIL_1> and <EMAI"},
        {"type": "response.function_call_arguments.delta", "item_id": "fc", "output_index": 1,
         "delta": '{"e":"<EMAIL_1'},
        {"type": "response.function_call_arguments.delta", "item_id": "fc", "output_index": 1,
         "delta": '>"}'},
        {"type": "response.function_call_arguments.done", "item_id": "fc", "output_index": 1,
         "arguments": '{"e":"<EMAIL_1>"}'},
        {"type": "response.completed", "response": {"output": [
            {"type": "message", "id": "msg_1",
             "content": [{"type": "output_text", "text": "Hi <EMAIL_1> and <EMAI"}]},
            {"type": "function_call", "id": "fc", "arguments": '{"e":"<EMAIL_1>"}'}]}},
    ]
    out = [e for ev in events for e in stream.event(ev)] + stream.finish()
    text = "".join(e["delta"] for e in out if e["type"] == "response.output_text.delta")
    assert text == f"Hi {EMAIL} and <EMAI"
    done = next(e for e in out if e["type"] == "response.output_text.done")
    assert done["text"] == text
    args = "".join(e["delta"] for e in out if e["type"].endswith("arguments.delta"))
    assert orjson.loads(args) == {"e": EMAIL}
    final = out[-1]["response"]["output"]
    assert final[0]["content"][0]["text"] == text
    assert orjson.loads(final[1]["arguments"]) == {"e": EMAIL}


TEXTS = st.lists(st.sampled_from([
    "<EMAIL_1>", "<EMAIL_2>", "<", "EMAIL_1>", " see ", "bob@corp.example.net", "+44 20 7946 0958",
    "\n", "é", "10.0.0.9", "x"]), max_size=25).map("".join)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=25),
       scan=st.booleans())
def test_chat_stream_equals_whole_answer_for_any_split(engine: PiiEngine, text: str,
                                                       cuts: list[int], scan: bool) -> None:
    session = _session(engine)
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in itertools.pairwise(points)]
    stream = ChatStream(session, scan=scan)
    streamed, _ = run_chat(stream, [chunk(p) for p in pieces] + [chunk(finish="stop")])
    whole = session.output_text(text) if scan else text
    assert streamed == restore(whole, session.pseudonyms)
