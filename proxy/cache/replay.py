"""Turns a stored JSON answer back into the SSE stream a streaming client expects.

Chat and legacy completions: one content chunk and one finishing chunk per choice, the usage chunk
when the client asked for it (`stream_options.include_usage`), then `[DONE]`. Responses: OpenAI's
typed event sequence from `response.created` to `response.completed`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from proxy.exchange import Endpoint
from proxy.wire import sse

JSON = dict[str, Any]
Emit = Callable[..., None]


def replay_frames(endpoint: Endpoint, payload: JSON, include_usage: bool) -> list[bytes]:
    """The SSE frames of `payload` (a stored chat, completions or Responses JSON answer)."""
    if endpoint is Endpoint.RESPONSES:
        return response_frames(payload)
    if endpoint is Endpoint.COMPLETIONS:
        return completion_frames(payload, include_usage)
    return chat_frames(payload, include_usage)


def _head(payload: JSON, kind: str) -> JSON:
    head: JSON = {"id": payload.get("id"), "object": kind, "created": payload.get("created"),
                  "model": payload.get("model")}
    for name in ("system_fingerprint", "service_tier"):
        if name in payload:
            head[name] = payload[name]
    return head


def chat_frames(payload: JSON, include_usage: bool) -> list[bytes]:
    head = _head(payload, "chat.completion.chunk")
    frames: list[bytes] = []
    for choice in payload.get("choices") or []:
        index = choice.get("index", 0)
        delta = dict(choice.get("message") or {})
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
        frames.append(sse.encode({**head, "choices": [
            {"index": index, "delta": delta, "logprobs": choice.get("logprobs"),
             "finish_reason": None}]}))
        frames.append(sse.encode({**head, "choices": [
            {"index": index, "delta": {}, "logprobs": None,
             "finish_reason": choice.get("finish_reason")}]}))
    if include_usage:
        frames.append(sse.encode({**head, "choices": [], "usage": payload.get("usage")}))
    frames.append(sse.DONE)
    return frames


def completion_frames(payload: JSON, include_usage: bool) -> list[bytes]:
    head = _head(payload, "text_completion")
    frames: list[bytes] = []
    for choice in payload.get("choices") or []:
        index = choice.get("index", 0)
        frames.append(sse.encode({**head, "choices": [
            {"text": choice.get("text", ""), "index": index, "logprobs": choice.get("logprobs"),
             "finish_reason": None}]}))
        frames.append(sse.encode({**head, "choices": [
            {"text": "", "index": index, "logprobs": None,
             "finish_reason": choice.get("finish_reason")}]}))
    if include_usage:
        frames.append(sse.encode({**head, "choices": [], "usage": payload.get("usage")}))
    frames.append(sse.DONE)
    return frames


def response_frames(payload: JSON) -> list[bytes]:
    frames: list[bytes] = []
    sequence = itertools.count()

    def emit(kind: str, **fields: Any) -> None:
        frames.append(sse.encode({"type": kind, "sequence_number": next(sequence), **fields},
                                 event=kind))

    start = {**payload, "status": "in_progress", "output": [], "usage": None}
    emit("response.created", response=start)
    emit("response.in_progress", response=start)
    for index, item in enumerate(payload.get("output") or []):
        if isinstance(item, dict):
            _item_events(emit, index, item)
    emit("response.completed", response=payload)
    return frames


def _item_events(emit: Emit, index: int, item: JSON) -> None:
    kind = item.get("type")
    item_id = item.get("id")
    if kind == "message":
        emit("response.output_item.added", output_index=index,
             item={**item, "status": "in_progress", "content": []})
        for part_index, part in enumerate(item.get("content") or []):
            where = {"item_id": item_id, "output_index": index, "content_index": part_index}
            _part_events(emit, where, part if isinstance(part, dict) else {})
    elif kind == "function_call":
        arguments = item.get("arguments", "")
        emit("response.output_item.added", output_index=index,
             item={**item, "status": "in_progress", "arguments": ""})
        emit("response.function_call_arguments.delta", item_id=item_id, output_index=index,
             delta=arguments)
        emit("response.function_call_arguments.done", item_id=item_id, output_index=index,
             arguments=arguments)
    else:
        emit("response.output_item.added", output_index=index, item=item)
    emit("response.output_item.done", output_index=index, item=item)


def _part_events(emit: Emit, where: JSON, part: JSON) -> None:
    kind = part.get("type")
    if kind == "output_text":
        text = part.get("text", "")
        emit("response.content_part.added", **where, part={**part, "text": "", "annotations": []})
        emit("response.output_text.delta", **where, delta=text, logprobs=[])
        emit("response.output_text.done", **where, text=text, logprobs=part.get("logprobs") or [])
    elif kind == "refusal":
        refusal = part.get("refusal", "")
        emit("response.content_part.added", **where, part={**part, "refusal": ""})
        emit("response.refusal.delta", **where, delta=refusal)
        emit("response.refusal.done", **where, refusal=refusal)
    else:
        emit("response.content_part.added", **where, part=part)
    emit("response.content_part.done", **where, part=part)
