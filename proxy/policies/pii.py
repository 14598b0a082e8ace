"""`[pii]`: redacts PII in everything the upstream reads, before cache, logs and spans see it,
and puts pseudonymized values back into answers (JSON bodies and streams alike).

Fail-closed: if detection raises, the request is refused (500) and never forwarded unredacted.
Only counts per entity type leave this module (span attributes and a metric), never values.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import orjson
from opentelemetry import metrics

from proxy.errors import PiiDetected, PolicyFailure
from proxy.exchange import Exchange, Reply
from proxy.pii.config import PiiConfig
from proxy.pii.engine import PiiEngine, Redaction, compile_engine
from proxy.pii.fields import REQUEST_WALKERS, redact_request, restore_response
from proxy.pii.streams import ChatStream, ResponsesStream
from proxy.pipeline import Handler, PolicyContext
from proxy.wire.sse import encode, frame_fields

Config = PiiConfig
_THREAD_ABOVE = 64 << 10     # bodies larger than this are scanned off the event loop


async def create(config: PiiConfig, ctx: PolicyContext) -> PiiPolicy | None:
    if not config.enabled:
        return None
    return PiiPolicy(compile_engine(config), ctx.meter)


class PiiPolicy:
    name = "pii"

    def __init__(self, engine: PiiEngine, meter: metrics.Meter) -> None:
        self._engine = engine
        self._detections = meter.create_counter(
            "sidecar.pii.detections", unit="{entity}",
            description="PII values found, by entity type and direction (request / response).")

    async def aclose(self) -> None:
        return None

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        if ex.body is None or str(ex.endpoint) not in REQUEST_WALKERS:
            return await call_next(ex)
        redaction = self._engine.session()
        changed = await self._redact(ex, ex.body, redaction)
        self._record(ex, redaction.counts, "request")
        if redaction.blocked:
            kinds = ", ".join(sorted(redaction.blocked))
            raise PiiDetected(f"The request contains personal data or secrets ({kinds}) "
                              "that this gateway does not forward.")
        if changed:
            ex.replace_body(ex.body)
        reply = await call_next(ex)
        return await self._answer(ex, reply, redaction)

    async def _redact(self, ex: Exchange, body: dict[str, Any], redaction: Redaction) -> bool:
        try:
            if len(ex.raw_body) > _THREAD_ABOVE:
                return await asyncio.to_thread(redact_request, ex.endpoint, body, redaction)
            return redact_request(ex.endpoint, body, redaction)
        except Exception:
            # `from None`: the original error may quote the text being scanned.
            raise PolicyFailure("PII detection failed, so the request was not forwarded.",
                                code="pii_detection_failed") from None

    async def _answer(self, ex: Exchange, reply: Reply, redaction: Redaction) -> Reply:
        scan = self._engine.responses
        if not reply.ok or (not scan and not len(redaction.pseudonyms)):
            return reply
        if reply.stream is not None:
            if reply.sse:
                reply.stream = self._rewrite(ex, reply.stream, redaction, scan)
            return reply
        payload = reply.json()
        if isinstance(payload, dict) and await self._restore(ex, reply, payload, redaction):
            reply.replace_json(payload)
        self._record(ex, redaction.output_counts, "response")
        return reply

    async def _restore(self, ex: Exchange, reply: Reply, payload: dict[str, Any],
                       redaction: Redaction) -> bool:
        scan = self._engine.responses
        try:
            if len(reply.body or b"") > _THREAD_ABOVE:
                return await asyncio.to_thread(restore_response, ex.endpoint, payload,
                                               redaction, scan)
            return restore_response(ex.endpoint, payload, redaction, scan)
        except Exception:
            # Fail closed here too: an answer that could not be scanned is not returned.
            raise PolicyFailure("PII scanning of the answer failed.",
                                code="pii_detection_failed") from None

    async def _rewrite(self, ex: Exchange, frames: AsyncGenerator[bytes, None],
                       redaction: Redaction, scan: bool) -> AsyncGenerator[bytes, None]:
        responses = str(ex.endpoint) == "responses"
        rewriter = ResponsesStream(redaction, scan=scan) if responses else ChatStream(
            redaction, scan=scan)
        try:
            async with aclosing(frames) as inner:
                async for frame in inner:
                    event, data = frame_fields(frame)
                    payload = _payload(data)
                    if payload is None:
                        if data == b"[DONE]":
                            for extra in rewriter.finish():
                                yield encode(extra)
                        yield frame
                        continue
                    out = (rewriter.event(payload) if isinstance(rewriter, ResponsesStream)
                           else rewriter.chunk(payload))
                    for item in out:
                        yield encode(item, event=item.get("type") if event else None)
                for extra in rewriter.finish():
                    yield encode(extra, event=extra.get("type") if responses else None)
        finally:
            self._record(ex, redaction.output_counts, "response")

    def _record(self, ex: Exchange, counts: Counter[str], direction: str) -> None:
        if not counts:
            return
        for entity, count in counts.items():
            self._detections.add(count, {"entity": entity, "direction": direction})
        ex.note("pii", **{f"pii.{direction}.{entity}": n for entity, n in counts.items()},
                **{f"pii.{direction}.total": sum(counts.values())})


def _payload(data: bytes | None) -> dict[str, Any] | None:
    if data is None or data == b"[DONE]":
        return None
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None
