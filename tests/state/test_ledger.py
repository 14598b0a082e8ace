"""Contract of the budget ledger, run against the memory (SQLite-backed) and the Redis ledger."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from proxy.state.base import BudgetLedger
from proxy.state.ledger import NANO, MemoryLedger, RedisLedger, to_nano
from proxy.state.redis import RedisConnection
from tests.redis_server import redis_server_session, redis_url  # noqa: F401  (fixtures)

T0 = 1_767_225_600.0
HOLD = 60.0
OpenLedger = Callable[[], "asyncio.Future[BudgetLedger]"]


@pytest.fixture(params=["memory", "redis"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenLedger]:
    """Opens a ledger; a second call is the same ledger after a process restart."""
    opened: list[BudgetLedger] = []
    connections: list[RedisConnection] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    async def open_ledger() -> BudgetLedger:
        ledger: BudgetLedger
        if request.param == "memory":
            memory = MemoryLedger(tmp_path / "spend.sqlite3", flush_interval=0.05)
            await memory.start()
            ledger = memory
        else:
            connection = RedisConnection(url, "test", 2.0)
            connections.append(connection)
            ledger = RedisLedger(connection)
        opened.append(ledger)
        return ledger

    yield open_ledger  # type: ignore[misc]
    for ledger in opened:
        await ledger.aclose()
    for connection in connections:
        await connection.aclose()


@pytest.fixture
async def ledger(opener: OpenLedger) -> BudgetLedger:
    return await opener()


async def test_reserves_up_to_the_cap_then_refuses(ledger: BudgetLedger) -> None:
    for _ in range(4):
        assert (await ledger.reserve(["b|a"], [100], 25, HOLD, T0)).id is not None
    refused = await ledger.reserve(["b|a"], [100], 1, HOLD, T0)
    assert refused.id is None and refused.refused == 0 and refused.used == 100


async def test_all_or_nothing_across_keys(ledger: BudgetLedger) -> None:
    await ledger.reserve(["b|small"], [50], 40, HOLD, T0)
    refused = await ledger.reserve(["b|big", "b|small"], [1000, 50], 20, HOLD, T0)
    assert refused.id is None and refused.refused == 1 and refused.used == 40
    totals = await ledger.totals("b|")
    assert totals.get("b|big", (0, 0)) == (0, 0)


async def test_settle_turns_the_hold_into_real_spend(ledger: BudgetLedger) -> None:
    held = await ledger.reserve(["b|a", "c|a"], [100, -1], 30, HOLD, T0)
    assert (await ledger.totals("b|")) == {"b|a": (0, 30)}
    totals = await ledger.settle(held, 12, ["c|#tag=x"], T0 + 1)
    assert totals == [12, 12, 12]
    assert (await ledger.totals("b|"))["b|a"] == (12, 0)
    assert (await ledger.totals("c|")) == {"c|a": (12, 0), "c|#tag=x": (12, 0)}
    # the released room is usable again
    assert (await ledger.reserve(["b|a"], [100], 88, HOLD, T0 + 2)).id is not None


async def test_uncapped_keys_never_refuse(ledger: BudgetLedger) -> None:
    for _ in range(3):
        assert (await ledger.reserve(["soft|a"], [-1], 10**12, HOLD, T0)).id is not None


async def test_a_crashed_processes_holds_lapse(ledger: BudgetLedger) -> None:
    crashed = await ledger.reserve(["b|a"], [100], 100, HOLD, T0)
    assert (await ledger.reserve(["b|a"], [100], 1, HOLD, T0 + HOLD - 1)).id is None
    assert (await ledger.reserve(["b|a"], [100], 60, HOLD, T0 + HOLD + 2)).id is not None
    # a late settle of the lapsed hold still records what was really spent, and frees nothing twice
    assert await ledger.settle(crashed, 30, [], T0 + HOLD + 3) == [30]
    assert (await ledger.totals("b|"))["b|a"] == (30, 60)
    assert (await ledger.reserve(["b|a"], [100], 11, HOLD, T0 + HOLD + 4)).id is None


async def test_a_shrunk_hold_frees_room_and_settles_once(tmp_path: Path) -> None:
    ledger = MemoryLedger(tmp_path / "spend.sqlite3")
    await ledger.start()
    try:
        held = ledger.reserve_now(["b|a"], [100], 70, HOLD, T0)
        assert ledger.reserve_now(["b|a"], [100], 40, HOLD, T0).id is None
        ledger.shrink_now(held.id or "", 30)
        ledger.shrink_now(held.id or "", 90)  # a hold never grows
        other = ledger.reserve_now(["b|a"], [100], 70, HOLD, T0)
        assert other.id is not None
        assert ledger.settle_now(held, 25, []) == [25]
        assert (await ledger.totals("b|"))["b|a"] == (25, 70)
        ledger.shrink_now(held.id or "", 1)  # settled already: nothing changes
        assert (await ledger.totals("b|"))["b|a"] == (25, 70)
    finally:
        await ledger.aclose()


async def test_concurrent_reservations_never_exceed_the_cap(ledger: BudgetLedger) -> None:
    results = await asyncio.gather(
        *(ledger.reserve(["b|a"], [1000], 10, HOLD, T0) for _ in range(250)))
    assert sum(r.id is not None for r in results) == 100


async def test_alerts_are_claimed_once_until_a_reset(ledger: BudgetLedger) -> None:
    claims = await asyncio.gather(*(ledger.claim_alert("b|m|team=x", 0.8) for _ in range(20)))
    assert claims.count(True) == 1
    assert await ledger.claim_alert("b|m|team=x", 0.95)
    assert await ledger.claim_alert("b|m|team=xy", 0.8)
    await ledger.settle(await ledger.reserve(["b|m|team=x"], [-1], 5, HOLD, T0), 5, [], T0)
    await ledger.reset("b|m|team=x", exact=True)
    assert await ledger.claim_alert("b|m|team=x", 0.8)
    assert not await ledger.claim_alert("b|m|team=xy", 0.8)


async def test_reset_one_bucket_or_a_whole_prefix(ledger: BudgetLedger) -> None:
    for key in ("b|m|team=s", "b|m|team=search", "b|old|team=s", "c|m|team=s"):
        await ledger.settle(await ledger.reserve([key], [-1], 7, HOLD, T0), 7, [], T0)
    assert await ledger.reset("b|m|team=s", exact=True) == 1
    assert set(await ledger.totals("b|")) == {"b|m|team=search", "b|old|team=s"}
    assert await ledger.reset("b|") == 2
    assert set(await ledger.totals("")) == {"c|m|team=s"}


async def test_spend_survives_a_restart(opener: OpenLedger) -> None:
    first = await opener()
    held = await first.reserve(["b|a"], [100], 50, HOLD, T0)
    await first.settle(held, 42, ["b|#tag=x"], T0)
    assert await first.claim_alert("b|a", 0.4)
    await first.aclose()
    second = await opener()
    assert (await second.totals("b|")) == {"b|a": (42, 0), "b|#tag=x": (42, 0)}
    assert not await second.claim_alert("b|a", 0.4)
    assert (await second.reserve(["b|a"], [100], 59, HOLD, T0)).id is None


async def test_memory_ledgers_sharing_a_file_add_up(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    one, two = MemoryLedger(path), MemoryLedger(path)
    await one.start()
    await two.start()
    await one.settle(await one.reserve(["k"], [-1], 5, HOLD, T0), 5, [], T0)
    await two.settle(await two.reserve(["k"], [-1], 7, HOLD, T0), 7, [], T0)
    await one.aclose()
    await two.aclose()
    again = MemoryLedger(path)
    await again.start()
    assert (await again.totals("k")) == {"k": (12, 0)}
    await again.aclose()


def test_nano_usd_rounds_up_and_never_drifts() -> None:
    assert to_nano(0.000_000_001) == 1
    assert to_nano(1e-10) == 1
    assert to_nano(0.0) == 0
    assert to_nano(12.5) == 12 * NANO + NANO // 2
    assert to_nano(0.1 + 0.2) == 300_000_000
    # Float noise below a thousandth of a nano is dropped; anything above it rounds up.
    assert to_nano(7.0001e-9) == 7
    assert to_nano(7.0009e-9) == 8
    assert to_nano(7.5e-9) == 8
    assert to_nano(1e9) == NANO * NANO
