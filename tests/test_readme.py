"""The configuration examples in the README and docs/ are configs the sidecar accepts, as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.server import build_app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.DOTALL)
DOCS = [(doc.name, block) for doc in sorted((ROOT / "docs").glob("*.md"))
        for block in re.findall(r"```toml\n(.*?)```", doc.read_text(), flags=re.DOTALL)]
ENV = {"OPENAI_API_KEY": "sk-readme-openai", "AZURE_OPENAI_KEY": "readme-azure",
       "SIDECAR_ADMIN_KEY": "readme-admin"}


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_config_loads(block: str, tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text(block)
    config = load_config(path, ENV)
    build_app(config)  # the app can be assembled from it (routes, lifecycle)


def test_the_fallback_example_names_its_fallback(tmp_path: Path) -> None:
    block = next(b for b in BLOCKS if "fallbacks" in b)
    path = tmp_path / "sidecar.toml"
    path.write_text(block)
    upstreams = {u.name: u for u in load_config(path, ENV).settings.upstreams}
    assert upstreams["openai"].fallbacks and upstreams["azure"].models == []
    assert "experiments" in load_config(path, ENV).policies


@pytest.mark.parametrize(("doc", "block"), DOCS, ids=[f"{d}-{i}" for i, (d, _) in enumerate(DOCS)])
def test_docs_config_loads(doc: str, block: str, tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text(block)
    build_app(load_config(path, ENV))
