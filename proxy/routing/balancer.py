"""Choosing among a pool's upstreams: `weighted`, `least_busy` (in flight) or `latency` (EWMA of
time to first byte). An upstream that answered 429 is passed over until its Retry-After ends,
unless every member is backed off.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from proxy.settings import UpstreamConfig

EWMA_ALPHA = 0.3


@dataclass(slots=True)
class UpstreamLoad:
    in_flight: int = 0
    latency: float | None = None
    backed_off_until: float = 0.0

    def observe_latency(self, seconds: float) -> None:
        self.latency = seconds if self.latency is None else (
            EWMA_ALPHA * seconds + (1 - EWMA_ALPHA) * self.latency)


class Balancer:
    def __init__(self, strategy: str, rng: random.Random) -> None:
        self.strategy = strategy
        self.rng = rng
        self.load: dict[str, UpstreamLoad] = {}

    def of(self, name: str) -> UpstreamLoad:
        load = self.load.get(name)
        if load is None:
            load = self.load[name] = UpstreamLoad()
        return load

    def order(self, pool: list[UpstreamConfig], now: float) -> list[UpstreamConfig]:
        """The pool in the order to try it: the chosen one first."""
        if len(pool) == 1:
            return pool
        ready = [u for u in pool if self.of(u.name).backed_off_until <= now]
        waiting = [u for u in pool if u not in ready]
        return self._rank(ready or pool) + (waiting if ready else [])

    def _rank(self, pool: list[UpstreamConfig]) -> list[UpstreamConfig]:
        if self.strategy == "least_busy":
            return sorted(pool, key=lambda u: (self.of(u.name).in_flight, self.rng.random()))
        if self.strategy == "latency":
            return sorted(pool, key=lambda u: (self.of(u.name).latency or 0.0, self.rng.random()))
        return self._weighted(pool)

    def _weighted(self, pool: list[UpstreamConfig]) -> list[UpstreamConfig]:
        remaining = list(pool)
        ordered: list[UpstreamConfig] = []
        while remaining:
            pick = self.rng.choices(remaining, weights=[u.weight for u in remaining])[0]
            ordered.append(pick)
            remaining.remove(pick)
        return ordered
