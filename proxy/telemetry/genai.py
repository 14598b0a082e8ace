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

# Sequences are tuples, as the SDK's own spans keep them: hashable, so the encoder can
# remember their encoding.
Attributes = dict[str, AttributeValue]

# By the endpoint's value: looking a (str) enum member up calls its Python-level __hash__.
OPERATIONS: Mapping[str, str] = {
    Endpoint.CHAT.value: ga.GenAiOperationNameValues.CHAT.value,
    Endpoint.RESPONSES.value: ga.GenAiOperationNameValues.CHAT.value,
    Endpoint.COMPLETIONS.value: ga.GenAiOperationNameValues.TEXT_COMPLETION.value,
    Endpoint.EMBEDDINGS.value: ga.GenAiOperationNameValues.EMBEDDINGS.value,
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
# Body keys that make request attributes beyond operation, model and stream (most bodies have none).
_PARAMETERS = frozenset([*(key for key, _ in _NUMBERS), *_MAX_TOKENS, "n", "stop"])
_FINAL_RESPONSE_EVENTS = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def request_attributes(ex: Exchange, operation: str, common: Attributes,
                       own: Attributes) -> None:
    """gen_ai.request.* from the body the upstream receives: the sampling parameters (numbers
    of any type, so never `common`) to `own`, the rest to `common`."""
    common[ga.GEN_AI_OPERATION_NAME] = operation
    body = ex.body or {}
    if ex.model:
        common[ga.GEN_AI_REQUEST_MODEL] = ex.model
    if not _PARAMETERS.isdisjoint(body):
        _parameters(body, own)
    if ex.endpoint is not Endpoint.EMBEDDINGS:
        common[ga.GEN_AI_REQUEST_STREAM] = ex.stream
    elif isinstance(body.get("encoding_format"), str):
        common[ga.GEN_AI_REQUEST_ENCODING_FORMATS] = (body["encoding_format"],)


def _parameters(body: Mapping[str, Any], attrs: Attributes) -> None:
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
        attrs[ga.GEN_AI_REQUEST_STOP_SEQUENCES] = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        attrs[ga.GEN_AI_REQUEST_STOP_SEQUENCES] = tuple(stop)


def usage_tokens(usage: Mapping[str, Any], own: Attributes) -> tuple[int | None, int | None]:
    """(input tokens, output tokens) from an OpenAI `usage` object, and its gen_ai.usage.*
    attributes added to `own`.

    Chat and embeddings say prompt/completion, Responses says input/output; both count cached
    input tokens inside the input, as the convention wants.
    """
    prompt = usage["prompt_tokens"] if "prompt_tokens" in usage else usage.get("input_tokens")
    completion = (usage["completion_tokens"] if "completion_tokens" in usage
                  else usage.get("output_tokens"))
    tokens_in = prompt if isinstance(prompt, int) else None
    tokens_out = completion if isinstance(completion, int) else None
    if tokens_in is not None:
        own[ga.GEN_AI_USAGE_INPUT_TOKENS] = tokens_in
    if tokens_out is not None:
        own[ga.GEN_AI_USAGE_OUTPUT_TOKENS] = tokens_out
    for chat, responses, key, name in _DETAILS:
        details = usage.get(chat)
        if not (isinstance(details, dict) and key in details and isinstance(details[key], int)):
            details = usage.get(responses)
        if isinstance(details, dict) and key in details and isinstance(details[key], int):
            own[name] = details[key]
    return tokens_in, tokens_out


# (chat parent, Responses parent, key, attribute) of the token details.
_DETAILS = (
    ("prompt_tokens_details", "input_tokens_details", "cached_tokens",
     ga.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
    ("completion_tokens_details", "output_tokens_details", "reasoning_tokens",
     ga.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS),
)


def response_attributes(payload: Any, common: Attributes, own: Attributes) -> None:
    """gen_ai.response.* of a JSON answer (chat, completions, embeddings or a Responses object):
    the id to `own`, model and finish reasons to `common`."""
    if not isinstance(payload, dict):
        return
    if payload.get("object") == "response" or (
            "type" in payload and str(payload["type"] or "").startswith("response.")):
        payload = payload.get("response", payload)
    if "id" in payload and isinstance(payload["id"], str):
        own[ga.GEN_AI_RESPONSE_ID] = payload["id"]
    if "model" in payload and isinstance(payload["model"], str):
        common[ga.GEN_AI_RESPONSE_MODEL] = payload["model"]
    choices = payload.get("choices")
    if isinstance(choices, list):  # the common case, without a call per choice
        reasons: list[str] = []
        for choice in choices:
            if isinstance(choice, dict) and "finish_reason" in choice and isinstance(
                    choice["finish_reason"], str):
                reasons.append(choice["finish_reason"])
    else:
        reasons = finish_reasons(payload)
    if reasons:
        common[ga.GEN_AI_RESPONSE_FINISH_REASONS] = tuple(reasons)


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

    def attributes(self, common: Attributes, own: Attributes) -> None:
        """As `response_attributes`, for the stream's answer."""
        if self.id is not None:
            own[ga.GEN_AI_RESPONSE_ID] = self.id
        if self.model is not None:
            common[ga.GEN_AI_RESPONSE_MODEL] = self.model
        finish = tuple(r for r in self.finish if r != "in_progress")
        if finish:
            common[ga.GEN_AI_RESPONSE_FINISH_REASONS] = finish

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
