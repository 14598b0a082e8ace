"""Sliding-window rate limits (`[[limits]]`): requests, tokens and in-flight requests per key, user,
team, model, ip, upstream or tag; every matching rule must admit a request, all-or-nothing.

Tokens are charged as the input estimate plus the output reservation, then reconciled with the real
usage when the answer (or stream) ends; cache hits are reconciled to zero tokens. The counting
algorithm and its error bound are in `proxy.state.window`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from proxy.errors import ConfigError, StateBackendError
from proxy.exchange import Exchange, Reply
from proxy.pipeline import Handler, PolicyContext
from proxy.ratelimit.rules import MATCH_FIELDS, Plan, Planner, Rule, check_dimension, compile_match
from proxy.ratelimit.usage import EndGuard, choices, input_tokens, output_cap, real_tokens
from proxy.ratelimit.verdict import Headers, refusal
from proxy.state.base import Admission, Charge, WindowCounter
from proxy.state.window import open_window_counter
from proxy.units import Duration

log = logging.getLogger("proxy.limits")

LEASE_TTL = 30.0  # seconds a concurrency slot outlives a holder that stopped refreshing it
POLL = 0.1  # longest sleep between two admission attempts of a waiting request


class Config(BaseModel):
    """One `[[limits]]` rule."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", description="Unique rule name, shown in 429 messages (default: from per).")
    per: str | list[str] = Field(
        "key", description="Counter dimension(s): key, user, team, model, ip, upstream, tag, tag:NAME.")
    match: dict[str, str | list[str]] = Field(
        {}, description="Globs on model, key, user, team, tag, ip, upstream, endpoint (all must match).")
    window: Duration = Field(60.0, description="Sliding window length, e.g. '1s', '1m', '1d'.")
    requests: int | None = Field(None, ge=1, description="Requests per window (unset: no limit).")
    tokens: int | None = Field(None, ge=1, description="Tokens (input + output) per window.")
    concurrent: int | None = Field(None, ge=1, description="Requests in flight at once.")
    wait: Duration = Field(0.0, description="Queue up to this long for capacity instead of a 429.")
    fail_open: bool = Field(True, description="Admit (and log once) when the state store is down.")
    default_max_tokens: int = Field(
        1024, ge=0, description="Output tokens reserved when a request sets no max_tokens.")

    @field_validator("per")
    @classmethod
    def _dimensions(cls, value: str | list[str]) -> str | list[str]:
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("name at least one dimension")
        for item in items:
            check_dimension(item)
        return value

    @field_validator("match")
    @classmethod
    def _match_fields(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for field in value:
            if field not in MATCH_FIELDS:
                raise ValueError(f"cannot match on {field!r}: use {', '.join(MATCH_FIELDS)}")
        return value

    @model_validator(mode="after")
    def _something_counted(self) -> Config:
        if self.window <= 0:
            raise ValueError("window must be longer than 0s")
        if self.requests is None and self.tokens is None and self.concurrent is None:
            raise ValueError("set at least one of requests, tokens or concurrent")
        return self

    def compile(self) -> Rule:
        per = (self.per,) if isinstance(self.per, str) else tuple(self.per)
        return Rule(
            name=self.name or "per-" + "-".join(per), per=per, match=compile_match(self.match),
            window=self.window, requests=self.requests, tokens=self.tokens,
            concurrent=self.concurrent, wait=self.wait, fail_open=self.fail_open,
            default_max_tokens=self.default_max_tokens,
        )


async def create(config: list[Config], ctx: PolicyContext) -> RateLimitPolicy | None:
    rules = [item.compile() for item in config]
    if not rules:
        return None
    names = [rule.name for rule in rules]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError([f"limits: rule names must be unique: {', '.join(duplicates)}"])
    store = open_window_counter(ctx.state.redis, LEASE_TTL)
    return RateLimitPolicy(rules, store, ctx, shared=ctx.state.redis is not None)


@dataclass(slots=True)
class Ticket:
    """One admitted request: what it was charged, when, and its concurrency lease."""

    plan: Plan
    charges: list[Charge]
    lease: str
    charged_at: float
    charged: bool
    shown: int = -1  # the tokens counter in the headers (-1: none)
    left: int = 0  # and what its header says is left


class RateLimitPolicy:
    name = "limits"

    def __init__(self, rules: Sequence[Rule], store: WindowCounter, ctx: PolicyContext,
                 shared: bool = False) -> None:
        self.rules = tuple(rules)
        self.store = store
        self._ctx = ctx
        self._planner = Planner(rules)
        self._headers = Headers()
        # Redis counters are shared by processes, which agree on wall time, not monotonic time.
        self._now = ctx.clock.time if shared else ctx.clock.monotonic
        self._holding: dict[str, Ticket] = {}
        self._process = uuid.uuid4().hex[:12]  # lease ids: unique across processes sharing Redis
        self._leases = itertools.count()
        self._degraded = False
        self._background: set[asyncio.Task[None]] = set()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_leases())

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        plan = self._planner.plan(ex)
        if plan is None:
            return await call_next(ex)
        ticket = await self._admit(ex, plan)
        try:
            reply = await call_next(ex)
        except asyncio.CancelledError:
            await self._settle(ticket, None)  # the client left: the upstream may have worked
            raise
        except BaseException:
            await self._settle(ticket, 0)  # nothing was generated
            raise
        if reply.stream is not None:
            reply.stream = EndGuard(reply.stream, lambda: self._end_stream(ex, ticket, reply),
                                    lambda: self._dropped(ticket))
            return reply
        if not plan.tokens:
            await self._settle(ticket, None)
            return reply
        real = real_tokens(ex, reply)
        await self._settle(ticket, real)
        if real is not None and ticket.shown >= 0:
            self._restate_tokens(ex, ticket, real)
        return reply

    async def _end_stream(self, ex: Exchange, ticket: Ticket, reply: Reply) -> None:
        await self._settle(ticket, real_tokens(ex, reply) if ticket.plan.tokens else None)

    def _dropped(self, ticket: Ticket) -> None:
        """A stream was discarded without being closed: settle it in the background."""
        with contextlib.suppress(RuntimeError):  # no running loop: the process is ending
            task = asyncio.get_running_loop().create_task(self._settle(ticket, None))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _admit(self, ex: Exchange, plan: Plan) -> Ticket:
        charges = list(plan.charges)
        if plan.tokens:
            ex.needs_usage = True
            estimate = await input_tokens(ex, self._ctx.tokens)
            cap = output_cap(ex)
            count = choices(ex) if cap is None else 0
            for index in plan.tokens:
                extra = cap if cap is not None else plan.planned[index].rule.default_max_tokens * count
                charges[index] = plan.priced_at(index, estimate + extra)
        lease = f"{self._process}:{next(self._leases)}" if plan.holds else ""
        ticket = Ticket(plan, charges, lease, 0.0, charged=False)
        admission = await self._acquire(ticket)
        if admission is None:
            ex.note(self.name, decision="unchecked")
            return ticket
        ticket.shown = shown = self._headers.write(ex.reply_headers, plan, charges, admission)
        if shown >= 0:
            ticket.left = admission.remaining[shown]
        if not admission.admitted:
            refused = plan.planned[admission.refused]
            ex.note(self.name, decision="refused", rule=refused.rule.name, kind=refused.kind)
            raise refusal(plan, charges, admission)
        ex.note(self.name, decision="admitted", rules=plan.rules)
        if lease:
            self._holding[lease] = ticket
        return ticket

    async def _acquire(self, ticket: Ticket) -> Admission | None:
        """Admit now, or wait (a rule's `wait`) for capacity; None when the store is down (open)."""
        started: float | None = None
        while True:
            now = self._now()
            try:
                admission = await self.store.acquire(ticket.charges, ticket.lease, now)
            except StateBackendError:
                self._store_down(ticket.plan)
                return None
            if self._degraded:
                self._store_up()
            if admission.admitted:
                ticket.charged, ticket.charged_at = True, now
                return admission
            refused = ticket.plan.planned[admission.refused]
            clock = asyncio.get_running_loop().time()  # real time: the window clock may be a test's
            started = clock if started is None else started
            left = refused.rule.wait - (clock - started)
            guessed = refused.kind == "concurrent"
            if left <= 0 or math.isinf(admission.retry_after) or (
                    not guessed and admission.retry_after > left):
                return admission
            await asyncio.sleep(min(admission.retry_after, left, POLL))

    def _store_down(self, plan: Plan) -> None:
        closed = sorted({p.rule.name for p in plan.planned if not p.rule.fail_open})
        if closed:
            raise StateBackendError(
                f"Rate limits cannot be checked right now (rule '{closed[0]}' fails closed). "
                "Please try again shortly.")
        if not self._degraded:
            self._degraded = True
            log.error("rate-limit store unavailable: admitting requests unchecked (fail_open)")

    def _store_up(self) -> None:
        if self._degraded:
            self._degraded = False
            log.warning("rate-limit store reachable again: limits are enforced")

    async def _settle(self, ticket: Ticket, real: int | None) -> None:
        """Release the lease and correct the token estimate to `real` (None: keep the estimate)."""
        if not ticket.charged:
            return
        ticket.charged = False
        lease = ticket.lease
        if lease:
            self._holding.pop(lease, None)
        charges = ticket.charges
        deltas = [0] * len(charges)
        if real is not None:
            for index in ticket.plan.tokens:
                deltas[index] = real - charges[index].cost
        if not lease and not any(deltas):
            return  # nothing held, nothing to correct: no round trip
        try:
            await self.store.settle(charges, deltas, ticket.charged_at, lease, self._now())
        except StateBackendError:
            log.debug("rate-limit settle skipped: store unavailable (leases expire on their own)")

    def _restate_tokens(self, ex: Exchange, ticket: Ticket, real: int) -> None:
        """A JSON answer is not sent yet: its remaining-tokens header can show the real usage."""
        charge = ticket.charges[ticket.shown]
        remaining = min(charge.limit, max(0, ticket.left + charge.cost - real))
        ex.reply_headers["x-ratelimit-remaining-tokens"] = str(remaining)

    async def _refresh_leases(self) -> None:
        """Keep the leases of live requests from expiring; a dead process stops refreshing."""
        while True:
            await asyncio.sleep(LEASE_TTL / 3)
            for ticket in list(self._holding.values()):
                charges = [ticket.charges[i] for i, p in enumerate(ticket.plan.planned)
                           if p.kind == "concurrent"]
                with contextlib.suppress(StateBackendError):
                    await self.store.refresh(charges, ticket.lease, self._now())

    async def aclose(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=2)
        self._refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._refresher
        await self.store.aclose()
