"""Embeddings cached item by item: each input (text or token array) is its own entry, keyed by
model, every other parameter (dimensions, encoding_format, ...) and the item itself.

A batch with some items cached sends only the missing ones upstream and answers in the original
order; `usage` then counts only what went upstream (a batch answered wholly from cache reports 0).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from proxy.cache.entries import Entry, pack_entry, unpack_entry
from proxy.cache.keys import canonical_bytes, digest, entry_key
from proxy.exchange import Endpoint, Exchange, Reply
from proxy.pipeline import Clock, Handler
from proxy.state.base import KVStore

NOT_IN_KEY = frozenset({"input", "user", "metadata"})
_NO_USAGE = {"prompt_tokens": 0, "total_tokens": 0}


def split_input(value: Any) -> list[Any] | None:
    """The items of an embeddings `input`: a string, a token array, or a list of either.

    None for anything else (mixed or empty lists): such requests are not cached.
    """
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if all(_is_token(v) for v in value):
        return [value]
    if all(isinstance(v, str) for v in value):
        return list(value)
    if all(isinstance(v, list) and v and all(_is_token(t) for t in v) for v in value):
        return list(value)
    return None


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class EmbeddingCache:
    """Looks up every item at once, asks upstream for the missing ones only, stores them."""

    def __init__(self, store: KVStore, clock: Clock, version: int) -> None:
        self._store = store
        self._clock = clock
        self._version = version

    def item_keys(self, ex: Exchange, namespace: str, scope: str, items: Sequence[Any]) -> list[str]:
        assert ex.body is not None
        upstream = ex.upstream.name if ex.upstream is not None else ""
        head = "|".join((ex.endpoint.value, upstream, ex.model or "", ex.query)).encode()
        params = canonical_bytes(ex.body, NOT_IN_KEY)
        return [entry_key("e", self._version, namespace, ex.model or "", scope,
                          digest(head, params, orjson.dumps(item))) for item in items]

    async def __call__(self, ex: Exchange, call_next: Handler, namespace: str, scope: str,
                       lookup: bool, ttl: float) -> Reply:
        assert ex.body is not None
        items = split_input(ex.body.get("input"))
        if items is None:
            ex.reply_headers["x-sidecar-cache"] = "bypass"
            return await call_next(ex)
        keys = self.item_keys(ex, namespace, scope, items)
        unique = list(dict.fromkeys(keys))
        cached: dict[str, Entry] = {}
        if lookup:
            for key, raw in zip(unique, await self._store.get_many(unique), strict=True):
                entry = unpack_entry(raw)
                if entry is not None and entry.endpoint is Endpoint.EMBEDDINGS:
                    cached[key] = entry
        missing = [key for key in unique if key not in cached]
        ex.reply_headers["x-sidecar-cache-items"] = f"{len(keys) - len(missing)}/{len(keys)}"
        if not missing:
            ex.reply_headers["x-sidecar-cache"] = "hit"
            ex.note("cache", result="hit", items=len(keys))
            return self._answer(keys, cached, ex.model, _NO_USAGE, "hit")
        ex.reply_headers["x-sidecar-cache"] = "miss"
        ex.note("cache", result="miss", items=len(keys), missing=len(missing))
        if len(missing) < len(keys):
            by_key = dict(zip(keys, items, strict=True))
            ex.replace_body({**ex.body, "input": [by_key[key] for key in missing]})
        reply = await call_next(ex)
        payload = reply.json() if reply.status == 200 and reply.stream is None else None
        vectors = _vectors(payload, len(missing))
        if vectors is None:
            return reply
        now = self._clock.time()
        fresh = {key: Entry(Endpoint.EMBEDDINGS, now, raw)
                 for key, raw in zip(missing, vectors, strict=True)}
        if ttl > 0:
            await asyncio.gather(*(self._store.set(k, pack_entry(*e), ttl)
                                   for k, e in fresh.items()))
        if len(missing) == len(keys):
            return reply  # nothing came from the cache: the upstream's answer as it is
        assert isinstance(payload, dict)
        return self._answer(keys, {**cached, **fresh}, payload.get("model", ex.model),
                            payload.get("usage"), "miss", reply.headers)

    def _answer(self, keys: Sequence[str], entries: Mapping[str, Entry], model: Any, usage: Any,
                label: str, headers: Mapping[str, str] | None = None) -> Reply:
        data = b",".join(b'{"object":"embedding","index":%d,"embedding":%b}' % (i, entries[k].body)
                         for i, k in enumerate(keys))
        body = (b'{"object":"list","data":[' + data + b'],"model":' + orjson.dumps(model)
                + b',"usage":' + orjson.dumps(usage) + b"}")
        out = {k: v for k, v in (headers or {}).items() if k.lower() != "content-type"}
        out.update({"Content-Type": "application/json", "x-sidecar-cache": label})
        if label == "hit":
            oldest = min(entries[k].created for k in keys)
            out["Age"] = str(max(0, int(self._clock.time() - oldest)))
        return Reply(200, out, body=body)


def _vectors(payload: Any, expected: int) -> list[bytes] | None:
    """Each embedding's JSON bytes in input order; None unless the answer has exactly one per item."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list) or len(data) != expected:
        return None
    ordered: list[bytes | None] = [None] * expected
    for item in data:
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < expected or "embedding" not in item:
            return None
        ordered[index] = orjson.dumps(item["embedding"])
    if any(v is None for v in ordered):
        return None
    return [v for v in ordered if v is not None]
