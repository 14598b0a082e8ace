"""The sidecar's metrics: the GenAI client metrics with the convention's buckets and the sidecar's
own counters, kept in light cumulative stores, plus the meter the policies get.

Recording is a dict lookup and a few additions (the SDK's instruments cost ~10 us per measurement,
too much for every request); a snapshot turns the stores into the SDK's export data, merged with
whatever the policies record through `ctx.meter`, for OTLP and /metrics alike. A `sidecar.*`
metric a policy creates itself is that policy's; telemetry derives it only for policies that do not.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackT, Counter, Histogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as gm

# From the GenAI metric conventions (ExplicitBucketBoundaries).
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)
TOKEN_BUCKETS = (1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
                 1048576.0, 4194304.0, 16777216.0, 67108864.0)
# The sidecar's own time per request: tens of microseconds to a slow policy backend.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0)

CACHE_LOOKUPS = "sidecar.cache.lookups"
RATELIMIT_REFUSALS = "sidecar.ratelimit.refusals"
OVERHEAD = "sidecar.overhead.duration"

Key = tuple[tuple[str, Any], ...]


class HistogramStore:
    """A cumulative explicit-bucket histogram per attribute set."""

    def __init__(self, name: str, unit: str, description: str, bounds: Sequence[float],
                 lock: threading.Lock) -> None:
        self.name, self.unit, self.description = name, unit, description
        self.bounds = tuple(bounds)
        self._points: dict[Key, list[Any]] = {}  # key -> [bucket counts, sum, count, min, max]
        self._lock = lock  # shared by the instruments: one request records under one lock
        self._start = time.time_ns()

    def point(self, key: Key) -> list[Any]:
        """The point of `key`, created empty if new; call it holding the store's lock."""
        point = self._points.get(key)
        if point is None:
            point = self._points[key] = [[0] * (len(self.bounds) + 1), 0.0, 0, math.inf,
                                         -math.inf]
        return point

    def export(self, now: int) -> Metric | None:
        with self._lock:
            points = [(key, list(p[0]), *p[1:]) for key, p in self._points.items() if p[2]]
        if not points:
            return None
        data = [HistogramDataPoint(dict(key), self._start, now, count, total, counts, self.bounds,
                                   low, high)
                for key, counts, total, count, low, high in points]
        return Metric(self.name, self.description, self.unit,
                      HistogramData(data, AggregationTemporality.CUMULATIVE))


class CounterStore:
    """A cumulative monotonic sum per attribute set."""

    def __init__(self, name: str, unit: str, description: str) -> None:
        self.name, self.unit, self.description = name, unit, description
        self._values: dict[Key, float] = {}
        self._lock = threading.Lock()
        self._start = time.time_ns()

    def add(self, amount: float, key: Key = ()) -> None:
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def export(self, now: int) -> Metric | None:
        with self._lock:
            values = list(self._values.items())
        if not values:
            return None
        data = [NumberDataPoint(dict(key), self._start, now, value) for key, value in values]
        return Metric(self.name, self.description, self.unit,
                      Sum(data, AggregationTemporality.CUMULATIVE, is_monotonic=True))


class Instruments:
    """Everything telemetry records itself. The derived `sidecar.*` counters are decided on first
    use, once every policy has had its chance to create its own."""

    def __init__(self, policy_meter: RecordingMeter) -> None:
        self._policy_meter = policy_meter
        # One lock for the GenAI histograms: a call's measurements are recorded in one go.
        self._lock = threading.Lock()
        self.duration = HistogramStore(gm.GEN_AI_CLIENT_OPERATION_DURATION, "s",
                                       "GenAI operation duration.", DURATION_BUCKETS, self._lock)
        self.tokens = HistogramStore(gm.GEN_AI_CLIENT_TOKEN_USAGE, "{token}",
                                     "Number of input and output tokens used.", TOKEN_BUCKETS,
                                     self._lock)
        self.first_chunk = HistogramStore(
            gm.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK, "s",
            "Time to receive the first chunk of a streamed answer.", DURATION_BUCKETS, self._lock)
        self.overhead = HistogramStore(
            OVERHEAD, "s", "Time the sidecar itself spent on a request (total minus upstream wait).",
            OVERHEAD_BUCKETS, self._lock)
        self._counters = {
            CACHE_LOOKUPS: CounterStore(CACHE_LOOKUPS, "{lookup}",
                                        "Cache lookups by result (hit, semantic-hit, miss, bypass)."),
            RATELIMIT_REFUSALS: CounterStore(RATELIMIT_REFUSALS, "{request}",
                                             "Requests refused by a rate limit."),
        }
        self._derived: dict[str, CounterStore | None] | None = None
        self._calls: dict[CallKey, _CallPoints] = {}
        with self._lock:
            self._overhead = self.overhead.point(())

    def record_request(self, overhead: float, calls: Sequence[CallMeasures]) -> None:
        """The overhead of one request and the GenAI client metrics of its upstream calls,
        under one lock."""
        with self._lock:
            observations: list[tuple[list[Any], tuple[float, ...], float]] = [
                (self._overhead, OVERHEAD_BUCKETS, overhead)]
            for key, error, duration, first_chunk, tokens_in, tokens_out in calls:
                points = self._calls.get(key)
                if points is None:
                    points = self._calls[key] = _CallPoints(self, key)
                observations.append((points.duration if error is None else points.failed(error),
                                     DURATION_BUCKETS, duration))
                if first_chunk is not None:
                    observations.append((points.first_chunk, DURATION_BUCKETS, first_chunk))
                if tokens_in is not None:
                    observations.append((points.tokens_in, TOKEN_BUCKETS, tokens_in))
                if tokens_out is not None:
                    observations.append((points.tokens_out, TOKEN_BUCKETS, tokens_out))
            for point, bounds, value in observations:
                point[0][bisect_left(bounds, value)] += 1
                point[1] += value
                point[2] += 1
                if value < point[3]:
                    point[3] = value
                if value > point[4]:
                    point[4] = value

    def derived(self, name: str) -> CounterStore | None:
        """The derived counter `name`, or None when a policy records it itself."""
        if self._derived is None:
            self._derived = {name: None if name in self._policy_meter.names else store
                             for name, store in self._counters.items()}
        return self._derived.get(name)

    def export(self) -> list[Metric]:
        now = time.time_ns()
        stores: list[HistogramStore | CounterStore] = [
            self.duration, self.tokens, self.first_chunk, self.overhead,
            *(s for s in (self._derived or {}).values() if s is not None)]
        return [m for m in (store.export(now) for store in stores) if m is not None]


CallKey = tuple[str | None, str | None, str | None]
# (key, error.type, duration, time to first chunk, input tokens, output tokens) of one call.
CallMeasures = tuple[CallKey, str | None, float, float | None, int | None, int | None]
_CALL_ATTRIBUTES = (ga.GEN_AI_OPERATION_NAME, ga.GEN_AI_PROVIDER_NAME,
                    ga.GEN_AI_REQUEST_MODEL)


class _CallPoints:
    """The points one kind of call records into, found once instead of per measurement
    (made holding the instruments' lock)."""

    __slots__ = ("_duration", "base", "duration", "first_chunk", "tokens_in", "tokens_out")

    def __init__(self, instruments: Instruments, key: CallKey) -> None:
        self.base: Key = tuple((name, value) for name, value in zip(_CALL_ATTRIBUTES, key,
                                                                     strict=True)
                               if value is not None)
        self.duration = instruments.duration.point(self.base)
        self.first_chunk = instruments.first_chunk.point(self.base)
        self.tokens_in = instruments.tokens.point((*self.base, (_TOKEN_TYPE, "input")))
        self.tokens_out = instruments.tokens.point((*self.base, (_TOKEN_TYPE, "output")))
        self._duration = instruments.duration

    def failed(self, error: str) -> list[Any]:
        """The duration point of calls that failed with `error` (holding the lock)."""
        return self._duration.point((*self.base, ("error.type", error)))


_TOKEN_TYPE = ga.GEN_AI_TOKEN_TYPE


class RecordingMeter(metrics.Meter):
    """The meter the policies get: the real SDK instruments, and a record of their names."""

    def __init__(self, inner: metrics.Meter) -> None:
        super().__init__(inner.name, inner.version, inner.schema_url)
        self._inner = inner
        self.names: set[str] = set()

    def create_counter(self, name: str, unit: str = "", description: str = "") -> Counter:
        self.names.add(name.lower())
        return self._inner.create_counter(name, unit, description)

    def create_up_down_counter(self, name: str, unit: str = "",
                               description: str = "") -> metrics.UpDownCounter:
        self.names.add(name.lower())
        return self._inner.create_up_down_counter(name, unit, description)

    def create_observable_counter(self, name: str, callbacks: Sequence[CallbackT] | None = None,
                                  unit: str = "", description: str = "",
                                  ) -> metrics.ObservableCounter:
        self.names.add(name.lower())
        return self._inner.create_observable_counter(name, callbacks, unit, description)

    def create_histogram(self, name: str, unit: str = "", description: str = "", *,
                         explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
                         ) -> Histogram:
        self.names.add(name.lower())
        return self._inner.create_histogram(
            name, unit, description,
            explicit_bucket_boundaries_advisory=explicit_bucket_boundaries_advisory)

    def create_gauge(self, name: str, unit: str = "", description: str = "") -> metrics._Gauge:
        self.names.add(name.lower())
        return self._inner.create_gauge(name, unit, description)

    def create_observable_gauge(self, name: str, callbacks: Sequence[CallbackT] | None = None,
                                unit: str = "", description: str = "",
                                ) -> metrics.ObservableGauge:
        self.names.add(name.lower())
        return self._inner.create_observable_gauge(name, callbacks, unit, description)

    def create_observable_up_down_counter(
            self, name: str, callbacks: Sequence[CallbackT] | None = None, unit: str = "",
            description: str = "") -> metrics.ObservableUpDownCounter:
        self.names.add(name.lower())
        return self._inner.create_observable_up_down_counter(name, callbacks, unit, description)
