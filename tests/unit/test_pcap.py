"""Capture-file reader: real captures compared with tshark's own dissection of them.

The fixtures in tests/fixtures/ were captured by tests/fixtures/make_pcaps.py (real
dnsmasq, real client sockets in two network namespaces); ``test_regenerate_live``
captures them again as root and runs the same comparison on the fresh files.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import dns.message
import pytest

from exporter.capture.packet import TCP_FIN, TCP_RST, TCP_SYN
from exporter.capture.pcap import CaptureReader, PcapError, read_capture
from exporter.capture.tcp import TcpReassembler
from exporter.records import IPPROTO_TCP, IPPROTO_UDP, PACKET_HOST, PACKET_OUTGOING, PACKET_UNKNOWN, Segment
from tests.conftest import require, require_root, require_tool

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
HAVE_TSHARK = shutil.which("tshark") is not None


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_pcaps", FIXTURES / "make_pcaps.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gen = _load_generator()

# --------------------------------------------------------------------------------------
# tshark oracle

FIELDS = (
    "frame.time_epoch",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "udp.srcport",
    "udp.dstport",
    "udp.length",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.seq_raw",
    "tcp.flags",
    "tcp.len",
    "sll.pkttype",
    "sll.ifindex",
    "frame.len",
    "frame.cap_len",
    "dns.id",
    "dns.qry.name",
)
# What the reader yields: UDP/TCP on port 53, except TCP segments with no data and no SYN/FIN/RST.
DISPLAY_FILTER = (
    "udp.port == 53 or (tcp.port == 53 and (tcp.len > 0 or tcp.flags.syn == 1 "
    "or tcp.flags.fin == 1 or tcp.flags.reset == 1))"
)


@dataclass
class Row:
    ts_ns: int
    src: str
    dst: str
    sport: int
    dport: int
    transport: int
    seq: int
    flags: int
    orig_len: int
    pkt_type: int | None
    ifindex: int | None
    missing: int  # bytes the capture cut off the frame
    dns_ids: list[int]
    qnames: list[str]


def tshark_rows(path: Path, display_filter: str = DISPLAY_FILTER) -> list[Row]:
    require_tool("tshark")
    cmd = ["tshark", "-n", "-r", str(path), "-Y", display_filter, "-T", "fields"]
    cmd += ["-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for f in FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        v = dict(zip(FIELDS, line.split("\t"), strict=True))
        udp = bool(v["udp.srcport"])
        rows.append(
            Row(
                ts_ns=int(Decimal(v["frame.time_epoch"] or 0) * 1_000_000_000),
                src=v["ip.src"] or v["ipv6.src"],
                dst=v["ip.dst"] or v["ipv6.dst"],
                sport=int(v["udp.srcport"] or v["tcp.srcport"]),
                dport=int(v["udp.dstport"] or v["tcp.dstport"]),
                transport=IPPROTO_UDP if udp else IPPROTO_TCP,
                seq=0 if udp else int(v["tcp.seq_raw"]),
                flags=0 if udp else int(v["tcp.flags"], 16) & 0xFF,
                orig_len=int(v["udp.length"]) - 8 if udp else int(v["tcp.len"]),
                pkt_type=int(v["sll.pkttype"]) if v["sll.pkttype"] else None,
                ifindex=int(v["sll.ifindex"]) if v["sll.ifindex"] else None,
                missing=int(v["frame.len"]) - int(v["frame.cap_len"]),
                dns_ids=[int(x, 16) for x in v["dns.id"].split(",") if x],
                qnames=[x for x in v["dns.qry.name"].split(",") if x],
            )
        )
    return rows


def decode(wire: bytes) -> tuple[int, str]:
    msg = dns.message.from_wire(wire)
    return msg.id, msg.question[0].name.to_text(omit_final_dot=True)


def check_against_tshark(path: Path, has_sll: bool, has_ifindex: bool, complete: bool) -> list[Segment]:
    """Every field the reader yields equals tshark's; returns the segments."""
    reader = CaptureReader(path)
    segs = list(reader)
    rows = tshark_rows(path)
    assert len(rows) >= 20, "the fixture should hold the whole exchange"
    assert len(segs) == len(rows)
    tcp = TcpReassembler()
    for seg, row in zip(segs, rows, strict=True):
        m = seg.meta
        assert m.ts_ns == row.ts_ns
        assert (m.src, m.dst, m.sport, m.dport, m.transport) == (
            row.src,
            row.dst,
            row.sport,
            row.dport,
            row.transport,
        )
        assert m.ipv6 == (":" in row.src)
        assert seg.orig_len == row.orig_len
        assert len(seg.payload) == max(0, row.orig_len - row.missing)
        if m.transport == IPPROTO_TCP:
            assert (seg.tcp_seq, seg.tcp_flags) == (row.seq, row.flags)
        if has_sll:
            assert m.pkt_type == row.pkt_type
            assert m.pkt_type in (PACKET_HOST, PACKET_OUTGOING)
            # the client netns captured its own traffic: queries go out, responses come in
            assert m.pkt_type == (PACKET_OUTGOING if m.dport == 53 else PACKET_HOST)
        else:
            assert m.pkt_type == PACKET_UNKNOWN
        if has_ifindex:
            assert m.ifindex == row.ifindex and m.ifindex > 0
        else:
            assert m.ifindex == 0
        messages = tcp.feed(seg)
        if complete:
            # DNS messages completed by this packet (two for the one-send() pair, none for
            # the first half of the split query) match tshark's reassembly, id and name.
            got = [decode(wire) for _, wire in messages]
            assert got == list(zip(row.dns_ids, row.qnames, strict=True))
            assert all(meta is seg.meta for meta, _ in messages)
    st = reader.stats
    assert st.truncated == 0 and st.bad_blocks == 0
    assert st.parse.skipped.get("port") == 1  # the datagram to port 5300
    assert st.parse.malformed == {}
    if complete:
        assert tcp.stats.messages == 8
        assert tcp.stats.flows_closed == 4 and tcp.flows == 0
    return segs


FIXTURE_KINDS = {
    # file: (records pkt_type, records ifindex, frames complete)
    "sll2.pcap": (True, True, True),
    "sll.pcap": (True, False, True),
    "eth.pcapng": (False, False, True),
    "eth_snap.pcap": (False, False, False),
}


def expected_exchanges(segs: list[Segment]) -> set[tuple[int, str, int]]:
    tcp = TcpReassembler()
    out = set()
    for seg in segs:
        for meta, wire in tcp.feed(seg):
            qid, name = decode(wire)
            out.add((qid, name, meta.transport))
    return out


ALL_EXCHANGES = {
    (gen.ID_UDP4, "example.test", IPPROTO_UDP),
    (gen.ID_UDP4_REFUSED, "refused.invalid", IPPROTO_UDP),
    (gen.ID_UDP6, "example.test", IPPROTO_UDP),
    (gen.ID_TCP_PAIR1, "pair1.example.test", IPPROTO_TCP),
    (gen.ID_TCP_PAIR2, "pair2.example.test", IPPROTO_TCP),
    (gen.ID_TCP_SPLIT, "split.example.test", IPPROTO_TCP),
    (gen.ID_TCP6, "v6.example.test", IPPROTO_TCP),
}


@pytest.mark.parametrize("name", sorted(FIXTURE_KINDS))
def test_fixture_matches_tshark(name: str) -> None:
    has_sll, has_ifindex, complete = FIXTURE_KINDS[name]
    segs = check_against_tshark(FIXTURES / name, has_sll, has_ifindex, complete)
    if complete:
        assert expected_exchanges(segs) == ALL_EXCHANGES


def test_fixture_formats() -> None:
    """The fixtures cover the formats they claim to (so the comparisons above mean something)."""
    formats = {}
    for name in FIXTURE_KINDS:
        r = CaptureReader(FIXTURES / name)
        formats[name] = (r.stats.format, r.linktype)
        list(r)
    assert formats == {
        "sll2.pcap": ("pcap-ns", 276),
        "sll.pcap": ("pcap", 113),
        "eth.pcapng": ("pcapng", None),
        "eth_snap.pcap": ("pcap", 1),
    }
    r = CaptureReader(FIXTURES / "eth.pcapng")
    list(r)
    assert r.stats.unknown_blocks >= 1  # tshark writes an interface statistics block at the end


def test_snap_truncated_tcp_is_counted_not_reassembled() -> None:
    tcp = TcpReassembler()
    for seg in read_capture(FIXTURES / "eth_snap.pcap"):
        for meta, _ in tcp.feed(seg):
            assert meta.transport == IPPROTO_UDP
    assert tcp.stats.messages == 0
    assert tcp.stats.truncated_segments >= 4  # the four TCP queries/responses were cut at 90 bytes


def test_ports_option_keeps_other_port() -> None:
    segs = list(read_capture(FIXTURES / "sll2.pcap", ports=frozenset({53, 5300})))
    extra = [s for s in segs if 5300 in (s.meta.sport, s.meta.dport)]
    assert len(extra) == 1 and extra[0].payload == b"not dns" and extra[0].orig_len == 7
    only = list(read_capture(FIXTURES / "sll2.pcap", ports=frozenset({5300})))
    assert [s.payload for s in only] == [b"not dns"]


# --------------------------------------------------------------------------------------
# Format variants: rewritten from a real capture, checked against tshark and our reading of the original


def _pcap_records(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Split a little-endian classic pcap into (file header, [(record header, frame)])."""
    assert data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
    pos, recs = 24, []
    while pos < len(data):
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        recs.append((data[pos : pos + 16], data[pos + 16 : pos + 16 + incl]))
        pos += 16 + incl
    return data[:24], recs


def _to_big_endian_pcap(data: bytes) -> bytes:
    head, recs = _pcap_records(data)
    out = [struct.pack(">I", struct.unpack("<I", head[:4])[0])]
    out.append(struct.pack(">HHiIII", *struct.unpack("<HHiIII", head[4:])))
    for rh, frame in recs:
        out.append(struct.pack(">IIII", *struct.unpack("<IIII", rh)))
        out.append(frame)
    return b"".join(out)


def _meta_tuples(segs: list[Segment]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for s in segs:
        m = s.meta
        out.append((m.ts_ns, m.src, m.sport, m.dst, m.dport, m.pkt_type, m.ifindex, s.payload, s.orig_len))
    return out


def test_big_endian_pcap(tmp_path: Path) -> None:
    be = tmp_path / "be.pcap"
    be.write_bytes(_to_big_endian_pcap((FIXTURES / "sll2.pcap").read_bytes()))
    assert be.read_bytes()[:4] == b"\xa1\xb2\x3c\x4d"
    assert _meta_tuples(list(read_capture(be))) == _meta_tuples(list(read_capture(FIXTURES / "sll2.pcap")))
    if HAVE_TSHARK:
        assert [s.meta.ts_ns for s in read_capture(be)] == [r.ts_ns for r in tshark_rows(be)]


@pytest.mark.parametrize("fmt", ["pcap", "nsecpcap", "modpcap", "pcapng"])
def test_editcap_conversions(tmp_path: Path, fmt: str) -> None:
    """editcap (Wireshark) rewrites a real capture into each format; we read each the same way."""
    require_tool("editcap")
    out = tmp_path / f"x.{fmt}"
    subprocess.run(
        ["editcap", "-F", fmt, str(FIXTURES / "sll2.pcap"), str(out)], check=True, capture_output=True
    )
    segs = list(read_capture(out))
    orig = list(read_capture(FIXTURES / "sll2.pcap"))
    want = [s.meta.ts_ns for s in orig]
    if fmt in ("pcap", "modpcap"):  # µs resolution: editcap truncates the ns
        want = [t // 1000 * 1000 for t in want]
    assert [s.meta.ts_ns for s in segs] == want
    assert [(s.meta.src, s.meta.sport, s.payload, s.meta.pkt_type) for s in segs] == [
        (s.meta.src, s.meta.sport, s.payload, s.meta.pkt_type) for s in orig
    ]
    assert [s.meta.ts_ns for s in segs] == [r.ts_ns for r in tshark_rows(out)]


def test_gzip_compressed(tmp_path: Path) -> None:
    gz = tmp_path / "eth.pcapng.gz"
    gz.write_bytes(gzip.compress((FIXTURES / "eth.pcapng").read_bytes()))
    assert _meta_tuples(list(read_capture(gz))) == _meta_tuples(list(read_capture(FIXTURES / "eth.pcapng")))


def test_stream_source() -> None:
    data = (FIXTURES / "sll.pcap").read_bytes()
    assert _meta_tuples(list(read_capture(io.BytesIO(data)))) == _meta_tuples(
        list(read_capture(FIXTURES / "sll.pcap"))
    )


# --------------------------------------------------------------------------------------
# Hand-built pcapng: both byte orders, if_tsresol (decimal and binary), if_tsoffset,
# several interfaces, SPB, epb_flags, unknown blocks. tshark reads the same file.


def _opt(bo: str, code: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack(bo + "HH", code, len(value)) + value + b"\0" * pad


def _block(bo: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * ((-len(body)) % 4)
    n = len(body) + 12
    return struct.pack(bo + "II", btype, n) + body + struct.pack(bo + "I", n)


def _shb(bo: str) -> bytes:
    body = struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1) + _opt(bo, 4, b"dnsotel test") + _opt(bo, 0, b"")
    return _block(bo, 0x0A0D0D0A, body)


def _idb(bo: str, linktype: int, tsresol: int | None = None, tsoffset: int | None = None) -> bytes:
    body = struct.pack(bo + "HHI", linktype, 0, 0)
    if tsresol is not None:
        body += _opt(bo, 9, bytes([tsresol]))
    if tsoffset is not None:
        body += _opt(bo, 14, struct.pack(bo + "q", tsoffset))
    body += _opt(bo, 0, b"")
    return _block(bo, 1, body)


def _epb(bo: str, ifid: int, ts: int, frame: bytes, flags: int | None = None) -> bytes:
    body = struct.pack(bo + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame))
    body += frame + b"\0" * ((-len(frame)) % 4)
    if flags is not None:
        body += _opt(bo, 2, struct.pack(bo + "I", flags)) + _opt(bo, 0, b"")
    return _block(bo, 6, body)


def _spb(bo: str, frame: bytes) -> bytes:
    return _block(bo, 3, struct.pack(bo + "I", len(frame)) + frame)


def _eth_frames() -> list[tuple[int, bytes]]:
    """(ts_ns, frame) of the UDP packets of the real Ethernet capture (via its classic pcap twin)."""
    _, recs = _pcap_records((FIXTURES / "eth_snap.pcap").read_bytes())
    out = []
    for rh, frame in recs:
        sec, usec, incl, orig = struct.unpack("<IIII", rh)
        if incl == orig and frame[23] == 17:  # complete IPv4 UDP frames
            out.append((sec * 1_000_000_000 + usec * 1000, frame))
    return out


@pytest.mark.parametrize("bo", ["<", ">"])
def test_handbuilt_pcapng(tmp_path: Path, bo: str) -> None:
    frames = _eth_frames()
    assert len(frames) >= 4
    (t0, f0), (t1, f1), (t2, _), (t3, f3) = frames[:4]
    raw_f3 = f3[14:]  # the same packet without its Ethernet header, for a raw-IP interface
    data = b"".join(
        [
            _shb(bo),
            _block(bo, 0x0BAD, b"custom block to skip"),
            _idb(bo, 1),  # if 0: default resolution, µs
            _idb(bo, 1, tsresol=9),  # if 1: ns
            _idb(bo, 101, tsresol=0x80 | 20, tsoffset=1000),  # if 2: 2^-20 s, 1000 s offset, raw IP
            _idb(bo, 189),  # if 3: USB, unsupported: its packets are counted, not fatal
            _epb(bo, 0, t0 // 1000, f0, flags=2),  # outbound
            _epb(bo, 1, t1, f1, flags=1 | (1 << 2)),  # inbound unicast
            _epb(bo, 2, ((t2 // 1000 - 1000 * 10**6) << 20) // 10**6, raw_f3),
            _spb(bo, f3),  # no timestamp: the previous packet's
            _epb(bo, 3, t3, b"\x00" * 40),
            _block(bo, 5, b"\0" * 12),  # interface statistics block
        ]
    )
    path = tmp_path / f"hand-{'le' if bo == '<' else 'be'}.pcapng"
    path.write_bytes(data)
    reader = CaptureReader(path)
    segs = list(reader)
    assert reader.stats.format == "pcapng"
    assert reader.stats.unknown_blocks == 2
    assert reader.stats.unsupported_linktype_packets == 1
    assert len(segs) == 4
    assert segs[0].meta.ts_ns == t0 // 1000 * 1000 and segs[0].meta.pkt_type == PACKET_OUTGOING
    assert segs[1].meta.ts_ns == t1 and segs[1].meta.pkt_type == PACKET_HOST
    assert segs[2].meta.pkt_type == PACKET_UNKNOWN
    assert segs[3].meta.ts_ns == segs[2].meta.ts_ns
    # the raw-IP packet and the SPB copy of its Ethernet frame parse to the same segment
    assert (segs[2].meta.src, segs[2].meta.sport, segs[2].payload) == (
        segs[3].meta.src,
        segs[3].meta.sport,
        segs[3].payload,
    )
    if HAVE_TSHARK:
        # tshark agrees on every timestamp it can give (an SPB has none; tshark prints 0 or the previous one)
        rows = tshark_rows(path, "udp")
        assert [r.ts_ns for r in rows[:3]] == [s.meta.ts_ns for s in segs[:3]]
        assert [(r.src, r.sport, r.dns_ids) for r in rows] == [
            (s.meta.src, s.meta.sport, [decode(s.payload)[0]]) for s in segs
        ]


def test_pcapng_second_section_other_byte_order(tmp_path: Path) -> None:
    (t0, f0), (t1, f1) = _eth_frames()[:2]
    data = (
        _shb("<")
        + _idb("<", 1, 9)
        + _epb("<", 0, t0, f0)
        + _shb(">")
        + _idb(">", 1, 9)
        + _epb(">", 0, t1, f1)
    )
    path = tmp_path / "two.pcapng"
    path.write_bytes(data)
    assert [s.meta.ts_ns for s in read_capture(path)] == [t0, t1]


# --------------------------------------------------------------------------------------
# Errors


def _err(path: Path) -> str:
    with pytest.raises(PcapError) as ei:
        list(read_capture(path))
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    assert "cannot open" in _err(tmp_path / "nope.pcap")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.pcap"
    p.write_bytes(b"")
    assert "empty file" in _err(p)


def test_random_bytes(tmp_path: Path) -> None:
    p = tmp_path / "random.pcap"
    p.write_bytes(os.urandom(64).replace(b"\x0a\x0d\x0d\x0a", b"x" * 4) + b"rest")
    p.write_bytes(b"GARB" + p.read_bytes())
    assert "not a pcap or pcapng file" in _err(p)


def test_text_file(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("hello, this is not a capture\n")
    assert "not a pcap or pcapng file (starts with 68656c6c)" in _err(p)


@pytest.mark.parametrize("keep", [2, 4, 10, 23])
def test_truncated_file_header(tmp_path: Path, keep: int) -> None:
    p = tmp_path / "short.pcap"
    p.write_bytes((FIXTURES / "sll.pcap").read_bytes()[:keep])
    assert "truncated" in _err(p)


@pytest.mark.parametrize("keep", [4, 20, 27])
def test_truncated_pcapng_header(tmp_path: Path, keep: int) -> None:
    p = tmp_path / "short.pcapng"
    p.write_bytes((FIXTURES / "eth.pcapng").read_bytes()[:keep])
    assert "truncated" in _err(p)


@pytest.mark.parametrize("name", ["sll.pcap", "sll2.pcap", "eth.pcapng"])
@pytest.mark.parametrize("cut", [1, 5, 17])
def test_truncated_last_record_is_counted(tmp_path: Path, name: str, cut: int) -> None:
    data = (FIXTURES / name).read_bytes()
    p = tmp_path / name
    p.write_bytes(data[:-cut])
    full = list(read_capture(FIXTURES / name))
    reader = CaptureReader(p)
    segs = list(reader)
    assert reader.stats.truncated == 1
    assert _meta_tuples(segs) == _meta_tuples(full)[: len(segs)]
    assert len(segs) >= len(full) - 1


def test_unsupported_linktype(tmp_path: Path) -> None:
    p = tmp_path / "usb.pcap"
    p.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 189))
    msg = _err(p)
    assert "link type 189 is not supported" in msg and "LINUX_SLL2 (276)" in msg


def test_pcapng_only_unsupported_interfaces(tmp_path: Path) -> None:
    p = tmp_path / "usb.pcapng"
    p.write_bytes(_shb("<") + _idb("<", 189) + _epb("<", 0, 1, b"\0" * 20))
    assert "link type 189 is not supported" in _err(p)


def test_pcapng_corrupt_block_length(tmp_path: Path) -> None:
    p = tmp_path / "bad.pcapng"
    p.write_bytes(_shb("<") + struct.pack("<II", 6, 13) + b"\0" * 20)
    assert "corrupt pcapng block" in _err(p)


def test_corrupt_record_length(tmp_path: Path) -> None:
    data = bytearray((FIXTURES / "sll.pcap").read_bytes())
    struct.pack_into("<I", data, 24 + 8, 0xFFFFFFF0)
    p = tmp_path / "bad.pcap"
    p.write_bytes(bytes(data))
    assert "corrupt record at offset 24" in _err(p)


def test_error_raised_at_open_not_iteration(tmp_path: Path) -> None:
    p = tmp_path / "empty.pcap"
    p.write_bytes(b"")
    with pytest.raises(PcapError):
        read_capture(p)  # no iteration needed


# --------------------------------------------------------------------------------------
# Live: capture the fixtures again (root), and hold the fresh files to the same checks.


@pytest.mark.lab
def test_regenerate_live(tmp_path: Path) -> None:
    require_root()
    require_tool("ip", "tcpdump", "tshark", "dnsmasq")
    require(sys.platform.startswith("linux"), "needs Linux network namespaces")
    files = gen.generate(tmp_path)
    for name, (has_sll, has_ifindex, complete) in FIXTURE_KINDS.items():
        segs = check_against_tshark(files[name], has_sll, has_ifindex, complete)
        if complete:
            assert expected_exchanges(segs) == ALL_EXCHANGES
        # TCP handshakes and teardowns were seen
        flags = [s.tcp_flags for s in segs if s.meta.transport == IPPROTO_TCP]
        assert sum(1 for f in flags if f & TCP_SYN) == 4
        assert sum(1 for f in flags if f & TCP_FIN) == 4
        assert not any(f & TCP_RST for f in flags)
