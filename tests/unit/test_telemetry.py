"""TelemetrySink: spans and metrics of the contract, received by a real OTLP gRPC endpoint.

Exchanges are built from dnspython wire messages decoded by ``exporter.dns.decode``; the
sink exports to ``tests.otlp_receiver`` (the collector's protobuf services, served with
grpcio on 127.0.0.1) and the tests read the protobuf the receiver got.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import dns.rcode
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.trace.v1 import trace_pb2

from exporter.enrich import Workload, raw_endpoint
from exporter.records import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    ROLE_CLIENT,
    ROLE_SERVER,
    Exchange,
)
from exporter.telemetry import ids
from exporter.telemetry import semconv as sc
from exporter.telemetry.metrics import TopNames
from exporter.telemetry.otlp import ExporterConfigError, make_metric_exporter, make_span_exporter
from exporter.telemetry.sink import TelemetrySink, build_resource
from tests import dnsmsg
from tests.otlp_receiver import OtlpHttpReceiver, OtlpReceiver, ReceivedSpan, attributes

T0 = 1_700_000_000_000_000_000  # wall-clock ns
MS = 1_000_000
POD_NETNS = 4026532001
DNS_NETNS = 4026532002
POD_IP, SVC_IP, COREDNS_IP = "10.244.1.7", "10.96.0.10", "10.244.2.3"


class FakeEnricher:
    """What the Kubernetes enricher answers, for two pods."""

    names: ClassVar[dict[tuple[str, int], str]] = {
        (SVC_IP, 53): "s/kube-system/kube-dns:53",
        (COREDNS_IP, 53): "p/kube-system/coredns-abc:53",
    }
    workloads: ClassVar[dict[int, Workload]] = {
        POD_NETNS: Workload(node="node-a", namespace="default", pod="web-1", container="app"),
        DNS_NETNS: Workload(node="node-b", namespace="kube-system", pod="coredns-abc", container="coredns"),
    }

    def endpoint(self, addr: str, port: int) -> str:
        if addr == POD_IP:
            return f"p/default/web-1:{port}"
        return self.names.get((addr, port)) or raw_endpoint(addr, port)

    def workload(self, netns: int) -> Workload:
        return self.workloads.get(netns, Workload())


# --- building exchanges from real wire messages -----------------------------------------------


def make_exchange(
    *,
    name: str = "www.example.com.",
    qtype: str = "A",
    qid: int = 0x1234,
    rcode: int = 0,
    addrs: tuple[str, ...] = ("192.0.2.1", "192.0.2.2"),
    cname: str | None = None,
    latency_ns: int = 2 * MS,
    answered: bool = True,
    role: str = ROLE_CLIENT,
    client: tuple[str, int] = (POD_IP, 40000),
    server: tuple[str, int] = (SVC_IP, 53),
    netns: int = POD_NETNS,
    transport: int = IPPROTO_UDP,
    t0: int = T0,
    retransmit_ts: tuple[int, ...] = (),
    timeout_ns: int = 5_000 * MS,
) -> Exchange:
    q = dnsmsg.query(name, qtype, qid)
    r = (
        dnsmsg.response(q, rcode, addrs if rcode == 0 else (), cname=cname, cname_ttl=130)
        if answered
        else None
    )
    return dnsmsg.exchange(
        q,
        r,
        t0=t0,
        latency_ns=latency_ns,
        netns=netns,
        client=client,
        server=server,
        role=role,
        transport=transport,
        retransmit_ts=retransmit_ts,
        timeout_ns=timeout_ns,
    )


def feed(sink: TelemetrySink, ex: Exchange) -> None:
    if ex.response is None:
        sink.on_unanswered(ex)
    else:
        sink.on_response(ex)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def grpc_span_exporter(r: OtlpReceiver, timeout: float = 2.0) -> OTLPSpanExporter:
    return OTLPSpanExporter(endpoint=r.endpoint, insecure=True, timeout=timeout)


def grpc_metric_exporter(r: OtlpReceiver, timeout: float = 2.0) -> OTLPMetricExporter:
    return OTLPMetricExporter(endpoint=r.endpoint, insecure=True, timeout=timeout)


def new_sink(r: OtlpReceiver | None, **kw: Any) -> TelemetrySink:
    kw.setdefault("node", "node-a")
    kw.setdefault("span_delay_s", 0.05)
    kw.setdefault("metric_interval_s", 3600.0)
    if r is not None:
        kw.setdefault("span_exporter", grpc_span_exporter(r))
        kw.setdefault("metric_exporter", grpc_metric_exporter(r))
    return TelemetrySink(FakeEnricher(), **kw)


def by_name_and_type(spans: list[ReceivedSpan]) -> dict[tuple[str, str], ReceivedSpan]:
    return {(s.attributes[sc.DNS_QUESTION_NAME], s.attributes[sc.DNS_QUESTION_TYPE]): s for s in spans}


# --- spans --------------------------------------------------------------------------------------


def test_span_contract_for_every_kind_of_exchange(receiver: OtlpReceiver) -> None:
    sink = new_sink(receiver)
    exchanges = {
        "ok": make_exchange(name="ok.example.com.", retransmit_ts=(T0 + 1 * MS,), cname="cdn.example.net."),
        "nx": make_exchange(name="nx.example.com.", rcode=dns.rcode.NXDOMAIN, qid=2),
        "sf": make_exchange(name="sf.example.com.", rcode=dns.rcode.SERVFAIL, qid=3, latency_ns=7 * MS),
        "un": make_exchange(name="un.example.com.", answered=False, qid=4, timeout_ns=5_000 * MS),
        "slow": make_exchange(name="slow.example.com.", qid=5, latency_ns=250 * MS),
        "v6tcp": make_exchange(
            name="v6.example.com.",
            qtype="AAAA",
            qid=6,
            addrs=("2001:db8::1",),
            role=ROLE_SERVER,
            client=("fd00::7", 51000),
            server=("fd00::53", 53),
            netns=DNS_NETNS,
            transport=IPPROTO_TCP,
        ),
    }
    for ex in exchanges.values():
        feed(sink, ex)
    spans = by_name_and_type(receiver.wait_spans(len(exchanges)))
    sink.shutdown(5)
    assert len(spans) == len(exchanges)

    ok = spans[("ok.example.com.", "A")]
    s = ok.span
    assert s.name == "DNS A"
    assert s.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert (s.start_time_unix_nano, s.end_time_unix_nano) == (T0, T0 + 2 * MS)
    assert s.status.code == trace_pb2.Status.STATUS_CODE_UNSET
    assert ok.scope == sc.INSTRUMENTATION_SCOPE
    assert ok.resource[sc.RESOURCE_SERVICE_NAME] == "dnsotel"
    assert ok.resource[sc.K8S_NODE_NAME] == "node-a"
    assert sc.RESOURCE_HOST_NAME in ok.resource
    assert ok.attributes == {
        sc.DNS_QUESTION_NAME: "ok.example.com.",
        sc.DNS_QUESTION_TYPE: "A",
        sc.DNS_RESPONSE_CODE: "NOERROR",
        sc.DNS_ID: 0x1234,
        sc.DNS_ANSWERS: ["192.0.2.1", "192.0.2.2"],
        sc.DNS_ANSWER_COUNT: 3,
        sc.DNS_ANSWER_CNAMES: ["cdn.example.net."],
        sc.DNS_ANSWER_MIN_TTL: 30,
        sc.DNS_FLAGS_TRUNCATED: False,
        sc.DNS_FLAGS_AUTHORITATIVE: False,
        sc.DNS_FLAGS_RECURSION_DESIRED: True,
        sc.DNS_FLAGS_RECURSION_AVAILABLE: True,
        sc.SERVER_ADDRESS: SVC_IP,
        sc.SERVER_PORT: 53,
        sc.CLIENT_ADDRESS: POD_IP,
        sc.CLIENT_PORT: 40000,
        sc.NETWORK_TRANSPORT: "udp",
        sc.NETWORK_TYPE: "ipv4",
        sc.DNS_NAMESERVER: "s/kube-system/kube-dns:53",
        sc.DNS_CLIENT: "p/default/web-1:40000",
        sc.K8S_NODE_NAME: "node-a",
        sc.K8S_NAMESPACE_NAME: "default",
        sc.K8S_POD_NAME: "web-1",
        sc.K8S_CONTAINER_NAME: "app",
        sc.DNSOTEL_NETNS_ID: POD_NETNS,
        sc.DNS_RETRANSMITS: 1,
    }
    assert [(e.name, e.time_unix_nano) for e in s.events] == [(sc.SPAN_EVENT_RETRANSMISSION, T0 + MS)]
    assert len(s.trace_id) == 16 and len(s.span_id) == 8 and s.parent_span_id == b""

    for key, rcode in ((("nx.example.com.", "A"), "NXDOMAIN"), (("sf.example.com.", "A"), "SERVFAIL")):
        e = spans[key]
        assert e.span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
        assert e.span.status.message == rcode
        assert e.attributes[sc.DNS_RESPONSE_CODE] == rcode
        assert e.attributes[sc.ERROR_TYPE] == rcode
        assert e.attributes[sc.DNS_ANSWERS] == []
        assert e.attributes[sc.DNS_ANSWER_COUNT] == 0
    assert spans[("sf.example.com.", "A")].span.end_time_unix_nano == T0 + 7 * MS

    un = spans[("un.example.com.", "A")]
    assert un.span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert un.span.status.message == "timeout"
    assert un.attributes[sc.ERROR_TYPE] == "timeout"
    assert sc.DNS_RESPONSE_CODE not in un.attributes
    assert sc.DNS_ANSWERS not in un.attributes
    assert (un.span.start_time_unix_nano, un.span.end_time_unix_nano) == (T0, T0 + 5_000 * MS)

    slow = spans[("slow.example.com.", "A")]
    assert slow.span.end_time_unix_nano - slow.span.start_time_unix_nano == 250 * MS
    assert slow.span.status.code == trace_pb2.Status.STATUS_CODE_UNSET

    v6 = spans[("v6.example.com.", "AAAA")]
    assert v6.span.name == "DNS AAAA"
    assert v6.span.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert v6.attributes[sc.NETWORK_TYPE] == "ipv6"
    assert v6.attributes[sc.NETWORK_TRANSPORT] == "tcp"
    assert v6.attributes[sc.DNS_ANSWERS] == ["2001:db8::1"]
    assert v6.attributes[sc.SERVER_ADDRESS] == "fd00::53"
    assert v6.attributes[sc.DNS_NAMESERVER] == "r/[fd00::53]:53"
    assert v6.attributes[sc.DNS_CLIENT] == "r/[fd00::7]:51000"
    assert v6.attributes[sc.K8S_NODE_NAME] == "node-b"  # the observing netns' node
    assert v6.attributes[sc.K8S_POD_NAME] == "coredns-abc"
    assert v6.attributes[sc.DNSOTEL_NETNS_ID] == DNS_NETNS
    assert sink.spans_exported == len(exchanges)
    assert sink.spans_dropped == 0


def test_client_and_server_spans_share_the_trace(receiver: OtlpReceiver) -> None:
    """The pod's span (node a) and CoreDNS' span (node b, after Service NAT) form one trace."""
    client_sink = new_sink(receiver, node="node-a")
    server_sink = new_sink(receiver, node="node-b")
    for i in range(3):
        common: dict[str, Any] = dict(name=f"svc{i}.default.svc.cluster.local.", qid=100 + i, t0=T0 + i * MS)
        client_sink.on_response(make_exchange(**common, role=ROLE_CLIENT, server=(SVC_IP, 53)))
        server_sink.on_response(
            make_exchange(
                **common, role=ROLE_SERVER, server=(COREDNS_IP, 53), netns=DNS_NETNS, latency_ns=1 * MS
            )
        )
    spans = receiver.wait_spans(6)
    client_sink.shutdown(5)
    server_sink.shutdown(5)
    assert len(spans) == 6
    clients = {
        s.attributes[sc.DNS_ID]: s.span for s in spans if s.span.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    }
    servers = {
        s.attributes[sc.DNS_ID]: s.span for s in spans if s.span.kind == trace_pb2.Span.SPAN_KIND_SERVER
    }
    assert clients.keys() == servers.keys() == {100, 101, 102}
    for qid, c in clients.items():
        srv = servers[qid]
        assert srv.trace_id == c.trace_id
        assert srv.parent_span_id == c.span_id
        assert srv.span_id != c.span_id
        assert c.parent_span_id == b""
    assert len({c.trace_id for c in clients.values()}) == 3
    # the ids are the documented derivation
    key = ids.exchange_key(POD_IP, 40000, 100, "svc0.default.svc.cluster.local.", 1, 1, IPPROTO_UDP)
    assert clients[100].trace_id == ids.trace_id(key).to_bytes(16, "big")
    assert clients[100].span_id == ids.client_span_id(key).to_bytes(8, "big")
    assert servers[100].span_id == ids.server_span_id(key).to_bytes(8, "big")


def test_ids_are_never_zero_and_differ_per_key() -> None:
    keys = [ids.exchange_key("10.0.0.1", p, 7, "a.", 1, 1, 17) for p in range(2000)]
    tids = {ids.trace_id(k) for k in keys}
    assert len(tids) == 2000 and 0 not in tids
    assert all(
        0 < ids.client_span_id(k) < 1 << 64 and ids.server_span_id(k) != ids.client_span_id(k) for k in keys
    )


def test_sampling_keeps_every_anomaly_at_ratio_zero(receiver: OtlpReceiver) -> None:
    sink = new_sink(receiver, sample_ratio=0.0, slow_ns=100 * MS)
    for i in range(300):
        sink.on_response(make_exchange(qid=i, client=(POD_IP, 30000 + i)))  # normal: never a span
    anomalies = [
        make_exchange(name="nx.example.", rcode=dns.rcode.NXDOMAIN),
        make_exchange(name="sf.example.", rcode=dns.rcode.SERVFAIL),
        make_exchange(name="refused.example.", rcode=dns.rcode.REFUSED),
        make_exchange(name="un.example.", answered=False),
        make_exchange(name="slow.example.", latency_ns=100 * MS),  # at the threshold counts as slow
    ]
    for ex in anomalies:
        feed(sink, ex)
    sink.shutdown(5)
    names = sorted(s.attributes[sc.DNS_QUESTION_NAME] for s in receiver.spans())
    assert names == sorted(["nx.example.", "sf.example.", "refused.example.", "un.example.", "slow.example."])


def test_sampling_keeps_about_the_ratio_and_two_nodes_agree(receiver: OtlpReceiver) -> None:
    n = 4000
    sinks = [new_sink(receiver, sample_ratio=0.25, node=f"n{j}", max_queue=n) for j in range(2)]
    for i in range(n):
        for j, sink in enumerate(sinks):
            role = ROLE_CLIENT if j == 0 else ROLE_SERVER
            sink.on_response(make_exchange(qid=i % 65536, client=(POD_IP, 20000 + i), role=role))
    for sink in sinks:
        sink.shutdown(10)
    spans = receiver.spans()
    client = {s.attributes[sc.CLIENT_PORT] for s in spans if s.span.kind == trace_pb2.Span.SPAN_KIND_CLIENT}
    server = {s.attributes[sc.CLIENT_PORT] for s in spans if s.span.kind == trace_pb2.Span.SPAN_KIND_SERVER}
    assert client == server  # same decision for both ends of every exchange
    # binomial(4000, 0.25): mean 1000, sd 27.4 -> +-5 sd
    assert 863 <= len(client) <= 1137, len(client)


def test_rate_cap_drops_and_counts(receiver: OtlpReceiver) -> None:
    now = [0]
    sink = new_sink(receiver, span_rate_limit=10, clock=lambda: now[0])
    for i in range(50):
        sink.on_response(make_exchange(qid=i, rcode=dns.rcode.SERVFAIL))
    assert sink.spans_dropped == 40  # a burst of one second's worth passes
    now[0] += 500 * MS  # half a second refills 5 tokens
    for i in range(50, 60):
        sink.on_response(make_exchange(qid=i, rcode=dns.rcode.SERVFAIL))
    assert sink.spans_dropped == 45
    sink.shutdown(5)
    assert len(receiver.spans()) == 15
    m = receiver.wait_metrics()
    assert m[sc.METRIC_SPANS_DROPPED].sum.data_points[0].as_int == 45
    assert m[sc.METRIC_SPANS_EXPORTED].sum.data_points[0].as_int == 15


# --- metrics ------------------------------------------------------------------------------------


def expected_buckets(values: list[float]) -> list[int]:
    counts = [0] * (len(sc.LOOKUP_DURATION_BUCKETS) + 1)
    for v in values:  # OTLP explicit buckets: (previous bound, bound]
        counts[bisect.bisect_left(sc.LOOKUP_DURATION_BUCKETS, v)] += 1
    return counts


def test_histogram_counters_and_health_exact(receiver: OtlpReceiver) -> None:
    sink = new_sink(receiver, span_exporter=None)
    lat = {
        dns.rcode.NOERROR: [0.00005, 0.0001, 0.0003, 0.002, 0.002, 0.09, 1.5, 12.0],
        dns.rcode.NXDOMAIN: [0.0009, 0.001, 0.03],
        dns.rcode.SERVFAIL: [4.0],
    }
    for rcode, values in lat.items():
        for i, v in enumerate(values):
            sink.on_response(make_exchange(qid=i, rcode=rcode, latency_ns=round(v * 1e9)))
    for _ in range(4):
        sink.on_unanswered(make_exchange(answered=False))
    sink.on_unmatched(make_exchange().response, ROLE_CLIENT)  # type: ignore[arg-type]
    sink.health.register(sc.METRIC_CAPTURE_LOST, lambda: 7)
    sink.health.register(sc.METRIC_DECODE_ERRORS, lambda: {"truncated": 2, "bad_pointer": 1})
    sink.health.register(sc.METRIC_PAIRS_PENDING, lambda: 12)
    with pytest.raises(ValueError):
        sink.health.register("dnsotel.nonsense", lambda: 1)
    assert sink.export_metrics()
    m = receiver.wait_metrics()
    sink.shutdown(5)

    hist = m[sc.METRIC_LOOKUP_DURATION]
    assert hist.unit == "s"
    assert hist.histogram.aggregation_temporality == 2  # CUMULATIVE
    points = {attributes(p.attributes)[sc.DNS_RESPONSE_CODE]: p for p in hist.histogram.data_points}
    assert set(points) == {"NOERROR", "NXDOMAIN", "SERVFAIL"}
    for rcode, values in lat.items():
        p = points[dns.rcode.to_text(rcode)]
        assert list(p.explicit_bounds) == list(sc.LOOKUP_DURATION_BUCKETS)
        assert list(p.bucket_counts) == expected_buckets(values)
        assert p.count == len(values)
        assert p.sum == pytest.approx(sum(values), rel=1e-9)
        assert p.min == pytest.approx(min(values)) and p.max == pytest.approx(max(values))
    assert attributes(points["NXDOMAIN"].attributes) == {
        sc.DNS_ROLE: "client",
        sc.DNS_QUESTION_TYPE: "A",
        sc.DNS_RESPONSE_CODE: "NXDOMAIN",
        sc.ERROR_TYPE: "NXDOMAIN",
        sc.SERVER_ADDRESS: SVC_IP,
        sc.DNS_NAMESERVER: "s/kube-system/kube-dns:53",
        sc.NETWORK_TRANSPORT: "udp",
        sc.K8S_NAMESPACE_NAME: "default",
        sc.K8S_POD_NAME: "web-1",
    }
    assert sc.ERROR_TYPE not in attributes(points["NOERROR"].attributes)

    un = m[sc.METRIC_QUERIES_UNANSWERED].sum
    assert un.is_monotonic and [p.as_int for p in un.data_points] == [4]
    assert attributes(un.data_points[0].attributes)[sc.ERROR_TYPE] == "timeout"
    assert set(attributes(un.data_points[0].attributes)) == set(sc.UNANSWERED_ATTRIBUTES)
    um = m[sc.METRIC_RESPONSES_UNMATCHED].sum.data_points
    assert [p.as_int for p in um] == [1]
    assert attributes(um[0].attributes) == {
        sc.DNS_ROLE: "client",
        sc.SERVER_ADDRESS: SVC_IP,
        sc.K8S_NAMESPACE_NAME: "default",
        sc.K8S_POD_NAME: "web-1",
    }
    # health: every one present, at zero unless a source says otherwise
    for name in (
        sc.METRIC_CAPTURE_PACKETS,
        sc.METRIC_PAIRS_EVICTED,
        sc.METRIC_SPANS_EXPORTED,
        sc.METRIC_SPANS_DROPPED,
        sc.METRIC_NETNS_ATTACHED,
    ):
        data = m[name].gauge if name in sc.GAUGES else m[name].sum
        assert [p.as_int for p in data.data_points] == [0], name
    assert m[sc.METRIC_CAPTURE_LOST].sum.data_points[0].as_int == 7
    assert m[sc.METRIC_PAIRS_PENDING].gauge.data_points[0].as_int == 12
    errs = {attributes(p.attributes)["reason"]: p.as_int for p in m[sc.METRIC_DECODE_ERRORS].sum.data_points}
    assert errs == {"truncated": 2, "bad_pointer": 1}


def test_metrics_are_cumulative_across_exports(receiver: OtlpReceiver) -> None:
    sink = new_sink(receiver, span_exporter=None)
    for _ in range(3):
        sink.on_response(make_exchange(rcode=dns.rcode.NXDOMAIN))
    assert sink.export_metrics()
    for _ in range(2):
        sink.on_response(make_exchange(rcode=dns.rcode.NXDOMAIN))
    sink.shutdown(5)  # the final export
    counts = [
        p.count
        for req in receiver.metric_requests
        for rm in req.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == sc.METRIC_LOOKUP_DURATION
        for p in metric.histogram.data_points
    ]
    assert counts == [3, 5]


def test_cardinality_cap_folds_overflow_and_keeps_totals(receiver: OtlpReceiver) -> None:
    sink = new_sink(receiver, span_exporter=None, max_series=5)
    for i in range(20):
        for _ in range(i + 1):
            sink.on_response(make_exchange(server=(f"10.0.0.{i}", 53)))
    assert sink.export_metrics()
    sink.shutdown(5)
    points = receiver.latest_metrics()[sc.METRIC_LOOKUP_DURATION].histogram.data_points
    assert len(points) == 6
    overflow = [p for p in points if attributes(p.attributes) == {sc.METRIC_OVERFLOW_ATTRIBUTE: True}]
    assert len(overflow) == 1
    assert overflow[0].count == sum(range(6, 21))
    assert sum(p.count for p in points) == sum(range(1, 21))
    assert sink.aggregates.overflowed == sum(range(6, 21))


def test_top_names_bounded_and_folded(receiver: OtlpReceiver) -> None:
    wall = [T0]
    sink = new_sink(
        receiver, span_exporter=None, top_names=2, metric_interval_s=60, wall_clock=lambda: wall[0]
    )
    # interval 1: first-come admission fills the 2 slots
    for name, n in (("a.example.", 5), ("b.example.", 1), ("c.example.", 50), ("d.example.", 9)):
        for _ in range(n):
            sink.on_response(make_exchange(name=name))
    assert sink.export_metrics()
    first = {
        attributes(p.attributes)[sc.DNS_QUESTION_NAME]: p.count
        for p in receiver.latest_metrics()[sc.METRIC_LOOKUP_DURATION].histogram.data_points
    }
    assert first == {"a.example.": 5, "b.example.": 1, sc.OTHER_NAME: 59}
    # interval 2: the two most frequent names of interval 1 (c, d) are admitted
    wall[0] += 60 * 10**9
    assert sink.export_metrics()  # the interval ends at this collection
    for name in ("a.example.", "c.example.", "d.example.", "e.example."):
        sink.on_response(make_exchange(name=name))
    assert sink.export_metrics()
    sink.shutdown(5)
    second = {
        attributes(p.attributes)[sc.DNS_QUESTION_NAME]: p.count
        for p in receiver.latest_metrics()[sc.METRIC_LOOKUP_DURATION].histogram.data_points
    }
    assert second == {"a.example.": 5, "b.example.": 1, "c.example.": 1, "d.example.": 1, sc.OTHER_NAME: 61}


def test_top_names_memory_is_bounded() -> None:
    top = TopNames(10)
    for i in range(100_000):
        top.admit("hot.example." if i % 3 == 0 else f"n{i}.example.")
        assert len(top._counts) <= top.capacity
    assert top.rotate()[0] == "hot.example."


# --- resilience ---------------------------------------------------------------------------------


def test_collector_down_never_blocks_and_export_resumes(receiver: OtlpReceiver) -> None:
    sink = new_sink(receiver, max_queue=1000, span_exporter=grpc_span_exporter(receiver, timeout=1.0))
    sink.on_response(make_exchange(name="before.example.", rcode=dns.rcode.NXDOMAIN))
    assert len(receiver.wait_spans(1)) == 1
    receiver.stop()
    n = 20_000
    exchanges = [make_exchange(qid=i % 65536, rcode=dns.rcode.SERVFAIL) for i in range(n)]
    worst = 0.0
    start = time.perf_counter()
    for ex in exchanges:
        t = time.perf_counter()
        sink.on_response(ex)
        worst = max(worst, time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    # Blocking on the exporter would take its timeout (1 s) or retry back-off (~1 s). What
    # remains is GIL hand-off to/from the export thread (tens of ms at worst, collector up or down).
    assert worst < 0.3, f"an on_response call took {worst * 1e3:.1f} ms while the collector was down"
    assert elapsed < 5.0, elapsed
    assert sink.spans_dropped >= n - 1000 - 512  # the queue holds 1000, one batch may be in flight
    time.sleep(1.5)  # the in-flight export fails (timeout 1 s): those are dropped too
    dropped_while_down = sink.spans_dropped
    assert dropped_while_down >= n - 1000
    receiver.start()  # same port
    sink.on_response(make_exchange(name="after.example.", rcode=dns.rcode.NXDOMAIN))
    assert receiver.wait(
        lambda: any(s.attributes[sc.DNS_QUESTION_NAME] == "after.example." for s in receiver.spans()), 15
    ), "spans did not resume after the collector came back"
    t = time.monotonic()
    sink.shutdown(5)
    assert time.monotonic() - t < 5.5
    print(
        f"\n20k on_response with the collector down: {elapsed * 1e6 / n:.2f} µs each,"
        f" worst {worst * 1e3:.2f} ms"
    )


def test_shutdown_is_bounded_when_collector_is_down_or_slow(receiver: OtlpReceiver) -> None:
    receiver.delay_s = 3.0  # slow collector
    sink = new_sink(receiver, span_exporter=grpc_span_exporter(receiver, timeout=10))
    for i in range(100):
        sink.on_response(make_exchange(qid=i, rcode=dns.rcode.SERVFAIL))
    time.sleep(0.2)  # the export thread is now stuck in a slow Export call
    t = time.monotonic()
    sink.shutdown(3)
    took = time.monotonic() - t
    assert took < 4.0, took
    receiver.delay_s = 0
    receiver.stop()  # down collector
    sink = new_sink(receiver, span_exporter=grpc_span_exporter(receiver, timeout=10))
    for i in range(100):
        sink.on_response(make_exchange(qid=i, rcode=dns.rcode.SERVFAIL))
    t = time.monotonic()
    sink.shutdown(3)
    took = time.monotonic() - t
    assert took < 4.0, took
    assert sink.spans_dropped == 100


def test_unavailable_collector_drops_are_counted(
    receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="exporter.telemetry.spans")
    receiver.mode = "unavailable"
    sink = new_sink(receiver, span_exporter=grpc_span_exporter(receiver, timeout=0.5))
    for i in range(10):
        sink.on_response(make_exchange(qid=i, rcode=dns.rcode.REFUSED))
    assert receiver.wait(lambda: sink.spans_dropped == 10, 10)
    receiver.mode = "ok"
    sink.on_response(make_exchange(qid=99, rcode=dns.rcode.REFUSED))
    assert len(receiver.wait_spans(1)) == 1
    sink.shutdown(5)
    assert receiver.refused >= 1 and sink.spans_exported == 1
    # the loss is said in dnsotel's own log, with the counts, not once per span
    warnings = [r for r in caplog.records if r.getMessage() == "spans dropped"]
    assert 1 <= len(warnings) <= 2
    assert max(getattr(w, "dropped_total", 0) for w in warnings) == 10


# --- configuration ------------------------------------------------------------------------------


def test_protocol_selection_and_http_protobuf_export(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(make_span_exporter({}), OTLPSpanExporter)
    assert isinstance(make_metric_exporter({}), OTLPMetricExporter)
    assert isinstance(make_span_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}), HttpSpanExporter)
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}
    assert isinstance(make_span_exporter(env), OTLPSpanExporter)
    with pytest.raises(ExporterConfigError, match="http/json"):
        make_span_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})

    with OtlpHttpReceiver() as http:
        # the SDK exporter reads its endpoint from the standard variable itself
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", http.endpoint)
        sink = TelemetrySink(
            FakeEnricher(),
            span_exporter=make_span_exporter(),
            metric_exporter=make_metric_exporter(),
            span_delay_s=0.05,
            metric_interval_s=3600,
        )
        sink.on_response(make_exchange(rcode=dns.rcode.NXDOMAIN))
        spans = http.wait_spans(1)
        sink.shutdown(5)
        assert [s.span.name for s in spans] == ["DNS A"]
        assert spans[0].attributes[sc.DNS_RESPONSE_CODE] == "NXDOMAIN"
        m = http.wait_metrics()
        assert m[sc.METRIC_LOOKUP_DURATION].histogram.data_points[0].count == 1
        assert set(http.content_types) == {"application/x-protobuf"}


def test_resource_honours_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    r = build_resource("node-z").attributes
    assert r[sc.RESOURCE_SERVICE_NAME] == "dnsotel" and r[sc.K8S_NODE_NAME] == "node-z"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "dns-prod")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,k8s.cluster.name=c1")
    r = build_resource("node-z").attributes
    assert r[sc.RESOURCE_SERVICE_NAME] == "dns-prod"
    assert r["deployment.environment"] == "prod" and r["k8s.cluster.name"] == "c1"


def test_concurrent_capture_and_collection_lose_nothing(receiver: OtlpReceiver) -> None:
    sink = new_sink(receiver, span_exporter=None)
    n = 30_000
    ex = make_exchange()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            sink.collect()

    t = threading.Thread(target=reader)
    t.start()
    for _ in range(n):
        sink.on_response(ex)
    stop.set()
    t.join()
    assert sink.export_metrics()
    sink.shutdown(5)
    (p,) = receiver.latest_metrics()[sc.METRIC_LOOKUP_DURATION].histogram.data_points
    assert p.count == n and sum(p.bucket_counts) == n


if os.environ.get("DNSOTEL_TEST_DEBUG"):  # pragma: no cover
    import logging

    logging.basicConfig(level=logging.DEBUG)


def test_build_telemetry_from_settings(receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.config import Settings
    from exporter.telemetry.runtime import build_telemetry

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    tel = build_telemetry(
        Settings(
            node_name="node-q", otlp_configured=True, span_sample_ratio=0.0, metrics_export_interval_s=3600
        ),
        FakeEnricher(),
    )
    tel.sink.on_response(make_exchange(rcode=dns.rcode.NXDOMAIN))
    tel.sink.on_response(make_exchange(qid=9))  # ratio 0: no span
    tel.close()
    spans = receiver.spans()
    assert [s.attributes[sc.DNS_RESPONSE_CODE] for s in spans] == ["NXDOMAIN"]
    assert spans[0].resource[sc.K8S_NODE_NAME] == "node-q"
    assert receiver.latest_metrics()[sc.METRIC_LOOKUP_DURATION].histogram.data_points[0].count == 1
