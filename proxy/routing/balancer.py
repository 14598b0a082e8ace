"""Choosing among a pool's upstreams: `weighted`, `least_busy` (in flight) or `latency` (EWMA of
time to first byte). An upstream that answered 429 is passed over until its Retry-After ends,
unless every member is backed off.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
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
        if len(pool) == 2:
            first = self.first_of_two(pool, self.loads(pool), lambda: now)
            return [pool[0], pool[1]] if first == 0 else [pool[1], pool[0]]
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

    def loads(self, pool: Sequence[UpstreamConfig]) -> tuple[UpstreamLoad, ...]:
        """The load records of a pool's members (stable objects: callers may keep them)."""
        return tuple(self.of(u.name) for u in pool)

    def first_of_two(self, pool: Sequence[UpstreamConfig], loads: Sequence[UpstreamLoad],
                     now: Callable[[], float]) -> int:
        """For the common pool of two (`loads` are theirs): the index (0 or 1) of the member to
        try first. The clock is read only while a member is (or was) backed off after a 429.
        """
        first, second = loads
        if first.backed_off_until or second.backed_off_until:
            moment = now()
            first_off, second_off = first.backed_off_until > moment, second.backed_off_until > moment
            if first_off != second_off:
                return 1 if first_off else 0
            if not first_off:  # both back-offs are over: the healthy path needs no clock again
                first.backed_off_until = second.backed_off_until = 0.0
        if self.strategy == "least_busy":
            a: float = first.in_flight
            b: float = second.in_flight
        elif self.strategy == "weighted":
            return 0 if self._weighted(pool)[0] is pool[0] else 1
        else:
            a, b = first.latency or 0.0, second.latency or 0.0
        if a < b or (a == b and self.rng.random() < 0.5):
            return 0
        return 1

    def _rank(self, pool: Sequence[UpstreamConfig],
              loads: list[UpstreamLoad]) -> list[UpstreamConfig]:
        if self.strategy == "weighted":
            return self._weighted(pool)
        rnd = self.rng.random  # ties are broken at random
        if self.strategy == "least_busy":
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
