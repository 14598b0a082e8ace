"""The house style holds: ruff and mypy --strict are clean on the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [
    ["ruff", "check", "proxy", "tests", "bench"],
    ["mypy"],
])
def test_linters_are_clean(command: list[str]) -> None:
    if shutil.which(command[0]) is None and not (Path(sys.executable).parent / command[0]).exists():
        pytest.skip(f"{command[0]} is not installed")
    tool = str(Path(sys.executable).parent / command[0]) if (
        Path(sys.executable).parent / command[0]).exists() else command[0]
    result = subprocess.run([tool, *command[1:]], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
