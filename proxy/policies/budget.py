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

from opentelemetry.metrics import NoOpCounter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from proxy.budget.admin import register as register_admin
from proxy.budget.alerts import Alert, Alerter
from proxy.budget.costs import answer_cost, cost_stamper, usd_text
from proxy.budget.periods import Period
from proxy.budget.plan import Plan, Planner
from proxy.budget.rules import BudgetRule, Charge
from proxy.errors import BudgetExceeded, ConfigError, PolicyRejection, StateBackendError
from proxy.exchange import Endpoint, Exchange, Reply
from proxy.pipeline import Handler, PolicyContext
from proxy.pricing import ModelPrice, Price, Pricing
from proxy.state import StateBackend
from proxy.state.base import BudgetLedger, Reservation
from proxy.state.ledger import NANO, MemoryLedger, RedisLedger, to_nano
from proxy.tokens import byte_bound
from proxy.units import Duration

log = logging.getLogger("proxy.budget")

_COSTED = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS, Endpoint.RESPONSES})
_DIMENSIONS = ("key", "user", "team", "model", "tag")
_OUTPUT_CAPS = ("max_completion_tokens", "max_tokens", "max_output_tokens")  # the first set wins
_NOTHING_HELD = Reservation(None, (), 0)

Crossed = tuple[tuple[Charge, float, int], ...]  # (bucket, alert fraction, its new total)


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
        self._planner = Planner(rules, pricing)
        self._clock = ctx.clock
        self._now = ctx.clock.time
        self._tokens = ctx.tokens
        self._alerter = Alerter()
        self._spend = ctx.meter.create_counter(
            "sidecar.budget.spend_usd", unit="USD", description="Settled spend by budget and tag.")
        self._counting = not isinstance(self._spend, NoOpCounter)  # no meter: skip the attributes
        # The memory ledger decides without waiting: called directly, it costs no coroutine.
        self._memory = ledger if isinstance(ledger, MemoryLedger) else None
        # Holds in flight taken on the body-length bound of their input (memory ledger only).
        self._loose: dict[str, tuple[Exchange, Plan]] = {}

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        if ex.endpoint not in _COSTED:
            return await call_next(ex)
        now = self._now()
        plan = self._planner.plan(ex.identity, ex.model, now)
        price = plan.price
        if price is None:
            raise _no_price(ex, plan)
        held = _NOTHING_HELD
        if plan.hard:
            # far from the cap the loose hold is taken without a coroutine or a token count
            held = self._hold_loosely(ex, plan, price, now) or await self._admit(ex, plan, price, now)
        ex.needs_usage = True
        try:
            reply = await call_next(ex)
        except BaseException:
            await self._settle(ex, held, plan, 0.0)
            raise
        if reply.stream is not None:
            if reply.sse:
                reply.map_frames(cost_stamper(price))
            reply.on_end(lambda done: self._finish(ex, held, plan, done))
            return reply
        cost = answer_cost(reply, price)
        if cost is None:
            cost = await self._unmetered(ex, price, plan)
        # on the exchange, not the reply: a cache storing this reply must not replay its cost
        ex.reply_headers["x-sidecar-cost-usd"] = usd_text(cost)
        crossed = self._settle_here(ex, held, plan, cost) if self._memory is not None else \
            await self._settle_shared(ex, held, plan, cost)
        if crossed:
            await self._alerts(ex, crossed)
        return reply

    def _hold_loosely(self, ex: Exchange, plan: Plan, price: Price, now: float) -> Reservation | None:
        """Hold the request's bound on the memory ledger with its input bounded by the body's
        length, which costs nothing to know; None when that is unknown or does not fit."""
        memory = self._memory
        if memory is None or ex.input_tokens is not None:
            return None
        loose = byte_bound(ex)
        if loose is None:
            return None
        held = memory.reserve_now(plan.hard_keys, plan.caps, to_nano(_bound(ex, price, plan, loose)),
                                  plan.hold, now)
        if held.id is None:
            return None
        self._loose[held.id] = (ex, plan)
        return held

    async def _admit(self, ex: Exchange, plan: Plan, price: Price, now: float) -> Reservation:
        """Hold the bound of the request's token count, or refuse it.

        Before refusing, every hold still on a body-length bound is shrunk to its own token
        count, so refusals are decided on token counts alone.
        """
        tokens_in = ex.input_tokens
        if tokens_in is None:
            tokens_in = await self._tokens.count_exchange(ex)
        amount = to_nano(_bound(ex, price, plan, tokens_in))
        held = await self._reserve(plan, amount, now)
        if held.id is None and self._loose:
            await self._tighten()
            held = await self._reserve(plan, amount, now)
        if held.id is None:
            raise _refusal(ex, plan, held, amount)
        return held

    async def _reserve(self, plan: Plan, amount: int, now: float) -> Reservation:
        if self._memory is not None:
            return self._memory.reserve_now(plan.hard_keys, plan.caps, amount, plan.hold, now)
        return await self.ledger.reserve(plan.hard_keys, plan.caps, amount, plan.hold, now)

    async def _tighten(self) -> None:
        """Shrink each hold taken on a body-length bound to the bound of its token count."""
        assert self._memory is not None
        loose, self._loose = self._loose, {}
        for hold_id, (ex, plan) in loose.items():
            assert plan.price is not None
            tokens_in = await self._tokens.count_exchange(ex)
            self._memory.shrink_now(hold_id, to_nano(_bound(ex, plan.price, plan, tokens_in)))

    async def _finish(self, ex: Exchange, held: Reservation, plan: Plan, reply: Reply) -> None:
        """Settle a stream, however it ended."""
        assert plan.price is not None
        cost = answer_cost(reply, plan.price)
        if cost is None:
            cost = await self._unmetered(ex, plan.price, plan)
        await self._settle(ex, held, plan, cost)

    async def _unmetered(self, ex: Exchange, price: Price, plan: Plan) -> float:
        """The charge for an answer that reports no usage: the most it could have cost, its input
        counted with the tokenizer (not bounded by the body's length)."""
        return _bound(ex, price, plan, await self._tokens.count_exchange(ex))

    async def _settle(self, ex: Exchange, held: Reservation, plan: Plan, cost: float) -> None:
        crossed = self._settle_here(ex, held, plan, cost) if self._memory is not None else \
            await self._settle_shared(ex, held, plan, cost)
        if crossed:
            await self._alerts(ex, crossed)

    def _settle_here(self, ex: Exchange, held: Reservation, plan: Plan, cost: float) -> Crossed:
        """Settle on the memory ledger, which never waits; returns the alert marks crossed."""
        assert self._memory is not None
        if held.id is not None:
            self._loose.pop(held.id, None)
        if not plan.charged:
            ex.note("budget", cost_usd=cost)
            return ()
        actual = to_nano(cost)
        try:
            totals = self._memory.settle_now(held, actual, plan.others)
        except Exception:
            log.exception("could not settle budget spend for request %s", ex.request_id)
            return ()
        return self._record(ex, held, plan, cost, actual, totals)

    async def _settle_shared(self, ex: Exchange, held: Reservation, plan: Plan,
                             cost: float) -> Crossed:
        if not plan.charged:
            ex.note("budget", cost_usd=cost)
            return ()
        actual = to_nano(cost)
        try:
            totals = await self.ledger.settle(held, actual, plan.others, self._clock.time())
        except StateBackendError:  # the answer is already out: lose the record, never the answer
            log.error("budget spend of request %s not recorded: state backend down", ex.request_id)
            return ()
        except Exception:
            log.exception("could not settle budget spend for request %s", ex.request_id)
            return ()
        return self._record(ex, held, plan, cost, actual, totals)

    def _record(self, ex: Exchange, held: Reservation, plan: Plan, cost: float, actual: int,
                totals: list[int]) -> Crossed:
        """Note and count a settled request; returns the alert marks it crossed."""
        note = {"cost_usd": cost, "reserved_usd": held.amount / NANO}
        known = ex.notes.get("budget")  # as ex.note(), without its keyword-argument dict
        if known is None:
            ex.notes["budget"] = note
        else:
            known.update(note)
        if cost > 0 and self._counting:
            for attributes in plan.metrics:
                self._spend.add(cost, attributes)
        if actual and totals and max(totals) >= plan.lowest_mark:
            return _crossed(plan, totals, actual)
        return ()

    async def _alerts(self, ex: Exchange, crossed: Crossed) -> None:
        for charge, fraction, total in crossed:
            try:
                first = await self.ledger.claim_alert(charge.key, fraction)
            except StateBackendError:
                log.error("budget alert for %r not sent: state backend down", charge.rule.name)
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


def _crossed(plan: Plan, totals: list[int], actual: int) -> Crossed:
    """The alert marks this settle went past, with the bucket's new total."""
    crossed: Crossed = ()
    for index, charge, marks in plan.alerts:
        if index < len(totals):
            total = totals[index]
            for fraction, mark in marks:
                # Settles add disjoint (before, total] intervals, so one settle crosses each mark.
                if total - actual < mark <= total:
                    crossed += ((charge, fraction, total),)
    return crossed


def _no_price(ex: Exchange, plan: Plan) -> PolicyRejection:
    # Never free: with no price the cost of a hard-capped request cannot be bounded.
    model = (ex.model or "")[:128]
    budget = plan.hard[0].rule.name if plan.hard else "(any)"
    return PolicyRejection(
        f"No price is known for model '{model}', so budget '{budget}' cannot be "
        "enforced. Add the model to the budget's `prices` table.", param="model",
        code="model_price_unknown")


def _bound(ex: Exchange, price: Price, plan: Plan, tokens_in: int) -> float:
    """The most this request can cost: estimated input plus every output token it may get."""
    if ex.endpoint is Endpoint.EMBEDDINGS:
        return price.bound(tokens_in, 0)
    body = ex.body or {}
    tokens_out = plan.max_output
    for key in _OUTPUT_CAPS:
        value = body.get(key)
        if value is not None and _positive(value):
            tokens_out = value
            break
    choices = body.get("n")
    if choices is not None and _positive(choices) and choices > 1:
        tokens_out *= choices
    return price.bound(tokens_in, tokens_out)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _refusal(ex: Exchange, plan: Plan, held: Reservation, amount: int) -> BudgetExceeded:
    charge, used = plan.hard[held.refused], held.used
    rule, window = charge.rule, charge.window
    ex.note("budget", refused=rule.name)
    resets = window.resets_at()
    when = f"It resets at {resets}." if resets else "It does not reset by itself (period = total)."
    span = "in total" if rule.config.period == "total" else \
        f"this {rule.config.period} ({window.label})"
    return BudgetExceeded(
        f"Budget '{rule.name}' ({charge.bucket}) is exhausted {span}: ${used / NANO:.4f} of "
        f"${rule.usd:.2f} is spent or held by requests in flight, and this request may cost up "
        f"to ${amount / NANO:.4f}. {when}",
        headers={"x-should-retry": "false"})
