"""Where the text is in each endpoint's JSON: what the upstream reads in a request, and what the
model wrote in a (non-streamed) answer. Walkers list slots in a fixed order, so pseudonym
numbering, and therefore the redacted body, is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from proxy.pii.actions import PLACEHOLDER
from proxy.pii.engine import Redaction
from proxy.pii.restore import restore

# One string inside a JSON document: its container, its key or index, and whether the string is
# itself JSON text (tool-call arguments), whose restored values must be JSON-escaped. Walkers
# append slots to a list (cheaper than nested generators, and this runs on every request).
Slot = tuple[Any, Any, bool]
Slots = list[Slot]


def _text(out: Slots, container: Any, key: str, json: bool = False) -> None:
    if isinstance(container, dict):
        value = container.get(key)
        if isinstance(value, str) and value:
            out.append((container, key, json))


def _parts(out: Slots, content: Any) -> None:
    """A `content` that is a string or an array of parts (`text`, `input_text`, `output_text`)."""
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                _text(out, part, "text")
                if isinstance(part.get("refusal"), str):
                    _text(out, part, "refusal")


def _content(out: Slots, holder: Any, key: str = "content") -> None:
    if not isinstance(holder, dict):
        return
    value = holder.get(key)
    if isinstance(value, str):
        if value:
            out.append((holder, key, False))
    else:
        _parts(out, value)


def _tool_calls(out: Slots, message: dict[str, Any]) -> None:
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            if isinstance(call, dict):
                _text(out, call.get("function"), "arguments", json=True)
    _text(out, message.get("function_call"), "arguments", json=True)


def _strings(out: Slots, container: dict[str, Any], key: str) -> None:
    """A string or a list of strings; token arrays (lists of ints) are left alone."""
    value = container.get(key)
    if isinstance(value, str):
        _text(out, container, key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str) and item:
                out.append((value, index, False))


def chat_request(body: dict[str, Any]) -> Slots:
    out: Slots = []
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict):
            _message(out, message)
    return out


def _message(out: Slots, message: dict[str, Any]) -> None:
    """A chat message's text: `_content`, inlined for the usual string, then tool calls."""
    content = message.get("content")
    if isinstance(content, str):
        if content:
            out.append((message, "content", False))
    else:
        _parts(out, content)
    if "tool_calls" in message or "function_call" in message:
        _tool_calls(out, message)


def completions_request(body: dict[str, Any]) -> Slots:
    out: Slots = []
    _strings(out, body, "prompt")
    _text(out, body, "suffix")
    return out


def embeddings_request(body: dict[str, Any]) -> Slots:
    out: Slots = []
    _strings(out, body, "input")
    return out


def responses_request(body: dict[str, Any]) -> Slots:
    out: Slots = []
    _text(out, body, "instructions")
    items = body.get("input")
    if isinstance(items, str):
        _text(out, body, "input")
        return out
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict):
            _response_item(out, item)
    return out


def _response_item(out: Slots, item: dict[str, Any]) -> None:
    kind = item.get("type")
    if kind in ("function_call", "custom_tool_call"):
        _text(out, item, "arguments", json=True)
        _text(out, item, "input")
    elif kind in ("function_call_output", "custom_tool_call_output"):
        _content(out, item, "output")
    else:
        _content(out, item)
        _parts(out, item.get("summary"))      # reasoning items carry text here


def chat_response(body: dict[str, Any]) -> Slots:
    out: Slots = []
    for choice in _list(body.get("choices")):
        message = choice.get("message")
        if isinstance(message, dict):
            _content(out, message)
            _text(out, message, "refusal")
            _tool_calls(out, message)
    return out


def completions_response(body: dict[str, Any]) -> Slots:
    out: Slots = []
    for choice in _list(body.get("choices")):
        _text(out, choice, "text")
    return out


def responses_response(body: dict[str, Any]) -> Slots:
    out: Slots = []
    _text(out, body, "output_text")
    for item in _list(body.get("output")):
        _response_item(out, item)
    return out


def _list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


Walker = Callable[[dict[str, Any]], Slots]
REQUEST_WALKERS: Mapping[str, Walker] = MappingProxyType({
    "chat.completions": chat_request,
    "completions": completions_request,
    "embeddings": embeddings_request,
    "responses": responses_request,
})
RESPONSE_WALKERS: Mapping[str, Walker] = MappingProxyType({
    "chat.completions": chat_response,
    "completions": completions_response,
    "responses": responses_response,
})


def redact_request(endpoint: str, body: dict[str, Any], redaction: Redaction) -> bool:
    """Redact every text the upstream reads, in place; True when anything changed."""
    walker = REQUEST_WALKERS.get(str(endpoint))
    if walker is None:
        return False
    slots = walker(body)
    texts = [container[key] for container, key, _ in slots]
    for text in texts:
        if "<" in text:
            for match in PLACEHOLDER.finditer(text):
                redaction.pseudonyms.reserve(match.group())
    changed = False
    for (container, key, _), text in zip(slots, texts, strict=True):
        redacted = redaction.request_text(text)
        if redacted != text:
            container[key] = redacted
            changed = True
    return changed


def restore_response(endpoint: str, body: dict[str, Any], redaction: Redaction,
                     scan_output: bool) -> bool:
    """Scan (optionally) and restore the model's text in an answer, in place."""
    walker = RESPONSE_WALKERS.get(str(endpoint))
    if walker is None:
        return False
    changed = False
    pseudonyms = redaction.pseudonyms if len(redaction.pseudonyms) else None
    for container, key, json in walker(body):
        text = container[key]
        out = redaction.output_text(text) if scan_output else text
        if pseudonyms is not None:
            out = restore(out, pseudonyms, json_escape=json)
        if out != text:
            container[key] = out
            changed = True
    return changed
