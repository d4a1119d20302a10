"""Real DNS messages for the tests: dnspython builds the wire, ``exporter.dns.decode`` reads it.

A query and its response become :class:`DnsPacket` s with a :class:`PacketMeta` saying where
and when each was seen, or an :class:`Exchange` as the pairer hands it to the sinks.
Messages are rendered with ``to_wire(want_shuffle=False)``: dnspython shuffles the records
of an RRset by default, and the tests assert the answers' order.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from exporter.dns import decode
from exporter.records import (
    IPPROTO_UDP,
    PACKET_HOST,
    PACKET_OUTGOING,
    ROLE_CLIENT,
    DnsPacket,
    Exchange,
    PacketMeta,
)

Endpoint = tuple[str, int]


def query(name: str, qtype: str = "A", qid: int | None = None) -> dns.message.Message:
    """A recursive query without EDNS (dnspython's random id unless ``qid``)."""
    q = dns.message.make_query(name, qtype)
    if qid is not None:
        q.id = qid
    return q


def response(
    q: dns.message.Message,
    rcode: int = dns.rcode.NOERROR,
    addrs: tuple[str, ...] = (),
    *,
    cname: str | None = None,
    ttl: int = 30,
    cname_ttl: int | None = None,
    ra: bool = True,
    tc: bool = False,
) -> dns.message.Message:
    """The response to ``q``: ``rcode``, then a CNAME to ``cname`` (if any) and ``addrs``
    (records of the question's type, owned by the CNAME's target when there is one)."""
    r = dns.message.make_response(q)
    if ra:
        r.flags |= dns.flags.RA
    if tc:
        r.flags |= dns.flags.TC
    r.set_rcode(dns.rcode.Rcode(rcode))
    owner = q.question[0].name.to_text()
    if cname is not None:
        r.answer.append(
            dns.rrset.from_text(owner, ttl if cname_ttl is None else cname_ttl, "IN", "CNAME", cname)
        )
        owner = cname
    if addrs:
        rdtype = dns.rdatatype.to_text(q.question[0].rdtype)
        r.answer.append(dns.rrset.from_text(owner, ttl, "IN", rdtype, *addrs))
    return r


def wire(msg: dns.message.Message) -> bytes:
    return msg.to_wire(want_shuffle=False)  # dnspython shuffles rdatas by default


def meta(
    ts: int,
    netns: int,
    pkt_type: int,
    src: Endpoint,
    dst: Endpoint,
    transport: int = IPPROTO_UDP,
    ifindex: int = 2,
) -> PacketMeta:
    """Where and when a packet from ``src`` to ``dst`` was seen (IPv6 when ``src`` is)."""
    return PacketMeta(ts, netns, ifindex, pkt_type, transport, src[0], src[1], dst[0], dst[1], ":" in src[0])


def packet(m: PacketMeta, msg: dns.message.Message | bytes) -> DnsPacket:
    """``msg`` (a message or its wire) as the decoder reads it, seen at ``m``."""
    return DnsPacket(m, decode(msg if isinstance(msg, bytes) else wire(msg)))


def exchange(
    q: dns.message.Message,
    r: dns.message.Message | None,
    *,
    t0: int,
    latency_ns: int,
    netns: int,
    client: Endpoint,
    server: Endpoint,
    role: str = ROLE_CLIENT,
    transport: int = IPPROTO_UDP,
    retransmit_ts: tuple[int, ...] = (),
    timeout_ns: int = 5_000_000_000,
) -> Exchange:
    """``q`` at ``t0`` and ``r`` (None: unanswered) ``latency_ns`` later, as seen by the
    client (``role`` client: the query leaves, the response arrives) or by the server."""
    sent, received = (PACKET_OUTGOING, PACKET_HOST) if role == ROLE_CLIENT else (PACKET_HOST, PACKET_OUTGOING)
    qpkt = packet(meta(t0, netns, sent, client, server, transport), q)
    if r is None:
        return Exchange(
            qpkt, None, role, len(retransmit_ts), timeout_ns=timeout_ns, retransmit_ts_ns=retransmit_ts
        )
    rpkt = packet(meta(t0 + latency_ns, netns, received, server, client, transport), r)
    return Exchange(qpkt, rpkt, role, len(retransmit_ts), retransmit_ts_ns=retransmit_ts)
