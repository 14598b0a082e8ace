"""Fault switches of the mock upstream: which failure or delay the next request gets.

A rule fires for its next `times` requests, with a `probability` drawn from a seeded RNG, or both
(probability, at most `times`). Probabilistic failures share one draw per request, so rules of 7.5%
for four kinds give exactly a 30% mixed failure rate.
"""

from __future__ import annotations

import fnmatch
import random
import threading
from dataclasses import dataclass, field
from typing import Literal, get_args

FailureKind = Literal["status_5xx", "rate_limit", "hang", "reset", "drop_mid_stream", "malformed_sse"]
DelayKind = Literal["latency", "chunk_delay"]
FaultKind = FailureKind | DelayKind
FAILURES: tuple[str, ...] = get_args(FailureKind)
DELAYS: tuple[str, ...] = get_args(DelayKind)


@dataclass(frozen=True)
class Failure:
    """The failure one request gets; `after` is how many good stream events precede it."""

    kind: str
    status: int = 500
    retry_after: float = 1.0
    after: int = 2


@dataclass(frozen=True)
class Decision:
    """What the mock does to one request: delays (seconds) and at most one failure."""

    latency: float = 0.0
    chunk_delay: float = 0.0
    failure: Failure | None = None


@dataclass
class _Rule:
    kind: str
    remaining: int | None
    probability: float | None
    path: str
    seconds: float
    failure: Failure = field(default_factory=lambda: Failure("status_5xx"))

    def matches(self, path: str) -> bool:
        return fnmatch.fnmatchcase(path, self.path)

    def spend(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1


class FaultPlan:
    """The active fault rules and the seeded RNG that decides probabilistic ones."""

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed
        self._rng = random.Random(seed)
        self._rules: list[_Rule] = []
        # Tests may add rules from another thread than the mock's event loop (sync SDK clients).
        self._lock = threading.Lock()

    def clear(self, seed: int | None = None) -> None:
        """Drop every rule and restart the RNG, so a run can be replayed."""
        with self._lock:
            self._seed = self._seed if seed is None else seed
            self._rng = random.Random(self._seed)
            self._rules.clear()

    def add(
        self,
        kind: FaultKind,
        *,
        times: int | None,
        probability: float | None,
        path: str,
        seconds: float,
        failure: Failure,
    ) -> None:
        if kind not in FAILURES + DELAYS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAILURES + DELAYS}")
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        with self._lock:
            self._rules.append(_Rule(kind, times, probability, path, seconds, failure))

    def draw(self, path: str) -> Decision:
        """Decide one request's fate and spend the rules that fired."""
        with self._lock:
            rules = [r for r in self._rules if r.matches(path) and r.remaining != 0]
            latency = self._delay(rules, "latency")
            chunk_delay = self._delay(rules, "chunk_delay")
            failure = self._failure([r for r in rules if r.kind in FAILURES])
            self._rules = [r for r in self._rules if r.remaining != 0]
        return Decision(latency, chunk_delay, failure)

    def _delay(self, rules: list[_Rule], kind: str) -> float:
        for rule in rules:
            if rule.kind == kind and (rule.probability is None or self._rng.random() < rule.probability):
                rule.spend()
                return rule.seconds
        return 0.0

    def _failure(self, rules: list[_Rule]) -> Failure | None:
        sure = [r for r in rules if r.probability is None]
        if sure:
            sure[0].spend()
            return self._concrete(sure[0].failure)
        chances = [r for r in rules if r.probability is not None]
        if not chances:
            return None
        draw, edge = self._rng.random(), 0.0
        for rule in chances:
            edge += rule.probability or 0.0
            if draw < edge:
                rule.spend()
                return self._concrete(rule.failure)
        return None

    def _concrete(self, failure: Failure) -> Failure:
        # A 5xx rule without a status picks 500, 502 or 503 from the seeded RNG.
        if failure.kind == "status_5xx" and failure.status == 0:
            status = self._rng.choice((500, 502, 503))
            return Failure(failure.kind, status, failure.retry_after, failure.after)
        return failure
