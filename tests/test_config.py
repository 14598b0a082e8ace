"""Loading configuration: TOML, policy files, ${ENV} interpolation, SIDECAR_ overrides, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(path, env or {})
    return raised.value.problems


def test_embedded_defaults_route_to_openai_with_the_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(None, {"OPENAI_API_KEY": "sk-env"})
    upstream = config.settings.upstreams[0]
    assert upstream.base_url == "https://api.openai.com/v1"
    assert upstream.api_key is not None and upstream.api_key.get_secret_value() == "sk-env"
    assert config.settings.state.backend == "memory"
    assert config.settings.server.port == 8080 and config.settings.server.host == "127.0.0.1"
    assert load_config(None, {}).settings.upstreams[0].api_key is None


def test_policy_files_glob_relative_to_the_config(tmp_path: Path) -> None:
    write(tmp_path / "policies" / "a.toml", "[[keys]]\nkey = \"vk-1\"\nteam = \"search\"\n")
    write(tmp_path / "policies" / "b.toml", "[[keys]]\nkey = \"vk-2\"\nteam = \"ads\"\n")
    config_file = write(tmp_path / "sidecar.toml",
                        '[[upstreams]]\nname="u"\nbase_url="http://127.0.0.1:1/v1"\napi_key="k"\n'
                        'policy_files = ["policies/*.toml"]\n')
    # policy_files after a table header belongs to that table: put it first.
    config_file.write_text('policy_files = ["policies/*.toml"]\n' + config_file.read_text()
                           .replace('policy_files = ["policies/*.toml"]\n', ""))
    config = load_config(config_file, {})
    assert [k.team for k in config.settings.keys] == ["search", "ads"]


def test_env_interpolation_with_default_and_missing(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml",
                 '[[upstreams]]\nname = "u"\nbase_url = "${BASE:-http://127.0.0.1:1/v1}"\n'
                 'api_key = "${UP_KEY}"\n')
    config = load_config(path, {"UP_KEY": "sk-1"})
    assert config.settings.upstreams[0].base_url == "http://127.0.0.1:1/v1"
    assert problems(path) == [f"{path}: upstreams[0].api_key: environment variable UP_KEY is not "
                              "set (use ${UP_KEY:-})"]


def test_env_vars_override_file_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "c.toml", '[server]\nport = 9000\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("SIDECAR_SERVER__PORT", "9100")
    config = load_config(path, {})
    assert config.settings.server.port == 9100 and config.settings.server.host == "0.0.0.0"


def test_unknown_keys_and_bad_values_are_reported_with_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[server]\nprot = 1\nmax_body_size = "lots"\n'
                 '[[upstreams]]\nbase_url = "ftp://x"\n')
    found = problems(path)
    assert f"{path}: server.prot: Extra inputs are not permitted" in found
    assert any(p.startswith(f"{path}: server.max_body_size: Value error, invalid size") for p in found)
    assert any(p.startswith(f"{path}: upstreams.0.base_url:") for p in found)


def test_policy_problems_name_the_policy_file(tmp_path: Path) -> None:
    write(tmp_path / "p" / "bad.toml", "[nonsense]\nx = 1\n")
    write(tmp_path / "p" / "dup1.toml", "[tracing]\nenabled = true\n")
    write(tmp_path / "p" / "dup2.toml", "[tracing]\nenabled = false\n")
    path = write(tmp_path / "c.toml", 'policy_files = ["p/*.toml"]\n')
    found = problems(path)
    assert any(p.startswith(f"{tmp_path / 'p' / 'bad.toml'}: nonsense: not a policy section")
               for p in found)
    assert any(p.startswith(f"{tmp_path / 'p' / 'dup2.toml'}: tracing: already defined in")
               for p in found)


def test_invalid_toml_and_missing_files(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[server\nport=1")
    assert problems(path)[0].startswith(f"{path}: invalid TOML")
    assert problems(tmp_path / "nope.toml")[0].startswith(f"{tmp_path / 'nope.toml'}: cannot read")
    listed = write(tmp_path / "d.toml", 'policy_files = ["missing.toml"]\n')
    assert problems(listed) == [f"{listed}: policy_files: missing.toml does not exist"]


def test_virtual_keys_require_upstream_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[[upstreams]]\nname = "u"\nbase_url = "http://h/v1"\n'
                 '[[keys]]\nkey = "vk"\n')
    assert any("virtual [[keys]] are configured" in p for p in problems(path))


def test_fallbacks_must_name_known_upstreams(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[[upstreams]]\nname = "u"\nbase_url = "http://h/v1"\n'
                 'fallbacks = ["azure"]\n')
    assert any("falls back to unknown 'azure'" in p for p in problems(path))


def test_check_config_cli(tmp_path: Path) -> None:
    good = write(tmp_path / "good.toml", '[server]\nport = 8081\n')
    bad = write(tmp_path / "bad.toml", '[server]\nport = "eighty"\nwat = 1\n')
    ok = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(good)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "ok" in ok.stdout
    failed = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert f"{bad}: server.port: Input should be a valid integer, unable to parse string as an " \
           "integer" in lines
    assert f"{bad}: server.wat: Extra inputs are not permitted" in lines


def test_the_shipped_example_config_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "config.example.toml"
    config = load_config(example, {"OPENAI_API_KEY": "sk-x"})
    assert config.settings.upstreams[0].pool is None
    assert config.settings.server.admin_key is None
    # Its commented-out policy sections are valid too, once uncommented.
    text = example.read_text()
    head, rest = text.split("# >>> policy sections\n")
    block = rest.split("# <<< policy sections")[0]
    sections = "\n".join(line[2:] if line.startswith("# ") else "" for line in block.splitlines())
    enabled = load_config(write(tmp_path / "full.toml", head + sections),
                          {"OPENAI_API_KEY": "sk-x", "PII_HASH_KEY": "k" * 32})
    assert {name for name, value in enabled.policies.items() if value} >= {
        "cache", "semantic_cache", "limits", "budgets", "pii", "tracing"}
