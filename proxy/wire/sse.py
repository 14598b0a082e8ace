"""Server-sent events: splitting a byte stream into complete frames, and reading or making one.

Frames end at a blank line (`\n\n`, `\r\n\r\n` or `\r\r`); a frame is handed on whole, with its
terminator, so relaying frames changes no byte of the stream.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE = re.compile(rb"\r\n|\n|\r")


class SSEError(ValueError):
    """The upstream's stream is not valid SSE (a frame too large or undecodable)."""


class SSEFramer:
    """Feed it bytes as they arrive; it returns the frames completed so far."""

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_frame: int = 8 << 20) -> None:
        self._buffer = b""
        self._max = max_frame

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._buffer + chunk if self._buffer else chunk
        frames: list[bytes] = []
        start = 0
        for match in _BOUNDARY.finditer(data):
            frames.append(data[start:match.end()])
            start = match.end()
        self._buffer = data[start:]
        if len(self._buffer) > self._max:
            raise SSEError("an upstream stream event exceeded the size limit")
        return frames

    def flush(self) -> bytes:
        """What is left when the stream ends (an unterminated last frame, or b"")."""
        rest, self._buffer = self._buffer, b""
        return rest


def frame_fields(frame: bytes) -> tuple[str | None, bytes | None]:
    """(event name, data) of one frame; data lines are joined with \\n; comments are skipped."""
    event: str | None = None
    data: list[bytes] = []
    for line in _LINE.split(frame):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    return event, (b"\n".join(data) if data else None)


def frame_json(frame: bytes) -> Any:
    """The JSON payload of a data frame; None for `[DONE]`, comments and non-data frames.

    Raises SSEError when the data is not JSON.
    """
    _, data = frame_fields(frame)
    if data is None or data == b"[DONE]":
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SSEError("the upstream sent an event that is not valid JSON") from exc


def encode(payload: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"
