"""`[[limits]]` rules compiled once: which requests a rule applies to, and which counters it charges.

A rule's `per` dimensions pick the counter (one per key, per user, per team within ...); its `match`
globs pick the requests. A request missing a dimension (no user, no model) is not limited by rules
that count per that dimension.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

from proxy.exchange import Exchange
from proxy.state.base import Charge

DIMENSIONS = ("key", "user", "team", "model", "ip", "upstream", "tag")
MATCH_FIELDS = ("model", "key", "user", "team", "tag", "ip", "upstream", "endpoint")
Kind = Literal["requests", "tokens", "concurrent"]
_REMEMBERED = 4096  # counter names kept per rule


def check_dimension(name: str) -> str:
    """A valid `per` entry: a dimension, or `tag:NAME` for the value of one tag."""
    if name in DIMENSIONS or (name.startswith("tag:") and len(name) > 4):
        return name
    raise ValueError(f"unknown dimension {name!r}: use one of {', '.join(DIMENSIONS)} or 'tag:NAME'")


def compile_globs(globs: str | Sequence[str]) -> re.Pattern[str]:
    items = [globs] if isinstance(globs, str) else list(globs)
    return re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in items))


@dataclass(frozen=True, slots=True)
class Planned:
    """One counter a request is charged on, with the rule and the kind it comes from."""

    rule: Rule
    kind: Kind
    charge: Charge


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled `[[limits]]` item."""

    name: str
    per: tuple[str, ...]
    match: tuple[tuple[str, re.Pattern[str]], ...]
    window: float
    requests: int | None
    tokens: int | None
    concurrent: int | None
    wait: float
    fail_open: bool
    default_max_tokens: int
    _counters: dict[tuple[str, ...], tuple[tuple[Planned, ...], str | None]] = field(
        default_factory=dict, compare=False, repr=False)

    def applies(self, ex: Exchange) -> bool:
        return all(_matches(field, pattern, ex) for field, pattern in self.match)

    def plan(self, ex: Exchange, tokens: int) -> list[Planned]:
        """The charges this rule makes for `ex`; `tokens` is the request's estimated cost."""
        planned: list[Planned] = []
        for combo in itertools.product(*[_values(dimension, ex) for dimension in self.per]):
            fixed, tokens_key = self._counters.get(combo) or self._remember(combo)
            planned += fixed
            if tokens_key is not None and self.tokens is not None:
                planned.append(Planned(self, "tokens",
                                       Charge(tokens_key, self.tokens, tokens, self.window)))
        return planned

    def _remember(self, combo: tuple[str, ...]) -> tuple[tuple[Planned, ...], str | None]:
        """Counter names of one combination of dimension values, kept for the next request."""
        scope = "|".join(f"{dim}={quote(value, safe='=')}"
                         for dim, value in zip(self.per, combo, strict=True))
        stem = f"{self.name}:{round(self.window * 1000)}:{scope}"
        fixed: list[Planned] = []
        if self.requests is not None:
            fixed.append(Planned(self, "requests", Charge(f"r:{stem}", self.requests, 1, self.window)))
        if self.concurrent is not None:
            fixed.append(Planned(self, "concurrent",
                                 Charge(f"c:{self.name}:{scope}", self.concurrent, 1, 0.0)))
        if len(self._counters) >= _REMEMBERED:
            self._counters.clear()  # bounded: a flood of distinct users must not grow memory
        entry = (tuple(fixed), f"t:{stem}" if self.tokens is not None else None)
        self._counters[combo] = entry
        return entry


def _values(dimension: str, ex: Exchange) -> list[str]:
    identity = ex.identity
    value: str | None
    if dimension == "tag":
        return [f"{name}={tag}" for name, tag in sorted(identity.tags.items())]
    if dimension.startswith("tag:"):
        value = identity.tags.get(dimension[4:])
    elif dimension == "key":
        value = identity.key_id
    elif dimension == "user":
        value = identity.user
    elif dimension == "team":
        value = identity.team
    elif dimension == "model":
        value = ex.model if isinstance(ex.model, str) else None
    elif dimension == "ip":
        value = ex.client_ip
    else:
        value = ex.upstream.name if ex.upstream is not None else None
    return [value] if value else []


def _matches(field: str, pattern: re.Pattern[str], ex: Exchange) -> bool:
    identity = ex.identity
    candidates: list[str | None]
    if field == "tag":
        candidates = [f"{name}={value}" for name, value in identity.tags.items()]
    elif field == "key":
        candidates = [identity.key_name, identity.key_id]
    elif field == "endpoint":
        candidates = [ex.endpoint.value]
    elif field in ("user", "team"):
        candidates = [getattr(identity, field)]
    else:
        candidates = list(_values(field, ex))
    return any(c is not None and pattern.match(c) for c in candidates)


def compile_match(match: Mapping[str, str | Sequence[str]]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((field, compile_globs(globs)) for field, globs in match.items())
