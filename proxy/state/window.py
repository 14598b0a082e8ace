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
_KEYS_KEPT = 4096  # Redis key names remembered per counter name


def bucket_of(window: float, t: float) -> int:
    return math.floor(t / (window / SLOTS))


def bucket_end(window: float, bucket: int) -> float:
    """When a charge made in `bucket` stops being counted."""
    return (bucket + SLOTS + 1) * (window / SLOTS)


class _Ring:
    """The live buckets of one window counter, oldest first, and their running total."""

    __slots__ = ("buckets", "current", "newest", "total", "width", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.width = window / SLOTS
        self.buckets: dict[int, int] = {}
        self.total = 0
        self.current = -(2**62)  # the bucket up to which old ones were dropped
        self.newest = 0  # the last bucket in `buckets` (meaningless while it is empty)

    def expire(self, current: int) -> None:
        # Nothing can leave twice in one bucket: a counter charged a thousand times a second
        # looks at its oldest bucket once per bucket width, not once per request.
        if current <= self.current:
            return
        self.current = current
        buckets = self.buckets
        while buckets:
            oldest = next(iter(buckets))
            if oldest >= current - SLOTS:
                return
            self.total -= buckets.pop(oldest)

    def add(self, bucket: int, amount: int) -> None:
        self.buckets[bucket] = self.buckets.get(bucket, 0) + amount
        self.total += amount
        self.newest = next(reversed(self.buckets))

    def take(self, bucket: int, amount: int) -> None:
        """Correct an existing bucket by `amount` (not below zero: it empties it)."""
        left = self.buckets[bucket] + amount
        self.total += amount
        if left:
            self.buckets[bucket] = left
            return
        del self.buckets[bucket]
        if self.buckets:
            self.newest = next(reversed(self.buckets))

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
        return max(0.0, bucket_end(self.window, self.newest) - now)


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
        """The whole admission in one synchronous step: nothing else runs in between.

        Counters are charged as they are checked; a refusal takes back what this request charged,
        which leaves exactly the state before it (nothing else ran in between).
        """
        if now >= self._next_sweep:
            self._sweep(now)
        rings = self._rings
        remaining: list[int] = []
        reset: list[float] = []
        for charge in charges:
            if not charge.window:
                left = self._hold(charge, lease, now)
                if left < 0:
                    return self._refusal(charges, len(reset), lease, now)
                remaining.append(left)
                reset.append(0.0)
                continue
            ring = rings.get(charge.key) or self._new_ring(charge)
            current = math.floor(now / ring.width)
            ring.expire(current)
            cost = charge.cost
            if ring.total + cost > charge.limit:
                return self._refusal(charges, len(reset), lease, now)
            buckets = ring.buckets
            if cost:
                if current in buckets:
                    buckets[current] += cost
                else:
                    buckets[current] = cost
                    ring.newest = next(reversed(buckets))
                ring.total += cost
            remaining.append(charge.limit - ring.total)
            if buckets:
                end = (ring.newest + SLOTS + 1) * ring.width - now
                reset.append(end if end > 0.0 else 0.0)
            else:
                reset.append(0.0)
        return Admission(True, -1, 0.0, tuple(remaining), tuple(reset))

    def _hold(self, charge: Charge, lease: str, now: float) -> int:
        """Take a concurrency slot for `lease`: the slots left, or -1 when there is none."""
        holders = self._leases.get(charge.key)
        if holders is None:
            holders = self._leases[charge.key] = {}
        elif len(holders) >= charge.limit:
            self._drop_expired(holders, now)
        if len(holders) >= charge.limit:
            return -1
        holders[lease] = now + self.lease_ttl
        return charge.limit - len(holders)

    def _take_back(self, charges: Sequence[Charge], lease: str, now: float) -> None:
        """Undo the charges of a request refused part-way (same step: the exact earlier state)."""
        for charge in charges:
            if not charge.window:
                self._leases[charge.key].pop(lease, None)
            elif charge.cost:
                ring = self._rings[charge.key]
                ring.take(math.floor(now / ring.width), -charge.cost)

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
        if len(holders) >= charge.limit:
            self._drop_expired(holders, now)
        return len(holders)

    @staticmethod
    def _drop_expired(holders: dict[str, float], now: float) -> None:
        # only worth it when the counter looks full: live holders release their own leases
        for gone in [lease for lease, expiry in holders.items() if expiry <= now]:
            del holders[gone]

    def _used(self, charge: Charge, now: float) -> int:
        return self._ring(charge, now).total if charge.window else self._holders(charge, now)

    def _refusal(self, charges: Sequence[Charge], index: int, lease: str,
                 now: float) -> Admission:
        """Charge `index` does not fit: every counter is described as it stands without the request."""
        self._take_back(charges[:index], lease, now)
        used = [self._used(c, now) for c in charges]
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
        current = math.floor(now / ring.width)
        ring.expire(current)
        charged = math.floor(charged_at / ring.width)
        amount = ring.buckets.get(charged)
        if amount is not None:
            # the correction belongs to the original bucket, so it expires with it
            ring.take(charged, max(delta, -amount))
        elif delta > 0:
            ring.add(current, delta)

    async def refresh(self, charges: Sequence[Charge], lease: str, now: float) -> None:
        for charge in charges:
            holders = self._leases.get(charge.key)
            if not charge.window and holders is not None and lease in holders:
                holders[lease] = now + self.lease_ttl

    def _sweep(self, now: float) -> None:
        """Forget counters nobody used for a whole window, so memory follows the active set."""
        self._next_sweep = now + _SWEEP_EVERY
        for key, ring in list(self._rings.items()):
            ring.expire(math.floor(now / ring.width))
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
        self._pending: list[tuple[str, list[str | int]]] = []  # settles: (key, entry)
        self._timer: asyncio.TimerHandle | None = None
        self._since = 0.0  # loop time of the oldest pending settle
        self._sending: set[asyncio.Task[None]] = set()
        self._keys: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop, read once: on Python 3.11 `get_running_loop` is a system call (pid check)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _key(self, charge: Charge) -> str:
        key = self._keys.get(charge.key)
        if key is None:
            if len(self._keys) >= _KEYS_KEPT:
                self._keys.clear()
            key = self._keys[charge.key] = self._redis.key("window", self._tag, charge.key)
        return key

    async def acquire(self, charges: Sequence[Charge], lease: str, now: float) -> Admission:
        now_ms = int(now * 1000)
        lease_ms = int(self.lease_ttl * 1000)
        entries = self._take_pending()
        settled = len(entries)  # earlier settles go first, then this request's counters
        for charge in charges:
            if charge.window:
                entries.append((self._key(charge), [0, "w", charge.limit, charge.cost,
                                                    str(bucket_of(charge.window, now)),
                                                    _window_ttl_ms(charge.window)]))
            else:
                entries.append((self._key(charge), [0, "c", charge.limit, 1, now_ms,
                                                    2 * lease_ms, now_ms + lease_ms]))
        result = await self._run(*_pack(lease, settled, entries))
        return _admission(charges, result, now)

    async def settle(self, charges: Sequence[Charge], deltas: Sequence[int], charged_at: float,
                     lease: str, now: float) -> None:
        waiting = bool(self._pending)
        for charge, delta in zip(charges, deltas, strict=True):
            if charge.window and delta:
                self._pending.append((self._key(charge), [
                    0, "w", delta, str(bucket_of(charge.window, charged_at)),
                    str(bucket_of(charge.window, now)), _window_ttl_ms(charge.window)]))
            elif not charge.window:
                self._pending.append((self._key(charge), [0, "c", 0, lease]))
        if self._pending and not waiting:
            loop = self._running_loop()
            self._since = loop.time()
            if self._timer is None:
                self._timer = loop.call_later(SETTLE_DELAY, self._send_due)

    def _take_pending(self) -> list[tuple[str, list[str | int]]]:
        # The timer keeps running: under load, arming and cancelling it per request costs more
        # than letting it find nothing to send.
        taken, self._pending = self._pending, []
        return taken

    def _send_due(self) -> None:
        """Send the settles that found no admission to ride on within SETTLE_DELAY."""
        self._timer = None
        if not self._pending:
            return
        loop = self._running_loop()
        early = self._since + SETTLE_DELAY - loop.time()
        if early > 0:
            self._timer = loop.call_later(early, self._send_due)
        else:
            self._send_pending()

    def _send_pending(self) -> None:
        entries = self._take_pending()
        if entries:
            task = self._running_loop().create_task(self._send(entries))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, entries: list[tuple[str, list[str | int]]]) -> None:
        with contextlib.suppress(StateBackendError):  # leases expire; estimates stand
            await self._run(*_pack("", len(entries), entries))

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

    async def _run(self, keys: list[str], payload: bytes) -> list[int]:
        try:
            result: list[int] = await self._redis.run("window", keys, [payload])
        except (TimeoutError, RedisError, OSError) as exc:
            raise StateBackendError("The rate-limit store (Redis) is unreachable.") from exc
        return result

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._send_pending()
        if self._sending:
            await asyncio.wait(self._sending, timeout=2)


def _admission(charges: Sequence[Charge], result: list[int], now: float) -> Admission:
    refused, retry_bucket, never = result[0], result[1], result[2]
    remaining: list[int] = []
    reset: list[float] = []
    at = 3
    for charge in charges:
        used, top = result[at], result[at + 1]
        at += 2
        remaining.append(charge.limit - used if used < charge.limit else 0)
        if charge.window and top:
            end = (top + SLOTS + 1) * (charge.window / SLOTS) - now
            reset.append(end if end > 0.0 else 0.0)
        else:
            reset.append(0.0)
    if not refused:
        return Admission(True, -1, 0.0, tuple(remaining), tuple(reset))
    charge = charges[refused - 1]
    if never:
        retry = math.inf
    elif charge.window:
        retry = max(0.0, bucket_end(charge.window, retry_bucket) - now)
    else:
        retry = CONCURRENCY_HINT
    return Admission(False, refused - 1, retry, tuple(remaining), tuple(reset))


def _pack(lease: str, settled: int,
          entries: list[tuple[str, list[str | int]]]) -> tuple[list[str], bytes]:
    """The script's KEYS (each named once) and its one JSON argument, entries pointing at KEYS.

    One argument and no repeated key: the client's cost grows with the number of arguments,
    far more than with the length of one.
    """
    keys: list[str] = []
    index: dict[str, int] = {}
    payload: list[object] = [lease, SLOTS, settled]
    for key, entry in entries:
        at = index.get(key)
        if at is None:
            keys.append(key)
            at = index[key] = len(keys)
        entry[0] = at
        payload.append(entry)
    return keys, orjson.dumps(payload)


def _window_ttl_ms(window: float) -> int:
    return math.ceil(window / SLOTS * (SLOTS + 2) * 1000)


def open_window_counter(redis: RedisConnection | None, lease_ttl: float = 30.0) -> WindowCounter:
    """The counter for the configured backend: Redis when there is a connection, else memory."""
    if redis is None:
        return MemoryWindowCounter(lease_ttl)
    return RedisWindowCounter(redis, lease_ttl)
