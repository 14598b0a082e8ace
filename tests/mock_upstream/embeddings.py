"""Deterministic embeddings for the mock upstream, float or base64, with `dimensions`.

Vectors hash each word into a bucket (feature hashing) plus a little of the whole text's hash, so a
text always gets the same unit vector and texts sharing words are close (semantic cache tests).
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from collections.abc import Mapping
from typing import Any

from tests.mock_upstream.shapes import JSON, count_tokens

WORD = re.compile(r"\w+")


def _bucket(token: str, dims: int) -> tuple[int, float]:
    value = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
    return value % dims, 1.0 if (value >> 40) & 1 else -1.0


def vector(text: str, dims: int) -> list[float]:
    """A unit vector for `text`, rounded to float32 so float and base64 answers agree exactly."""
    acc = [0.0] * dims
    for word in WORD.findall(text.lower()):
        index, sign = _bucket(word, dims)
        acc[index] += sign
    # The whole-text component keeps different texts with the same words apart.
    index, sign = _bucket("\x00" + text, dims)
    acc[index] += 0.25 * sign
    norm = math.sqrt(sum(x * x for x in acc))
    packed = struct.pack(f"<{dims}f", *(x / norm for x in acc))
    return list(struct.unpack(f"<{dims}f", packed))


def _inputs(value: Any) -> list[tuple[str, int]]:
    """(text, tokens) per input: a string, a token array, or a list of either."""
    if isinstance(value, str):
        return [(value, count_tokens(value))]
    if isinstance(value, list) and value and all(isinstance(t, int) for t in value):
        return [(" ".join(map(str, value)), len(value))]
    if isinstance(value, list):
        return [item for v in value for item in _inputs(v)]
    return []


def default_dimensions(model: str) -> int:
    return 3072 if "large" in model else 1536


def embeddings_json(body: Mapping[str, Any], model: str) -> JSON | str:
    """The embeddings list, or an error message naming what is wrong with the request."""
    inputs = _inputs(body.get("input"))
    if not inputs:
        return "'input' must be a non-empty string, token array, or list of them"
    dims = body.get("dimensions")
    if dims is None:
        dims = default_dimensions(model)
    if not isinstance(dims, int) or dims < 1:
        return "'dimensions' must be a positive integer"
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, (text, _) in enumerate(inputs):
        vec = vector(text, dims)
        embedding: list[float] | str = (
            base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if as_base64 else vec
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(t for _, t in inputs)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
