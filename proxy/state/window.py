"""Sliding-window and concurrency counters (the `WindowCounter` protocol), in memory and in Redis.

Algorithm: each window of W seconds is cut into SLOTS = 60 buckets of W/60. A charge at time t goes
into bucket floor(t / (W/60)) and is counted while the current bucket is at most SLOTS after it,
that is until a moment between t + W and t + W + W/60. The limit therefore holds exactly over every
span of W (it never over-admits); a charge is remembered at most W/60 too long, so capacity comes
back at most 1/60 of the window late. `Retry-After` is when enough of the oldest buckets have
expired to fit the request. Concurrency counters hold one lease per in-flight request; a lease
expires `lease_ttl` after its last refresh, so slots of a crashed process come back on their own.

Memory: one synchronous step per request (no await inside), so it is atomic across all its rules.
Redis: one Lua script call per request over every counter (earlier settles ride along); all keys
share one hash tag, so that one script may touch them all on Redis Cluster (limits state is small:
it lives on one slot). A window keeps a running total, so a check costs O(1), not O(buckets).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Sequence

import orjson
from redis.exceptions import RedisError

from proxy.errors import StateBackendError
from proxy.state.base import Admission, Charge, WindowCounter
from proxy.state.redis import RedisConnection

SLOTS = 60
CONCURRENCY_HINT = 1.0  # seconds: a full concurrency counter frees when a holder ends, unknown when
_SWEEP_EVERY = 60.0
SETTLE_DELAY = 0.002  # seconds a Redis settle waits to ride on the next admission


def bucket_of(window: float, t: float) -> int:
    return math.floor(t / (window / SLOTS))


def bucket_end(window: float, bucket: int) -> float:
    """When a charge made in `bucket` stops being counted."""
    return (bucket + SLOTS + 1) * (window / SLOTS)


class _Ring:
    """The live buckets of one window counter, oldest first, and their running total."""

    __slots__ = ("buckets", "total", "width", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.width = window / SLOTS
        self.buckets: dict[int, int] = {}
        self.total = 0

    def expire(self, current: int) -> None:
        buckets = self.buckets
        while buckets:
            oldest = next(iter(buckets))
            if oldest >= current - SLOTS:
                return
            self.total -= buckets.pop(oldest)

    def add(self, bucket: int, amount: int) -> None:
        self.buckets[bucket] = self.buckets.get(bucket, 0) + amount
        self.total += amount

    def fits_at(self, need: int) -> int:
        """The bucket whose expiry frees at least `need`."""
        freed = 0
        for bucket, amount in self.buckets.items():
            freed += amount
            if freed >= need:
                return bucket
        return next(reversed(self.buckets))

    def reset(self, now: float) -> float:
        if not self.buckets:
            return 0.0
        return max(0.0, bucket_end(self.window, next(reversed(self.buckets))) - now)


class MemoryWindowCounter:
    """Counters in this process; exact for one process (use Redis to share them)."""

    def __init__(self, lease_ttl: float = 30.0) -> None:
        self.lease_ttl = lease_ttl
        self._rings: dict[str, _Ring] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._next_sweep = -math.inf

    async def acquire(self, charges: Sequence[Charge], lease: str, now: float) -> Admission:
        return self.acquire_now(charges, lease, now)

    def acquire_now(self, charges: Sequence[Charge], lease: str, now: float) -> Admission:
        """The whole admission in one synchronous step: nothing else runs in between."""
        if now >= self._next_sweep:
            self._sweep(now)
        used: list[int] = []
        rings: list[_Ring | None] = []
        currents: list[int] = []
        for charge in charges:
            if charge.window:
                ring = self._rings.get(charge.key) or self._new_ring(charge)
                current = math.floor(now / ring.width)
                ring.expire(current)
                count, cost = ring.total, charge.cost
            else:
                ring, current, count, cost = None, 0, self._holders(charge, now), 1
            if count + cost > charge.limit:
                used.append(count)
                used += [self._used(c, now) for c in charges[len(used):]]
                return self._refusal(charges, used, len(rings), now)
            used.append(count + cost)
            rings.append(ring)
            currents.append(current)
        reset: list[float] = []
        for charge, ring, current in zip(charges, rings, currents, strict=True):
            if ring is None:
                self._leases.setdefault(charge.key, {})[lease] = now + self.lease_ttl
                reset.append(0.0)
                continue
            if charge.cost:
                ring.add(current, charge.cost)
            reset.append(ring.reset(now))
        remaining = [c.limit - u for c, u in zip(charges, used, strict=True)]
        return Admission(True, -1, 0.0, tuple(remaining), tuple(reset))

    def _new_ring(self, charge: Charge) -> _Ring:
        ring = self._rings[charge.key] = _Ring(charge.window)
        return ring

    def _ring(self, charge: Charge, now: float) -> _Ring:
        ring = self._rings.get(charge.key)
        if ring is None:
            ring = self._rings[charge.key] = _Ring(charge.window)
        ring.expire(math.floor(now / ring.width))
        return ring

    def _holders(self, charge: Charge, now: float) -> int:
        holders = self._leases.get(charge.key)
        if not holders:
            return 0
        if len(holders) >= charge.limit:  # full: only now is it worth dropping expired leases
            for gone in [lease for lease, expiry in holders.items() if expiry <= now]:
                del holders[gone]
        return len(holders)

    def _used(self, charge: Charge, now: float) -> int:
        return self._ring(charge, now).total if charge.window else self._holders(charge, now)

    def _refusal(self, charges: Sequence[Charge], used: list[int], index: int,
                 now: float) -> Admission:
        charge = charges[index]
        if charge.cost > charge.limit:
            retry = math.inf
        elif charge.window:
            need = used[index] + charge.cost - charge.limit
            bucket = self._rings[charge.key].fits_at(need)
            retry = max(0.0, bucket_end(charge.window, bucket) - now)
        else:
            retry = CONCURRENCY_HINT
        return Admission(False, index, retry, *self._state(charges, used, now))

    def _state(self, charges: Sequence[Charge], used: list[int],
               now: float) -> tuple[tuple[int, ...], tuple[float, ...]]:
        remaining = tuple(max(0, c.limit - u) for c, u in zip(charges, used, strict=True))
        reset = tuple(self._ring(c, now).reset(now) if c.window else 0.0 for c in charges)
        return remaining, reset

    async def settle(self, charges: Sequence[Charge], deltas: Sequence[int], charged_at: float,
                     lease: str, now: float) -> None:
        for charge, delta in zip(charges, deltas, strict=True):
            if not charge.window:
                holders = self._leases.get(charge.key)
                if holders is not None:
                    holders.pop(lease, None)
            elif delta:
                self._correct(charge, delta, charged_at, now)

    def _correct(self, charge: Charge, delta: int, charged_at: float, now: float) -> None:
        ring = self._rings.get(charge.key)
        if ring is None:
            ring = self._rings[charge.key] = _Ring(charge.window)
        ring.expire(bucket_of(charge.window, now))
        charged = bucket_of(charge.window, charged_at)
        if charged in ring.buckets:
            # the correction belongs to the original bucket, so it expires with it
            delta = max(delta, -ring.buckets[charged])
            ring.buckets[charged] += delta
            ring.total += delta
            if not ring.buckets[charged]:
                del ring.buckets[charged]
        elif delta > 0:
            ring.add(bucket_of(charge.window, now), delta)

    async def refresh(self, charges: Sequence[Charge], lease: str, now: float) -> None:
        for charge in charges:
            holders = self._leases.get(charge.key)
            if not charge.window and holders is not None and lease in holders:
                holders[lease] = now + self.lease_ttl

    def _sweep(self, now: float) -> None:
        """Forget counters nobody used for a whole window, so memory follows the active set."""
        self._next_sweep = now + _SWEEP_EVERY
        for key, ring in list(self._rings.items()):
            ring.expire(bucket_of(ring.window, now))
            if not ring.buckets:
                del self._rings[key]
        for key, holders in list(self._leases.items()):
            if all(expiry <= now for expiry in holders.values()):
                del self._leases[key]

    async def aclose(self) -> None:
        return None


class RedisWindowCounter:
    """Counters in Redis, shared by every replica: one script call per request.

    A settle is not sent on its own: it rides on the next admission's script call (applied first),
    or goes alone after SETTLE_DELAY when no admission comes. So a request costs one round trip,
    and a settle lost to a Redis outage only leaves the estimate in place and a lease to expire.
    """

    def __init__(self, connection: RedisConnection, lease_ttl: float = 30.0,
                 tag: str = "limits") -> None:
        self.lease_ttl = lease_ttl
        self._redis = connection
        self._tag = tag
        self._pending_keys: list[str] = []
        self._pending: list[list[str | int]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def _key(self, charge: Charge) -> str:
        return self._redis.key("window", self._tag, charge.key)

    async def acquire(self, charges: Sequence[Charge], lease: str, now: float) -> Admission:
        now_ms = int(now * 1000)
        lease_ms = int(self.lease_ttl * 1000)
        specs: list[list[str | int]] = []
        for charge in charges:
            if charge.window:
                specs.append(["w", charge.limit, charge.cost, str(bucket_of(charge.window, now)),
                              _window_ttl_ms(charge.window)])
            else:
                specs.append(["c", charge.limit, 1, now_ms, 2 * lease_ms, now_ms + lease_ms])
        settle_keys, settles = self._take_pending()
        # JSON arguments: far cheaper for the client to send than six arguments per counter
        result = await self._run(settle_keys + [self._key(c) for c in charges],
                                 [lease, SLOTS, orjson.dumps(specs), orjson.dumps(settles)])
        return _admission(charges, result, now)

    async def settle(self, charges: Sequence[Charge], deltas: Sequence[int], charged_at: float,
                     lease: str, now: float) -> None:
        for charge, delta in zip(charges, deltas, strict=True):
            if charge.window and delta:
                self._pending.append(["w", delta, str(bucket_of(charge.window, charged_at)),
                                      str(bucket_of(charge.window, now)),
                                      _window_ttl_ms(charge.window)])
            elif not charge.window:
                self._pending.append(["c", 0, lease])
            else:
                continue
            self._pending_keys.append(self._key(charge))
        if self._pending and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SETTLE_DELAY, self._send_pending)

    def _take_pending(self) -> tuple[list[str], list[list[str | int]]]:
        taken = self._pending_keys, self._pending
        self._pending_keys, self._pending = [], []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return taken

    def _send_pending(self) -> None:
        self._timer = None
        keys, settles = self._take_pending()
        if keys:
            task = asyncio.get_running_loop().create_task(self._send(keys, settles))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, keys: list[str], settles: list[list[str | int]]) -> None:
        with contextlib.suppress(StateBackendError):  # leases expire; estimates stand
            await self._run(keys, ["", SLOTS, b"[]", orjson.dumps(settles)])

    async def refresh(self, charges: Sequence[Charge], lease: str, now: float) -> None:
        expiry = int((now + self.lease_ttl) * 1000)
        try:
            async with self._redis.client.pipeline(transaction=False) as pipe:
                for charge in charges:
                    if not charge.window:
                        pipe.zadd(self._key(charge), {lease: expiry}, xx=True)
                        pipe.pexpire(self._key(charge), int(2000 * self.lease_ttl))
                await pipe.execute()
        except (TimeoutError, RedisError, OSError) as exc:
            self._redis.mark_down(exc)
            raise StateBackendError("The rate-limit store (Redis) is unreachable.") from exc

    async def _run(self, keys: list[str], args: list[str | int | bytes]) -> list[int]:
        try:
            result: list[int] = await self._redis.run("window", keys, args)
        except (TimeoutError, RedisError, OSError) as exc:
            raise StateBackendError("The rate-limit store (Redis) is unreachable.") from exc
        return result

    async def aclose(self) -> None:
        self._send_pending()
        if self._sending:
            await asyncio.wait(self._sending, timeout=2)


def _admission(charges: Sequence[Charge], result: list[int], now: float) -> Admission:
    refused, retry_bucket, never = (int(x) for x in result[:3])
    used = [int(x) for x in result[3::2]]
    newest = [int(x) for x in result[4::2]]
    remaining = tuple(max(0, c.limit - u) for c, u in zip(charges, used, strict=True))
    reset = tuple(max(0.0, bucket_end(c.window, top) - now) if c.window and top else 0.0
                  for c, top in zip(charges, newest, strict=True))
    if not refused:
        return Admission(True, -1, 0.0, remaining, reset)
    charge = charges[refused - 1]
    if never:
        retry = math.inf
    elif charge.window:
        retry = max(0.0, bucket_end(charge.window, retry_bucket) - now)
    else:
        retry = CONCURRENCY_HINT
    return Admission(False, refused - 1, retry, remaining, reset)


def _window_ttl_ms(window: float) -> int:
    return math.ceil(window / SLOTS * (SLOTS + 2) * 1000)


def open_window_counter(redis: RedisConnection | None, lease_ttl: float = 30.0) -> WindowCounter:
    """The counter for the configured backend: Redis when there is a connection, else memory."""
    if redis is None:
        return MemoryWindowCounter(lease_ttl)
    return RedisWindowCounter(redis, lease_ttl)
