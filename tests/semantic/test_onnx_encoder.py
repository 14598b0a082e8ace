"""The onnxruntime path: same vectors as sentence-transformers when a model ships model.onnx.

Runs when onnxruntime is installed and `SIDECAR_TEST_ONNX_MODEL` names a model directory with a
`model.onnx` (the packaged default model has none; export one with torch.onnx to try it).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from proxy.semantic.embedder import LocalEmbedder

FIXTURE = Path(__file__).with_name("parity_fixture.json")
MODEL = os.environ.get("SIDECAR_TEST_ONNX_MODEL", "")

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or not MODEL
    or not (Path(MODEL) / "model.onnx").is_file(),
    reason="needs onnxruntime and SIDECAR_TEST_ONNX_MODEL=<model dir with model.onnx>",
)


async def test_onnx_vectors_match_sentence_transformers() -> None:
    embedder = await LocalEmbedder.load(MODEL)
    try:
        assert embedder.runtime == "onnxruntime"
        fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
        reference = np.asarray(fixture["vectors"], dtype=np.float32)
        ours = await embedder.embed(fixture["sentences"])
        cosine = (ours * reference).sum(1) / np.linalg.norm(reference, axis=1)
        assert cosine.min() >= 0.999
    finally:
        await embedder.aclose()


async def test_numpy_can_be_forced_even_when_onnx_is_there() -> None:
    embedder = await LocalEmbedder.load(MODEL, runtime="numpy")
    try:
        assert embedder.runtime == "numpy"
    finally:
        await embedder.aclose()
