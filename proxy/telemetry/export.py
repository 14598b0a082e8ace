"""Exporting without hurting requests: exporters that never raise and report their health, one
log line per outage instead of one per retry, and the thread that pushes metrics periodically.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from proxy.telemetry.otlp import RecordExporter
from proxy.telemetry.recorder import SpanRecord

log = logging.getLogger("proxy.telemetry")

# The OTLP exporters log every retry and every failed batch; these loggers are quieted while an
# app runs and `ExportLog` says it once instead.
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
)
_QUEUE_LOGGER = "opentelemetry.sdk._shared_internal"


class ExportLog(logging.Filter):
    """Turns an exporter's stream of retries and failures into one warning per outage, and one
    line when it recovers. As a filter it swallows the records our exporters log while they run
    (known by a thread-local mark, so another app's records pass), keeping the last as the reason."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.reason = ""
        self._failing: set[str] = set()
        self._lock = threading.Lock()
        self._next_probe = 0.0
        self._trouble = False
        self._queue_level = logging.NOTSET
        self._exporting = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        signal = getattr(self._exporting, "signal", None)
        if signal is None:
            return True
        self.reason = record.getMessage()[:300]
        if signal == "traces":
            self._trouble = True  # retrying: stop queueing spans before the export gives up
        return False

    def exporting(self, signal: str | None) -> None:
        """Mark (or with None unmark) this thread as running one of our exports."""
        self._exporting.signal = signal

    @property
    def failing(self) -> bool:
        return bool(self._failing) or bool(self.reason)

    def result(self, signal: str, ok: bool) -> None:
        with self._lock:
            if ok and signal == "traces":
                self._trouble = False
            if ok and signal in self._failing:
                self._failing.discard(signal)
                self.reason = ""
                log.info("OpenTelemetry %s export to %s recovered", signal, self.target)
            elif not ok and signal not in self._failing:
                self._failing.add(signal)
                log.warning("OpenTelemetry %s export to %s failed (%s); requests are unaffected "
                            "and further failures are not logged until it recovers",
                            signal, self.target, self.reason or "no reason given")

    def admit_spans(self) -> bool:
        """While span export fails, spans are dropped at the source (no queue to fill), except
        one request's worth a second, so the exporter notices when the collector is back."""
        if not self._trouble and "traces" not in self._failing:
            return True
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + 1.0
        return True

    def attach(self) -> None:
        for name in _EXPORTER_LOGGERS:
            logging.getLogger(name).addFilter(self)
        # "Queue full, dropping span" would build a log record per span; the filter drops them
        # anyway, so the level spares building them.
        queue = logging.getLogger(_QUEUE_LOGGER)
        self._queue_level = queue.level
        queue.setLevel(logging.CRITICAL)

    def detach(self) -> None:
        for name in _EXPORTER_LOGGERS:
            logging.getLogger(name).removeFilter(self)
        logging.getLogger(_QUEUE_LOGGER).setLevel(self._queue_level)


class _Abandonable:
    """What both guarded exporters share: shutting the inner exporter down once, quietly."""

    _inner: RecordExporter | MetricExporter
    _health: ExportLog
    _abandoned: bool

    def abandon(self) -> None:
        if not self._abandoned:
            self._abandoned = True
            self._health.exporting("shutdown")  # its "already shut down" notes are ours too
            try:
                self._inner.shutdown()
            finally:
                self._health.exporting(None)


class GuardedSpanExporter(_Abandonable):
    """Never raises into the batch processor; reports health to the ExportLog; `abandon()` makes
    a shutdown skip a collector that does not answer instead of retrying until the timeout."""

    _inner: RecordExporter

    def __init__(self, inner: RecordExporter, health: ExportLog) -> None:
        self._inner = inner
        self._health = health
        self._abandoned = False

    def export(self, spans: Sequence[SpanRecord | ReadableSpan]) -> SpanExportResult:
        if self._abandoned:
            return SpanExportResult.FAILURE
        self._health.exporting("traces")
        try:
            ok = self._inner.export(spans) is SpanExportResult.SUCCESS
        except Exception as exc:
            self._health.reason = type(exc).__name__
            ok = False
        finally:
            self._health.exporting(None)
        if not self._abandoned:  # a retry cut short by shutdown is not an outage
            self._health.result("traces", ok)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE


    def shutdown(self) -> None:
        self.abandon()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class GuardedMetricExporter(_Abandonable, MetricExporter):
    """The metric twin of GuardedSpanExporter."""

    _inner: MetricExporter

    def __init__(self, inner: MetricExporter, health: ExportLog) -> None:
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self._inner = inner
        self._health = health
        self._abandoned = False

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        if self._abandoned:
            return MetricExportResult.FAILURE
        self._health.exporting("metrics")
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis)
            ok = result is MetricExportResult.SUCCESS
        except Exception as exc:
            self._health.reason = type(exc).__name__
            ok = False
        finally:
            self._health.exporting(None)
        if not self._abandoned:
            self._health.result("metrics", ok)
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE


    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.abandon()


class MetricPusher:
    """Exports the metrics every interval from a thread of its own, since an export blocks."""

    def __init__(self, collect: Callable[[], MetricsData], exporter: MetricExporter,
                 interval: float, timeout: float) -> None:
        self._collect = collect
        self._exporter = exporter
        self._interval = interval
        self._timeout = timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sidecar-metric-export",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.push()

    def push(self, timeout: float | None = None) -> None:
        seconds = self._timeout if timeout is None else timeout
        try:
            self._exporter.export(self._collect(), timeout_millis=seconds * 1000)
        except Exception:  # a guarded exporter never raises; a console one might
            log.exception("metric export failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self._timeout)
