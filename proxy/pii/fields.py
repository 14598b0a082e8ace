"""Where the text is in each endpoint's JSON: what the upstream reads in a request, and what the
model wrote in a (non-streamed) answer. Walkers yield slots in a fixed order, so pseudonym
numbering, and therefore the redacted body, is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from proxy.pii.actions import PLACEHOLDER
from proxy.pii.engine import Redaction
from proxy.pii.restore import restore


class Slot(NamedTuple):
    """One string inside a JSON document; `json` marks strings that are themselves JSON text
    (tool-call arguments), whose restored values must be JSON-escaped."""

    container: dict[str, Any] | list[Any]
    key: Any
    json: bool = False

    def get(self) -> str:
        return self.container[self.key]  # type: ignore[no-any-return]

    def set(self, value: str) -> None:
        self.container[self.key] = value


def _text(container: Any, key: Any, json: bool = False) -> Iterator[Slot]:
    if isinstance(container, dict | list):
        try:
            value = container[key]
        except (KeyError, IndexError, TypeError):
            return
        if isinstance(value, str) and value:
            yield Slot(container, key, json)


def _parts(content: Any) -> Iterator[Slot]:
    """A `content` that is a string or an array of parts (`text`, `input_text`, `output_text`)."""
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                yield from _text(part, "text")
                if isinstance(part.get("refusal"), str):
                    yield from _text(part, "refusal")


def _content(holder: Any, key: str = "content") -> Iterator[Slot]:
    if not isinstance(holder, dict):
        return
    value = holder.get(key)
    if isinstance(value, str):
        yield from _text(holder, key)
    else:
        yield from _parts(value)


def _tool_calls(message: dict[str, Any]) -> Iterator[Slot]:
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            if isinstance(call, dict):
                yield from _text(call.get("function"), "arguments", json=True)
    yield from _text(message.get("function_call"), "arguments", json=True)


def _strings(container: Any, key: str) -> Iterator[Slot]:
    """A string or a list of strings; token arrays (lists of ints) are left alone."""
    value = container.get(key)
    if isinstance(value, str):
        yield from _text(container, key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                yield from _text(value, index)


def chat_request(body: dict[str, Any]) -> Iterator[Slot]:
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict):
            yield from _content(message)
            yield from _tool_calls(message)


def completions_request(body: dict[str, Any]) -> Iterator[Slot]:
    yield from _strings(body, "prompt")
    yield from _text(body, "suffix")


def embeddings_request(body: dict[str, Any]) -> Iterator[Slot]:
    yield from _strings(body, "input")


def responses_request(body: dict[str, Any]) -> Iterator[Slot]:
    yield from _text(body, "instructions")
    items = body.get("input")
    if isinstance(items, str):
        yield from _text(body, "input")
        return
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict):
            yield from _response_item(item)


def _response_item(item: dict[str, Any]) -> Iterator[Slot]:
    kind = item.get("type")
    if kind in ("function_call", "custom_tool_call"):
        yield from _text(item, "arguments", json=True)
        yield from _text(item, "input")
    elif kind in ("function_call_output", "custom_tool_call_output"):
        yield from _content(item, "output")
    else:
        yield from _content(item)
        yield from _parts(item.get("summary"))      # reasoning items carry text here


def chat_response(body: dict[str, Any]) -> Iterator[Slot]:
    for choice in _list(body.get("choices")):
        message = choice.get("message")
        if isinstance(message, dict):
            yield from _content(message)
            yield from _text(message, "refusal")
            yield from _tool_calls(message)


def completions_response(body: dict[str, Any]) -> Iterator[Slot]:
    for choice in _list(body.get("choices")):
        yield from _text(choice, "text")


def responses_response(body: dict[str, Any]) -> Iterator[Slot]:
    yield from _text(body, "output_text")
    for item in _list(body.get("output")):
        yield from _response_item(item)


def _list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


Walker = Callable[[dict[str, Any]], Iterator[Slot]]
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
    slots = list(walker(body))
    for slot in slots:
        for match in PLACEHOLDER.finditer(slot.get()):
            redaction.pseudonyms.reserve(match.group())
    changed = False
    for slot in slots:
        text = slot.get()
        redacted = redaction.request_text(text)
        if redacted != text:
            slot.set(redacted)
            changed = True
    return changed


def restore_response(endpoint: str, body: dict[str, Any], redaction: Redaction,
                     scan_output: bool) -> bool:
    """Scan (optionally) and restore the model's text in an answer, in place."""
    walker = RESPONSE_WALKERS.get(str(endpoint))
    if walker is None:
        return False
    changed = False
    for slot in list(walker(body)):
        text = slot.get()
        out = redaction.output_text(text) if scan_output else text
        out = restore(out, redaction.pseudonyms, json_escape=slot.json)
        if out != text:
            slot.set(out)
            changed = True
    return changed
