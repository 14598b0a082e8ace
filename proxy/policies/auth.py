"""Identity: who is calling, from virtual `[[keys]]`, the sidecar headers or the body.

With `[[keys]]` configured an unknown key gets 401. A virtual key's user and team are
authoritative; headers (`x-sidecar-user`, `-team`, `-tags`) and the body's `user` / `metadata` fill
in only what the key leaves unset, so a client cannot move its spend to another team.
Keys are looked up by their SHA-256 and confirmed with a constant-time compare; a lookup's timing
can reveal only something about the hash of a wrong guess, never about a stored key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from proxy.errors import AuthError
from proxy.exchange import Exchange, Identity, Reply
from proxy.pipeline import Handler, PolicyContext
from proxy.settings import KeyConfig

Config: type[BaseModel] = KeyConfig


async def create(config: list[KeyConfig], ctx: PolicyContext) -> AuthPolicy:
    return AuthPolicy(config)


def key_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def parse_tags(value: str) -> dict[str, str]:
    """`a=b,c=d` (a bare `c` means `c=true`); blanks and oversized input are ignored."""
    tags: dict[str, str] = {}
    for part in value[:4096].split(","):
        name, _, tag_value = part.partition("=")
        if name.strip():
            tags[name.strip()[:128]] = tag_value.strip()[:256] or "true"
    return tags


_SELF_DESCRIBED = frozenset({"user", "metadata"})  # body fields that add to an identity
_MEMO_SIZE = 4096


class AuthPolicy:
    name = "auth"

    def __init__(self, keys: list[KeyConfig]) -> None:
        self._keys: dict[bytes, KeyConfig] = {}
        for key in keys:
            if key.key is not None:
                digest = key_digest(key.key.get_secret_value())
            else:
                digest = bytes.fromhex(key.key_sha256 or "")
            self._keys[digest] = key
        # Most requests say nothing about themselves beyond their key: their identity depends on
        # the Authorization header alone and is built once per header (bounded, never shown).
        self._by_header: dict[str, Identity] = {}

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        ex.identity = self.identify(ex)
        return await call_next(ex)

    def identify_into(self, ex: Exchange) -> None:
        """The pipeline step used instead of the layer when no [[keys]] can refuse a caller."""
        ex.identity = self.identify(ex)

    def identify(self, ex: Exchange) -> Identity:
        header = ex.headers.get("Authorization", "")
        plain = not _SELF_DESCRIBED.intersection(ex.body or ()) and not (
            "x-sidecar-tags" in ex.headers or "x-sidecar-user" in ex.headers
            or "x-sidecar-team" in ex.headers)
        if plain:
            known = self._by_header.get(header)
            if known is not None:
                return known
        secret = _bearer(header)
        identity = self._identify(ex, key_digest(secret) if secret else b"")
        if plain:
            if len(self._by_header) >= _MEMO_SIZE:
                self._by_header.clear()
            self._by_header[header] = identity
        return identity

    def _identify(self, ex: Exchange, digest: bytes) -> Identity:
        key = self._lookup(digest)
        header_tags = ex.headers.get("x-sidecar-tags")
        tags = _body_tags(ex.body)
        if header_tags:
            tags.update(parse_tags(header_tags))
        user = ex.headers.get("x-sidecar-user") or _body_user(ex.body)
        team = ex.headers.get("x-sidecar-team")
        key_id = digest[:8].hex() if digest else "anonymous"
        if key is None:
            return Identity(key_id=key_id, user=user, team=team, tags=tags)
        tags.update(key.tags)
        return Identity(key_id=key_id, user=key.user or user, team=key.team or team, tags=tags,
                        key_name=key.name)

    def _lookup(self, digest: bytes) -> KeyConfig | None:
        if not self._keys:
            return None
        key = self._keys.get(digest)
        if key is None or not hmac.compare_digest(digest, key_digest_of(key, digest)):
            raise AuthError("Incorrect API key provided.", code="invalid_api_key")
        return key

    async def aclose(self) -> None:
        return None


def key_digest_of(key: KeyConfig, digest: bytes) -> bytes:
    if key.key_sha256 is not None:
        return bytes.fromhex(key.key_sha256)
    return key_digest(key.key.get_secret_value()) if key.key is not None else b""


def _bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _body_user(body: dict[str, Any] | None) -> str | None:
    user = body.get("user") if body else None
    return user[:256] if isinstance(user, str) and user else None


def _body_tags(body: dict[str, Any] | None) -> dict[str, str]:
    metadata: Any = body.get("metadata") if body else None
    if not isinstance(metadata, Mapping):
        return {}
    return {str(k)[:128]: v[:256] for k, v in metadata.items() if isinstance(v, str)}
