"""When a failed attempt may be retried or handed to a fallback, and how long to wait first.

Retried (same upstream): connect errors and resets before any response byte, 408, 429, 500, 502,
503, 504. Never retried: timeouts after the request was sent (the upstream may still be
generating, and bill for it) and anything after the first byte reached the client.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.exchange import Reply

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def failure_kind(result: Reply | UpstreamError) -> str | None:
    """The `fallback_on` kind of an attempt's result; None when it is an answer to return."""
    if isinstance(result, UpstreamTimeout):
        return "timeout"
    if isinstance(result, UpstreamError):
        return "connect"
    if result.status == 429:
        return "429"
    if result.status == 408:
        return "timeout"
    if result.status >= 500:
        return "5xx"
    if result.status == 400 and _error_code(result) == "context_length_exceeded":
        return "context_length_exceeded"
    return None


def retryable(result: Reply | UpstreamError) -> bool:
    if isinstance(result, UpstreamTimeout):
        return False
    if isinstance(result, UpstreamError):
        return True
    return result.status in RETRYABLE_STATUS


def counts_against_breaker(kind: str | None) -> bool:
    """429 is back-pressure, not ill health; a context overflow is the request's fault."""
    return kind in ("5xx", "timeout", "connect")


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the upstream asked us to wait (`retry-after-ms`, then `Retry-After`)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after") or headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
    return rng.uniform(0, min(cap, base * (2 ** attempt)))


def _error_code(reply: Reply) -> Any:
    try:
        payload = orjson.loads(reply.body or b"")
    except orjson.JSONDecodeError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    return error.get("code") if isinstance(error, dict) else None
