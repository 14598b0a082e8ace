"""Input-token estimates with tiktoken, and a heuristic when no encoding can be loaded.

The heuristic (about 4 characters a token, rounded up) keeps the sidecar running offline; a warning
says so once at startup. Chat messages add OpenAI's per-message framing (3 tokens each, 3 to prime).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.exchange import Exchange

log = logging.getLogger("proxy.tokens")

_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")
_THREAD_THRESHOLD = 64 * 1024  # characters; tokenising more than this goes off the event loop
# keys whose values hold text the model reads (a history's tool calls included)
_TEXT_KEYS = frozenset({"content", "text", "arguments", "name", "input", "output",
                        "tool_calls", "function", "function_call"})
_SMALL_BODY = 16 * 1024  # bytes: too little text to be worth even measuring for a thread hop


class TokenCounter:
    """Counts tokens for a model's encoding; encodings load once (`load()`), lazily otherwise."""

    def __init__(self) -> None:
        self._encodings: dict[str, Any] = {}
        self._unavailable = False

    def load(self) -> bool:
        """Load both encodings now; False (with one warning) when tiktoken cannot."""
        for name in ("o200k_base", "cl100k_base"):
            self._encoding(name)
        return not self._unavailable

    @property
    def exact(self) -> bool:
        return not self._unavailable

    @staticmethod
    def encoding_name(model: str | None) -> str:
        if model and model.startswith(("gpt-4", "gpt-3.5", "text-embedding")) and not \
                model.startswith(_O200K_PREFIXES):
            return "cl100k_base"
        return "o200k_base"

    def _encoding(self, name: str) -> Any:
        if self._unavailable:
            return None
        if name not in self._encodings:
            try:
                import tiktoken

                self._encodings[name] = tiktoken.get_encoding(name)
            except Exception as exc:  # offline, no cache dir, corrupt file: all mean the same
                self._unavailable = True
                log.warning(
                    "tiktoken encodings unavailable (%s); token counts are estimated as "
                    "characters/4. Set TIKTOKEN_CACHE_DIR to a folder with the encodings.",
                    type(exc).__name__,
                )
                return None
        return self._encodings[name]

    def count_text(self, text: str, model: str | None = None) -> int:
        encoding = self._encoding(self.encoding_name(model))
        if encoding is None:
            return math.ceil(len(text) / 4)
        return len(encoding.encode_ordinary(text))  # special tokens count as plain text

    def count_request(self, body: dict[str, Any], model: str | None = None) -> int:
        """Input tokens of a chat, completions, embeddings or responses request body."""
        framing = 0
        messages = body.get("messages")
        if isinstance(messages, list):
            framing = 3 + 3 * len(messages)
        text = "\n".join(_texts(body))
        return framing + (self.count_text(text, model) if text else 0)

    async def count_exchange(self, ex: Exchange) -> int:
        """Input tokens of a request, counted once per body however many policies ask."""
        if ex.input_tokens is None:
            body, model = ex.body or {}, ex.model if isinstance(ex.model, str) else None
            if len(ex.raw_body) < _SMALL_BODY:
                ex.input_tokens = self.count_request(body, model)
            else:
                ex.input_tokens = await self.count_request_async(body, model)
        return ex.input_tokens

    async def count_request_async(self, body: dict[str, Any], model: str | None = None) -> int:
        """Like `count_request`, off the event loop when the body is large."""
        if sum(len(t) for t in _texts(body)) > _THREAD_THRESHOLD:
            return await asyncio.to_thread(self.count_request, body, model)
        return self.count_request(body, model)


def _texts(body: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for key in ("messages", "prompt", "input", "instructions", "tools"):
        if key in body:
            _strings(body[key], key == "tools", found)
    return found


def _strings(value: Any, whole: bool, found: list[str]) -> None:
    """Append the text in `value` to `found`: every string when `whole`, else text-bearing keys."""
    if isinstance(value, str):
        found.append(value)
    elif isinstance(value, list):
        for item in value:
            _strings(item, whole, found)
    elif isinstance(value, dict):
        for key, item in value.items():
            if whole or key in _TEXT_KEYS:
                _strings(item, whole, found)


def byte_bound(ex: Exchange) -> int | None:
    """An upper bound on the input tokens of a request, free to compute: its body's length in bytes.

    Every token of a byte-level BPE stands for at least one byte of text, JSON spells text with at
    least as many bytes (more when escaped), and a message's 3 tokens of framing are fewer than
    the bytes of its `{"role": ...}`. None when the body was changed by a policy (the bytes read
    are not the ones sent) or was never read.
    """
    if ex.body_changed or ex.body is None or not ex.raw_body:
        return None
    return len(ex.raw_body)
