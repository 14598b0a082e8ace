"""The tracing layer around stand-in policies: answers without an upstream (cache hit, 429, PII
block), decisions turned into spans, and metrics a policy records itself not counted twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from proxy.errors import PiiDetected, RateLimited
from proxy.exchange import Endpoint, Exchange, Reply
from proxy.pipeline import Handler, Pipeline, PolicyContext
from proxy.settings import Settings, StateConfig, UpstreamConfig
from proxy.state import StateBackend
from proxy.telemetry.policy import TracingConfig, TracingPolicy, create
from proxy.telemetry.setup import Providers
from proxy.tokens import TokenCounter
from tests.telemetry.helpers import CALLER_TRACE, TRACEPARENT

UPSTREAM = UpstreamConfig(name="primary", base_url="https://llm.internal:8443/v1",
                          provider="azure.ai.openai")
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 9, "completion_tokens": 2,
                    "prompt_tokens_details": {"cached_tokens": 4},
                    "completion_tokens_details": {"reasoning_tokens": 1}}}


class Stack:
    """The tracing policy in front of `inner` policies and a fake upstream."""

    def __init__(self, ctx: PolicyContext, tracing: TracingPolicy, pipeline: Pipeline,
                 upstream_calls: list[Exchange]) -> None:
        self.ctx, self.tracing, self.pipeline = ctx, tracing, pipeline
        self.upstream_calls = upstream_calls

    @property
    def providers(self) -> Providers:
        found = self.ctx.extras["telemetry"]
        assert isinstance(found, Providers)
        return found

    def spans(self) -> list[ReadableSpan]:
        assert self.providers.spans is not None
        return list(self.providers.spans.get_finished_spans())

    def metric(self, name: str) -> list[Any]:
        data = self.providers.metrics_data()
        return [p for r in data.resource_metrics for s in r.scope_metrics
                for m in s.metrics if m.name == name for p in m.data.data_points]


async def _upstream_json(ex: Exchange) -> Reply:
    return Reply.from_json(200, ANSWER, {"x-sidecar-upstream": "primary"})


async def stack(tmp_path: Any, *inner: Any, config: TracingConfig | None = None,
                upstream: Handler = _upstream_json) -> Stack:
    settings = Settings(upstreams=[UPSTREAM], state=StateConfig(data_dir=str(tmp_path)))
    ctx = PolicyContext(settings=settings, state=StateBackend.open(settings.state),
                        tokens=TokenCounter())
    tracing = await create(config or TracingConfig(exporter="memory"), ctx)
    assert tracing is not None
    built = [policy(ctx) for policy in inner]
    calls: list[Exchange] = []

    async def terminal(ex: Exchange) -> Reply:
        calls.append(ex)
        return await upstream(ex)

    return Stack(ctx, tracing, Pipeline([tracing, *built], ctx.terminal(terminal)), calls)


def exchange(body: dict[str, Any] | None = None, traceparent: str | None = TRACEPARENT,
             endpoint: Endpoint = Endpoint.CHAT, path: str = "/v1/chat/completions",
             team: str | None = None) -> Exchange:
    body = body if body is not None else {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "secret plans"}]}
    headers: CIMultiDict[str] = CIMultiDict()
    if traceparent:
        headers["traceparent"] = traceparent
    if team:
        headers["x-sidecar-team"] = team
    return Exchange(request_id="req-1", endpoint=endpoint, method="POST", path=path, query="",
                    headers=CIMultiDictProxy(headers), client_ip="127.0.0.1",
                    raw_body=orjson.dumps(body), body=body, model=body.get("model"),
                    stream=body.get("stream") is True, upstream=UPSTREAM)


class CacheHit:
    name = "cache"

    def __init__(self, ctx: PolicyContext) -> None:
        pass

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        ex.note("cache", status="hit", similarity=1.0, namespace=None)
        return Reply.from_json(200, ANSWER, {"x-sidecar-cache": "hit"})

    async def aclose(self) -> None:
        return None


class Limiter:
    name = "limits"

    def __init__(self, ctx: PolicyContext) -> None:
        pass

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        ex.note("limits", decision="refused", rule="per-key", kind="requests")
        raise RateLimited("Rate limit reached for rule 'per-key'.", headers={"Retry-After": "3"})

    async def aclose(self) -> None:
        return None


class Blocker:
    name = "pii"

    def __init__(self, ctx: PolicyContext) -> None:
        pass

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        ex.note("pii", **{"pii.request.email": 2, "pii.request.total": 2})
        raise PiiDetected("The request contains personal data (email).")

    async def aclose(self) -> None:
        return None


class CountingCache:
    """A cache that records `sidecar.cache.lookups` itself, as a policy may."""

    name = "cache"

    def __init__(self, ctx: PolicyContext) -> None:
        self.lookups = ctx.meter.create_counter("sidecar.cache.lookups")

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        self.lookups.add(1, {"result": "miss", "by": "policy"})
        reply = await call_next(ex)
        ex.note("cache", status="miss")
        reply.headers["x-sidecar-cache"] = "miss"
        return reply

    async def aclose(self) -> None:
        return None


def _by_kind(spans: list[ReadableSpan]) -> dict[SpanKind, list[ReadableSpan]]:
    out: dict[SpanKind, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(span.kind, []).append(span)
    return out


async def test_cache_hit_is_traced_without_an_upstream_span(tmp_path: Any) -> None:
    s = await stack(tmp_path, CacheHit)
    reply = await s.pipeline(exchange())
    assert reply.status == 200 and s.upstream_calls == []
    kinds = _by_kind(s.spans())
    assert SpanKind.CLIENT not in kinds
    (server,) = kinds[SpanKind.SERVER]
    (decision,) = kinds[SpanKind.INTERNAL]
    assert f"{server.context.trace_id:032x}" == CALLER_TRACE
    assert decision.name == "policy cache"
    assert decision.parent is not None and decision.parent.span_id == server.context.span_id
    assert dict(decision.attributes or {}) == {"sidecar.cache.status": "hit",
                                               "sidecar.cache.similarity": 1.0}
    assert (server.attributes or {})["sidecar.cache"] == "hit"
    lookups = s.metric("sidecar.cache.lookups")
    assert [(dict(p.attributes), p.value) for p in lookups] == [({"result": "hit"}, 1)]
    assert s.metric("gen_ai.client.operation.duration") == []
    await s.pipeline.aclose()


async def test_rate_limited_request_is_traced_and_counted(tmp_path: Any) -> None:
    s = await stack(tmp_path, Limiter)
    with pytest.raises(RateLimited):
        await s.pipeline(exchange())
    kinds = _by_kind(s.spans())
    assert SpanKind.CLIENT not in kinds
    (server,) = kinds[SpanKind.SERVER]
    attributes = dict(server.attributes or {})
    assert attributes["http.response.status_code"] == 429
    assert attributes["error.type"] == "rate_limit_exceeded"
    assert server.status.status_code is not StatusCode.ERROR  # a 4xx is the client's error
    (decision,) = kinds[SpanKind.INTERNAL]
    assert (decision.attributes or {})["sidecar.limits.rule"] == "per-key"
    refusals = s.metric("sidecar.ratelimit.refusals")
    assert [(dict(p.attributes), p.value) for p in refusals] == [
        ({"kind": "requests", "limit": "per-key"}, 1)]
    await s.pipeline.aclose()


async def test_blocked_request_carries_pii_counts_not_values(tmp_path: Any) -> None:
    s = await stack(tmp_path, Blocker)
    with pytest.raises(PiiDetected):
        await s.pipeline(exchange())
    kinds = _by_kind(s.spans())
    (server,) = kinds[SpanKind.SERVER]
    assert (server.attributes or {})["error.type"] == "pii_detected"
    (decision,) = kinds[SpanKind.INTERNAL]
    assert dict(decision.attributes or {}) == {"sidecar.pii.request.email": 2,
                                               "sidecar.pii.request.total": 2}
    await s.pipeline.aclose()


async def test_upstream_call_attributes_and_metrics(tmp_path: Any) -> None:
    s = await stack(tmp_path)
    await s.pipeline(exchange())
    (ex,) = s.upstream_calls
    kinds = _by_kind(s.spans())
    (client,) = kinds[SpanKind.CLIENT]
    assert ex.upstream_headers["traceparent"].split("-")[2] == f"{client.context.span_id:016x}"
    got = dict(client.attributes or {})
    assert got["gen_ai.provider.name"] == "azure.ai.openai"
    assert (got["server.address"], got["server.port"]) == ("llm.internal", 8443)
    assert got["gen_ai.response.model"] == "gpt-4o-mini-2024"
    assert got["gen_ai.usage.cache_read.input_tokens"] == 4
    assert got["gen_ai.usage.reasoning.output_tokens"] == 1
    tokens = {dict(p.attributes)["gen_ai.token.type"]: p.sum
              for p in s.metric("gen_ai.client.token.usage")}
    assert tokens == {"input": 9, "output": 2}
    await s.pipeline.aclose()


async def test_a_policys_own_metric_is_not_counted_twice(tmp_path: Any) -> None:
    s = await stack(tmp_path, CountingCache)
    await s.pipeline(exchange())
    lookups = s.metric("sidecar.cache.lookups")
    assert [(dict(p.attributes), p.value) for p in lookups] == [
        ({"result": "miss", "by": "policy"}, 1)]
    await s.pipeline.aclose()


async def test_decisions_made_on_the_way_in_are_dated_before_the_upstream(tmp_path: Any) -> None:
    class Admit:
        name = "limits"

        def __init__(self, ctx: PolicyContext) -> None:
            pass

        async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
            ex.note("limits", decision="admitted")
            reply = await call_next(ex)
            ex.note("budget", cost_usd=0.002)
            return reply

        async def aclose(self) -> None:
            return None

    s = await stack(tmp_path, Admit)
    await s.pipeline(exchange())
    found = {span.name: span for span in s.spans()}
    client, limits, budget = found["chat gpt-4o-mini"], found["policy limits"], found["policy budget"]
    assert limits.start_time is not None and client.start_time is not None
    assert budget.start_time is not None and client.end_time is not None
    assert limits.start_time <= client.start_time
    assert budget.start_time >= client.end_time
    assert (budget.attributes or {})["sidecar.budget.cost_usd"] == 0.002
    await s.pipeline.aclose()


async def test_content_is_off_by_default_and_input_is_what_was_sent(tmp_path: Any) -> None:
    class Redact:
        name = "pii"

        def __init__(self, ctx: PolicyContext) -> None:
            pass

        async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
            assert ex.body is not None
            ex.replace_body({**ex.body, "messages": [{"role": "user", "content": "<REDACTED>"}]})
            return await call_next(ex)

        async def aclose(self) -> None:
            return None

    quiet = await stack(tmp_path, Redact)
    await quiet.pipeline(exchange())
    assert not any("secret plans" in str(v) or "REDACTED" in str(v)
                   for span in quiet.spans() for v in (span.attributes or {}).values())
    await quiet.pipeline.aclose()
    loud = await stack(tmp_path, Redact,
                       config=TracingConfig(exporter="memory", capture_content=True))
    await loud.pipeline(exchange())
    (client,) = _by_kind(loud.spans())[SpanKind.CLIENT]
    sent = (client.attributes or {})["gen_ai.input.messages"]
    assert "<REDACTED>" in str(sent) and "secret plans" not in str(sent)
    assert "hi" in str((client.attributes or {})["gen_ai.output.messages"])
    await loud.pipeline.aclose()


async def test_stream_end_closes_every_span(tmp_path: Any) -> None:
    async def frames() -> AsyncIterator[bytes]:
        yield b'data: {"id":"c1","model":"m1","choices":[{"delta":{"content":"a"}}]}\n\n'
        yield b'data: {"id":"c1","model":"m1","choices":[{"delta":{},"finish_reason":"length"}]}\n\n'
        yield b"data: [DONE]\n\n"

    async def streaming(ex: Exchange) -> Reply:
        reply = Reply(200, {}, stream=frames(), sse=True)  # type: ignore[arg-type]
        return reply

    s = await stack(tmp_path, upstream=streaming)
    reply = await s.pipeline(exchange({"model": "gpt-4o-mini", "stream": True,
                                       "messages": [{"role": "user", "content": "x"}]}))
    assert s.spans() == []  # nothing ends before the stream does
    assert reply.stream is not None
    got = [frame async for frame in reply.stream]
    assert len(got) == 3
    (client,) = _by_kind(s.spans())[SpanKind.CLIENT]
    assert list((client.attributes or {})["gen_ai.response.finish_reasons"]) == ["length"]
    assert (client.attributes or {})["gen_ai.response.id"] == "c1"
    await s.pipeline.aclose()


class OwnSpans:
    """A policy tracing its own work with `ctx.tracer`, as a context manager, a plain span and a
    decorator."""

    name = "own"

    def __init__(self, ctx: PolicyContext) -> None:
        self.tracer = ctx.tracer
        self.lookup = self.tracer.start_as_current_span("own lookup")(self._lookup)

    async def _lookup(self) -> None:
        return None

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        await self.lookup()
        self.tracer.start_span("own check").end()
        with self.tracer.start_as_current_span("own call"):
            self.tracer.start_span("own inner").end()
            return await call_next(ex)

    async def aclose(self) -> None:
        return None


async def test_spans_of_policies_are_children_of_the_server_span(tmp_path: Any) -> None:
    s = await stack(tmp_path, OwnSpans)
    await s.pipeline(exchange())
    await s.pipeline(exchange(traceparent=None))
    spans = s.spans()
    for server in _by_kind(spans)[SpanKind.SERVER]:
        trace_id = server.context.trace_id
        own = {span.name: span for span in spans if span.context.trace_id == trace_id
               and span.name.startswith("own")}
        assert sorted(own) == ["own call", "own check", "own inner", "own lookup"]
        for name in ("own call", "own check", "own lookup"):
            parent = own[name].parent
            assert parent is not None and parent.span_id == server.context.span_id, name
        inner_parent = own["own inner"].parent
        assert inner_parent is not None
        assert inner_parent.span_id == own["own call"].context.span_id
    await s.pipeline.aclose()


async def test_team_is_recorded_without_an_identity_layer(tmp_path: Any) -> None:
    s = await stack(tmp_path)
    await s.pipeline(exchange(team="search"))
    (server,) = _by_kind(s.spans())[SpanKind.SERVER]
    assert (server.attributes or {})["sidecar.team"] == "search"
    await s.pipeline.aclose()
