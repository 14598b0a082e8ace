"""A budget rule compiled from config: which requests it applies to and which buckets they charge.

A bucket is named by its dimensions (`team=search`, `team=search,model=gpt-4o`, `tag:project=x`);
its ledger key is `<budget>|<period label>|<bucket>`. Tag attribution keys use `#<tag>=<value>`.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from proxy.budget.periods import PeriodClock, Window
from proxy.exchange import Identity
from proxy.state.ledger import to_nano

if TYPE_CHECKING:
    from proxy.policies.budget import Config

MAX_TAGS = 16  # tags considered per request: bounds the keys one request can touch
_MAX_KNOWN = 10_000  # remembered (caller, model) -> charges per rule; cleared when full
_UNSAFE = re.compile(r"[,=|#%\s]")


@dataclass(frozen=True, slots=True)
class Charge:
    """One bucket of one budget that a request is charged to; `key` is its ledger key."""

    rule: BudgetRule
    window: Window
    bucket: str
    key: str


class BudgetRule:
    """One `[[budgets]]` item, validated once into what each request needs."""

    def __init__(self, config: Config) -> None:
        self.name = config.name
        self.config = config
        self.per = tuple(config.per) if isinstance(config.per, list) else (config.per,)
        self.hard = config.hard
        self.usd = config.usd
        self.cap = to_nano(config.usd) if config.hard else -1
        self.limit = to_nano(config.usd)
        self.alert_at = tuple(sorted(set(config.alert_at)))
        self.clock = PeriodClock(config.period, ZoneInfo(config.timezone))
        self._match = {field: re.compile(fnmatch.translate(glob)) for field, glob in config.match.items()}
        self._by_tags = "tag" in config.match or any(d.startswith("tag") for d in self.per)
        self._known: dict[tuple[object, ...], tuple[Charge, ...]] = {}

    def prefix(self, window: Window) -> str:
        return f"{self.name}|{window.label}|"

    def charges(self, identity: Identity, model: str | None, now: float) -> tuple[Charge, ...]:
        """The buckets this request is charged to; empty when the rule does not apply."""
        window = self.clock.window(now)
        tags = tuple(_tags(identity.tags)) if self._by_tags else ()
        seen = (window, identity.key_id, identity.user, identity.team, model, tags)
        known = self._known.get(seen)
        if known is None:
            known = self._resolve(identity, model, window)
            if len(self._known) >= _MAX_KNOWN:
                self._known.clear()
            self._known[seen] = known
        return known

    def _resolve(self, identity: Identity, model: str | None, window: Window) -> tuple[Charge, ...]:
        if self._match and not self._matches(identity, model):
            return ()
        pieces = [_pieces(dim, identity, model) for dim in self.per]
        if not all(pieces):
            return ()  # a dimension the request does not carry (no team, no such tag)
        prefix = self.prefix(window)
        buckets = [",".join(combo) for combo in itertools.product(*pieces)]
        return tuple(Charge(self, window, bucket, prefix + bucket) for bucket in buckets)

    def attribution(self, identity: Identity, window: Window) -> list[str]:
        prefix = self.prefix(window)
        return [f"{prefix}#{_safe(k)}={_safe(v)}" for k, v in _tags(identity.tags)]

    def _matches(self, identity: Identity, model: str | None) -> bool:
        values = {"model": model, "key": identity.key_id, "user": identity.user,
                  "team": identity.team}
        for field, pattern in self._match.items():
            if field == "tag":
                if not any(pattern.match(f"{k}={v}") for k, v in _tags(identity.tags)):
                    return False
            elif not pattern.match(values.get(field) or ""):
                return False
        return True


def _pieces(dim: str, identity: Identity, model: str | None) -> list[str]:
    if dim == "tag":
        return [f"tag:{_safe(k)}={_safe(v)}" for k, v in _tags(identity.tags)]
    if dim.startswith("tag:"):
        value = identity.tags.get(dim[4:])
        return [f"{dim}={_safe(value)}"] if value else []
    value = {"key": identity.key_id, "user": identity.user, "team": identity.team,
             "model": model}.get(dim)
    return [f"{dim}={_safe(value)}"] if value else []


def _tags(tags: Mapping[str, str]) -> Sequence[tuple[str, str]]:
    return sorted(tags.items())[:MAX_TAGS]


def _safe(value: str) -> str:
    """Percent-encode the characters that delimit keys, so no value can forge another bucket."""
    if not _UNSAFE.search(value):
        return value[:256]
    return _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", value[:256])
