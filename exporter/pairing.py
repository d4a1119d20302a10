"""Query/response matcher: latency, timeouts (unanswered), orphans, bounded table.

Every decoded packet goes through :meth:`Pairer.feed`. A query becomes a *pending*
entry under the key ``(netns, role, transport, client address, client port, DNS id)``;
a response with the same key and the same question (name, type, class) closes it and
the sink gets an :class:`~exporter.records.Exchange` with both packets.

Role (which end of the exchange the observing netns holds) comes from the direction
the packet was seen in:

==========================  ============  ============
pkt_type                    query         response
==========================  ============  ============
OUTGOING                    client        server
HOST, BROADCAST, MULTICAST,
OTHERHOST (and the rest)    server        client
UNKNOWN (pcap, no dir.)     client        client
==========================  ============  ============

so on loopback, where each packet is seen twice (OUTGOING, then HOST), the client
exchange and the server exchange are two separate pending entries and both pair.

The server address is not in the key: Service NAT rewrites it, so a response comes
back from a different address than the query went to.

Rules beyond the plain match:

* A response whose key matches but whose question differs is *unmatched*; the pending
  query stays pending. An error response (rcode != 0) without a question section
  matches on the key alone.
* A query whose key and question are already pending is a *retransmission*: the
  exchange keeps the first query (and its timestamp, so latency covers the retries),
  and counts the copy (``retransmits``, ``retransmit_ts_ns``).
* A query whose key is pending with a *different* question supersedes the old one:
  a client that reuses its port and id for a new question has given up on the old
  one (a client cannot tell two in-flight answers with one id apart on one socket;
  musl, for one, makes its parallel A/AAAA ids distinct for that reason). The old
  query is reported unanswered at once, with ``timeout_ns`` set to the time it
  waited before it was abandoned (new query ts - old query ts, clamped to
  ``[0, timeout]``), so a span ends when the client gave up; it is counted in ``unanswered`` and in
  ``superseded``. A late response to it then counts as unmatched.
* A pending query is reported unanswered when ``now - query ts >= timeout``, where
  ``now`` is the timestamp of the packet being fed or the clock passed to
  :meth:`Pairer.advance`. There is no wall clock inside.
* The table holds at most ``max_pending`` queries; a new query into a full table
  evicts the oldest, which is counted (``evicted``) but not reported (see
  :meth:`~exporter.records.PairSink.on_unanswered`).

Expiry is cheap per packet: the pending dict keeps arrival order and only its head is
examined, and only once the clock reaches the head's deadline. Packets from two CPUs
may arrive slightly out of timestamp order; a query that arrives after a younger one
expires when everything ahead of it has expired, i.e. late by at most the skew; the
exchange it produces still carries its own timestamps.

Accounting (asserted by the tests): every query packet is exactly one of a first
sighting or a retransmission, and every first sighting ends exactly once as paired,
unanswered or evicted, or is still pending::

    queries == retransmits + paired + unanswered + evicted + pending
    responses == paired + unmatched
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exporter.records import (
    PACKET_OUTGOING,
    PACKET_UNKNOWN,
    ROLE_CLIENT,
    ROLE_SERVER,
    DnsPacket,
    Exchange,
    PairSink,
)

if TYPE_CHECKING:
    from exporter.dns import Message

__all__ = [
    "DEFAULT_MAX_PENDING",
    "DEFAULT_TIMEOUT_NS",
    "Pairer",
    "PairingStats",
    "query_role",
    "response_role",
]

DEFAULT_TIMEOUT_NS = 5_000_000_000
DEFAULT_MAX_PENDING = 65_536

# (netns, role, transport, client address, client port, DNS id)
_Key = tuple[int, str, int, str, int, int]
# (name, qtype, qclass), or None for a message without a question
_QKey = tuple[str, int, int] | None


# A query seen with one of these pkt_types was sent from this netns: the client side.
_CLIENT_QUERY_TYPES = frozenset((PACKET_OUTGOING, PACKET_UNKNOWN))


def query_role(pkt_type: int) -> str:
    """The role of the observing netns for a query seen with ``pkt_type``."""
    return ROLE_CLIENT if pkt_type in _CLIENT_QUERY_TYPES else ROLE_SERVER


def response_role(pkt_type: int) -> str:
    """The role of the observing netns for a response seen with ``pkt_type``."""
    return ROLE_SERVER if pkt_type == PACKET_OUTGOING else ROLE_CLIENT


class _Pending:
    """One pending query (mutable, private to the pairer)."""

    __slots__ = ("deadline", "qkey", "query", "retransmit_ts", "role")

    def __init__(self, query: DnsPacket, role: str, qkey: _QKey, deadline: int) -> None:
        self.query = query
        self.role = role
        self.qkey = qkey
        self.deadline = deadline
        self.retransmit_ts: list[int] | None = None


@dataclass(slots=True)
class PairingStats:
    """Counters of the pairing stage (see the module docstring for how they add up)."""

    queries: int = 0  # query packets seen, retransmissions included
    responses: int = 0  # response packets seen
    paired: int = 0  # responses that closed a pending query
    unanswered: int = 0  # queries reported unanswered (timeout, flush, superseded)
    unmatched: int = 0  # responses with no pending query for their key and question
    retransmits: int = 0  # query packets that repeated a pending query
    evicted: int = 0  # pending queries dropped because the table was full
    superseded: int = 0  # of ``unanswered``: replaced by a new question on the same key
    _table: dict[_Key, _Pending] = field(default_factory=dict, repr=False, compare=False)

    @property
    def pending(self) -> int:
        """Queries waiting for a response now."""
        return len(self._table)


class Pairer:
    """Pairs DNS queries with responses per network namespace and role; see the module doc."""

    __slots__ = ("_check_at", "_pending", "_sink", "max_pending", "stats", "timeout_ns")

    def __init__(
        self,
        sink: PairSink,
        timeout_ns: int = DEFAULT_TIMEOUT_NS,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if timeout_ns <= 0:
            raise ValueError(f"pairing timeout must be positive, got {timeout_ns} ns")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self._sink = sink
        self.timeout_ns = timeout_ns
        self.max_pending = max_pending
        self.stats = PairingStats()
        self._pending: dict[_Key, _Pending] = self.stats._table
        # No pending entry can expire before this time: the head's deadline when it was
        # last examined, lowered by every insertion with an earlier deadline.
        self._check_at: int = 1 << 63

    def __len__(self) -> int:
        return len(self._pending)

    def feed(self, pkt: DnsPacket) -> None:
        """Take one decoded packet; first expire what timed out by the packet's time."""
        meta = pkt.meta
        ts = meta.ts_ns
        if ts >= self._check_at:
            self._expire(ts)
        msg = pkt.msg
        if msg.qr:
            self._response(pkt, msg)
        else:
            self._query(pkt, msg)

    def advance(self, now_ns: int) -> None:
        """Expire by an injected clock (wall time, ns since the epoch, like packet timestamps)."""
        if now_ns >= self._check_at:
            self._expire(now_ns)

    def flush(self) -> None:
        """End of input: report every pending query unanswered (end = query ts + timeout)."""
        pending = self._pending
        entries = list(pending.values())
        pending.clear()
        self._check_at = 1 << 63
        self.stats.unanswered += len(entries)
        for entry in entries:
            self._report_unanswered(entry, self.timeout_ns)

    # -- internals ---------------------------------------------------------------

    def _query(self, pkt: DnsPacket, msg: Message) -> None:
        meta = pkt.meta
        stats = self.stats
        stats.queries += 1
        role = ROLE_CLIENT if meta.pkt_type in _CLIENT_QUERY_TYPES else ROLE_SERVER
        key: _Key = (meta.netns, role, meta.transport, meta.src, meta.sport, msg.id)
        q = msg.question
        qkey: _QKey = None if q is None else (q.name, q.qtype, q.qclass)
        pending = self._pending
        old = pending.get(key)
        if old is not None:
            if old.qkey == qkey:
                stats.retransmits += 1
                if old.retransmit_ts is None:
                    old.retransmit_ts = [meta.ts_ns]
                else:
                    old.retransmit_ts.append(meta.ts_ns)
                self._sink.on_query(pkt, role, True)
                return
            # Same port and id, new question: the client abandoned the old query.
            del pending[key]
            stats.unanswered += 1
            stats.superseded += 1
            waited = meta.ts_ns - old.query.meta.ts_ns
            self._report_unanswered(old, min(self.timeout_ns, max(0, waited)))
        elif len(pending) >= self.max_pending:
            del pending[next(iter(pending))]
            stats.evicted += 1
        deadline = meta.ts_ns + self.timeout_ns
        pending[key] = _Pending(pkt, role, qkey, deadline)
        if deadline < self._check_at:
            self._check_at = deadline
        self._sink.on_query(pkt, role, False)

    def _response(self, pkt: DnsPacket, msg: Message) -> None:
        meta = pkt.meta
        stats = self.stats
        stats.responses += 1
        role = ROLE_SERVER if meta.pkt_type == PACKET_OUTGOING else ROLE_CLIENT
        key: _Key = (meta.netns, role, meta.transport, meta.dst, meta.dport, msg.id)
        pending = self._pending
        entry = pending.get(key)
        if entry is not None:
            q = msg.question
            if (q is None and msg.rcode != 0) or entry.qkey == (
                None if q is None else (q.name, q.qtype, q.qclass)
            ):
                del pending[key]
                stats.paired += 1
                rts = entry.retransmit_ts
                self._sink.on_response(
                    Exchange(
                        entry.query,
                        pkt,
                        role,
                        0 if rts is None else len(rts),
                        0,
                        () if rts is None else tuple(rts),
                    )
                )
                return
        stats.unmatched += 1
        self._sink.on_unmatched(pkt, role)

    def _expire(self, now: int) -> None:
        pending = self._pending
        expired: list[_Pending] = []
        while pending:
            key = next(iter(pending))
            entry = pending[key]
            if entry.deadline > now:
                self._check_at = entry.deadline
                break
            del pending[key]
            expired.append(entry)
        else:
            self._check_at = 1 << 63
        if expired:
            self.stats.unanswered += len(expired)
            for entry in expired:
                self._report_unanswered(entry, self.timeout_ns)

    def _report_unanswered(self, entry: _Pending, timeout_ns: int) -> None:
        rts = entry.retransmit_ts
        self._sink.on_unanswered(
            Exchange(
                entry.query,
                None,
                entry.role,
                0 if rts is None else len(rts),
                timeout_ns,
                () if rts is None else tuple(rts),
            )
        )
