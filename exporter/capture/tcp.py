"""DNS-over-TCP message reassembly (RFC 1035 4.2.2, RFC 7766), shared by every source.

``TcpReassembler.feed(seg)`` takes the Segments of a capture source in arrival order and
returns the complete DNS messages (without their 2-byte length prefix) that ``seg``
completes, each paired with ``seg.meta`` (the packet that completed the message, which
is when the message was fully on the wire). UDP segments pass straight through.

One *flow* is one direction of a TCP connection as seen in one network namespace:
(src, sport, dst, dport, netns, transport). Per flow we keep the next expected sequence
number, the bytes of the message in progress, and a few segments that arrived ahead of
a gap. The rules:

- SYN (or SYN-ACK) starts the flow: data begins at seq + 1. Any old state is discarded.
- A flow first seen mid-connection (capture started late, flow evicted) starts at the
  first data segment, which is assumed to begin a message (DNS clients write each
  message with one send; counted as ``midstream_starts``).
- Retransmitted / duplicated data (at or before the next expected byte) is ignored;
  a segment that overlaps the expected byte has its old part trimmed.
- Data ahead of the next expected byte is held (at most ``max_ooo_segments`` per flow
  and ``max_buffer`` bytes together with the message in progress) until the gap fills.
  When the hold is full the gap is given up: the partial message is dropped and the
  stream resumes at the earliest held segment as if it began a message (``gaps_skipped``).
  A capture that lost a packet never sees it retransmitted, so waiting forever is wrong.
- FIN ends that direction after its data is used; RST drops both directions.
- A segment whose payload the capture truncated (``len(payload) < orig_len``) cannot be
  continued from: the flow is marked broken and ignores data until the next SYN.
- A message longer than ``max_buffer - 2`` bytes is skipped by its length (the flow
  stays in step) and counted (``messages_too_large``).
- At most ``max_flows`` flows are kept; the least recently active one is evicted.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from exporter.capture.packet import TCP_FIN, TCP_RST, TCP_SYN
from exporter.records import IPPROTO_TCP, PacketMeta, Segment

FlowKey = tuple[str, int, str, int, int, int]
Emitted = list[tuple[PacketMeta, bytes]]

_SEQ_MOD = 1 << 32
_SEQ_HALF = 1 << 31


@dataclass(slots=True)
class TcpStats:
    """Counters of a :class:`TcpReassembler`."""

    segments: int = 0  # TCP segments fed
    messages: int = 0  # complete DNS messages returned (TCP only)
    flows_opened: int = 0  # flows created (by SYN or mid-stream)
    midstream_starts: int = 0  # flows created without a SYN: first data assumed to start a message
    flows_closed: int = 0  # flows ended by FIN
    flows_reset: int = 0  # flows ended by RST (each direction counted)
    flows_evicted: int = 0  # flows evicted because max_flows was reached
    duplicate_segments: int = 0  # retransmitted / duplicated data ignored entirely
    overlapping_segments: int = 0  # segments whose already-seen leading part was trimmed
    out_of_order_held: int = 0  # segments held ahead of a gap
    out_of_order_dropped: int = 0  # held segments discarded when a gap was given up or the flow ended
    gaps_skipped: int = 0  # gaps given up (hold full): a partial message may be lost
    truncated_segments: int = 0  # segments cut short by the capture: flow broken until next SYN
    broken_segments: int = 0  # data segments ignored on a broken flow
    messages_too_large: int = 0  # messages skipped because they exceed max_buffer
    partial_dropped: int = 0  # partial messages dropped (gap, FIN, RST, eviction, new SYN)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class _Flow:
    __slots__ = ("broken", "buf", "discard", "held", "held_bytes", "next_seq")

    def __init__(self, next_seq: int) -> None:
        self.next_seq = next_seq  # sequence number of the next byte we expect
        self.buf = bytearray()  # bytes of the message in progress (length prefix included)
        self.held: dict[int, bytes] = {}  # seq -> payload of segments ahead of a gap
        self.held_bytes = 0
        self.discard = 0  # bytes still to skip of a message too large to buffer
        self.broken = False  # capture truncated a segment: wait for the next SYN


class TcpReassembler:
    """Reassembles length-prefixed DNS messages from TCP segments; UDP passes through."""

    def __init__(self, max_flows: int = 4096, max_buffer: int = 65537, max_ooo_segments: int = 8) -> None:
        if max_flows < 1 or max_buffer < 2 or max_ooo_segments < 0:
            raise ValueError("max_flows >= 1, max_buffer >= 2 and max_ooo_segments >= 0 are required")
        self.max_flows = max_flows
        self.max_buffer = max_buffer
        self.max_ooo_segments = max_ooo_segments
        self.stats = TcpStats()
        self._flows: OrderedDict[FlowKey, _Flow] = OrderedDict()

    @property
    def flows(self) -> int:
        """Number of flows currently tracked."""
        return len(self._flows)

    def buffered_bytes(self) -> int:
        """Bytes held across all flows (partial messages and out-of-order segments)."""
        return sum(len(f.buf) + f.held_bytes for f in self._flows.values())

    def feed(self, seg: Segment) -> Emitted:
        meta = seg.meta
        if meta.transport != IPPROTO_TCP:
            return [(meta, seg.payload)]
        st = self.stats
        st.segments += 1
        key: FlowKey = (meta.src, meta.sport, meta.dst, meta.dport, meta.netns, meta.transport)
        flags = seg.tcp_flags
        flows = self._flows

        if flags & TCP_RST:
            for k in (key, (meta.dst, meta.dport, meta.src, meta.sport, meta.netns, meta.transport)):
                f = flows.pop(k, None)
                if f is not None:
                    st.flows_reset += 1
                    self._discard_state(f)
            return []

        payload = seg.payload
        seq = seg.tcp_seq
        flow = flows.get(key)
        if flags & TCP_SYN:
            if flow is not None:
                self._discard_state(flow)
            flow = _Flow((seq + 1) % _SEQ_MOD)
            self._insert(key, flow)
            st.flows_opened += 1
            seq = (seq + 1) % _SEQ_MOD  # data on a SYN (TCP Fast Open) follows the SYN's sequence number
        elif flow is None:
            if not payload:
                return []  # a lone FIN (or empty segment) for a flow we do not know
            flow = _Flow(seq)
            self._insert(key, flow)
            st.flows_opened += 1
            st.midstream_starts += 1
        else:
            flows.move_to_end(key)

        out: Emitted = []
        if flow.broken:
            if payload:
                st.broken_segments += 1
        elif len(payload) < seg.orig_len:
            st.truncated_segments += 1
            self._discard_state(flow)
            flow.broken = True
        elif payload:
            self._add(flow, seq, payload, meta, out)

        if flags & TCP_FIN:
            flows.pop(key, None)
            st.flows_closed += 1
            self._discard_state(flow)
        return out

    # -- internals -------------------------------------------------------------------

    def _insert(self, key: FlowKey, flow: _Flow) -> None:
        flows = self._flows
        flows[key] = flow
        flows.move_to_end(key)
        while len(flows) > self.max_flows:
            _, old = flows.popitem(last=False)
            self.stats.flows_evicted += 1
            self._discard_state(old)

    def _discard_state(self, flow: _Flow) -> None:
        if flow.buf:
            self.stats.partial_dropped += 1
        self.stats.out_of_order_dropped += len(flow.held)
        flow.buf = bytearray()
        flow.held.clear()
        flow.held_bytes = 0
        flow.discard = 0

    def _add(self, flow: _Flow, seq: int, data: bytes, meta: PacketMeta, out: Emitted) -> None:
        st = self.stats
        rel = (seq - flow.next_seq) % _SEQ_MOD
        if rel >= _SEQ_HALF:  # starts before the next expected byte
            behind = _SEQ_MOD - rel
            if behind >= len(data):
                st.duplicate_segments += 1
                return
            st.overlapping_segments += 1
            data = data[behind:]
            rel = 0
        if rel > 0:  # ahead of a gap
            if seq in flow.held and len(flow.held[seq]) >= len(data):
                st.duplicate_segments += 1
                return
            if (
                len(flow.held) >= self.max_ooo_segments
                or len(flow.buf) + flow.held_bytes + len(data) > self.max_buffer
            ):
                self._skip_gap(flow, seq, data, meta, out)
                return
            old = flow.held.get(seq)
            flow.held_bytes += len(data) - (len(old) if old is not None else 0)
            flow.held[seq] = data
            st.out_of_order_held += 1
            return
        self._append(flow, data, meta, out)
        self._drain_held(flow, meta, out)

    def _drain_held(self, flow: _Flow, meta: PacketMeta, out: Emitted) -> None:
        """Use held segments that the stream has now reached (all meta: the completing segment's)."""
        while flow.held:
            progressed = False
            for hseq in list(flow.held):
                rel = (hseq - flow.next_seq) % _SEQ_MOD
                hdata = flow.held[hseq]
                if rel >= _SEQ_HALF:  # now at or behind the stream: use what is new, if anything
                    behind = _SEQ_MOD - rel
                    del flow.held[hseq]
                    flow.held_bytes -= len(hdata)
                    if behind < len(hdata):
                        self._append(flow, hdata[behind:], meta, out)
                    progressed = True
                elif rel == 0:
                    del flow.held[hseq]
                    flow.held_bytes -= len(hdata)
                    self._append(flow, hdata, meta, out)
                    progressed = True
            if not progressed:
                return

    def _skip_gap(self, flow: _Flow, seq: int, data: bytes, meta: PacketMeta, out: Emitted) -> None:
        """Give up waiting for the gap: resume at the earliest segment we have after it."""
        st = self.stats
        st.gaps_skipped += 1
        held = flow.held
        held[seq] = data if seq not in held or len(held[seq]) < len(data) else held[seq]
        first = min(held, key=lambda s: (s - flow.next_seq) % _SEQ_MOD)
        if flow.buf:
            st.partial_dropped += 1
        flow.buf = bytearray()
        flow.discard = 0
        flow.next_seq = first
        flow.held_bytes = sum(len(v) for v in held.values())
        self._drain_held(flow, meta, out)
        # Whatever still sits behind another gap stays held; bound it again.
        while len(held) > self.max_ooo_segments or len(flow.buf) + flow.held_bytes > self.max_buffer:
            last = max(held, key=lambda s: (s - flow.next_seq) % _SEQ_MOD)
            flow.held_bytes -= len(held.pop(last))
            st.out_of_order_dropped += 1

    def _append(self, flow: _Flow, data: bytes, meta: PacketMeta, out: Emitted) -> None:
        """Append in-order data and emit every message it completes."""
        st = self.stats
        flow.next_seq = (flow.next_seq + len(data)) % _SEQ_MOD
        if flow.discard:
            if len(data) <= flow.discard:
                flow.discard -= len(data)
                return
            data = data[flow.discard :]
            flow.discard = 0
        buf = flow.buf
        if not buf and len(data) >= 2:
            # Fast path: messages that start at the segment start (the usual case).
            pos = 0
            n = len(data)
            while n - pos >= 2:
                mlen = (data[pos] << 8) | data[pos + 1]
                if pos + 2 + mlen > n:
                    break
                out.append((meta, data[pos + 2 : pos + 2 + mlen]))
                st.messages += 1
                pos += 2 + mlen
            if pos == n:
                return
            data = data[pos:]
        buf += data
        while len(buf) >= 2:
            mlen = (buf[0] << 8) | buf[1]
            if mlen + 2 > self.max_buffer:
                st.messages_too_large += 1
                if len(buf) >= mlen + 2:
                    del buf[: mlen + 2]
                    continue
                flow.discard = mlen + 2 - len(buf)
                buf.clear()
                return
            if len(buf) < mlen + 2:
                return
            out.append((meta, bytes(buf[2 : mlen + 2])))
            st.messages += 1
            del buf[: mlen + 2]
