"""Metrics of the telemetry contract, aggregated locally (DESIGN §4 "Export", §5).

The capture thread never calls an SDK instrument: :class:`Aggregates` keeps, per
attribute tuple, the bucket counts / sum / count / min / max of ``dns.lookup.duration``
and the counts of ``dns.queries.unanswered`` and ``dns.responses.unmatched``. It writes
into a *delta* dict under a lock held for the few dict/list operations of one update;
a reader (the periodic OTLP export, a Prometheus scrape) swaps the delta out under the
same lock (O(1)) and merges it into the cumulative state it owns, outside the lock.

Both readers see the same cumulative series: :meth:`Aggregates.metrics_data` builds the
SDK's ``MetricsData`` (cumulative temporality) for ``OTLPMetricExporter.export()``,
:class:`PrometheusCollector` yields prometheus-client families with the standard
OTLP -> Prometheus names (``semconv.prometheus_metric``).

Bounded memory:

* ``max_series`` attribute sets per metric. Once a metric has that many, a new
  attribute set is folded into one overflow series whose only attribute is
  ``otel.metric.overflow=true`` (the OpenTelemetry SDK's convention), so totals stay
  right; ``overflowed`` counts the folded measurements. Series are never forgotten
  (cumulative temporality), so the cap bounds memory for the process lifetime.
* Opt-in ``dns.question.name`` on ``dns.lookup.duration`` (``top_names`` = N > 0): see
  :class:`TopNames` — at most N names per interval, the rest are ``_other``.

Health metrics (``dnsotel.*``) are read at collection time from callables registered
in :class:`Health`; every one is exported (at zero) even before anything registers it.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.core import (
    Metric as PMetric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_float_to_go

from exporter.telemetry import semconv as sc

log = logging.getLogger(__name__)

_float_to_go: Callable[[float], str] = _untyped_float_to_go  # Prometheus' canonical `le` text

BOUNDS: Final = sc.LOOKUP_DURATION_BUCKETS
_NB: Final = len(BOUNDS) + 1  # bucket counts, the last one is (BOUNDS[-1], +Inf)
_SUM: Final = _NB
_COUNT: Final = _NB + 1
_MIN: Final = _NB + 2
_MAX: Final = _NB + 3

#: the attribute tuple of the overflow series (never equal to a real attribute tuple)
OVERFLOW_KEY: Final[tuple[str, ...]] = ("\x00overflow",)

HEALTH_METRICS: Final = (
    sc.METRIC_CAPTURE_PACKETS,
    sc.METRIC_CAPTURE_LOST,
    sc.METRIC_DECODE_ERRORS,
    sc.METRIC_PAIRS_PENDING,
    sc.METRIC_PAIRS_EVICTED,
    sc.METRIC_SPANS_EXPORTED,
    sc.METRIC_SPANS_DROPPED,
    sc.METRIC_NETNS_ATTACHED,
)

HealthValue = int | float | Mapping[str, int | float]
HealthFn = Callable[[], HealthValue]


def _new_histogram() -> list[float]:
    h: list[float] = [0] * (_NB + 2)
    h.append(float("inf"))  # min
    h.append(float("-inf"))  # max
    return h


class TopNames:
    """Bounded "top N question names per interval" (opt-in ``dns.question.name`` label).

    Frequencies are estimated with the Misra–Gries summary: ``capacity`` counters; a name
    not in a full summary decrements every counter (dropping zeros) instead of being
    added, which costs O(capacity) but happens at most once per ``capacity`` + 1
    observations, so O(1) amortised. Any name seen more than ``n_seen / (capacity + 1)``
    times in an interval is guaranteed to be in the summary.

    The names admitted in an interval are the N most frequent of the previous interval
    (from the summary), topped up first-come while fewer than N are admitted; every other
    name is reported as ``_other``. :meth:`rotate` starts a new interval. Not thread-safe:
    :class:`Aggregates` calls it under its lock.
    """

    __slots__ = ("_allowed", "_counts", "capacity", "n")

    def __init__(self, n: int, capacity: int = 0) -> None:
        self.n = n
        self.capacity = capacity or max(10 * n, 64)
        self._counts: dict[str, int] = {}
        self._allowed: set[str] = set()

    def admit(self, name: str) -> str:
        counts = self._counts
        v = counts.get(name)
        if v is not None:
            counts[name] = v + 1
        elif len(counts) < self.capacity:
            counts[name] = 1
        else:
            self._counts = {k: c - 1 for k, c in counts.items() if c > 1}
        allowed = self._allowed
        if name in allowed:
            return name
        if len(allowed) < self.n:
            allowed.add(name)
            return name
        return sc.OTHER_NAME

    def rotate(self) -> list[str]:
        """End the interval: the next interval admits the N most frequent names of this one."""
        top = sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.n]
        self._allowed = {k for k, _ in top}
        self._counts = {}
        return [k for k, _ in top]


class Health:
    """Where the exporter's own health values come from (capture, decode, pairing, spans).

    ``register(name, fn)``: ``fn()`` returns the current cumulative count (counters) or
    value (gauges ``dnsotel.pairs.pending``, ``dnsotel.netns.attached``). For
    ``dnsotel.decode.errors`` it may return a mapping ``reason -> count``. Registering
    a name again replaces the source. A source that raises is logged and skipped for
    that collection.
    """

    def __init__(self) -> None:
        self._fns: dict[str, HealthFn] = {}

    def register(self, name: str, fn: HealthFn) -> None:
        if name not in HEALTH_METRICS:
            raise ValueError(f"not a dnsotel health metric: {name!r} (one of {', '.join(HEALTH_METRICS)})")
        self._fns[name] = fn

    def read(self) -> dict[str, list[tuple[dict[str, str], int | float]]]:
        """Every health metric, as ``name -> [(attributes, value)]``; zero when no source."""
        out: dict[str, list[tuple[dict[str, str], int | float]]] = {}
        for name in HEALTH_METRICS:
            fn = self._fns.get(name)
            if fn is None:
                out[name] = [({}, 0)]
                continue
            try:
                v = fn()
            except Exception:
                log.warning("health source for %s failed", name, exc_info=True)
                continue
            if isinstance(v, Mapping):
                points: list[tuple[dict[str, str], int | float]] = [
                    ({sc.DECODE_ERROR_REASON: str(k)}, v[k]) for k in sorted(v)
                ]
                out[name] = points or [({}, 0)]
            else:
                out[name] = [({}, v)]
        return out


class Snapshot:
    """Cumulative state at one collection (copies; safe to read without a lock)."""

    __slots__ = ("health", "lookup", "lookup_attrs", "time_ns", "unanswered", "unmatched")

    def __init__(
        self,
        lookup: dict[tuple[str, ...], list[float]],
        unanswered: dict[tuple[str, ...], int],
        unmatched: dict[tuple[str, ...], int],
        health: dict[str, list[tuple[dict[str, str], int | float]]],
        lookup_attrs: tuple[str, ...],
        time_ns: int,
    ) -> None:
        self.lookup = lookup
        self.unanswered = unanswered
        self.unmatched = unmatched
        self.health = health
        self.lookup_attrs = lookup_attrs
        self.time_ns = time_ns


def _attrs(names: Sequence[str], key: tuple[str, ...]) -> dict[str, str | bool]:
    if key is OVERFLOW_KEY or key == OVERFLOW_KEY:
        return {sc.METRIC_OVERFLOW_ATTRIBUTE: True}
    return {n: v for n, v in zip(names, key, strict=True) if v}


class Aggregates:
    """Local, lock-cheap metric state written by the capture thread (see module docstring)."""

    def __init__(
        self,
        *,
        health: Health,
        top_names: int = 0,
        max_series: int = 2000,
        top_interval_ns: int = 60_000_000_000,
        wall_clock: Callable[[], int],
    ) -> None:
        self.health = health
        self.max_series = max_series
        self.lookup_attrs: tuple[str, ...] = sc.LOOKUP_ATTRIBUTES + (
            (sc.DNS_QUESTION_NAME,) if top_names > 0 else ()
        )
        self._top = TopNames(top_names) if top_names > 0 else None
        self._top_interval_ns = top_interval_ns
        self._wall = wall_clock
        self.start_ns = wall_clock()
        self._last_rotate_ns = self.start_ns
        self._lock = threading.Lock()  # capture thread <-> delta swap
        self._collect_lock = threading.Lock()  # serialises readers (OTLP export, Prometheus scrape)
        # capture-thread side (under _lock)
        self._d_lookup: dict[tuple[str, ...], list[float]] = {}
        self._d_unanswered: dict[tuple[str, ...], int] = {}
        self._d_unmatched: dict[tuple[str, ...], int] = {}
        self._known: tuple[set[tuple[str, ...]], set[tuple[str, ...]], set[tuple[str, ...]]] = (
            set(),
            set(),
            set(),
        )
        self.overflowed = 0  # measurements folded into an overflow series
        # reader side (under _collect_lock)
        self._lookup: dict[tuple[str, ...], list[float]] = {}
        self._unanswered: dict[tuple[str, ...], int] = {}
        self._unmatched: dict[tuple[str, ...], int] = {}

    # --- capture thread --------------------------------------------------------------
    def _admit(self, which: int, key: tuple[str, ...]) -> tuple[str, ...]:
        known = self._known[which]
        if key in known:
            return key
        if len(known) < self.max_series:
            known.add(key)
            return key
        self.overflowed += 1
        return OVERFLOW_KEY

    def _new_lookup_series(self, key: tuple[str, ...]) -> list[float]:
        """The delta histogram of a key not in this interval yet (the overflow series past
        the cap). Under ``_lock``."""
        key = self._admit(0, key)
        h = self._d_lookup.get(key)
        if h is None:
            h = self._d_lookup[key] = _new_histogram()
        return h

    def record_lookup(self, key: tuple[str, ...], seconds: float, name: str | None = None) -> None:
        """One answered exchange: ``key`` in ``LOOKUP_ATTRIBUTES`` order, ``name`` when top-N is on."""
        i = bisect_left(BOUNDS, seconds)
        with self._lock:
            if self._top is not None:
                key = (*key, self._top.admit(name or ""))
            h = self._d_lookup.get(key)
            if h is None:
                h = self._new_lookup_series(key)
            h[i] += 1
            h[_SUM] += seconds
            h[_COUNT] += 1
            if seconds < h[_MIN]:
                h[_MIN] = seconds
            if seconds > h[_MAX]:
                h[_MAX] = seconds

    def merge_lookups(
        self,
        key: tuple[str, ...],
        buckets: Sequence[int],
        count: int,
        seconds_sum: float,
        seconds_min: float,
        seconds_max: float,
    ) -> None:
        """Many answered exchanges at once, already bucketed over ``BOUNDS`` (the kernel's
        aggregates): ``key`` in ``LOOKUP_ATTRIBUTES`` order (top-N names off)."""
        if count <= 0:
            return
        with self._lock:
            h = self._d_lookup.get(key)
            if h is None:
                h = self._new_lookup_series(key)
            for i, n in enumerate(buckets):
                h[i] += n
            h[_SUM] += seconds_sum
            h[_COUNT] += count
            if seconds_min < h[_MIN]:
                h[_MIN] = seconds_min
            if seconds_max > h[_MAX]:
                h[_MAX] = seconds_max

    def record_unanswered(self, key: tuple[str, ...]) -> None:
        """One unanswered query: ``key`` in ``UNANSWERED_ATTRIBUTES`` order."""
        with self._lock:
            d = self._d_unanswered
            v = d.get(key)
            if v is None:
                key = self._admit(1, key)
                v = d.get(key, 0)
            d[key] = v + 1

    def record_unmatched(self, key: tuple[str, ...]) -> None:
        """One unmatched response: ``key`` in ``UNMATCHED_ATTRIBUTES`` order."""
        with self._lock:
            d = self._d_unmatched
            v = d.get(key)
            if v is None:
                key = self._admit(2, key)
                v = d.get(key, 0)
            d[key] = v + 1

    # --- readers ---------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Merge what the capture thread wrote since the last call; return the cumulative state."""
        with self._collect_lock:
            now = self._wall()
            with self._lock:
                d_lookup, self._d_lookup = self._d_lookup, {}
                d_unanswered, self._d_unanswered = self._d_unanswered, {}
                d_unmatched, self._d_unmatched = self._d_unmatched, {}
                if self._top is not None and now - self._last_rotate_ns >= self._top_interval_ns:
                    self._top.rotate()
                    self._last_rotate_ns = now
            for k, h in d_lookup.items():
                c = self._lookup.get(k)
                if c is None:
                    self._lookup[k] = h
                    continue
                for i in range(_COUNT + 1):
                    c[i] += h[i]
                c[_MIN] = min(c[_MIN], h[_MIN])
                c[_MAX] = max(c[_MAX], h[_MAX])
            for src, dst in ((d_unanswered, self._unanswered), (d_unmatched, self._unmatched)):
                for k, v in src.items():
                    dst[k] = dst.get(k, 0) + v
            return Snapshot(
                {k: list(h) for k, h in self._lookup.items()},
                dict(self._unanswered),
                dict(self._unmatched),
                self.health.read(),
                self.lookup_attrs,
                now,
            )

    def metrics_data(self, resource: Resource, scope: InstrumentationScope) -> MetricsData:
        """The SDK's ``MetricsData`` for ``MetricExporter.export()`` (cumulative)."""
        return to_metrics_data(self.snapshot(), self.start_ns, resource, scope)


def to_metrics_data(
    snap: Snapshot, start_ns: int, resource: Resource, scope: InstrumentationScope
) -> MetricsData:
    cum = AggregationTemporality.CUMULATIVE
    now = snap.time_ns
    hist_points = [
        HistogramDataPoint(
            attributes=_attrs(snap.lookup_attrs, k),
            start_time_unix_nano=start_ns,
            time_unix_nano=now,
            count=int(h[_COUNT]),
            sum=h[_SUM],
            bucket_counts=[int(c) for c in h[:_NB]],
            explicit_bounds=list(BOUNDS),
            min=h[_MIN],
            max=h[_MAX],
        )
        for k, h in snap.lookup.items()
    ]
    metrics: list[Metric] = [
        Metric(
            name=sc.METRIC_LOOKUP_DURATION,
            description="Duration of DNS lookups, query to response, as seen in one network namespace",
            unit=sc.METRIC_UNITS[sc.METRIC_LOOKUP_DURATION],
            data=Histogram(data_points=hist_points, aggregation_temporality=cum),
        )
    ]
    for name, attrs, values, desc in (
        (
            sc.METRIC_QUERIES_UNANSWERED,
            sc.UNANSWERED_ATTRIBUTES,
            snap.unanswered,
            "DNS queries that got no response before the timeout",
        ),
        (
            sc.METRIC_RESPONSES_UNMATCHED,
            sc.UNMATCHED_ATTRIBUTES,
            snap.unmatched,
            "DNS responses with no pending query",
        ),
    ):
        points = [
            NumberDataPoint(
                attributes=_attrs(attrs, k), start_time_unix_nano=start_ns, time_unix_nano=now, value=v
            )
            for k, v in values.items()
        ]
        if not points:  # created at zero
            points = [
                NumberDataPoint(attributes={}, start_time_unix_nano=start_ns, time_unix_nano=now, value=0)
            ]
        metrics.append(
            Metric(
                name=name,
                description=desc,
                unit=sc.METRIC_UNITS[name],
                data=Sum(data_points=points, aggregation_temporality=cum, is_monotonic=True),
            )
        )
    for name, hpoints in snap.health.items():
        npoints = [
            NumberDataPoint(attributes=dict(a), start_time_unix_nano=start_ns, time_unix_nano=now, value=v)
            for a, v in hpoints
        ]
        data: Sum | Gauge
        if name in sc.GAUGES:
            data = Gauge(data_points=npoints)
        else:
            data = Sum(data_points=npoints, aggregation_temporality=cum, is_monotonic=True)
        metrics.append(Metric(name=name, description="dnsotel health", unit=sc.METRIC_UNITS[name], data=data))
    return MetricsData(
        resource_metrics=[
            ResourceMetrics(
                resource=resource,
                scope_metrics=[ScopeMetrics(scope=scope, metrics=metrics, schema_url="")],
                schema_url="",
            )
        ]
    )


def _labels(names: Sequence[str], key: tuple[str, ...]) -> dict[str, str]:
    return {sc.prometheus_label(k): ("true" if v is True else str(v)) for k, v in _attrs(names, key).items()}


class PrometheusCollector(Collector):
    """prometheus-client collector over the same cumulative aggregates as the OTLP export."""

    def __init__(self, aggregates: Aggregates) -> None:
        self._agg = aggregates

    def describe(self) -> list[PMetric]:
        return []

    def collect(self) -> Iterator[PMetric]:
        snap = self._agg.snapshot()
        name = sc.prometheus_metric(sc.METRIC_LOOKUP_DURATION)
        hist = HistogramMetricFamily(name, "Duration of DNS lookups, query to response (s)")
        les = [*(_float_to_go(b) for b in BOUNDS), "+Inf"]
        for k, h in snap.lookup.items():
            labels = _labels(snap.lookup_attrs, k)
            acc = 0
            for le, c in zip(les, h[:_NB], strict=True):
                acc += int(c)
                hist.add_sample(name + "_bucket", {**labels, "le": le}, acc)
            hist.add_sample(name + "_count", labels, h[_COUNT])
            hist.add_sample(name + "_sum", labels, h[_SUM])
        yield hist
        for metric, attrs, values in (
            (sc.METRIC_QUERIES_UNANSWERED, sc.UNANSWERED_ATTRIBUTES, snap.unanswered),
            (sc.METRIC_RESPONSES_UNMATCHED, sc.UNMATCHED_ATTRIBUTES, snap.unmatched),
        ):
            yield _counter(metric, [(_labels(attrs, k), v) for k, v in values.items()] or [({}, 0)])
        for metric, points in snap.health.items():
            lp = [({sc.prometheus_label(a): v for a, v in attrs.items()}, val) for attrs, val in points]
            if metric in sc.GAUGES:
                g = GaugeMetricFamily(sc.prometheus_metric(metric), "dnsotel health")
                for labels, val in lp:
                    g.add_sample(g.name, labels, val)
                yield g
            else:
                yield _counter(metric, lp)


def _counter(metric: str, points: list[tuple[dict[str, str], int | float]]) -> CounterMetricFamily:
    fam = CounterMetricFamily(sc.prometheus_metric(metric), metric)
    for labels, v in points:
        fam.add_sample(fam.name + "_total", labels, v)
    return fam


class PeriodicMetricExport:
    """A daemon thread that exports ``produce()`` every ``interval_s`` to a ``MetricExporter``.

    ``stop(timeout_s)`` wakes it for one last export and waits at most ``timeout_s``.
    """

    def __init__(
        self, exporter: MetricExporter, produce: Callable[[], MetricsData], interval_s: float
    ) -> None:
        self._exporter = exporter
        self._produce = produce
        self._interval = interval_s
        self._stop = threading.Event()
        self.exports_ok = 0
        self.exports_failed = 0
        self._thread = threading.Thread(target=self._run, name="dnsotel-metrics", daemon=True)
        self._thread.start()

    def export_once(self, timeout_ms: float = 10_000) -> bool:
        try:
            res = self._exporter.export(self._produce(), timeout_millis=timeout_ms)
        except Exception:
            log.warning("metric export failed", exc_info=True)
            res = MetricExportResult.FAILURE
        if res is MetricExportResult.SUCCESS:
            self.exports_ok += 1
            return True
        self.exports_failed += 1
        return False

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.export_once()
        self.export_once()  # final export at shutdown

    def stop(self, timeout_s: float) -> bool:
        """Final export; True when the thread finished within ``timeout_s``."""
        self._stop.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()
