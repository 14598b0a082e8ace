"""The batch span processor of the OTLP path: the SDK's `BatchSpanProcessor` behaviour and its
`OTEL_BSP_*` settings, but a request's spans are queued in one call (the SDK's `on_end` costs
~2 us per span) and they stay `SpanRecord`s, which the OTLP encoder reads directly.

Spans the policies start through `ctx.tracer` arrive through `on_end` as usual.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping, Sequence

from opentelemetry.context import (
    _SUPPRESS_INSTRUMENTATION_KEY,
    Context,
    attach,
    detach,
    set_value,
)
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from proxy.telemetry.otlp import RecordExporter
from proxy.telemetry.recorder import SpanRecord

log = logging.getLogger("proxy.telemetry")

# The SDK's defaults (OpenTelemetry specification, batching span processor).
_DEFAULTS = {"OTEL_BSP_SCHEDULE_DELAY": 5000, "OTEL_BSP_MAX_QUEUE_SIZE": 2048,
             "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": 512}


def _setting(env: Mapping[str, str], name: str) -> int:
    default = _DEFAULTS[name]
    raw = env.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        log.warning("%s=%r is not an integer; using %s", name, raw, default)
        return default


class SpanBatcher(SpanProcessor):
    """Queues finished spans and exports them in batches from a thread of its own: a batch as
    soon as one is full, everything queued every schedule delay. When the queue is full the
    oldest spans are dropped, never the request."""

    def __init__(self, exporter: RecordExporter, env: Mapping[str, str]) -> None:
        self.exporter = exporter
        self._delay = _setting(env, "OTEL_BSP_SCHEDULE_DELAY") / 1000
        capacity = _setting(env, "OTEL_BSP_MAX_QUEUE_SIZE")
        self._batch = _setting(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
        if capacity <= 0 or self._delay <= 0 or not 0 < self._batch <= capacity:
            raise ValueError("OTEL_BSP_*: the delay, queue and batch sizes must be positive and "
                             "the batch no larger than the queue")
        self._queue: deque[SpanRecord | ReadableSpan] = deque(maxlen=capacity)
        self._wake = threading.Event()
        self._export_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="sidecar-span-export", daemon=True)
        self._thread.start()

    def add(self, spans: Sequence[SpanRecord | ReadableSpan]) -> None:
        """One request's spans (the recorder's sink)."""
        queue = self._queue
        queue.extend(spans)
        if len(queue) >= self._batch and not self._wake.is_set():
            self._wake.set()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is not None and context.trace_flags.sampled and not self._stopped:
            self.add((span,))

    def _run(self) -> None:
        while not self._stopped:
            woken = self._wake.wait(self._delay)
            self._wake.clear()
            if self._stopped:
                break
            self._export(everything=not woken)
        self._export(everything=True)

    def _export(self, everything: bool) -> None:
        """Full batches, and with `everything` the rest too."""
        with self._export_lock:
            queue = self._queue
            while queue and (everything or len(queue) >= self._batch):
                batch = [queue.popleft() for _ in range(min(self._batch, len(queue)))]
                # The exporter's own HTTP/gRPC calls must not be traced by instrumentation.
                token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
                try:
                    self.exporter.export(batch)
                except Exception:
                    log.exception("span export failed")
                finally:
                    detach(token)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._stopped:
            return False
        self._export(everything=True)
        return True

    def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        self._thread.join(30.0)  # as the SDK's processor: a hung export does not hang shutdown
        self.exporter.shutdown()
