"""One trace per resolution (DESIGN §5): upstream children, search expansion, TCP retries.

:class:`ResolutionTracker` is a :class:`~exporter.records.PairSink` that watches queries as
the pairer sees them (``on_query``: every query, before any response) and remembers, per
query, what the span builder must add to that query's span. The span builder asks it
(:meth:`ResolutionTracker.annotate`, an :data:`~exporter.telemetry.spans.Annotator`) when
it builds the span, on the export thread, after the exchange completed.

**Upstream children.** In a resolver's network namespace, a query the resolver sends
(role client, seen OUTGOING) while it serves a pending query (role server, seen HOST, not
yet answered or timed out) with the same question (name, type, class) in the same netns
is that server query's upstream query. Its span joins the server span's trace and names
the server span (derived id) as its parent. When several server queries for the question
are pending, the earliest is the parent and the others become span links; a server query
for the question that arrives while the upstream query is in flight (a resolver that
coalesces identical queries, like unbound) becomes a link too. An answer from the cache
has no upstream query, so its server span has no child.

When this process also sees the *server* side of such an upstream query (in another
netns of the node: node-local-dns -> CoreDNS, or a lab's upstream), that server span
joins the resolution's trace as well (its parent is already the upstream span's derived
id), and so on down the chain.

With kernel pairing (``join_late``), a client query reaches :meth:`ResolutionTracker.on_query`
only when its exchange completes (with its own timestamp, which is what every time check
here uses), after the server side of the same exchange in another netns was seen. A server
span that found no client side then looks for it (a note with a parent or a search mark,
by wire key) when it is built, on the export thread: nothing is added per query on the
capture thread.

**Search-list expansion.** A stub resolver tries ``name.<search[0]>.``, ``name.<search[1]>.``,
..., then ``name.`` when the name has fewer than ``ndots`` dots (and the name first,
then the search list, when it has at least ``ndots``). Every span of such a sequence gets
``dns.search_expansion.index`` (position in that try order) and
``dns.search_expansion.original_name`` (the name the application asked for, FQDN).
Primary method: the search list and ``ndots`` of the querying netns, read from
``/proc/<pid>/root/etc/resolv.conf`` of a process in it (:class:`ResolvConfReader`, read on
a background thread, cached per netns). Fallback, when no resolv.conf is readable, and on
the server side of a netns whose client this process does not see: a sequence heuristic
per (netns, role, client address, qtype): a query that follows a failed one (NXDOMAIN,
SERVFAIL or an empty NOERROR) within ``search_window_ns`` and differs from it only by its
trailing labels (the suffixes being nested, disjoint, or absent) continues a sequence whose
original name is their common leading labels. The heuristic marks the first try when the
second one arrives; a first try whose span was already built by then stays unmarked
(spans are built every ``delay_s``, tries follow each other within milliseconds).

**Truncation.** A UDP exchange answered with TC=1 followed, within the pairing timeout, by
a TCP query for the same question from the same client address in the same netns and
role: the TCP span gets the event ``tcp_retry_after_truncation`` (with the UDP exchange's
``dns.id`` and ``client.port``) and a link to the UDP span. (The UDP span's own
``truncated`` event comes from the span builder.)

**Cost and bounds.** Everything on the capture thread is dict work keyed by tuples; the
hashing of derived ids happens on the export thread. Every table is insertion-ordered,
swept by time once per ``sweep_ns`` of packet time (entries live for the pairing timeout,
notes for the timeout plus ``grace_ns``, the time a completed exchange may wait for its
span to be built) and capped at ``max_entries`` (oldest dropped, counted in
``stats.dropped``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import TypeVar

from opentelemetry.sdk.trace import Event
from opentelemetry.trace import Link, SpanContext, TraceFlags
from opentelemetry.util.types import AttributeValue

from exporter.netns import netns_inode
from exporter.records import IPPROTO_TCP, IPPROTO_UDP, ROLE_CLIENT, ROLE_SERVER, DnsPacket, Exchange
from exporter.telemetry import ids
from exporter.telemetry import semconv as sc
from exporter.telemetry.spans import Annotation

log = logging.getLogger(__name__)

__all__ = [
    "ResolutionStats",
    "ResolutionTracker",
    "ResolvConf",
    "ResolvConfReader",
    "parse_resolv_conf",
    "search_try_name",
]

DEFAULT_TIMEOUT_NS = 5_000_000_000
DEFAULT_GRACE_NS = 30_000_000_000
DEFAULT_MAX_ENTRIES = 65_536
DEFAULT_SWEEP_NS = 1_000_000_000
DEFAULT_SEARCH_WINDOW_NS = 2_000_000_000
_MAX_NDOTS = 15  # glibc caps ndots at 15 (RES_MAXNDOTS)

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
# a stub resolver goes on with its search list after these (and after an empty NOERROR)
_FAILED_RCODES = frozenset((2, 3))  # SERVFAIL, NXDOMAIN


# --- resolv.conf ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ResolvConf:
    """What a stub resolver's search behaviour depends on: search domains (lower case, no
    trailing dot, in order) and ``ndots``."""

    search: tuple[str, ...] = ()
    ndots: int = 1
    # ".<search[0]>." (the suffix of a first search try), precomputed for the capture thread
    suffix0: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "suffix0", "." + self.search[0] + "." if self.search else "")


def _domain(text: str) -> str:
    return text.strip().rstrip(".").lower()


def parse_resolv_conf(text: str) -> ResolvConf:
    """Parse resolv.conf(5) as glibc does for search/domain and ``options ndots:N``.

    ``search`` and ``domain`` replace each other (the last one wins; ``domain`` names one
    domain); ``ndots`` is clamped to ``[0, 15]``; comments start with ``#`` or ``;``.
    """
    search: tuple[str, ...] = ()
    ndots = 1
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0]
        parts = line.split()
        if not parts:
            continue
        kw = parts[0]
        if kw == "search":
            search = tuple(d for d in (_domain(p) for p in parts[1:]) if d)
        elif kw == "domain":
            search = tuple(d for d in (_domain(p) for p in parts[1:2]) if d)
        elif kw == "options":
            for opt in parts[1:]:
                if opt.startswith("ndots:"):
                    try:
                        ndots = max(0, min(_MAX_NDOTS, int(opt[6:])))
                    except ValueError:
                        pass
    return ResolvConf(search, ndots)


class ResolvConfReader:
    """The resolv.conf of each network namespace, through ``<proc_root>/<pid>/root/etc/resolv.conf``
    of a process in it (lowest PID whose file is readable).

    :meth:`get` never blocks: it answers from the cache and asks the loader thread (started
    on first use) to (re)read namespaces it has no fresh entry for. A namespace with no
    readable file is remembered as None for ``retry_ns``; others for ``ttl_ns``. Netns 0
    (unknown, e.g. a capture file) has none. ``background=False`` makes :meth:`get` load
    synchronously (tests, replays).
    """

    def __init__(
        self,
        proc_root: str = "/proc",
        *,
        ttl_ns: int = 60_000_000_000,
        retry_ns: int = 5_000_000_000,
        background: bool = True,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.proc_root = proc_root
        self.ttl_ns = ttl_ns
        self.retry_ns = retry_ns
        self.background = background
        self._clock = clock
        self._cache: dict[int, tuple[ResolvConf | None, int]] = {}
        self._wanted: set[int] = set()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.loads = 0  # namespace scans done (loader thread)

    def get(self, netns: int, now_ns: int) -> ResolvConf | None:
        """The cached resolv.conf of ``netns`` (None: unknown or unreadable). Capture thread."""
        e = self._cache.get(netns)
        if e is not None and e[1] > now_ns:
            return e[0]
        if netns and netns not in self._wanted:
            if self.background:
                self._request(netns)
            else:
                self._store(self.load([netns]), [netns])
                e = self._cache.get(netns)
        return e[0] if e is not None else None

    def _request(self, netns: int) -> None:
        with self._cv:
            if self._closed:
                return
            self._wanted.add(netns)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dnsotel-resolvconf", daemon=True)
                self._thread.start()
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._wanted and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                wanted = list(self._wanted)
            try:
                found = self.load(wanted)
            except Exception:  # never let the loader die: capture goes on without resolv.conf
                log.warning("reading resolv.conf of network namespaces failed", exc_info=True)
                found = {}
            self._store(found, wanted)
            with self._cv:
                self._wanted.difference_update(wanted)

    def _store(self, found: dict[int, ResolvConf], wanted: list[int]) -> None:
        now = self._clock()
        for ns in wanted:
            conf = found.get(ns)
            self._cache[ns] = (conf, now + (self.ttl_ns if conf is not None else self.retry_ns))

    def load(self, netns: list[int]) -> dict[int, ResolvConf]:
        """Scan ``proc_root`` once for processes in the given namespaces; read their resolv.conf."""
        self.loads += 1
        todo = {n for n in netns if n}
        out: dict[int, ResolvConf] = {}
        if not todo:
            return out
        try:
            pids = sorted(int(n) for n in os.listdir(self.proc_root) if n.isdigit())
        except OSError:
            return out
        for pid in pids:
            base = os.path.join(self.proc_root, str(pid))
            try:
                ino = netns_inode(os.path.join(base, "ns", "net"))
            except OSError:
                continue
            if ino not in todo:
                continue
            try:
                with open(
                    os.path.join(base, "root", "etc", "resolv.conf"), encoding="utf-8", errors="replace"
                ) as fh:
                    text = fh.read(65536)
            except OSError:
                continue
            out[ino] = parse_resolv_conf(text)
            todo.discard(ino)
            if not todo:
                break
        return out

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(2.0)


def search_try_name(original: str, search: tuple[str, ...], as_is_first: bool, index: int) -> str | None:
    """The question name of try ``index`` of the lookup of ``original`` (FQDN), or None past the end."""
    n = len(search)
    if as_is_first:
        if index == 0:
            return original
        j = index - 1
    else:
        if index == n:
            return original
        j = index
    if 0 <= j < n:
        return original + search[j] + "."
    return None


# --- tracker state -------------------------------------------------------------------------
class _Note:
    """What the span of one query's exchange gets besides the contract (mutable, capture thread)."""

    __slots__ = ("links", "parent", "pkt", "role", "search", "tid", "udp", "via")

    def __init__(self, pkt: DnsPacket, role: str) -> None:
        self.pkt = pkt
        self.role = role
        self.parent: _Serving | None = None  # upstream query: the server query it serves
        self.links: list[_Serving] | None = None  # upstream query: other server queries it serves
        self.via: _Note | None = None  # server side: the client side of the same exchange (same node)
        self.search: tuple[int, str] | None = None  # (index, original name)
        self.udp: _Truncated | None = None  # TCP query: the truncated UDP exchange it retries
        self.tid = 0  # effective trace id, computed once (export thread)


class _Serving:
    """A pending server query (one per first sighting)."""

    __slots__ = ("deadline", "note", "pkt")

    def __init__(self, pkt: DnsPacket, deadline: int, note: _Note | None) -> None:
        self.pkt = pkt
        self.deadline = deadline
        self.note = note


class _Truncated:
    __slots__ = ("note", "pkt", "role", "ts")

    def __init__(self, pkt: DnsPacket, role: str, note: _Note | None, ts: int) -> None:
        self.pkt = pkt
        self.role = role
        self.note = note
        self.ts = ts


class _Step:
    """After a failed try: what the next try of the sequence is (both methods).

    resolv.conf method: keyed by the next try's name; ``first`` is a failed as-is first try,
    marked only when the sequence goes on. Heuristic: keyed by (netns, role, client, qtype),
    ``name`` is the failed try's name and ``search`` its mark (None: not in a sequence yet).
    """

    __slots__ = ("first", "index", "name", "original", "role", "ts")

    def __init__(
        self, original: str, index: int, ts: int, first: DnsPacket | None, name: str = "", role: str = ""
    ) -> None:
        self.original = original
        self.index = index
        self.ts = ts
        self.first = first
        self.name = name
        self.role = role


@dataclass(slots=True)
class ResolutionStats:
    upstream_children: int = 0  # upstream queries parented to a server query
    coalesced_links: int = 0  # further server queries linked to an upstream query
    joined: int = 0  # server queries joined to a client-side trace seen in another netns
    search_marked: int = 0  # queries marked as a search-list try
    tcp_retries: int = 0  # TCP queries retrying a truncated UDP exchange
    dropped: int = 0  # entries dropped because a table was full
    annotated: int = 0  # spans annotated (export thread)


_QKey = tuple[int, str, int, int]  # netns, name, qtype, qclass
_WireKey = tuple[int, str, int, int, str, int, int]  # transport, src, sport, id, name, qtype, qclass
_TcKey = tuple[int, str, str, str, int, int]  # netns, role, client address, name, qtype, qclass
_ExpKey = tuple[int, str, int, str]  # netns, client address, qtype, next name
_LastKey = tuple[int, str, str, int]  # netns, role, client address, qtype


def _pkt_key(pkt: DnsPacket) -> ids.ExchangeKey:
    m = pkt.meta
    q = pkt.msg.question
    if q is None:
        return ids.exchange_key(m.src, m.sport, pkt.msg.id, "", 0, 0, m.transport)
    return ids.exchange_key(m.src, m.sport, pkt.msg.id, q.name, q.qtype, q.qclass, m.transport)


def _plausible_next(suf_prev: str, suf_cur: str) -> bool:
    """Could ``suf_cur`` follow ``suf_prev`` in a search list (suffixes without dots at the ends)?"""
    if not suf_cur or not suf_prev:
        return True  # the name as given, last (or first)
    if suf_prev.endswith("." + suf_cur):
        return True  # nested: default.svc.cluster.local -> svc.cluster.local
    return suf_prev.rpartition(".")[2] != suf_cur.rpartition(".")[2]  # unrelated domains


_K = TypeVar("_K")


_V = TypeVar("_V")


def _expire_front(table: dict[_K, _V], ts_of: Callable[[_V], int], before: int) -> None:
    """Drop entries from the front of an insertion-ordered table while their time is <= ``before``."""
    while table:
        k = next(iter(table))
        if ts_of(table[k]) > before:
            return
        del table[k]


def _step_ts(step: _Step) -> int:
    return step.ts


def _query_ts(entry: _Note) -> int:
    return entry.pkt.meta.ts_ns


def _truncated_ts(entry: _Truncated) -> int:
    return entry.ts


class ResolutionTracker:
    """Tracks resolutions across exchanges; see the module docstring.

    Feed it every pairer callback (it is a ``PairSink``: the telemetry sink forwards to it);
    build spans with :meth:`annotate`. ``resolv_conf`` reads search lists (None: the
    heuristic only).
    """

    def __init__(
        self,
        *,
        timeout_ns: int = DEFAULT_TIMEOUT_NS,
        resolv_conf: ResolvConfReader | None = None,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        grace_ns: int = DEFAULT_GRACE_NS,
        search_window_ns: int = DEFAULT_SEARCH_WINDOW_NS,
        sweep_ns: int = DEFAULT_SWEEP_NS,
        join_late: bool = False,
    ) -> None:
        if timeout_ns <= 0:
            raise ValueError(f"timeout must be positive, got {timeout_ns} ns")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.timeout_ns = timeout_ns
        self.resolv_conf = resolv_conf
        self.max_entries = max_entries
        self.grace_ns = grace_ns
        self.search_window_ns = search_window_ns
        self.sweep_ns = sweep_ns
        self.stats = ResolutionStats()
        self._serving: dict[_QKey, list[_Serving]] = {}
        self._inflight: dict[_QKey, _Note] = {}
        self._notes: dict[int, _Note] = {}  # id(query packet) -> note (the note holds the packet)
        self._lock = threading.Lock()  # _notes: the export thread pops while the capture thread evicts
        self._wire: dict[_WireKey, _Note] = {}
        self._tc: dict[_TcKey, _Truncated] = {}
        self._expect: dict[_ExpKey, _Step] = {}
        self._last: dict[_LastKey, _Step] = {}
        self._sweep_at = 0
        # kernel pairing: client queries arrive when they complete, after their server side
        self.join_late = join_late

    # --- PairSink (capture thread) ------------------------------------------------------
    def on_query(self, pkt: DnsPacket, role: str, retransmit: bool) -> None:
        if retransmit:
            return
        msg = pkt.msg
        q = msg.question
        if q is None:
            return
        m = pkt.meta
        ts = m.ts_ns
        if ts >= self._sweep_at:
            self._sweep(ts)
        name = q.name
        qk: _QKey = (m.netns, name, q.qtype, q.qclass)
        note: _Note | None = None
        if role == ROLE_SERVER:
            if self._wire:
                via = self._wire.get((m.transport, m.src, m.sport, msg.id, name, q.qtype, q.qclass))
                if via is not None and via.pkt.meta.netns != m.netns:
                    note = self._new_note(pkt, role)
                    note.via = via
                    note.search = via.search
                    self.stats.joined += 1
            entry = _Serving(pkt, ts + self.timeout_ns, note)
            serving = self._serving
            lst = serving.get(qk)
            if lst is None:
                serving[qk] = [entry]
                if len(serving) > self.max_entries:
                    del serving[next(iter(serving))]
                    self.stats.dropped += 1
            else:
                lst.append(entry)
            if self._inflight:
                up = self._inflight.get(qk)
                if up is not None:
                    if up.links is None:
                        up.links = [entry]
                    else:
                        up.links.append(entry)
                    self.stats.coalesced_links += 1
            if self._last and (note is None or note.search is None):
                note = self._continue_heuristic(pkt, role, m.src, q.qtype, name, ts, note)
        else:
            lst = self._serving.get(qk)
            if lst is not None:
                while lst and lst[0].deadline <= ts:
                    del lst[0]
                if lst:
                    note = self._new_note(pkt, role)
                    note.parent = lst[0]
                    if len(lst) > 1:
                        note.links = lst[1:]
                        self.stats.coalesced_links += len(lst) - 1
                    inflight = self._inflight
                    inflight[qk] = note
                    if len(inflight) > self.max_entries:
                        del inflight[next(iter(inflight))]
                        self.stats.dropped += 1
                    self.stats.upstream_children += 1
                else:
                    del self._serving[qk]
            if note is None:
                note = self._search_client(pkt, m.netns, m.src, q.qtype, name, ts)
            if note is not None:
                wire = self._wire
                wire[(m.transport, m.src, m.sport, msg.id, name, q.qtype, q.qclass)] = note
                if len(wire) > self.max_entries:
                    del wire[next(iter(wire))]
                    self.stats.dropped += 1
        if m.transport == IPPROTO_TCP and self._tc:
            udp = self._tc.pop((m.netns, role, m.src, name, q.qtype, q.qclass), None)
            if udp is not None and ts - udp.ts <= self.timeout_ns:
                if note is None:
                    note = self._new_note(pkt, role)
                note.udp = udp
                self.stats.tcp_retries += 1

    def on_response(self, ex: Exchange) -> None:
        q = ex.query
        r = ex.response
        if q is None or r is None:
            return
        question = q.msg.question
        if question is None:
            return
        qm = q.meta
        role = ex.role
        if role == ROLE_SERVER or self._inflight:
            self._done(q, role, (qm.netns, question.name, question.qtype, question.qclass))
        rm = r.msg
        rc = rm.rcode
        if rm.tc and qm.transport == IPPROTO_UDP:
            tc = self._tc
            tc[(qm.netns, role, qm.src, question.name, question.qtype, question.qclass)] = _Truncated(
                q, role, self._notes.get(id(q)), r.meta.ts_ns
            )
            if len(tc) > self.max_entries:
                del tc[next(iter(tc))]
                self.stats.dropped += 1
        elif rc in _FAILED_RCODES or (rc == 0 and rm.ancount == 0):
            self._failed(q, role, r.meta.ts_ns)

    def on_unanswered(self, ex: Exchange) -> None:
        q = ex.query
        if q is None:
            return
        question = q.msg.question
        if question is not None and (ex.role == ROLE_SERVER or self._inflight):
            self._done(q, ex.role, (q.meta.netns, question.name, question.qtype, question.qclass))

    def on_unmatched(self, pkt: DnsPacket, role: str) -> None:
        """Nothing to track."""

    def _done(self, q: DnsPacket, role: str, qk: _QKey) -> None:
        if role == ROLE_SERVER:
            lst = self._serving.get(qk)
            if lst is not None:
                for i, entry in enumerate(lst):
                    if entry.pkt is q:
                        del lst[i]
                        break
                if not lst:
                    del self._serving[qk]
        else:
            up = self._inflight.get(qk)
            if up is not None and up.pkt is q:
                del self._inflight[qk]

    # --- notes ------------------------------------------------------------------------------
    def _new_note(self, pkt: DnsPacket, role: str) -> _Note:
        note = _Note(pkt, role)
        notes = self._notes
        notes[id(pkt)] = note
        if len(notes) > self.max_entries:
            with self._lock:
                del notes[next(iter(notes))]
            self.stats.dropped += 1
        return note

    def _note_of(self, pkt: DnsPacket, role: str) -> _Note:
        note = self._notes.get(id(pkt))
        if note is not None and note.pkt is pkt:
            return note
        return self._new_note(pkt, role)

    def _mark(self, note: _Note, index: int, original: str) -> None:
        note.search = (index, original)
        self.stats.search_marked += 1

    # --- search expansion ------------------------------------------------------------------
    def _search_client(
        self, pkt: DnsPacket, netns: int, src: str, qtype: int, name: str, ts: int
    ) -> _Note | None:
        """A client query that is not a resolver's upstream query: a search-list try?"""
        reader = self.resolv_conf
        conf = reader.get(netns, ts) if reader is not None else None
        if conf is None:
            if self._last:
                return self._continue_heuristic(pkt, ROLE_CLIENT, src, qtype, name, ts, None)
            return None
        if not conf.search:
            return None
        if self._expect:
            step = self._expect.pop((netns, src, qtype, name), None)
            if step is not None and ts - step.ts <= self.search_window_ns:
                if step.first is not None:  # the as-is first try failed: it starts the sequence
                    self._mark(self._note_of(step.first, ROLE_CLIENT), 0, step.original)
                note = self._new_note(pkt, ROLE_CLIENT)
                self._mark(note, step.index, step.original)
                return note
        if name.endswith(conf.suffix0):
            original = name[: 1 - len(conf.suffix0)]
            if original.count(".") - 1 < conf.ndots:
                note = self._new_note(pkt, ROLE_CLIENT)
                self._mark(note, 0, original)
                return note
        return None

    def _failed(self, q: DnsPacket, role: str, ts: int) -> None:
        """A try failed (NXDOMAIN, SERVFAIL, empty NOERROR): remember what may follow it."""
        m = q.meta
        question = q.msg.question
        assert question is not None
        name = question.name
        note = self._notes.get(id(q))
        search = note.search if note is not None and note.pkt is q else None
        reader = self.resolv_conf
        conf = reader.get(m.netns, ts) if reader is not None and role == ROLE_CLIENT else None
        if conf is not None:
            if not conf.search or (note is not None and note.parent is not None):
                return
            first: DnsPacket | None = None
            if search is not None:
                index, original = search
            elif name.endswith(conf.suffix0) and name[: 1 - len(conf.suffix0)].count(".") - 1 < conf.ndots:
                # a first search try seen before this netns' resolv.conf was loaded: mark it now
                index, original = 0, name[: 1 - len(conf.suffix0)]
                self._mark(self._note_of(q, role), 0, original)
            elif name.count(".") - 1 >= conf.ndots:  # tried as is first; the search list follows
                index, original, first = 0, name, q
            else:
                return
            as_is_first = original.count(".") - 1 >= conf.ndots
            nxt = search_try_name(original, conf.search, as_is_first, index + 1)
            if nxt is not None:
                expect = self._expect
                expect[(m.netns, m.src, question.qtype, nxt)] = _Step(original, index + 1, ts, first)
                if len(expect) > self.max_entries:
                    del expect[next(iter(expect))]
                    self.stats.dropped += 1
            return
        if note is not None and (note.parent is not None or (note.via is not None and note.via.search)):
            return  # a resolver's upstream query / marked from the client side
        if search is not None and search[0] > 0 and name == search[1]:
            return  # the name as given, last: the sequence is over
        last = self._last
        last[(m.netns, role, m.src, question.qtype)] = _Step(
            search[1] if search else "", search[0] if search else -1, ts, q, name, role
        )
        if len(last) > self.max_entries:
            del last[next(iter(last))]
            self.stats.dropped += 1

    def _continue_heuristic(
        self, pkt: DnsPacket, role: str, src: str, qtype: int, name: str, ts: int, note: _Note | None
    ) -> _Note | None:
        """Does this query continue the sequence of the client's last failed try (no resolv.conf)?"""
        key: _LastKey = (pkt.meta.netns, role, src, qtype)
        prev = self._last.get(key)
        if prev is None or ts - prev.ts > self.search_window_ns or name == prev.name or name == ".":
            return note
        pname = prev.name
        if prev.index >= 0:
            original = prev.original
            if name != original and not name.startswith(original):
                return note
            suf_prev = pname[len(original) : -1]
            if not _plausible_next(suf_prev, name[len(original) : -1]):
                return note
            index = prev.index + 1
        else:
            pl = pname.split(".")[:-1]
            ql = name.split(".")[:-1]
            k = 0
            for a, b in zip(pl, ql, strict=False):
                if a != b:
                    break
                k += 1
            if k == 0 or not _plausible_next(".".join(pl[k:]), ".".join(ql[k:])):
                return note
            original = ".".join(pl[:k]) + "."
            assert prev.first is not None
            self._mark(self._note_of(prev.first, role), 0, original)
            index = 1
        del self._last[key]
        if note is None:
            note = self._new_note(pkt, role)
        self._mark(note, index, original)
        return note

    # --- expiry ---------------------------------------------------------------------------
    def _sweep(self, now: int) -> None:
        self._sweep_at = now + self.sweep_ns
        timeout = self.timeout_ns
        serving = self._serving
        for qk in list(islice(serving, 1024)):
            lst = serving[qk]
            while lst and lst[0].deadline <= now:
                del lst[0]
            if lst:
                break
            del serving[qk]
        _expire_front(self._inflight, _query_ts, now - timeout)
        with self._lock:
            _expire_front(self._notes, _query_ts, now - timeout - self.grace_ns)
        _expire_front(self._wire, _query_ts, now - timeout)
        _expire_front(self._tc, _truncated_ts, now - timeout)
        _expire_front(self._expect, _step_ts, now - self.search_window_ns)
        _expire_front(self._last, _step_ts, now - self.search_window_ns)

    def table_sizes(self) -> dict[str, int]:
        """Entries per table (for tests and debugging)."""
        return {
            "serving": sum(len(v) for v in self._serving.values()),
            "inflight": len(self._inflight),
            "notes": len(self._notes),
            "wire": len(self._wire),
            "truncated": len(self._tc),
            "expect": len(self._expect),
            "last": len(self._last),
        }

    # --- span building (export thread) -----------------------------------------------------
    def _client_trace(self, note: _Note) -> int:
        if note.tid:
            return note.tid
        tid = self._server_trace(note.parent) if note.parent is not None else ids.trace_id(_pkt_key(note.pkt))
        note.tid = tid
        return tid

    def _server_trace(self, srv: _Serving) -> int:
        n = srv.note
        if n is not None and n.via is not None:
            return self._client_trace(n.via)
        if self.join_late:
            via = self._late_via(srv.pkt)
            if via is not None:
                return self._client_trace(via)
        return ids.trace_id(_pkt_key(srv.pkt))

    def _late_via(self, pkt: DnsPacket) -> _Note | None:
        """join_late: the client side (seen in another netns after it) of server query ``pkt``."""
        q = pkt.msg.question
        if q is None or not self._wire:
            return None
        m = pkt.meta
        via = self._wire.get((m.transport, m.src, m.sport, pkt.msg.id, q.name, q.qtype, q.qclass))
        if via is None or via.pkt.meta.netns == m.netns:
            return None
        return via

    def _server_context(self, srv: _Serving) -> SpanContext:
        return SpanContext(
            self._server_trace(srv),
            ids.server_span_id(_pkt_key(srv.pkt)),
            is_remote=False,
            trace_flags=_SAMPLED,
        )

    def _span_trace(self, note: _Note | None, pkt: DnsPacket, role: str) -> int:
        if note is not None:
            if role != ROLE_SERVER:
                return self._client_trace(note)
            if note.via is not None:
                return self._client_trace(note.via)
        return ids.trace_id(_pkt_key(pkt))

    def trace_id_for(self, ex: Exchange) -> int:
        """The trace id the exchange's span will carry (capture thread: for sampling decisions)."""
        q = ex.query
        if q is None:
            return 0
        note = self._notes.get(id(q))
        if note is not None and note.pkt is not q:
            note = None
        return self._span_trace(note, q, ex.role)

    def annotate(self, ex: Exchange) -> Annotation | None:
        """What the span of ``ex`` gets besides the contract (export thread; an ``Annotator``)."""
        q = ex.query
        if q is None:
            return None
        with self._lock:
            note = self._notes.pop(id(q), None)
        if note is not None and note.pkt is not q:  # cannot happen while the note holds the packet
            return None
        if self.join_late and ex.role == ROLE_SERVER and (note is None or note.via is None):
            via = self._late_via(q)
            if via is not None:  # its client side came after it (kernel pairing): join it now
                if note is None:
                    note = _Note(q, ROLE_SERVER)
                note.via = via
                if via.search is not None:
                    note.search = via.search
                self.stats.joined += 1
        if note is None:
            return None
        self.stats.annotated += 1
        trace = 0
        parent: SpanContext | None = None
        links: list[Link] = []
        events: list[Event] = []
        attrs: dict[str, AttributeValue] = {}
        if note.parent is not None:
            parent = self._server_context(note.parent)
            trace = parent.trace_id
            note.tid = trace
        elif note.via is not None and ex.role == ROLE_SERVER:
            trace = self._client_trace(note.via)
        if note.links:
            for srv in tuple(note.links):
                links.append(
                    Link(self._server_context(srv), {sc.SPAN_LINK_REASON: sc.SPAN_LINK_REASON_COALESCED})
                )
        search = note.search
        if search is not None:
            attrs[sc.DNS_SEARCH_EXPANSION_INDEX] = search[0]
            attrs[sc.DNS_SEARCH_EXPANSION_ORIGINAL_NAME] = search[1]
        udp = note.udp
        if udp is not None:
            up = udp.pkt
            ukey = _pkt_key(up)
            usid = ids.server_span_id(ukey) if udp.role == ROLE_SERVER else ids.client_span_id(ukey)
            uctx = SpanContext(
                self._span_trace(udp.note, up, udp.role), usid, is_remote=False, trace_flags=_SAMPLED
            )
            links.append(Link(uctx, {sc.SPAN_LINK_REASON: sc.SPAN_LINK_REASON_TRUNCATED}))
            events.append(
                Event(
                    sc.SPAN_EVENT_TCP_RETRY_AFTER_TRUNCATION,
                    {sc.DNS_ID: up.msg.id, sc.CLIENT_PORT: up.meta.sport, sc.NETWORK_TRANSPORT: "udp"},
                    timestamp=q.meta.ts_ns,
                )
            )
        return Annotation(trace_id=trace, parent=parent, links=links, events=events, attributes=attrs)

    def close(self) -> None:
        if self.resolv_conf is not None:
            self.resolv_conf.close()
