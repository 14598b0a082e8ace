"""What a client allows for one request: `Cache-Control: no-cache` (do not read the cache),
`no-store` (do not write it) and `x-sidecar-cache-ttl: SECONDS` (how long to keep the answer).
"""

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDictProxy

from proxy.errors import RequestError


@dataclass(frozen=True, slots=True)
class Directives:
    """Read the cache, write it, and for how long (seconds; 0 = do not write)."""

    lookup: bool
    store: bool
    ttl: float


def directives(headers: CIMultiDictProxy[str], ttl: float, max_ttl: float,
               default: Directives | None = None) -> Directives:
    """The request's directives; a TTL header above `max_ttl` is capped, a bad one is a 400.

    `default` is what a request without directives gets (built once by the caller)."""
    control = headers.get("Cache-Control")
    asked = headers.get("x-sidecar-cache-ttl")
    if control is None and asked is None:
        return default or Directives(True, ttl > 0, ttl)
    words = {w.split("=", 1)[0].strip() for w in control.lower().split(",")} if control else set()
    if asked is not None:
        try:
            ttl = min(float(asked), max_ttl)
        except ValueError:
            ttl = -1.0
        if not ttl >= 0:  # also rejects NaN
            raise RequestError("x-sidecar-cache-ttl must be a number of seconds >= 0.",
                               param="x-sidecar-cache-ttl", code="invalid_value")
    return Directives("no-cache" not in words, "no-store" not in words and ttl > 0, ttl)
