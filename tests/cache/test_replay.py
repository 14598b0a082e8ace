"""A stored answer serves both shapes: streams add up to the JSON answer, JSON replays as a stream."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.cache.assemble import assemble
from proxy.cache.entries import Entry, pack_entry, storable, unpack_entry
from proxy.cache.replay import replay_frames
from proxy.exchange import Endpoint
from proxy.wire import sse
from tests.mock_upstream import shapes
from tests.mock_upstream.responses import response_events, response_json

META = shapes.Meta("chatcmpl-abc", 1_700_000_000, "gpt-4o-mini")


def plan(text: str = "Hello there, streaming world", n: int = 1,
         tools: tuple[shapes.ToolCall, ...] = ()) -> shapes.Plan:
    body: dict[str, Any] = {"n": n, "tools": [{"type": "function"}] if tools else None}
    return shapes.plan_reply(body, text, 7, shapes.Reply(content=text, tool_calls=tools), 4)


def test_a_chat_stream_adds_up_to_the_json_answer() -> None:
    p = plan(n=2)
    expected = shapes.chat_json(p, META)
    got = assemble(Endpoint.CHAT, shapes.chat_events(p, META, include_usage=True), None)
    assert got is not None
    assert got["choices"][1]["message"]["content"] == expected["choices"][1]["message"]["content"]
    assert [c["finish_reason"] for c in got["choices"]] == ["stop", "stop"]
    assert got["usage"] == expected["usage"] and got["id"] == expected["id"]


def test_streamed_tool_calls_add_up() -> None:
    call = shapes.ToolCall("get_weather", '{"city": "Paris", "unit": "celsius"}')
    p = plan(tools=(call,))
    got = assemble(Endpoint.CHAT, shapes.chat_events(p, META, include_usage=False),
                   {"total_tokens": 1})
    assert got is not None
    message = got["choices"][0]["message"]
    assert message["tool_calls"] == shapes.chat_json(p, META)["choices"][0]["message"]["tool_calls"]
    assert got["choices"][0]["finish_reason"] == "tool_calls"
    assert got["usage"] == {"total_tokens": 1}  # the usage the upstream layer kept aside


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_json_replays_as_a_stream_that_adds_back_up(include_usage: bool) -> None:
    call = shapes.ToolCall("f", '{"a": 1}')
    for p in (plan(n=3), plan(tools=(call,))):
        stored = shapes.chat_json(p, META)
        frames = replay_frames(Endpoint.CHAT, stored, include_usage)
        assert frames[-1] == sse.DONE
        has_usage = any(b'"usage"' in f for f in frames)
        assert has_usage is include_usage
        assert assemble(Endpoint.CHAT, frames, stored["usage"]) == stored


def test_completions_round_trip() -> None:
    p = plan(n=2)
    stored = shapes.completion_json(p, META)
    assert assemble(Endpoint.COMPLETIONS, shapes.completion_events(p, META, True), None) == stored
    frames = replay_frames(Endpoint.COMPLETIONS, stored, include_usage=True)
    assert assemble(Endpoint.COMPLETIONS, frames, None) == stored


def test_responses_round_trip_and_event_order() -> None:
    p = plan()
    meta = shapes.Meta("resp_abc", 1_700_000_000, "gpt-4o-mini")
    stored = response_json(p, meta, {"input": "hi"})
    assert assemble(Endpoint.RESPONSES, response_events(p, meta, {"input": "hi"}), None) == stored
    frames = replay_frames(Endpoint.RESPONSES, stored, include_usage=False)
    kinds = [sse.frame_fields(f)[0] for f in frames]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed" and "response.output_text.delta" in kinds
    numbers = [orjson.loads(sse.frame_fields(f)[1] or b"{}")["sequence_number"] for f in frames]
    assert numbers == list(range(len(frames)))
    assert assemble(Endpoint.RESPONSES, frames, None) == stored


def test_responses_function_calls_replay() -> None:
    stored = {"id": "resp_1", "object": "response", "status": "completed", "usage": {"total_tokens": 3},
              "output": [{"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f",
                          "arguments": '{"x": 1}', "status": "completed"}]}
    frames = replay_frames(Endpoint.RESPONSES, stored, include_usage=False)
    deltas = [orjson.loads(sse.frame_fields(f)[1] or b"{}") for f in frames]
    assert any(d["type"] == "response.function_call_arguments.delta" and d["delta"] == '{"x": 1}'
               for d in deltas)
    assert assemble(Endpoint.RESPONSES, frames, None) == stored


def test_incomplete_streams_add_up_to_nothing() -> None:
    events = shapes.chat_events(plan(), META, include_usage=False)
    assert assemble(Endpoint.CHAT, events[:-1], None) is None  # no [DONE]
    no_finish = [e for e in events if b'"finish_reason":"stop"' not in e]
    assert assemble(Endpoint.CHAT, no_finish, None) is None
    error = sse.encode({"error": {"message": "boom", "type": "server_error"}})
    assert assemble(Endpoint.CHAT, [*events[:-1], error, sse.DONE], None) is None
    meta = shapes.Meta("resp_abc", 1, "m")
    assert assemble(Endpoint.RESPONSES, response_events(plan(), meta, {})[:-1], None) is None


def test_only_complete_json_answers_are_storable() -> None:
    p = plan()
    assert storable(Endpoint.CHAT, shapes.chat_json(p, META))
    unfinished = shapes.chat_json(p, META)
    unfinished["choices"][0]["finish_reason"] = None
    assert not storable(Endpoint.CHAT, unfinished)
    assert not storable(Endpoint.CHAT, {"error": {"message": "x"}})
    assert not storable(Endpoint.RESPONSES, {"status": "incomplete"})
    assert storable(Endpoint.RESPONSES, {"status": "completed"})


def test_entries_round_trip_and_foreign_bytes_read_as_a_miss() -> None:
    data = pack_entry(Endpoint.RESPONSES, 123.5, b'{"a":1}')
    assert unpack_entry(data) == Entry(Endpoint.RESPONSES, 123.5, b'{"a":1}')
    assert unpack_entry(b"garbage that is long enough") is None
    assert unpack_entry(None) is None


def test_storable_bytes_agree_with_the_parsed_check() -> None:
    from proxy.cache.entries import storable_body

    p = plan(n=2)
    done = shapes.chat_json(p, META)
    unfinished = shapes.chat_json(p, META)
    unfinished["choices"][1]["finish_reason"] = None
    tricky = shapes.chat_json(plan(text='say "finish_reason": null and "error": {}'), META)
    for payload in (done, unfinished, tricky, {"error": {"message": "x"}}, {"choices": []}):
        for raw in (orjson.dumps(payload), orjson.dumps(payload, option=orjson.OPT_INDENT_2)):
            assert storable_body(Endpoint.CHAT, raw) == storable(Endpoint.CHAT, payload)
    assert storable_body(Endpoint.RESPONSES, b'{"status": "completed", "error": null}')
    assert not storable_body(Endpoint.RESPONSES, b"not json")
