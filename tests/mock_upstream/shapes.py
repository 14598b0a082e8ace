"""Deterministic OpenAI-shaped payloads for the mock upstream: chat and legacy completions.

Answers are derived from the request ("Echo: <last user text>") so tests can predict them exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

JSON = dict[str, Any]


class Meta(NamedTuple):
    """What every object of one reply shares: id, creation time (unix seconds), model."""

    id: str
    created: int
    model: str


class ToolCall(NamedTuple):
    """One scripted function call; `arguments` is the JSON text the model "wrote"."""

    name: str
    arguments: str


@dataclass(frozen=True)
class Reply:
    """A scripted reply: any field left None falls back to the deterministic default."""

    content: str | None = None
    pieces: tuple[str, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class Choice:
    """One resolved choice: its text split into stream pieces, and why it stopped."""

    index: int
    pieces: tuple[str, ...]
    finish_reason: str
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True)
class Plan:
    """Everything a reply will say, resolved once and rendered as JSON or as a stream."""

    choices: tuple[Choice, ...]
    prompt_tokens: int
    completion_tokens: int
    extra: JSON = field(default_factory=dict)

    def usage(self) -> JSON:
        return chat_usage(self.prompt_tokens, self.completion_tokens)


def count_tokens(text: str) -> int:
    """The mock's tokeniser: whitespace-separated words (deterministic, not tiktoken)."""
    return len(text.split())


def split_pieces(text: str, n: int) -> tuple[str, ...]:
    """Split `text` into at most `n` non-empty pieces of near-equal length that join back to it."""
    n = max(1, min(n, len(text)))
    if not text:
        return ()
    size, extra = divmod(len(text), n)
    pieces, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return tuple(pieces)


def content_text(content: Any) -> str:
    """Text of a message `content`: a string, or a list of parts with `text`."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


def last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def prompt_text(prompt: Any) -> str:
    """Legacy completions `prompt`: a string, a token array, or a list of either (last wins)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) for t in prompt):
            return " ".join(str(t) for t in prompt)
        return prompt_text(prompt[-1])
    return ""


def messages_tokens(messages: Any) -> int:
    """Prompt tokens of a chat request: words of every message plus 3 per message."""
    if not isinstance(messages, list):
        return 0
    return sum(3 + count_tokens(content_text(m.get("content"))) for m in messages if isinstance(m, Mapping))


def answer(text: str, index: int) -> str:
    return f"Echo: {text}" if index == 0 else f"Echo {index}: {text}"


def max_tokens_of(body: Mapping[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value >= 0:
            return value
    return None


def plan_reply(
    body: Mapping[str, Any], user_text: str, prompt_tokens: int, reply: Reply | None, chunks: int
) -> Plan:
    """Resolve what to answer: the script if any, else "Echo: ...", honouring `n` and max tokens."""
    reply = reply or Reply()
    n = body.get("n")
    count = n if isinstance(n, int) and n > 0 else 1
    tools = reply.tool_calls if body.get("tools") else ()
    choices = tuple(_choice(i, user_text, reply, max_tokens_of(body), tools, chunks) for i in range(count))
    completion = sum(
        count_tokens(c.text) + sum(count_tokens(t.arguments) + 1 for t in c.tool_calls) for c in choices
    )
    return Plan(
        choices,
        reply.prompt_tokens if reply.prompt_tokens is not None else prompt_tokens,
        reply.completion_tokens if reply.completion_tokens is not None else completion,
    )


def _choice(
    index: int,
    user_text: str,
    reply: Reply,
    limit: int | None,
    tools: tuple[ToolCall, ...],
    chunks: int,
) -> Choice:
    # Tool calls exist only when the request offered tools, as with a real model.
    if tools:
        return Choice(index, (), reply.finish_reason or "tool_calls", tools)
    if reply.pieces is not None:
        return Choice(index, reply.pieces, reply.finish_reason or "stop")
    text = reply.content if reply.content is not None else answer(user_text, index)
    finish = "stop"
    if limit is not None and count_tokens(text) > limit:
        text, finish = " ".join(text.split()[:limit]), "length"
    return Choice(index, split_pieces(text, chunks), reply.finish_reason or finish)


def chat_usage(prompt: int, completion: int) -> JSON:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def call_id(meta: Meta, choice: int, position: int) -> str:
    return f"call_{meta.id.rsplit('-', 1)[-1]}_{choice}_{position}"


def _tool_calls_json(meta: Meta, choice: Choice) -> list[JSON]:
    return [
        {
            "id": call_id(meta, choice.index, i),
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for i, call in enumerate(choice.tool_calls)
    ]


def chat_json(plan: Plan, meta: Meta) -> JSON:
    choices = []
    for choice in plan.choices:
        message: JSON = {
            "role": "assistant",
            "content": None if choice.tool_calls else choice.text,
            "refusal": None,
            "annotations": [],
        }
        if choice.tool_calls:
            message["tool_calls"] = _tool_calls_json(meta, choice)
        choices.append(
            {
                "index": choice.index,
                "message": message,
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
        )
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": plan.usage(),
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
    }


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def _chunk(meta: Meta, choices: list[JSON], include_usage: bool, usage: JSON | None = None) -> JSON:
    chunk: JSON = {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
        "choices": choices,
    }
    if include_usage:
        chunk["usage"] = usage
    return chunk


def _delta(index: int, delta: JSON, finish: str | None = None) -> JSON:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


def _choice_deltas(meta: Meta, choice: Choice) -> Iterable[JSON]:
    """One choice's deltas in OpenAI's order: role, then content or tool calls, then {}."""
    first: JSON = {
        "role": "assistant",
        "content": None if choice.tool_calls else "",
        "refusal": None,
    }
    if not choice.tool_calls:
        yield _delta(choice.index, first)
        for piece in choice.pieces:
            yield _delta(choice.index, {"content": piece})
    for i, call in enumerate(choice.tool_calls):
        head = {
            "index": i,
            "id": call_id(meta, choice.index, i),
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        yield _delta(choice.index, {**first, "tool_calls": [head]} if i == 0 else {"tool_calls": [head]})
        for part in split_pieces(call.arguments, 3):
            yield _delta(choice.index, {"tool_calls": [{"index": i, "function": {"arguments": part}}]})
    yield _delta(choice.index, {}, choice.finish_reason)


def chat_events(plan: Plan, meta: Meta, include_usage: bool) -> list[bytes]:
    """Every SSE event of a streamed chat completion, `data: [DONE]` included."""
    events = [
        sse(_chunk(meta, [delta], include_usage))
        for choice in plan.choices
        for delta in _choice_deltas(meta, choice)
    ]
    if include_usage:
        events.append(sse(_chunk(meta, [], True, plan.usage())))
    events.append(DONE)
    return events


def completion_json(plan: Plan, meta: Meta) -> JSON:
    return {
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": "fp_mock",
        "choices": [
            {"text": c.text, "index": c.index, "logprobs": None, "finish_reason": c.finish_reason}
            for c in plan.choices
        ],
        "usage": chat_usage(plan.prompt_tokens, plan.completion_tokens),
    }


def completion_events(plan: Plan, meta: Meta, include_usage: bool) -> list[bytes]:
    """Legacy completions stream: one text chunk per piece, a finishing chunk, usage, [DONE]."""

    def chunk(choices: list[JSON], usage: JSON | None = None) -> bytes:
        body: JSON = {
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage
        return sse(body)

    events = []
    for c in plan.choices:
        for piece in c.pieces:
            events.append(chunk([_text_choice(c.index, piece, None)]))
        events.append(chunk([_text_choice(c.index, "", c.finish_reason)]))
    if include_usage:
        events.append(chunk([], chat_usage(plan.prompt_tokens, plan.completion_tokens)))
    events.append(DONE)
    return events


def _text_choice(index: int, text: str, finish: str | None) -> JSON:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def models_json(models: Sequence[str], created: int) -> JSON:
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": created, "owned_by": "mock"} for m in models],
    }
