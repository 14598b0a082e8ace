"""The memory vector index: nearest first, scopes never mix, TTL, purge, bounded size."""

from __future__ import annotations

import numpy as np

from proxy.semantic.index import MemoryVectorIndex


def unit(*values: float) -> np.ndarray:
    vec = np.asarray(values, dtype=np.float32)
    return vec / np.linalg.norm(vec)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_nearest_first_and_only_in_its_scope() -> None:
    index = MemoryVectorIndex(3)
    await index.add("tenant-a", unit(1, 0, 0), b"x", 60)
    await index.add("tenant-a", unit(1, 1, 0), b"xy", 60)
    await index.add("tenant-b", unit(1, 0, 0), b"other", 60)
    found = await index.search("tenant-a", unit(1, 0.1, 0), k=5)
    assert [c.payload for c in found] == [b"x", b"xy"]
    assert found[0].score > found[1].score
    assert await index.search("tenant-c", unit(1, 0, 0), k=5) == []


async def test_entries_expire_with_their_ttl() -> None:
    clock = Clock()
    index = MemoryVectorIndex(2, clock=clock)
    await index.add("s", unit(1, 0), b"short", 10)
    await index.add("s", unit(1, 0.01), b"long", 1000)
    clock.now += 11
    assert [c.payload for c in await index.search("s", unit(1, 0), 5)] == [b"long"]
    assert await index.sweep() == 1 and len(index) == 1


async def test_purge_by_scope_prefix() -> None:
    index = MemoryVectorIndex(2)
    for scope in ("ns=a|k1", "ns=a|k2", "ns=b|k1"):
        await index.add(scope, unit(1, 0), scope.encode(), 60)
    assert await index.purge("ns=a|") == 2
    assert await index.search("ns=a|k1", unit(1, 0), 3) == []
    assert [c.payload for c in await index.search("ns=b|k1", unit(1, 0), 3)] == [b"ns=b|k1"]
    assert await index.purge() == 1 and len(index) == 0


async def test_oldest_entries_go_when_full() -> None:
    index = MemoryVectorIndex(2, max_entries=100)
    for i in range(150):
        await index.add("s", unit(1, i / 150), str(i).encode(), 60)
    assert len(index) <= 100
    payloads = {c.payload for c in await index.search("s", unit(1, 1), 200)}
    assert b"149" in payloads and b"0" not in payloads


async def test_large_scopes_find_exactly_what_a_full_scan_finds() -> None:
    rng = np.random.default_rng(3)
    # Clustered vectors, like real prompts: a few topics, many variations of each.
    centres = rng.standard_normal((20, 384)).astype(np.float32)
    rows = centres[rng.integers(0, 20, 6000)] + 0.6 * rng.standard_normal((6000, 384))
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    index = MemoryVectorIndex(384)
    for i, row in enumerate(rows):
        await index.add("big", row, str(i).encode(), 60)
    for q in range(20):
        query = rows[q * 97] + 0.3 * rng.standard_normal(384).astype(np.float32)
        query = (query / np.linalg.norm(query)).astype(np.float32)
        scores = rows @ query
        for floor in (-1.0, 0.5, 0.8):
            expected = [str(i).encode() for i in np.argsort(-scores)[:5] if scores[i] >= floor]
            found = await index.search("big", query, 5, min_score=floor)
            assert [c.payload for c in found] == expected
            assert np.allclose([c.score for c in found], sorted(scores, reverse=True)[: len(found)],
                               atol=1e-4)


async def test_answers_are_bounded_in_bytes_too() -> None:
    index = MemoryVectorIndex(2, max_entries=1000, max_bytes=10_000)
    for i in range(50):
        await index.add("s", unit(1, i / 50), bytes([i]) * 1000, 60)
    assert index.payload_bytes <= 10_000
    kept = {c.payload[0] for c in await index.search("s", unit(1, 1), 100)}
    assert 49 in kept and 0 not in kept
    await index.purge()
    assert index.payload_bytes == 0
