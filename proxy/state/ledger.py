"""Budget ledgers: spend reservations against caps, in memory (persisted to SQLite) or in Redis.

Amounts are integer nano-USD (1e-9 USD) so sums never drift. The memory ledger decides without
awaiting (atomic on the event loop) and writes settled spend to a SQLite file in WAL mode from a
thread, batched; the Redis ledger runs one Lua script per step, all keys under one hash tag.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from redis.exceptions import RedisError

from proxy.errors import StateBackendError
from proxy.state.base import Reservation
from proxy.state.redis import RedisConnection

log = logging.getLogger("proxy.state.ledger")

NANO = 1_000_000_000  # nano-USD per USD
_SWEEP_EVERY = 1.0  # seconds between scans for lapsed holds (memory)
_REDIS_IN_FLIGHT = 64  # ledger scripts in flight per process: stays inside the client's pool


def to_nano(usd: float) -> int:
    """USD to integer nano-USD, rounded up so estimates never undercount.

    Float noise is dropped first (the value rounded to 3 decimals), so 0.1 + 0.2 USD is not
    charged one nano more than 0.3 USD.
    """
    nano = usd * NANO
    whole = int(nano)
    fraction = nano - whole  # exact in binary floating point
    # Clear of the 0.0005 rounding edge the answer is plain; `round` with digits is slow.
    if fraction < 0.0004:
        return whole
    if fraction > 0.0006:
        return whole + 1
    scaled = round(nano, 3)
    return whole + 1 if scaled > whole else whole


class SpendFile:
    """Settled spend and alert marks in a SQLite file (WAL). Blocking: call it from a thread.

    Deltas are added rather than totals written, so several processes may share one file.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS spend (key TEXT PRIMARY KEY, nano INTEGER)")
        self._db.execute("CREATE TABLE IF NOT EXISTS alerts (mark TEXT PRIMARY KEY)")

    def load(self) -> tuple[dict[str, int], set[str]]:
        spend = dict(self._db.execute("SELECT key, nano FROM spend").fetchall())
        marks = {row[0] for row in self._db.execute("SELECT mark FROM alerts")}
        return spend, marks

    def write(self, resets: Sequence[tuple[str, bool]], deltas: dict[str, int],
              marks: Sequence[str]) -> None:
        with self._transaction():
            for prefix, exact in resets:
                if exact:
                    self._db.execute("DELETE FROM spend WHERE key = ?", (prefix,))
                    self._db.execute("DELETE FROM alerts WHERE mark LIKE ? ESCAPE '\\'",
                                     (_like(prefix + "@"),))
                    continue
                pattern = _like(prefix)
                self._db.execute("DELETE FROM spend WHERE key LIKE ? ESCAPE '\\'", (pattern,))
                self._db.execute("DELETE FROM alerts WHERE mark LIKE ? ESCAPE '\\'", (pattern,))
            self._db.executemany(
                "INSERT INTO spend (key, nano) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET nano = nano + excluded.nano",
                list(deltas.items()))
            self._db.executemany("INSERT OR IGNORE INTO alerts (mark) VALUES (?)",
                                 [(m,) for m in marks])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield None
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


def _matcher(prefix: str, exact: bool) -> Callable[[str], bool]:
    return prefix.__eq__ if exact else lambda key: key.startswith(prefix)


def _marked(mark: str) -> str:
    """The ledger key an alert mark (`<key>@<threshold>`) belongs to."""
    return mark.rsplit("@", 1)[0]


def _like(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


class MemoryLedger:
    """The embedded ledger: dictionaries on the event loop, persisted by a background flusher."""

    def __init__(self, path: Path | None = None, flush_interval: float = 0.2) -> None:
        self._path = path
        self._interval = flush_interval
        self._spent: dict[str, int] = {}
        self._held: dict[str, int] = {}
        self._holds: dict[str, tuple[tuple[str, ...], int, float]] = {}
        self._ids = map(str, itertools.count())
        self._marks: set[str] = set()
        self._next_sweep = 0.0
        self._deltas: dict[str, int] = {}
        self._resets: list[tuple[str, bool]] = []
        self._new_marks: list[str] = []
        self._file: SpendFile | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()

    async def start(self) -> None:
        """Open the file and load what earlier runs spent."""
        if self._path is None:
            return
        self._file = await asyncio.to_thread(SpendFile, self._path)
        self._spent, self._marks = await asyncio.to_thread(self._file.load)
        self._flusher = asyncio.create_task(self._flush_loop())

    async def reserve(self, keys: Sequence[str], caps: Sequence[int], amount: int,
                      hold: float, now: float) -> Reservation:
        return self.reserve_now(keys, caps, amount, hold, now)

    def reserve_now(self, keys: Sequence[str], caps: Sequence[int], amount: int,
                    hold: float, now: float) -> Reservation:
        """`reserve` without the await: nothing here waits, so callers may skip the coroutine."""
        if now >= self._next_sweep:
            self._sweep(now)
        spent, held = self._spent, self._held
        for index, key in enumerate(keys):
            cap = caps[index]
            if cap >= 0:
                used = spent.get(key, 0) + held.get(key, 0)
                if used + amount > cap:
                    return Reservation(None, tuple(keys), amount, index, used)
        hold_id = next(self._ids)
        holding = tuple(keys)
        for key in holding:
            held[key] = held.get(key, 0) + amount
        self._holds[hold_id] = (holding, amount, now + hold)
        # tuple.__new__ skips the NamedTuple's Python-level constructor (this runs per request)
        return tuple.__new__(Reservation, (hold_id, holding, amount, -1, 0))

    def shrink_now(self, hold_id: str, amount: int) -> None:
        """Lower a hold in flight to `amount` (never raise it); gone already: nothing to do."""
        entry = self._holds.get(hold_id)
        if entry is None or amount >= entry[1]:
            return
        keys, before, expiry = entry
        self._holds[hold_id] = (keys, amount, expiry)
        held = self._held
        for key in keys:
            held[key] = held.get(key, 0) - (before - amount)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + _SWEEP_EVERY
        for hold_id in [h for h, (_, _, expiry) in self._holds.items() if expiry <= now]:
            self._release(hold_id)

    def _release(self, hold_id: str) -> None:
        entry = self._holds.pop(hold_id, None)
        if entry is None:
            return  # lapsed and swept already
        keys, amount, _ = entry
        held = self._held
        for key in keys:
            left = held.get(key, 0) - amount
            if left > 0:
                held[key] = left
            else:
                held.pop(key, None)

    async def settle(self, reservation: Reservation, actual: int, charge: Sequence[str],
                     now: float) -> list[int]:
        return self.settle_now(reservation, actual, charge)

    def settle_now(self, reservation: Reservation, actual: int, charge: Sequence[str]) -> list[int]:
        """`settle` without the await. Spend reaches the file with the next flush, off this path."""
        if reservation.id is not None:
            self._release(reservation.id)
        spent, deltas = self._spent, self._deltas
        totals = []
        for keys in (reservation.keys, charge):
            for key in keys:
                total = spent[key] = spent.get(key, 0) + actual
                totals.append(total)
                if actual:
                    deltas[key] = deltas.get(key, 0) + actual
        return totals

    async def totals(self, prefix: str) -> dict[str, tuple[int, int]]:
        keys = {k for k in (*self._spent, *self._held) if k.startswith(prefix)}
        return {k: (self._spent.get(k, 0), self._held.get(k, 0)) for k in keys}

    async def reset(self, prefix: str, exact: bool = False) -> int:
        hit = _matcher(prefix, exact)
        gone = [k for k in self._spent if hit(k)]
        for key in gone:
            del self._spent[key]
        for key in [k for k in self._deltas if hit(k)]:
            del self._deltas[key]
        self._marks = {m for m in self._marks if not hit(_marked(m))}
        self._new_marks = [m for m in self._new_marks if not hit(_marked(m))]
        self._resets.append((prefix, exact))
        await self.flush()
        return len(gone)

    async def claim_alert(self, key: str, threshold: float) -> bool:
        mark = f"{key}@{threshold:g}"
        if mark in self._marks:
            return False
        self._marks.add(mark)
        self._new_marks.append(mark)
        return True

    async def flush(self) -> None:
        """Write pending changes now (also runs every `flush_interval` seconds)."""
        async with self._flush_lock:
            await self._flush_pending()

    async def _flush_pending(self) -> None:
        if self._file is None or not (self._deltas or self._resets or self._new_marks):
            return
        resets, deltas, marks = self._resets, self._deltas, self._new_marks
        self._resets, self._deltas, self._new_marks = [], {}, []
        try:
            await asyncio.to_thread(self._file.write, resets, deltas, marks)
        except sqlite3.Error as exc:
            # Keep the batch for the next attempt; spend in memory stays right meanwhile.
            log.error("could not write budget spend to %s: %s", self._path, exc)
            self._resets = resets + self._resets
            for key, delta in deltas.items():
                self._deltas[key] = self._deltas.get(key, 0) + delta
            self._new_marks = marks + self._new_marks

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._file is not None:
            await self.flush()
            await asyncio.to_thread(self._file.close)
            self._file = None


class RedisLedger:
    """The shared ledger: every step is one Lua script on keys under the `{budget}` hash tag."""

    def __init__(self, connection: RedisConnection) -> None:
        self._redis = connection
        self._keys = [connection.key("ledger", "budget", part)
                      for part in ("spend", "held", "holds", "holdinfo")]
        self._alerts = connection.key("ledger", "budget", "alerts")
        self._in_flight = asyncio.Semaphore(_REDIS_IN_FLIGHT)
        self._origin = uuid.uuid4().hex[:16]  # hold ids: unique per process, counted within it
        self._ids = itertools.count()

    async def reserve(self, keys: Sequence[str], caps: Sequence[int], amount: int,
                      hold: float, now: float) -> Reservation:
        hold_id = f"{self._origin}-{next(self._ids)}"
        args: list[object] = [repr(now), hold_id, amount, repr(hold)]
        for key, cap in zip(keys, caps, strict=True):
            args += [key, cap]
        refused, used = await self._run("ledger_reserve", self._keys, args)
        if refused:
            return Reservation(None, tuple(keys), amount, int(refused) - 1, int(used))
        return Reservation(hold_id, tuple(keys), amount)

    async def settle(self, reservation: Reservation, actual: int, charge: Sequence[str],
                     now: float) -> list[int]:
        args: list[object] = [reservation.id or "", actual, *reservation.keys, *charge]
        totals = await self._run("ledger_settle", self._keys, args)
        return [int(t) for t in totals]

    async def totals(self, prefix: str) -> dict[str, tuple[int, int]]:
        spend, held = await self._read(prefix, self._keys[0]), await self._read(prefix, self._keys[1])
        return {k: (spend.get(k, 0), held.get(k, 0)) for k in {*spend, *held}}

    async def _read(self, prefix: str, name: str) -> dict[str, int]:
        match = _glob_escape(prefix) + "*"
        found: dict[str, int] = {}
        try:
            async for field, value in self._redis.client.hscan_iter(name, match=match, count=500):
                found[field.decode()] = int(value)
        except (RedisError, OSError) as exc:
            self._redis.mark_down(exc)
            raise StateBackendError("The budget ledger (Redis) is unavailable.") from None
        return found

    async def reset(self, prefix: str, exact: bool = False) -> int:
        hit = _matcher(prefix, exact)
        spend = [k for k in await self._read(prefix, self._keys[0]) if hit(k)]
        marks = [m for m in await self._read_marks(prefix) if hit(_marked(m))]
        try:
            if spend:
                await self._redis.client.hdel(self._keys[0], *spend)
            if marks:
                await self._redis.client.hdel(self._alerts, *marks)
        except (RedisError, OSError) as exc:
            self._redis.mark_down(exc)
            raise StateBackendError("The budget ledger (Redis) is unavailable.") from None
        return len(spend)

    async def _read_marks(self, prefix: str) -> list[str]:
        match = _glob_escape(prefix) + "*"
        try:
            return [f.decode() async for f, _ in
                    self._redis.client.hscan_iter(self._alerts, match=match, count=500)]
        except (RedisError, OSError) as exc:
            self._redis.mark_down(exc)
            raise StateBackendError("The budget ledger (Redis) is unavailable.") from None

    async def claim_alert(self, key: str, threshold: float) -> bool:
        try:
            claimed = await self._redis.client.hsetnx(self._alerts, f"{key}@{threshold:g}", 1)
        except (RedisError, OSError) as exc:
            self._redis.mark_down(exc)
            raise StateBackendError("The budget ledger (Redis) is unavailable.") from None
        return bool(claimed)

    async def _run(self, script: str, keys: list[str], args: list[object]) -> list[int]:
        try:
            async with self._in_flight:
                result: list[int] = await self._redis.run(script, keys, args)
        except (RedisError, OSError):
            raise StateBackendError("The budget ledger (Redis) is unavailable.") from None
        return result

    async def aclose(self) -> None:
        return None


def _glob_escape(text: str) -> str:
    for char in "\\*?[]":
        text = text.replace(char, "\\" + char)
    return text
