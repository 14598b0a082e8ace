"""The stored entry (a small header, then the JSON answer ready to send) and the replies built
from it: the bytes as they are for a JSON request, replayed SSE for a streaming one.
"""

from __future__ import annotations

import re
import struct
from collections.abc import AsyncGenerator, Mapping
from typing import Any, NamedTuple

import orjson

from proxy.cache.replay import replay_frames
from proxy.exchange import Endpoint, Reply

_HEAD = struct.Struct("<4sBd")
_MAGIC = b"LSC1"
_CODES = {Endpoint.CHAT: 1, Endpoint.COMPLETIONS: 2, Endpoint.RESPONSES: 3, Endpoint.EMBEDDINGS: 4}
_ENDPOINTS = {code: endpoint for endpoint, code in _CODES.items()}
HIT = "hit"


class Entry(NamedTuple):
    """One cached answer: its endpoint, when it was stored (wall-clock seconds), its JSON bytes."""

    endpoint: Endpoint
    created: float
    body: bytes


def pack_entry(endpoint: Endpoint, created: float, body: bytes) -> bytes:
    return _HEAD.pack(_MAGIC, _CODES[endpoint], created) + body


def unpack_entry(data: bytes | None) -> Entry | None:
    """The entry in `data`; None for anything this version did not write (read as a miss)."""
    if data is None or len(data) < _HEAD.size:
        return None
    magic, code, created = _HEAD.unpack_from(data)
    endpoint = _ENDPOINTS.get(code)
    if magic != _MAGIC or endpoint is None:
        return None
    return Entry(endpoint, created, data[_HEAD.size:])


def storable(endpoint: Endpoint, payload: Any) -> bool:
    """Whether a 200 answer is complete enough to serve again: every choice finished, or the
    response `completed` (not `incomplete`, `queued` or `in_progress`)."""
    if not isinstance(payload, dict) or payload.get("error") is not None:
        return False
    if endpoint is Endpoint.RESPONSES:
        return payload.get("status") == "completed"
    if endpoint is Endpoint.EMBEDDINGS:
        return isinstance(payload.get("data"), list)
    choices = payload.get("choices")
    return (isinstance(choices, list) and bool(choices)
            and all(isinstance(c, dict) and c.get("finish_reason") for c in choices))


_REASON = b'"finish_reason"'
_REASON_VALUE = re.compile(rb'\s*:\s*(")?')  # after the name: a string, or anything else (null)
_ERROR = re.compile(rb'"error"\s*:\s*[{"]')


def storable_body(endpoint: Endpoint, body: bytes) -> bool:
    """`storable` for a JSON body as bytes, without parsing chat and completions answers.

    Sound because a JSON string cannot contain an unescaped quote: `"finish_reason": null` can
    only be the field itself, never text inside an answer.
    """
    if endpoint is Endpoint.CHAT or endpoint is Endpoint.COMPLETIONS:
        finished = False
        at = body.find(_REASON)
        while at != -1:
            value = _REASON_VALUE.match(body, at + len(_REASON))
            if value is None or value.group(1) is None:
                return False  # a choice without a finish reason
            finished = True
            at = body.find(_REASON, value.end())
        return finished and (b'"error"' not in body or _ERROR.search(body) is None)
    try:
        return storable(endpoint, orjson.loads(body))
    except orjson.JSONDecodeError:
        return False


def uncacheable(endpoint: Endpoint, body: Mapping[str, Any]) -> str | None:
    """Why a request must not be cached (None: it may be).

    Audio answers carry an `audio.id` that upstream expires and later turns refer to; a background
    Response is a queued job, not an answer.
    """
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        return "audio output"
    if endpoint is Endpoint.RESPONSES and body.get("background") is True:
        return "background response"
    return None


def wants_usage(body: Mapping[str, Any] | None) -> bool:
    """Whether a streaming client asked for the final usage chunk."""
    options = body.get("stream_options") if body else None
    return isinstance(options, dict) and options.get("include_usage") is True


def entry_reply(entry: Entry, *, stream: bool, include_usage: bool, now: float,
                label: str = HIT) -> Reply:
    """The reply a cached entry gives: the stored bytes, or SSE replayed from them.

    `Age` is whole seconds since the entry was stored; the body keeps the original `usage`.
    """
    headers = {"x-sidecar-cache": label, "Age": str(max(0, int(now - entry.created)))}
    if not stream or entry.endpoint is Endpoint.EMBEDDINGS:
        headers["Content-Type"] = "application/json"
        return Reply(200, headers, body=entry.body)
    payload = orjson.loads(entry.body)
    reply = Reply(200, headers, sse=True)
    reply.stream = _replay(replay_frames(entry.endpoint, payload, include_usage), reply)
    reply.outcome = "pending"
    usage = payload.get("usage")
    reply.usage = usage if isinstance(usage, dict) else None
    return reply


async def _replay(frames: list[bytes], reply: Reply) -> AsyncGenerator[bytes, None]:
    for frame in frames:
        yield frame
    reply.outcome = "complete"
