"""The in-memory vector index: exact cosine search with numpy, partitioned by scope, with TTL.

Search is exact (no recall loss): one matrix-vector product for small scopes, and for large ones a
bound on a low-dimensional slice first (see `_Partition`), which keeps 100k entries near 1 ms.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


class Candidate(NamedTuple):
    """One search result: entry id, cosine similarity, and the stored payload."""

    id: str
    score: float
    payload: bytes


# Large partitions are stored rotated onto their principal axes. Rotation keeps every cosine,
# and puts most of a vector's weight in the first _HEAD coordinates, so a cheap partial dot
# product plus a Cauchy-Schwarz bound on the rest rules out almost every row before the full
# product: exact results, a fraction of the memory traffic.
_ROTATE_AT = 4096
_HEAD = 96


@dataclass(slots=True)
class _Partition:
    """One scope's rows; the matrix grows by doubling so adds are amortised O(dim). It starts at
    one row: most scopes (one per conversation prefix) hold only a few entries."""

    dim: int
    vectors: Vector = field(init=False)
    heads: Vector = field(init=False)  # first _HEAD coordinates, contiguous (rotated rows only)
    tails: Vector = field(init=False)  # norm of each stored row past _HEAD (rotated rows only)
    rotation: Vector | None = None
    ids: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    expires: list[float] = field(default_factory=list)
    size: int = 0

    def __post_init__(self) -> None:
        self.vectors = np.zeros((1, self.dim), dtype=np.float32)
        self.heads = np.zeros((0, _HEAD), dtype=np.float32)
        self.tails = np.zeros(1, dtype=np.float32)

    def add(self, entry_id: str, vector: Vector, payload: bytes, expires: float) -> None:
        if self.size == self.vectors.shape[0]:
            self.vectors = np.concatenate([self.vectors, np.zeros_like(self.vectors)])
            self.tails = np.concatenate([self.tails, np.zeros_like(self.tails)])
            if self.rotation is not None:
                self.heads = np.concatenate([self.heads, np.zeros_like(self.heads)])
        row = vector if self.rotation is None else vector @ self.rotation
        self.vectors[self.size] = row
        self.tails[self.size] = np.linalg.norm(row[_HEAD:])
        if self.rotation is not None:
            self.heads[self.size] = row[:_HEAD]
        self.ids.append(entry_id)
        self.payloads.append(payload)
        self.expires.append(expires)
        self.size += 1
        if self.rotation is None and self.size >= _ROTATE_AT and self.dim > 2 * _HEAD:
            self._rotate()

    def _rotate(self) -> None:
        rows = self.vectors[: self.size]
        _, axes = np.linalg.eigh(rows.T @ rows)
        self.rotation = np.ascontiguousarray(axes[:, ::-1]).astype(np.float32)
        self.vectors[: self.size] = rows @ self.rotation
        self.tails[: self.size] = np.linalg.norm(self.vectors[: self.size, _HEAD:], axis=1)
        self.heads = np.ascontiguousarray(self.vectors[:, :_HEAD])

    def scores(self, vector: Vector, floor: float) -> tuple[npt.NDArray[np.intp], Vector]:
        """Rows that may score at least `floor`, and their exact cosine similarities."""
        if self.rotation is None:
            return np.arange(self.size), self.vectors[: self.size] @ vector
        query = vector @ self.rotation
        if floor > -1.0:
            bound = self.heads[: self.size] @ query[:_HEAD]
            bound += self.tails[: self.size] * np.float32(np.linalg.norm(query[_HEAD:]))
            rows = np.flatnonzero(bound >= floor)
            if len(rows) * 4 < self.size:  # past that, gathering rows costs more than a scan
                return rows, self.vectors[rows] @ query
        return np.arange(self.size), self.vectors[: self.size] @ query

    def keep(self, mask: npt.NDArray[np.bool_]) -> int:
        """Drop rows where mask is False; returns how many went."""
        kept = np.flatnonzero(mask)
        dropped = self.size - len(kept)
        if dropped:
            rows, tails = self.vectors[kept], self.tails[kept]
            self.vectors = np.zeros((max(1, len(kept) * 2), self.dim), dtype=np.float32)
            self.tails = np.zeros(max(1, len(kept) * 2), dtype=np.float32)
            self.vectors[: len(kept)] = rows
            self.tails[: len(kept)] = tails
            if self.rotation is not None:
                self.heads = np.ascontiguousarray(self.vectors[:, :_HEAD])
            self.ids = [self.ids[i] for i in kept]
            self.payloads = [self.payloads[i] for i in kept]
            self.expires = [self.expires[i] for i in kept]
            self.size = len(kept)
        return dropped


class MemoryVectorIndex:
    """Exact nearest-neighbour search per scope; bounded by `max_entries` and by `max_bytes` of
    payloads (oldest go first)."""

    def __init__(self, dim: int, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic, max_bytes: int = 256 << 20) -> None:
        self.dim = dim
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._parts: dict[str, _Partition] = {}
        self._order: dict[str, tuple[str, int]] = {}  # id -> (scope, payload bytes), oldest first
        self.payload_bytes = 0

    def check(self, vector: npt.ArrayLike) -> Vector:
        """A float32 row of the index's dimension; an index made with dim=0 learns it here."""
        arr = np.asarray(vector, dtype=np.float32).reshape(-1)
        if self.dim == 0:
            self.dim = arr.shape[0]
        if arr.shape[0] != self.dim:
            raise ValueError(f"vector has {arr.shape[0]} dimensions, the index expects {self.dim}")
        return arr

    def __len__(self) -> int:
        return sum(p.size for p in self._parts.values())

    async def add(self, scope: str, vector: npt.ArrayLike, payload: bytes, ttl: float,
                  entry_id: str | None = None) -> str:
        entry_id = entry_id or uuid.uuid4().hex
        self.insert(scope, entry_id, self.check(vector), payload, self._clock() + ttl)
        return entry_id

    def insert(self, scope: str, entry_id: str, vector: Vector, payload: bytes,
               expires: float) -> None:
        """Synchronous add with an absolute expiry (used by the Redis mirror)."""
        if entry_id in self._order:
            return
        part = self._parts.get(scope)
        if part is None:
            part = self._parts[scope] = _Partition(self.dim)
        part.add(entry_id, vector, payload, expires)
        self._order[entry_id] = (scope, len(payload))
        self.payload_bytes += len(payload)
        if len(self._order) > self.max_entries or self.payload_bytes > self.max_bytes:
            self._evict()

    async def search(self, scope: str, vector: npt.ArrayLike, k: int,
                     min_score: float = -1.0) -> list[Candidate]:
        return self.nearest(scope, self.check(vector), k, min_score)

    def nearest(self, scope: str, vector: Vector, k: int,
                min_score: float = -1.0) -> list[Candidate]:
        """The k best live rows scoring at least `min_score` (a high floor makes search cheaper)."""
        part = self._parts.get(scope)
        if part is None or part.size == 0:
            return []
        rows, scores = part.scores(vector, min_score)
        if len(rows) > k:
            top = np.argpartition(scores, -k)[-k:]
            rows, scores = rows[top], scores[top]
        now = self._clock()
        ranked = sorted(zip(rows.tolist(), scores.tolist(), strict=True), key=lambda rs: -rs[1])
        return [Candidate(part.ids[i], score, part.payloads[i]) for i, score in ranked
                if score >= min_score and part.expires[i] > now]

    async def delete(self, entry_ids: list[str]) -> int:
        return self.remove(set(entry_ids))

    def remove(self, entry_ids: set[str]) -> int:
        gone = 0
        for scope in {self._order[i][0] for i in entry_ids if i in self._order}:
            part = self._parts[scope]
            gone += part.keep(np.array([i not in entry_ids for i in part.ids], dtype=bool))
        for entry_id in entry_ids:
            self._forget(entry_id)
        return gone

    async def purge(self, scope_prefix: str = "") -> int:
        return self.drop_scopes(scope_prefix)

    def drop_scopes(self, scope_prefix: str) -> int:
        doomed = [s for s in self._parts if s.startswith(scope_prefix)]
        gone = 0
        for scope in doomed:
            part = self._parts.pop(scope)
            gone += part.size
            for entry_id in part.ids:
                self._forget(entry_id)
        return gone

    async def sweep(self) -> int:
        """Drop expired rows everywhere; search already ignores them, this frees the memory."""
        now = self._clock()
        gone = 0
        for scope, part in list(self._parts.items()):
            expired = {part.ids[i] for i in range(part.size) if part.expires[i] <= now}
            gone += self.remove(expired) if expired else 0
            if part.size == 0:
                self._parts.pop(scope, None)
        return gone

    def _forget(self, entry_id: str) -> None:
        known = self._order.pop(entry_id, None)
        if known is not None:
            self.payload_bytes -= known[1]

    def _evict(self) -> None:
        """Drop the oldest entries until under both bounds, and at least 1% of `max_entries`:
        each removal rewrites a partition, so one row at a time would make every add at capacity
        cost a full copy."""
        count = max(len(self._order) - self.max_entries, self.max_entries // 100, 1)
        excess = self.payload_bytes - self.max_bytes
        oldest: set[str] = set()
        for entry_id, (_, size) in self._order.items():
            if len(oldest) >= count and excess <= 0:
                break
            oldest.add(entry_id)
            excess -= size
        self.remove(oldest)

    async def aclose(self) -> None:
        self._parts.clear()
        self._order.clear()
        self.payload_bytes = 0
