"""Cache keys: a canonical hash of everything that changes an answer, and who may share it.

Reusable by any cache: `canonical_bytes` + `digest` name a request, `scope_id` says whose entry it
is, `entry_key` lays both out as a store key that `purge_pattern` can select by namespace or model.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal
from urllib.parse import quote

import orjson

from proxy.exchange import Exchange, Identity
from proxy.state.kv import glob_escape

Scope = Literal["global", "key", "team", "user"]

# Fields that never change what the model says: transport (`stream`, `stream_options`) and
# bookkeeping (`user`, `metadata`). Everything else, known or not, is part of the key.
NOT_IN_KEY = frozenset({"stream", "stream_options", "user", "metadata"})
# Above this many body bytes, canonicalising and hashing run in a thread (off the event loop).
THREAD_FROM = 256 << 10
_EXACT_FLOAT = 2.0**53
_INTEGRAL_FLOAT = re.compile(rb"\d\.0(?![0-9])|\d[eE]")
_SEP = "|"
_SAFE = re.compile(r"[A-Za-z0-9\-._~:/@]*")  # what `quote` would leave as it is


def canonical(value: Any) -> Any:
    """`value` with integral floats as ints, so `1` and `1.0` (the same JSON number) key alike."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and -_EXACT_FLOAT < value < _EXACT_FLOAT else value
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def canonical_bytes(body: Mapping[str, Any], skip: Iterable[str] = NOT_IN_KEY) -> bytes:
    """The request body as sorted-key JSON without the fields in `skip` and without nulls.

    A top-level `null` is how OpenAI spells "not given", so `{"seed": null}` keys like no seed.
    Defaults are NOT filled in: `temperature` absent and `temperature: 1` are different keys,
    because OpenAI-compatible servers disagree on defaults (a cache miss is cheap, a wrong hit not).
    """
    skipped = frozenset(skip)
    trimmed = {k: v for k, v in body.items() if k not in skipped and v is not None}
    dumped = orjson.dumps(trimmed, option=orjson.OPT_SORT_KEYS)
    # Rebuilding the body to canonicalise floats costs allocations on every request; orjson
    # writes an integral float as "1.0" or "1e16", so only a body showing one needs it (text
    # that merely looks like one just takes the slower, equally correct path).
    if _INTEGRAL_FLOAT.search(dumped) is None:
        return dumped
    return orjson.dumps(canonical(trimmed), option=orjson.OPT_SORT_KEYS)


def digest(*parts: bytes) -> str:
    """A 128-bit BLAKE2b hex digest of `parts` (length-prefixed, so parts cannot run together).

    A cryptographic hash, so nobody can craft a request that collides with someone else's entry.
    """
    hasher = hashlib.blake2b(digest_size=16)
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)
    return hasher.hexdigest()


def request_digest(ex: Exchange, body: Mapping[str, Any], *, namespace: str = "", scope: str = "",
                   skip: Iterable[str] = NOT_IN_KEY) -> str:
    """The digest of one request: endpoint, upstream, resolved model, query and canonical body,
    plus the namespace and scope, so one digest names exactly one entry."""
    upstream = ex.upstream.name if ex.upstream is not None else ""
    head = _SEP.join((ex.endpoint.value, upstream, ex.model or "", ex.query, namespace, scope))
    return digest(head.encode(), canonical_bytes(body, skip))


async def request_digest_async(ex: Exchange, body: Mapping[str, Any], *, namespace: str = "",
                               scope: str = "", skip: Iterable[str] = NOT_IN_KEY) -> str:
    """`request_digest`, in a thread when the body is large enough to stall the event loop."""
    if len(ex.raw_body) >= THREAD_FROM:
        return await asyncio.to_thread(lambda: request_digest(ex, body, namespace=namespace,
                                                              scope=scope, skip=skip))
    return request_digest(ex, body, namespace=namespace, scope=scope, skip=skip)


def scope_id(identity: Identity, scope: Scope) -> str:
    """Who shares an entry. A request without the team (or user) that `scope` asks for falls
    back to its key, so anonymous traffic never pools with everyone else's.

    Team and user names are hashed: store keys carry no names.
    """
    if scope == "global":
        return "g"
    if scope == "team" and identity.team:
        return "t." + digest(identity.team.encode())[:16]
    if scope == "user" and identity.user:
        return "u." + digest(identity.user.encode())[:16]
    return "k." + identity.key_id


def entry_key(kind: str, version: int, namespace: str, model: str, scope: str,
              request: str) -> str:
    """The store key `kind|version|namespace|model|scope|digest` (namespace, model URL-quoted,
    so neither can contain the separator or a glob character)."""
    return _SEP.join((kind, str(version), _quote(namespace), _quote(model), scope, request))


def purge_pattern(version: int | None = None, namespace: str | None = None,
                  model: str | None = None, key: str | None = None) -> str:
    """A store glob selecting entries (every version when `version` is None), optionally only
    those of one namespace, model or request digest (the `x-sidecar-cache-key` header)."""
    parts = ["*", str(version) if version is not None else "*",
             glob_escape(_quote(namespace)) if namespace is not None else "*",
             glob_escape(_quote(model)) if model is not None else "*",
             "*",
             glob_escape(key) if key is not None else "*"]
    return _SEP.join(parts)


@functools.lru_cache(maxsize=1024)
def _quote(text: str) -> str:
    return text if _SAFE.fullmatch(text) else quote(text, safe="-._~:/@")


def namespace_of(ex: Exchange) -> str:
    """The client's `x-sidecar-cache-namespace`, trimmed; "" when absent."""
    return ex.headers.get("x-sidecar-cache-namespace", "").strip()[:128]
