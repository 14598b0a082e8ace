"""A budget rule compiled from config: which requests it applies to and which buckets they charge.

A bucket is named by its dimensions (`team=search`, `team=search,model=gpt-4o`, `tag:project=x`);
its ledger key is `<budget>|<period label>|<bucket>`. Tag attribution keys use `#<tag>=<value>`.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from proxy.budget.periods import PeriodClock, Window
from proxy.exchange import Identity
from proxy.state.ledger import to_nano

if TYPE_CHECKING:
    from proxy.policies.budget import Config

MAX_TAGS = 16  # tags considered per request: bounds the keys one request can touch
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

    def prefix(self, window: Window) -> str:
        return f"{self.name}|{window.label}|"

    def charges(self, identity: Identity, model: str | None, window: Window) -> tuple[Charge, ...]:
        """The buckets a request is charged to in `window`; empty when the rule does not apply."""
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
        return [f"{prefix}#{_safe(k)}={_safe(v)}" for k, v in tag_pairs(identity.tags)]

    def _matches(self, identity: Identity, model: str | None) -> bool:
        values = {"model": model, "key": identity.key_id, "user": identity.user,
                  "team": identity.team}
        for field, pattern in self._match.items():
            if field == "tag":
                if not any(pattern.match(f"{k}={v}") for k, v in tag_pairs(identity.tags)):
                    return False
            elif not pattern.match(values.get(field) or ""):
                return False
        return True


def _pieces(dim: str, identity: Identity, model: str | None) -> list[str]:
    if dim == "tag":
        return [f"tag:{_safe(k)}={_safe(v)}" for k, v in tag_pairs(identity.tags)]
    if dim.startswith("tag:"):
        value = identity.tags.get(dim[4:])
        return [f"{dim}={_safe(value)}"] if value else []
    value = {"key": identity.key_id, "user": identity.user, "team": identity.team,
             "model": model}.get(dim)
    return [f"{dim}={_safe(value)}"] if value else []


def tag_pairs(tags: Mapping[str, str]) -> list[tuple[str, str]]:
    """The tags a request is charged and counted by: the first MAX_TAGS by name."""
    return sorted(tags.items())[:MAX_TAGS]


def _safe(value: str) -> str:
    """Percent-encode the characters that delimit keys, so no value can forge another bucket."""
    if not _UNSAFE.search(value):
        return value[:256]
    return _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", value[:256])
