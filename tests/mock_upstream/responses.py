"""Responses API payloads for the mock upstream: the JSON object and the typed SSE event sequence.

Streams follow OpenAI's order: created, in_progress, added, deltas, done events, completed/incomplete.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from tests.mock_upstream.shapes import JSON, Meta, Plan, content_text, count_tokens


def input_text(value: Any) -> str:
    """The last user text of a Responses `input`: a string or a list of message items."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return ""
    for item in reversed(value):
        if isinstance(item, Mapping) and item.get("role", "user") == "user":
            return content_text(item.get("content"))
    return ""


def input_tokens(body: Mapping[str, Any]) -> int:
    instructions = body.get("instructions")
    extra = count_tokens(instructions) if isinstance(instructions, str) else 0
    value = body.get("input")
    if isinstance(value, list):
        items = [i for i in value if isinstance(i, Mapping)]
        return extra + sum(3 + count_tokens(content_text(i.get("content"))) for i in items)
    return extra + 3 + count_tokens(input_text(value))


def _usage(plan: Plan) -> JSON:
    return {
        "input_tokens": plan.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": plan.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": plan.prompt_tokens + plan.completion_tokens,
    }


def _part(text: str) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _item(meta: Meta, text: str | None) -> JSON:
    done = text is not None
    return {
        "id": f"msg_{meta.id.removeprefix('resp_')}",
        "type": "message",
        "status": "completed" if done else "in_progress",
        "role": "assistant",
        "content": [_part(text)] if text is not None else [],
    }


def _status(plan: Plan | None) -> str:
    if plan is None:
        return "in_progress"
    return "incomplete" if plan.choices[0].finish_reason == "length" else "completed"


def response_json(plan: Plan | None, meta: Meta, body: Mapping[str, Any]) -> JSON:
    """The response object; `plan=None` gives the in-progress snapshot streams start with."""
    text = plan.choices[0].text if plan is not None else None
    status = _status(plan)
    return {
        "id": meta.id,
        "object": "response",
        "created_at": meta.created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": meta.model,
        "output": [_item(meta, text)] if plan is not None else [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": _usage(plan) if plan is not None else None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _event(kind: str, seq: int, payload: JSON) -> bytes:
    data = orjson.dumps({"type": kind, "sequence_number": seq, **payload})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def response_events(plan: Plan, meta: Meta, body: Mapping[str, Any]) -> list[bytes]:
    """Every SSE event of a streamed response, each with its `event:` line (no [DONE] here)."""
    choice = plan.choices[0]
    item_id = _item(meta, None)["id"]
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    start = response_json(None, meta, body)
    steps: list[tuple[str, JSON]] = [
        ("response.created", {"response": start}),
        ("response.in_progress", {"response": start}),
        ("response.output_item.added", {"output_index": 0, "item": _item(meta, None)}),
        ("response.content_part.added", {**where, "part": _part("")}),
    ]
    steps += [
        ("response.output_text.delta", {**where, "delta": piece, "logprobs": []}) for piece in choice.pieces
    ]
    steps += [
        ("response.output_text.done", {**where, "text": choice.text, "logprobs": []}),
        ("response.content_part.done", {**where, "part": _part(choice.text)}),
        ("response.output_item.done", {"output_index": 0, "item": _item(meta, choice.text)}),
        (f"response.{_status(plan)}", {"response": response_json(plan, meta, body)}),
    ]
    return [_event(kind, seq, payload) for seq, (kind, payload) in enumerate(steps)]
