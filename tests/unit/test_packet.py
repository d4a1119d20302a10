"""Frame parser on hand-built frames: link types, VLANs, IP options, IPv6 extension headers,
fragments, truncation and malformed input. Frames are built here with struct, DNS payloads
with dnspython, so the expected values are independent of the parser."""

from __future__ import annotations

import socket
import struct

import dns.message
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.capture.packet import (
    SUPPORTED_LINKTYPES,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    FrameParser,
    ParseStats,
)
from exporter.records import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    PACKET_HOST,
    PACKET_OUTGOING,
    PACKET_UNKNOWN,
    Segment,
)

QUERY = dns.message.make_query("svc.cluster.local", "A")
QUERY.id = 0x4242
DNS = QUERY.to_wire()
C4, S4 = "198.18.1.10", "198.18.1.53"
C6, S6 = "fd00:1::10", "fd00:1::53"


# ---- builders -------------------------------------------------------------------------


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, seq: int, flags: int, payload: bytes = b"", options: bytes = b"") -> bytes:
    assert len(options) % 4 == 0
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 7, doff << 4, flags, 65535, 0, 0) + options + payload


def ipv4(
    src: str, dst: str, proto: int, l4: bytes, options: bytes = b"", frag: int = 0, total: int | None = None
) -> bytes:
    """frag: the flags + fragment offset field (0x2000 = more fragments, 0x4000 = don't fragment)."""
    assert len(options) % 4 == 0
    ihl = 5 + len(options) // 4
    tot = total if total is not None else ihl * 4 + len(l4)
    addrs = socket.inet_aton(src) + socket.inet_aton(dst)
    return struct.pack("!BBHHHBBH8s", 0x40 | ihl, 0, tot, 1, frag, 64, proto, 0, addrs) + options + l4


def ext(nh: int, body_len8: int) -> bytes:
    """A generic IPv6 extension header of (body_len8 + 1) * 8 bytes."""
    return bytes([nh, body_len8]) + b"\x01" * (6 + 8 * body_len8)


def ipv6(src: str, dst: str, nh: int, rest: bytes, plen: int | None = None) -> bytes:
    addrs = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    return struct.pack("!IHBB32s", 6 << 28, len(rest) if plen is None else plen, nh, 64, addrs) + rest


def eth(ethertype: int, payload: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    out = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"
    for tpid in vlans:
        out += struct.pack("!HH", tpid, 100)  # tag: TPID, TCI (VLAN 100)
    return out + struct.pack("!H", ethertype) + payload


def sll(pkt_type: int, ethertype: int, payload: bytes) -> bytes:
    return struct.pack("!HHH8sH", pkt_type, 1, 6, b"\x02" * 6 + b"\0\0", ethertype) + payload


def sll2(pkt_type: int, ifindex: int, ethertype: int, payload: bytes) -> bytes:
    return struct.pack("!HHIHBB8s", ethertype, 0, ifindex, 1, pkt_type, 6, b"\x02" * 6 + b"\0\0") + payload


def parse(
    linktype: int, frame: bytes, ports: frozenset[int] = frozenset({53})
) -> tuple[Segment | None, ParseStats]:
    p = FrameParser(linktype, ports)
    return p.parse(123_456_789, frame, netns=4026531840, ifindex=9), p.stats


def ok(linktype: int, frame: bytes) -> Segment:
    seg, stats = parse(linktype, frame)
    assert seg is not None, stats
    return seg


# ---- link types -----------------------------------------------------------------------


def test_ethernet_ipv4_udp() -> None:
    seg = ok(1, eth(0x0800, ipv4(C4, S4, 17, udp(40000, 53, DNS))))
    m = seg.meta
    assert (m.src, m.sport, m.dst, m.dport, m.transport, m.ipv6) == (C4, 40000, S4, 53, IPPROTO_UDP, False)
    assert (m.ts_ns, m.netns, m.ifindex, m.pkt_type) == (123_456_789, 4026531840, 9, PACKET_UNKNOWN)
    assert seg.payload == DNS and seg.orig_len == len(DNS)
    assert dns.message.from_wire(seg.payload).id == 0x4242


@pytest.mark.parametrize("vlans", [(0x8100,), (0x88A8, 0x8100), (0x9100, 0x8100, 0x8100)])
def test_vlan_tags(vlans: tuple[int, ...]) -> None:
    seg = ok(1, eth(0x86DD, ipv6(C6, S6, 17, udp(40000, 53, DNS)), vlans))
    assert (seg.meta.src, seg.meta.dst, seg.payload) == (C6, S6, DNS)


def test_vlan_tag_cut_short_is_malformed() -> None:
    seg, stats = parse(1, eth(0x8100, b"\x00"))
    assert seg is None and stats.malformed == {"short_link_header": 1}


def test_ethernet_padding_is_cut() -> None:
    # a tiny UDP packet padded to the 60-byte Ethernet minimum
    frame = eth(0x0800, ipv4(C4, S4, 17, udp(53, 40000, b"ab")))
    seg = ok(1, frame + b"\0" * (60 - len(frame)))
    assert seg.payload == b"ab" and seg.orig_len == 2


def test_arp_is_not_ip() -> None:
    seg, stats = parse(1, eth(0x0806, b"\0" * 28))
    assert seg is None and stats.skipped == {"not_ip": 1} and stats.non_dns == 1


def test_linux_sll_pkt_type() -> None:
    seg = ok(113, sll(PACKET_OUTGOING, 0x0800, ipv4(C4, S4, 17, udp(40000, 53, DNS))))
    assert seg.meta.pkt_type == PACKET_OUTGOING and seg.meta.ifindex == 9  # SLL v1 has no ifindex


def test_linux_sll2_pkt_type_and_ifindex() -> None:
    seg = ok(276, sll2(PACKET_HOST, 17, 0x86DD, ipv6(S6, C6, 17, udp(53, 40000, DNS))))
    assert (seg.meta.pkt_type, seg.meta.ifindex, seg.meta.src) == (PACKET_HOST, 17, S6)


@pytest.mark.parametrize("linktype", [101, 12, 14])
def test_raw_ip_both_versions(linktype: int) -> None:
    assert ok(linktype, ipv4(C4, S4, 17, udp(1, 53, DNS))).meta.src == C4
    assert ok(linktype, ipv6(C6, S6, 17, udp(1, 53, DNS))).meta.src == C6


def test_ipv4_and_ipv6_linktypes_check_version() -> None:
    assert ok(228, ipv4(C4, S4, 17, udp(1, 53, DNS))).meta.ipv6 is False
    assert ok(229, ipv6(C6, S6, 17, udp(1, 53, DNS))).meta.ipv6 is True
    seg, stats = parse(228, ipv6(C6, S6, 17, udp(1, 53, DNS)))
    assert seg is None and stats.malformed == {"ip_version": 1}


@pytest.mark.parametrize(
    ("linktype", "family", "packet"),
    [
        (0, struct.pack("<I", 2), ipv4(C4, S4, 17, udp(1, 53, DNS))),  # little-endian writer
        (0, struct.pack(">I", 2), ipv4(C4, S4, 17, udp(1, 53, DNS))),  # big-endian writer
        (0, struct.pack("<I", 30), ipv6(C6, S6, 17, udp(1, 53, DNS))),  # Darwin AF_INET6
        (0, struct.pack("<I", 24), ipv6(C6, S6, 17, udp(1, 53, DNS))),  # OpenBSD AF_INET6
        (0, struct.pack("<I", 10), ipv6(C6, S6, 17, udp(1, 53, DNS))),  # Linux AF_INET6
        (108, struct.pack(">I", 2), ipv4(C4, S4, 17, udp(1, 53, DNS))),
    ],
)
def test_null_and_loop(linktype: int, family: bytes, packet: bytes) -> None:
    assert ok(linktype, family + packet).payload == DNS


def test_unsupported_linktype() -> None:
    with pytest.raises(ValueError, match="unsupported link type 189"):
        FrameParser(189)
    assert 276 in SUPPORTED_LINKTYPES and 113 in SUPPORTED_LINKTYPES


# ---- IPv4 / IPv6 ----------------------------------------------------------------------


@pytest.mark.parametrize("words", [1, 3, 10])
def test_ipv4_options(words: int) -> None:
    options = b"\x01" * (4 * words)  # NOPs
    seg = ok(101, ipv4(C4, S4, 17, udp(40000, 53, DNS), options=options))
    assert seg.payload == DNS and seg.meta.sport == 40000


def test_ipv6_extension_headers() -> None:
    # hop-by-hop -> routing -> destination options -> atomic fragment -> AH -> UDP
    ah = bytes([17, 4]) + b"\0" * 2 + b"\x05" * 20  # AH: (4 + 2) * 4 = 24 bytes
    frag_atomic = bytes([51, 0]) + struct.pack("!HI", 0, 0xABCD)  # offset 0, M = 0
    rest = ext(43, 0) + ext(60, 1) + ext(44, 0) + frag_atomic + ah + udp(40000, 53, DNS)
    seg = ok(101, ipv6(C6, S6, 0, rest))
    assert seg.payload == DNS and seg.meta.dport == 53 and seg.orig_len == len(DNS)


def test_ipv6_tcp_after_extension_header() -> None:
    seg = ok(229, ipv6(C6, S6, 60, ext(6, 0) + tcp(40000, 53, 1000, TCP_PSH | TCP_ACK, b"\x00\x02hi")))
    assert seg.meta.transport == IPPROTO_TCP and seg.payload == b"\x00\x02hi"


@pytest.mark.parametrize("nh", [50, 59, 58])  # ESP, no next header, ICMPv6
def test_ipv6_non_udp_tcp_skipped(nh: int) -> None:
    seg, stats = parse(229, ipv6(C6, S6, 0, ext(nh, 0) + b"\0" * 16))
    assert seg is None and stats.skipped == {"protocol": 1}


def test_ipv6_extension_header_beyond_packet_is_malformed() -> None:
    seg, stats = parse(229, ipv6(C6, S6, 0, bytes([17, 200]) + b"\0" * 14))
    assert seg is None and stats.malformed == {"bad_ext_header": 1}


def test_ipv4_first_fragment_of_dns_is_counted() -> None:
    seg, stats = parse(101, ipv4(C4, S4, 17, udp(53, 40000, DNS), frag=0x2000))  # MF
    assert seg is None and stats.skipped == {"fragment": 1} and stats.fragments == 1


def test_ipv4_later_fragment_is_counted() -> None:
    seg, stats = parse(101, ipv4(C4, S4, 17, DNS[:16], frag=185))  # offset 185*8, no MF
    assert seg is None and stats.skipped == {"fragment_tail": 1}


def test_ipv4_dont_fragment_flag_is_not_a_fragment() -> None:
    assert ok(101, ipv4(C4, S4, 17, udp(53, 40000, DNS), frag=0x4000)).payload == DNS


def test_ipv6_fragments_counted() -> None:
    first = bytes([17, 0]) + struct.pack("!HI", 1, 7)  # offset 0, M = 1
    later = bytes([17, 0]) + struct.pack("!HI", (100 << 3), 7)  # offset 100, M = 0
    p = FrameParser(229)
    assert p.parse(1, ipv6(C6, S6, 44, first + udp(53, 1, DNS))) is None
    assert p.parse(1, ipv6(C6, S6, 44, later + DNS[:16])) is None
    assert p.stats.skipped == {"fragment": 1, "fragment_tail": 1}


def test_first_fragment_of_non_dns_counts_as_port() -> None:
    seg, stats = parse(101, ipv4(C4, S4, 17, udp(5000, 6000, b"x" * 20), frag=0x2000))
    assert seg is None and stats.skipped == {"port": 1}


# ---- ports ----------------------------------------------------------------------------


def test_non_dns_port_skipped_and_custom_ports() -> None:
    frame = ipv4(C4, S4, 17, udp(40000, 5353, DNS))
    seg, stats = parse(101, frame)
    assert seg is None and stats.skipped == {"port": 1} and stats.non_dns == 1
    seg, _ = parse(101, frame, frozenset({53, 5353}))
    assert seg is not None and seg.meta.dport == 5353
    seg, _ = parse(101, ipv4(C4, S4, 17, udp(53, 40000, DNS)), frozenset({5353}))
    assert seg is None


def test_icmp_skipped() -> None:
    seg, stats = parse(101, ipv4(C4, S4, 1, b"\x08\0" + b"\0" * 30))
    assert seg is None and stats.skipped == {"protocol": 1}


# ---- TCP ------------------------------------------------------------------------------


def test_tcp_fields() -> None:
    framed = struct.pack("!H", len(DNS)) + DNS
    mss = b"\x02\x04\x05\xb4"
    seg = ok(1, eth(0x0800, ipv4(C4, S4, 6, tcp(40000, 53, 0xFFFFFFF0, TCP_PSH | TCP_ACK, framed, mss * 3))))
    assert (seg.tcp_seq, seg.tcp_flags) == (0xFFFFFFF0, TCP_PSH | TCP_ACK)
    assert seg.payload == framed and seg.orig_len == len(framed)


@pytest.mark.parametrize("flags", [TCP_SYN, TCP_SYN | TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST])
def test_tcp_control_segments_kept(flags: int) -> None:
    seg = ok(101, ipv4(C4, S4, 6, tcp(40000, 53, 5, flags)))
    assert seg.tcp_flags == flags and seg.payload == b"" and seg.orig_len == 0


def test_tcp_pure_ack_skipped() -> None:
    seg, stats = parse(101, ipv4(C4, S4, 6, tcp(40000, 53, 5, TCP_ACK)))
    assert seg is None and stats.skipped == {"tcp_no_payload": 1}


def test_tcp_bad_data_offset() -> None:
    bad = bytearray(tcp(40000, 53, 5, TCP_ACK, b"xx"))
    bad[12] = 4 << 4  # 16-byte header: invalid
    seg, stats = parse(101, ipv4(C4, S4, 6, bytes(bad)))
    assert seg is None and stats.malformed == {"bad_tcp_offset": 1}


def test_tcp_options_cut_by_capture_still_gives_flags() -> None:
    frame = ipv4(C4, S4, 6, tcp(40000, 53, 99, TCP_SYN, b"", b"\x01" * 20))
    seg = ok(101, frame[:45])  # 20 IP + 20 TCP + 5 of the 20 option bytes
    assert seg.tcp_flags == TCP_SYN and seg.tcp_seq == 99 and seg.orig_len == 0


# ---- truncation and malformed input ---------------------------------------------------


def test_snaplen_truncated_udp() -> None:
    frame = eth(0x0800, ipv4(C4, S4, 17, udp(53, 40000, DNS)))
    seg = ok(1, frame[:60])
    assert seg.orig_len == len(DNS) and seg.payload == DNS[: 60 - 42]


def test_ip_header_fields_checked() -> None:
    p = FrameParser(101)
    bad_ihl = bytearray(ipv4(C4, S4, 17, udp(1, 53, DNS)))
    bad_ihl[0] = 0x44
    assert p.parse(1, bytes(bad_ihl)) is None
    assert p.parse(1, ipv4(C4, S4, 17, udp(1, 53, DNS), total=10)) is None
    assert p.parse(1, b"\x70" + b"\0" * 40) is None
    assert p.parse(1, b"") is None
    assert p.stats.malformed == {"bad_ihl": 1, "bad_ip_length": 1, "ip_version": 1, "short_ip_header": 1}
    assert p.stats.frames == 4 and p.stats.segments == 0


def test_udp_length_shorter_than_header() -> None:
    seg, stats = parse(101, ipv4(C4, S4, 17, udp(1, 53, b""), total=20 + 4))
    assert seg is None and stats.malformed == {"bad_l4_length": 1}


FRAMES = [
    (1, eth(0x0800, ipv4(C4, S4, 17, udp(40000, 53, DNS), options=b"\x01" * 8), (0x8100,))),
    (
        1,
        eth(
            0x86DD,
            ipv6(C6, S6, 0, ext(44, 0) + bytes([6, 0, 0, 0, 0, 0, 0, 1]) + tcp(1, 53, 9, TCP_ACK, DNS)),
        ),
    ),
    (113, sll(0, 0x86DD, ipv6(C6, S6, 60, ext(17, 2) + udp(1, 53, DNS)))),
    (276, sll2(4, 3, 0x0800, ipv4(C4, S4, 6, tcp(1, 53, 9, TCP_ACK, DNS, b"\x01" * 12)))),
    (0, struct.pack("<I", 30) + ipv6(C6, S6, 17, udp(1, 53, DNS))),
]


@pytest.mark.parametrize(("linktype", "frame"), FRAMES)
def test_every_prefix_is_counted_never_raised(linktype: int, frame: bytes) -> None:
    p = FrameParser(linktype)
    full = p.parse(1, frame)
    assert full is not None and full.payload.endswith(DNS)
    for cut in range(len(frame)):
        seg = p.parse(1, frame[:cut])
        if seg is not None:  # headers complete: a segment with what was captured of the payload
            assert len(seg.payload) < seg.orig_len or seg.orig_len == 0
            assert full.payload.startswith(seg.payload)
    s = p.stats
    assert s.frames == len(frame) + 1
    assert s.frames == s.segments + sum(s.malformed.values()) + sum(s.skipped.values())
    assert "unexpected" not in s.malformed


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SUPPORTED_LINKTYPES)), st.binary(max_size=120))
def test_random_frames_never_raise(linktype: int, frame: bytes) -> None:
    p = FrameParser(linktype)
    p.parse(0, frame)
    s = p.stats
    assert s.frames == 1 == s.segments + sum(s.malformed.values()) + sum(s.skipped.values())
    assert "unexpected" not in s.malformed


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(FRAMES) - 1), st.data())
def test_mutated_frames_never_raise(i: int, data: st.DataObject) -> None:
    linktype, frame = FRAMES[i]
    buf = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    p = FrameParser(linktype)
    p.parse(0, bytes(buf))
    assert "unexpected" not in p.stats.malformed
    assert p.stats.frames == 1


def test_shared_stats_and_as_dict() -> None:
    shared = ParseStats()
    a, b = FrameParser(1, stats=shared), FrameParser(101, stats=shared)
    a.parse(1, eth(0x0806, b""))
    b.parse(1, ipv4(C4, S4, 17, udp(1, 53, DNS)))
    assert shared.as_dict() == {"frames": 2, "segments": 1, "skipped.not_ip": 1}


def test_rst_flag_value() -> None:
    assert (TCP_FIN, TCP_SYN, TCP_RST) == (1, 2, 4)
    assert IPPROTO_UDP == 17


def test_many_distinct_addresses_stay_correct() -> None:
    """Address text is memoised; the memo is bounded and never returns a stale address."""
    p = FrameParser(101)
    for i in range(20000):
        src = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        seg = p.parse(i, ipv4(src, S4, 17, udp(1000, 53, DNS)))
        assert seg is not None and seg.meta.src == src and seg.meta.dst == S4
