"""The exact response cache: an identical request (same scope) gets the stored answer, in the
shape it asks for, without an upstream call; identical misses in flight share one call.

Parts live in `proxy.cache` (keys, entries, replay, coalescing, embeddings); this module is the
config schema and the policy that composes them.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from proxy.cache.admin import purge
from proxy.cache.assemble import assemble
from proxy.cache.coalesce import Broadcast, Flight, Flights, adapt_usage, copy_reply
from proxy.cache.directives import Directives, directives
from proxy.cache.embeddings import EmbeddingCache
from proxy.cache.entries import (
    Entry,
    entry_reply,
    pack_entry,
    storable,
    storable_body,
    uncacheable,
    unpack_entry,
    wants_usage,
)
from proxy.cache.keys import (
    THREAD_FROM,
    Scope,
    entry_key,
    namespace_of,
    request_digest,
    request_digest_async,
    scope_id,
)
from proxy.exchange import Endpoint, Exchange, Reply
from proxy.pipeline import Clock, Handler, PolicyContext
from proxy.state.base import KVStore
from proxy.state.kv import MemoryKVStore, NearCachedKVStore, RedisKVStore
from proxy.units import ByteSize, Duration

CacheableEndpoint = Literal["chat.completions", "completions", "responses", "embeddings"]
_SEMANTIC_HIT = "semantic-hit"


def _semantic(reply: Reply) -> bool:
    """A semantic-cache answer (to a similar request): passed on, never stored as this one's."""
    return reply.headers.get("x-sidecar-cache") == _SEMANTIC_HIT


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Serve identical requests from the cache.")
    ttl: Duration = Field(3600.0, description="How long an answer is served from the cache.")
    max_ttl: Duration = Field(
        7 * 86400.0, description="Longest TTL a request may ask for with x-sidecar-cache-ttl.")
    scope: Scope = Field("key", description="Who shares entries: global, key, team or user.")
    max_bytes: ByteSize = Field(256 << 20, description="Memory backend: bytes the entries may use.")
    max_entries: int = Field(100_000, ge=1, description="Memory backend: most entries kept.")
    version: int = Field(1, ge=0, description="Bump to invalidate every entry at once.")
    coalesce: bool = Field(True, description="Identical misses in flight share one upstream call.")
    near_ttl: Duration = Field(
        1.0, description="Redis: hot entries are also kept in process this long (0: off); "
                         "another replica's purge may take this long to show here.")
    near_max_bytes: ByteSize = Field(32 << 20, description="Redis: bytes of that near cache.")
    lock_timeout: Duration = Field(
        15.0, description="Redis: how long replicas wait for another's answer before calling "
                          "upstream themselves.")
    endpoints: list[CacheableEndpoint] = Field(
        ["chat.completions", "completions", "responses", "embeddings"],
        description="Endpoints whose answers are cached.")


async def create(config: Config, ctx: PolicyContext) -> CachePolicy | None:
    if not config.enabled:
        return None
    store: KVStore
    if ctx.state.redis is None:
        store = MemoryKVStore(config.max_bytes, config.max_entries, ctx.clock.monotonic)
    else:
        store = RedisKVStore(ctx.state.redis, "cache", ctx.clock.monotonic)
        if config.near_ttl > 0:
            near = MemoryKVStore(config.near_max_bytes, config.max_entries, ctx.clock.monotonic)
            store = NearCachedKVStore(near, store, config.near_ttl)
    policy = CachePolicy(config, store, ctx.clock, shared=ctx.state.redis is not None)
    ctx.add_admin_route("DELETE", "cache", policy.purge)
    ctx.add_readiness_check("cache", store.ready)
    return policy


class CachePolicy:
    name = "cache"

    def __init__(self, config: Config, store: KVStore, clock: Clock, *, shared: bool) -> None:
        self.config = config
        self.store = store
        self._clock = clock
        self._shared = shared
        self._flights = Flights(asyncio.get_running_loop())
        self._endpoints = frozenset(Endpoint(e) for e in config.endpoints)
        self._embeddings = EmbeddingCache(store, clock, config.version)
        self._default = Directives(True, config.ttl > 0, config.ttl)

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        if ex.endpoint not in self._endpoints or ex.body is None:
            return await call_next(ex)
        rules = directives(ex.headers, self.config.ttl, self.config.max_ttl, self._default)
        reason = uncacheable(ex.endpoint, ex.body)
        if reason is not None or not (rules.lookup or rules.store):
            ex.reply_headers["x-sidecar-cache"] = "bypass"
            ex.note(self.name, result="bypass", reason=reason or "cache-control")
            return await call_next(ex)
        scope = scope_id(ex.identity, self.config.scope)
        if ex.endpoint is Endpoint.EMBEDDINGS:
            return await self._embeddings(ex, call_next, namespace_of(ex), scope, rules.lookup,
                                          rules.ttl if rules.store else 0.0)
        namespace = namespace_of(ex)
        if len(ex.raw_body) < THREAD_FROM:  # the common case, without a thread hop
            request = request_digest(ex, ex.body, namespace=namespace, scope=scope)
        else:
            request = await request_digest_async(ex, ex.body, namespace=namespace, scope=scope)
        key = entry_key("c", self.config.version, namespace, ex.model or "", scope, request)
        ex.reply_headers["x-sidecar-cache-key"] = request
        if rules.lookup:
            entry = unpack_entry(await self.store.get(key))
            if entry is not None:
                return self._hit(ex, entry)
            if rules.store and self.config.coalesce:
                return await self._join(ex, call_next, key, rules.ttl)
        return await self._direct(ex, call_next, key, rules)

    def _hit(self, ex: Exchange, entry: Entry, want_usage: bool | None = None) -> Reply:
        ex.reply_headers["x-sidecar-cache"] = "hit"
        ex.note(self.name, result="hit")
        if want_usage is None:
            want_usage = wants_usage(ex.body)
        return entry_reply(entry, stream=ex.stream, include_usage=want_usage,
                           now=self._clock.time())

    async def _direct(self, ex: Exchange, call_next: Handler, key: str,
                      rules: Directives) -> Reply:
        """No coalescing: call upstream, and keep a complete answer if the client allows."""
        label = "miss" if rules.lookup and rules.store else "bypass"
        ex.reply_headers["x-sidecar-cache"] = label
        ex.note(self.name, result=label)
        if rules.store and ex.stream:
            ex.needs_usage = True
        reply = await call_next(ex)
        if not rules.store:
            return reply
        if reply.stream is not None and reply.sse:
            endpoint, ttl = ex.endpoint, rules.ttl
            reply.on_complete(lambda frames: self._keep_frames(endpoint, frames, reply, key, ttl))
        elif reply.stream is None:
            await self._keep_json(ex.endpoint, reply, key, rules.ttl)
        return reply

    async def _keep_json(self, endpoint: Endpoint, reply: Reply, key: str,
                         ttl: float) -> Entry | None:
        if (reply.status != 200 or not reply.body or _semantic(reply)
                or not storable_body(endpoint, reply.body)):
            return None
        entry = Entry(endpoint, self._clock.time(), reply.body)
        await self.store.set(key, pack_entry(*entry), ttl)
        return entry

    async def _keep_frames(self, endpoint: Endpoint, frames: list[bytes], reply: Reply, key: str,
                           ttl: float) -> Entry | None:
        payload = None if _semantic(reply) else assemble(endpoint, frames, reply.usage)
        if payload is None or not storable(endpoint, payload):
            return None
        entry = Entry(endpoint, self._clock.time(), orjson.dumps(payload))
        await self.store.set(key, pack_entry(*entry), ttl)
        return entry

    # -- coalescing ---------------------------------------------------------------------------

    async def _join(self, ex: Exchange, call_next: Handler, key: str, ttl: float) -> Reply:
        want = wants_usage(ex.body)  # before the upstream layer asks for usage on our behalf
        flight = self._flights.get(key)
        if flight is None:
            return await self._lead(self._flights.start(key), ex, call_next, key, ttl, want)
        source = await flight.source()
        if source is None:  # the leader left, or was refused on its own account:
            return await self._join(ex, call_next, key, ttl)  # the first one back leads anew
        if isinstance(source, Entry):
            return self._hit(ex, source, want)
        label = _SEMANTIC_HIT if _semantic(source) else "hit"
        ex.reply_headers["x-sidecar-cache"] = label
        ex.note(self.name, result=label, coalesced=True)
        if source.stream is not None:
            if flight.broadcast is None:  # not SSE: cannot be shared
                return await self._direct(ex, call_next, key, Directives(True, True, ttl))
            if ex.stream:
                return self._subscribe(ex, flight, flight.broadcast, label, want)
        elif not (source.ok and ex.stream):
            return copy_reply(source, label if source.ok else "miss")
        entry = await asyncio.shield(flight.entry)  # a JSON caller of a stream, or the reverse
        if entry is not None:
            return self._hit(ex, entry, want)
        return await self._direct(ex, call_next, key, Directives(True, True, ttl))

    async def _lead(self, flight: Flight, ex: Exchange, call_next: Handler, key: str, ttl: float,
                    want: bool) -> Reply:
        flight.usage_shown = want
        token = ""
        try:
            if self._shared:
                waited, token = await self._wait_for_replica(key)
                if waited is not None:
                    flight.deliver(waited)
                    flight.settle(waited)
                    return self._hit(ex, waited, want)
            if ex.stream:
                ex.needs_usage = True
            reply = await call_next(ex)
        except BaseException as exc:
            flight.fail(exc)
            if token:
                await self._unlock(key, token)
            raise
        label = _SEMANTIC_HIT if _semantic(reply) else "miss"
        ex.reply_headers["x-sidecar-cache"] = label
        ex.note(self.name, result=label)
        if reply.stream is not None and reply.sse:
            flight.broadcast = Broadcast(
                reply, lambda b: self._stream_ended(flight, b, ex.endpoint, key, ttl, token))
            flight.deliver(reply)
            return self._subscribe(ex, flight, flight.broadcast, label, want)
        flight.deliver(reply)
        try:
            flight.settle(await self._keep_json(ex.endpoint, reply, key, ttl)
                          if reply.stream is None else None)
        finally:
            flight.settle(None)
            if token:
                await self._unlock(key, token)
        return reply

    async def _stream_ended(self, flight: Flight, broadcast: Broadcast, endpoint: Endpoint,
                            key: str, ttl: float, token: str) -> None:
        try:
            if broadcast.source.outcome == "complete":
                flight.settle(await self._keep_frames(endpoint, broadcast.frames,
                                                      broadcast.source, key, ttl))
        finally:
            flight.settle(None)
            await self._unlock(key, token)

    def _subscribe(self, ex: Exchange, flight: Flight, broadcast: Broadcast, label: str,
                   want: bool) -> Reply:
        """A caller's own view of a shared stream (its usage chunk as it asked, for chat and
        completions; Responses carry usage in `response.completed` for everyone)."""
        source = broadcast.source
        reply = Reply(source.status, {**source.headers, "x-sidecar-cache": label}, sse=True)
        frames = broadcast.subscribe(reply)
        if ex.endpoint is not Endpoint.RESPONSES and want != flight.usage_shown:
            frames = adapt_usage(frames, source, flight.usage_shown, want)
        reply.stream = frames
        reply.outcome = "pending"
        return reply

    async def _wait_for_replica(self, key: str) -> tuple[Entry | None, str]:
        """Across replicas: take the key's lock, or wait (bounded) for the holder's entry.

        Returns the entry another replica stored, or None and our lock token ("" = no lock).
        """
        lock = "l" + key[1:]
        token = await self.store.lock(lock, self.config.lock_timeout)
        delay, waited = 0.02, 0.0
        while token is None and waited < self.config.lock_timeout:
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.25)
            entry = unpack_entry(await self.store.get(key))
            if entry is not None:
                return entry, ""
            token = await self.store.lock(lock, self.config.lock_timeout)
        return None, token or ""

    async def _unlock(self, key: str, token: str) -> None:
        if token:
            await self.store.unlock("l" + key[1:], token)

    async def purge(self, request: web.Request) -> web.Response:
        """`DELETE /admin/cache[?namespace=&model=&key=]` (see `proxy.cache.admin`)."""
        return await purge(self.store, request)

    async def aclose(self) -> None:
        await self._flights.aclose()
        await self.store.aclose()
