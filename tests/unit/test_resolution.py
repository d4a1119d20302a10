"""One trace per resolution: upstream children, search-list expansion, TCP retries (issue 5).

Packets are real wire messages (dnspython) decoded by ``exporter.dns.decode``, fed in time
order through the real :class:`~exporter.pairing.Pairer` into a :class:`TelemetrySink`
whose spans land in an in-memory exporter. The assertions are what a user reads in Tempo:
trace ids, parent span ids, kinds, attributes, events and links.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from exporter.capture.events import (
    KIND_PAIR,
    KIND_QUERY_NOTICE,
    KIND_SUPERSEDED,
    PENDING_KEY,
    PENDING_VAL,
    QMAX,
    QueryInfo,
)
from exporter.enrich import PlainEnricher
from exporter.kpairing import KernelPairedEngine
from exporter.pairing import Pairer
from exporter.records import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    PACKET_HOST,
    PACKET_OUTGOING,
    ROLE_CLIENT,
    ROLE_SERVER,
    DnsPacket,
    Exchange,
    PairSink,
    Segment,
)
from exporter.telemetry import ids
from exporter.telemetry import semconv as sc
from exporter.telemetry.resolution import (
    ResolutionTracker,
    ResolvConf,
    ResolvConfReader,
    parse_resolv_conf,
    search_try_name,
)
from exporter.telemetry.sink import TelemetrySink, span_delay_s_from_env
from tests import dnsmsg

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
POD_NS, RES_NS, POD2_NS, UP_NS = 4026530001, 4026530002, 4026530003, 4026530004
POD, POD2, RES, RES_UP, UPSTREAM = "198.18.1.2", "198.18.2.2", "198.18.1.1", "198.18.100.1", "198.18.100.2"
SEARCH = ("default.svc.cluster.lab", "svc.cluster.lab", "cluster.lab")
K8S_RESOLV = (
    "nameserver 198.18.1.1\nsearch default.svc.cluster.lab svc.cluster.lab cluster.lab\noptions ndots:5\n"
)


# --- plumbing ---------------------------------------------------------------------------------
class MemoryExporter(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def fake_proc(root: Path, procs: dict[int, tuple[int, str | None]]) -> str:
    """A /proc tree: pid -> (netns inode, resolv.conf text or None for unreadable)."""
    for pid, (ino, text) in procs.items():
        d = root / str(pid)
        (d / "ns").mkdir(parents=True)
        os.symlink(f"net:[{ino}]", d / "ns" / "net")
        if text is not None:
            (d / "root" / "etc").mkdir(parents=True)
            (d / "root" / "etc" / "resolv.conf").write_text(text)
    return str(root)


class Node:
    """One exporter: pairer -> telemetry sink (with its resolution tracker) -> memory."""

    def __init__(self, proc_root: str | None = None, **kw: object) -> None:
        self.mem = MemoryExporter()
        reader = ResolvConfReader(proc_root, background=False) if proc_root else None
        self.tracker = ResolutionTracker(resolv_conf=reader, **kw)  # type: ignore[arg-type]
        self.sink = TelemetrySink(
            PlainEnricher("node"),
            span_exporter=self.mem,
            metric_interval_s=3600.0,
            span_delay_s=30.0,  # built at shutdown: after every packet, like a busy exporter
            resolution=self.tracker,
        )
        self.pairer = Pairer(self.sink)

    def feed(self, *pkts: DnsPacket) -> None:
        for p in sorted(pkts, key=lambda p: p.meta.ts_ns):
            self.pairer.feed(p)

    def spans(self) -> list[ReadableSpan]:
        self.pairer.flush()
        self.sink.shutdown(5.0)
        return sorted(self.mem.spans, key=lambda s: s.start_time or 0)


# raw wire bytes of every packet the tests build (id(packet) -> (packet, bytes)), for KernelNode
RAW: dict[int, tuple[DnsPacket, bytes]] = {}
_TableKey = tuple[int, str, str, int, int]  # netns, role, client address, client port, DNS id


def _raw16(addr: str) -> bytes:
    if ":" in addr:
        return socket.inet_pton(socket.AF_INET6, addr)
    return socket.inet_pton(socket.AF_INET, addr) + bytes(12)


def _question_len(wire: bytes) -> tuple[int, int]:
    """(question bytes, name bytes) of the first question of ``wire``."""
    off = 12
    while wire[off]:
        off += wire[off] + 1
    namelen = off + 1 - 12
    return namelen + 4, namelen


class _Pending:
    def __init__(self, pkt: DnsPacket, raw: bytes) -> None:
        self.pkt, self.raw = pkt, raw
        self.rts: list[int] = []
        self.noticed = False


class _FakeCapture:
    """What KernelPairedEngine.expire_kernel uses of EbpfCapture: the kernel table as bytes."""

    wall_offset_ns = 0
    aggregating = False  # in-kernel aggregation: tests/lab/test_kernel_aggregation.py

    def __init__(self, table: dict[_TableKey, _Pending]) -> None:
        self.table = table
        self.by_key: dict[bytes, _TableKey] = {}

    def _val(self, p: _Pending) -> bytes:
        m, raw = p.pkt.meta, p.raw
        qlen, namelen = _question_len(raw)
        msg = raw[:4] + b"\x00\x01" + bytes(6) + raw[12 : 12 + qlen]
        rts = [*p.rts, 0, 0, 0, 0][:4]
        ipver = 6 if m.ipv6 else 4
        return PENDING_VAL.pack(
            m.ts_ns, *rts, _raw16(m.dst), len(p.rts), m.ifindex, m.dport, qlen, namelen, m.pkt_type, ipver,
            msg.ljust(12 + QMAX, b"\x00"), int(p.noticed),
        )  # fmt: skip

    def pending_entries(self) -> list[tuple[bytes, bytes]]:
        out = []
        for k, p in self.table.items():
            netns, role, src, sport, qid = k
            key = PENDING_KEY.pack(
                netns, qid, sport, _raw16(src), 0 if role == ROLE_CLIENT else 1, IPPROTO_UDP
            )
            self.by_key[key] = k
            out.append((key, self._val(p)))
        return out

    def take_pending(self, key: bytes) -> bytes | None:
        p = self.table.pop(self.by_key[key], None)
        return None if p is None else self._val(p)

    def counters(self) -> dict[str, int]:
        return {}


class KernelNode(Node):
    """The same exporter with kernel pairing: a model of bpf/dns.bpf.c's kpair() turns the
    packets into the records KernelPairedEngine gets (QUERY_NOTICE for a server-side query
    when the resolver sends an upstream query for its question, or when it arrives while
    one is in flight; PAIR, SUPERSEDED; unanswered ones expire through a fake kernel table).
    TCP and responses the model does not pair go to the engine's user-space pairer, as
    PACKET records would."""

    def __init__(self, proc_root: str | None = None, *, also: Sequence[PairSink] = (), **kw: object) -> None:
        super().__init__(proc_root, **kw)
        self.engine = KernelPairedEngine([*also, self.sink], timeout_ns=self.tracker.timeout_ns)
        self.table: dict[_TableKey, _Pending] = {}
        # the kernel's "serving" map: (netns, question) -> [earliest pending server query, upstream seen]
        self.serving: dict[tuple[int, tuple[str, int, int] | None], _TableKey] = {}
        self.engine.capture = _FakeCapture(self.table)  # type: ignore[assignment]
        self.pairer = self.engine.pairer

    def feed(self, *pkts: DnsPacket) -> None:
        eng = self.engine
        for p in sorted(pkts, key=lambda p: p.meta.ts_ns):
            raw = RAW[id(p)][1]
            m = p.meta
            seg = Segment(m, raw, len(raw))
            if m.transport != IPPROTO_UDP:
                eng.pairer.feed(p)
            elif not raw[2] & 0x80:  # query
                role = ROLE_CLIENT if m.pkt_type == PACKET_OUTGOING else ROLE_SERVER
                key = (m.netns, role, m.src, m.sport, p.msg.id)
                old = self.table.get(key)
                if old is not None and old.pkt.msg.question == p.msg.question:
                    old.rts.append(m.ts_ns)
                    continue
                new = self.table[key] = _Pending(p, raw)
                qu = p.msg.question
                sk = (m.netns, (qu.name, qu.qtype, qu.qclass) if qu is not None else None)
                serving = self.serving.get(sk)
                sp = self.table.get(serving) if serving is not None else None
                if sp is not None and sp.pkt.msg.question != p.msg.question:
                    sp = None
                if old is not None:
                    info = QueryInfo(m.ts_ns, len(old.rts), tuple(old.rts[:4]), "", 0, 0, 0, 0, b"")
                    eng.on_paired(KIND_SUPERSEDED, Segment(old.pkt.meta, old.raw, len(old.raw)), info)
                if role == ROLE_SERVER:
                    if sp is None:
                        self.serving[sk] = key
                    else:
                        new.noticed = True  # a second server query pending for the question
                # an upstream query, or a second server query, while the question is served:
                # announce the earliest server query (once), then the new server query
                if sp is not None and not sp.noticed:
                    sp.noticed = True
                    eng.on_paired(KIND_QUERY_NOTICE, Segment(sp.pkt.meta, sp.raw, len(sp.raw)), None)
                if new.noticed:
                    eng.on_paired(KIND_QUERY_NOTICE, seg, None)
            else:
                role = ROLE_SERVER if m.pkt_type == PACKET_OUTGOING else ROLE_CLIENT
                key = (m.netns, role, m.dst, m.dport, p.msg.id)
                q = self.table.get(key)
                if q is None or q.pkt.msg.question != p.msg.question:
                    eng.pairer.feed(p)
                    continue
                del self.table[key]
                qm = q.pkt.meta
                flags = (q.raw[2] << 8) | q.raw[3]
                rts = tuple(q.rts[:4])
                info = QueryInfo(
                    qm.ts_ns, len(q.rts), rts, qm.dst, qm.ifindex, qm.dport, flags, qm.pkt_type, b""
                )
                eng.on_paired(KIND_PAIR, seg, info)

    def spans(self) -> list[ReadableSpan]:
        self.engine.finish()
        return super().spans()


MakeNode = Callable[..., Node]


@pytest.fixture(params=["user", "kernel"])
def make_node(request: pytest.FixtureRequest) -> MakeNode:
    """Node (user-space pairing) or KernelNode (kernel pairing): both must give the same spans."""
    return Node if request.param == "user" else KernelNode


@pytest.fixture
def node(make_node: MakeNode) -> Iterator[Node]:
    n = make_node()
    yield n
    n.sink.shutdown(1.0)


class Wire:
    """Query/response packets of one exchange as seen in the namespaces it crosses."""

    def __init__(
        self,
        name: str,
        qtype: str = "A",
        *,
        qid: int,
        client: tuple[str, int],
        server: tuple[str, int],
        transport: int = IPPROTO_UDP,
        rcode: int = 0,
        addrs: tuple[str, ...] = ("10.1.2.3",),
        tc: bool = False,
    ) -> None:
        self.q = dnsmsg.query(name, qtype, qid)
        r = dnsmsg.response(self.q, rcode, addrs if rcode == 0 and not tc else (), tc=tc)
        self.qwire = dnsmsg.wire(self.q)
        self.rwire = dnsmsg.wire(r)
        self.client, self.server, self.transport = client, server, transport

    def _packet(self, ts_ms: float, netns: int, sent: bool, reply: bool) -> DnsPacket:
        src, dst = (self.server, self.client) if reply else (self.client, self.server)
        pkt_type = PACKET_OUTGOING if sent else PACKET_HOST
        m = dnsmsg.meta(T0 + int(ts_ms * MS), netns, pkt_type, src, dst, self.transport)
        raw = self.rwire if reply else self.qwire
        pkt = dnsmsg.packet(m, raw)
        RAW[id(pkt)] = (pkt, raw)
        return pkt

    def query(self, ts_ms: float, netns: int, *, sent: bool) -> DnsPacket:
        """The query seen leaving (``sent``: the client's netns) or arriving (the server's)."""
        return self._packet(ts_ms, netns, sent, False)

    def response(self, ts_ms: float, netns: int, *, sent: bool) -> DnsPacket:
        return self._packet(ts_ms, netns, sent, True)

    def client_side(self, t_q: float, t_r: float, netns: int) -> list[DnsPacket]:
        return [self.query(t_q, netns, sent=True), self.response(t_r, netns, sent=False)]

    def server_side(self, t_q: float, t_r: float, netns: int) -> list[DnsPacket]:
        return [self.query(t_q, netns, sent=False), self.response(t_r, netns, sent=True)]

    def key(self) -> bytes:
        (ca, cp), qq = self.client, self.q.question[0]
        return ids.exchange_key(
            ca, cp, self.q.id, qq.name.to_text().lower(), qq.rdtype, qq.rdclass, self.transport
        )


def sid(s: ReadableSpan) -> int:
    assert s.context is not None
    return int(s.context.span_id)


def tid(s: ReadableSpan) -> int:
    assert s.context is not None
    return int(s.context.trace_id)


def parent_sid(s: ReadableSpan) -> int | None:
    return s.parent.span_id if s.parent is not None else None


NAME = "www.example.ok.lab."


def resolution(
    qid: int = 0x1234, port: int = 40000, up_id: int = 0x9999, up_port: int = 5555
) -> tuple[Wire, Wire]:
    pod = Wire(NAME, qid=qid, client=(POD, port), server=(RES, 53))
    up = Wire(NAME, qid=up_id, client=(RES_UP, up_port), server=(UPSTREAM, 53))
    return pod, up


def resolution_packets(pod: Wire, up: Wire, t: float = 0.0) -> list[DnsPacket]:
    """pod -> resolver (cache miss) -> upstream answering after 40 ms -> resolver -> pod."""
    return [
        *pod.client_side(t + 0.0, t + 41.0, POD_NS),
        *pod.server_side(t + 0.1, t + 40.9, RES_NS),
        *up.client_side(t + 0.3, t + 40.6, RES_NS),
    ]


# --- upstream children -----------------------------------------------------------------------
def test_client_resolver_upstream_is_one_trace_with_nested_spans(node: Node) -> None:
    pod, up = resolution()
    node.feed(*resolution_packets(pod, up))
    spans = node.spans()
    assert len(spans) == 3
    client, server, upstream = spans
    assert [s.kind for s in spans] == [SpanKind.CLIENT, SpanKind.SERVER, SpanKind.CLIENT]
    assert {tid(s) for s in spans} == {ids.trace_id(pod.key())}
    assert client.parent is None
    assert parent_sid(server) == sid(client) == ids.client_span_id(pod.key())
    assert parent_sid(upstream) == sid(server) == ids.server_span_id(pod.key())
    assert sid(upstream) == ids.client_span_id(up.key())  # its own derived id: the upstream can parent to it
    assert upstream.attributes is not None and upstream.attributes[sc.SERVER_ADDRESS] == UPSTREAM
    assert upstream.attributes[sc.CLIENT_ADDRESS] == RES_UP
    # durations nest
    assert client.start_time is not None and client.end_time is not None
    assert server.start_time is not None and server.end_time is not None
    assert upstream.start_time is not None and upstream.end_time is not None
    assert client.start_time < server.start_time < upstream.start_time
    assert upstream.end_time < server.end_time < client.end_time
    assert upstream.end_time - upstream.start_time >= 40 * MS
    assert not upstream.links
    assert node.tracker.stats.upstream_children == 1


def test_cached_answer_has_no_child(node: Node) -> None:
    pod, up = resolution()
    again = Wire(NAME, qid=0x4321, client=(POD, 40001), server=(RES, 53))
    node.feed(
        *resolution_packets(pod, up),
        *again.client_side(100.0, 100.4, POD_NS),
        *again.server_side(100.1, 100.3, RES_NS),
    )
    spans = node.spans()
    traces: dict[int, list[ReadableSpan]] = {}
    for s in spans:
        traces.setdefault(tid(s), []).append(s)
    assert sorted(len(v) for v in traces.values()) == [2, 3]
    cached = traces[ids.trace_id(again.key())]
    assert [s.kind for s in cached] == [SpanKind.CLIENT, SpanKind.SERVER]
    assert parent_sid(cached[1]) == sid(cached[0])


def test_two_exporters_on_two_nodes_agree_on_trace_and_parents(make_node: MakeNode) -> None:
    pod, up = resolution()
    pkts = resolution_packets(pod, up)
    a, b = make_node(), make_node()
    a.feed(*[p for p in pkts if p.meta.netns == POD_NS])
    b.feed(*[p for p in pkts if p.meta.netns == RES_NS])
    (client,) = a.spans()
    server, upstream = b.spans()
    assert tid(client) == tid(server) == tid(upstream)
    assert parent_sid(server) == sid(client)
    assert parent_sid(upstream) == sid(server)
    assert server.parent is not None and server.parent.is_remote


def test_upstream_query_for_another_question_or_netns_is_its_own_trace(node: Node) -> None:
    pod, _ = resolution()
    other_q = Wire("other.ok.lab.", qid=0x7777, client=(RES_UP, 5556), server=(UPSTREAM, 53))
    other_ns = Wire(NAME, qid=0x7778, client=(RES_UP, 5557), server=(UPSTREAM, 53))
    aaaa = Wire(NAME, "AAAA", qid=0x7779, client=(RES_UP, 5558), server=(UPSTREAM, 53), addrs=("fd00::1",))
    node.feed(
        *pod.server_side(0.0, 50.0, RES_NS),
        *other_q.client_side(1.0, 2.0, RES_NS),
        *other_ns.client_side(1.0, 2.0, POD2_NS),
        *aaaa.client_side(1.0, 2.0, RES_NS),
    )
    ups = [s for s in node.spans() if s.kind == SpanKind.CLIENT]
    assert sorted(tid(s) for s in ups) == sorted(ids.trace_id(w.key()) for w in (other_q, other_ns, aaaa))
    assert all(s.parent is None for s in ups)


def test_answered_or_expired_server_query_is_no_parent(make_node: MakeNode) -> None:
    node = make_node(timeout_ns=100 * MS)
    pod, _ = resolution()
    late = Wire(NAME, qid=0x5555, client=(RES_UP, 6000), server=(UPSTREAM, 53))
    node.feed(*pod.server_side(0.0, 5.0, RES_NS), *late.client_side(10.0, 12.0, RES_NS))
    stale = Wire(NAME, qid=0x1111, client=(POD, 41000), server=(RES, 53))
    late2 = Wire(NAME, qid=0x5556, client=(RES_UP, 6001), server=(UPSTREAM, 53))
    # the server query is never answered; the upstream query comes after the pairing timeout
    node.feed(stale.query(1000.0, RES_NS, sent=False), *late2.client_side(1200.0, 1201.0, RES_NS))
    spans = node.spans()
    ups = [s for s in spans if s.attributes and s.attributes[sc.CLIENT_ADDRESS] == RES_UP]
    assert len(ups) == 2
    assert all(s.parent is None for s in ups)
    assert node.tracker.stats.upstream_children == 0


def test_coalesced_clients_one_upstream_parented_to_earliest_others_linked(node: Node) -> None:
    clients = [
        Wire(NAME, qid=0x100 + i, client=(f"198.18.{i + 1}.2", 40000 + i), server=(RES, 53))
        for i in range(10)
    ]
    up = Wire(NAME, qid=0x9999, client=(RES_UP, 5555), server=(UPSTREAM, 53))
    pkts: list[DnsPacket] = []
    # two arrive before the upstream query leaves (dnsmasq-like), eight while it is in flight (unbound)
    times = [0.0, 0.05, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7]
    for i, (w, t) in enumerate(zip(clients, times, strict=True)):
        pkts += w.server_side(t, 41.0 + i * 0.01, RES_NS)
    pkts += up.client_side(0.2, 40.5, RES_NS)
    node.feed(*pkts)
    spans = node.spans()
    (upstream,) = [s for s in spans if s.kind == SpanKind.CLIENT]
    first = clients[0]
    assert tid(upstream) == ids.trace_id(first.key())
    assert parent_sid(upstream) == ids.server_span_id(first.key())
    linked = {(lk.context.trace_id, lk.context.span_id) for lk in upstream.links}
    assert linked == {(ids.trace_id(w.key()), ids.server_span_id(w.key())) for w in clients[1:]}
    assert all(lk.attributes and lk.attributes[sc.SPAN_LINK_REASON] == "coalesced" for lk in upstream.links)
    # the linked spans exist as server spans of their own traces
    servers = {(tid(s), sid(s)) for s in spans if s.kind == SpanKind.SERVER}
    assert linked < servers


def test_chain_on_one_node_joins_the_upstream_server_side(node: Node) -> None:
    """node-local cache -> CoreDNS on the same node: the second server span joins the trace."""
    pod, up = resolution()
    node.feed(*resolution_packets(pod, up), *up.server_side(0.35, 40.55, UP_NS))
    spans = node.spans()
    assert len(spans) == 4
    assert {tid(s) for s in spans} == {ids.trace_id(pod.key())}
    (up_server,) = [s for s in spans if s.attributes and s.attributes[sc.DNSOTEL_NETNS_ID] == UP_NS]
    assert up_server.kind == SpanKind.SERVER
    assert parent_sid(up_server) == ids.client_span_id(up.key())


# --- search-list expansion -------------------------------------------------------------------
def search_sequence(client: tuple[str, int] = (POD, 40000), qtype: str = "A") -> list[Wire]:
    """getaddrinfo("www.example.ok.lab") with ndots:5: three NXDOMAIN tries, then the name as given."""
    names = [NAME + s + "." for s in SEARCH] + [NAME]
    return [
        Wire(
            n,
            qtype,
            qid=(0x200 if qtype == "A" else 0x400) + i,
            client=client,
            server=(RES, 53),
            rcode=0 if i == 3 else 3,
            addrs=("fd00::1",) if qtype == "AAAA" else ("10.1.2.3",),
        )
        for i, n in enumerate(names)
    ]


def feed_sequence(node: Node, wires: list[Wire], netns: int = POD_NS, server_ns: int | None = None) -> None:
    pkts: list[DnsPacket] = []
    for i, w in enumerate(wires):
        t = i * 2.0
        pkts += w.client_side(t, t + 1.0, netns)
        if server_ns is not None:
            pkts += w.server_side(t + 0.1, t + 0.9, server_ns)
    node.feed(*pkts)


def marks(spans: list[ReadableSpan]) -> list[tuple[str, object, object]]:
    out: list[tuple[str, object, object]] = []
    for s in spans:
        a = s.attributes or {}
        out.append(
            (
                str(a[sc.DNS_QUESTION_NAME]),
                a.get(sc.DNS_SEARCH_EXPANSION_INDEX),
                a.get(sc.DNS_SEARCH_EXPANSION_ORIGINAL_NAME),
            )
        )
    return out


EXPECTED_MARKS = [(NAME + s + ".", i, NAME) for i, s in enumerate(SEARCH)] + [(NAME, 3, NAME)]


def test_search_expansion_from_resolv_conf(tmp_path: Path, make_node: MakeNode) -> None:
    node = make_node(fake_proc(tmp_path, {1: (999, None), 77: (POD_NS, K8S_RESOLV)}))
    feed_sequence(node, search_sequence())
    spans = node.spans()
    assert marks(spans) == EXPECTED_MARKS
    assert spans[-1].attributes is not None and spans[-1].attributes[sc.DNS_RESPONSE_CODE] == "NOERROR"


def test_search_expansion_marks_the_resolver_side_too(tmp_path: Path, make_node: MakeNode) -> None:
    node = make_node(fake_proc(tmp_path, {77: (POD_NS, K8S_RESOLV)}))
    feed_sequence(node, search_sequence(), server_ns=RES_NS)
    spans = node.spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    clients = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert marks(clients) == EXPECTED_MARKS
    assert marks(servers) == EXPECTED_MARKS
    assert all(parent_sid(s) == sid(c) for s, c in zip(servers, clients, strict=True))


def test_search_expansion_heuristic_without_resolv_conf(node: Node) -> None:
    feed_sequence(node, search_sequence())
    assert marks(node.spans()) == EXPECTED_MARKS


def test_search_expansion_heuristic_on_a_resolver_that_does_not_see_the_client(node: Node) -> None:
    wires = search_sequence()
    pkts: list[DnsPacket] = []
    for i, w in enumerate(wires):
        pkts += w.server_side(i * 2.0, i * 2.0 + 1.0, RES_NS)
    node.feed(*pkts)
    assert marks(node.spans()) == EXPECTED_MARKS


def test_search_expansion_parallel_a_and_aaaa_are_separate_sequences(
    tmp_path: Path, make_node: MakeNode
) -> None:
    for proc in (fake_proc(tmp_path, {77: (POD_NS, K8S_RESOLV)}), None):
        node = make_node(proc)
        a, aaaa = search_sequence(qtype="A"), search_sequence(qtype="AAAA")
        pkts: list[DnsPacket] = []
        for i, (w4, w6) in enumerate(zip(a, aaaa, strict=True)):
            pkts += w4.client_side(i * 2.0, i * 2.0 + 1.0, POD_NS)
            pkts += w6.client_side(i * 2.0 + 0.01, i * 2.0 + 1.1, POD_NS)
        node.feed(*pkts)
        spans = node.spans()
        for qtype in ("A", "AAAA"):
            assert marks([s for s in spans if s.name == f"DNS {qtype}"]) == EXPECTED_MARKS


def test_name_with_ndots_dots_is_tried_as_is_first(tmp_path: Path, make_node: MakeNode) -> None:
    node = make_node(fake_proc(tmp_path, {77: (POD_NS, K8S_RESOLV)}))
    name = "a.b.c.d.e.nx.lab."  # 6 dots >= ndots:5: as is first, then the search list
    names = [name] + [name + s + "." for s in SEARCH]
    wires = [
        Wire(n, qid=0x300 + i, client=(POD, 40000), server=(RES, 53), rcode=3) for i, n in enumerate(names)
    ]
    feed_sequence(node, wires)
    assert marks(node.spans()) == [(n, i, name) for i, n in enumerate(names)]


def test_answered_fqdn_and_unrelated_queries_are_not_marked(tmp_path: Path, make_node: MakeNode) -> None:
    for proc in (fake_proc(tmp_path / "p", {77: (POD_NS, K8S_RESOLV)}), None):
        node = make_node(proc)
        wires = [
            Wire("a.b.c.d.e.ok.lab.", qid=1, client=(POD, 40000), server=(RES, 53)),  # >= ndots, answered
            Wire("foo.nx.lab.", qid=2, client=(POD, 40000), server=(RES, 53), rcode=3),  # trailing dot, NX
            Wire("bar.ok.lab.", qid=3, client=(POD, 40000), server=(RES, 53)),  # different name
            Wire("api.other.svc.lab.", qid=4, client=(POD, 40000), server=(RES, 53)),
        ]
        feed_sequence(node, wires)
        assert all(m[1] is None and m[2] is None for m in marks(node.spans())), marks(node.spans())


def test_known_empty_search_list_disables_the_heuristic(tmp_path: Path, make_node: MakeNode) -> None:
    node = make_node(fake_proc(tmp_path, {77: (POD_NS, "nameserver 198.18.1.1\n")}))
    feed_sequence(node, search_sequence())
    assert all(m[1] is None for m in marks(node.spans()))


def test_resolver_upstream_queries_are_not_search_tries(tmp_path: Path, make_node: MakeNode) -> None:
    node = make_node(fake_proc(tmp_path, {50: (RES_NS, K8S_RESOLV)}))  # the resolver's own resolv.conf
    pod = Wire(NAME + SEARCH[0] + ".", qid=1, client=(POD, 40000), server=(RES, 53), rcode=3)
    up = Wire(NAME + SEARCH[0] + ".", qid=2, client=(RES_UP, 5555), server=(UPSTREAM, 53), rcode=3)
    node.feed(*pod.server_side(0.0, 2.0, RES_NS), *up.client_side(0.1, 1.9, RES_NS))
    (upstream,) = [s for s in node.spans() if s.kind == SpanKind.CLIENT]
    assert upstream.attributes is not None and sc.DNS_SEARCH_EXPANSION_INDEX not in upstream.attributes
    assert parent_sid(upstream) == ids.server_span_id(pod.key())


# --- truncation and TCP retry -----------------------------------------------------------------
def test_truncated_udp_then_tcp_retry_event_and_link(node: Node) -> None:
    udp = Wire("big.tc.lab.", qid=0xAAAA, client=(POD, 40000), server=(RES, 53), tc=True)
    tcp = Wire("big.tc.lab.", qid=0xBBBB, client=(POD, 41000), server=(RES, 53), transport=IPPROTO_TCP)
    node.feed(*udp.client_side(0.0, 1.0, POD_NS), *tcp.client_side(1.5, 3.0, POD_NS))
    u, t = node.spans()
    assert u.attributes is not None and u.attributes[sc.NETWORK_TRANSPORT] == "udp"
    assert [(e.name, e.timestamp) for e in u.events] == [(sc.SPAN_EVENT_TRUNCATED, T0 + 1 * MS)]
    assert u.attributes[sc.DNS_FLAGS_TRUNCATED] is True
    (ev,) = t.events
    assert ev.name == "tcp_retry_after_truncation"
    assert dict(ev.attributes or {}) == {
        sc.DNS_ID: 0xAAAA,
        sc.CLIENT_PORT: 40000,
        sc.NETWORK_TRANSPORT: "udp",
    }
    (link,) = t.links
    assert (link.context.trace_id, link.context.span_id) == (tid(u), sid(u))


def test_tcp_retry_link_on_the_server_side_and_only_for_the_same_client(node: Node) -> None:
    udp = Wire("big.tc.lab.", qid=0xAAAA, client=(POD, 40000), server=(RES, 53), tc=True)
    tcp = Wire("big.tc.lab.", qid=0xBBBB, client=(POD, 41000), server=(RES, 53), transport=IPPROTO_TCP)
    other = Wire("big.tc.lab.", qid=0xCCCC, client=(POD2, 41000), server=(RES, 53), transport=IPPROTO_TCP)
    node.feed(
        *udp.server_side(0.0, 1.0, RES_NS),
        *tcp.server_side(1.5, 3.0, RES_NS),
        *other.server_side(1.6, 3.1, RES_NS),
    )
    spans = node.spans()
    u, t, o = spans
    assert (t.links[0].context.span_id, t.links[0].context.trace_id) == (sid(u), tid(u))
    assert sid(u) == ids.server_span_id(udp.key())
    assert not o.links and not o.events


def test_retransmissions_are_events(node: Node) -> None:
    w = Wire("slow.ok.lab.", qid=7, client=(POD, 40000), server=(RES, 53))
    node.feed(
        w.query(0.0, POD_NS, sent=True),
        w.query(1000.0, POD_NS, sent=True),
        w.response(1001.0, POD_NS, sent=False),
    )
    (s,) = node.spans()
    assert [e.name for e in s.events] == [sc.SPAN_EVENT_RETRANSMISSION]
    assert s.attributes is not None and s.attributes[sc.DNS_RETRANSMITS] == 1


# --- bounds, sampling, parsing ----------------------------------------------------------------
def test_tables_are_bounded_and_swept() -> None:
    tr = ResolutionTracker(max_entries=64, timeout_ns=100 * MS, grace_ns=100 * MS, sweep_ns=10 * MS)
    for i in range(2000):
        srv = Wire(f"n{i}.nx.lab.", qid=i, client=(POD, 1024 + i), server=(RES, 53), rcode=3, tc=True)
        up = Wire(f"n{i}.nx.lab.", qid=i, client=(RES_UP, 1024 + i), server=(UPSTREAM, 53))
        tr.on_query(srv.query(i * 0.01, RES_NS, sent=False), ROLE_SERVER, False)
        tr.on_query(up.query(i * 0.01, RES_NS, sent=True), ROLE_CLIENT, False)
        q = srv.query(i * 0.01, POD_NS, sent=True)
        tr.on_query(q, ROLE_CLIENT, False)
        tr.on_response(Exchange(q, srv.response(i * 0.01 + 0.001, POD_NS, sent=False), ROLE_CLIENT))
        assert all(n <= 64 for n in tr.table_sizes().values()), tr.table_sizes()
    assert tr.stats.dropped > 0
    late = Wire("late.ok.lab.", qid=1, client=(POD2, 9), server=(RES, 53))
    tr.on_query(late.query(10_000.0, POD2_NS, sent=False), ROLE_SERVER, False)
    sizes = tr.table_sizes()
    assert sizes["serving"] <= 64 and sizes["notes"] == 0 and sizes["wire"] == 0 and sizes["truncated"] == 0


def test_sampling_keeps_or_drops_a_resolution_together() -> None:
    kept_traces: set[int] = set()
    mem = MemoryExporter()
    sink = TelemetrySink(
        PlainEnricher(),
        span_exporter=mem,
        metric_interval_s=3600.0,
        span_delay_s=30.0,
        sample_ratio=0.5,
        slow_ns=10**12,
    )
    pairer = Pairer(sink)
    for i in range(40):
        pod, up = resolution(qid=i, port=30000 + i, up_id=1000 + i, up_port=20000 + i)
        for p in sorted(resolution_packets(pod, up, t=i * 100.0), key=lambda p: p.meta.ts_ns):
            pairer.feed(p)
    sink.shutdown(5.0)
    per_trace: dict[int, int] = {}
    for s in mem.spans:
        per_trace[tid(s)] = per_trace.get(tid(s), 0) + 1
    kept_traces = set(per_trace)
    assert 0 < len(kept_traces) < 40
    assert set(per_trace.values()) == {3}


def test_parse_resolv_conf() -> None:
    assert parse_resolv_conf(K8S_RESOLV) == ResolvConf(SEARCH, 5)
    text = "# c\ndomain Corp.Example.\nsearch a.example b.example. ; x\noptions rotate ndots:20 timeout:1\n"
    assert parse_resolv_conf(text) == ResolvConf(("a.example", "b.example"), 15)
    assert parse_resolv_conf("search x.lab\ndomain y.lab\noptions ndots:bad\n") == ResolvConf(("y.lab",), 1)
    assert parse_resolv_conf("") == ResolvConf((), 1)


def test_search_try_name_order() -> None:
    assert [search_try_name("w.", SEARCH, False, i) for i in range(5)] == [
        "w.default.svc.cluster.lab.",
        "w.svc.cluster.lab.",
        "w.cluster.lab.",
        "w.",
        None,
    ]
    assert search_try_name("a.b.", ("x",), True, 0) == "a.b."
    assert search_try_name("a.b.", ("x",), True, 1) == "a.b.x."


def test_resolv_conf_reader_in_background_and_cached(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {5: (111, None), 9: (POD_NS, K8S_RESOLV), 12: (POD_NS, "search other.lab\n")})
    reader = ResolvConfReader(proc)
    try:
        now = time.time_ns()
        assert reader.get(POD_NS, now) is None  # not loaded yet: asks the loader thread
        deadline = time.monotonic() + 5
        while reader.get(POD_NS, now) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reader.get(POD_NS, now) == ResolvConf(SEARCH, 5)  # lowest pid with a readable file
        assert reader.get(0, now) is None
        assert reader.get(111, now) is None
        loads = reader.loads
        for _ in range(100):
            reader.get(POD_NS, now)
        assert reader.loads == loads
    finally:
        reader.close()


def test_span_delay_from_env() -> None:
    assert span_delay_s_from_env({}) == 1.0
    assert span_delay_s_from_env({"OTEL_BSP_SCHEDULE_DELAY": "200"}) == 0.2
    assert span_delay_s_from_env({"OTEL_BSP_SCHEDULE_DELAY": "x"}) == 1.0


def test_resolv_conf_loaded_after_the_first_try_still_marks_the_sequence(
    tmp_path: Path, make_node: MakeNode
) -> None:
    """The background reader may answer between the first try and its NXDOMAIN."""
    node = make_node()
    reader = ResolvConfReader(fake_proc(tmp_path, {77: (POD_NS, K8S_RESOLV)}), background=False)
    wires = search_sequence()
    first = wires[0]
    node.feed(first.query(0.0, POD_NS, sent=True))  # no reader yet: nothing known
    node.tracker.resolv_conf = reader
    node.feed(first.response(1.0, POD_NS, sent=False))
    pkts: list[DnsPacket] = []
    for i, w in enumerate(wires[1:], start=1):
        pkts += w.client_side(i * 2.0, i * 2.0 + 1.0, POD_NS)
    node.feed(*pkts)
    assert marks(node.spans()) == EXPECTED_MARKS


# --- kernel pairing: QUERY_NOTICE records and packet identity ----------------------------------
class Recorder:
    """A PairSink that logs what the engine calls, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, DnsPacket | None, str]] = []
        self.exchanges: list[Exchange] = []

    def on_query(self, pkt: DnsPacket, role: str, retransmit: bool) -> None:
        assert not retransmit
        self.calls.append(("query", pkt, role))

    def on_response(self, ex: Exchange) -> None:
        self.calls.append(("response", ex.query, ex.role))
        self.exchanges.append(ex)

    def on_unanswered(self, ex: Exchange) -> None:
        self.calls.append(("unanswered", ex.query, ex.role))
        self.exchanges.append(ex)

    def on_unmatched(self, pkt: DnsPacket, role: str) -> None:
        self.calls.append(("unmatched", pkt, role))


def _name(pkt: DnsPacket | None) -> tuple[str, int]:
    assert pkt is not None and pkt.msg.question is not None
    return pkt.msg.question.name, pkt.meta.netns


def test_kernel_pairing_notices_server_queries_and_reuses_the_packet() -> None:
    rec = Recorder()
    node = KernelNode(also=[rec])
    pod, up = resolution()
    node.feed(*resolution_packets(pod, up))
    spans = node.spans()
    # the server query announced when the upstream query leaves; client queries just before
    # their exchanges
    assert [(c[0], c[2], c[1].meta.sport if c[1] else 0) for c in rec.calls] == [
        ("query", ROLE_SERVER, 40000),  # the notice (pod -> resolver, in the resolver's netns)
        ("query", ROLE_CLIENT, 5555),  # upstream, at its completion, with its own timestamp
        ("response", ROLE_CLIENT, 5555),
        ("response", ROLE_SERVER, 40000),
        ("query", ROLE_CLIENT, 40000),
        ("response", ROLE_CLIENT, 40000),
    ]
    assert rec.calls[3][1] is rec.calls[0][1]  # the exchange carries the announced packet
    assert rec.calls[2][1] is rec.calls[1][1]
    assert rec.calls[1][1] is not None and rec.calls[1][1].meta.ts_ns == T0 + int(0.3 * MS)
    assert node.engine.notices == 1 and node.engine.kernel_paired == 3 and not node.engine._noticed
    assert node.tracker.stats.upstream_children == 1
    assert node.tracker.table_sizes()["serving"] == 0 and node.tracker.table_sizes()["inflight"] == 0
    assert len(spans) == 3


_UPSTREAM_PORTS = itertools.count(6000)


def upstream_query(w: Wire, t_ms: float) -> DnsPacket:
    """The resolver's upstream query for ``w``'s question, leaving at ``t_ms`` (never answered)."""
    qu = w.q.question[0]
    up = Wire(qu.name.to_text(), qid=w.q.id, client=(RES_UP, next(_UPSTREAM_PORTS)), server=(UPSTREAM, 53))
    return up.query(t_ms, RES_NS, sent=True)


def test_kernel_pairing_announces_only_server_queries_that_go_upstream_or_queue() -> None:
    """A cache hit is never announced; an upstream query announces the server query it serves,
    a second pending server query announces both (earliest first)."""
    rec = Recorder()
    node = KernelNode(also=[rec])
    hit = Wire("hit.ok.lab.", qid=1, client=(POD, 43000), server=(RES, 53))
    miss = Wire("miss.ok.lab.", qid=2, client=(POD, 43001), server=(RES, 53))
    q1 = Wire("twice.ok.lab.", qid=3, client=(POD, 43002), server=(RES, 53))
    q2 = Wire("twice.ok.lab.", qid=4, client=(POD2, 43003), server=(RES, 53))
    node.feed(
        *hit.server_side(0.0, 0.05, RES_NS),
        *miss.server_side(1.0, 30.0, RES_NS),
        upstream_query(miss, 1.1),
        *q1.server_side(2.0, 20.0, RES_NS),
        *q2.server_side(3.0, 20.1, RES_NS),
    )
    announced = [(_name(c[1])[0], c[1].msg.id) for c in rec.calls if c[0] == "query" and c[2] == ROLE_SERVER]
    # the hit's query reaches the tracker only with its exchange (built from the PAIR record)
    assert announced[:3] == [("hit.ok.lab.", 1), ("miss.ok.lab.", 2), ("twice.ok.lab.", 3)]
    assert announced[3:] == [("twice.ok.lab.", 4)]
    assert node.engine.notices == 3
    assert [c[0] for c in rec.calls[:2]] == ["query", "response"]  # the hit: query + exchange at once


def test_kernel_pairing_unanswered_and_superseded_server_queries_keep_identity() -> None:
    rec = Recorder()
    node = KernelNode(also=[rec])
    lost = Wire("lost.ok.lab.", qid=7, client=(POD, 41000), server=(RES, 53))
    first = Wire("first.ok.lab.", qid=8, client=(POD, 41001), server=(RES, 53))
    second = Wire("second.ok.lab.", qid=8, client=(POD, 41001), server=(RES, 53))
    node.feed(
        lost.query(0.0, RES_NS, sent=False),
        upstream_query(lost, 0.1),
        first.query(1.0, RES_NS, sent=False),
        upstream_query(first, 1.1),
        *second.server_side(2.0, 3.0, RES_NS),  # same key, new question: first is superseded
        upstream_query(second, 2.1),
    )
    node.spans()  # expires the kernel table
    notices = [c[1] for c in rec.calls if c[0] == "query" and c[2] == ROLE_SERVER]
    assert [_name(p)[0] for p in notices] == ["lost.ok.lab.", "first.ok.lab.", "second.ok.lab."]
    done = {_name(ex.query)[0]: ex for ex in rec.exchanges if ex.role == ROLE_SERVER}
    assert done["first.ok.lab."].query is notices[1] and done["first.ok.lab."].response is None
    assert done["second.ok.lab."].query is notices[2] and done["second.ok.lab."].response is not None
    assert done["lost.ok.lab."].query is notices[0] and done["lost.ok.lab."].response is None
    # two server queries and the three upstream queries (never answered here)
    assert node.engine.kernel_superseded == 1 and node.engine.kernel_unanswered == 5
    assert not node.engine._noticed
    assert node.tracker.table_sizes()["serving"] == 0  # every pending server query was matched


def test_kernel_pairing_notice_table_is_bounded() -> None:
    rec = Recorder()
    node = KernelNode(also=[rec])
    node.engine.max_noticed = 2
    wires = [Wire(f"b{i}.ok.lab.", qid=i, client=(POD, 42000 + i), server=(RES, 53)) for i in range(3)]
    node.feed(
        *[
            p
            for i, w in enumerate(wires)
            for p in (w.query(i, RES_NS, sent=False), upstream_query(w, i + 0.1))
        ]
    )
    assert node.engine.notices_evicted == 1 and len(node.engine._noticed) == 2
    node.feed(*[w.response(10.0 + i, RES_NS, sent=True) for i, w in enumerate(wires)])
    # the evicted one is rebuilt from the PAIR record and announced just before its response
    assert [(c[0], _name(c[1])[0]) for c in rec.calls[3:5]] == [
        ("query", "b0.ok.lab."),
        ("response", "b0.ok.lab."),
    ]
    assert rec.calls[3][1] is rec.calls[4][1] and rec.calls[3][1] is not rec.calls[0][1]
    assert [c[1] for c in rec.calls[5:]] == [rec.calls[1][1], rec.calls[2][1]]
    assert not node.engine._noticed
