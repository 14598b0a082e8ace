"""Engines compiled from `[pii]` configs, shared by the PII unit tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from proxy.pii import PiiConfig, PiiEngine, compile_engine

MakeEngine = Callable[..., PiiEngine]


@pytest.fixture
def make_engine() -> MakeEngine:
    def make(**config: Any) -> PiiEngine:
        return compile_engine(PiiConfig.model_validate(config))

    return make


@pytest.fixture
def engine(make_engine: MakeEngine) -> PiiEngine:
    return make_engine(action="pseudonymize", responses=True)
