"""The engine's decisions with a stand-in embedder and judge: threshold, guard, judge budget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from proxy.semantic.engine import SemanticEngine
from proxy.semantic.guard import Guard
from proxy.semantic.index import MemoryVectorIndex


class TableEmbedder:
    """Vectors chosen by the test, so similarities are exactly what the test says."""

    name = "table"

    def __init__(self, table: Mapping[str, Sequence[float]]) -> None:
        self.table = table

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = np.asarray([self.table[t] for t in texts], dtype=np.float32)
        unit: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return unit

    async def aclose(self) -> None:
        return None


class ScriptedJudge:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.questions: list[tuple[str, str]] = []

    async def same(self, query: str, cached: str) -> bool:
        self.questions.append((query, cached))
        return self.answer


TABLE = {
    "Write a haiku about rain.": [1.0, 0.0],
    "Write a sonnet about rain.": [1.0, 0.3],
    "Write a limerick about rain.": [1.0, 0.35],
    "Compose a haiku about rain.": [1.0, 0.2],
    "Tell me a joke.": [0.0, 1.0],
}


def engine(judge: ScriptedJudge | None = None, judge_below: float = 0.0) -> SemanticEngine:
    return SemanticEngine(TableEmbedder(TABLE), MemoryVectorIndex(2), Guard({}), threshold=0.9,
                          judge=judge, judge_below=judge_below)  # type: ignore[arg-type]


async def test_close_and_verified_is_a_hit_far_is_a_miss() -> None:
    cache = engine()
    await cache.store("s", "Write a haiku about rain.", b"poem", 60)
    hit = await cache.lookup("s", "Compose a haiku about rain.")
    assert (hit.answer, hit.reason) == (b"poem", "hit") and hit.similarity > 0.9
    assert (await cache.lookup("s", "Tell me a joke.")).reason == "no_candidate"
    assert (await cache.lookup("other", "Compose a haiku about rain.")).answer is None


async def test_the_guard_rejects_a_close_candidate_that_asks_for_something_else() -> None:
    cache = engine()
    await cache.store("s", "Write a haiku about rain.", b"poem", 60)
    found = await cache.lookup("s", "Write a sonnet about rain.")
    assert found.answer is None and found.reason == "guard:slot"


async def test_the_judge_is_asked_once_per_lookup() -> None:
    judge = ScriptedJudge(False)
    cache = engine(judge)
    await cache.store("s", "Write a haiku about rain.", b"haiku", 60)
    await cache.store("s", "Write a limerick about rain.", b"limerick", 60)
    found = await cache.lookup("s", "Write a sonnet about rain.")
    assert found.answer is None and len(judge.questions) == 1


async def test_the_judge_confirms_gray_hits_below_its_band() -> None:
    judge = ScriptedJudge(False)
    cache = engine(judge, judge_below=0.999)
    await cache.store("s", "Write a haiku about rain.", b"poem", 60)
    assert (await cache.lookup("s", "Compose a haiku about rain.")).answer is None
    judge.answer = True
    assert (await cache.lookup("s", "Compose a haiku about rain.")).reason == "judge"
