"""Putting the client's values back into answers (whole texts and streamed deltas), and scanning
streamed model output for new PII with a bounded hold-back.

Both stream helpers take deltas in and give back text that is safe to emit now; `flush()`
returns whatever was held back once the stream (or the field) ends.
"""

from __future__ import annotations

import re

import orjson

from proxy.pii.actions import PLACEHOLDER, PseudonymMap
from proxy.pii.engine import Redaction


def restore(text: str, pseudonyms: PseudonymMap, *, json_escape: bool = False) -> str:
    """Every known placeholder in `text` replaced by its original value; unknown ones are kept.
    With `json_escape` the value is escaped for the inside of a JSON string (tool arguments)."""
    if not len(pseudonyms) or "<" not in text:
        return text

    def swap(match: re.Match[str]) -> str:
        token = match.group()
        value = pseudonyms.value(token)
        if value is None:
            return token
        return orjson.dumps(value).decode()[1:-1] if json_escape else value

    return PLACEHOLDER.sub(swap, text)


class StreamRestorer:
    """Restores placeholders in a stream of deltas, holding back only a suffix that could still
    grow into a known placeholder (a placeholder has one `<`, so only the last one matters)."""

    def __init__(self, pseudonyms: PseudonymMap, *, json_escape: bool = False) -> None:
        self._pseudonyms = pseudonyms
        self._json = json_escape
        self._held = ""

    def feed(self, delta: str) -> str:
        text = self._held + delta
        cut = text.rfind("<")
        if cut >= 0 and self._could_grow(text[cut:]):
            self._held, text = text[cut:], text[:cut]
        else:
            self._held = ""
        return restore(text, self._pseudonyms, json_escape=self._json)

    def flush(self) -> str:
        text, self._held = self._held, ""
        return restore(text, self._pseudonyms, json_escape=self._json)

    def _could_grow(self, suffix: str) -> bool:
        if ">" in suffix:
            return False
        return any(p.startswith(suffix) for p in self._pseudonyms.placeholders())


class OutputScanner:
    """Applies the output action to PII in streamed model text.

    Text is emitted up to `holdback` characters before the end of what has arrived, and never
    inside a run of non-space characters (emails, keys and tokens are such runs) unless that
    run outgrows `max_run`; so a value that is still arriving is never emitted half-seen.
    The last emitted characters are kept as left context for the recognizers' boundary checks.
    """

    def __init__(self, redaction: Redaction, holdback: int = 64, max_run: int = 8192) -> None:
        self._redaction = redaction
        self._holdback = holdback
        self._max_run = max_run
        self._context = ""
        self._pending = ""

    def feed(self, delta: str) -> str:
        self._pending += delta
        cut = self._safe_cut(self._pending)
        return self._emit(cut) if cut > 0 else ""

    def flush(self) -> str:
        return self._emit(len(self._pending)) if self._pending else ""

    def _safe_cut(self, text: str) -> int:
        cut = len(text) - self._holdback
        if cut <= 0:
            return 0
        space = max(text.rfind(" ", 0, cut + 1), text.rfind("\n", 0, cut + 1))
        if space >= 0:
            return space + 1
        return cut if len(text) > self._max_run else 0

    def _emit(self, cut: int) -> str:
        text = self._context + self._pending
        offset = len(self._context)
        matches = [m for m in self._redaction.engine.detector.scan(text) if m.end > offset]
        cut_abs = offset + cut
        for match in matches:
            if match.start < cut_abs < match.end:
                cut_abs = match.start      # never split a value: hold it back whole
        if cut_abs <= offset:
            return ""
        emitted = text[offset:cut_abs]
        mine = [m._replace(start=m.start - offset, end=m.end - offset)
                for m in matches if m.start >= offset and m.end <= cut_abs]
        self._pending = text[cut_abs:]
        self._context = text[max(0, cut_abs - 32):cut_abs]
        return self._redaction.apply_output(emitted, mine) if mine else emitted
