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

from exporter.records import IPPROTO_UDP, PacketMeta, Segment

# bpf/dns_event.h flags
FLAG_FRAGMENT = 0x01  # first fragment of a fragmented IP datagram: payload is partial
FLAG_TRUNCATED = 0x02  # fewer payload bytes captured than the packet carried


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
        ("_pad", ctypes.c_uint8),
    )


HDR_LEN = 68  # DNS_EVENT_HDR_LEN, offsetof(struct dns_event, payload)
# Same layout as DnsEventHeader, for the hot path: one unpack per event.
EVENT_HDR = struct.Struct("<QII16s16sIIHHHBBBBBx")
assert EVENT_HDR.size == HDR_LEN == DnsEventHeader._pad.offset + 1


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
