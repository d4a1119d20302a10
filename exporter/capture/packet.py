"""Parse one captured link-layer frame into a :class:`~exporter.records.Segment`.

``FrameParser(linktype, ports).parse(ts_ns, frame, netns=0, ifindex=0, pkt_type=PACKET_UNKNOWN)``
returns the UDP datagram or TCP segment payload of a DNS packet, or ``None`` for anything
else. It never raises on frame contents: every frame it drops is counted in ``stats``
under a reason, either as *skipped* (a well-formed frame that is not for us) or as
*malformed* (a frame we could not parse).

Link types (pcap LINKTYPE_* values): Ethernet (1) with any number of 802.1Q / 802.1ad /
QinQ tags, Linux cooked v1 (113, "SLL") and v2 (276, "SLL2"), raw IP (101, and 228/229
for IPv4/IPv6 only), BSD loopback/null (0) and OpenBSD loop (108). The cooked link types
record the packet's direction, which becomes ``PacketMeta.pkt_type`` (Linux
``PACKET_*`` values); SLL2 also records the interface index. Other link types do not,
and the caller's ``pkt_type``/``ifindex`` arguments are used (a pcapng reader can derive
the direction from ``epb_flags``).

Network layer: IPv4 with any header length (options skipped), IPv6 with its extension
headers walked (hop-by-hop, routing, destination options, fragment, AH, mobility, HIP,
shim6; ESP and "no next header" end the walk and the packet is skipped). Transport: UDP
and TCP whose source or destination port is in ``ports``.

IP fragments are counted and skipped, never reassembled. The eBPF socket filter sees
packets before the kernel reassembles them too, so a fragmented DNS message is lost to
both sources alike, and the counter says how often. Fragmented DNS is rare since DNS
Flag Day 2020: servers cap their EDNS buffer at 1232 bytes so that UDP answers fit an
IPv6 minimum-MTU packet, and larger answers go over TCP (truncation bit). Skipping also
keeps the parser stateless and its memory bounded. A first fragment of a packet to or
from a DNS port counts as ``fragment``; a later fragment, whose ports are unknown, as
``fragment_tail``. An IPv6 "atomic fragment" (offset 0, no more fragments, RFC 6946)
is a whole packet and is parsed.

``Segment.orig_len`` is the L4 payload length according to the IP header (IPv4 total
length or IPv6 payload length, less the IP options/extension headers and the UDP/TCP
header); ``Segment.payload`` is what was captured of it, which is shorter when the
capture truncated the frame (snap length). Ethernet padding past the IP length is cut.

For TCP, ``tcp_seq`` is the raw sequence number and ``tcp_flags`` the flags byte of the
TCP header (``TCP_FIN``, ``TCP_SYN``, ``TCP_RST``, ... below). Segments with no payload
and none of SYN/FIN/RST (pure ACKs) are skipped (``tcp_no_payload``): they carry nothing
that DNS reassembly needs.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from exporter.records import IPPROTO_TCP, IPPROTO_UDP, PACKET_UNKNOWN, PacketMeta, Segment

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
# Some old files carry the platform DLT_RAW value (12 or 14) instead of LINKTYPE_RAW.
_LINKTYPE_RAW_ALIASES = (12, 14)

SUPPORTED_LINKTYPES: dict[int, str] = {
    LINKTYPE_NULL: "NULL",
    LINKTYPE_ETHERNET: "ETHERNET",
    12: "RAW",
    14: "RAW",
    LINKTYPE_RAW: "RAW",
    LINKTYPE_LOOP: "LOOP",
    LINKTYPE_LINUX_SLL: "LINUX_SLL",
    LINKTYPE_IPV4: "IPV4",
    LINKTYPE_IPV6: "IPV6",
    LINKTYPE_LINUX_SLL2: "LINUX_SLL2",
}

DEFAULT_PORTS: frozenset[int] = frozenset({53})

# TCP header flag bits, as carried in Segment.tcp_flags.
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20

# Reasons a well-formed frame is skipped.
SKIP_NOT_IP = "not_ip"  # link-layer payload is not IPv4/IPv6 (ARP, LLDP, ...)
SKIP_PROTOCOL = "protocol"  # IP payload is not UDP/TCP (ICMP, ESP, no next header, ...)
SKIP_PORT = "port"  # UDP/TCP, but neither port is a DNS port
SKIP_FRAGMENT = "fragment"  # first fragment of a fragmented DNS packet
SKIP_FRAGMENT_TAIL = "fragment_tail"  # later fragment: ports unknown
SKIP_TCP_NO_PAYLOAD = "tcp_no_payload"  # DNS-port TCP segment without data or SYN/FIN/RST

# Reasons a frame is malformed.
BAD_LINK_HEADER = "short_link_header"
BAD_IP_VERSION = "ip_version"
BAD_IP_HEADER = "short_ip_header"
BAD_IHL = "bad_ihl"
BAD_IP_LENGTH = "bad_ip_length"
BAD_EXT_HEADER = "bad_ext_header"
BAD_L4_HEADER = "short_l4_header"
BAD_L4_LENGTH = "bad_l4_length"
BAD_TCP_OFFSET = "bad_tcp_offset"
BAD_UNEXPECTED = "unexpected"  # a parser bug caught by the safety net; please report

_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86DD
_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100, 0x9200)
_AF_INET6_VALUES = (10, 24, 28, 30)  # AF_INET6 on Linux, OpenBSD/NetBSD, FreeBSD, Darwin

_IPV6_EXT_GENERIC = (0, 43, 60, 135, 139, 140)  # hop-by-hop, routing, dst opts, MIPv6, HIP, shim6
_IPV6_FRAGMENT = 44
_IPV6_AH = 51

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_PORTS = struct.Struct("!HH")
_TCP = struct.Struct("!HHIIBB")  # sport, dport, seq, ack, data offset byte, flags byte
_SLL2_IFINDEX = struct.Struct("!I")

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_inet_ntop = socket.inet_ntop
_ADDR_CACHE_MAX = 8192  # a node talks to few DNS endpoints; text forms are cached (bounded)


def _addr_text(raw: bytes, cache: dict[bytes, str]) -> str:
    """inet_ntop, memoised: address bytes (4 or 16) -> text."""
    text = cache.get(raw)
    if text is None:
        if len(cache) >= _ADDR_CACHE_MAX:
            cache.clear()
        text = cache[raw] = _inet_ntop(_AF_INET if len(raw) == 4 else _AF_INET6, raw)
    return text


@dataclass(slots=True)
class ParseStats:
    """Counters of a :class:`FrameParser` (several parsers may share one)."""

    frames: int = 0  # frames handed to parse()
    segments: int = 0  # Segments returned
    skipped: dict[str, int] = field(default_factory=dict)  # SKIP_* reason -> frames
    malformed: dict[str, int] = field(default_factory=dict)  # BAD_* reason -> frames

    @property
    def non_dns(self) -> int:
        """Frames skipped because they are not UDP/TCP to or from a DNS port."""
        s = self.skipped
        return s.get(SKIP_NOT_IP, 0) + s.get(SKIP_PROTOCOL, 0) + s.get(SKIP_PORT, 0)

    @property
    def fragments(self) -> int:
        return self.skipped.get(SKIP_FRAGMENT, 0) + self.skipped.get(SKIP_FRAGMENT_TAIL, 0)

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    def as_dict(self) -> dict[str, int]:
        """Flat counters, e.g. for a log line or a health metric."""
        out = {"frames": self.frames, "segments": self.segments}
        out.update({f"skipped.{k}": v for k, v in sorted(self.skipped.items())})
        out.update({f"malformed.{k}": v for k, v in sorted(self.malformed.items())})
        return out


class FrameParser:
    """Turns captured frames of one link type into Segments of DNS packets.

    ``ports``: a packet is kept when its source or destination port is in this set.
    ``stats``: pass a shared :class:`ParseStats` to aggregate several parsers (e.g. one
    per pcapng interface); a new one is made otherwise.
    Raises ``ValueError`` for an unsupported link type (see ``SUPPORTED_LINKTYPES``).
    """

    __slots__ = ("_addrs", "_link", "linktype", "ports", "stats")

    def __init__(
        self, linktype: int, ports: frozenset[int] = DEFAULT_PORTS, stats: ParseStats | None = None
    ) -> None:
        if linktype not in SUPPORTED_LINKTYPES:
            raise ValueError(f"unsupported link type {linktype}")
        self.linktype = linktype
        self._link = LINKTYPE_RAW if linktype in _LINKTYPE_RAW_ALIASES else linktype
        self.ports = frozenset(ports)
        self.stats = stats if stats is not None else ParseStats()
        self._addrs: dict[bytes, str] = {}

    def _skip(self, reason: str) -> None:
        d = self.stats.skipped
        d[reason] = d.get(reason, 0) + 1

    def _bad(self, reason: str) -> None:
        d = self.stats.malformed
        d[reason] = d.get(reason, 0) + 1

    def parse(
        self, ts_ns: int, frame: bytes, netns: int = 0, ifindex: int = 0, pkt_type: int = PACKET_UNKNOWN
    ) -> Segment | None:
        """Parse one frame captured at wall-clock ``ts_ns``.

        ``netns``/``ifindex``/``pkt_type`` describe where the frame was seen when the
        source knows it; link types that record the direction (SLL, SLL2) or interface
        (SLL2) override ``pkt_type``/``ifindex`` with what the frame says.
        """
        self.stats.frames += 1
        try:
            seg = self._parse(ts_ns, frame, netns, ifindex, pkt_type)
        except (struct.error, IndexError, ValueError):  # pragma: no cover - bounds are checked
            self._bad(BAD_UNEXPECTED)
            return None
        if seg is not None:
            self.stats.segments += 1
        return seg

    def _parse(self, ts_ns: int, frame: bytes, netns: int, ifindex: int, pkt_type: int) -> Segment | None:
        n = len(frame)
        link = self._link
        # ---- link layer: find the IP header and its version (0 = decide from the nibble)
        version = 0
        if link == LINKTYPE_ETHERNET:
            if n < 14:
                self._bad(BAD_LINK_HEADER)
                return None
            ethertype = (frame[12] << 8) | frame[13]
            off = 14
        elif link == LINKTYPE_LINUX_SLL2:
            if n < 20:
                self._bad(BAD_LINK_HEADER)
                return None
            ethertype = (frame[0] << 8) | frame[1]
            ifi = _SLL2_IFINDEX.unpack_from(frame, 4)[0]
            if ifi:
                ifindex = ifi
            pkt_type = frame[10]
            off = 20
        elif link == LINKTYPE_LINUX_SLL:
            if n < 16:
                self._bad(BAD_LINK_HEADER)
                return None
            pkt_type = (frame[0] << 8) | frame[1]
            ethertype = (frame[14] << 8) | frame[15]
            off = 16
        elif link == LINKTYPE_RAW:
            ethertype = 0
            off = 0
        elif link == LINKTYPE_IPV4:
            ethertype, version, off = 0, 4, 0
        elif link == LINKTYPE_IPV6:
            ethertype, version, off = 0, 6, 0
        else:  # NULL / LOOP: a 4-byte address family, in the writer's byte order (LOOP: network order)
            if n < 4:
                self._bad(BAD_LINK_HEADER)
                return None
            fam_be = _U32.unpack_from(frame, 0)[0]
            fam_le = int.from_bytes(frame[0:4], "little")
            if fam_be == 2 or fam_le == 2:
                version = 4
            elif fam_be in _AF_INET6_VALUES or fam_le in _AF_INET6_VALUES:
                version = 6
            else:
                self._skip(SKIP_NOT_IP)
                return None
            ethertype, off = 0, 4
        if ethertype:
            while ethertype in _VLAN_TPIDS:
                if n < off + 4:
                    self._bad(BAD_LINK_HEADER)
                    return None
                ethertype = (frame[off + 2] << 8) | frame[off + 3]
                off += 4
            if ethertype == _ETH_P_IP:
                version = 4
            elif ethertype == _ETH_P_IPV6:
                version = 6
            else:
                self._skip(SKIP_NOT_IP)
                return None

        # ---- network layer
        if n <= off:
            self._bad(BAD_IP_HEADER)
            return None
        nibble = frame[off] >> 4
        if version == 0:
            version = nibble
        if nibble != version or version not in (4, 6):
            self._bad(BAD_IP_VERSION)
            return None

        if version == 4:
            if n < off + 20:
                self._bad(BAD_IP_HEADER)
                return None
            ihl = (frame[off] & 0x0F) * 4
            if ihl < 20:
                self._bad(BAD_IHL)
                return None
            if n < off + ihl:
                self._bad(BAD_IP_HEADER)
                return None
            total = _U16.unpack_from(frame, off + 2)[0]
            if total == 0:  # segmentation offload (or BIG TCP): the length is the frame's
                total = n - off
            if total < ihl:
                self._bad(BAD_IP_LENGTH)
                return None
            frag = _U16.unpack_from(frame, off + 6)[0] & 0x3FFF  # MF flag + fragment offset
            proto = frame[off + 9]
            src = _addr_text(frame[off + 12 : off + 16], self._addrs)
            dst = _addr_text(frame[off + 16 : off + 20], self._addrs)
            l4 = off + ihl
            end = off + total
            ipv6 = False
        else:
            if n < off + 40:
                self._bad(BAD_IP_HEADER)
                return None
            plen = _U16.unpack_from(frame, off + 4)[0]
            proto = frame[off + 6]
            src = _addr_text(frame[off + 8 : off + 24], self._addrs)
            dst = _addr_text(frame[off + 24 : off + 40], self._addrs)
            l4 = off + 40
            end = l4 + plen if plen else n  # 0: jumbogram or segmentation offload
            ipv6 = True
            frag = 0
            while True:
                if proto in _IPV6_EXT_GENERIC or proto == _IPV6_AH:
                    if n < l4 + 2:
                        self._bad(BAD_EXT_HEADER)
                        return None
                    hlen = (frame[l4 + 1] + 2) * 4 if proto == _IPV6_AH else (frame[l4 + 1] + 1) * 8
                    proto = frame[l4]
                    l4 += hlen
                elif proto == _IPV6_FRAGMENT:
                    if n < l4 + 8:
                        self._bad(BAD_EXT_HEADER)
                        return None
                    fo = _U16.unpack_from(frame, l4 + 2)[0]
                    # offset (13 bits, in 8-byte units) and the M flag; 0 = atomic fragment
                    frag = ((fo >> 3) & 0x1FFF) | ((fo & 1) << 13)
                    proto = frame[l4]
                    l4 += 8
                else:
                    break
                if l4 > end:
                    self._bad(BAD_EXT_HEADER)
                    return None
        l4_len = end - l4  # L4 length per the IP header
        if end > n:  # the capture cut the frame (snap length): payload will be short of orig_len
            end = n

        # ---- transport
        if frag & 0x1FFF:  # not the first fragment: there is no L4 header here
            self._skip(SKIP_FRAGMENT_TAIL)
            return None
        if proto != IPPROTO_UDP and proto != IPPROTO_TCP:
            self._skip(SKIP_PROTOCOL)
            return None
        if n < l4 + 4:
            self._bad(BAD_L4_HEADER)
            return None
        sport, dport = _PORTS.unpack_from(frame, l4)
        ports = self.ports
        if sport not in ports and dport not in ports:
            self._skip(SKIP_PORT)
            return None
        if frag:  # first fragment (MF set) of a DNS packet
            self._skip(SKIP_FRAGMENT)
            return None

        meta_pkt_type = pkt_type
        if proto == IPPROTO_UDP:
            if n < l4 + 8:
                self._bad(BAD_L4_HEADER)
                return None
            orig_len = l4_len - 8
            if orig_len < 0:
                self._bad(BAD_L4_LENGTH)
                return None
            start = l4 + 8
            payload = frame[start:end] if end > start else b""
            return Segment(
                PacketMeta(ts_ns, netns, ifindex, meta_pkt_type, IPPROTO_UDP, src, sport, dst, dport, ipv6),
                payload,
                orig_len,
            )

        if n < l4 + 20:
            self._bad(BAD_L4_HEADER)
            return None
        _, _, seq, _, doff, flags = _TCP.unpack_from(frame, l4)
        hlen = (doff >> 4) * 4
        if hlen < 20 or hlen > l4_len:
            self._bad(BAD_TCP_OFFSET)
            return None
        # (options cut by the capture: still a segment, with none of its payload captured)
        orig_len = l4_len - hlen
        if orig_len == 0 and not flags & (TCP_SYN | TCP_FIN | TCP_RST):
            self._skip(SKIP_TCP_NO_PAYLOAD)
            return None
        start = l4 + hlen
        payload = frame[start:end] if end > start else b""
        return Segment(
            PacketMeta(ts_ns, netns, ifindex, meta_pkt_type, IPPROTO_TCP, src, sport, dst, dport, ipv6),
            payload,
            orig_len,
            seq,
            flags,
        )
