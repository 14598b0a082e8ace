"""Reading a client's request body: JSON, the fields policies rely on, and OpenAI-style 400s.

Only what the sidecar itself uses is checked here (types of model, stream, messages, token caps,
...); everything else is the upstream's business and passes through untouched.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import RequestError
from proxy.exchange import Endpoint

_ENDPOINTS = {
    "/v1/chat/completions": Endpoint.CHAT,
    "/v1/completions": Endpoint.COMPLETIONS,
    "/v1/embeddings": Endpoint.EMBEDDINGS,
    "/v1/responses": Endpoint.RESPONSES,
    "/v1/models": Endpoint.MODELS,
}

API_PATHS = tuple(_ENDPOINTS)  # routed by exact path, ahead of the `/v1/...` catch-all

_NUMBER = (int, float)
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a string"),
    "stream": ((bool,), "a boolean"),
    "messages": ((list,), "an array"),
    "max_tokens": ((int,), "an integer"),
    "max_completion_tokens": ((int,), "an integer"),
    "max_output_tokens": ((int,), "an integer"),
    "n": ((int,), "an integer"),
    "seed": ((int,), "an integer"),
    "temperature": (_NUMBER, "a number"),
    "top_p": (_NUMBER, "a number"),
    "stream_options": ((dict,), "an object"),
    "user": ((str,), "a string"),
    "metadata": ((dict,), "an object"),
    "tools": ((list,), "an array"),
    "instructions": ((str,), "a string"),
    "dimensions": ((int,), "an integer"),
    "encoding_format": ((str,), "a string"),
}
_REQUIRED = {
    Endpoint.CHAT: ("model", "messages"),
    Endpoint.COMPLETIONS: ("model", "prompt"),
    Endpoint.EMBEDDINGS: ("model", "input"),
    Endpoint.RESPONSES: ("model",),
}
_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
               list: "an array", dict: "an object", type(None): "null"}


def endpoint_of(method: str, path: str) -> Endpoint:
    endpoint = _ENDPOINTS.get(path)
    if endpoint is None or method != ("GET" if endpoint is Endpoint.MODELS else "POST"):
        return Endpoint.PASSTHROUGH
    return endpoint


def parse_body(endpoint: Endpoint, raw: bytes) -> dict[str, Any]:
    """The JSON object of a request to one of the API endpoints, with its key fields checked."""
    if not raw or raw.isspace():
        raise RequestError("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestError(
            "We could not parse the JSON body of your request: it is not valid UTF-8 JSON.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise RequestError(
            f"The JSON body must be an object, not {_TYPE_NAMES.get(type(body), 'a value')}.",
            code="invalid_type",
        )
    for name in _REQUIRED.get(endpoint, ()):
        if body.get(name) is None:
            raise RequestError(f"Missing required parameter: '{name}'.", param=name,
                               code="missing_required_parameter")
    for name, value in body.items():
        expected = _TYPES.get(name)
        if expected is not None and value is not None and not _is(value, expected[0]):
            got = _TYPE_NAMES.get(type(value), "another type")
            raise RequestError(
                f"Invalid type for '{name}': expected {expected[1]}, but got {got} instead.",
                param=name, code="invalid_type",
            )
    if endpoint is Endpoint.CHAT:
        _check_messages(body["messages"])
    return body


def _is(value: Any, types: tuple[type, ...]) -> bool:
    # bool is an int in Python, never in JSON
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _check_messages(messages: list[Any]) -> None:
    if not messages:
        raise RequestError("'messages' must contain at least one message.", param="messages",
                           code="invalid_value")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(
                f"Invalid value for 'messages[{index}]': each message must be an object with a "
                "string 'role'.",
                param=f"messages[{index}]", code="invalid_type",
            )
