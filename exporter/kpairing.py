"""Kernel pairing (``DNSOTEL_PAIRING=kernel``, run's default): the engine for bpf/dns.bpf.c's PAIR records.

With ``-DKERNEL_PAIRING`` the socket filter keeps UDP queries in a BPF hash map
``pending`` under pairing.py's key (netns, role, transport, client address, client port,
DNS id) with the query's question, and emits nothing for them. A response that matches a
pending key and question (or an error response without a question) becomes ONE ``PAIR``
record: the response as usual plus the query's time, retransmissions, destination,
ifindex, pkt_type and flags. So user space decodes one message per exchange instead of
two, and never sees a query that gets answered.

What stays on the user-space path (:class:`~exporter.pairing.Pairer`, fed with
``PACKET`` records exactly as in ``user`` mode):

* TCP (segments need reassembly; TCP DNS is rare);
* queries without a question, with a compressed or malformed first name, with a question
  longer than 160 bytes (``DNS_QMAX``) or cut by the snaplen before its end;
* queries that find the kernel table full (``max_pending``): counted in the kernel
  (``kernel_table_full``) and paired in user space, whose own table evicts as before;
* responses the kernel did not pair: no pending key, another question (unmatched, as in
  user mode), or the query went the user-space way.

Unanswered queries: :meth:`KernelPairedEngine.advance` scans the map (batch lookup) at
most every ``scan_every_ns`` and takes out entries older than the timeout with
BPF_MAP_LOOKUP_AND_DELETE_ELEM; only the side whose delete succeeds (this scan, or the
kernel on a late response) reports the exchange, so a query is never both paired and
unanswered. A query replaced by a new question on the same key arrives as a
``SUPERSEDED`` record and is reported unanswered at once, as pairing.py does.

Queries for the resolution tracker (``on_query``): the kernel announces a server-side query
with a ``QUERY_NOTICE`` record (its time and addresses, header and normalized question) when
the resolver sends a query for the same question in the same netns while it is pending (its
upstream query), or when a second server query for the question arrives while it is
pending (a resolver coalescing them: both are announced, the earliest first). A cache hit,
answered before anything else asks its question, is never announced: the tracker has
nothing to add to it, and it reaches ``on_query`` just before its exchange, as a client
query does. The engine decodes a notice, calls
``on_query(pkt, "server", False)`` at once, and keeps the packet under the kernel's key
until the query's PAIR, SUPERSEDED record or expiry, whose exchange then carries THAT
packet as its query (the tracker matches by identity). A client-side query gets its
``on_query`` just before its exchange is reported (``on_response`` / ``on_unanswered``),
with the query's own timestamp: the tracker parents a resolver's upstream query under the
server query still pending at that point, as it does in user mode. ``dnsotel trace``
keeps user pairing (it shows query rows as they are sent).

In-kernel aggregation (``-DKERNEL_AGG``, :func:`aggregation_threshold`): when every sink only
counts answered NOERROR exchanges below a latency (the telemetry sink with
``DNSOTEL_SPAN_SAMPLE_RATIO=0``, no top-N names, no table), the kernel counts each exchange
it proves ordinary -- NOERROR with at least one answer, no TC, faster than the slow
threshold, no extended rcode (no additional record, or one option-less OPT record at the
end), not announced -- in a per-CPU histogram map keyed by (netns, role, server address and
port, IP version, qtype) over the dns.lookup.duration bounds, and writes no record.
:meth:`KernelPairedEngine.pull_aggregates` reads the map on every ``advance`` (10 times a
second) and at exit and hands each series' growth to the sinks' ``on_lookups``. Such an
exchange is checked up to its question only (a malformed answer section is not counted as
a decode error), and reaches neither ``on_query`` nor ``on_response``: nothing else needed it.

Other differences from user-space pairing, all on rare paths: only the first 4
retransmission timestamps are kept (the count is exact); a query the decoder would reject
beyond its question still pairs; a response that pairs in the kernel but then fails to
decode is counted as a decode error and its exchange is lost; an error response without a
question pairs only when it is at most 64 bytes long; the query of a client-side PAIR
carries the header flags and question, not its EDNS record (a server-side one is the
announced packet: its first 256 bytes); a client-side query reaches ``on_query`` only when
its exchange completes, so a server query in another netns that it reaches cannot join
its trace at once (the tracker joins them then, see resolution.py).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from exporter.capture.events import (
    AGG_KEY,
    KIND_PAIR,
    KIND_QUERY_NOTICE,
    KIND_SUPERSEDED,
    PENDING_KEY,
    PENDING_VAL,
    QueryInfo,
    addr_text,
)
from exporter.dns import DecodeError, Message, decode
from exporter.pairing import PairingStats, query_role, response_role
from exporter.pipeline import REASON_CAPTURE_TRUNCATED, Engine
from exporter.records import ROLE_CLIENT, ROLE_SERVER, DnsPacket, Exchange, PacketMeta, PairSink, Segment

if TYPE_CHECKING:
    from exporter.capture.ebpf import EbpfCapture

log = logging.getLogger(__name__)

PAIRING_MODES = ("user", "kernel")
SCAN_EVERY_NS = 200_000_000

_TS = struct.Struct("<Q")
# a server-side query the kernel announced: netns, transport, client address, client port, DNS id
_NoticeKey = tuple[int, int, str, int, int]


@runtime_checkable
class LookupCounter(Protocol):
    """A sink that can take exchanges the kernel aggregated (in-kernel aggregation)."""

    @property
    def counts_only_below_ns(self) -> int | None:
        """Answered NOERROR exchanges (with answers, no TC) faster than this are only
        counted by this sink; None: it needs every exchange."""

    def on_lookups(
        self,
        netns: int,
        role: str,
        server: str,
        server_port: int,
        qtype: int,
        transport: str,
        buckets: Sequence[int],
        count: int,
        sum_ns: int,
        min_ns: int,
        max_ns: int,
    ) -> None:
        """``count`` such exchanges of one series, bucketed over dns.lookup.duration's bounds."""


@dataclass(slots=True)
class KernelPairingStats(PairingStats):
    """PairingStats of both tables: the kernel's and the user-space pairer's."""

    kernel_pending: int = 0  # entries in the kernel's table at the last scan

    @property
    def pending(self) -> int:
        return self.kernel_pending + len(self._table)


def query_message(resp: Message, flags: int) -> Message:
    """The query of a PAIR: the response's id and question, the query's header flags."""
    return Message(
        resp.id,
        False,
        (flags >> 11) & 0xF,
        bool(flags & 0x400),
        bool(flags & 0x200),
        bool(flags & 0x100),
        bool(flags & 0x80),
        bool(flags & 0x20),
        bool(flags & 0x10),
        flags & 0xF,
        1 if resp.question is not None else 0,
        0,
        0,
        0,
        resp.question,
        [],
        [],
        [],
        None,
        None,
        False,
    )


class KernelPairedEngine(Engine):
    """The Engine for a capture with kernel pairing: PACKET records go through the usual
    path (``on_segment``), PAIR and SUPERSEDED records through :meth:`on_paired`."""

    def __init__(
        self,
        sinks: Sequence[PairSink],
        *,
        timeout_ns: int = 5_000_000_000,
        max_pending: int = 65_536,
        scan_every_ns: int = SCAN_EVERY_NS,
    ) -> None:
        super().__init__(sinks, timeout_ns=timeout_ns, max_pending=max_pending)
        self.timeout_ns = timeout_ns
        self.scan_every_ns = scan_every_ns
        self.capture: EbpfCapture | None = None
        self.kernel_paired = 0  # PAIR records turned into exchanges
        self.kernel_unanswered = 0  # timed out in the kernel table, or superseded
        self.kernel_superseded = 0
        self.kernel_pending = 0
        self.lost_pairs = 0  # PAIR records whose response did not decode
        self._next_scan = 0
        self._kcounters: dict[str, int] = {}
        # QUERY_NOTICE packets until their exchange is reported (insertion order: oldest first)
        self._noticed: dict[_NoticeKey, DnsPacket] = {}
        self.max_noticed = max_pending
        self.notices = 0  # QUERY_NOTICE records passed to on_query
        self.notices_evicted = 0  # dropped from the bounded table before their exchange came
        self.notice_errors = 0  # QUERY_NOTICE records that did not decode
        self.kernel_aggregated = 0  # exchanges the kernel counted in its agg map (no record)
        self._agg_seen: dict[bytes, tuple[int, ...]] = {}  # the agg map at the last pull
        self._counters: list[LookupCounter] = [s for s in sinks if isinstance(s, LookupCounter)]
        for sink in sinks:  # a resolution tracker sees client queries when they complete
            tracker = getattr(sink, "resolution", None)
            if tracker is not None and hasattr(tracker, "join_late"):
                tracker.join_late = True

    def bind(self, capture: EbpfCapture) -> None:
        """The capture whose pending table this engine expires (created after the engine)."""
        self.capture = capture

    # -- records ------------------------------------------------------------------------

    def on_paired(self, kind: int, seg: Segment, info: QueryInfo | None) -> None:
        """A PAIR record (``seg`` is the response), a SUPERSEDED one (``seg`` the old query) or
        a QUERY_NOTICE (``seg`` the query, ``info`` None)."""
        if kind == KIND_PAIR:
            assert info is not None
            self._pair(seg, info)
        elif kind == KIND_QUERY_NOTICE:
            self._notice(seg)
        elif kind == KIND_SUPERSEDED:
            assert info is not None
            self._superseded(seg, info)

    def _notice(self, seg: Segment) -> None:
        meta = seg.meta
        try:
            msg = decode(seg.payload, partial=seg.orig_len > len(seg.payload))
        except DecodeError:  # its exchange still comes, with a query built from the record
            self.notice_errors += 1
            return
        pkt = DnsPacket(meta, msg)
        noticed = self._noticed
        key = (meta.netns, meta.transport, meta.src, meta.sport, msg.id)
        noticed.pop(key, None)
        noticed[key] = pkt
        if len(noticed) > self.max_noticed:
            del noticed[next(iter(noticed))]
            self.notices_evicted += 1
        self.notices += 1
        self.sink.on_query(pkt, ROLE_SERVER, False)

    def _noticed_query(self, key: _NoticeKey, ts_ns: int) -> DnsPacket | None:
        """The announced packet of the server query under ``key`` sent at ``ts_ns`` (taken out)."""
        pkt = self._noticed.pop(key, None)
        if pkt is not None and pkt.meta.ts_ns == ts_ns:
            return pkt
        return None

    def _pair(self, seg: Segment, info: QueryInfo) -> None:
        meta = seg.meta
        self.segments += 2 + info.retransmits
        self.messages += 2
        cut = seg.orig_len > len(seg.payload)
        role = response_role(meta.pkt_type)
        noticed: DnsPacket | None = None
        if role == ROLE_SERVER and self._noticed and len(seg.payload) >= 2:
            qid = (seg.payload[0] << 8) | seg.payload[1]
            noticed = self._noticed_query((meta.netns, meta.transport, meta.dst, meta.dport, qid), info.ts_ns)
        try:
            rmsg = decode(seg.payload, partial=cut)
            if noticed is not None:
                qmsg = noticed.msg
            else:
                qmsg = decode(info.msg) if info.msg else query_message(rmsg, info.flags)
        except DecodeError as exc:
            self.decode_errors[REASON_CAPTURE_TRUNCATED if cut else exc.reason] += 1
            self.lost_pairs += 1
            return
        self.kernel_paired += 1
        if noticed is not None:
            self.sink.on_response(
                Exchange(noticed, DnsPacket(meta, rmsg), role, info.retransmits, 0, info.retransmit_ts_ns)
            )
            return
        qmeta = PacketMeta(
            info.ts_ns,
            meta.netns,
            info.ifindex,
            info.pkt_type,
            meta.transport,
            meta.dst,
            meta.dport,
            info.server,
            info.server_port,
            meta.ipv6,
        )
        qpkt = DnsPacket(qmeta, qmsg)
        # the tracker sees the query first, as from the user pairer (a server query whose
        # notice was lost or evicted is tracked for the instant before its response)
        self.sink.on_query(qpkt, role, False)
        self.sink.on_response(
            Exchange(qpkt, DnsPacket(meta, rmsg), role, info.retransmits, 0, info.retransmit_ts_ns)
        )

    def _superseded(self, seg: Segment, info: QueryInfo) -> None:
        meta = seg.meta
        self.segments += 1 + info.retransmits
        self.messages += 1
        try:
            msg = decode(seg.payload)
        except DecodeError as exc:  # pragma: no cover - the kernel checked the question
            self.decode_errors[exc.reason] += 1
            return
        self.kernel_unanswered += 1
        self.kernel_superseded += 1
        waited = min(self.timeout_ns, max(0, info.ts_ns - meta.ts_ns))
        role = query_role(meta.pkt_type)
        self._unanswered(
            (meta.netns, meta.transport, meta.src, meta.sport, msg.id),
            DnsPacket(meta, msg),
            role,
            info.retransmits,
            waited,
            info.retransmit_ts_ns,
        )

    def _unanswered(
        self,
        key: _NoticeKey,
        built: DnsPacket,
        role: str,
        retransmits: int,
        waited_ns: int,
        rts: tuple[int, ...],
    ) -> None:
        """Report a query unanswered: a server query as the packet its notice announced,
        else ``built`` (after its on_query, which the tracker has not seen yet)."""
        query: DnsPacket | None = None
        if role == ROLE_SERVER and self._noticed:
            query = self._noticed_query(key, built.meta.ts_ns)
        if query is None:
            query = built
            self.sink.on_query(query, role, False)
        self.sink.on_unanswered(Exchange(query, None, role, retransmits, waited_ns, rts))

    # -- time ---------------------------------------------------------------------------

    def advance(self, now_ns: int) -> None:
        """Expire both tables by wall time; the kernel's at most every ``scan_every_ns``.
        Hand what the kernel aggregated since the last call to the sinks."""
        super().advance(now_ns)
        self.pull_aggregates()
        if self.capture is not None and now_ns >= self._next_scan:
            self._next_scan = now_ns + self.scan_every_ns
            self.expire_kernel(now_ns)
            self._sweep_noticed(now_ns - self.timeout_ns - 2 * self.scan_every_ns)

    def _sweep_noticed(self, before_ns: int) -> None:
        """Drop announced packets older than ``before_ns``: their exchange record was lost
        (ring buffer full). One rebuild, not a delete per entry from the front."""
        noticed = self._noticed
        if noticed and next(iter(noticed.values())).meta.ts_ns < before_ns:
            keep = {k: p for k, p in noticed.items() if p.meta.ts_ns >= before_ns}
            self.notices_evicted += len(noticed) - len(keep)
            self._noticed = keep

    def expire_kernel(self, now_ns: int, *, everything: bool = False) -> int:
        """Report kernel-pending queries with ``now - ts >= timeout`` (all with ``everything``)."""
        cap = self.capture
        if cap is None:
            return 0
        limit = (1 << 64) if everything else now_ns - cap.wall_offset_ns - self.timeout_ns
        entries = cap.pending_entries()
        pending = len(entries)
        reported = 0
        ts_of = _TS.unpack_from
        for key, val in entries:
            if ts_of(val)[0] > limit:
                continue
            taken = cap.take_pending(key)
            if taken is None:
                pending -= 1  # answered meanwhile: the kernel reported it
                continue
            if ts_of(taken)[0] > limit:  # the key was answered and asked again meanwhile
                if not cap.restore_pending(key, taken):
                    log.debug("a re-asked query was answered while being expired")
                continue
            pending -= 1
            reported += 1
            self._report_unanswered(key, taken, cap.wall_offset_ns)
        self.kernel_pending = pending
        return reported

    def _report_unanswered(self, key: bytes, val: bytes, wall: int) -> None:
        netns, _qid, cport, caddr, role, proto = PENDING_KEY.unpack(key)
        (
            ts,
            r0,
            r1,
            r2,
            r3,
            server,
            retrans,
            ifindex,
            sport,
            qlen,
            _namelen,
            pkt_type,
            ipver,
            msg,
            _noticed,
        ) = PENDING_VAL.unpack(val)
        v6 = ipver == 6
        meta = PacketMeta(
            ts + wall,
            netns,
            ifindex,
            pkt_type,
            proto,
            addr_text(caddr, v6),
            cport,
            addr_text(server, v6),
            sport,
            v6,
        )
        self.segments += 1 + retrans
        self.messages += 1
        try:
            qmsg = decode(msg[: 12 + qlen])
        except DecodeError as exc:  # pragma: no cover - the kernel checked the question
            self.decode_errors[exc.reason] += 1
            return
        self.kernel_unanswered += 1
        rts = tuple(t + wall for t in (r0, r1, r2, r3)[: min(retrans, 4)])
        prole = ROLE_CLIENT if role == 0 else ROLE_SERVER
        self._unanswered(
            (netns, proto, meta.src, cport, qmsg.id),
            DnsPacket(meta, qmsg),
            prole,
            retrans,
            self.timeout_ns,
            rts,
        )

    def finish(self) -> None:
        """End of input: every query pending in either table is reported unanswered."""
        super().finish()
        self.expire_kernel(0, everything=True)
        self.pull_aggregates()

    def pull_aggregates(self) -> int:
        """Read the kernel's agg map (in-kernel aggregation) and give each series' growth
        since the last pull to the sinks' ``on_lookups``. Returns the exchanges handed over."""
        cap = self.capture
        if cap is None or not cap.aggregating:
            return 0
        now = cap.aggregates()
        seen = self._agg_seen
        total = 0
        for raw, vals in now.items():
            before = seen.get(raw)
            count = vals[0] - (before[0] if before is not None else 0)
            if count <= 0:
                continue
            if before is None:
                packets, sum_ns, buckets = vals[1], vals[2], vals[5:]
            else:
                packets = vals[1] - before[1]
                sum_ns = vals[2] - before[2]
                buckets = tuple(a - b for a, b in zip(vals[5:], before[5:], strict=True))
            seen[raw] = vals
            total += count
            self.segments += packets
            self.messages += 2 * count
            netns, server, sport, qtype, role, ipver = AGG_KEY.unpack(raw)
            v6 = ipver == 6
            for sink in self._counters:
                try:
                    sink.on_lookups(
                        netns,
                        ROLE_CLIENT if role == 0 else ROLE_SERVER,
                        addr_text(server, v6),
                        sport,
                        qtype,
                        "udp",
                        buckets,
                        count,
                        sum_ns,
                        vals[3],
                        vals[4],
                    )
                except Exception:  # a sink bug must never stop capture
                    log.exception("sink %s.on_lookups failed", type(sink).__name__)
        self.kernel_aggregated += total
        return total

    # -- counters -----------------------------------------------------------------------

    def pairing_stats(self) -> KernelPairingStats:
        user = self.pairer.stats
        if self.capture is not None:
            try:
                self._kcounters = self.capture.counters()
            except Exception:  # closed: the last values read
                pass
        k = self._kcounters
        kq, kr = k.get("kernel_queries", 0), k.get("kernel_retransmits", 0)
        return KernelPairingStats(
            queries=user.queries + kq + kr,
            responses=user.responses + self.kernel_paired + self.kernel_aggregated + self.lost_pairs,
            paired=user.paired + self.kernel_paired + self.kernel_aggregated,
            unanswered=user.unanswered + self.kernel_unanswered,
            unmatched=user.unmatched,
            retransmits=user.retransmits + kr,
            evicted=user.evicted,
            superseded=user.superseded + self.kernel_superseded,
            _table=user._table,
            kernel_pending=self.kernel_pending,
        )


def aggregation_threshold(sinks: Sequence[object]) -> int | None:
    """In-kernel aggregation is possible when every sink only counts answered NOERROR
    exchanges below some latency (``counts_only_below_ns``, the telemetry sink with a span
    ratio of 0): the lowest such threshold, or None when a sink needs every exchange (the
    table, a sampled span ratio, top-N names)."""
    below = [s.counts_only_below_ns if isinstance(s, LookupCounter) else None for s in sinks]
    found = [b for b in below if b is not None]
    if not found or len(found) < len(below) or min(found) <= 0:
        return None  # a threshold of 0: every exchange is slow, none is only counted
    return min(found)
