"""`[[limits]]` rules compiled once: which requests a rule applies to, and which counters it charges.

A rule's `per` dimensions pick the counter (one per key, per user, per team within ...); its `match`
globs pick the requests. A request missing a dimension (no user, no model) is not limited by rules
that count per that dimension. `Planner` remembers the plan of each caller/model/upstream seen, so a
request usually costs one dictionary lookup to find every counter it is charged on.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from proxy.exchange import Exchange
from proxy.state.base import Charge

DIMENSIONS = ("key", "user", "team", "model", "ip", "upstream", "tag")
MATCH_FIELDS = ("model", "key", "user", "team", "tag", "ip", "upstream", "endpoint")
Kind = Literal["requests", "tokens", "concurrent"]
_REMEMBERED = 4096  # plans kept; a flood of distinct callers must not grow memory


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
    charge: Charge  # for tokens, the counter with a cost of 0: the request's cost is added later


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

    def applies(self, ex: Exchange) -> bool:
        return all(_matches(field, pattern, ex) for field, pattern in self.match)

    def plan(self, ex: Exchange) -> list[Planned]:
        """The counters this rule charges for `ex`, token counters with a cost still to fill in."""
        planned: list[Planned] = []
        for combo in itertools.product(*[_values(dimension, ex) for dimension in self.per]):
            scope = "|".join(f"{dim}={quote(value, safe='=')}"
                             for dim, value in zip(self.per, combo, strict=True))
            stem = f"{self.name}:{round(self.window * 1000)}:{scope}"
            if self.requests is not None:
                planned.append(Planned(self, "requests",
                                       Charge(f"r:{stem}", self.requests, 1, self.window)))
            if self.concurrent is not None:
                planned.append(Planned(self, "concurrent",
                                       Charge(f"c:{self.name}:{scope}", self.concurrent, 1, 0.0)))
            if self.tokens is not None:
                planned.append(Planned(self, "tokens",
                                       Charge(f"t:{stem}", self.tokens, 0, self.window)))
        return planned

    def reads(self, dimension: str) -> bool:
        """Whether the rule looks at `dimension` ("ip", "tag") to count or to match."""
        fields = [field for field, _ in self.match] + [d.partition(":")[0] for d in self.per]
        return dimension in fields


@dataclass(frozen=True, slots=True)
class Plan:
    """Every counter a request is charged on, in rule order, and what the client is told about them.

    `charges` are ready to use except at the `tokens` indexes, where the request's token cost goes;
    `headers` lists, per kind, the indexes that compete for the `x-ratelimit-*` headers.
    """

    planned: tuple[Planned, ...]
    charges: tuple[Charge, ...]
    tokens: tuple[int, ...]
    holds: bool
    rules: int
    headers: tuple[tuple[tuple[str, str, str], tuple[int, ...]], ...]
    limits: tuple[str, ...]  # each counter's limit as its header shows it
    priced: list[Charge]  # the last token charge made at each index: equal costs share it

    def priced_at(self, index: int, cost: int) -> Charge:
        """The charge at token index `index` costing `cost`."""
        charge = self.priced[index]
        if charge.cost != cost:
            charge = self.priced[index] = Charge(charge.key, charge.limit, cost, charge.window)
        return charge

    @classmethod
    def of(cls, planned: Sequence[Planned], rules: int) -> Plan:
        kinds: dict[str, list[int]] = {}
        for index, item in enumerate(planned):
            if item.kind != "concurrent":
                kinds.setdefault(item.kind, []).append(index)
        headers = tuple(((f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}",
                          f"x-ratelimit-reset-{kind}"), tuple(indexes))
                        for kind, indexes in kinds.items())
        charges = tuple(p.charge for p in planned)
        return cls(tuple(planned), charges, tuple(kinds.get("tokens", ())),
                   any(p.kind == "concurrent" for p in planned), rules, headers,
                   tuple(str(c.limit) for c in charges), list(charges))


class Planner:
    """The plan of a request, computed once per distinct caller, model, upstream and endpoint."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self._ip = any(rule.reads("ip") for rule in rules)
        self._tags = any(rule.reads("tag") for rule in rules)
        self._plans: dict[Hashable, Plan | None] = {}

    def plan(self, ex: Exchange) -> Plan | None:
        """The request's plan; None when no rule applies or none can count it."""
        identity = ex.identity
        model = ex.model if isinstance(ex.model, str) else None
        upstream = ex.upstream.name if ex.upstream is not None else None
        # Everything a rule can read, so requests with equal signatures get equal plans.
        signature = (identity.key_id, identity.key_name, identity.user, identity.team, model,
                     upstream, ex.endpoint, ex.client_ip if self._ip else None,
                     tuple(identity.tags.items()) if self._tags and identity.tags else None)
        try:
            return self._plans[signature]
        except KeyError:
            pass
        rules = [rule for rule in self.rules if rule.applies(ex)]
        planned = [item for rule in rules for item in rule.plan(ex)]
        plan = Plan.of(planned, len(rules)) if planned else None
        if len(self._plans) >= _REMEMBERED:
            self._plans.clear()
        self._plans[signature] = plan
        return plan


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
