"""GenAI semantic-convention attributes of one upstream call: read from the request body, the JSON
answer or the few stream events that carry them (the others are never parsed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
from opentelemetry.util.types import AttributeValue

from proxy.exchange import Endpoint, Exchange
from proxy.wire import sse

Attributes = dict[str, AttributeValue]

OPERATIONS: Mapping[Endpoint, str] = {
    Endpoint.CHAT: ga.GenAiOperationNameValues.CHAT.value,
    Endpoint.RESPONSES: ga.GenAiOperationNameValues.CHAT.value,
    Endpoint.COMPLETIONS: ga.GenAiOperationNameValues.TEXT_COMPLETION.value,
    Endpoint.EMBEDDINGS: ga.GenAiOperationNameValues.EMBEDDINGS.value,
}

# body key -> attribute, for the numeric sampling parameters copied as they are.
_NUMBERS = (
    ("temperature", ga.GEN_AI_REQUEST_TEMPERATURE),
    ("top_p", ga.GEN_AI_REQUEST_TOP_P),
    ("seed", ga.GEN_AI_REQUEST_SEED),
    ("frequency_penalty", ga.GEN_AI_REQUEST_FREQUENCY_PENALTY),
    ("presence_penalty", ga.GEN_AI_REQUEST_PRESENCE_PENALTY),
)
_MAX_TOKENS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_FINAL_RESPONSE_EVENTS = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def request_attributes(ex: Exchange, operation: str) -> Attributes:
    """gen_ai.request.* from the body the upstream receives."""
    attrs: Attributes = {ga.GEN_AI_OPERATION_NAME: operation}
    body = ex.body or {}
    if ex.model:
        attrs[ga.GEN_AI_REQUEST_MODEL] = ex.model
    for key, name in _NUMBERS:
        value = body.get(key)
        if _number(value):
            attrs[name] = value
    for key in _MAX_TOKENS:
        if _number(body.get(key)):
            attrs[ga.GEN_AI_REQUEST_MAX_TOKENS] = body[key]
            break
    choices = body.get("n")
    if isinstance(choices, int) and choices != 1:
        attrs[ga.GEN_AI_REQUEST_CHOICE_COUNT] = choices
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        attrs[ga.GEN_AI_REQUEST_STOP_SEQUENCES] = stop
    if ex.endpoint is not Endpoint.EMBEDDINGS:
        attrs[ga.GEN_AI_REQUEST_STREAM] = ex.stream
    elif isinstance(body.get("encoding_format"), str):
        attrs[ga.GEN_AI_REQUEST_ENCODING_FORMATS] = [body["encoding_format"]]
    return attrs


def usage_tokens(usage: Mapping[str, Any] | None) -> tuple[int | None, int | None, Attributes]:
    """(input tokens, output tokens, gen_ai.usage.* attributes) from an OpenAI `usage` object.

    Chat and embeddings say prompt/completion, Responses says input/output; both count cached
    input tokens inside the input, as the convention wants.
    """
    if not usage:
        return None, None, {}
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    attrs: Attributes = {}
    tokens_in = prompt if isinstance(prompt, int) else None
    tokens_out = completion if isinstance(completion, int) else None
    if tokens_in is not None:
        attrs[ga.GEN_AI_USAGE_INPUT_TOKENS] = tokens_in
    if tokens_out is not None:
        attrs[ga.GEN_AI_USAGE_OUTPUT_TOKENS] = tokens_out
    cached = _detail(usage, ("prompt_tokens_details", "input_tokens_details"), "cached_tokens")
    if cached is not None:
        attrs[ga.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = cached
    reasoning = _detail(usage, ("completion_tokens_details", "output_tokens_details"),
                        "reasoning_tokens")
    if reasoning is not None:
        attrs[ga.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = reasoning
    return tokens_in, tokens_out, attrs


def _detail(usage: Mapping[str, Any], parents: tuple[str, ...], key: str) -> int | None:
    for parent in parents:
        details = usage.get(parent)
        if isinstance(details, dict) and isinstance(details.get(key), int):
            value: int = details[key]
            return value
    return None


def response_attributes(payload: Any) -> Attributes:
    """gen_ai.response.* of a JSON answer (chat, completions, embeddings or a Responses object)."""
    if not isinstance(payload, dict):
        return {}
    if payload.get("object") == "response" or str(payload.get("type") or "").startswith("response."):
        payload = payload.get("response", payload)
    attrs: Attributes = {}
    if isinstance(payload.get("id"), str):
        attrs[ga.GEN_AI_RESPONSE_ID] = payload["id"]
    if isinstance(payload.get("model"), str):
        attrs[ga.GEN_AI_RESPONSE_MODEL] = payload["model"]
    reasons = finish_reasons(payload)
    if reasons:
        attrs[ga.GEN_AI_RESPONSE_FINISH_REASONS] = reasons
    return attrs


def finish_reasons(payload: Mapping[str, Any]) -> list[str]:
    choices = payload.get("choices")
    if isinstance(choices, list):
        return [c["finish_reason"] for c in choices
                if isinstance(c, dict) and isinstance(c.get("finish_reason"), str)]
    status = payload.get("status")
    if status == "completed":
        return ["stop"]
    if status == "incomplete":
        details = payload.get("incomplete_details") or {}
        return [str(details.get("reason") or "incomplete")]
    return [status] if isinstance(status, str) else []


class StreamFacts:
    """What a stream tells about its answer, read from the first event, the events that carry a
    finish reason, and the final Responses event; every other event passes unparsed."""

    __slots__ = ("finish", "id", "last", "model", "seen")

    def __init__(self) -> None:
        self.id: str | None = None
        self.model: str | None = None
        self.finish: list[str] = []
        self.seen = False
        self.last = b""

    def feed(self, frame: bytes) -> None:
        self.last = frame
        if self.seen and b'"finish_reason":"' not in frame and not any(
                marker in frame for marker in _FINAL_RESPONSE_EVENTS):
            return
        try:
            payload = sse.frame_json(frame)
        except sse.SSEError:
            return
        if not isinstance(payload, dict):
            return
        self.seen = True
        if isinstance(payload.get("response"), dict):
            payload = payload["response"]
        if self.id is None and isinstance(payload.get("id"), str):
            self.id = payload["id"]
        if self.model is None and isinstance(payload.get("model"), str):
            self.model = payload["model"]
        self.finish.extend(finish_reasons(payload) if "status" in payload or "choices" in payload
                           else [])

    def attributes(self) -> Attributes:
        attrs: Attributes = {}
        if self.id is not None:
            attrs[ga.GEN_AI_RESPONSE_ID] = self.id
        if self.model is not None:
            attrs[ga.GEN_AI_RESPONSE_MODEL] = self.model
        finish = [r for r in self.finish if r not in ("in_progress",)]
        if finish:
            attrs[ga.GEN_AI_RESPONSE_FINISH_REASONS] = finish
        return attrs

    def error_code(self) -> str:
        """The code of the error event a broken stream ends with (see proxy.upstream)."""
        try:
            payload = sse.frame_json(self.last)
        except sse.SSEError:
            return "stream_error"
        error = payload.get("error") if isinstance(payload, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        return code if isinstance(code, str) else "stream_error"


def error_code(status: int, body: bytes | None) -> str:
    """error.type of an upstream HTTP error: the envelope's code, else the status."""
    if body and len(body) < 65536:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        error = payload.get("error") if isinstance(payload, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        if isinstance(code, str) and code:
            return code
    return str(status)


def input_messages(ex: Exchange) -> str | None:
    """The request's messages as the upstream receives them (after PII redaction), as JSON."""
    body = ex.body or {}
    for key in ("messages", "input", "prompt"):
        if key in body:
            return orjson.dumps(body[key]).decode()
    return None


def output_messages(payload: Any) -> str | None:
    """The answer's messages (choices, or a Responses object's output) as JSON."""
    if not isinstance(payload, dict):
        return None
    if isinstance(payload.get("choices"), list):
        out = [{"message": c.get("message"), "text": c.get("text"),
                "finish_reason": c.get("finish_reason")}
               for c in payload["choices"] if isinstance(c, dict)]
        return orjson.dumps(out).decode()
    if isinstance(payload.get("output"), list):
        return orjson.dumps(payload["output"]).decode()
    return None
