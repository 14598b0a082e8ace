"""Circuit breakers per upstream and model: closed, open for a cool-down, half-open with one probe.

A breaker opens after `consecutive_failures` in a row, or when failures reach `error_rate` of at
least `min_requests` outcomes within `window`. State is per process (documented): each replica
learns an upstream's health from its own traffic.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from proxy.settings import BreakerConfig

State = Literal["closed", "open", "half_open"]


@dataclass(slots=True)
class CircuitBreaker:
    config: BreakerConfig
    state: State = "closed"
    consecutive: int = 0
    opened_at: float = 0.0
    probing: bool = False
    # one [second, outcomes, failures] bucket per second of the window, with running totals, so a
    # busy upstream costs O(1) per request and bounded memory
    buckets: deque[list[int]] = field(default_factory=deque)
    total: int = 0
    failures: int = 0

    def allow(self, now: float) -> bool:
        """May a request go now? In half-open only one probe at a time goes."""
        if not self.config.enabled or self.state == "closed":
            return True
        if self.state == "open" and now - self.opened_at >= self.config.cooldown:
            self.state = "half_open"
        if self.state == "half_open" and not self.probing:
            self.probing = True
            return True
        return False

    def retry_in(self, now: float) -> float:
        return max(0.0, self.config.cooldown - (now - self.opened_at))

    def record(self, ok: bool, now: float) -> None:
        self.probing = False
        if self.state == "half_open":
            if ok:
                self._close()
            else:
                self._open(now)
            return
        self.consecutive = 0 if ok else self.consecutive + 1
        self._count(ok, now)
        rate_tripped = (self.total >= self.config.min_requests
                        and self.failures >= self.config.error_rate * self.total)
        if self.config.enabled and (self.consecutive >= self.config.consecutive_failures
                                    or rate_tripped):
            self._open(now)

    def _count(self, ok: bool, now: float) -> None:
        second = int(now)
        if not self.buckets or self.buckets[-1][0] != second:
            self.buckets.append([second, 0, 0])
        bucket = self.buckets[-1]
        bucket[1] += 1
        bucket[2] += 0 if ok else 1
        self.total += 1
        self.failures += 0 if ok else 1
        while self.buckets[0][0] <= now - self.config.window - 1:
            _, total, failures = self.buckets.popleft()
            self.total -= total
            self.failures -= failures

    def _open(self, now: float) -> None:
        self.state = "open"
        self.opened_at = now
        self._forget()

    def _close(self) -> None:
        self.state = "closed"
        self.consecutive = 0
        self._forget()

    def _forget(self) -> None:
        self.buckets.clear()
        self.total = self.failures = 0
