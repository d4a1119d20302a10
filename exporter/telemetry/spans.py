"""Exchanges -> OpenTelemetry spans (DESIGN §5 "Span"), built off the capture thread.

:class:`SpanBuilder` turns one :class:`~exporter.records.Exchange` into a ``ReadableSpan``
directly (no ``Tracer``, no ``Span`` lifecycle): name ``DNS <QTYPE>``, kind from the
role, start/end from the kernel timestamps, derived ids (:mod:`exporter.telemetry.ids`),
every contract attribute, one ``retransmission`` event per retransmitted query, and a
``truncated`` event when a UDP answer has TC=1. An optional ``annotator``
(:class:`~exporter.telemetry.resolution.ResolutionTracker.annotate`) adds what relates the
exchange to others: a parent in another trace (a resolver's upstream query under the
server span it serves), links, events and attributes (:class:`Annotation`).

:class:`SpanPipeline` is the bounded hand-off: the capture thread appends the bare
exchange (``offer``, a deque append); a daemon thread wakes every ``delay_s`` (or when a
batch is ready), builds the spans and exports them in batches of ``batch_size`` through
the SDK ``SpanExporter``. A full queue drops the new exchange; a failed export drops its
batch (the SDK exporter has already retried within its OTEL_EXPORTER_OTLP_TIMEOUT);
both are counted. The capture thread never waits for the exporter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from exporter.dns import rcode_name, type_name
from exporter.enrich import Enricher
from exporter.records import IPPROTO_UDP, ROLE_SERVER, TRANSPORT_NAMES, Exchange
from exporter.telemetry import ids
from exporter.telemetry import semconv as sc

log = logging.getLogger(__name__)

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)

#: Hook for linking an exchange under another span (e.g. a resolver's upstream query under
#: the server span it serves). Called on the export thread with the exchange; returns the
#: parent's ``SpanContext`` or None. When it returns one, the span joins the parent's trace
#: (its trace id) and keeps its own derived span id.
ParentResolver = Callable[[Exchange], SpanContext | None]


@dataclass(frozen=True, slots=True)
class Annotation:
    """What an exchange's span gets besides the contract (from an :data:`Annotator`).

    ``parent``: the span's parent instead of the derived one; the span joins its trace.
    ``trace_id`` (when no ``parent``): the trace to join, keeping the derived parent span id
    (a server span whose client span was itself re-parented). ``links``, ``events`` and
    ``attributes`` are added to the span's own.
    """

    trace_id: int = 0
    parent: SpanContext | None = None
    links: Sequence[Link] = ()
    events: Sequence[Event] = ()
    attributes: Mapping[str, AttributeValue] | None = None


#: Hook called on the export thread with the exchange whose span is being built.
Annotator = Callable[[Exchange], Annotation | None]


def exchange_key(ex: Exchange) -> ids.ExchangeKey | None:
    """The id-derivation key of an exchange with a query (None for an unmatched response)."""
    q = ex.query
    if q is None:
        return None
    m = q.meta
    qu = q.msg.question
    if qu is None:
        return ids.exchange_key(m.src, m.sport, q.msg.id, "", 0, 0, m.transport)
    return ids.exchange_key(m.src, m.sport, q.msg.id, qu.name, qu.qtype, qu.qclass, m.transport)


class SpanBuilder:
    """Builds the contract's ``ReadableSpan`` for an exchange (export thread only)."""

    def __init__(
        self,
        enricher: Enricher,
        resource: Resource,
        scope: InstrumentationScope,
        node: str = "",
        parent_resolver: ParentResolver | None = None,
        annotator: Annotator | None = None,
    ) -> None:
        self._enricher = enricher
        self._resource = resource
        self._scope = scope
        self._node = node
        self._parent_resolver = parent_resolver
        self._annotator = annotator

    def build(self, ex: Exchange, trace_id: int = 0) -> ReadableSpan | None:
        q = ex.query
        if q is None:
            return None
        r = ex.response
        qm = q.meta
        msg = q.msg
        question = msg.question
        key = exchange_key(ex)
        assert key is not None
        tid = trace_id or ids.trace_id(key)
        client_sid = ids.client_span_id(key)
        parent: SpanContext | None = None
        if ex.role == ROLE_SERVER:
            sid = ids.server_span_id(key)
            parent = SpanContext(tid, client_sid, is_remote=True, trace_flags=_SAMPLED)
            kind = SpanKind.SERVER
        else:
            sid = client_sid
            kind = SpanKind.CLIENT
        if self._parent_resolver is not None:
            try:
                p = self._parent_resolver(ex)
            except Exception:
                log.warning("parent resolver failed", exc_info=True)
                p = None
            if p is not None:
                parent, tid = p, p.trace_id
        ann: Annotation | None = None
        if self._annotator is not None:
            try:
                ann = self._annotator(ex)
            except Exception:
                log.warning("span annotator failed", exc_info=True)
            if ann is not None:
                if ann.parent is not None:
                    parent, tid = ann.parent, ann.parent.trace_id
                elif ann.trace_id:
                    tid = ann.trace_id
                    if parent is not None:
                        parent = SpanContext(
                            tid, parent.span_id, is_remote=parent.is_remote, trace_flags=_SAMPLED
                        )

        qtype = type_name(question.qtype) if question is not None else "0"
        attrs: dict[str, AttributeValue] = {}
        if question is not None:
            attrs[sc.DNS_QUESTION_NAME] = question.name
        attrs[sc.DNS_QUESTION_TYPE] = qtype
        attrs[sc.DNS_ID] = msg.id
        if r is None:
            end = qm.ts_ns + ex.timeout_ns
            attrs[sc.ERROR_TYPE] = sc.ERROR_TYPE_TIMEOUT
            status = Status(StatusCode.ERROR, sc.ERROR_TYPE_TIMEOUT)
            attrs[sc.DNS_FLAGS_RECURSION_DESIRED] = bool(msg.rd)
        else:
            end = r.meta.ts_ns
            rm = r.msg
            rcode = rcode_name(rm.rcode)
            attrs[sc.DNS_RESPONSE_CODE] = rcode
            if rm.rcode != 0:
                attrs[sc.ERROR_TYPE] = rcode
                status = Status(StatusCode.ERROR, rcode)
            else:
                status = _UNSET
            attrs[sc.DNS_ANSWERS] = list(rm.addresses)
            attrs[sc.DNS_ANSWER_COUNT] = rm.ancount
            attrs[sc.DNS_ANSWER_CNAMES] = list(rm.cnames)
            if rm.min_ttl is not None:
                attrs[sc.DNS_ANSWER_MIN_TTL] = rm.min_ttl
            attrs[sc.DNS_FLAGS_TRUNCATED] = bool(rm.tc)
            attrs[sc.DNS_FLAGS_AUTHORITATIVE] = bool(rm.aa)
            attrs[sc.DNS_FLAGS_RECURSION_DESIRED] = bool(rm.rd)
            attrs[sc.DNS_FLAGS_RECURSION_AVAILABLE] = bool(rm.ra)
        enr = self._enricher
        attrs[sc.SERVER_ADDRESS] = qm.dst
        attrs[sc.SERVER_PORT] = qm.dport
        attrs[sc.CLIENT_ADDRESS] = qm.src
        attrs[sc.CLIENT_PORT] = qm.sport
        attrs[sc.NETWORK_TRANSPORT] = TRANSPORT_NAMES.get(qm.transport) or str(qm.transport)
        attrs[sc.NETWORK_TYPE] = "ipv6" if qm.ipv6 else "ipv4"
        attrs[sc.DNS_NAMESERVER] = enr.endpoint(qm.dst, qm.dport)
        attrs[sc.DNS_CLIENT] = enr.endpoint(qm.src, qm.sport)
        wl = enr.workload(qm.netns)
        node = wl.node or self._node
        if node:
            attrs[sc.K8S_NODE_NAME] = node
        if wl.namespace:
            attrs[sc.K8S_NAMESPACE_NAME] = wl.namespace
        if wl.pod:
            attrs[sc.K8S_POD_NAME] = wl.pod
        if wl.container:
            attrs[sc.K8S_CONTAINER_NAME] = wl.container
        attrs[sc.DNSOTEL_NETNS_ID] = qm.netns
        attrs[sc.DNS_RETRANSMITS] = ex.retransmits
        events: list[Event] = (
            [Event(sc.SPAN_EVENT_RETRANSMISSION, timestamp=ts) for ts in ex.retransmit_ts_ns]
            if ex.retransmit_ts_ns
            else []
        )
        if r is not None and r.msg.tc and qm.transport == IPPROTO_UDP:
            events.append(Event(sc.SPAN_EVENT_TRUNCATED, timestamp=r.meta.ts_ns))
        links: Sequence[Link] = ()
        if ann is not None:
            if ann.attributes:
                attrs.update(ann.attributes)
            if ann.events:
                events.extend(ann.events)
                events.sort(key=lambda e: e.timestamp)
            links = ann.links
        return ReadableSpan(
            name=sc.SPAN_NAME_PREFIX + qtype,
            context=SpanContext(tid, sid, is_remote=False, trace_flags=_SAMPLED),
            parent=parent,
            resource=self._resource,
            attributes=attrs,
            events=events,
            links=links,
            kind=kind,
            status=status,
            start_time=qm.ts_ns,
            end_time=end,
            instrumentation_scope=self._scope,
        )


class SpanPipeline:
    """Bounded queue of exchanges + the export thread (see module docstring).

    Counters: ``dropped_full`` (queue full; written by the capture thread only),
    ``dropped_export`` (export failed or spans left at shutdown; export thread only),
    ``exported`` (export thread only). Separate counters per writer thread, so no
    increment is lost without a lock.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        builder: SpanBuilder,
        *,
        max_queue: int = 8192,
        batch_size: int = 512,
        delay_s: float = 1.0,
    ) -> None:
        self._exporter = exporter
        self._builder = builder
        self._max = max_queue
        self._batch = batch_size
        self._delay = delay_s
        self._q: deque[tuple[Exchange, int]] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self.dropped_full = 0
        self.dropped_export = 0
        self._dropped_logged = 0
        self._next_drop_log = 0.0
        self.exported = 0
        self.build_errors = 0
        self._thread = threading.Thread(target=self._run, name="dnsotel-spans", daemon=True)
        self._thread.start()

    # capture thread
    def offer(self, ex: Exchange, trace_id: int = 0) -> bool:
        q = self._q
        n = len(q)
        if n >= self._max or self._stopping:
            self.dropped_full += 1
            return False
        q.append((ex, trace_id))
        if n + 1 == self._batch:
            self._wake.set()
        return True

    @property
    def queued(self) -> int:
        return len(self._q)

    # export thread
    DROP_LOG_INTERVAL_S = 30.0

    def _run(self) -> None:
        while True:
            self._wake.wait(self._delay)
            self._wake.clear()
            self._drain()
            self._report_drops()
            if self._stopping:
                self._drain()
                self._report_drops(force=True)
                return

    def _report_drops(self, force: bool = False) -> None:
        """One warning per interval while spans are being lost, with the counts (never per span)."""
        dropped = self.dropped_full + self.dropped_export
        now = time.monotonic()
        if dropped == self._dropped_logged or (not force and now < self._next_drop_log):
            return
        log.warning(
            "spans dropped",
            extra={
                "dropped_total": dropped,
                "dropped_queue_full": self.dropped_full,
                "dropped_export_failed": self.dropped_export,
                "exported_total": self.exported,
                "queued": len(self._q),
            },
        )
        self._dropped_logged = dropped
        self._next_drop_log = now + self.DROP_LOG_INTERVAL_S

    def _drain(self) -> None:
        q = self._q
        while q:
            batch: list[ReadableSpan] = []
            while q and len(batch) < self._batch:
                ex, tid = q.popleft()
                try:
                    span = self._builder.build(ex, tid)
                except Exception:
                    self.build_errors += 1
                    self.dropped_export += 1
                    log.warning("could not build a span for %r", ex, exc_info=True)
                    continue
                if span is not None:
                    batch.append(span)
            if not batch:
                continue
            try:
                res = self._exporter.export(batch)
            except Exception:
                log.warning("span export raised", exc_info=True)
                res = SpanExportResult.FAILURE
            if res is SpanExportResult.SUCCESS:
                self.exported += len(batch)
            else:
                self.dropped_export += len(batch)

    def shutdown(self, timeout_s: float) -> None:
        """Export what is queued within ``timeout_s``; then stop the exporter (aborting retries)."""
        deadline = time.monotonic() + timeout_s
        self._stopping = True
        self._wake.set()
        self._thread.join(max(0.0, timeout_s * 0.8))
        if self._thread.is_alive():
            log.warning("span export did not finish in %.1fs; aborting (collector down or slow?)", timeout_s)
        try:
            self._exporter.shutdown()  # aborts the SDK exporter's retry back-off, closes the channel
        except Exception:
            log.warning("span exporter shutdown failed", exc_info=True)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        left = len(self._q)
        if left and not self._thread.is_alive():
            self._q.clear()
            self.dropped_export += left
