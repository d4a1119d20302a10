"""The user-space mirror of ``struct dns_event`` (bpf/dns_event.h) and its conversion to a ``Segment``.

This is the only place that knows the byte layout of a ring buffer record. ``EbpfCapture``
checks at load that the compiled struct has the same size and field offsets as
``DnsEventHeader`` below, so a change on one side only cannot go unnoticed.

The hot path does not touch ctypes: one precompiled ``struct.Struct.unpack_from`` reads the
whole header (measured in ``bench/ringbuf.py``).
"""

from __future__ import annotations

import ctypes
import socket
import struct
from dataclasses import dataclass

from exporter.records import IPPROTO_UDP, PacketMeta, Segment

# bpf/dns_event.h flags
FLAG_FRAGMENT = 0x01  # first fragment of a fragmented IP datagram: payload is partial
FLAG_TRUNCATED = 0x02  # fewer payload bytes captured than the packet carried

# bpf/dns_event.h kinds
KIND_PACKET = 0  # one packet: user space pairs it
KIND_PAIR = 1  # a response the kernel paired with its query (KERNEL_PAIRING)
KIND_SUPERSEDED = 2  # a pending query replaced by a new question on the same key (KERNEL_PAIRING)
KIND_QUERY_NOTICE = 3  # a server-side query the kernel now holds: header + payload prefix (KERNEL_PAIRING)
NOTICE_MAX = 256  # DNS_NOTICE_MAX: payload bytes a QUERY_NOTICE carries at most
QMAX = 160  # DNS_QMAX: longest question the kernel pairs
NOQ_RESP_MAX = 64  # DNS_NOQ_RESP_MAX: a question-less PAIR carries the query message at payload[64]


class DnsEventHeader(ctypes.Structure):
    """``struct dns_event`` without its trailing ``payload[MAX_PAYLOAD]``."""

    _fields_ = (
        ("ts_ns", ctypes.c_uint64),
        ("netns", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("tcp_seq", ctypes.c_uint32),
        ("orig_len", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("cap_len", ctypes.c_uint16),
        ("pkt_type", ctypes.c_uint8),
        ("ip_version", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("tcp_flags", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("kind", ctypes.c_uint8),
        # PAIR and SUPERSEDED records only
        ("q_retransmits", ctypes.c_uint32),
        ("q_ts_ns", ctypes.c_uint64),
        ("q_rts_ns", ctypes.c_uint64 * 4),
        ("q_daddr", ctypes.c_uint8 * 16),
        ("q_ifindex", ctypes.c_uint32),
        ("q_dport", ctypes.c_uint16),
        ("q_flags", ctypes.c_uint16),
        ("q_pkt_type", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8),
        ("q_msg_len", ctypes.c_uint16),
    )


HDR_LEN = 140  # DNS_EVENT_HDR_LEN, offsetof(struct dns_event, payload)
KIND_OFFSET = 67  # offsetof(struct dns_event, kind)
# The packet part of DnsEventHeader, for the hot path: one unpack per event.
EVENT_HDR = struct.Struct("<QII16s16sIIHHHBBBBBx")
# The q_* part (PAIR and SUPERSEDED records), at offset EVENT_HDR.size.
PAIR_EXT = struct.Struct("<IQ4Q16sIHHBxH")
assert EVENT_HDR.size == DnsEventHeader.q_retransmits.offset == KIND_OFFSET + 1
assert DnsEventHeader.kind.offset == KIND_OFFSET
assert EVENT_HDR.size + PAIR_EXT.size == HDR_LEN == DnsEventHeader.q_msg_len.offset + 2


def event_size(max_payload: int) -> int:
    """``sizeof(struct dns_event)`` for a given MAX_PAYLOAD (aligned to its u64 member)."""
    return (HDR_LEN + max_payload + 7) & ~7


def layout_mismatches(compiled: type[ctypes.Structure], max_payload: int) -> list[str]:
    """Differences between the kernel's compiled struct (a ctypes type from bcc) and this mirror."""
    problems: list[str] = []
    want = event_size(max_payload)
    if ctypes.sizeof(compiled) != want:
        problems.append(f"sizeof(struct dns_event) is {ctypes.sizeof(compiled)}, mirror expects {want}")
    for name, _ in DnsEventHeader._fields_:
        mine = getattr(DnsEventHeader, name)
        theirs = getattr(compiled, name, None)
        if theirs is None:
            problems.append(f"field {name} missing in the compiled struct")
        elif theirs.offset != mine.offset or theirs.size != mine.size:
            problems.append(
                f"field {name} at {theirs.offset}/{theirs.size} bytes, mirror has {mine.offset}/{mine.size}"
            )
    payload = getattr(compiled, "payload", None)
    if payload is None or payload.offset != HDR_LEN:
        problems.append(f"payload is not at offset {HDR_LEN}")
    return problems


_unpack = EVENT_HDR.unpack_from
_ADDR_CACHE_MAX = 65536
# 16 raw address bytes (IPv4 in the first 4, rest zero) -> text. A node sees few distinct
# addresses (its pods, the resolvers); the cache halves the decode cost (bench/ringbuf.py)
# and is dropped whole when it reaches _ADDR_CACHE_MAX entries.
_v4: dict[bytes, str] = {}
_v6: dict[bytes, str] = {}


def _addr4(raw: bytes) -> str:
    if len(_v4) >= _ADDR_CACHE_MAX:
        _v4.clear()
    text = _v4[raw] = socket.inet_ntop(socket.AF_INET, raw[:4])
    return text


def _addr6(raw: bytes) -> str:
    if len(_v6) >= _ADDR_CACHE_MAX:
        _v6.clear()
    text = _v6[raw] = socket.inet_ntop(socket.AF_INET6, raw)
    return text


def addr_text(raw: bytes, v6: bool) -> str:
    """16 raw address bytes (IPv4 in the first 4) as text, through the same caches."""
    if v6:
        return _v6.get(raw) or _addr6(raw)
    return _v4.get(raw) or _addr4(raw)


def decode_event(buf: bytes | memoryview | bytearray, off: int, wall_offset_ns: int) -> Segment:
    """Build a ``Segment`` from the record at ``buf[off:]``.

    ``wall_offset_ns`` is CLOCK_REALTIME - CLOCK_BOOTTIME, computed once at start: the
    kernel stamps CLOCK_BOOTTIME (``bpf_ktime_get_boot_ns``) and this is the one place it
    becomes wall-clock time.
    """
    (
        ts,
        netns,
        ifindex,
        saddr,
        daddr,
        seq,
        orig_len,
        sport,
        dport,
        cap,
        pkt_type,
        ipver,
        proto,
        tcp_flags,
        _flags,
    ) = _unpack(buf, off)
    if ipver == 4:
        src = _v4.get(saddr) or _addr4(saddr)
        dst = _v4.get(daddr) or _addr4(daddr)
        v6 = False
    else:
        src = _v6.get(saddr) or _addr6(saddr)
        dst = _v6.get(daddr) or _addr6(daddr)
        v6 = True
    start = off + HDR_LEN
    payload = bytes(buf[start : start + cap])
    meta = PacketMeta(ts + wall_offset_ns, netns, ifindex, pkt_type, proto, src, sport, dst, dport, v6)
    if proto == IPPROTO_UDP:
        return Segment(meta, payload, orig_len)
    return Segment(meta, payload, orig_len, seq, tcp_flags)


def event_flags(buf: bytes | memoryview | bytearray, off: int = 0) -> int:
    """The DNS_EV_* flags byte of the record at ``buf[off:]`` (FLAG_FRAGMENT, FLAG_TRUNCATED)."""
    return int(buf[off + DnsEventHeader.flags.offset])


@dataclass(slots=True)
class QueryInfo:
    """The q_* part of a PAIR or SUPERSEDED record, timestamps in wall-clock ns."""

    ts_ns: int  # PAIR: the query's time; SUPERSEDED: the superseding query's time
    retransmits: int
    retransmit_ts_ns: tuple[int, ...]  # the first 4 retransmissions' times
    server: str  # PAIR: the query's destination address
    ifindex: int  # PAIR: the query's ifindex
    server_port: int
    flags: int  # PAIR: the query's DNS flags word
    pkt_type: int  # PAIR: the query's pkt_type
    msg: bytes  # PAIR whose response has no question: the query's message; else b""


_unpack_ext = PAIR_EXT.unpack_from
_EXT_OFF = EVENT_HDR.size


def decode_query_info(buf: bytes | memoryview | bytearray, off: int, wall_offset_ns: int) -> QueryInfo:
    """The q_* fields of the PAIR or SUPERSEDED record at ``buf[off:]``."""
    n, ts, r0, r1, r2, r3, daddr, ifindex, dport, qflags, pkt_type, msg_len = _unpack_ext(buf, off + _EXT_OFF)
    rts = tuple(t + wall_offset_ns for t in (r0, r1, r2, r3)[: min(n, 4)])
    if buf[off + DnsEventHeader.ip_version.offset] == 4:
        server = _v4.get(daddr) or _addr4(daddr)
    else:
        server = _v6.get(daddr) or _addr6(daddr)
    msg = b""
    if msg_len:
        start = off + HDR_LEN + NOQ_RESP_MAX
        msg = bytes(buf[start : start + msg_len])
    return QueryInfo(ts + wall_offset_ns, n, rts, server, ifindex, dport, qflags, pkt_type, msg)


# -- the pending-query table (KERNEL_PAIRING): struct pending_key / struct pending_val -----


class PendingKey(ctypes.Structure):
    """``struct pending_key``: pairing.py's key (netns, role, transport, client, port, id)."""

    _fields_ = (
        ("netns", ctypes.c_uint32),
        ("id", ctypes.c_uint16),
        ("cport", ctypes.c_uint16),
        ("caddr", ctypes.c_uint8 * 16),
        ("role", ctypes.c_uint8),  # 0 client, 1 server
        ("proto", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 2),
    )


class PendingVal(ctypes.Structure):
    """``struct pending_val``: one query waiting for its response in the kernel."""

    _fields_ = (
        ("ts_ns", ctypes.c_uint64),
        ("rts_ns", ctypes.c_uint64 * 4),
        ("server", ctypes.c_uint8 * 16),
        ("retransmits", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("server_port", ctypes.c_uint16),
        ("qlen", ctypes.c_uint16),
        ("namelen", ctypes.c_uint16),
        ("pkt_type", ctypes.c_uint8),
        ("ip_version", ctypes.c_uint8),
        ("msg", ctypes.c_uint8 * (12 + QMAX)),
        ("noticed", ctypes.c_uint8),
    )


PENDING_KEY = struct.Struct("<IHH16sBB2x")
PENDING_VAL = struct.Struct(f"<Q4Q16sIIHHHBB{12 + QMAX}sB3x")
assert PENDING_KEY.size == ctypes.sizeof(PendingKey)
assert PENDING_VAL.size == ctypes.sizeof(PendingVal)


# -- in-kernel aggregation (KERNEL_AGG): struct agg_key / struct agg_val -------------------

AGG_BUCKETS = 20  # DNS_AGG_BUCKETS: len(semconv.LOOKUP_DURATION_BUCKETS) + 1


class AggKey(ctypes.Structure):
    """``struct agg_key``: one dns.lookup.duration series as the kernel knows it."""

    _fields_ = (
        ("netns", ctypes.c_uint32),
        ("server", ctypes.c_uint8 * 16),
        ("server_port", ctypes.c_uint16),
        ("qtype", ctypes.c_uint16),
        ("role", ctypes.c_uint8),  # 0 client, 1 server
        ("ip_version", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 2),
    )


class AggVal(ctypes.Structure):
    """``struct agg_val``: one CPU's histogram of a series (cumulative since load)."""

    _fields_ = (
        ("count", ctypes.c_uint64),
        ("packets", ctypes.c_uint64),
        ("sum_ns", ctypes.c_uint64),
        ("min_ns", ctypes.c_uint64),
        ("max_ns", ctypes.c_uint64),
        ("buckets", ctypes.c_uint64 * AGG_BUCKETS),
    )


AGG_KEY = struct.Struct("<I16sHHBB2x")
AGG_VAL = struct.Struct(f"<5Q{AGG_BUCKETS}Q")
assert AGG_KEY.size == ctypes.sizeof(AggKey)
assert AGG_VAL.size == ctypes.sizeof(AggVal)


def struct_mismatches(
    name: str, compiled: type[ctypes.Structure], mirror: type[ctypes.Structure]
) -> list[str]:
    """Differences between a compiled struct (a ctypes type from bcc) and its mirror here."""
    problems: list[str] = []
    if ctypes.sizeof(compiled) != ctypes.sizeof(mirror):
        problems.append(
            f"sizeof(struct {name}) is {ctypes.sizeof(compiled)}, mirror expects {ctypes.sizeof(mirror)}"
        )
    for spec in mirror._fields_:
        field_name = spec[0]
        mine = getattr(mirror, field_name)
        theirs = getattr(compiled, field_name, None)
        if theirs is None:
            problems.append(f"{name}.{field_name} missing in the compiled struct")
        elif theirs.offset != mine.offset or theirs.size != mine.size:
            problems.append(
                f"{name}.{field_name} at {theirs.offset}/{theirs.size} bytes, "
                f"mirror has {mine.offset}/{mine.size}"
            )
    return problems
