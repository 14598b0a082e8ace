"""The semantic cache's engine: embed, search the scope's partition, verify, answer or miss.

Knows nothing of HTTP: the policy hands it a scope and the text to compare, and gets back a
cached answer (with its similarity) or the reason there was none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import orjson

from proxy.semantic.embedder import Embedder
from proxy.semantic.guard import Guard
from proxy.semantic.index import Candidate
from proxy.semantic.judge import Judge

Vector = npt.NDArray[np.float32]


class SearchableIndex(Protocol):
    """What the engine needs from an index (memory or Redis-backed)."""

    async def add(self, scope: str, vector: npt.ArrayLike, payload: bytes, ttl: float,
                  entry_id: str | None = None) -> str: ...

    async def search(self, scope: str, vector: npt.ArrayLike, k: int,
                     min_score: float = -1.0) -> list[Candidate]: ...

    async def purge(self, scope_prefix: str = "") -> int: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Lookup:
    """The outcome of one lookup; `reason` is "hit", "judge" (a hit the judge confirmed),
    "no_candidate" (nothing above the threshold), "guard:<rule>" (the rule that rejected the best
    candidate) or "judge" with no answer (the judge said different)."""

    answer: bytes | None
    similarity: float
    reason: str
    vector: Vector


def pack(prompt: str, answer: bytes) -> bytes:
    """Entry payload: a one-line JSON header (orjson never emits raw newlines), then the answer."""
    return orjson.dumps({"prompt": prompt}) + b"\n" + answer


def unpack(payload: bytes) -> tuple[str, bytes]:
    head, _, answer = payload.partition(b"\n")
    return str(orjson.loads(head)["prompt"]), answer


class SemanticEngine:
    def __init__(self, embedder: Embedder, index: SearchableIndex, guard: Guard,
                 threshold: float, candidates: int = 4, judge: Judge | None = None,
                 judge_rules: frozenset[str] = frozenset({"slot"}),
                 judge_below: float = 0.0) -> None:
        self.embedder = embedder
        self.index = index
        self.guard = guard
        self.threshold = threshold
        self.candidates = candidates
        self.judge = judge
        self.judge_rules = judge_rules
        self.judge_below = judge_below

    async def embed(self, text: str) -> Vector:
        vectors = await self.embedder.embed([text])
        row: Vector = vectors[0]
        return row

    async def lookup(self, scope: str, text: str) -> Lookup:
        """Nearest stored prompts above the threshold, best first; the first the guard accepts.

        The similarity reported is that of the best candidate, 0 when none reached the threshold.
        """
        vector = await self.embed(text)
        found = await self.index.search(scope, vector, self.candidates, self.threshold)
        if not found:
            return Lookup(None, 0.0, "no_candidate", vector)
        best = found[0].score
        query = self.guard.facets(text)
        reason, asked = "", False
        for candidate in found:
            prompt, answer = unpack(candidate.payload)
            verdict = self.guard.check(query, self.guard.facets(prompt))
            gray = self.judge is not None and (
                verdict.rule in self.judge_rules if not verdict.ok
                else candidate.score < self.judge_below)
            if verdict.ok and not gray:
                return Lookup(answer, candidate.score, "hit", vector)
            if gray and not asked and self.judge is not None:
                asked = True  # one question per lookup keeps the judge cheap
                if await self.judge.same(text, prompt):
                    return Lookup(answer, candidate.score, "judge", vector)
                reason = reason or "judge"
            reason = reason or f"guard:{verdict.rule}"
        return Lookup(None, best, reason, vector)

    async def store(self, scope: str, text: str, answer: bytes, ttl: float,
                    vector: Vector | None = None) -> str:
        if vector is None:
            vector = await self.embed(text)
        return await self.index.add(scope, vector, pack(text, answer), ttl)

    async def aclose(self) -> None:
        await self.index.aclose()
        await self.embedder.aclose()
