"""Rows and fields of ``dnsotel trace``: one row per DNS packet, named like ``trace_dns``.

A :class:`Row` holds what one packet says (plus its pairing outcome); a :class:`Field`
knows how to show one aspect of a row as a column, as a JSON value and as the text a
filter compares. :data:`FIELDS` is the one registry of all of them: the table, the
JSON writer and the filter language all read it.

Rows (see :func:`build_row`):

- a query: ``qr=Q``, no ``rcode``, no latency;
- a response paired with its query: ``qr=R``, ``latency_ns`` = response time - query time;
- an unanswered query, reported when its timeout expires: ``qr=Q``, ``unanswered=true``;
  its ``timestamp`` is the *query's* time (so it sorts next to the query row), and
  ``latency_ns_raw`` is the timeout that expired (shown as ``>5s``);
- an unmatched response (no pending query): ``qr=R``, no latency.

Display fields that are derived from a number have a ``<field>_raw`` twin holding the
number (``latency_ns``/``latency_ns_raw``, ``qtype``/``qtype_raw``, ``id``/``id_raw``,
...), as in ``trace_dns``. Fields that are numbers already (``num_answers``, ``ttl``,
``netns_id``, ``ifindex``) are their own raw value.
"""

from __future__ import annotations

import difflib
import enum
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from exporter.dns import rcode_name, type_name
from exporter.enrich import Enricher, Workload
from exporter.records import PKT_TYPE_NAMES, TRANSPORT_NAMES, DnsPacket


class OutputError(Exception):
    """A bad ``--fields``/``--filter``/``-o`` value; the message names what is wrong."""


class FieldError(OutputError):
    """An unknown field name."""


class Kind(enum.Enum):
    TEXT = "text"  # compared as the displayed string
    INT = "int"  # compared as a number; absent (None) compares false
    BOOL = "bool"  # true/false (1/0 accepted in filters)
    LIST = "list"  # comma-joined when displayed, a JSON list in JSON


class Align(enum.Enum):
    LEFT = "left"
    RIGHT = "right"


class Ellipsis(enum.Enum):
    END = "end"  # "abcdefgh" in 5 -> "abcd…"
    MIDDLE = "middle"  # "abcdefgh" in 5 -> "ab…gh"


Value = str | int | bool | None | list[str]


@dataclass(slots=True)
class Row:
    """One DNS packet as the trace table shows it. Endpoints are already named."""

    ts_ns: int
    netns: int
    ifindex: int
    pkt_type: int
    transport: int
    src: str
    dst: str
    nameserver: str
    src_addr: str
    src_port: int
    dst_addr: str
    dst_port: int
    ns_addr: str
    ns_port: int
    id: int
    response: bool
    qtype: int | None
    name: str
    rcode: int | None  # None on queries
    latency_ns: int | None  # None on queries and unmatched responses; the timeout when unanswered
    num_answers: int
    addresses: list[str]
    cnames: list[str]
    ttl: int | None
    tc: bool
    rd: bool
    ra: bool
    unanswered: bool
    workload: Workload


def build_row(
    pkt: DnsPacket,
    enricher: Enricher,
    *,
    latency_ns: int | None = None,
    unanswered: bool = False,
) -> Row:
    """The row for one packet. ``latency_ns`` comes from pairing (the timeout when unanswered).

    The nameserver is the query's destination or the response's source.
    """
    meta = pkt.meta
    msg = pkt.msg
    if msg.qr:
        ns_addr, ns_port = meta.src, meta.sport
    else:
        ns_addr, ns_port = meta.dst, meta.dport
    src = enricher.endpoint(meta.src, meta.sport)
    dst = enricher.endpoint(meta.dst, meta.dport)
    nameserver = src if msg.qr else dst
    q = msg.question
    return Row(
        ts_ns=meta.ts_ns,
        netns=meta.netns,
        ifindex=meta.ifindex,
        pkt_type=meta.pkt_type,
        transport=meta.transport,
        src=src,
        dst=dst,
        nameserver=nameserver,
        src_addr=meta.src,
        src_port=meta.sport,
        dst_addr=meta.dst,
        dst_port=meta.dport,
        ns_addr=ns_addr,
        ns_port=ns_port,
        id=msg.id,
        response=bool(msg.qr),
        qtype=q.qtype if q is not None else None,
        name=q.name if q is not None else "",
        rcode=msg.rcode if msg.qr else None,
        latency_ns=latency_ns,
        num_answers=msg.ancount,
        addresses=list(msg.addresses),
        cnames=list(msg.cnames),
        ttl=msg.min_ttl,
        tc=bool(msg.tc),
        rd=bool(msg.rd),
        ra=bool(msg.ra),
        unanswered=unanswered,
        workload=enricher.workload(meta.netns),
    )


# --- formatting helpers -----------------------------------------------------------------------

_NS_PER_S = 1_000_000_000


def format_duration(ns: int) -> str:
    """``trace_dns``'s duration text: ``850ns``, ``12.34µs``, ``5.00ms``, ``1.5s``, ``1m30s``."""
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.2f}µs"
    if ns < _NS_PER_S:
        return f"{ns / 1_000_000:.2f}ms"
    # Go's time.Duration.String() for durations of a second and more.
    hours, rem = divmod(ns, 3600 * _NS_PER_S)
    minutes, rem = divmod(rem, 60 * _NS_PER_S)
    secs, frac = divmod(rem, _NS_PER_S)
    text = f"{secs}.{frac:09d}".rstrip("0") + "s" if frac else f"{secs}s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


def format_timestamp(ts_ns: int) -> str:
    """RFC 3339 in UTC with nanoseconds: ``2024-08-30T15:15:21.137120000Z``."""
    secs, frac = divmod(ts_ns, _NS_PER_S)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def _latency_text(row: Row) -> str:
    if row.latency_ns is None:
        return ""
    if row.unanswered:
        return ">" + format_duration(row.latency_ns)
    return format_duration(row.latency_ns)


def _opt_int(v: int | None) -> str:
    return "" if v is None else str(v)


def _bool(v: bool) -> str:
    return "true" if v else "false"


# --- the registry -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """One field: its column, its JSON value, and how filters compare it.

    ``raw`` is the typed value (what JSON carries, what INT/BOOL filters compare);
    ``text`` is the displayed string (what ``==``, ``!=`` and ``~`` compare on TEXT and
    LIST fields). ``number`` is the numeric key for ``<``/``>`` comparisons on a TEXT
    field that has one (``latency_ns``); ``duration`` lets a filter value carry a unit
    (``5ms``). ``aliases`` maps other spellings of a value to the displayed one (the
    ``trace_dns`` response-code names).
    """

    name: str
    kind: Kind
    raw: Callable[[Row], Value]
    text: Callable[[Row], str]
    width: int
    align: Align = Align.LEFT
    ellipsis: Ellipsis = Ellipsis.END
    description: str = ""
    number: Callable[[Row], int | None] | None = None
    duration: bool = False
    aliases: dict[str, str] | None = None

    @property
    def header(self) -> str:
        return self.name.upper()

    @property
    def orderable(self) -> bool:
        return self.kind is Kind.INT or self.number is not None

    def ordering_key(self, row: Row) -> int | None:
        if self.number is not None:
            return self.number(row)
        v = self.raw(row)
        return v if isinstance(v, int) and not isinstance(v, bool) else None


def _text(
    name: str,
    get: Callable[[Row], str],
    width: int,
    desc: str,
    *,
    ellipsis: Ellipsis = Ellipsis.END,
    align: Align = Align.LEFT,
    aliases: dict[str, str] | None = None,
) -> Field:
    return Field(
        name,
        Kind.TEXT,
        get,
        get,
        width,
        align=align,
        ellipsis=ellipsis,
        description=desc,
        aliases=aliases,
    )


def _int(
    name: str, get: Callable[[Row], int | None], width: int, desc: str, *, duration: bool = False
) -> Field:
    return Field(
        name,
        Kind.INT,
        get,
        lambda r: _opt_int(get(r)),
        width,
        align=Align.RIGHT,
        description=desc,
        duration=duration,
    )


def _flag(name: str, get: Callable[[Row], bool], desc: str, width: int = 5) -> Field:
    return Field(name, Kind.BOOL, get, lambda r: _bool(get(r)), width, description=desc)


def _list(name: str, get: Callable[[Row], list[str]], width: int, desc: str) -> Field:
    return Field(name, Kind.LIST, get, lambda r: ",".join(get(r)), width, description=desc)


# The response-code names trace_dns shows (Go's dnsmessage), accepted in rcode filters.
TRACE_DNS_RCODE_ALIASES = {
    "Success": "NOERROR",
    "FormatError": "FORMERR",
    "ServerFailure": "SERVFAIL",
    "NameError": "NXDOMAIN",
    "NotImplemented": "NOTIMP",
    "Refused": "REFUSED",
}

_FIELD_LIST: tuple[Field, ...] = (
    _text("timestamp", lambda r: format_timestamp(r.ts_ns), 30, "Time the packet was seen (RFC 3339, UTC)"),
    _int("timestamp_raw", lambda r: r.ts_ns, 19, "Time the packet was seen, ns since the Unix epoch"),
    _int("netns_id", lambda r: r.netns, 12, "Inode of the network namespace the packet was seen in"),
    _int("ifindex", lambda r: r.ifindex, 7, "Interface index in that network namespace"),
    _text("k8s.node", lambda r: r.workload.node, 20, "Node", ellipsis=Ellipsis.MIDDLE),
    _text("k8s.namespace", lambda r: r.workload.namespace, 16, "Namespace of the pod owning the netns"),
    _text("k8s.podname", lambda r: r.workload.pod, 30, "Pod owning the netns", ellipsis=Ellipsis.MIDDLE),
    _text("k8s.containername", lambda r: r.workload.container, 17, "Container of that pod"),
    _text("src", lambda r: r.src, 30, "Source endpoint", ellipsis=Ellipsis.MIDDLE),
    _text("src.addr", lambda r: r.src_addr, 24, "Source IP address", ellipsis=Ellipsis.MIDDLE),
    _int("src.port", lambda r: r.src_port, 8, "Source port"),
    _text("dst", lambda r: r.dst, 30, "Destination endpoint", ellipsis=Ellipsis.MIDDLE),
    _text("dst.addr", lambda r: r.dst_addr, 24, "Destination IP address", ellipsis=Ellipsis.MIDDLE),
    _int("dst.port", lambda r: r.dst_port, 8, "Destination port"),
    _text(
        "nameserver",
        lambda r: r.nameserver,
        30,
        "Nameserver endpoint: the query's destination, the response's source",
        ellipsis=Ellipsis.MIDDLE,
    ),
    _text("nameserver.addr", lambda r: r.ns_addr, 24, "Nameserver IP address", ellipsis=Ellipsis.MIDDLE),
    _int("nameserver.port", lambda r: r.ns_port, 15, "Nameserver port"),
    _text("id", lambda r: f"{r.id:04x}", 4, "DNS id in hex, as trace_dns shows it"),
    _int("id_raw", lambda r: r.id, 6, "DNS id"),
    _text("qr", lambda r: "R" if r.response else "Q", 2, "Q for a query, R for a response"),
    _flag("qr_raw", lambda r: r.response, "false for a query, true for a response", width=6),
    _text("qtype", lambda r: "" if r.qtype is None else type_name(r.qtype), 6, "Question type"),
    _int("qtype_raw", lambda r: r.qtype, 9, "Question type number"),
    _text("name", lambda r: r.name, 30, "Question name (FQDN, trailing dot)"),
    _text(
        "rcode",
        lambda r: "" if r.rcode is None else rcode_name(r.rcode),
        8,
        "Response code; empty on queries",
        aliases=TRACE_DNS_RCODE_ALIASES,
    ),
    _int("rcode_raw", lambda r: r.rcode, 9, "Response code number; empty on queries"),
    Field(
        "latency_ns",
        Kind.TEXT,
        _latency_text,
        _latency_text,
        10,
        align=Align.RIGHT,
        description="Response time - query time; '>timeout' when unanswered; empty otherwise",
        number=lambda r: r.latency_ns,
        duration=True,
    ),
    _int(
        "latency_ns_raw",
        lambda r: r.latency_ns,
        14,
        "latency_ns in ns (the timeout when unanswered)",
        duration=True,
    ),
    _int("num_answers", lambda r: r.num_answers, 11, "Number of answer records"),
    _list("addresses", lambda r: r.addresses, 24, "A/AAAA addresses of the answer section"),
    _list("cnames", lambda r: r.cnames, 24, "CNAME chain of the answer section"),
    _int("ttl", lambda r: r.ttl, 6, "Smallest TTL of the answer section"),
    _flag("tc", lambda r: r.tc, "Truncated flag"),
    _flag("rd", lambda r: r.rd, "Recursion desired flag"),
    _flag("ra", lambda r: r.ra, "Recursion available flag"),
    _text(
        "pkt_type",
        lambda r: PKT_TYPE_NAMES.get(r.pkt_type, str(r.pkt_type)),
        9,
        "Packet direction (kernel skb pkt_type): HOST, OUTGOING, ...",
    ),
    _int("pkt_type_raw", lambda r: r.pkt_type, 12, "pkt_type number"),
    _text("transport", lambda r: TRANSPORT_NAMES.get(r.transport, str(r.transport)), 9, "udp or tcp"),
    _flag("unanswered", lambda r: r.unanswered, "The query got no response within the timeout", width=10),
)

FIELDS: dict[str, Field] = {f.name: f for f in _FIELD_LIST}
_FOLDED: dict[str, Field] = {f.name.lower(): f for f in _FIELD_LIST}

# trace_dns's default view, minus the process columns (comm, pid: a socket filter does not
# know the process). k8s.node is the same on every row of a node's exporter and a netns
# belongs to a pod, not to one container, so both are left to --fields.
DEFAULT_FIELDS: tuple[str, ...] = (
    "k8s.namespace",
    "k8s.podname",
    "src",
    "dst",
    "qr",
    "qtype",
    "name",
    "rcode",
    "latency_ns",
    "addresses",
)
# Without Kubernetes the k8s columns are always empty.
DEFAULT_FIELDS_NO_K8S: tuple[str, ...] = tuple(n for n in DEFAULT_FIELDS if not n.startswith("k8s."))


def get_field(name: str) -> Field:
    """The field called ``name`` (exact, else case-insensitive: ``k8s.podName`` works)."""
    f = FIELDS.get(name) or _FOLDED.get(name.lower())
    if f is None:
        close = difflib.get_close_matches(name.lower(), list(FIELDS), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise FieldError(f"unknown field {name!r} ({hint}see --list-fields)")
    return f


def parse_fields(spec: str | Iterable[str] | None, default: Sequence[str] = DEFAULT_FIELDS) -> list[Field]:
    """``--fields a,b,c`` (or a list of names) -> fields; None or empty -> ``default``."""
    if spec is None:
        names: list[str] = list(default)
    elif isinstance(spec, str):
        names = [n.strip() for n in spec.split(",")]
    else:
        names = [n.strip() for n in spec]
    if not any(names):
        names = list(default)
    out: list[Field] = []
    for n in names:
        if not n:
            raise FieldError(f"empty field name in --fields {spec!r}")
        out.append(get_field(n))
    return out


def describe_fields() -> str:
    """``--list-fields``: every field, whether it is a default column, and what it holds."""
    width = max(len(n) for n in FIELDS)
    lines = [f"{'FIELD':<{width}}  {'TYPE':<4}  DEFAULT  DESCRIPTION"]
    for f in _FIELD_LIST:
        default = "yes" if f.name in DEFAULT_FIELDS else ""
        lines.append(f"{f.name:<{width}}  {f.kind.value:<4}  {default:<7}  {f.description}")
    return "\n".join(lines) + "\n"
