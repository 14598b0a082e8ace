"""An embedder that asks the configured upstream's `/v1/embeddings` instead of a local model.

Requests go through the handler the policy is given (the upstream call), with the upstream's own
key; any failure (status, shape, timeout) becomes `EmbedderUnavailable`, which callers treat as a
miss.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.exchange import Endpoint, Exchange, Reply
from proxy.semantic.embedder import EmbedderUnavailable, Vectors
from proxy.settings import UpstreamConfig

Call = Callable[[Exchange], Awaitable[Reply]]
Route = Callable[[str | None], UpstreamConfig | None]


def internal_exchange(endpoint: Endpoint, path: str, body: dict[str, Any],
                      route: Route | None) -> Exchange:
    """A request the sidecar itself makes to an upstream (embeddings, the judge)."""
    model = body.get("model")
    ex = Exchange(
        request_id=uuid.uuid4().hex, endpoint=endpoint, method="POST", path=path, query="",
        headers=CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"})),
        client_ip="", raw_body=orjson.dumps(body), body=body, model=model,
    )
    ex.upstream = route(model) if route is not None else None
    return ex


class UpstreamEmbedder:
    """Embeddings from `model` at whichever upstream routes it; vectors are re-normalised."""

    def __init__(self, call: Call, route: Route | None, model: str) -> None:
        self._call = call
        self._route = route
        self._model = model

    @property
    def name(self) -> str:
        return f"upstream:{self._model}"

    def _exchange(self, texts: Sequence[str]) -> Exchange:
        body: dict[str, Any] = {"model": self._model, "input": list(texts),
                                "encoding_format": "float"}
        return internal_exchange(Endpoint.EMBEDDINGS, "/v1/embeddings", body, self._route)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        try:
            reply = await self._call(self._exchange(texts))
        except Exception as exc:
            raise EmbedderUnavailable(f"upstream embeddings failed: {type(exc).__name__}") from exc
        if not reply.ok:
            raise EmbedderUnavailable(f"upstream embeddings answered HTTP {reply.status}")
        return _vectors(reply.json(), len(texts))

    async def aclose(self) -> None:
        return None


def _vectors(payload: Any, expected: int) -> Vectors:
    try:
        rows = sorted(payload["data"], key=lambda item: item["index"])
        matrix = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise EmbedderUnavailable("upstream embeddings answer has an unexpected shape") from exc
    if matrix.ndim != 2 or matrix.shape[0] != expected:
        raise EmbedderUnavailable("upstream embeddings answer has an unexpected shape")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit: Vectors = (matrix / np.clip(norms, 1e-12, None)).astype(np.float32)
    return unit
