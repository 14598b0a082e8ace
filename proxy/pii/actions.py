"""What happens to a detected value: redact, mask, hash or pseudonymize (block is decided by
the caller), plus the per-request pseudonym map that lets answers be restored.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re

# A placeholder is `<LABEL_N>`: short, upper-case and bracketed, which models copy verbatim.
PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*)_(\d+)>")


def label(entity: str) -> str:
    return entity.upper()


@functools.cache     # a handful of entity names, asked for on every match
def redact(entity: str) -> str:
    return f"[{label(entity)}]"


def hash_token(key: bytes, entity: str, value: str) -> str:
    """A keyed token: equal values give equal tokens, and without the key none can be reversed."""
    digest = hmac.new(key, f"{entity}\0{value}".encode(), hashlib.sha256).hexdigest()
    return f"[{label(entity)}:{digest[:12]}]"


def mask(entity: str, value: str) -> str:
    """Keeps a hint a person can recognise (domain, last digits, prefix), never the whole value."""
    if entity == "email" and "@" in value:
        local, _, domain = value.rpartition("@")
        return f"{local[:1]}***@{domain}"
    if entity in ("credit_card", "ssn"):
        return _mask_digits(value, keep=4)
    if entity == "phone":
        return _mask_digits(value, keep=2)
    if entity == "iban":
        return value[:2] + _mask_alnum(value[2:], keep=4)
    if entity == "ip_address":
        sep = "." if "." in value and ":" not in value else ":"
        head, _, _ = value.partition(sep)
        return head + sep + "*" * 3
    if entity == "secret":
        return value[:4] + "****"
    return value[:1] + "***"


def _mask_digits(value: str, keep: int) -> str:
    total = sum(ch.isdigit() for ch in value)
    out: list[str] = []
    for ch in value:
        if ch.isdigit():
            out.append(ch if total <= keep else "*")
            total -= 1
        else:
            out.append(ch)
    return "".join(out)


def _mask_alnum(value: str, keep: int) -> str:
    total = sum(ch.isalnum() for ch in value)
    out: list[str] = []
    for ch in value:
        if ch.isalnum():
            out.append(ch if total <= keep else "*")
            total -= 1
        else:
            out.append(ch)
    return "".join(out)


class PseudonymMap:
    """Value <-> placeholder for one request. Numbering follows first appearance per label, so
    two requests that differ only in their PII values get identical redacted text."""

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._by_placeholder: dict[str, str] = {}
        self._counts: dict[str, int] = {}
        self._reserved: set[str] = set()

    def reserve(self, token: str) -> None:
        """A placeholder-shaped string the client itself wrote: never issued, never restored."""
        self._reserved.add(token)

    def placeholder(self, entity: str, value: str) -> str:
        key = (entity, value)
        existing = self._by_value.get(key)
        if existing is not None:
            return existing
        name = label(entity)
        number = self._counts.get(name, 0) + 1
        while f"<{name}_{number}>" in self._reserved:
            number += 1
        self._counts[name] = number
        token = f"<{name}_{number}>"
        self._by_value[key] = token
        self._by_placeholder[token] = value
        return token

    def value(self, placeholder: str) -> str | None:
        return self._by_placeholder.get(placeholder)

    def placeholders(self) -> list[str]:
        return list(self._by_placeholder)

    def __len__(self) -> int:
        return len(self._by_placeholder)
