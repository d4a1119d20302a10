"""``TelemetrySink``: the pairing stage's sink for spans and metrics (DESIGN §4, §5).

On the capture thread, per exchange, it only

1. updates the local metric aggregates (:class:`~exporter.telemetry.metrics.Aggregates`),
2. decides whether the exchange becomes a span: every error rcode, every unanswered
   query, every exchange slower than ``slow_ns``, and ``sample_ratio`` of the rest,
   decided from the derived trace id (so the client and server spans of one exchange,
   on two nodes, agree); then a token bucket of ``span_rate_limit`` spans/s, whose
   refusals are dropped and counted in ``dnsotel.spans.dropped``,
3. appends the bare exchange to a bounded queue (full -> dropped and counted).

A daemon thread builds and exports the spans (:class:`~exporter.telemetry.spans.SpanPipeline`)
every ``span_delay_s`` (``OTEL_BSP_SCHEDULE_DELAY``, 1 s by default);
another exports the metrics every ``metric_interval_s`` (``OTEL_METRIC_EXPORT_INTERVAL``,
15 s by default); ``prometheus_port`` serves the same aggregates on ``/metrics``.

When spans are exported, a :class:`~exporter.telemetry.resolution.ResolutionTracker` sees
every query and response first (a few dict operations on the capture thread) and annotates
the spans when they are built: a resolver's upstream query joins the trace of the client
query it serves, search-list tries are marked, TCP retries of truncated answers linked.
The sampling decision uses the trace id the span will carry, so a resolution's spans are
kept or dropped together.

Unanswered queries count in ``dns.queries.unanswered`` and are *not* recorded in
``dns.lookup.duration`` (their "duration" is the timeout, not a latency).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from threading import Thread
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry, start_http_server

import exporter
from exporter.dns import rcode_name, type_name
from exporter.enrich import Enricher
from exporter.records import TRANSPORT_NAMES, DnsPacket, Exchange
from exporter.telemetry import ids
from exporter.telemetry import semconv as sc
from exporter.telemetry.metrics import Aggregates, Health, PeriodicMetricExport, PrometheusCollector
from exporter.telemetry.otlp import metric_interval_s as env_metric_interval_s
from exporter.telemetry.resolution import ResolutionTracker, ResolvConfReader
from exporter.telemetry.sampling import TokenBucket, keep_by_ratio, ratio_bound
from exporter.telemetry.spans import ParentResolver, SpanBuilder, SpanPipeline, exchange_key

log = logging.getLogger(__name__)


def build_resource(node: str = "") -> Resource:
    """``service.name=dnsotel``, ``host.name``, ``k8s.node.name``; OTEL_* env overrides them."""
    detected = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME, SDK defaults
    attrs = dict(detected.attributes)
    if str(attrs.get(sc.RESOURCE_SERVICE_NAME, "")).startswith("unknown_service"):
        del attrs[sc.RESOURCE_SERVICE_NAME]
    defaults: dict[str, str] = {
        sc.RESOURCE_SERVICE_NAME: sc.RESOURCE_SERVICE_NAME_DEFAULT,
        sc.RESOURCE_HOST_NAME: socket.gethostname(),
    }
    if node:
        defaults[sc.K8S_NODE_NAME] = node
    return Resource(defaults).merge(Resource(attrs, detected.schema_url))


DEFAULT_SPAN_DELAY_S = 1.0
OTEL_BSP_SCHEDULE_DELAY = "OTEL_BSP_SCHEDULE_DELAY"


def span_delay_s_from_env(env: dict[str, str] | None = None) -> float:
    """``OTEL_BSP_SCHEDULE_DELAY`` (ms) in seconds; 1 s when unset or not a positive number."""
    raw = (os.environ if env is None else env).get(OTEL_BSP_SCHEDULE_DELAY, "").strip()
    if not raw:
        return DEFAULT_SPAN_DELAY_S
    try:
        ms = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number of ms; using %.0f ms", OTEL_BSP_SCHEDULE_DELAY, raw, 1000.0)
        return DEFAULT_SPAN_DELAY_S
    return ms / 1000.0 if ms > 0 else DEFAULT_SPAN_DELAY_S


def _version() -> str:
    return str(getattr(exporter, "__version__", "") or "")


class TelemetrySink:
    """Spans + metrics sink (implements :class:`~exporter.records.PairSink`).

    Parameters (all plain values; exporters and clocks are injected):

    ``enricher``         netns -> workload, addr:port -> endpoint names
    ``node``             node name (``k8s.node.name`` on the resource and on spans)
    ``slow_ns``          exchanges at least this slow are always spans (default 100 ms)
    ``sample_ratio``     share of the other (fast, NOERROR) exchanges exported as spans
    ``span_rate_limit``  spans/s cap after sampling (0 = unlimited)
    ``top_names``        N > 0 adds ``dns.question.name`` (top N per interval) to the histogram
    ``max_queue``        exchanges waiting to become spans; beyond it they are dropped (counted)
    ``max_series``       attribute sets per metric before folding into the overflow series
    ``span_exporter``    SDK ``SpanExporter`` (None: no spans)
    ``metric_exporter``  SDK ``MetricExporter`` (None: no OTLP metrics)
    ``metric_interval_s`` OTLP metric export interval (None: OTEL_METRIC_EXPORT_INTERVAL or 15 s)
    ``prometheus_port``  serve ``/metrics`` on ``prometheus_addr:port`` (None: don't; 0: any port)
    ``clock``            monotonic ns (rate limiting); ``wall_clock``: epoch ns (metric timestamps)
    ``parent_resolver``  optional hook: a parent ``SpanContext`` for an exchange
    ``resolution``       True (default): track resolutions across exchanges (upstream children,
                         search expansion, TCP retries) with a ``ResolutionTracker``; or a
                         tracker to use; False: none
    ``timeout_ns``       the pairing timeout (how long the tracker keeps a pending query)
    ``proc_root``        where the tracker reads each netns' resolv.conf (``<pid>/root/etc/resolv.conf``)
    ``span_delay_s``     span export interval (None: ``OTEL_BSP_SCHEDULE_DELAY`` or 1 s)
    """

    def __init__(
        self,
        enricher: Enricher,
        *,
        node: str = "",
        slow_ns: int = 100_000_000,
        sample_ratio: float = 1.0,
        span_rate_limit: float = 0.0,
        top_names: int = 0,
        max_queue: int = 8192,
        max_series: int = 2000,
        span_exporter: SpanExporter | None = None,
        metric_exporter: MetricExporter | None = None,
        metric_interval_s: float | None = None,
        prometheus_port: int | None = None,
        prometheus_addr: str = "127.0.0.1",
        resource: Resource | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        wall_clock: Callable[[], int] = time.time_ns,
        parent_resolver: ParentResolver | None = None,
        span_batch_size: int = 512,
        span_delay_s: float | None = None,
        resolution: ResolutionTracker | bool = True,
        timeout_ns: int = 5_000_000_000,
        proc_root: str = "/proc",
    ) -> None:
        if not 0.0 <= sample_ratio <= 1.0:
            raise ValueError(f"sample_ratio must be within [0, 1], got {sample_ratio}")
        self._enricher = enricher
        self._slow_ns = slow_ns
        self._bound = ratio_bound(sample_ratio)
        self._keep_all = sample_ratio >= 1.0
        self._keep_none = sample_ratio <= 0.0
        self._bucket = TokenBucket(span_rate_limit, clock)
        self._top = top_names > 0
        self.resource = resource if resource is not None else build_resource(node)
        self.scope = InstrumentationScope(sc.INSTRUMENTATION_SCOPE, _version())
        self.health = Health()
        interval = metric_interval_s if metric_interval_s is not None else env_metric_interval_s()
        self.aggregates = Aggregates(
            health=self.health,
            top_names=top_names,
            max_series=max_series,
            top_interval_ns=int(interval * 1e9),
            wall_clock=wall_clock,
        )
        self.rate_dropped = 0  # capture thread only
        self._spans: SpanPipeline | None = None
        self.resolution: ResolutionTracker | None = None
        if span_exporter is not None:
            if isinstance(resolution, ResolutionTracker):
                self.resolution = resolution
            elif resolution:
                self.resolution = ResolutionTracker(
                    timeout_ns=timeout_ns, resolv_conf=ResolvConfReader(proc_root)
                )
            builder = SpanBuilder(
                enricher,
                self.resource,
                self.scope,
                node,
                parent_resolver,
                self.resolution.annotate if self.resolution is not None else None,
            )
            self._spans = SpanPipeline(
                span_exporter,
                builder,
                max_queue=max_queue,
                batch_size=span_batch_size,
                delay_s=span_delay_s if span_delay_s is not None else span_delay_s_from_env(),
            )
        self.health.register(sc.METRIC_SPANS_EXPORTED, lambda: self.spans_exported)
        self.health.register(sc.METRIC_SPANS_DROPPED, lambda: self.spans_dropped)
        self._metrics: PeriodicMetricExport | None = None
        if metric_exporter is not None:
            self._metric_exporter = metric_exporter
            self._metrics = PeriodicMetricExport(metric_exporter, self.collect, interval)
        self._prom_server: Any = None
        self._prom_thread: Thread | None = None
        self.prometheus_port: int | None = None
        if prometheus_port is not None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(PrometheusCollector(self.aggregates))
            self._prom_server, self._prom_thread = start_http_server(
                prometheus_port, addr=prometheus_addr, registry=registry
            )
            self.prometheus_port = int(self._prom_server.server_port)

    # --- counters ----------------------------------------------------------------------
    @property
    def spans_exported(self) -> int:
        return self._spans.exported if self._spans is not None else 0

    @property
    def spans_dropped(self) -> int:
        p = self._spans
        return self.rate_dropped + (p.dropped_full + p.dropped_export if p is not None else 0)

    @property
    def spans_queued(self) -> int:
        return self._spans.queued if self._spans is not None else 0

    # --- PairSink (capture thread) -----------------------------------------------------
    def on_query(self, pkt: DnsPacket, role: str, retransmit: bool) -> None:
        """Only the resolution tracker looks at single queries (the exchange carries retransmissions)."""
        tracker = self.resolution
        if tracker is not None:
            tracker.on_query(pkt, role, retransmit)

    def on_response(self, ex: Exchange) -> None:
        q = ex.query
        r = ex.response
        if q is None or r is None:
            return
        tracker = self.resolution
        if tracker is not None:
            tracker.on_response(ex)
        m = q.meta
        question = q.msg.question
        rcode = r.msg.rcode
        rname = rcode_name(rcode)
        qtype = type_name(question.qtype) if question is not None else "0"
        enr = self._enricher
        wl = enr.workload(m.netns)
        latency = r.meta.ts_ns - m.ts_ns
        if latency < 0:
            latency = 0
        self.aggregates.record_lookup(
            (
                ex.role,
                qtype,
                rname,
                rname if rcode else "",
                m.dst,
                enr.endpoint(m.dst, m.dport),
                TRANSPORT_NAMES.get(m.transport) or str(m.transport),
                wl.namespace,
                wl.pod,
            ),
            latency / 1e9,
            (question.name if question is not None else "") if self._top else None,
        )
        if self._spans is None:
            return
        tid = 0
        if not (rcode or latency >= self._slow_ns or self._keep_all):
            if self._keep_none:
                return
            if tracker is not None:
                tid = tracker.trace_id_for(ex)
            else:
                key = exchange_key(ex)
                assert key is not None
                tid = ids.trace_id(key)
            if not keep_by_ratio(tid, self._bound):
                return
        if not self._bucket.take():
            self.rate_dropped += 1
            return
        self._spans.offer(ex, tid)

    @property
    def counts_only_below_ns(self) -> int | None:
        """Exchanges this sink only counts: answered NOERROR ones faster than this (it makes
        no span of them and needs no question name), so the kernel may aggregate them
        (:meth:`on_lookups`). None: it needs every exchange (a sampled span ratio, top-N names)."""
        if self._top or not (self._keep_none or self._spans is None):
            return None
        return self._slow_ns

    def on_lookups(
        self,
        netns: int,
        role: str,
        server: str,
        server_port: int,
        qtype: int,
        transport: str,
        buckets: Sequence[int],
        count: int,
        sum_ns: int,
        min_ns: int,
        max_ns: int,
    ) -> None:
        """``count`` answered NOERROR exchanges of one series that the kernel aggregated
        (the same attributes :meth:`on_response` gives one exchange)."""
        enr = self._enricher
        wl = enr.workload(netns)
        self.aggregates.merge_lookups(
            (
                role,
                type_name(qtype),
                rcode_name(0),
                "",
                server,
                enr.endpoint(server, server_port),
                transport,
                wl.namespace,
                wl.pod,
            ),
            buckets,
            count,
            sum_ns / 1e9,
            min_ns / 1e9,
            max_ns / 1e9,
        )

    def on_unanswered(self, ex: Exchange) -> None:
        q = ex.query
        if q is None:
            return
        if self.resolution is not None:
            self.resolution.on_unanswered(ex)
        m = q.meta
        question = q.msg.question
        enr = self._enricher
        wl = enr.workload(m.netns)
        self.aggregates.record_unanswered(
            (
                ex.role,
                type_name(question.qtype) if question is not None else "0",
                sc.ERROR_TYPE_TIMEOUT,
                m.dst,
                enr.endpoint(m.dst, m.dport),
                TRANSPORT_NAMES.get(m.transport) or str(m.transport),
                wl.namespace,
                wl.pod,
            )
        )
        if self._spans is None:
            return
        if not self._bucket.take():
            self.rate_dropped += 1
            return
        self._spans.offer(ex, 0)

    def on_unmatched(self, pkt: DnsPacket, role: str) -> None:
        m = pkt.meta
        wl = self._enricher.workload(m.netns)
        self.aggregates.record_unmatched((role, m.src, wl.namespace, wl.pod))

    # --- collection / lifecycle --------------------------------------------------------
    def collect(self) -> MetricsData:
        """The current cumulative metrics as the SDK's ``MetricsData``."""
        return self.aggregates.metrics_data(self.resource, self.scope)

    def export_metrics(self, timeout_ms: float = 10_000) -> bool:
        """Export the metrics now (besides the periodic export); True on success."""
        return self._metrics.export_once(timeout_ms) if self._metrics is not None else False

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flush queued spans and export the metrics one last time, within ``timeout_s``.

        Takes at most about ``timeout_s`` even when the collector is down or hangs: the
        SDK exporters are shut down at the deadline, which aborts their retries.
        """
        deadline = time.monotonic() + timeout_s
        if self._spans is not None:
            self._spans.shutdown(timeout_s * 0.5)
        if self.resolution is not None:
            self.resolution.close()
        if self._metrics is not None:
            left = max(0.1, deadline - time.monotonic())
            if not self._metrics.stop(left * 0.8):
                log.warning("final metric export did not finish in time; aborting it")
            try:
                self._metric_exporter.shutdown(timeout_millis=max(0.0, deadline - time.monotonic()) * 1000)
            except Exception:
                log.warning("metric exporter shutdown failed", exc_info=True)
        if self._prom_server is not None:
            self._prom_server.shutdown()
            self._prom_server.server_close()
            self._prom_server = None

    def __enter__(self) -> TelemetrySink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
