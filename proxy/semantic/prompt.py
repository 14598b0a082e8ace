"""What a chat request is compared on: the last user message; everything else must match exactly.

`split` returns the text to embed and the rest of the request (model, system prompt, earlier
turns, tools, sampling parameters) to be hashed exactly, or why the request is not cacheable here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PromptKey:
    """The compared text, and the request without it (everything that must match exactly)."""

    text: str
    rest: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Skip:
    """Why this request bypasses the semantic cache."""

    reason: str


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None  # images, audio, files: the text alone does not decide the answer
            parts.append(str(part.get("text", "")))
        return "\n".join(parts)
    return None


def split(body: dict[str, Any], max_turns: int, tool_turns: bool) -> PromptKey | Skip:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return Skip("no_messages")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return Skip("last_not_user")
    if not tool_turns and any(
        isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls"))
        for m in messages
    ):
        return Skip("tool_calls")
    if sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "user") > max_turns:
        return Skip("too_many_turns")
    if isinstance(body.get("n"), int) and body["n"] > 1:
        return Skip("n")
    text = _text_of(last.get("content"))
    if text is None or not text.strip():
        return Skip("non_text")
    final = {k: v for k, v in last.items() if k != "content"}
    return PromptKey(text=text.strip(), rest={**body, "messages": [*messages[:-1], final]})
