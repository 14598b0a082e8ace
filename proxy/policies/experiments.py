"""A/B experiments: split a model's requests between variants (another model or other params).

Assignment is sticky: a hash of the experiment's name and the caller's user (or key, when there is
no user) picks the variant, so one caller always sees the same one, on every replica, with no
shared state. `x-sidecar-variant` names it. Per-variant requests, errors, latency, tokens and cost
go to OpenTelemetry and to `GET /admin/experiments`, which compares each variant with the first
(the control) by mean and Welch's t-test. Statistics are per process.
"""

from __future__ import annotations

import fnmatch
import hashlib
import time
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from proxy.exchange import Exchange, Reply
from proxy.pipeline import Handler, PolicyContext
from proxy.routing.stats import Running, welch_p_value


class VariantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Reported in x-sidecar-variant and the admin comparison.")
    weight: float = Field(1.0, gt=0, description="Relative share of callers.")
    model: str | None = Field(None, description="Model to use instead of the requested one.")
    params: dict[str, Any] = Field({}, description="Body fields to set, e.g. temperature.")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Experiment name; part of the assignment hash.")
    model: str = Field("*", description="Glob of requested models the experiment applies to.")
    sticky: Literal["user", "key"] = Field("user", description="Who keeps their variant.")
    enabled: bool = Field(True, description="Off: requests go through unchanged.")
    variants: list[VariantConfig] = Field(
        [], description="At least two; the first is the control."
    )

    @model_validator(mode="after")
    def _two_variants(self) -> Config:
        if len(self.variants) < 2:
            raise ValueError("an experiment needs at least two variants")
        if len({v.name for v in self.variants}) != len(self.variants):
            raise ValueError("variant names must be unique")
        return self


class VariantStats:
    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latency = Running()
        self.tokens = Running()
        self.cost = Running()

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "latency_ms": {"mean": self.latency.mean * 1000, "count": self.latency.count},
                "tokens": {"mean": self.tokens.mean, "count": self.tokens.count},
                "cost_usd": {"mean": self.cost.mean, "count": self.cost.count}}


async def create(config: list[Config], ctx: PolicyContext) -> ExperimentsPolicy | None:
    active = [experiment for experiment in config if experiment.enabled]
    if not active:
        return None
    policy = ExperimentsPolicy(active, ctx)
    ctx.add_admin_route("GET", "experiments", policy.admin)
    return policy


class ExperimentsPolicy:
    name = "experiments"

    def __init__(self, experiments: list[Config], ctx: PolicyContext) -> None:
        self.experiments = experiments
        self.route = ctx.extras.get("route")
        self.extras = ctx.extras  # the budget policy, created later, may replace the pricing
        self.stats = {(e.name, v.name): VariantStats() for e in experiments for v in e.variants}
        counter = ctx.meter.create_counter("sidecar.experiment.requests", unit="{request}",
                                           description="Requests per experiment variant")
        self._requests = counter
        self._duration = ctx.meter.create_histogram(
            "sidecar.experiment.duration", unit="s", description="Latency per experiment variant")

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        experiment = self._experiment(ex)
        if experiment is None:
            return await call_next(ex)
        variant = assign(experiment, ex)
        self._apply(ex, variant)
        ex.reply_headers["x-sidecar-variant"] = f"{experiment.name}/{variant.name}"
        ex.note("experiment", **{"sidecar.experiment": experiment.name,
                                 "sidecar.experiment.variant": variant.name})
        stats = self.stats[(experiment.name, variant.name)]
        started = time.perf_counter()
        try:
            reply = await call_next(ex)
        except Exception:
            self._record(experiment, variant, stats, started, None, failed=True, model=ex.model)
            raise
        if reply.stream is None:
            self._record(experiment, variant, stats, started, reply, not reply.ok, ex.model)
        else:
            async def finished(done: Reply) -> None:
                self._record(experiment, variant, stats, started, done,
                             done.outcome != "complete", ex.model)
            reply.on_end(finished)
        return reply

    def _experiment(self, ex: Exchange) -> Config | None:
        if ex.body is None or ex.model is None:
            return None
        for experiment in self.experiments:
            if fnmatch.fnmatchcase(ex.model, experiment.model):
                return experiment
        return None

    def _apply(self, ex: Exchange, variant: VariantConfig) -> None:
        ex.needs_usage = True
        if variant.model is None and not variant.params:
            return
        assert ex.body is not None
        ex.replace_body({**ex.body, **variant.params, **({"model": variant.model}
                                                          if variant.model else {})})
        if variant.model is not None:
            ex.model = variant.model
            if self.route is not None:
                ex.upstream = self.route(variant.model)

    def _record(self, experiment: Config, variant: VariantConfig, stats: VariantStats,
                started: float, reply: Reply | None, failed: bool, model: str | None) -> None:
        elapsed = time.perf_counter() - started
        attributes = {"experiment": experiment.name, "variant": variant.name,
                      "outcome": "error" if failed else "ok"}
        stats.requests += 1
        self._requests.add(1, attributes)
        self._duration.record(elapsed, attributes)
        if failed:
            stats.errors += 1
            return
        stats.latency.add(elapsed)
        usage = reply.final_usage() if reply is not None else None
        if usage:
            stats.tokens.add(float(usage.get("total_tokens") or 0))
            pricing = self.extras.get("pricing")
            cost = pricing.cost(model, usage) if pricing is not None else None
            if cost is not None:
                stats.cost.add(cost)

    async def admin(self, request: web.Request) -> web.Response:
        return web.json_response({"experiments": [self.report(e) for e in self.experiments]})

    def report(self, experiment: Config) -> dict[str, Any]:
        control = experiment.variants[0].name
        base = self.stats[(experiment.name, control)]
        variants = {v.name: self.stats[(experiment.name, v.name)] for v in experiment.variants}
        return {
            "name": experiment.name, "control": control,
            "variants": {name: stats.summary() for name, stats in variants.items()},
            "comparison": {name: {"latency_p_value": welch_p_value(stats.latency, base.latency),
                                  "cost_p_value": welch_p_value(stats.cost, base.cost)}
                           for name, stats in variants.items() if name != control},
        }

    async def aclose(self) -> None:
        return None


def assign(experiment: Config, ex: Exchange) -> VariantConfig:
    """The caller's variant: the same for the same caller, everywhere, every time."""
    who = ex.identity.key_id if experiment.sticky == "key" else (ex.identity.user or ex.identity.key_id)
    digest = hashlib.sha256(f"{experiment.name}\x00{who}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(v.weight for v in experiment.variants)
    for variant in experiment.variants:
        if point < variant.weight:
            return variant
        point -= variant.weight
    return experiment.variants[-1]
