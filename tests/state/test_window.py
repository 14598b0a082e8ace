"""Contract of the sliding-window counter, run against the memory and the Redis implementation."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest

from proxy.state.base import Charge, WindowCounter
from proxy.state.redis import RedisConnection
from proxy.state.window import MemoryWindowCounter, RedisWindowCounter
from tests.redis_server import redis_server_session, redis_url  # noqa: F401  (fixtures)

T0 = 1_767_225_600.0  # a wall-clock instant, as Redis counters use
W = 60.0
BUCKET = W / 60
LEASE_TTL = 30.0


@pytest.fixture(params=["memory", "redis"])
async def counter(request: pytest.FixtureRequest) -> AsyncIterator[WindowCounter]:
    if request.param == "memory":
        yield MemoryWindowCounter(LEASE_TTL)
        return
    url = request.getfixturevalue("redis_url")
    connection = RedisConnection(url, "test", 2.0)
    try:
        yield RedisWindowCounter(connection, LEASE_TTL)
    finally:
        await connection.aclose()


def requests(limit: int, key: str = "r:rule") -> Charge:
    return Charge(key, limit, 1, W)


def tokens(limit: int, cost: int, key: str = "t:rule") -> Charge:
    return Charge(key, limit, cost, W)


def slots(limit: int, key: str = "c:rule") -> Charge:
    return Charge(key, limit, 1, 0.0)


async def fill(counter: WindowCounter, charge: Charge, times: int, now: float) -> None:
    for _ in range(times):
        assert (await counter.acquire([charge], "x", now)).admitted


async def test_admits_up_to_the_limit_then_refuses(counter: WindowCounter) -> None:
    first = await counter.acquire([requests(3)], "a", T0)
    assert first.admitted and first.remaining == (2,)
    await fill(counter, requests(3), 2, T0 + 1)
    refused = await counter.acquire([requests(3)], "b", T0 + 2)
    assert not refused.admitted and refused.refused == 0
    assert refused.remaining == (0,)


async def test_window_slides_and_never_forgets_early(counter: WindowCounter) -> None:
    await fill(counter, requests(3), 3, T0)
    assert not (await counter.acquire([requests(3)], "a", T0 + W - 0.01)).admitted
    late = await counter.acquire([requests(3)], "a", T0 + W + BUCKET + 0.01)
    assert late.admitted and late.remaining == (2,)


async def test_old_charges_leave_while_recent_ones_stay(counter: WindowCounter) -> None:
    await fill(counter, requests(5), 3, T0)
    await fill(counter, requests(5), 2, T0 + 30)
    now = T0 + W + BUCKET + 0.01
    await fill(counter, requests(5), 3, now)
    assert not (await counter.acquire([requests(5)], "a", now)).admitted


async def test_retry_after_is_when_enough_old_buckets_expire(counter: WindowCounter) -> None:
    await fill(counter, requests(3), 2, T0)
    await fill(counter, requests(3), 1, T0 + 20)
    refused = await counter.acquire([requests(3)], "a", T0 + 25)
    # the two oldest charges free at T0 + W (+ at most one bucket): not the whole window from now
    assert W - 25 <= refused.retry_after <= W - 25 + BUCKET
    retry = await counter.acquire([requests(3)], "a", T0 + 25 + refused.retry_after)
    assert retry.admitted


async def test_retry_after_counts_what_the_request_needs(counter: WindowCounter) -> None:
    await fill(counter, tokens(100, 40), 1, T0)
    await fill(counter, tokens(100, 40), 1, T0 + 20)
    refused = await counter.acquire([tokens(100, 90)], "a", T0 + 30)
    # 80 used, 90 wanted: both earlier charges must expire, the second at T0 + 20 + W
    assert 20 + W - 30 <= refused.retry_after <= 20 + W - 30 + BUCKET


async def test_a_request_above_the_limit_can_never_fit(counter: WindowCounter) -> None:
    refused = await counter.acquire([tokens(100, 101)], "a", T0)
    assert not refused.admitted and math.isinf(refused.retry_after)


async def test_all_rules_or_none_are_charged(counter: WindowCounter) -> None:
    await fill(counter, requests(1, "r:tight"), 1, T0)
    both = [requests(10, "r:loose"), tokens(1000, 100, "t:loose"), requests(1, "r:tight")]
    refused = await counter.acquire(both, "a", T0 + 1)
    assert not refused.admitted and refused.refused == 2
    loose = await counter.acquire([requests(10, "r:loose"), tokens(1000, 100, "t:loose")], "b",
                                  T0 + 2)
    assert loose.remaining == (9, 900)


async def test_a_refused_concurrency_slot_charges_no_window(counter: WindowCounter) -> None:
    await counter.acquire([slots(1)], "holder", T0)
    refused = await counter.acquire([requests(10), slots(1)], "b", T0 + 1)
    assert not refused.admitted and refused.refused == 1
    assert (await counter.acquire([requests(10)], "c", T0 + 2)).remaining == (9,)


async def test_reconciling_down_frees_tokens(counter: WindowCounter) -> None:
    charge = tokens(150, 100)
    assert (await counter.acquire([charge], "a", T0)).admitted
    await counter.settle([charge], [-60], T0, "a", T0 + 5)
    after = await counter.acquire([tokens(150, 110)], "b", T0 + 6)
    assert after.admitted and after.remaining == (0,)


async def test_reconciling_up_takes_more_tokens(counter: WindowCounter) -> None:
    charge = tokens(150, 100)
    await counter.acquire([charge], "a", T0)
    await counter.settle([charge], [50], T0, "a", T0 + 5)
    refused = await counter.acquire([tokens(150, 1)], "b", T0 + 6)
    assert not refused.admitted and refused.remaining == (0,)


async def test_a_correction_expires_with_its_charge(counter: WindowCounter) -> None:
    charge = tokens(150, 100)
    await counter.acquire([charge], "a", T0)
    await counter.settle([charge], [50], T0, "a", T0 + 30)
    assert (await counter.acquire([tokens(150, 150)], "b", T0 + W + BUCKET + 0.01)).admitted


async def test_usage_reported_after_the_window_counts_from_then(counter: WindowCounter) -> None:
    charge = tokens(150, 100)
    await counter.acquire([charge], "a", T0)
    late = T0 + W + BUCKET + 1
    await counter.settle([charge], [-100], T0, "a", late)  # the charge is gone: nothing to undo
    await counter.settle([charge], [120], T0, "a", late)  # extra usage still happened
    refused = await counter.acquire([tokens(150, 31)], "b", late + 1)
    assert not refused.admitted and refused.remaining == (30,)


async def test_reset_is_when_the_counter_is_full_again(counter: WindowCounter) -> None:
    await counter.acquire([requests(5)], "a", T0)
    state = await counter.acquire([requests(5)], "b", T0 + 10)
    assert W <= state.reset[0] <= W + BUCKET
    assert (await counter.acquire([requests(5, "r:fresh")], "c", T0)).reset[0] <= W + BUCKET


async def test_concurrency_slots_are_released_by_settle(counter: WindowCounter) -> None:
    assert (await counter.acquire([slots(2)], "a", T0)).admitted
    assert (await counter.acquire([slots(2)], "b", T0)).admitted
    refused = await counter.acquire([slots(2)], "c", T0)
    assert not refused.admitted and refused.retry_after > 0
    await counter.settle([slots(2)], [0], T0, "a", T0 + 1)
    assert (await counter.acquire([slots(2)], "c", T0 + 1)).admitted


async def test_leases_of_a_dead_holder_expire_and_live_ones_do_not(counter: WindowCounter) -> None:
    await counter.acquire([slots(2)], "dead", T0)
    await counter.acquire([slots(2)], "alive", T0)
    await counter.refresh([slots(2)], "alive", T0 + LEASE_TTL - 1)
    later = T0 + LEASE_TTL + 1
    assert (await counter.acquire([slots(2)], "new", later)).admitted
    assert not (await counter.acquire([slots(2)], "more", later)).admitted


async def test_parallel_acquires_admit_exactly_the_limit(counter: WindowCounter) -> None:
    charges = [requests(10), tokens(10_000, 100), slots(50)]
    results = await asyncio.gather(*(counter.acquire(charges, f"l{i}", T0) for i in range(30)))
    assert sum(r.admitted for r in results) == 10


async def test_counters_are_independent(counter: WindowCounter) -> None:
    await fill(counter, requests(1, "r:alice"), 1, T0)
    assert (await counter.acquire([requests(1, "r:bob")], "a", T0)).admitted
    assert not (await counter.acquire([requests(1, "r:alice")], "a", T0)).admitted


async def test_short_windows_slide_too(counter: WindowCounter) -> None:
    charge = Charge("r:fast", 2, 1, 1.0)
    await fill(counter, charge, 2, T0)
    assert not (await counter.acquire([charge], "a", T0 + 0.5)).admitted
    assert (await counter.acquire([charge], "a", T0 + 1.0 + 1.0 / 60 + 0.001)).admitted
