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
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.dns import Message, rcode_name, type_name
from exporter.enrich import Enricher, Workload
from exporter.records import PKT_TYPE_NAMES, TRANSPORT_NAMES, DnsPacket, PacketMeta


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


class Row:
    """One DNS packet as the trace table shows it: the packet, plus its pairing outcome.

    Lazy: a row keeps the packet's metadata and message and computes a value only when a
    field asks for it (the enricher's endpoint names and workload once per row), so a row
    costs what the selected fields and the filter read. The attributes are those of the
    table: ``ts_ns``, ``src`` (the named endpoint), ``src_addr``, ``qtype``, ...
    """

    __slots__ = ("_dst", "_enricher", "_src", "_workload", "latency_ns", "meta", "msg", "unanswered")

    def __init__(
        self,
        meta: PacketMeta,
        msg: Message,
        enricher: Enricher,
        latency_ns: int | None = None,
        unanswered: bool = False,
    ) -> None:
        self.meta = meta
        self.msg = msg
        # None on queries and unmatched responses; the timeout when unanswered
        self.latency_ns = latency_ns
        self.unanswered = unanswered
        self._enricher = enricher
        self._src: str | None = None
        self._dst: str | None = None
        self._workload: Workload | None = None

    def __repr__(self) -> str:
        return (
            f"Row(ts_ns={self.ts_ns}, src={self.src!r}, dst={self.dst!r}, id={self.id:#06x}, "
            f"qr={'R' if self.response else 'Q'}, name={self.name!r}, rcode={self.rcode}, "
            f"latency_ns={self.latency_ns}, unanswered={self.unanswered})"
        )

    # --- named by the enricher (once per row) ---------------------------------------------

    @property
    def src(self) -> str:
        v = self._src
        if v is None:
            m = self.meta
            v = self._src = self._enricher.endpoint(m.src, m.sport)
        return v

    @property
    def dst(self) -> str:
        v = self._dst
        if v is None:
            m = self.meta
            v = self._dst = self._enricher.endpoint(m.dst, m.dport)
        return v

    @property
    def nameserver(self) -> str:
        """The query's destination or the response's source."""
        return self.src if self.msg.qr else self.dst

    @property
    def workload(self) -> Workload:
        v = self._workload
        if v is None:
            v = self._workload = self._enricher.workload(self.meta.netns)
        return v

    # --- straight from the packet ---------------------------------------------------------

    @property
    def ts_ns(self) -> int:
        return self.meta.ts_ns

    @property
    def netns(self) -> int:
        return self.meta.netns

    @property
    def ifindex(self) -> int:
        return self.meta.ifindex

    @property
    def pkt_type(self) -> int:
        return self.meta.pkt_type

    @property
    def transport(self) -> int:
        return self.meta.transport

    @property
    def src_addr(self) -> str:
        return self.meta.src

    @property
    def src_port(self) -> int:
        return self.meta.sport

    @property
    def dst_addr(self) -> str:
        return self.meta.dst

    @property
    def dst_port(self) -> int:
        return self.meta.dport

    @property
    def ns_addr(self) -> str:
        return self.meta.src if self.msg.qr else self.meta.dst

    @property
    def ns_port(self) -> int:
        return self.meta.sport if self.msg.qr else self.meta.dport

    @property
    def id(self) -> int:
        return self.msg.id

    @property
    def response(self) -> bool:
        return bool(self.msg.qr)

    @property
    def qtype(self) -> int | None:
        q = self.msg.question
        return q.qtype if q is not None else None

    @property
    def name(self) -> str:
        q = self.msg.question
        return q.name if q is not None else ""

    @property
    def rcode(self) -> int | None:
        """None on queries."""
        return self.msg.rcode if self.msg.qr else None

    @property
    def num_answers(self) -> int:
        return self.msg.ancount

    @property
    def addresses(self) -> list[str]:
        return list(self.msg.addresses)

    @property
    def cnames(self) -> list[str]:
        return list(self.msg.cnames)

    @property
    def ttl(self) -> int | None:
        return self.msg.min_ttl

    @property
    def tc(self) -> bool:
        return bool(self.msg.tc)

    @property
    def rd(self) -> bool:
        return bool(self.msg.rd)

    @property
    def ra(self) -> bool:
        return bool(self.msg.ra)


def build_row(
    pkt: DnsPacket,
    enricher: Enricher,
    *,
    latency_ns: int | None = None,
    unanswered: bool = False,
) -> Row:
    """The row for one packet. ``latency_ns`` comes from pairing (the timeout when unanswered).

    The nameserver is the query's destination or the response's source. Nothing is
    computed yet: the fields a formatter or filter reads are (see :class:`Row`).
    """
    return Row(pkt.meta, pkt.msg, enricher, latency_ns, unanswered)


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


# "2024-08-30T15:15:21." by second: rows come in time order (unanswered ones a timeout
# late), so a handful of seconds covers them; cleared when it grows past _TS_CACHE_MAX.
_ts_prefixes: dict[int, str] = {}
_TS_CACHE_MAX = 64


def format_timestamp(ts_ns: int) -> str:
    """RFC 3339 in UTC with nanoseconds: ``2024-08-30T15:15:21.137120000Z``."""
    secs, frac = divmod(ts_ns, _NS_PER_S)
    prefix = _ts_prefixes.get(secs)
    if prefix is None:
        if len(_ts_prefixes) >= _TS_CACHE_MAX:
            _ts_prefixes.clear()
        prefix = _ts_prefixes[secs] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(secs))
    return f"{prefix}{frac:09d}Z"


def _latency_text(latency_ns: int | None, unanswered: bool) -> str:
    if latency_ns is None:
        return ""
    if unanswered:
        return ">" + format_duration(latency_ns)
    return format_duration(latency_ns)


def _pkt_type_name(p: int) -> str:
    name = PKT_TYPE_NAMES.get(p)
    return name if name is not None else str(p)


def _transport_name(t: int) -> str:
    name = TRANSPORT_NAMES.get(t)
    return name if name is not None else str(t)


# --- the registry -----------------------------------------------------------------------------

# What a field's code may use besides ``r`` (the Row), ``m`` (its PacketMeta), ``g`` (its
# dns Message) and ``w`` (its Workload): the formatters compile these expressions into one
# function per selection (table.py), the Field getters below into one function each.
CODE_GLOBALS: dict[str, object] = {
    "_ts": format_timestamp,
    "_lat": _latency_text,
    "_type_name": type_name,
    "_rcode_name": rcode_name,
    "_pkt_type_name": _pkt_type_name,
    "_transport_name": _transport_name,
}


def code_prelude(codes: Iterable[str]) -> list[str]:
    """The statements binding ``m``/``g``/``w`` that ``codes`` use, from the row ``r``."""
    text = " ".join(codes)
    out = []
    if re.search(r"\bm\.", text):
        out.append("m = r.meta")
    if re.search(r"\bg\.", text):
        out.append("g = r.msg")
    if re.search(r"\bw\.", text):
        out.append("w = r.workload")
    return out


def compile_row_function(
    name: str,
    body: Sequence[str],
    result: str,
    codes: Iterable[str],
    extra: dict[str, object] | None = None,
) -> Any:
    """``def name(r): <prelude>; <body>; return <result>``, compiled with CODE_GLOBALS + extra."""
    lines = [f"def {name}(r):"]
    lines += [f"    {stmt}" for stmt in (*code_prelude([*codes, *body, result]), *body)]
    lines.append(f"    return {result}")
    namespace = dict(CODE_GLOBALS)
    if extra:
        namespace.update(extra)
    exec("\n".join(lines) + "\n", namespace)  # our own field code, never user input
    return namespace[name]


@dataclass(frozen=True, slots=True)
class Field:
    """One field: its column, its JSON value, and how filters compare it.

    ``raw`` is the typed value (what JSON carries, what INT/BOOL filters compare);
    ``text`` is the displayed string (what ``==``, ``!=`` and ``~`` compare on TEXT and
    LIST fields). ``number`` is the numeric key for ``<``/``>`` comparisons on a TEXT
    field that has one (``latency_ns``); ``duration`` lets a filter value carry a unit
    (``5ms``). ``aliases`` maps other spellings of a value to the displayed one (the
    ``trace_dns`` response-code names).

    ``code`` is the Python expression of the raw value (of the text for TEXT fields) over
    ``r``/``m``/``g``/``w`` (see CODE_GLOBALS); the formatters compile it. ``text_code``
    is the displayed text's. ``plain``: the text is never escaped (in JSON or on a
    terminal): a code name, a number, a time. ``nullable``: an INT that may be None.
    ``memo_code``: the small-domain raw value the text is a pure function of (``qtype``'s
    number), so filters can remember a rule's outcome per value.
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
    code: str = ""
    text_code: str = ""
    plain: bool = False
    nullable: bool = False
    memo_code: str = ""

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

    def key_function(self) -> Callable[[Row], int | None]:
        """``ordering_key`` as one compiled function (INT fields: the raw value)."""
        if self.number is not None:
            return self.number
        if self.kind is Kind.INT:
            return self.raw  # type: ignore[return-value]  # an int or None, never a bool
        return self.ordering_key


def _getter(name: str, code: str) -> Any:
    return compile_row_function("get_" + re.sub(r"\W", "_", name), (), code, ())


def _text(
    name: str,
    code: str,
    width: int,
    desc: str,
    *,
    ellipsis: Ellipsis = Ellipsis.END,
    align: Align = Align.LEFT,
    aliases: dict[str, str] | None = None,
    plain: bool = False,
    memo: str = "",
) -> Field:
    get = _getter(name, code)
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
        code=code,
        text_code=code,
        plain=plain,
        memo_code=memo,
    )


def _int(
    name: str, code: str, width: int, desc: str, *, duration: bool = False, nullable: bool = False
) -> Field:
    text_code = f'("" if ({code}) is None else str({code}))' if nullable else f"str({code})"
    return Field(
        name,
        Kind.INT,
        _getter(name, code),
        _getter(name, text_code),
        width,
        align=Align.RIGHT,
        description=desc,
        duration=duration,
        code=code,
        text_code=text_code,
        plain=True,
        nullable=nullable,
    )


def _flag(name: str, code: str, desc: str, width: int = 5) -> Field:
    text_code = f'("true" if {code} else "false")'
    return Field(
        name,
        Kind.BOOL,
        _getter(name, f"bool({code})"),
        _getter(name, text_code),
        width,
        description=desc,
        code=f"bool({code})",
        text_code=text_code,
        plain=True,
    )


def _list(name: str, code: str, width: int, desc: str) -> Field:
    text_code = f'",".join({code})'
    return Field(
        name,
        Kind.LIST,
        _getter(name, f"list({code})"),
        _getter(name, text_code),
        width,
        description=desc,
        code=code,
        text_code=text_code,
    )


# The response-code names trace_dns shows (Go's dnsmessage), accepted in rcode filters.
TRACE_DNS_RCODE_ALIASES = {
    "Success": "NOERROR",
    "FormatError": "FORMERR",
    "ServerFailure": "SERVFAIL",
    "NameError": "NXDOMAIN",
    "NotImplemented": "NOTIMP",
    "Refused": "REFUSED",
}

_QTYPE = "(None if g.question is None else g.question.qtype)"
_RCODE = "(g.rcode if g.qr else None)"
_NS_ADDR = "(m.src if g.qr else m.dst)"
_NS_PORT = "(m.sport if g.qr else m.dport)"

_FIELD_LIST: tuple[Field, ...] = (
    _text("timestamp", "_ts(m.ts_ns)", 30, "Time the packet was seen (RFC 3339, UTC)", plain=True),
    _int("timestamp_raw", "m.ts_ns", 19, "Time the packet was seen, ns since the Unix epoch"),
    _int("netns_id", "m.netns", 12, "Inode of the network namespace the packet was seen in"),
    _int("ifindex", "m.ifindex", 7, "Interface index in that network namespace"),
    _text("k8s.node", "w.node", 20, "Node", ellipsis=Ellipsis.MIDDLE),
    _text("k8s.namespace", "w.namespace", 16, "Namespace of the pod owning the netns"),
    _text("k8s.podname", "w.pod", 30, "Pod owning the netns", ellipsis=Ellipsis.MIDDLE),
    _text("k8s.containername", "w.container", 17, "Container of that pod"),
    _text("src", "r.src", 30, "Source endpoint", ellipsis=Ellipsis.MIDDLE),
    _text("src.addr", "m.src", 24, "Source IP address", ellipsis=Ellipsis.MIDDLE),
    _int("src.port", "m.sport", 8, "Source port"),
    _text("dst", "r.dst", 30, "Destination endpoint", ellipsis=Ellipsis.MIDDLE),
    _text("dst.addr", "m.dst", 24, "Destination IP address", ellipsis=Ellipsis.MIDDLE),
    _int("dst.port", "m.dport", 8, "Destination port"),
    _text(
        "nameserver",
        "r.nameserver",
        30,
        "Nameserver endpoint: the query's destination, the response's source",
        ellipsis=Ellipsis.MIDDLE,
    ),
    _text("nameserver.addr", _NS_ADDR, 24, "Nameserver IP address", ellipsis=Ellipsis.MIDDLE),
    _int("nameserver.port", _NS_PORT, 15, "Nameserver port"),
    _text("id", 'format(g.id, "04x")', 4, "DNS id in hex, as trace_dns shows it", plain=True, memo="g.id"),
    _int("id_raw", "g.id", 6, "DNS id"),
    _text(
        "qr", '("R" if g.qr else "Q")', 2, "Q for a query, R for a response", plain=True, memo="bool(g.qr)"
    ),
    _flag("qr_raw", "g.qr", "false for a query, true for a response", width=6),
    _text(
        "qtype",
        '("" if g.question is None else _type_name(g.question.qtype))',
        6,
        "Question type",
        plain=True,
        memo=_QTYPE,
    ),
    _int("qtype_raw", _QTYPE, 9, "Question type number", nullable=True),
    _text(
        "name", '("" if g.question is None else g.question.name)', 30, "Question name (FQDN, trailing dot)"
    ),
    _text(
        "rcode",
        '(_rcode_name(g.rcode) if g.qr else "")',
        8,
        "Response code; empty on queries",
        aliases=TRACE_DNS_RCODE_ALIASES,
        plain=True,
        memo=_RCODE,
    ),
    _int("rcode_raw", _RCODE, 9, "Response code number; empty on queries", nullable=True),
    Field(
        "latency_ns",
        Kind.TEXT,
        _getter("latency_ns", "_lat(r.latency_ns, r.unanswered)"),
        _getter("latency_ns", "_lat(r.latency_ns, r.unanswered)"),
        10,
        align=Align.RIGHT,
        description="Response time - query time; '>timeout' when unanswered; empty otherwise",
        number=_getter("latency_ns", "r.latency_ns"),
        duration=True,
        code="_lat(r.latency_ns, r.unanswered)",
        text_code="_lat(r.latency_ns, r.unanswered)",
        plain=True,
    ),
    _int(
        "latency_ns_raw",
        "r.latency_ns",
        14,
        "latency_ns in ns (the timeout when unanswered)",
        duration=True,
        nullable=True,
    ),
    _int("num_answers", "g.ancount", 11, "Number of answer records"),
    _list("addresses", "g.addresses", 24, "A/AAAA addresses of the answer section"),
    _list("cnames", "g.cnames", 24, "CNAME chain of the answer section"),
    _int("ttl", "g.min_ttl", 6, "Smallest TTL of the answer section", nullable=True),
    _flag("tc", "g.tc", "Truncated flag"),
    _flag("rd", "g.rd", "Recursion desired flag"),
    _flag("ra", "g.ra", "Recursion available flag"),
    _text(
        "pkt_type",
        "_pkt_type_name(m.pkt_type)",
        9,
        "Packet direction (kernel skb pkt_type): HOST, OUTGOING, ...",
        plain=True,
        memo="m.pkt_type",
    ),
    _int("pkt_type_raw", "m.pkt_type", 12, "pkt_type number"),
    _text("transport", "_transport_name(m.transport)", 9, "udp or tcp", plain=True, memo="m.transport"),
    _flag("unanswered", "r.unanswered", "The query got no response within the timeout", width=10),
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
