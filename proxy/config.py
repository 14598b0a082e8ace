"""Loads the config file and its policy files into validated `Settings` plus typed policy configs.

Every problem is reported as `file: key: message`; all of them are collected before failing, so
`llm-sidecar check-config` shows a whole broken file at once.
"""

from __future__ import annotations

import glob
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from proxy.errors import ConfigError
from proxy.policies import validate_sections
from proxy.settings import OPENAI_BASE_URL, POLICY_LISTS, POLICY_SECTIONS, Settings

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
EMBEDDED_DEFAULTS: dict[str, Any] = {"cache": {"enabled": True}}


@dataclass(frozen=True, slots=True)
class Config:
    """Validated settings, the typed config of each enabled policy, and where each came from."""

    settings: Settings
    policies: Mapping[str, Any]
    origins: Mapping[str, str] = field(default_factory=dict)


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read `path` (or the embedded defaults when None) and everything it points to."""
    env = os.environ if env is None else env
    problems: list[str] = []
    origins: dict[str, str] = {}
    if path is None:
        data: dict[str, Any] = {k: dict(v) for k, v in EMBEDDED_DEFAULTS.items()}
        origin = "<defaults>"
    else:
        origin = str(path)
        data = _read_toml(Path(path), env, problems)
        for section in data:
            origins[section] = origin
        base = Path(path).resolve().parent
        for policy_file in _expand(data.get("policy_files", []), base, origin, problems):
            _merge_policy_file(data, policy_file, env, origins, problems)
    if problems:
        raise ConfigError(problems)
    data.setdefault("upstreams", [_default_upstream(env)])
    settings = _validate_settings(data, origins, origin, problems)
    if settings is None:
        raise ConfigError(problems)
    policies = validate_sections(settings, origins, problems)
    if problems:
        raise ConfigError(problems)
    return Config(settings=settings, policies=policies, origins=origins)


def _default_upstream(env: Mapping[str, str]) -> dict[str, Any]:
    return {"name": "openai", "base_url": OPENAI_BASE_URL, "api_key": env.get("OPENAI_API_KEY")}


def _read_toml(path: Path, env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror or exc}")
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: invalid TOML: {exc}")
        return {}
    result = _interpolate(raw, env, str(path), "", problems)
    assert isinstance(result, dict)
    return result


def _interpolate(value: Any, env: Mapping[str, str], origin: str, where: str, out: list[str]) -> Any:
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: _env_value(m, env, origin, where, out), value)
    if isinstance(value, dict):
        return {k: _interpolate(v, env, origin, _join(where, k), out) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, origin, f"{where}[{i}]", out) for i, v in enumerate(value)]
    return value


def _env_value(match: re.Match[str], env: Mapping[str, str], origin: str, where: str,
               out: list[str]) -> str:
    name, default = match.group(1), match.group(2)
    if name in env:
        return env[name]
    if default is not None:
        return default
    out.append(f"{origin}: {where}: environment variable {name} is not set (use ${{{name}:-}})")
    return ""


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _expand(patterns: Any, base: Path, origin: str, problems: list[str]) -> list[Path]:
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        problems.append(f"{origin}: policy_files: must be a list of glob strings")
        return []
    found: list[Path] = []
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else str(base / pattern)
        matches = sorted(Path(p) for p in glob.glob(full))
        if not matches and not glob.has_magic(pattern):
            problems.append(f"{origin}: policy_files: {pattern} does not exist")
        found.extend(m for m in matches if m not in found)
    return found


def _merge_policy_file(data: dict[str, Any], path: Path, env: Mapping[str, str],
                       origins: dict[str, str], problems: list[str]) -> None:
    """Tables may be defined once across all files; arrays of tables are concatenated."""
    for section, value in _read_toml(path, env, problems).items():
        if section in POLICY_LISTS:
            if not isinstance(value, list):
                problems.append(f"{path}: {section}: must be an array of tables ([[{section}]])")
                continue
            data.setdefault(section, []).extend(value)
            origins.setdefault(section, str(path))
        elif section in POLICY_SECTIONS:
            if section in data:
                problems.append(f"{path}: {section}: already defined in {origins.get(section)}")
                continue
            data[section] = value
            origins[section] = str(path)
        else:
            allowed = ", ".join(POLICY_SECTIONS + POLICY_LISTS)
            problems.append(f"{path}: {section}: not a policy section (expected one of {allowed})")


def _validate_settings(data: dict[str, Any], origins: Mapping[str, str], origin: str,
                       problems: list[str]) -> Settings | None:
    try:
        return Settings(**data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = ".".join(str(part) for part in error["loc"]) or "(top level)"
            where = origins.get(str(error["loc"][0]), origin) if error["loc"] else origin
            problems.append(f"{where}: {loc}: {error['msg']}")
        return None
