"""The innermost handler: route by model, balance a pool, retry, fall back, respect breakers.

Candidates for a request are its pool's upstreams (the balancer's choice first), then the primary's
`fallbacks` in order. Each candidate gets `retries` more attempts for safe failures, with full-jitter
backoff or the upstream's own Retry-After (capped by `max_retry_wait`). A stream is committed once
its first event is read; after that nothing is retried. Budget and limit reservations live outside
this handler, so they are held across attempts and settled once.
"""

from __future__ import annotations

import asyncio
import fnmatch
import math
import random
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing

from proxy.errors import SidecarError, UpstreamError, UpstreamProtocolError, UpstreamUnavailable
from proxy.exchange import Exchange, Reply
from proxy.pipeline import Clock
from proxy.routing.balancer import Balancer, UpstreamLoad
from proxy.routing.breaker import CircuitBreaker
from proxy.routing.retry import (
    backoff,
    counts_against_breaker,
    failure_kind,
    retry_after,
    retryable,
)
from proxy.settings import FallbackTarget, Settings, UpstreamConfig
from proxy.upstream import UpstreamClient

Result = Reply | UpstreamError
Candidates = tuple[tuple[UpstreamConfig, str | None], ...]  # (upstream, model override)
Sleep = Callable[[float], Awaitable[None]]


class Router:
    def __init__(self, settings: Settings, client: UpstreamClient, clock: Clock,
                 rng: random.Random | None = None, sleep: Sleep = asyncio.sleep) -> None:
        self.settings = settings
        self.client = client
        self.clock = clock
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.balancer = Balancer(settings.routing.strategy, self.rng,
                                 [u.name for u in settings.upstreams])
        self.breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._routes = [(re.compile("|".join(fnmatch.translate(g) for g in u.models)), u)
                        for u in settings.upstreams]
        by_name = {u.name: u for u in settings.upstreams}
        # Resolved once: each upstream's pool members and its fallback targets.
        self._pools = {u.name: tuple(m for m in settings.upstreams
                                     if u.pool is not None and m.pool == u.pool) or (u,)
                       for u in settings.upstreams}
        self._fallbacks = {u.name: tuple(_target(by_name, t) for t in u.fallbacks)
                           for u in settings.upstreams}
        # Every candidate list a pool of one or two can give, built once: the healthy path
        # only picks one.
        self._orders: dict[str, tuple[Candidates, ...]] = {}
        self._pairs = {name: self.balancer.loads(pool) for name, pool in self._pools.items()
                       if len(pool) == 2}
        for name, pool in self._pools.items():
            fallbacks = self._fallbacks[name]
            orders = [pool] if len(pool) == 1 else [pool, pool[::-1]] if len(pool) == 2 else []
            self._orders[name] = tuple(tuple((u, None) for u in order) + fallbacks
                                       for order in orders)

    def route(self, model: str | None) -> UpstreamConfig:
        """The first upstream whose model globs match (the first upstream when there is no model)."""
        for pattern, upstream in self._routes:
            if model is None or pattern.match(model):
                return upstream
        raise SidecarError(f"No upstream is configured for model '{model}'.", status=404,
                           type="invalid_request_error", param="model", code="model_not_found")

    def breaker(self, upstream: UpstreamConfig, model: str | None) -> CircuitBreaker:
        key = (upstream.name, model or "")
        found = self.breakers.get(key)
        if found is None:
            found = self.breakers[key] = CircuitBreaker(upstream.breaker)
        return found

    def candidates(self, primary: UpstreamConfig) -> Candidates:
        """Where to try a request for `primary`, in order: its pool, then its fallbacks."""
        orders = self._orders[primary.name]
        if len(orders) == 1:
            return orders[0]
        pool = self._pools[primary.name]
        if orders:
            return orders[self.balancer.first_of_two(pool, self._pairs[primary.name],
                                                     self.clock.monotonic)]
        return tuple((u, None) for u in self.balancer.order(pool, self.clock.monotonic())) + \
            self._fallbacks[primary.name]

    async def __call__(self, ex: Exchange) -> Reply:
        primary = ex.upstream or self.route(ex.model)
        attempts = 0
        last: Result | None = None
        cooldown: float | None = None
        for upstream, model in self.candidates(primary):
            breaker = self.breaker(upstream, model or ex.model)
            now = self.clock.monotonic()
            if not breaker.allow(now):
                wait = breaker.retry_in(now)
                cooldown = wait if cooldown is None else min(cooldown, wait)
                continue
            result, used, kind = await self._attempts(ex, upstream, model, breaker)
            attempts += used
            if kind is None and isinstance(result, Reply):
                result.headers["x-sidecar-attempts"] = str(attempts)
                return result
            last = result
            if kind not in primary.fallback_on:
                break
        return self._give_up(primary, last, attempts, cooldown)

    def _give_up(self, primary: UpstreamConfig, last: Result | None, attempts: int,
                 cooldown: float | None) -> Reply:
        if last is None:
            raise UpstreamUnavailable(
                f"upstream '{primary.name}' is failing and its circuit is open; retry later",
                headers={"Retry-After": str(math.ceil(cooldown or 1)),
                         "x-sidecar-attempts": "0"})
        if isinstance(last, UpstreamError):
            last.headers["x-sidecar-attempts"] = str(attempts)
            raise last
        last.headers["x-sidecar-attempts"] = str(attempts)
        return last

    async def _attempts(self, ex: Exchange, upstream: UpstreamConfig, model: str | None,
                        breaker: CircuitBreaker) -> tuple[Result, int, str | None]:
        """Attempts at one upstream: the last result, how many were made, and its failure kind."""
        for attempt in range(upstream.retries + 1):
            result = await self._attempt(ex, upstream, model)
            kind = failure_kind(result)
            now = self.clock.monotonic()
            if kind is None:
                breaker.record(True, now)
                return result, attempt + 1, None
            if counts_against_breaker(kind):
                breaker.record(False, now)
            else:
                breaker.probing = False
            hinted = retry_after(result.headers, self.clock.time())
            if kind == "429" and hinted:
                self.balancer.of(upstream.name).backed_off_until = now + hinted
            last_try = attempt == upstream.retries or not retryable(result)
            if last_try or not breaker.allow(now):
                return result, attempt + 1, kind
            await _discard(result)
            delay = min(hinted, upstream.max_retry_wait) if hinted is not None else backoff(
                attempt, self.settings.routing.backoff_base, self.settings.routing.backoff_max,
                self.rng)
            await self.sleep(delay)
        raise AssertionError("unreachable")

    async def _attempt(self, ex: Exchange, upstream: UpstreamConfig, model: str | None) -> Result:
        load = self.balancer.of(upstream.name)
        load.in_flight += 1
        started = self.clock.monotonic()
        try:
            reply = await self.client.send(ex, upstream, model)
            if reply.stream is not None and reply.sse:
                await _commit_first_event(upstream, reply)
        except UpstreamError as exc:
            load.in_flight -= 1
            return exc
        except BaseException:
            load.in_flight -= 1
            raise
        load.observe_latency(self.clock.monotonic() - started)
        if reply.stream is None:
            load.in_flight -= 1
        else:
            reply.on_end(lambda _: _release(load))
        return reply


def _target(by_name: dict[str, UpstreamConfig], target: str | FallbackTarget
            ) -> tuple[UpstreamConfig, str | None]:
    if isinstance(target, str):
        return by_name[target], None
    return by_name[target.upstream], target.model


async def _release(load: UpstreamLoad) -> None:
    load.in_flight -= 1


async def _commit_first_event(upstream: UpstreamConfig, reply: Reply) -> None:
    """Read a stream's first event before answering, so a stream that fails at once can be retried.

    Raises UpstreamProtocolError when the stream broke before its first good event.
    """
    assert reply.stream is not None
    stream = reply.stream
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = b""
    if reply.outcome == "error" or not first:
        await stream.aclose()
        raise UpstreamProtocolError(
            f"upstream '{upstream.name}' closed the stream before its first event")
    reply.stream = _prepend(first, stream)


async def _prepend(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    async with aclosing(rest) as frames:
        yield first
        async for frame in frames:
            yield frame


async def _discard(result: Result) -> None:
    if isinstance(result, Reply) and result.stream is not None:
        await result.stream.aclose()
