"""The shared vector index: entries live in Redis, every replica searches a local mirror of them.

Plain Redis has no vector search, and fetching vectors per lookup would not scale, so:
- an entry is a hash `{p}:sem:{sem}:e:<scope>\x1f<id>` = {scope, vec, payload}, expiring with its TTL;
- every add is also appended (id, scope, vector, expiry) to one stream `{p}:semlog:{sem}`;
- each replica loads all entries once at start, then polls the stream (every `poll` seconds) and
  adds what others wrote to its in-memory numpy mirror, so a write is searchable everywhere
  within about `poll` seconds;
- search is local; only a candidate above the threshold costs one HGET, which also confirms the
  entry still exists (expired or purged entries are dropped from the mirror when found gone);
- purge deletes the scope's keys and appends a purge record the other replicas apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from redis.exceptions import RedisError

from proxy.semantic.index import Candidate, MemoryVectorIndex
from proxy.state.redis import RedisConnection

log = logging.getLogger("proxy.semantic")
T = TypeVar("T")

_SEP = "\x1f"  # between scope and id in a key: cannot appear in a scope we build
_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


class RedisVectorIndex:
    """Redis holds the truth (vectors, answers, TTL); this replica searches a mirror of it."""

    def __init__(self, conn: RedisConnection, dim: int, max_entries: int = 100_000,
                 poll: float = 0.2, clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self._redis = conn.client
        self.poll = poll
        self._clock = clock
        self._mirror = MemoryVectorIndex(dim, max_entries=max_entries, clock=clock)
        self._log_key = conn.key("semlog", "sem")
        self._entry_prefix = conn.key("sem", "sem", "e") + ":"
        self._max_entries = max_entries
        self._cursor = "0-0"
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Load what other replicas stored, then follow their writes in the background."""
        with contextlib.suppress(RedisError, OSError):
            await self._snapshot()
        self._task = asyncio.get_running_loop().create_task(self._follow())

    def _entry_key(self, scope: str, entry_id: str) -> str:
        return f"{self._entry_prefix}{scope}{_SEP}{entry_id}"

    async def add(self, scope: str, vector: npt.ArrayLike, payload: bytes, ttl: float,
                  entry_id: str | None = None) -> str:
        entry_id = entry_id or uuid.uuid4().hex
        vec = self._mirror.check(vector)
        expires_ms = int((self._clock() + ttl) * 1000)
        key = self._entry_key(scope, entry_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(key, mapping={"scope": scope, "vec": vec.tobytes(), "payload": payload,
                                "exp": expires_ms})
        pipe.pexpireat(key, expires_ms)
        pipe.xadd(self._log_key, {"op": "add", "id": entry_id, "scope": scope,
                                  "vec": vec.tobytes(), "exp": expires_ms},
                  maxlen=self._max_entries, approximate=True)
        await self._guarded(pipe.execute())
        self._mirror.insert(scope, entry_id, vec, b"", expires_ms / 1000)
        return entry_id

    async def search(self, scope: str, vector: npt.ArrayLike, k: int,
                     min_score: float = -1.0) -> list[Candidate]:
        """Nearest entries of the mirror, with their payloads read from Redis."""
        found = self._mirror.nearest(scope, self._mirror.check(vector), k, min_score)
        if not found:
            return []
        keys = [self._entry_key(scope, c.id) for c in found]
        payloads = await self._guarded(self._fetch(keys))
        gone = {c.id for c, p in zip(found, payloads, strict=True) if p is None}
        if gone:
            self._mirror.remove(gone)
        return [Candidate(c.id, c.score, p) for c, p in zip(found, payloads, strict=True)
                if p is not None]

    async def _fetch(self, keys: list[str]) -> list[bytes | None]:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "payload")
        return list(await pipe.execute())

    async def purge(self, scope_prefix: str = "") -> int:
        pattern = self._entry_prefix + scope_prefix.translate(_GLOB_SPECIAL) + "*"
        deleted = 0
        async for batch in self._scan_batches(pattern):
            deleted += int(await self._guarded(self._redis.unlink(*batch)))
        await self._guarded(self._redis.xadd(self._log_key, {"op": "purge", "scope": scope_prefix},
                                             maxlen=self._max_entries, approximate=True))
        self._mirror.drop_scopes(scope_prefix)
        return deleted

    async def _scan_batches(self, pattern: str) -> AsyncIterator[list[Any]]:
        batch: list[Any] = []
        async for key in self._redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) == 500:
                yield batch
                batch = []
        if batch:
            yield batch

    async def _snapshot(self) -> None:
        last: Any = await self._redis.xrevrange(self._log_key, count=1)
        self._cursor = last[0][0].decode() if last else "0-0"
        async for batch in self._scan_batches(self._entry_prefix.translate(_GLOB_SPECIAL) + "*"):
            pipe = self._redis.pipeline(transaction=False)
            for key in batch:
                pipe.hmget(key, "scope", "vec", "exp")
            for key, (scope, vec, exp) in zip(batch, await pipe.execute(), strict=True):
                if scope is not None and vec is not None and exp is not None:
                    entry_id = key.decode().rpartition(_SEP)[2]
                    self._apply_add(entry_id, scope.decode(), vec, int(exp))

    def _apply_add(self, entry_id: str, scope: str, vec: bytes, exp_ms: int) -> None:
        if exp_ms / 1000 > self._clock():
            try:
                vector = self._mirror.check(np.frombuffer(vec, dtype=np.float32).copy())
            except ValueError:
                return  # written by a replica with another embedder: never comparable
            self._mirror.insert(scope, entry_id, vector, b"", exp_ms / 1000)

    async def _follow(self) -> None:
        """Apply other replicas' adds and purges; on Redis trouble keep trying, never crash."""
        while not self._closing:
            try:
                await self.sync()
            except (RedisError, OSError) as exc:
                self._conn.mark_down(exc)
            await asyncio.sleep(self.poll)

    async def sync(self) -> int:
        """Read the log from the cursor once; returns how many records were applied."""
        reply: Any = await self._redis.xread({self._log_key: self._cursor}, count=1000)
        applied = 0
        for _stream, records in reply or []:
            for record_id, fields in records:
                self._cursor = record_id.decode()
                self._apply(fields)
                applied += 1
        self._conn.mark_up()
        return applied

    def _apply(self, fields: dict[bytes, bytes]) -> None:
        op, scope = fields.get(b"op"), fields.get(b"scope", b"").decode()
        if op == b"add":
            self._apply_add(fields[b"id"].decode(), scope, fields[b"vec"], int(fields[b"exp"]))
        elif op == b"purge":
            self._mirror.drop_scopes(scope)

    async def _guarded(self, operation: Awaitable[T]) -> T:
        try:
            result = await operation
        except (RedisError, OSError) as exc:
            self._conn.mark_down(exc)
            raise
        return result

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            # The client library may turn a cancel mid-command into a connection error, which
            # the loop survives; the flag ends it at the next turn, the wait is bounded anyway.
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2 * self.poll + 1)
        await self._mirror.aclose()
