"""Choosing among a pool's upstreams: `weighted`, `least_busy` (in flight) or `latency` (EWMA of
time to first byte). An upstream that answered 429 is passed over until its Retry-After ends,
unless every member is backed off.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
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
    def __init__(self, strategy: str, rng: random.Random, names: Sequence[str] = ()) -> None:
        self.strategy = strategy
        self.rng = rng
        self.load: dict[str, UpstreamLoad] = {name: UpstreamLoad() for name in names}

    def of(self, name: str) -> UpstreamLoad:
        load = self.load.get(name)
        if load is None:
            load = self.load[name] = UpstreamLoad()
        return load

    def order(self, pool: Sequence[UpstreamConfig], now: float) -> list[UpstreamConfig]:
        """The pool in the order to try it: the chosen one first."""
        if len(pool) == 1:
            return list(pool)
        loads = [self.of(u.name) for u in pool]
        for load in loads:
            if load.backed_off_until > now:
                ready = [i for i, load in enumerate(loads) if load.backed_off_until <= now]
                if not ready:
                    return self._rank(pool, loads)
                waiting = [u for u, load in zip(pool, loads, strict=True)
                           if load.backed_off_until > now]
                return self._rank([pool[i] for i in ready], [loads[i] for i in ready]) + waiting
        return self._rank(pool, loads)

    def _rank(self, pool: Sequence[UpstreamConfig],
              loads: list[UpstreamLoad]) -> list[UpstreamConfig]:
        if self.strategy == "weighted":
            return self._weighted(pool)
        busy = self.strategy == "least_busy"
        if len(pool) == 2:  # the common pool: one comparison, a coin for a tie
            first = loads[0].in_flight if busy else (loads[0].latency or 0.0)
            second = loads[1].in_flight if busy else (loads[1].latency or 0.0)
            if first < second or (first == second and self.rng.random() < 0.5):
                return [pool[0], pool[1]]
            return [pool[1], pool[0]]
        rnd = self.rng.random  # ties are broken at random
        if busy:
            keyed = sorted([(float(load.in_flight), rnd(), i) for i, load in enumerate(loads)])
        else:
            keyed = sorted([(load.latency or 0.0, rnd(), i) for i, load in enumerate(loads)])
        return [pool[i] for _, _, i in keyed]

    def _weighted(self, pool: Sequence[UpstreamConfig]) -> list[UpstreamConfig]:
        remaining = list(pool)
        ordered: list[UpstreamConfig] = []
        while remaining:
            pick = self.rng.choices(remaining, weights=[u.weight for u in remaining])[0]
            ordered.append(pick)
            remaining.remove(pick)
        return ordered
