"""The local embedder: sentence-transformers parity, batching of concurrent calls, failures."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from proxy.semantic.embedder import EmbedderUnavailable, LocalEmbedder, MicroBatcher

FIXTURE = Path(__file__).with_name("parity_fixture.json")


async def test_vectors_match_sentence_transformers(embedder: LocalEmbedder) -> None:
    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    reference = np.asarray(fixture["vectors"], dtype=np.float32)
    ours = await embedder.embed(fixture["sentences"])
    cosine = (ours * reference).sum(1) / np.linalg.norm(reference, axis=1)
    worst = int(cosine.argmin())
    assert cosine[worst] >= 0.999, fixture["sentences"][worst]
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


async def test_paraphrases_are_closer_than_unrelated_text(embedder: LocalEmbedder) -> None:
    a, b, c = await embedder.embed(
        ["What is the capital of France?", "Tell me France's capital city.", "How do magnets work?"]
    )
    assert float(a @ b) > float(a @ c) + 0.3


async def test_missing_model_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(EmbedderUnavailable, match="lacks"):
        await LocalEmbedder.load(str(tmp_path))


async def test_concurrent_calls_share_forward_passes() -> None:
    calls: list[int] = []
    release = threading.Event()

    def encode(texts: list[str]) -> np.ndarray:
        release.wait(5)
        calls.append(len(texts))
        return np.asarray([[float(len(t)), 1.0] for t in texts], dtype=np.float32)

    batcher = MicroBatcher(encode)
    first = asyncio.ensure_future(batcher.submit(["a"]))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(batcher.submit(["b" * n, "c"])) for n in range(1, 9)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(first, *rest)
    assert sum(calls) == 17 and len(calls) == 2
    assert [r[0][0] for r in results] == [1.0, *range(1, 9)]  # each caller gets its own rows
    await batcher.aclose()


async def test_a_failing_model_fails_every_waiting_caller() -> None:
    def encode(texts: list[str]) -> np.ndarray:
        raise RuntimeError("out of memory")

    batcher = MicroBatcher(encode)
    results = await asyncio.gather(batcher.submit(["a"]), batcher.submit(["b"]),
                                   return_exceptions=True)
    assert all(isinstance(r, EmbedderUnavailable) for r in results)
    await batcher.aclose()
