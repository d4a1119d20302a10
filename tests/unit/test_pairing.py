"""Pairing of DNS queries with responses: roles, keys, timeouts, retransmissions, bounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.pairing import Pairer, query_role, response_role
from exporter.records import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
    PACKET_UNKNOWN,
    ROLE_CLIENT,
    ROLE_SERVER,
    DnsPacket,
    Exchange,
    PacketMeta,
)

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC  # an arbitrary wall-clock start
TIMEOUT = 5 * SEC

A, AAAA, SRV = 1, 28, 33
IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, REFUSED = 0, 1, 2, 3, 5

POD = "10.244.1.7"
KUBE_DNS = "10.96.0.10"  # the Service address the pod sends to
COREDNS_POD = "10.244.0.3"  # the endpoint that answers (after DNAT, seen un-NATed by the client)
POD6 = "fd00:10:244:1::7"
KUBE_DNS6 = "fd00:10:96::a"


# -- test doubles: the decoder's Message/Question shapes, and a recording sink -------------


@dataclass(slots=True)
class Question:
    name: str
    qtype: int = A
    qclass: int = IN


@dataclass(slots=True)
class Message:
    """The attributes of ``exporter.dns.Message`` that pairing reads (and a few more)."""

    id: int
    qr: bool
    rcode: int = NOERROR
    question: Question | None = None
    addresses: list[str] = field(default_factory=list)


def query(
    ts: int,
    *,
    id: int = 0x1234,
    name: str = "kubernetes.default.svc.cluster.local.",
    qtype: int = A,
    qclass: int = IN,
    pkt_type: int = PACKET_OUTGOING,
    netns: int = 4026531840,
    transport: int = IPPROTO_UDP,
    client: str = POD,
    cport: int = 38480,
    server: str = KUBE_DNS,
    sport: int = 53,
) -> DnsPacket:
    meta = PacketMeta(ts, netns, 2, pkt_type, transport, client, cport, server, sport, ":" in client)
    return DnsPacket(meta, Message(id, False, question=Question(name, qtype, qclass)))  # type: ignore[arg-type]


def response(
    ts: int,
    *,
    id: int = 0x1234,
    name: str | None = "kubernetes.default.svc.cluster.local.",
    qtype: int = A,
    qclass: int = IN,
    rcode: int = NOERROR,
    pkt_type: int = PACKET_HOST,
    netns: int = 4026531840,
    transport: int = IPPROTO_UDP,
    client: str = POD,
    cport: int = 38480,
    server: str = KUBE_DNS,
    sport: int = 53,
) -> DnsPacket:
    meta = PacketMeta(ts, netns, 2, pkt_type, transport, server, sport, client, cport, ":" in client)
    q = None if name is None else Question(name, qtype, qclass)
    return DnsPacket(meta, Message(id, True, rcode=rcode, question=q))  # type: ignore[arg-type]


class Recorder:
    """A PairSink that keeps every call in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.queries: list[tuple[DnsPacket, str, bool]] = []
        self.responses: list[Exchange] = []
        self.unanswered: list[Exchange] = []
        self.unmatched: list[tuple[DnsPacket, str]] = []

    def on_query(self, pkt: DnsPacket, role: str, retransmit: bool) -> None:
        self.queries.append((pkt, role, retransmit))
        self.events.append(("query", pkt))

    def on_response(self, ex: Exchange) -> None:
        self.responses.append(ex)
        self.events.append(("response", ex))

    def on_unanswered(self, ex: Exchange) -> None:
        self.unanswered.append(ex)
        self.events.append(("unanswered", ex))

    def on_unmatched(self, pkt: DnsPacket, role: str) -> None:
        self.unmatched.append((pkt, role))
        self.events.append(("unmatched", pkt))


def make(**kw: int) -> tuple[Pairer, Recorder]:
    sink = Recorder()
    return Pairer(sink, **kw), sink


# -- plain pairs -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", [IPPROTO_UDP, IPPROTO_TCP])
@pytest.mark.parametrize(("client", "server"), [(POD, KUBE_DNS), (POD6, KUBE_DNS6)])
def test_pairs_query_and_response_with_exact_latency(transport: int, client: str, server: str) -> None:
    p, sink = make()
    q = query(T0, transport=transport, client=client, server=server)
    r = response(T0 + 1_234_567, transport=transport, client=client, server=server)
    p.feed(q)
    assert p.stats.pending == 1
    p.feed(r)

    assert sink.queries == [(q, ROLE_CLIENT, False)]
    assert len(sink.responses) == 1
    ex = sink.responses[0]
    assert ex.query is q and ex.response is r
    assert ex.role == ROLE_CLIENT
    assert ex.latency_ns == 1_234_567
    assert ex.retransmits == 0 and ex.retransmit_ts_ns == ()
    assert not ex.unanswered
    assert sink.unanswered == [] and sink.unmatched == []
    s = p.stats
    assert (s.queries, s.responses, s.paired, s.unmatched, s.pending) == (1, 1, 1, 0, 0)


def test_pcap_without_direction_pairs_as_client() -> None:
    p, sink = make()
    p.feed(query(T0, pkt_type=PACKET_UNKNOWN))
    p.feed(response(T0 + 500, pkt_type=PACKET_UNKNOWN))
    assert [ex.role for ex in sink.responses] == [ROLE_CLIENT]
    assert sink.responses[0].latency_ns == 500


def test_many_concurrent_queries_pair_by_port_and_id() -> None:
    p, sink = make()
    qs = [query(T0 + i, id=i % 3, cport=40000 + i // 3) for i in range(9)]
    for q in qs:
        p.feed(q)
    # answer in reverse order
    for i in reversed(range(9)):
        p.feed(response(T0 + 100 + i, id=i % 3, cport=40000 + i // 3))
    assert p.stats.paired == 9 and p.stats.pending == 0
    for ex in sink.responses:
        assert ex.query is not None and ex.response is not None
        assert ex.query.msg.id == ex.response.msg.id
        assert ex.query.meta.sport == ex.response.meta.dport
        assert ex.latency_ns == 100


# -- roles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pkt_type", [PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OTHERHOST])
def test_query_arriving_is_the_server_side(pkt_type: int) -> None:
    p, sink = make()
    q = query(T0, pkt_type=pkt_type, client=POD, server=COREDNS_POD)
    p.feed(q)
    assert sink.queries == [(q, ROLE_SERVER, False)]
    # a response arriving (HOST) is a client-side packet: it does not answer the server-side query
    p.feed(response(T0 + 10, pkt_type=PACKET_HOST, server=COREDNS_POD))
    assert sink.unmatched[0][1] == ROLE_CLIENT
    assert sink.responses == []
    # the response leaving (OUTGOING) does
    r = response(T0 + 20, pkt_type=PACKET_OUTGOING, server=COREDNS_POD)
    p.feed(r)
    assert len(sink.responses) == 1
    ex = sink.responses[0]
    assert ex.role == ROLE_SERVER and ex.query is q and ex.response is r and ex.latency_ns == 20


def test_role_functions_follow_the_direction_table() -> None:
    assert query_role(PACKET_OUTGOING) == ROLE_CLIENT
    assert query_role(PACKET_UNKNOWN) == ROLE_CLIENT
    assert query_role(PACKET_HOST) == ROLE_SERVER
    assert response_role(PACKET_HOST) == ROLE_CLIENT
    assert response_role(PACKET_UNKNOWN) == ROLE_CLIENT
    assert response_role(PACKET_OUTGOING) == ROLE_SERVER


def test_loopback_double_sighting_gives_one_client_and_one_server_pair() -> None:
    """On lo every packet is seen OUTGOING then HOST in the same netns."""
    p, sink = make()
    kw: dict[str, Any] = {"client": "127.0.0.1", "cport": 51000, "server": "127.0.0.53", "sport": 53}
    p.feed(query(T0, pkt_type=PACKET_OUTGOING, **kw))
    p.feed(query(T0 + 3, pkt_type=PACKET_HOST, **kw))
    p.feed(response(T0 + 1000, pkt_type=PACKET_OUTGOING, **kw))
    p.feed(response(T0 + 1004, pkt_type=PACKET_HOST, **kw))

    assert [(role, rt) for _, role, rt in sink.queries] == [(ROLE_CLIENT, False), (ROLE_SERVER, False)]
    by_role = {ex.role: ex for ex in sink.responses}
    assert set(by_role) == {ROLE_CLIENT, ROLE_SERVER}
    assert by_role[ROLE_CLIENT].latency_ns == 1004
    assert by_role[ROLE_SERVER].latency_ns == 997
    assert all(ex.retransmits == 0 for ex in sink.responses)
    s = p.stats
    assert (s.paired, s.retransmits, s.unmatched, s.pending) == (2, 0, 0, 0)


# -- what is (not) in the key -----------------------------------------------------------------


def test_different_netns_do_not_cross_match() -> None:
    p, sink = make()
    p.feed(query(T0, netns=111))
    p.feed(response(T0 + 10, netns=222))
    assert sink.responses == []
    assert len(sink.unmatched) == 1
    assert p.stats.pending == 1
    p.feed(response(T0 + 20, netns=111))
    assert len(sink.responses) == 1 and sink.responses[0].latency_ns == 20


def test_same_id_from_two_netns_pair_separately() -> None:
    p, sink = make()
    q1, q2 = query(T0, netns=111), query(T0 + 1, netns=222)
    p.feed(q1)
    p.feed(q2)
    assert p.stats.retransmits == 0 and p.stats.pending == 2
    p.feed(response(T0 + 50, netns=222))
    p.feed(response(T0 + 60, netns=111))
    assert [(ex.query, ex.latency_ns) for ex in sink.responses] == [(q2, 49), (q1, 60)]


@pytest.mark.parametrize(
    "change",
    [
        {"id": 0x1235},
        {"cport": 38481},
        {"client": "10.244.1.8"},
        {"transport": IPPROTO_TCP},
    ],
)
def test_response_differing_in_a_key_field_does_not_pair(change: dict[str, Any]) -> None:
    p, sink = make()
    p.feed(query(T0))
    p.feed(response(T0 + 10, **change))
    assert sink.responses == [] and len(sink.unmatched) == 1 and p.stats.pending == 1


def test_service_nat_response_from_the_endpoint_address_still_pairs() -> None:
    p, sink = make()
    q = query(T0, server=KUBE_DNS, sport=53)
    r = response(T0 + 700_000, server=COREDNS_POD, sport=5353)
    p.feed(q)
    p.feed(r)
    assert len(sink.responses) == 1
    assert sink.responses[0].query is q and sink.responses[0].response is r


# -- question matching --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [{"name": "kubernetes.default.svc.cluster.local.cluster.local."}, {"qtype": AAAA}, {"qclass": 3}],
)
def test_question_mismatch_is_unmatched_and_query_stays_pending(change: dict[str, Any]) -> None:
    p, sink = make()
    q = query(T0)
    p.feed(q)
    bad = response(T0 + 10, **change)
    p.feed(bad)
    assert sink.unmatched == [(bad, ROLE_CLIENT)]
    assert sink.responses == [] and p.stats.pending == 1
    p.feed(response(T0 + 20))
    assert len(sink.responses) == 1 and sink.responses[0].query is q and sink.responses[0].latency_ns == 20


@pytest.mark.parametrize("rcode", [FORMERR, SERVFAIL, REFUSED])
def test_error_response_without_question_pairs_on_the_key(rcode: int) -> None:
    p, sink = make()
    p.feed(query(T0))
    r = response(T0 + 30, name=None, rcode=rcode)
    p.feed(r)
    assert len(sink.responses) == 1
    assert sink.responses[0].response is r and sink.responses[0].latency_ns == 30
    assert p.stats.unmatched == 0


def test_noerror_response_without_question_does_not_pair() -> None:
    p, sink = make()
    p.feed(query(T0))
    p.feed(response(T0 + 30, name=None, rcode=NOERROR))
    assert sink.responses == [] and len(sink.unmatched) == 1 and p.stats.pending == 1


def test_error_response_with_a_different_question_does_not_pair() -> None:
    p, sink = make()
    p.feed(query(T0, qtype=A))
    p.feed(response(T0 + 30, qtype=SRV, rcode=NXDOMAIN))
    assert sink.responses == [] and len(sink.unmatched) == 1 and p.stats.pending == 1


def test_unmatched_response_with_nothing_pending() -> None:
    p, sink = make()
    r = response(T0)
    p.feed(r)
    assert sink.unmatched == [(r, ROLE_CLIENT)]
    p.feed(response(T0 + 1, pkt_type=PACKET_OUTGOING))
    assert sink.unmatched[1][1] == ROLE_SERVER
    s = p.stats
    assert (s.responses, s.unmatched, s.paired, s.pending) == (2, 2, 0, 0)


def test_second_response_after_pairing_is_unmatched() -> None:
    p, sink = make()
    p.feed(query(T0))
    p.feed(response(T0 + 10))
    p.feed(response(T0 + 11))
    assert len(sink.responses) == 1 and len(sink.unmatched) == 1


# -- retransmission and id reuse ------------------------------------------------------------------


def test_retransmission_keeps_first_timestamp_and_counts() -> None:
    p, sink = make()
    q1, q2, q3 = query(T0), query(T0 + 1 * SEC), query(T0 + 2 * SEC)
    for q in (q1, q2, q3):
        p.feed(q)
    assert [rt for _, _, rt in sink.queries] == [False, True, True]
    assert p.stats.pending == 1 and p.stats.retransmits == 2 and p.stats.queries == 3
    p.feed(response(T0 + 2 * SEC + 400))
    ex = sink.responses[0]
    assert ex.query is q1
    assert ex.latency_ns == 2 * SEC + 400
    assert ex.retransmits == 2
    assert ex.retransmit_ts_ns == (T0 + 1 * SEC, T0 + 2 * SEC)


def test_retransmission_does_not_extend_the_timeout() -> None:
    p, sink = make(timeout_ns=TIMEOUT)
    p.feed(query(T0))
    p.feed(query(T0 + 4 * SEC))
    p.advance(T0 + TIMEOUT)
    assert len(sink.unanswered) == 1
    ex = sink.unanswered[0]
    assert ex.retransmits == 1 and ex.retransmit_ts_ns == (T0 + 4 * SEC,) and ex.timeout_ns == TIMEOUT


def test_new_question_on_same_port_and_id_supersedes_the_old_query() -> None:
    """A client reusing its port and id for another question has abandoned the old one."""
    p, sink = make(timeout_ns=TIMEOUT)
    old = query(T0, name="a.example.")
    new = query(T0 + 2 * SEC, name="b.example.")
    p.feed(old)
    p.feed(new)
    # the old one is reported unanswered at once, ending when it was abandoned
    assert len(sink.unanswered) == 1
    ex = sink.unanswered[0]
    assert ex.query is old and ex.response is None and ex.timeout_ns == 2 * SEC
    assert [e for e, _ in sink.events] == ["query", "unanswered", "query"]
    assert sink.queries[1] == (new, ROLE_CLIENT, False)
    assert p.stats.pending == 1 and p.stats.unanswered == 1 and p.stats.superseded == 1
    assert p.stats.retransmits == 0
    # a late answer to the old question is unmatched; the new question pairs
    p.feed(response(T0 + 2 * SEC + 5, name="a.example."))
    p.feed(response(T0 + 2 * SEC + 9, name="b.example."))
    assert len(sink.unmatched) == 1
    assert [(e.query, e.latency_ns) for e in sink.responses] == [(new, 9)]
    # the new query keeps its own full timeout
    p.advance(T0 + 3 * SEC + TIMEOUT)
    assert len(sink.unanswered) == 1


# -- timeouts ------------------------------------------------------------------------------------


def test_unanswered_exactly_at_the_timeout_by_packet_time() -> None:
    p, sink = make(timeout_ns=TIMEOUT)
    q = query(T0)
    p.feed(q)
    p.feed(response(T0 + TIMEOUT - 1, netns=999))  # unrelated traffic moves the clock
    assert sink.unanswered == [] and p.stats.pending == 1
    p.feed(response(T0 + TIMEOUT, netns=999))
    assert len(sink.unanswered) == 1
    ex = sink.unanswered[0]
    assert ex.query is q and ex.response is None and ex.unanswered
    assert ex.role == ROLE_CLIENT and ex.timeout_ns == TIMEOUT and ex.latency_ns is None
    assert p.stats.pending == 0 and p.stats.unanswered == 1


def test_unanswered_exactly_at_the_timeout_by_advance() -> None:
    p, sink = make(timeout_ns=TIMEOUT)
    p.feed(query(T0))
    p.advance(T0 + TIMEOUT - 1)
    assert sink.unanswered == [] and p.stats.pending == 1
    p.advance(T0 + TIMEOUT)
    assert len(sink.unanswered) == 1 and p.stats.pending == 0
    p.advance(T0 + 10 * TIMEOUT)
    assert len(sink.unanswered) == 1


def test_response_just_before_the_timeout_pairs_and_at_the_timeout_is_unmatched() -> None:
    p, sink = make(timeout_ns=TIMEOUT)
    p.feed(query(T0, id=1))
    p.feed(query(T0, id=2))
    p.feed(response(T0 + TIMEOUT - 1, id=1))
    assert [ex.latency_ns for ex in sink.responses] == [TIMEOUT - 1]
    p.feed(response(T0 + TIMEOUT, id=2))
    assert len(sink.unanswered) == 1 and sink.unanswered[0].query is not None
    assert sink.unanswered[0].query.msg.id == 2
    assert len(sink.unmatched) == 1
    # the query is reported before the late response
    assert [e for e, _ in sink.events][-2:] == ["unanswered", "unmatched"]


def test_expiry_reports_in_arrival_order_and_stops_at_the_first_live_query() -> None:
    p, sink = make(timeout_ns=TIMEOUT)
    for i in range(5):
        p.feed(query(T0 + i * SEC, id=i))
    p.advance(T0 + 2 * SEC + TIMEOUT)
    assert [ex.query.msg.id for ex in sink.unanswered if ex.query] == [0, 1, 2]
    assert p.stats.pending == 2


def test_out_of_order_older_query_behind_a_younger_one_still_expires() -> None:
    """Two CPUs: a query stamped earlier is delivered after a later one."""
    p, sink = make(timeout_ns=TIMEOUT)
    young = query(T0 + 100, id=1)
    old = query(T0, id=2)
    p.feed(young)
    p.feed(old)
    p.advance(T0 + TIMEOUT - 1)
    assert sink.unanswered == []
    # the younger head is answered, leaving the older one alone in the table
    p.feed(response(T0 + TIMEOUT + 1, id=1))
    assert len(sink.responses) == 1
    # by the deadline of the query that was ahead of it, at the latest, it is reported
    p.advance(T0 + 100 + TIMEOUT)
    assert [ex.query for ex in sink.unanswered] == [old]
    assert sink.unanswered[0].timeout_ns == TIMEOUT
    assert p.stats.pending == 0


def test_out_of_order_older_query_expires_together_with_the_head() -> None:
    p, sink = make(timeout_ns=TIMEOUT)
    young = query(T0 + 100, id=1)
    old = query(T0, id=2)
    p.feed(young)
    p.feed(old)
    p.advance(T0 + 100 + TIMEOUT)
    assert {id(ex.query) for ex in sink.unanswered} == {id(young), id(old)}


def test_flush_reports_every_pending_query_unanswered() -> None:
    p, sink = make(timeout_ns=TIMEOUT)
    qs = [query(T0 + i, id=i) for i in range(3)]
    for q in qs:
        p.feed(q)
    p.feed(response(T0 + 10, id=1))
    p.flush()
    assert [ex.query for ex in sink.unanswered] == [qs[0], qs[2]]
    assert all(ex.timeout_ns == TIMEOUT and ex.response is None for ex in sink.unanswered)
    assert p.stats.pending == 0 and p.stats.unanswered == 2 and len(p) == 0
    p.flush()
    assert len(sink.unanswered) == 2


def test_table_works_after_flush() -> None:
    p, sink = make(timeout_ns=TIMEOUT)
    p.feed(query(T0))
    p.flush()
    p.feed(query(T0 + 1, id=9))
    p.advance(T0 + 1 + TIMEOUT)
    assert len(sink.unanswered) == 2


# -- bounds ----------------------------------------------------------------------------------------


def test_full_table_evicts_the_oldest_and_counts() -> None:
    p, sink = make(max_pending=3)
    qs = [query(T0 + i, id=i) for i in range(4)]
    for q in qs:
        p.feed(q)
    assert p.stats.pending == 3 and p.stats.evicted == 1
    assert sink.unanswered == []  # eviction is counted, not reported
    # the evicted query's response is unmatched; the others pair
    for i in range(4):
        p.feed(response(T0 + 100 + i, id=i))
    assert [ex.query for ex in sink.responses] == qs[1:]
    assert [pkt.msg.id for pkt, _ in sink.unmatched] == [0]
    p.flush()
    assert sink.unanswered == []


def test_retransmission_into_a_full_table_evicts_nothing() -> None:
    p, _ = make(max_pending=2)
    p.feed(query(T0, id=1))
    p.feed(query(T0 + 1, id=2))
    p.feed(query(T0 + 2, id=1))
    assert p.stats.evicted == 0 and p.stats.retransmits == 1 and p.stats.pending == 2


def test_invalid_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Pairer(Recorder(), timeout_ns=0)
    with pytest.raises(ValueError, match="max_pending"):
        Pairer(Recorder(), max_pending=0)


# -- property: every packet is accounted for exactly once ------------------------------------------

_names = ["a.example.", "b.example."]
_op = st.one_of(
    # query: (kind, netns, cport, id, name, pkt_type, dt, jitter)
    st.tuples(
        st.just("q"),
        st.integers(1, 2),
        st.integers(1000, 1001),
        st.integers(0, 1),
        st.sampled_from(_names),
        st.sampled_from([PACKET_OUTGOING, PACKET_HOST, PACKET_UNKNOWN]),
        st.integers(0, 4),
        st.integers(0, 2),
    ),
    # response: (kind, netns, cport, id, name-or-None, pkt_type, dt, rcode)
    st.tuples(
        st.just("r"),
        st.integers(1, 2),
        st.integers(1000, 1001),
        st.integers(0, 1),
        st.sampled_from([*_names, None]),
        st.sampled_from([PACKET_OUTGOING, PACKET_HOST, PACKET_UNKNOWN]),
        st.integers(0, 4),
        st.sampled_from([NOERROR, SERVFAIL]),
    ),
    st.tuples(st.just("advance"), st.integers(0, 12)),
)


def _same_key(a: DnsPacket, q: DnsPacket) -> bool:
    """``a`` (a query) has the same key as the pending query ``q``."""
    return (a.meta.netns, query_role(a.meta.pkt_type), a.meta.src, a.meta.sport, a.msg.id) == (
        q.meta.netns,
        query_role(q.meta.pkt_type),
        q.meta.src,
        q.meta.sport,
        q.msg.id,
    )


def _answers(r: DnsPacket, q: DnsPacket) -> bool:
    """Whether response ``r`` answers the pending query ``q`` (the rule, restated)."""
    same_key = (r.meta.netns, response_role(r.meta.pkt_type), r.meta.dst, r.meta.dport, r.msg.id) == (
        q.meta.netns,
        query_role(q.meta.pkt_type),
        q.meta.src,
        q.meta.sport,
        q.msg.id,
    )
    if not same_key:
        return False
    if r.msg.question is None:
        return bool(r.msg.rcode != NOERROR)
    return bool(r.msg.question == q.msg.question)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_op, min_size=10, max_size=80), max_pending=st.integers(1, 6), timeout=st.integers(1, 10))
def test_every_packet_is_accounted_for_exactly_once(
    ops: list[tuple[Any, ...]], max_pending: int, timeout: int
) -> None:
    sink = Recorder()
    p = Pairer(sink, timeout_ns=timeout, max_pending=max_pending)
    clock = 0
    fed_queries: list[DnsPacket] = []
    fed_responses: list[DnsPacket] = []
    open_: list[DnsPacket] = []
    evicted = 0
    arrived: dict[int, int] = {}  # id(query) -> clock when it was fed
    for op in ops:
        before = len(sink.events)
        if op[0] == "advance":
            clock += op[1]
            now = clock
            p.advance(now)
        elif op[0] == "q":
            _, netns, cport, qid, name, pkt_type, dt, jitter = op
            clock += dt
            now = clock - jitter
            pkt = query(now, netns=netns, cport=cport, id=qid, name=name, pkt_type=pkt_type)
            fed_queries.append(pkt)
            p.feed(pkt)
        else:
            _, netns, cport, rid, name, pkt_type, dt, rcode = op
            clock += dt
            now = clock
            pkt = response(now, netns=netns, cport=cport, id=rid, name=name, pkt_type=pkt_type, rcode=rcode)
            fed_responses.append(pkt)
            p.feed(pkt)
        # replay this step's reports against a model of the open queries (in arrival order)
        for kind, ex in sink.events[before:]:
            if kind in ("response", "unanswered"):
                # it must have been open
                (i,) = [i for i, q in enumerate(open_) if q is ex.query]
                del open_[i]
            if kind == "unanswered":
                waited = now - ex.query.meta.ts_ns
                if op[0] == "q" and ex.timeout_ns < timeout:
                    # superseded by a new question: it ends when the new query came (not before it began)
                    assert ex.timeout_ns == max(0, waited)
                else:
                    # timed out: never before its time
                    assert ex.timeout_ns == timeout and waited >= timeout
            elif kind == "unmatched":
                assert not any(_answers(ex, q) for q in open_), "a response was unmatched but had a query"
            elif kind == "query":
                if p.stats.evicted > evicted:
                    evicted = p.stats.evicted
                    open_.pop(0)  # the oldest goes
                if sink.queries[-1][2]:
                    assert any(_same_key(ex, q) and ex.msg.question == q.msg.question for q in open_)
                else:
                    assert not any(_same_key(ex, q) for q in open_)
                    open_.append(ex)
                    arrived[id(ex)] = clock
        # ...and never later than the skew of the queries ahead of it: each open query's deadline,
        # counted from when it arrived (its timestamp plus its jitter), is still ahead
        assert all(now < arrived[id(q)] + timeout for q in open_)
        s = p.stats
        assert s.queries == s.retransmits + s.paired + s.unanswered + s.evicted + s.pending
        assert s.responses == s.paired + s.unmatched
        assert s.pending <= max_pending
    assert len(open_) == p.stats.pending
    p.flush()
    s = p.stats
    assert s.pending == 0

    # every query packet was announced once, in order, with a retransmit flag
    assert [pkt for pkt, _, _ in sink.queries] == fed_queries
    first = [pkt for pkt, _, rt in sink.queries if not rt]
    retrans = [pkt for pkt, _, rt in sink.queries if rt]
    assert len(retrans) == s.retransmits
    # every first sighting ends exactly once: paired, unanswered, or (silently) evicted
    ended = [ex.query for ex in sink.responses] + [ex.query for ex in sink.unanswered]
    assert len({id(q) for q in ended}) == len(ended)
    assert {id(q) for q in ended} <= {id(q) for q in first}
    assert len(first) == len(ended) + s.evicted
    assert (s.paired, s.unanswered) == (len(sink.responses), len(sink.unanswered))
    # every response ends exactly once: paired or unmatched
    resp_ids = [id(ex.response) for ex in sink.responses] + [id(pkt) for pkt, _ in sink.unmatched]
    assert sorted(resp_ids) == sorted(id(r) for r in fed_responses)
    # every pair obeys the matching rule
    for ex in sink.responses:
        q, r = ex.query, ex.response
        assert q is not None and r is not None
        assert ex.role == query_role(q.meta.pkt_type) == response_role(r.meta.pkt_type)
        assert (q.meta.netns, q.meta.src, q.meta.sport, q.msg.id) == (
            r.meta.netns,
            r.meta.dst,
            r.meta.dport,
            r.msg.id,
        )
        if r.msg.question is None:
            assert r.msg.rcode != NOERROR
        else:
            assert r.msg.question == q.msg.question
        assert ex.latency_ns == r.meta.ts_ns - q.meta.ts_ns
        assert ex.retransmits == len(ex.retransmit_ts_ns)
