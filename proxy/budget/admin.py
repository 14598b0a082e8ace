"""The budget admin API: `GET /admin/spend` (spend, holds, remaining, spend by tag) and
`POST /admin/budgets/reset` (forget one bucket's, or a whole budget's, spend this period).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from proxy.budget.periods import Window
from proxy.budget.rules import BudgetRule
from proxy.errors import NotFound, RequestError
from proxy.pipeline import Clock, PolicyContext
from proxy.state.base import BudgetLedger
from proxy.state.ledger import NANO


def register(ctx: PolicyContext, rules: Sequence[BudgetRule], ledger: BudgetLedger) -> None:
    api = BudgetAdmin(rules, ledger, ctx.clock)
    ctx.add_admin_route("GET", "spend", api.spend)
    ctx.add_admin_route("POST", "budgets/reset", api.reset)


class BudgetAdmin:
    def __init__(self, rules: Sequence[BudgetRule], ledger: BudgetLedger, clock: Clock) -> None:
        self._rules = rules
        self._ledger = ledger
        self._clock = clock

    async def spend(self, request: web.Request) -> web.Response:
        """`?per=team&period=month&budget=name&period_label=2026-01` (all optional)."""
        query = request.query
        label = _label(query.get("period_label"))
        chosen = [r for r in self._rules
                  if query.get("per") in (None, ",".join(r.per), *r.per)
                  and query.get("period") in (None, r.config.period)
                  and query.get("budget") in (None, r.name)]
        data = [await self._describe(rule, label) for rule in chosen]
        return _json({"object": "list", "data": data})

    async def _describe(self, rule: BudgetRule, label: str | None) -> dict[str, Any]:
        window = rule.clock.window(self._clock.time())
        if label is not None and label != window.label:
            window = Window(label, 0.0, None)  # a past (or future) period: no reset time to show
        prefix = rule.prefix(window)
        buckets, tags = [], []
        for key, (spent, held) in sorted((await self._ledger.totals(prefix)).items()):
            name = key[len(prefix):]
            if name.startswith("#"):
                tags.append({"tag": name[1:], "spent_usd": spent / NANO})
                continue
            buckets.append({
                "bucket": name, "spent_usd": spent / NANO, "reserved_usd": held / NANO,
                "remaining_usd": max(0.0, rule.usd - spent / NANO),
            })
        return {
            "budget": rule.name, "per": list(rule.per), "period": rule.config.period,
            "period_label": window.label, "resets_at": window.resets_at(), "usd": rule.usd,
            "hard": rule.hard, "buckets": buckets, "tags": tags,
        }

    async def reset(self, request: web.Request) -> web.Response:
        """Body `{"budget": NAME, "bucket": "team=search", "period_label": "2026-01"}`.

        No bucket: every bucket of the budget; no period_label: the current period.
        """
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise RequestError("The body must be JSON: {\"budget\": NAME, \"bucket\": BUCKET}.") \
                from None
        name = body.get("budget") if isinstance(body, dict) else None
        bucket = body.get("bucket") if isinstance(body, dict) else None
        rule = next((r for r in self._rules if r.name == name), None)
        if rule is None:
            raise NotFound(f"No budget is named {name!r}.", param="budget")
        if bucket is not None and (not isinstance(bucket, str) or not bucket or "|" in bucket):
            raise RequestError("'bucket' must be a bucket name as /admin/spend lists it.",
                               param="bucket")
        label = _label(body.get("period_label")) or rule.clock.window(self._clock.time()).label
        prefix = rule.prefix(Window(label, 0.0, None))
        if bucket is None:
            count = await self._ledger.reset(prefix)
        else:
            count = await self._ledger.reset(prefix + bucket, exact=True)
        return _json({"budget": rule.name, "bucket": bucket, "period_label": label, "reset": count})


def _label(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or "|" in value or len(value) > 32:
        raise RequestError("'period_label' must be a label as /admin/spend lists it, e.g. 2026-01.",
                           param="period_label")
    return value


def _json(payload: Any) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")
