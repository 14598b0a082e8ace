"""`[[budgets]]`: USD spend caps per key, user, team, tag or model over calendar periods.

Before a request goes upstream, its highest possible cost (estimated input plus its max output, at
list price) is reserved atomically on every hard budget it falls under; when the answer or stream
ends the reservation is settled to the real cost from `usage`. Decisions are in docs/budgets.md.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from proxy.budget.admin import register as register_admin
from proxy.budget.alerts import Alert, Alerter
from proxy.budget.costs import answer_cost, cost_stamper, usd_text
from proxy.budget.periods import Period
from proxy.budget.rules import BudgetRule, Charge
from proxy.errors import BudgetExceeded, ConfigError, PolicyRejection, StateBackendError
from proxy.exchange import Endpoint, Exchange, Reply
from proxy.pipeline import Handler, PolicyContext
from proxy.pricing import ModelPrice, Price, Pricing
from proxy.state import StateBackend
from proxy.state.base import BudgetLedger, Reservation
from proxy.state.ledger import NANO, MemoryLedger, RedisLedger, to_nano
from proxy.units import Duration

log = logging.getLogger("proxy.budget")

_COSTED = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS, Endpoint.RESPONSES})
_DIMENSIONS = ("key", "user", "team", "model", "tag")
_NOTHING_HELD = Reservation(None, (), 0)


class Config(BaseModel):
    """One `[[budgets]]` item."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("budget", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                      description="Unique name, shown in refusals, alerts and the admin API.")
    per: str | list[str] = Field("key", description="Who has a budget: key, user, team, model, "
                                 "tag (each tag) or tag:<name>; a list means each combination.")
    match: dict[Literal["model", "key", "user", "team", "tag"], str] = Field(
        {}, description="Globs a request must match to fall under this budget (tag: 'name=value').")
    period: Period = Field("month", description="day, week (ISO, from Monday), month or total.")
    timezone: str = Field("UTC", description="IANA time zone the periods are aligned to.")
    usd: float = Field(100.0, ge=0, description="The cap in USD per bucket and period.")
    hard: bool = Field(True, description="Refuse requests over the cap; false: only track and alert.")
    alert_at: list[float] = Field([], description="Fractions of `usd` that trigger one alert each.")
    alert_webhook: str = Field("", description="URL that alerts are POSTed to as JSON; empty: log only.")
    max_output_tokens: int = Field(
        4096, ge=1, description="Output tokens reserved when a request sets no max_tokens.")
    hold: Duration = Field(1800.0, gt=0, description="How long a reservation lives if never settled "
                           "(a crashed process); keep it above the upstream's total timeout.")
    prices: dict[str, ModelPrice] = Field(
        {}, description="Model prices (USD per 1M tokens) added to or replacing the packaged list.")
    default_price: ModelPrice | None = Field(
        None, description="Price of unlisted models under soft budgets; unset: the packaged default.")

    @field_validator("per")
    @classmethod
    def _known_dimensions(cls, value: str | list[str]) -> str | list[str]:
        for dim in [value] if isinstance(value, str) else value:
            if dim not in _DIMENSIONS and not (dim.startswith("tag:") and len(dim) > 4):
                raise ValueError(f"unknown dimension {dim!r}: use {', '.join(_DIMENSIONS)} or tag:<name>")
        if isinstance(value, list) and not value:
            raise ValueError("name at least one dimension")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("alert_at")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < v <= 1 for v in value):
            raise ValueError("alert fractions must be in (0, 1], e.g. [0.8, 0.95]")
        return value

    @field_validator("alert_webhook")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


async def create(configs: list[Config], ctx: PolicyContext) -> BudgetPolicy | None:
    if not configs:
        return None
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(["budgets: budget names must be unique"])
    prices = dict(ctx.settings.pricing.models)
    prices.update({name: price for c in configs for name, price in c.prices.items()})
    default = next((c.default_price for c in configs if c.default_price is not None),
                   ctx.settings.pricing.default)
    pricing = await asyncio.to_thread(Pricing.load, prices, default)
    ctx.extras["pricing"] = pricing  # the configured prices, for telemetry's cost attributes
    ledger = await open_ledger(ctx.state)
    rules = [BudgetRule(c) for c in configs]
    policy = BudgetPolicy(rules, pricing, ledger, ctx)
    register_admin(ctx, rules, ledger)
    return policy


async def open_ledger(state: StateBackend) -> BudgetLedger:
    """The Redis ledger when state is shared, else the memory one persisted under `data_dir`."""
    if state.redis is not None:
        return RedisLedger(state.redis)
    path = state.data_dir / "budgets.sqlite3"
    ledger = MemoryLedger(path)
    try:
        await ledger.start()
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError([f"state.data_dir: cannot keep budget spend in {path}: {exc}"]) from None
    return ledger


class BudgetPolicy:
    name = "budget"

    def __init__(self, rules: list[BudgetRule], pricing: Pricing, ledger: BudgetLedger,
                 ctx: PolicyContext) -> None:
        self.rules = rules
        self.pricing = pricing
        self.ledger = ledger
        self._clock = ctx.clock
        self._tokens = ctx.tokens
        self._alerter = Alerter()
        self._spend = ctx.meter.create_counter(
            "sidecar.budget.spend_usd", unit="USD", description="Settled spend by budget and tag.")

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        if ex.endpoint not in _COSTED:
            return await call_next(ex)
        now = self._clock.time()
        charges = [c for rule in self.rules for c in rule.charges(ex.identity, ex.model, now)]
        hard = [c for c in charges if c.rule.hard]
        price = self._price(ex, hard)
        bound = await self._bound(ex, price, charges)
        held = await self._reserve(ex, hard, to_nano(bound), now) if hard else _NOTHING_HELD
        ex.needs_usage = True
        try:
            reply = await call_next(ex)
        except BaseException:
            await self._settle(ex, held, charges, 0.0)
            raise
        if reply.stream is not None:
            if reply.sse:
                reply.map_frames(cost_stamper(price))
            reply.on_end(lambda done: self._settle(ex, held, charges, answer_cost(done, price, bound)))
            return reply
        cost = answer_cost(reply, price, bound)
        # on the exchange, not the reply: a cache storing this reply must not replay its cost
        ex.reply_headers["x-sidecar-cost-usd"] = usd_text(cost)
        await self._settle(ex, held, charges, cost)
        return reply

    def _price(self, ex: Exchange, hard: list[Charge]) -> Price:
        price = self.pricing.lookup(ex.model) if hard else self.pricing.price(ex.model)
        if price is None:
            # Never free: with no price the cost of a hard-capped request cannot be bounded.
            model = (ex.model or "")[:128]
            budget = hard[0].rule.name if hard else "(any)"
            raise PolicyRejection(
                f"No price is known for model '{model}', so budget '{budget}' cannot be "
                "enforced. Add the model to the budget's `prices` table.", param="model",
                code="model_price_unknown")
        return price

    async def _bound(self, ex: Exchange, price: Price, charges: list[Charge]) -> float:
        """The most this request can cost: estimated input plus every output token it may get."""
        body = ex.body or {}
        tokens_in = await self._tokens.count_exchange(ex)
        if ex.endpoint is Endpoint.EMBEDDINGS:
            return price.bound(tokens_in, 0)
        tokens_out = _max_output(body) or max(
            (c.rule.config.max_output_tokens for c in charges), default=4096)
        choices = body.get("n")
        if isinstance(choices, int) and not isinstance(choices, bool) and choices > 1:
            tokens_out *= choices
        return price.bound(tokens_in, tokens_out)

    async def _reserve(self, ex: Exchange, hard: list[Charge], amount: int,
                       now: float) -> Reservation:
        hold = max(c.rule.config.hold for c in hard)
        held = await self.ledger.reserve([c.key for c in hard], [c.rule.cap for c in hard],
                                         amount, hold, now)
        if held.id is None:
            ex.note("budget", refused=hard[held.refused].rule.name)
            raise _refusal(hard[held.refused], held.used, amount)
        return held

    async def _settle(self, ex: Exchange, held: Reservation, charges: list[Charge],
                      cost: float) -> None:
        if not charges:
            ex.note("budget", cost_usd=cost)
            return
        # The ledger returns totals for the held (hard) keys first, then the others in order.
        charged = [c for c in charges if c.rule.hard] + [c for c in charges if not c.rule.hard]
        others = [c.key for c in charged[len(held.keys):]]
        rules = list(dict.fromkeys(c.rule for c in charges))
        if ex.identity.tags:
            windows = {c.rule: c.window for c in charges}
            others += [k for rule in rules for k in rule.attribution(ex.identity, windows[rule])]
        actual = to_nano(cost)
        try:
            totals = await self.ledger.settle(held, actual, others, self._clock.time())
        except StateBackendError:  # the answer is already out: lose the record, never the answer
            log.error("budget spend of request %s not recorded: state backend down", ex.request_id)
            return
        except Exception:
            log.exception("could not settle budget spend for request %s", ex.request_id)
            return
        ex.note("budget", cost_usd=cost, reserved_usd=held.amount / NANO)
        self._count(cost, rules, ex)
        if actual:
            await self._alerts(ex, charged, totals, actual)

    def _count(self, cost: float, rules: list[BudgetRule], ex: Exchange) -> None:
        if cost <= 0:
            return
        tags = sorted(ex.identity.tags.items())[:16]
        for rule in rules:
            for name, value in tags or [("", "")]:
                attributes = {"budget": rule.name, "tag": f"{name}={value}"} if name else \
                    {"budget": rule.name}
                self._spend.add(cost, attributes)

    async def _alerts(self, ex: Exchange, charged: list[Charge], totals: list[int],
                      actual: int) -> None:
        for charge, total in zip(charged, totals, strict=False):
            rule = charge.rule
            for fraction in rule.alert_at:
                mark = fraction * rule.limit
                # Settles add disjoint (before, total] intervals, so one settle crosses each mark.
                if not total - actual < mark <= total:
                    continue
                try:
                    first = await self.ledger.claim_alert(charge.key, fraction)
                except StateBackendError:
                    log.error("budget alert for %r not sent: state backend down", rule.name)
                    continue
                if first:
                    self._alert(ex, charge, fraction, total)

    def _alert(self, ex: Exchange, charge: Charge, fraction: float, total: int) -> None:
        rule = charge.rule
        ex.note("budget", alert=rule.name, alert_bucket=charge.bucket, alert_threshold=fraction)
        self._alerter.send(Alert(rule.name, charge.bucket, rule.config.period, charge.window.label,
                                 fraction, total / NANO, rule.usd, charge.window.resets_at(),
                                 rule.config.alert_webhook))

    async def aclose(self) -> None:
        await self._alerter.aclose()
        await self.ledger.aclose()


def _max_output(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _refusal(charge: Charge, used: int, amount: int) -> BudgetExceeded:
    rule, window = charge.rule, charge.window
    resets = window.resets_at()
    when = f"It resets at {resets}." if resets else "It does not reset by itself (period = total)."
    span = "in total" if rule.config.period == "total" else \
        f"this {rule.config.period} ({window.label})"
    return BudgetExceeded(
        f"Budget '{rule.name}' ({charge.bucket}) is exhausted {span}: ${used / NANO:.4f} of "
        f"${rule.usd:.2f} is spent or held by requests in flight, and this request may cost up "
        f"to ${amount / NANO:.4f}. {when}",
        headers={"x-should-retry": "false"})
