"""The engine: segments in, paired exchanges out to the sinks.

    Segment -> TcpReassembler (TCP only) -> decode -> DnsPacket -> Pairer -> sinks

It is fed by any source (the pcap reader, the live eBPF capture, a test) through
``on_segment``, and driven in time by the packets themselves plus ``advance()``.
It never raises on bad input: an undecodable message is counted by reason and the
next one is decoded.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

from exporter.capture.tcp import TcpReassembler
from exporter.dns import DecodeError, decode
from exporter.pairing import Pairer, PairingStats
from exporter.records import IPPROTO_UDP, DnsPacket, Exchange, PacketMeta, PairSink, Segment

log = logging.getLogger(__name__)

# A message the capture cut short (snaplen) is still decoded as far as it goes; this
# is the decode-error reason counted when even the header or question is missing.
REASON_CAPTURE_TRUNCATED = "capture_truncated"


def sink_hooks(sinks: Sequence[object], name: str) -> list[Callable[[], None]]:
    """The no-argument ``name`` method (``write_header``, ``flush_pending``, ``close``) of each
    sink that has one: only the table has them, the telemetry sink does not."""
    return [f for f in (getattr(s, name, None) for s in sinks) if callable(f)]


class FanOut:
    """Calls several sinks in order; one sink's failure is logged and does not stop the others."""

    def __init__(self, sinks: Sequence[PairSink]) -> None:
        self.sinks = tuple(sinks)
        self.errors = 0

    def _each(self, method: str, *args: object) -> None:
        for sink in self.sinks:
            try:
                getattr(sink, method)(*args)
            except Exception:  # a sink bug must never stop capture
                self.errors += 1
                log.exception("sink %s.%s failed", type(sink).__name__, method)

    def on_query(self, pkt: DnsPacket, role: str, retransmit: bool) -> None:
        self._each("on_query", pkt, role, retransmit)

    def on_response(self, ex: Exchange) -> None:
        self._each("on_response", ex)

    def on_unanswered(self, ex: Exchange) -> None:
        self._each("on_unanswered", ex)

    def on_unmatched(self, pkt: DnsPacket, role: str) -> None:
        self._each("on_unmatched", pkt, role)


class Engine:
    def __init__(
        self,
        sinks: Sequence[PairSink],
        *,
        timeout_ns: int = 5_000_000_000,
        max_pending: int = 65_536,
    ) -> None:
        sink: PairSink = sinks[0] if len(sinks) == 1 else FanOut(sinks)
        self.sink = sink
        self.pairer = Pairer(sink, timeout_ns=timeout_ns, max_pending=max_pending)
        self.reassembler = TcpReassembler()
        self.decode_errors: Counter[str] = Counter()
        self.segments = 0
        self.messages = 0

    def on_segment(self, seg: Segment) -> None:
        """Feed one captured segment. Never raises on bad input."""
        self.segments += 1
        if seg.meta.transport == IPPROTO_UDP:
            self._message(seg.meta, seg.payload, seg.orig_len > len(seg.payload))
            return
        for meta, payload in self.reassembler.feed(seg):
            self._message(meta, payload, False)

    def _message(self, meta: PacketMeta, payload: bytes, cut: bool) -> None:
        self.messages += 1
        try:
            msg = decode(payload, partial=cut)
        except DecodeError as exc:
            self.decode_errors[REASON_CAPTURE_TRUNCATED if cut else exc.reason] += 1
            return
        self.pairer.feed(DnsPacket(meta, msg))

    def advance(self, now_ns: int) -> None:
        """Expire pending queries by wall time (live capture calls this a few times a second)."""
        self.pairer.advance(now_ns)

    def finish(self) -> None:
        """End of input: every query still pending is reported unanswered."""
        self.pairer.flush()

    def pairing_stats(self) -> PairingStats:
        """The pairing counters (kernel pairing adds the kernel's to the pairer's)."""
        return self.pairer.stats

    @property
    def decode_error_total(self) -> int:
        return sum(self.decode_errors.values())
