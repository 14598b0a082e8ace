"""Composes the policies around the upstream call, outermost first, into one handler.

The chain is built once at startup; per request it costs one call per enabled policy. A policy
sees only `Exchange`, `Reply` and `call_next`, never another policy.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from opentelemetry import metrics, trace

from proxy.exchange import Exchange, Reply
from proxy.settings import Settings
from proxy.state import StateBackend
from proxy.tokens import TokenCounter

Handler = Callable[[Exchange], Awaitable[Reply]]
AdminHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReadinessCheck = Callable[[], Awaitable[bool]]


class Policy(Protocol):
    """One layer of the onion: answer itself, or call the rest and look at what comes back."""

    name: str

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply: ...

    async def aclose(self) -> None: ...


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (calendar periods)."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin (windows, timeouts)."""


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(slots=True)
class PolicyContext:
    """What a policy may use to build itself; everything hangs off the app, nothing is global."""

    settings: Settings
    state: StateBackend
    tokens: TokenCounter
    clock: Clock = field(default_factory=SystemClock)
    meter: metrics.Meter = field(default_factory=lambda: metrics.NoOpMeter("llm-sidecar"))
    tracer: trace.Tracer = field(default_factory=lambda: trace.NoOpTracer())
    upstream: Handler | None = None
    admin_routes: dict[tuple[str, str], AdminHandler] = field(default_factory=dict)
    readiness: dict[str, ReadinessCheck] = field(default_factory=dict)
    upstream_wrappers: list[Callable[[Handler], Handler]] = field(default_factory=list)
    steps: list[Callable[[Exchange], None]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def add_admin_route(self, method: str, path: str, handler: AdminHandler) -> None:
        """Serve `method /admin/<path>` (behind the admin key)."""
        self.admin_routes[(method.upper(), path.strip("/"))] = handler

    def add_readiness_check(self, name: str, check: ReadinessCheck) -> None:
        self.readiness[name] = check

    def wrap_upstream(self, wrapper: Callable[[Handler], Handler]) -> None:
        """Wrap the innermost call (the upstream request), e.g. in a CLIENT span."""
        self.upstream_wrappers.append(wrapper)

    def add_step(self, step: Callable[[Exchange], None]) -> None:
        """Run `step` on every exchange before the outermost layer: for work that never answers,
        refuses or waits (deriving who is calling), which then costs one call instead of a layer."""
        self.steps.append(step)

    def terminal(self, upstream: Handler) -> Handler:
        for wrapper in self.upstream_wrappers:
            upstream = wrapper(upstream)
        return upstream


class Pipeline:
    def __init__(self, policies: Sequence[Policy], terminal: Handler,
                 steps: Sequence[Callable[[Exchange], None]] = ()) -> None:
        self.policies = tuple(policies)
        self._steps = tuple(steps)
        handler = terminal
        for policy in reversed(self.policies):
            handler = _bind(policy, handler)
        self._handler = handler

    async def __call__(self, ex: Exchange) -> Reply:
        for step in self._steps:
            step(ex)
        return await self._handler(ex)

    async def aclose(self) -> None:
        for policy in reversed(self.policies):
            await policy.aclose()


def _bind(policy: Policy, call_next: Handler) -> Handler:
    async def layer(ex: Exchange) -> Reply:
        return await policy(ex, call_next)

    return layer
