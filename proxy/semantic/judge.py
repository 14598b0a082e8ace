"""Optional second opinion from a small model for gray-zone candidates (off by default).

Asked only when the vectors are close but a guard rule balked at a word swap, or when a candidate
the guard accepted is only just above the threshold. One short, cached question; no answer, an
error or a timeout all count as "different", so the judge can only turn misses into hits it is
sure of, never slow a request past its timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from typing import Any

from proxy.exchange import Endpoint
from proxy.semantic.upstream_embedder import Call, Route, internal_exchange

_INSTRUCTIONS = (
    "You decide whether one cached answer correctly answers two user requests. Reply with exactly "
    "one word: SAME if both requests ask for the same thing (same entities, numbers, direction, "
    "language, format and audience), DIFFERENT otherwise."
)


class Judge:
    """`await judge.same(a, b)`: True only on a clear SAME from the model."""

    def __init__(self, call: Call, route: Route | None, model: str, timeout: float = 2.0,
                 memory: int = 10_000) -> None:
        self._call = call
        self._route = route
        self._model = model
        self._timeout = timeout
        self._memory = memory
        self._verdicts: OrderedDict[str, bool] = OrderedDict()
        self.asked = 0

    async def same(self, query: str, cached: str) -> bool:
        key = hashlib.blake2b(f"{query}\x00{cached}".encode(), digest_size=16).hexdigest()
        if key in self._verdicts:
            self._verdicts.move_to_end(key)
            return self._verdicts[key]
        verdict = await self._ask(query, cached)
        self._verdicts[key] = verdict
        if len(self._verdicts) > self._memory:
            self._verdicts.popitem(last=False)
        return verdict

    async def _ask(self, query: str, cached: str) -> bool:
        body: dict[str, Any] = {
            "model": self._model, "temperature": 0, "max_tokens": 2,
            "messages": [{"role": "system", "content": _INSTRUCTIONS},
                         {"role": "user", "content": f"Request A: {cached}\nRequest B: {query}"}],
        }
        self.asked += 1
        try:
            async with asyncio.timeout(self._timeout):
                reply = await self._call(
                    internal_exchange(Endpoint.CHAT, "/v1/chat/completions", body, self._route))
        except Exception:  # the judge is an optimisation: any trouble means "not the same"
            return False
        payload = reply.json() if reply.ok and reply.stream is None else None
        try:
            text = str(payload["choices"][0]["message"]["content"])  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return False
        return text.strip().upper().startswith("SAME")
