"""What a caller's requests to one model are charged to: resolved once per caller, model and period.

Everything a request needs beyond its own body and answer (ledger keys, caps, price, alert marks,
metric attributes) is worked out on the first request and reused until a period rolls over.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.budget.rules import BudgetRule, Charge, tag_pairs
from proxy.exchange import Identity
from proxy.pricing import Price, Pricing

_MAX_PLANS = 10_000  # remembered (caller, model) plans; cleared when full (clients pick the names)

AlertMarks = tuple[tuple[int, Charge, tuple[tuple[float, float], ...]], ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """One caller's budgets for one model while `start <= now < end`."""

    charged: tuple[Charge, ...]  # hard charges first, then soft: the order of the ledger's totals
    hard: tuple[Charge, ...]
    hard_keys: tuple[str, ...]
    caps: tuple[int, ...]
    hold: float
    max_output: int  # output tokens reserved when the request sets no cap
    others: tuple[str, ...]  # keys charged at settle time only: soft buckets, tag attribution
    price: Price | None
    alerts: AlertMarks  # (index into `charged`, charge, ((fraction, USD mark in nano), ...))
    lowest_mark: float  # no settle total below this can cross an alert mark (inf: no alerts)
    metrics: tuple[dict[str, str], ...]  # attributes of each spend counter increment
    start: float
    end: float


class Planner:
    """Builds plans and remembers them per (key, user, team, model, tags)."""

    def __init__(self, rules: Sequence[BudgetRule], pricing: Pricing) -> None:
        self._rules = tuple(rules)
        self._pricing = pricing
        self._known: dict[tuple[object, ...], Plan] = {}
        # Callers' identities are shared objects while their keys stay the same: the last one
        # asked about is answered without building a lookup key.
        self._last: tuple[Identity, str | None, Plan] | None = None

    def plan(self, identity: Identity, model: str | None, now: float) -> Plan:
        last = self._last
        if last is not None and last[0] is identity and last[1] == model and \
                last[2].start <= now < last[2].end:
            return last[2]
        plan = self._lookup(identity, model, now)
        self._last = (identity, model, plan)
        return plan

    def _lookup(self, identity: Identity, model: str | None, now: float) -> Plan:
        tags = identity.tags
        seen = (identity.key_id, identity.user, identity.team, model,
                tuple(sorted(tags.items())) if tags else ())
        plan = self._known.get(seen)
        if plan is None or not plan.start <= now < plan.end:
            plan = self._build(identity, model, now)
            if len(self._known) >= _MAX_PLANS:
                self._known.clear()
            self._known[seen] = plan
        return plan

    def _build(self, identity: Identity, model: str | None, now: float) -> Plan:
        windows = {rule: rule.clock.window(now) for rule in self._rules}
        charges = [c for rule in self._rules for c in rule.charges(identity, model, windows[rule])]
        hard = tuple(c for c in charges if c.rule.hard)
        charged = hard + tuple(c for c in charges if not c.rule.hard)
        rules = list(dict.fromkeys(c.rule for c in charges))
        attribution = [key for rule in rules for key in rule.attribution(identity, windows[rule])]
        alerts = _alert_marks(charged)
        return Plan(
            charged=charged, hard=hard, hard_keys=tuple(c.key for c in hard),
            caps=tuple(c.rule.cap for c in hard),
            hold=max((c.rule.config.hold for c in hard), default=0.0),
            max_output=max((c.rule.config.max_output_tokens for c in charges), default=4096),
            others=tuple(c.key for c in charged[len(hard):]) + tuple(attribution),
            price=self._pricing.lookup(model) if hard else self._pricing.price(model),
            alerts=alerts, lowest_mark=min((m for _, _, marks in alerts for _, m in marks),
                                           default=math.inf),
            metrics=_metric_attributes(rules, identity),
            start=max(w.start for w in windows.values()),
            end=min((w.end for w in windows.values() if w.end is not None), default=math.inf))


def _alert_marks(charged: Sequence[Charge]) -> AlertMarks:
    return tuple((index, charge, tuple((f, f * charge.rule.limit) for f in charge.rule.alert_at))
                 for index, charge in enumerate(charged) if charge.rule.alert_at)


def _metric_attributes(rules: Sequence[BudgetRule], identity: Identity) -> tuple[dict[str, str], ...]:
    tags = tag_pairs(identity.tags) or [("", "")]
    return tuple({"budget": rule.name, "tag": f"{name}={value}"} if name else {"budget": rule.name}
                 for rule in rules for name, value in tags)
