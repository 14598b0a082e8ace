"""The TTL key-value stores behind the exact cache: an in-process LRU, a Redis one, and the LRU
as a short-lived near cache in front of Redis.

The memory store is bounded by bytes and by entry count; the Redis store compresses values, lets
Redis expire them, and fails open (a miss, a skipped write) while Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from proxy.errors import StateBackendError
from proxy.state.base import KVStore
from proxy.state.redis import RedisConnection

# What one entry costs beyond its key and value: the bytes and str headers, the tuple and the
# OrderedDict's node. Counting it keeps RSS, not just payload bytes, within `max_bytes`.
ENTRY_OVERHEAD = 200
_RAW, _ZLIB = b"\x00", b"\x01"
_COMPRESS_FROM = 1024
_THREAD_FROM = 256 << 10
_SCAN_BATCH = 500
_EXPIRY_SCAN = 64


def glob_regex(match: str) -> re.Pattern[str]:
    """Redis-style glob (`*`, `?`, backslash escapes) as a compiled regex over the whole key."""
    parts: list[str] = []
    escaped = False
    for char in match:
        if escaped:
            parts.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def glob_escape(text: str) -> str:
    """`text` with glob metacharacters escaped, to match it literally inside a pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class MemoryKVStore:
    """An LRU of bytes with per-entry TTL, bounded by `max_bytes` and `max_entries`.

    `clock` is monotonic seconds (injected in tests). Expired entries go on read and whenever room
    is needed; the least recently used go next.
    """

    def __init__(self, max_bytes: int, max_entries: int, clock: Callable[[], float]) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._clock = clock
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._locks: dict[str, tuple[str, float]] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: str) -> bytes | None:
        return self._get(key)

    def _get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return item[0]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self._get(key) for key in keys]

    async def set(self, key: str, value: bytes, ttl: float) -> bool:
        cost = len(key) + len(value) + ENTRY_OVERHEAD
        if key in self._data:
            self._drop(key)
        if ttl <= 0 or cost > self.max_bytes or self.max_entries < 1:
            return False
        if self.bytes + cost > self.max_bytes or len(self._data) >= self.max_entries:
            self._make_room(cost)
        self._data[key] = (value, self._clock() + ttl)
        self.bytes += cost
        return True

    def _full(self, cost: int) -> bool:
        return self.bytes + cost > self.max_bytes or len(self._data) >= self.max_entries

    def _make_room(self, cost: int) -> None:
        if not self._full(cost):
            return
        # Expired entries go first, but only among the least recently used few: a full scan
        # on every write would cost O(entries) on the hot path.
        now = self._clock()
        oldest = itertools.islice(self._data.items(), _EXPIRY_SCAN)
        for key in [k for k, (_, expires) in oldest if expires <= now]:
            self._drop(key)
        while self._data and self._full(cost):
            self._drop(next(iter(self._data)))

    def _drop(self, key: str) -> None:
        value, _ = self._data.pop(key)
        self.bytes -= len(key) + len(value) + ENTRY_OVERHEAD

    async def delete(self, key: str) -> bool:
        if key not in self._data:
            return False
        self._drop(key)
        return True

    async def purge(self, match: str = "*") -> int:
        pattern = glob_regex(match)
        doomed = [key for key in self._data if pattern.fullmatch(key)]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    async def lock(self, key: str, ttl: float) -> str | None:
        now = self._clock()
        held = self._locks.get(key)
        if held is not None and held[1] > now:
            return None
        token = secrets.token_hex(8)
        self._locks[key] = (token, now + ttl)
        return token

    async def unlock(self, key: str, token: str) -> None:
        held = self._locks.get(key)
        if held is not None and held[0] == token:
            del self._locks[key]

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._data.clear()
        self._locks.clear()
        self.bytes = 0


class RedisKVStore:
    """Values zlib-compressed (past 1 KB) under `{prefix}:{name}:{key}`, expired by Redis itself.

    Every key is its own slot on Redis Cluster: no command here spans two keys. After a failure
    the store stays quiet for `retry_after` seconds (reads miss, writes are skipped) rather than
    paying a connect timeout on every request; the connection logs the outage once.
    """

    def __init__(self, connection: RedisConnection, name: str, clock: Callable[[], float],
                 retry_after: float = 1.0) -> None:
        self._redis = connection
        self._base = f"{connection.prefix}:{name}:"
        self._clock = clock
        self._retry_after = retry_after
        self._quiet_until = 0.0

    def _key(self, key: str) -> str:
        return self._base + key

    def _available(self) -> bool:
        return self._clock() >= self._quiet_until

    def _failed(self, exc: BaseException) -> None:
        self._quiet_until = self._clock() + self._retry_after
        self._redis.mark_down(exc)

    async def get(self, key: str) -> bytes | None:
        return (await self.get_many([key]))[0]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not self._available() or not keys:
            return [None] * len(keys)
        try:
            fast = self._redis.fast
            if len(keys) == 1:
                raw: list[Any] = [await fast.execute("GET", self._key(keys[0]))]
            else:  # pipelined on the one connection
                raw = await asyncio.gather(*(fast.execute("GET", self._key(key)) for key in keys))
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return [None] * len(keys)
        self._redis.mark_up()
        return [await _decode(value) if value is not None else None for value in raw]

    async def set(self, key: str, value: bytes, ttl: float) -> bool:
        millis = int(ttl * 1000)
        if millis <= 0 or not self._available():
            return False
        data = await _encode(value)
        try:
            await self._redis.fast.execute("SET", self._key(key), data, "PX", millis)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        self._redis.mark_up()
        return True

    async def delete(self, key: str) -> bool:
        try:
            return bool(await self._redis.client.unlink(self._key(key)))
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def purge(self, match: str = "*") -> int:
        client = self._redis.client
        removed = 0
        batch: list[Any] = []
        try:
            async for name in client.scan_iter(match=glob_escape(self._base) + match,
                                               count=_SCAN_BATCH):
                batch.append(name)
                if len(batch) >= _SCAN_BATCH:
                    removed += await client.unlink(*batch)
                    batch = []
            if batch:
                removed += await client.unlink(*batch)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return removed

    def _unavailable(self, exc: BaseException) -> StateBackendError:
        self._failed(exc)
        return StateBackendError("The cache's Redis backend is unavailable.")

    async def lock(self, key: str, ttl: float) -> str | None:
        """SET NX PX; while Redis is down nobody holds a lock, so callers go upstream at once."""
        if not self._available():
            return ""
        token = secrets.token_hex(8)
        try:
            taken = await self._redis.fast.execute("SET", self._key(key), token, "NX", "PX",
                                                   max(1, int(ttl * 1000)))
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return ""
        return token if taken else None

    async def unlock(self, key: str, token: str) -> None:
        if not token or not self._available():
            return
        try:
            await self._redis.run("kv_unlock", [self._key(key)], [token])
        except (RedisError, OSError):
            self._quiet_until = self._clock() + self._retry_after

    async def ready(self) -> bool:
        healthy = await self._redis.ping()
        if healthy:
            self._quiet_until = 0.0
        return healthy

    async def aclose(self) -> None:
        return None  # the connection belongs to the state backend


async def _encode(value: bytes) -> bytes:
    if len(value) < _COMPRESS_FROM:
        return _RAW + value
    if len(value) >= _THREAD_FROM:
        return _ZLIB + await asyncio.to_thread(zlib.compress, value, 1)
    return _ZLIB + zlib.compress(value, 1)


async def _decode(data: bytes) -> bytes | None:
    flag, body = data[:1], data[1:]
    if flag == _RAW:
        return body
    if flag != _ZLIB:
        return None  # not written by this store: treat as a miss
    try:
        if len(body) >= _THREAD_FROM // 4:
            return await asyncio.to_thread(zlib.decompress, body)
        return zlib.decompress(body)
    except zlib.error:
        return None


class NearCachedKVStore:
    """A small in-process LRU (`near`) in front of a shared store (`far`, e.g. Redis).

    Hot entries are read from process memory for up to `near_ttl` seconds instead of a network
    round trip: the price is that a purge or expiry on another replica shows up here up to
    `near_ttl` later. Locks, readiness and admin deletes go to the shared store.
    """

    def __init__(self, near: MemoryKVStore, far: KVStore, near_ttl: float) -> None:
        self.near = near
        self.far = far
        self._near_ttl = near_ttl

    async def get(self, key: str) -> bytes | None:
        value = await self.near.get(key)
        if value is None:
            value = await self.far.get(key)
            if value is not None:
                await self.near.set(key, value, self._near_ttl)
        return value

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values = await self.near.get_many(keys)
        missing = [i for i, value in enumerate(values) if value is None]
        if missing:
            fetched = await self.far.get_many([keys[i] for i in missing])
            for i, value in zip(missing, fetched, strict=True):
                if value is not None:
                    values[i] = value
                    await self.near.set(keys[i], value, self._near_ttl)
        return values

    async def set(self, key: str, value: bytes, ttl: float) -> bool:
        if not await self.far.set(key, value, ttl):
            return False  # the shared store is down: fail open here too (store nothing)
        await self.near.set(key, value, min(ttl, self._near_ttl))
        return True

    async def delete(self, key: str) -> bool:
        await self.near.delete(key)
        return await self.far.delete(key)

    async def purge(self, match: str = "*") -> int:
        await self.near.purge(match)
        return await self.far.purge(match)

    async def lock(self, key: str, ttl: float) -> str | None:
        return await self.far.lock(key, ttl)

    async def unlock(self, key: str, token: str) -> None:
        await self.far.unlock(key, token)

    async def ready(self) -> bool:
        return await self.far.ready()

    async def aclose(self) -> None:
        await self.near.aclose()
        await self.far.aclose()
