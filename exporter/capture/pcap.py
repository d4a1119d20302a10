"""Read capture files (classic pcap and pcapng) into Segments of DNS packets.

``CaptureReader(path, ports)`` opens the file and checks its header at once, raising
:class:`PcapError` with a one-line reason when the file cannot be read (missing, not a
capture file, truncated header, unsupported link type, corrupt block structure).
Iterating it yields one :class:`~exporter.records.Segment` per DNS packet, in file
order, with ``meta.ts_ns`` the packet's wall-clock time in ns since the epoch, exact to
the file's resolution. ``stats`` holds the counters afterwards (and during iteration).
``read_capture(path, ports)`` is the same as ``iter(CaptureReader(path, ports))``.

Formats:

- classic pcap in either byte order, with microsecond (``a1b2c3d4``) or nanosecond
  (``a1b23c4d``) timestamps, and the "modified" pcap of old Red Hat tcpdump
  (``a1b2cd34``, whose per-record ifindex and pkt_type are used);
- pcapng: several sections (each SHB sets its own byte order), interfaces (IDB) with
  their own link types, ``if_tsresol`` and ``if_tsoffset``; Enhanced, Simple and
  obsolete Packet Blocks; the direction in ``epb_flags`` becomes ``pkt_type`` where the
  link type does not record it. Other blocks are skipped (and counted). Simple Packet
  Blocks carry no timestamp and get the previous packet's.
- either, gzip-compressed (as tshark/Wireshark write with ``.gz``).

A truncated final record (a capture that was still being written, or was cut) ends
reading quietly and is counted in ``stats.truncated``. Packets are never raised on:
see :mod:`exporter.capture.packet` for how frames are counted.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from exporter.capture.packet import DEFAULT_PORTS, SUPPORTED_LINKTYPES, FrameParser, ParseStats
from exporter.records import (
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
    PACKET_UNKNOWN,
    Segment,
)

_PCAP_MAGICS: dict[bytes, tuple[str, int, bool]] = {
    # magic bytes as found in the file -> (struct byte order, ns per timestamp fraction unit, modified)
    b"\xd4\xc3\xb2\xa1": ("<", 1000, False),
    b"\xa1\xb2\xc3\xd4": (">", 1000, False),
    b"\x4d\x3c\xb2\xa1": ("<", 1, False),
    b"\xa1\xb2\x3c\x4d": (">", 1, False),
    b"\x34\xcd\xb2\xa1": ("<", 1000, True),
    b"\xa1\xb2\xcd\x34": (">", 1000, True),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_GZIP_MAGIC = b"\x1f\x8b"

_BT_SHB = 0x0A0D0D0A
_BT_IDB = 1
_BT_OPB = 2
_BT_SPB = 3
_BT_EPB = 6

_MAX_RECORD = 1 << 26  # 64 MiB: larger is a corrupt length, not a packet
_MAX_BLOCK = 1 << 28

_OPT_ENDOFOPT = 0
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14
_OPT_EPB_FLAGS = 2


class _Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class PcapError(Exception):
    """The capture file cannot be read; ``str()`` is a one-line reason naming the file."""


@dataclass(slots=True)
class CaptureStats:
    """Counters of one :class:`CaptureReader`."""

    format: str = ""  # "pcap", "pcap-ns", "pcap-modified", "pcapng"
    packets: int = 0  # packet records read (each went to the frame parser, or was counted below)
    truncated: int = 0  # 1 when the file ended in the middle of a record or block
    unknown_blocks: int = 0  # pcapng blocks skipped (statistics, name resolution, custom, ...)
    bad_blocks: int = 0  # pcapng packet blocks with inconsistent lengths or unknown interface
    unsupported_linktype_packets: int = 0  # pcapng packets on an interface of an unsupported link type
    parse: ParseStats = field(default_factory=ParseStats)

    def as_dict(self) -> dict[str, int | str]:
        out: dict[str, int | str] = {
            "format": self.format,
            "packets": self.packets,
            "truncated": self.truncated,
            "unknown_blocks": self.unknown_blocks,
            "bad_blocks": self.bad_blocks,
            "unsupported_linktype_packets": self.unsupported_linktype_packets,
        }
        out.update({f"parse.{k}": v for k, v in self.parse.as_dict().items()})
        return out


def _linktype_error(name: str, linktype: int) -> PcapError:
    supported = ", ".join(f"{v} ({k})" for k, v in sorted(SUPPORTED_LINKTYPES.items()) if k not in (12, 14))
    return PcapError(f"{name}: link type {linktype} is not supported (supported: {supported})")


class _Interface:
    __slots__ = ("div", "linktype", "mul", "offset_ns", "parser", "snaplen")

    def __init__(self, linktype: int, snaplen: int, parser: FrameParser | None) -> None:
        self.linktype = linktype
        self.snaplen = snaplen
        self.parser = parser
        self.mul = 1000  # default if_tsresol: microseconds
        self.div = 1
        self.offset_ns = 0

    def set_tsresol(self, r: int) -> None:
        if r & 0x80:  # negative power of two: ns = ts * 1e9 / 2^n
            self.mul, self.div = 1_000_000_000, 1 << (r & 0x7F)
        elif r <= 9:
            self.mul, self.div = 10 ** (9 - r), 1
        else:
            self.mul, self.div = 1, 10 ** (r - 9)

    def ts_ns(self, ts: int) -> int:
        return ts * self.mul // self.div + self.offset_ns


def _epb_pkt_type(flags: int) -> int:
    direction = flags & 3
    if direction == 2:
        return PACKET_OUTGOING
    if direction == 1:
        reception = (flags >> 2) & 7
        return {2: PACKET_MULTICAST, 3: PACKET_BROADCAST, 4: PACKET_OTHERHOST}.get(reception, PACKET_HOST)
    return PACKET_UNKNOWN


class CaptureReader:
    """An opened capture file; iterate it (once) for Segments, then read ``stats``.

    ``source``: a path, or a binary file object (not closed by the reader). ``ports``:
    the DNS ports to keep (see :class:`~exporter.capture.packet.FrameParser`).
    Use as a context manager, or call ``close()``, to close a file opened by path early;
    it is closed when iteration ends in any case.
    """

    def __init__(self, source: str | Path | BinaryIO, ports: frozenset[int] = DEFAULT_PORTS) -> None:
        self.ports = frozenset(ports)
        self.stats = CaptureStats()
        self.linktype: int | None = None  # classic pcap: the file's link type
        self._own: BinaryIO | None = None  # a file we opened, closed by close()
        self._gz: gzip.GzipFile | None = None
        if isinstance(source, str | Path):
            self.name = str(source)
            try:
                source = open(source, "rb")  # noqa: SIM115 - closed in close()
            except OSError as e:
                raise PcapError(f"{self.name}: cannot open: {e.strerror or e}") from None
            self._own = source
        else:
            self.name = str(getattr(source, "name", "<stream>"))
        self._f: _Reader = source
        self._pos = 0  # bytes read (of the decompressed stream)
        try:
            self._open()
        except PcapError:
            self.close()
            raise
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            self.close()
            raise PcapError(f"{self.name}: cannot read: {e}") from None
        self._started = False

    # -- header -------------------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def _open(self) -> None:
        head = self._read(4)
        if head[:2] == _GZIP_MAGIC:
            self._gz = gzip.GzipFile(fileobj=_Prepend(head, self._f), mode="rb")
            self._f = self._gz
            self._pos = 0
            head = self._read(4)
        if not head:
            raise PcapError(f"{self.name}: empty file, not a pcap or pcapng capture")
        if head == _PCAPNG_SHB:
            self.stats.format = "pcapng"
            self._bo = "<"
            self._ifaces: list[_Interface] = []
            self._last_ts = 0
            # Read the first SHB now so that a bad file fails at open.
            self._read_shb(b"", first=True)
            return
        magic = _PCAP_MAGICS.get(head)
        if magic is None:
            if len(head) < 4:
                raise PcapError(f"{self.name}: truncated file header ({len(head)} bytes)")
            raise PcapError(f"{self.name}: not a pcap or pcapng file (starts with {head.hex()})")
        bo, self._frac_ns, self._modified = magic
        if self._modified:
            self.stats.format = "pcap-modified"
        else:
            self.stats.format = "pcap" if self._frac_ns == 1000 else "pcap-ns"
        rest = self._read(20)
        if len(rest) < 20:
            raise PcapError(f"{self.name}: truncated pcap file header ({4 + len(rest)} of 24 bytes)")
        _vmaj, _vmin, _zone, _sigfigs, _snaplen, network = struct.unpack(bo + "HHiIII", rest)
        linktype = network & 0xFFFF  # upper bits: FCS length flags
        if linktype not in SUPPORTED_LINKTYPES:
            raise _linktype_error(self.name, linktype)
        self.linktype = linktype
        self._rec = struct.Struct(bo + ("IIIIiHBx" if self._modified else "IIII"))
        self._parser = FrameParser(linktype, self.ports, self.stats.parse)

    # -- iteration ------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Segment]:
        if self._started:
            raise RuntimeError("a CaptureReader can be iterated only once")
        self._started = True
        try:
            if self.stats.format == "pcapng":
                yield from self._iter_pcapng()
            else:
                yield from self._iter_pcap()
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise PcapError(f"{self.name}: cannot read: {e}") from None
        finally:
            self.close()

    def close(self) -> None:
        if self._gz is not None:
            self._gz.close()
        if self._own is not None:
            self._own.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _iter_pcap(self) -> Iterator[Segment]:
        rec = self._rec
        size = rec.size
        read = self._f.read
        parse = self._parser.parse
        frac_ns = self._frac_ns
        st = self.stats
        modified = self._modified
        offset = 24
        while True:
            hdr = read(size)
            if len(hdr) < size:
                if hdr:
                    st.truncated += 1
                return
            if modified:
                sec, frac, incl, _orig, ifindex, _proto, pkt_type = rec.unpack(hdr)
            else:
                sec, frac, incl, _orig = rec.unpack(hdr)
                ifindex, pkt_type = 0, PACKET_UNKNOWN
            if incl > _MAX_RECORD:
                raise PcapError(f"{self.name}: corrupt record at offset {offset}: captured length {incl}")
            data = read(incl)
            if len(data) < incl:
                st.truncated += 1
                return
            offset += size + incl
            st.packets += 1
            seg = parse(sec * 1_000_000_000 + frac * frac_ns, data, 0, max(ifindex, 0), pkt_type)
            if seg is not None:
                yield seg

    # -- pcapng ---------------------------------------------------------------------------

    def _read_shb(self, have: bytes, first: bool) -> bool:
        """Read the rest of a Section Header Block after its type (``have``: bytes already read).

        Its byte order is known only from the byte-order magic after the length. Returns
        False when the file ends inside it (counted), raises PcapError when it is corrupt.
        """
        rest = have + self._read(8 - len(have))
        if len(rest) < 8:
            if first:
                raise PcapError(f"{self.name}: truncated pcapng section header")
            self.stats.truncated += 1
            return False
        bom = rest[4:8]
        if bom == b"\x4d\x3c\x2b\x1a":
            bo = "<"
        elif bom == b"\x1a\x2b\x3c\x4d":
            bo = ">"
        else:
            raise PcapError(f"{self.name}: bad pcapng byte-order magic {bom.hex()}")
        (blen,) = struct.unpack(bo + "I", rest[:4])
        if blen < 28 or blen % 4 or blen > _MAX_BLOCK:
            raise PcapError(f"{self.name}: corrupt pcapng section header (length {blen})")
        body = self._read(blen - 12)
        if len(body) < blen - 12:
            if first:
                raise PcapError(f"{self.name}: truncated pcapng section header")
            self.stats.truncated += 1
            return False
        major = struct.unpack(bo + "H", body[:2])[0]
        if major != 1:
            raise PcapError(f"{self.name}: unsupported pcapng version {major}")
        self._bo = bo
        self._ifaces = []
        return True

    def _options(self, body: bytes, pos: int) -> Iterator[tuple[int, bytes]]:
        bo = self._bo
        end = len(body) - 4  # trailing block length
        while pos + 4 <= end:
            code, olen = struct.unpack_from(bo + "HH", body, pos)
            pos += 4
            if code == _OPT_ENDOFOPT or pos + olen > end:
                return
            yield code, body[pos : pos + olen]
            pos += (olen + 3) & ~3

    def _iter_pcapng(self) -> Iterator[Segment]:
        st = self.stats
        read = self._read
        while True:
            offset = self._pos
            head = read(8)
            if len(head) < 8:
                if head:
                    st.truncated += 1
                return
            if head[:4] == _PCAPNG_SHB:  # a new section
                if not self._read_shb(head[4:], first=False):
                    return
                continue
            bo = self._bo
            btype, blen = struct.unpack(bo + "II", head)
            if blen < 12 or blen % 4 or blen > _MAX_BLOCK:
                raise PcapError(
                    f"{self.name}: corrupt pcapng block at offset {offset}: type {btype}, length {blen}"
                )
            body = read(blen - 8)
            if len(body) < blen - 8:
                st.truncated += 1
                return
            if body[-4:] != head[4:8]:
                raise PcapError(f"{self.name}: corrupt pcapng block at offset {offset}: bad trailer")
            if btype in (_BT_EPB, _BT_OPB, _BT_SPB):
                st.packets += 1
                seg = self._packet_block(btype, body)
                if seg is not None:
                    yield seg
            elif btype == _BT_IDB:
                self._idb(body)
            else:
                st.unknown_blocks += 1

    def _idb(self, body: bytes) -> None:
        bo = self._bo
        if len(body) < 12:
            self.stats.bad_blocks += 1
            linktype, snaplen = -1, 0
        else:
            linktype, _, snaplen = struct.unpack_from(bo + "HHI", body, 0)
        parser = None
        if linktype in SUPPORTED_LINKTYPES:
            parser = FrameParser(linktype, self.ports, self.stats.parse)
        iface = _Interface(linktype, snaplen, parser)
        if len(body) >= 12:
            for code, value in self._options(body, 8):
                if code == _OPT_IF_TSRESOL and len(value) >= 1:
                    iface.set_tsresol(value[0])
                elif code == _OPT_IF_TSOFFSET and len(value) == 8:
                    iface.offset_ns = struct.unpack(bo + "q", value)[0] * 1_000_000_000
        self._ifaces.append(iface)

    def _packet_block(self, btype: int, body: bytes) -> Segment | None:
        st = self.stats
        bo = self._bo
        ifaces = self._ifaces
        pkt_type = PACKET_UNKNOWN
        if btype == _BT_SPB:
            if len(body) < 8 or not ifaces:
                st.bad_blocks += 1
                return None
            (orig,) = struct.unpack_from(bo + "I", body, 0)
            iface = ifaces[0]
            caplen = min(orig, len(body) - 8)
            if iface.snaplen:
                caplen = min(caplen, iface.snaplen)
            data = body[4 : 4 + caplen]
            ts_ns = self._last_ts
        else:
            if btype == _BT_EPB:
                if len(body) < 24:
                    st.bad_blocks += 1
                    return None
                ifid, ts_hi, ts_lo, caplen, _orig = struct.unpack_from(bo + "IIIII", body, 0)
                start = 20
            else:  # obsolete Packet Block
                if len(body) < 24:
                    st.bad_blocks += 1
                    return None
                ifid, _drops, ts_hi, ts_lo, caplen, _orig = struct.unpack_from(bo + "HHIIII", body, 0)
                start = 20
            if ifid >= len(ifaces) or start + caplen > len(body) - 4:
                st.bad_blocks += 1
                return None
            iface = ifaces[ifid]
            data = body[start : start + caplen]
            ts_ns = iface.ts_ns((ts_hi << 32) | ts_lo)
            self._last_ts = ts_ns
            if btype == _BT_EPB:
                for code, value in self._options(body, start + ((caplen + 3) & ~3)):
                    if code == _OPT_EPB_FLAGS and len(value) == 4:
                        pkt_type = _epb_pkt_type(struct.unpack(bo + "I", value)[0])
        parser = iface.parser
        if parser is None:
            if not any(i.parser is not None for i in ifaces):
                raise _linktype_error(self.name, iface.linktype)
            st.unsupported_linktype_packets += 1
            return None
        return parser.parse(ts_ns, data, 0, 0, pkt_type)


class _Prepend:
    """A readable that yields ``head`` and then the rest of ``inner`` (to sniff a stream)."""

    def __init__(self, head: bytes, inner: _Reader) -> None:
        self._head = head
        self._inner = inner

    def read(self, n: int = -1, /) -> bytes:
        head = self._head
        if not head:
            return self._inner.read(n)
        if n < 0:
            self._head = b""
            return head + self._inner.read()
        self._head = head[n:]
        out = head[:n]
        return out + self._inner.read(n - len(out)) if len(out) < n else out

    def seek(self, n: int, /) -> object:
        raise OSError("stream is not seekable")


def read_capture(path: str | Path | BinaryIO, ports: frozenset[int] = DEFAULT_PORTS) -> Iterator[Segment]:
    """Segments of the DNS packets in a capture file; raises PcapError at once if unreadable."""
    return iter(CaptureReader(path, ports))
