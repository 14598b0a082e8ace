"""Both window counters against a naive model of the documented semantics, under an injected clock.

The model keeps every charge as (bucket, amount) and recounts from scratch on each question: a
charge made in bucket b is counted while the current bucket is at most b + SLOTS; an admission
charges every counter or none; corrections stay in the bucket they correct while it is counted.
Random sequences of admissions, settles, refreshes and clock jumps must get the same verdicts,
remaining counts, reset and retry times from the memory counter, from Redis, and from the model.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.state import window
from proxy.state.base import Admission, Charge, WindowCounter
from proxy.state.redis import RedisConnection
from proxy.state.window import (
    CONCURRENCY_HINT,
    SLOTS,
    MemoryWindowCounter,
    RedisWindowCounter,
    bucket_end,
    bucket_of,
)
from tests.redis_server import RedisServer, redis_server_session  # noqa: F401  (fixtures)

T0 = 1_767_225_600.0
TICK = 0.125  # clock steps are whole eighths of a second: exact in floats and in milliseconds
LEASE_TTL = 30.0
# (kind, window, limit): two request windows, a token window, a concurrency counter
COUNTERS = [("r", 60.0, 4), ("r", 7.5, 3), ("t", 60.0, 100), ("c", 0.0, 2)]


@dataclass
class Model:
    """The documented semantics, computed the slow and obvious way."""

    charges: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    leases: dict[str, dict[str, float]] = field(default_factory=dict)

    def _live(self, charge: Charge, now: float) -> list[tuple[int, int]]:
        """(bucket, amount) of the buckets still counted, oldest first, empty ones left out."""
        floor = bucket_of(charge.window, now) - SLOTS
        buckets: dict[int, int] = {}
        for bucket, amount in self.charges.get(charge.key, []):
            if bucket >= floor:
                buckets[bucket] = buckets.get(bucket, 0) + amount
        return sorted((b, a) for b, a in buckets.items() if a)

    def _used(self, charge: Charge, now: float) -> int:
        if not charge.window:
            return sum(1 for expiry in self.leases.get(charge.key, {}).values() if expiry > now)
        return sum(amount for _, amount in self._live(charge, now))

    def _reset(self, charge: Charge, now: float) -> float:
        live = self._live(charge, now) if charge.window else []
        return max(0.0, bucket_end(charge.window, live[-1][0]) - now) if live else 0.0

    def acquire(self, charges: list[Charge], lease: str, now: float) -> Admission:
        used = [self._used(c, now) for c in charges]
        for index, charge in enumerate(charges):
            cost = charge.cost if charge.window else 1
            if used[index] + cost > charge.limit:
                return Admission(False, index, self._retry(charge, used[index], now),
                                 tuple(max(0, c.limit - u) for c, u in zip(charges, used, strict=True)),
                                 tuple(self._reset(c, now) for c in charges))
        for charge in charges:
            if charge.window:
                if charge.cost:
                    self.charges.setdefault(charge.key, []).append(
                        (bucket_of(charge.window, now), charge.cost))
            else:
                self.leases.setdefault(charge.key, {})[lease] = now + LEASE_TTL
        return Admission(True, -1, 0.0,
                         tuple(c.limit - self._used(c, now) for c in charges),
                         tuple(self._reset(c, now) for c in charges))

    def _retry(self, charge: Charge, used: int, now: float) -> float:
        if charge.cost > charge.limit:
            return math.inf
        if not charge.window:
            return CONCURRENCY_HINT
        need, freed = used + charge.cost - charge.limit, 0
        for bucket, amount in self._live(charge, now):
            freed += amount
            if freed >= need:
                return max(0.0, bucket_end(charge.window, bucket) - now)
        raise AssertionError("a refused charge always fits once its window is empty")

    def settle(self, charges: list[Charge], deltas: list[int], charged_at: float, lease: str,
               now: float) -> None:
        for charge, delta in zip(charges, deltas, strict=True):
            if not charge.window:
                self.leases.get(charge.key, {}).pop(lease, None)
            elif delta:
                charged = bucket_of(charge.window, charged_at)
                live = self._live(charge, now)
                amount = sum(a for b, a in live if b == charged)
                entries = self.charges.setdefault(charge.key, [])
                if amount > 0:
                    entries.append((charged, max(delta, -amount)))
                elif delta > 0:
                    entries.append((bucket_of(charge.window, now), delta))

    def refresh(self, charges: list[Charge], lease: str, now: float) -> None:
        for charge in charges:
            holders = self.leases.get(charge.key, {})
            if not charge.window and lease in holders:
                holders[lease] = now + LEASE_TTL


# One step: (clock advance in ticks, action, counters to charge, a number): "acquire" charges the
# counters (the number is the token cost); "settle" reports the number as the real token usage of
# an earlier admitted request (picked by the number too), "refresh" renews its leases; "flush"
# sends the settles still waiting for an admission to ride on.
Step = tuple[int, str, list[int], int]
STEPS = st.lists(st.tuples(
    st.one_of(st.integers(0, 12), st.sampled_from([8 * 60, 8 * 61, 8 * 125, 8 * 3600])),
    st.sampled_from(["acquire", "acquire", "settle", "refresh", "flush"]),
    st.lists(st.integers(0, len(COUNTERS) - 1), min_size=1, max_size=4, unique=True),
    st.integers(0, 120)), min_size=1, max_size=40)


@dataclass
class Held:
    charges: list[Charge]
    lease: str
    at: float
    expires: float
    settled: bool = False


def comparable(admission: Admission, charges: list[Charge]) -> tuple[object, ...]:
    """The verdict, without what a concurrency counter says it has left: holders that stopped
    refreshing are only dropped when the counter looks full, which no client ever sees."""
    remaining = tuple(r if c.window else None for r, c in
                      zip(admission.remaining, charges, strict=True))
    return admission.admitted, admission.refused, admission.retry_after, remaining, admission.reset


async def replay(counter: WindowCounter, steps: list[Step], scope: str) -> None:
    model, held, now = Model(), list[Held](), T0
    for number, (advance, action, picked, amount) in enumerate(steps):
        now += advance * TICK
        if action == "acquire":
            charges = [Charge(f"{kind}:{scope}:{i}", limit, amount if kind == "t" else 1, window_)
                       for i, (kind, window_, limit) in enumerate(COUNTERS) if i in picked]
            lease = f"lease-{number}"
            got = await counter.acquire(charges, lease, now)
            assert comparable(got, charges) == comparable(model.acquire(charges, lease, now),
                                                          charges), number
            if got.admitted:
                held.append(Held(charges, lease, now, now + LEASE_TTL))
        elif action == "flush":
            await counter.aclose()
        elif held:
            request = held[amount % len(held)]
            if action == "refresh" and now < request.expires:
                # a live holder refreshes before its lease runs out; a dead one never again
                request.expires = now + LEASE_TTL
                await counter.refresh(request.charges, request.lease, now)
                model.refresh(request.charges, request.lease, now)
            elif action == "settle" and not request.settled:
                request.settled = True
                deltas = [amount - c.cost if c.key.startswith("t:") else 0 for c in request.charges]
                await counter.settle(request.charges, deltas, request.at, request.lease, now)
                model.settle(request.charges, deltas, request.at, request.lease, now)


@settings(max_examples=300, deadline=None)
@given(steps=STEPS)
def test_memory_counter_matches_the_model(steps: list[Step]) -> None:
    asyncio.run(replay(MemoryWindowCounter(LEASE_TTL), steps, "m"))


@pytest.fixture
def server(redis_server_session: RedisServer,  # noqa: F811
           monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    if not redis_server_session.running:
        redis_server_session.start()
    # settles ride on the next admission (or a flush), never on a timer racing the next step
    monkeypatch.setattr(window, "SETTLE_DELAY", 3600.0)
    yield redis_server_session


@pytest.mark.redis
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_redis_counter_matches_the_model(server: RedisServer, steps: list[Step]) -> None:
    async def run() -> None:
        connection = RedisConnection(server.url, f"model-{uuid.uuid4().hex}", 2.0)
        try:
            await replay(RedisWindowCounter(connection, LEASE_TTL), steps, "r")
        finally:
            await connection.aclose()

    asyncio.run(run())
