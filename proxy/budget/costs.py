"""The cost of one answer as the client sees it: from a JSON reply, or stamped into the usage
event of a stream as `cost_usd`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import orjson

from proxy.exchange import Reply
from proxy.pricing import Price, read_usage
from proxy.wire import sse

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


def answer_cost(reply: Reply, price: Price) -> float | None:
    """The real cost from `usage`; nothing for an error; None for an answer without usage."""
    tokens = read_usage(reply.final_usage())
    if tokens is not None:
        return price.cost(tokens)
    return 0.0 if not reply.ok else None


def usd_text(cost: float) -> str:
    return f"{cost:.10f}".rstrip("0").rstrip(".") or "0"


def cost_stamper(price: Price) -> Callable[[bytes], bytes | None]:
    """Adds `cost_usd` to the usage object of the stream's usage event (SDKs ignore the field)."""

    def stamp(frame: bytes) -> bytes | None:
        if b'"usage"' not in frame or not _USAGE_OBJECT.search(frame):
            return frame
        event, data = sse.frame_fields(frame)
        try:
            payload = orjson.loads(data or b"")
        except orjson.JSONDecodeError:
            return frame
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if not isinstance(usage, dict) and isinstance(payload, dict):
            usage = (payload.get("response") or {}).get("usage")
        tokens = read_usage(usage)
        if tokens is None or not isinstance(usage, dict):
            return frame
        usage["cost_usd"] = round(price.cost(tokens), 10)
        return sse.encode(payload, event=event)

    return stamp
