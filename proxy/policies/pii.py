"""`[pii]`: redacts PII in everything the upstream reads, before cache, logs and spans see it,
and puts pseudonymized values back into answers (JSON bodies and streams alike).

Fail-closed: if detection raises, the request is refused (500) and never forwarded unredacted.
Only counts per entity type leave this module (span attributes and a metric), never values.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing
from typing import Any

import orjson
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

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
        # Totals per (entity, direction), read by the meter when it collects: a synchronous
        # counter's `add` costs the SDK several microseconds per call, on every request.
        self._totals: dict[tuple[str, str], int] = {}
        self._notes: dict[tuple[str, str], str] = {}
        meter.create_observable_counter(
            "sidecar.pii.detections", callbacks=[self._observe], unit="{entity}",
            description="PII values found, by entity type and direction (request / response).")

    async def aclose(self) -> None:
        return None

    async def __call__(self, ex: Exchange, call_next: Handler) -> Reply:
        body = ex.body
        if body is None or str(ex.endpoint) not in REQUEST_WALKERS:
            return await call_next(ex)
        redaction = Redaction(self._engine)
        if len(ex.raw_body) > _THREAD_ABOVE:
            changed = await asyncio.to_thread(self._redact, ex, body, redaction)
        else:
            changed = self._redact(ex, body, redaction)
        self._record(ex, redaction.counts, "request")
        if redaction.blocked:
            kinds = ", ".join(sorted(redaction.blocked))
            raise PiiDetected(f"The request contains personal data or secrets ({kinds}) "
                              "that this gateway does not forward.")
        if changed:
            ex.replace_body(body)
        reply = await call_next(ex)
        scan = self._engine.responses
        if not reply.ok or (not scan and not len(redaction.pseudonyms)):
            return reply
        if reply.stream is not None:
            if reply.sse:
                reply.stream = self._rewrite(ex, reply.stream, redaction, scan)
            return reply
        if len(reply.body or b"") > _THREAD_ABOVE:
            await asyncio.to_thread(self._answer, ex, reply, redaction)
        else:
            self._answer(ex, reply, redaction)
        self._record(ex, redaction.output_counts, "response")
        return reply

    @staticmethod
    def _redact(ex: Exchange, body: dict[str, Any], redaction: Redaction) -> bool:
        try:
            return redact_request(ex.endpoint, body, redaction)
        except Exception:
            # `from None`: the original error may quote the text being scanned.
            raise PolicyFailure("PII detection failed, so the request was not forwarded.",
                                code="pii_detection_failed") from None

    def _answer(self, ex: Exchange, reply: Reply, redaction: Redaction) -> None:
        """A JSON answer: new PII redacted (if configured) and pseudonyms restored, in place."""
        payload = reply.json()
        if isinstance(payload, dict):
            try:
                changed = restore_response(ex.endpoint, payload, redaction,
                                           self._engine.responses)
            except Exception:
                # Fail closed here too: an answer that could not be scanned is not returned.
                raise PolicyFailure("PII scanning of the answer failed.",
                                    code="pii_detection_failed") from None
            if changed:
                reply.replace_json(payload)

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

    def _record(self, ex: Exchange, counts: dict[str, int], direction: str) -> None:
        """Counts into the metric and the span notes (on the event loop's thread only)."""
        if not counts:
            return
        totals, names = self._totals, self._notes
        notes: dict[str, int] = {}
        for entity, count in counts.items():
            key = (entity, direction)
            totals[key] = totals.get(key, 0) + count
            name = names.get(key)
            if name is None:
                name = names[key] = f"pii.{direction}.{entity}"
            notes[name] = count
        notes[f"pii.{direction}.total"] = sum(counts.values())
        ex.note("pii", **notes)

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        # May run on the exporter's thread: copy first (one C call, atomic under the GIL).
        return [Observation(total, {"entity": entity, "direction": direction})
                for (entity, direction), total in list(self._totals.items())]


def _payload(data: bytes | None) -> dict[str, Any] | None:
    if data is None or data == b"[DONE]":
        return None
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None
