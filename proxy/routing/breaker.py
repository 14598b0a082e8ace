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
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)

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
        self.outcomes.append((now, ok))
        while self.outcomes and self.outcomes[0][0] < now - self.config.window:
            self.outcomes.popleft()
        failures = sum(1 for _, good in self.outcomes if not good)
        rate_tripped = (len(self.outcomes) >= self.config.min_requests
                        and failures >= self.config.error_rate * len(self.outcomes))
        if self.config.enabled and (self.consecutive >= self.config.consecutive_failures
                                    or rate_tripped):
            self._open(now)

    def _open(self, now: float) -> None:
        self.state = "open"
        self.opened_at = now
        self.outcomes.clear()

    def _close(self) -> None:
        self.state = "closed"
        self.consecutive = 0
        self.outcomes.clear()
