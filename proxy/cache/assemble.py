"""Adds a streamed answer up into the JSON answer the same request would have got unstreamed.

Only complete streams add up: `[DONE]` (or `response.completed`) seen, every choice finished, no
error event. Anything else gives None and is never stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from proxy.exchange import Endpoint
from proxy.wire import sse

JSON = dict[str, Any]
# Fields a chunk may repeat: the first value stands (never "assistantassistant").
_ONCE = frozenset({"role", "id", "type", "object"})


def assemble(endpoint: Endpoint, frames: Sequence[bytes], usage: JSON | None) -> JSON | None:
    """The JSON answer `frames` add up to, or None when the stream is not a complete answer.

    `usage` is the stream's usage as the upstream layer saw it (it may have hidden the usage
    chunk from a client that did not ask for it).
    """
    if endpoint is Endpoint.RESPONSES:
        return _response(frames)
    payloads = _payloads(frames)
    if payloads is None or not payloads:
        return None
    if endpoint is Endpoint.CHAT:
        return _choices(payloads, usage, "chat.completion", _chat_choice)
    if endpoint is Endpoint.COMPLETIONS:
        return _choices(payloads, usage, "text_completion", _text_choice)
    return None


def _payloads(frames: Sequence[bytes]) -> list[JSON] | None:
    """Parsed data frames up to `[DONE]`; None when there is no `[DONE]` or an error event."""
    payloads: list[JSON] = []
    for frame in frames:
        _, data = sse.frame_fields(frame)
        if data is None:
            continue
        if data == b"[DONE]":
            return payloads
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(payload, dict) or payload.get("error") is not None:
            return None
        payloads.append(payload)
    return None


def _choices(payloads: list[JSON], usage: JSON | None, kind: str,
             finish: Any) -> JSON | None:
    choices: list[JSON] = []
    for payload in payloads:
        if isinstance(payload.get("usage"), dict):
            usage = payload["usage"]
        parts = payload.get("choices")
        if isinstance(parts, list):
            merge_indexed(choices, parts)
    if not choices or any(c.get("finish_reason") is None for c in choices):
        return None
    head = payloads[0]
    out: JSON = {"id": head.get("id"), "object": kind, "created": head.get("created"),
                 "model": head.get("model")}
    for name in ("system_fingerprint", "service_tier"):
        if name in head:
            out[name] = head[name]
    out["choices"] = [finish(c) for c in sorted(choices, key=lambda c: c.get("index", 0))]
    out["usage"] = usage
    return out


def _chat_choice(choice: JSON) -> JSON:
    message: JSON = {"role": "assistant", "content": None}
    message.update(choice.get("delta") or {})
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
    return {"index": choice.get("index", 0), "message": message,
            "logprobs": choice.get("logprobs"), "finish_reason": choice.get("finish_reason")}


def _text_choice(choice: JSON) -> JSON:
    return {"text": choice.get("text", ""), "index": choice.get("index", 0),
            "logprobs": choice.get("logprobs"), "finish_reason": choice.get("finish_reason")}


def merge(target: JSON, delta: JSON) -> None:
    """Fold one streamed delta into `target`: text is appended, lists extended, objects merged.

    Lists of objects carrying an `index` (choices, tool calls) merge item by item.
    """
    for key, value in delta.items():
        prior = target.get(key)
        if value is None:
            target.setdefault(key, None)
        elif key in _ONCE:
            if not prior:
                target[key] = value
        elif isinstance(value, str):
            target[key] = prior + value if isinstance(prior, str) else value
        elif isinstance(value, dict):
            if not isinstance(prior, dict):
                prior = target[key] = {}
            merge(prior, value)
        elif isinstance(value, list):
            if not isinstance(prior, list):
                prior = target[key] = []
            if value and all(isinstance(v, dict) and "index" in v for v in value):
                merge_indexed(prior, value)
            else:
                prior.extend(value)
        else:
            target[key] = value


def merge_indexed(items: list[JSON], deltas: list[Any]) -> None:
    for delta in deltas:
        if not isinstance(delta, dict):
            continue
        for item in items:
            if item.get("index") == delta.get("index"):
                merge(item, delta)
                break
        else:
            fresh: JSON = {}
            merge(fresh, delta)
            items.append(fresh)


def _response(frames: Sequence[bytes]) -> JSON | None:
    """A Responses stream is complete at `response.completed`, which carries the whole object."""
    for frame in reversed(frames):
        _, data = sse.frame_fields(frame)
        if data is None or b"response." not in data:
            continue
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(payload, dict):
            return None
        response = payload.get("response")
        if payload.get("type") == "response.completed" and isinstance(response, dict):
            return response
        return None
    return None
