"""Bounds-checked, allocation-light decoder of one DNS message (RFC 1035 wire format).

Everything that reads wire bytes lives in this module: the two reading primitives
(``_read_name`` for domain names, the precompiled ``struct.Struct`` objects for fixed
fields, used only from ``decode`` and ``_build_answer_section``) are the decoder's cursor.
No other module indexes DNS wire bytes.

``decode`` validates the whole message and fills the header, question and EDNS fields;
the answer-section fields are built on their first access (``Message``), most messages
being only counted, from the bytes and the name memo ``decode`` keeps with the Message.

What is checked, and the ``DecodeError.reason`` each failure maps to:

``short_header``    fewer than 12 bytes
``short_question``  the question section runs past the end of the message
``short_rr``        an RR (owner name, fixed header or rdata) runs past the end of the message
``label_too_long``  a length byte 0x40-0xBF (a label over 63 octets, or an unsupported label type)
``pointer_forward`` a compression pointer pointing past itself
``pointer_loop``    a compression pointer that does not point strictly before the start of the
                    labels it follows (self-pointers and loops), a target whose labels run into
                    the name being read, or a chain of more than 16 pointers
``name_too_long``   a name over 255 octets (uncompressed wire length)
``bad_rdlength``    A (class IN) rdata not 4 octets, AAAA (class IN) not 16, CNAME rdata not
                    exactly one name
``bad_opt``         an OPT RR outside the additional section, a second OPT, an OPT with a
                    non-root owner, or an option list that does not fill its rdata exactly
``bad_tsig``        a TSIG RR that is not the last RR of the additional section or not class ANY

These are the rules dnspython 2.9 applies to the same parts of a message (so a message
dnspython accepts is accepted here and decodes to the same fields). Pointer rule: a
pointer must point strictly before the start of the run of labels it ends (for the first
pointer, the start of the name), and the labels found at the target must end before that
start; each further pointer must point strictly before the previous target. Targets
strictly decrease, so no walk can loop.

Deliberate differences from dnspython (``dns.message.from_wire``):

* bytes after the last RR are ignored (dnspython raises ``TrailingJunk`` unless
  ``ignore_trailing=True``): an observer reports what the client reads, and stub
  resolvers ignore them too;
* rdata other than A/AAAA (class IN), CNAME and OPT is skipped by rdlength, not validated
  (dnspython rejects e.g. an MX whose exchange name does not fill its rdata); EDNS option
  payloads are not validated either (only the option TLV framing);
* UPDATE messages are decoded like any other message (dnspython applies the zone/prereq
  section rules of RFC 2136);
* a TSIG is only checked for placement, never verified (dnspython needs a keyring).

TTLs with the top bit set are reported as 0 (RFC 2181 section 8, as dnspython does).
"""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Final

__all__ = ["DECODE_REASONS", "Answer", "DecodeError", "Message", "Question", "decode"]

DECODE_REASONS: Final[frozenset[str]] = frozenset(
    {
        "short_header",
        "short_question",
        "short_rr",
        "label_too_long",
        "pointer_forward",
        "pointer_loop",
        "name_too_long",
        "bad_rdlength",
        "bad_opt",
        "bad_tsig",
    }
)


class DecodeError(Exception):
    """A malformed DNS message. ``reason`` is one of ``DECODE_REASONS``."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Question:
    name: str  # lower-case FQDN with trailing dot, escaped like dnspython's Name.to_text()
    qtype: int
    qclass: int


@dataclass(slots=True)
class Answer:
    name: str
    rtype: int
    rclass: int
    ttl: int  # 0 when the wire TTL has its top bit set (RFC 2181 section 8)
    data: str  # A/AAAA (class IN): address text (inet_ntop form); CNAME: target FQDN; others: ""


_MESSAGE_SLOTS: Final = (
    "id",
    "qr",
    "opcode",
    "aa",
    "tc",
    "rd",
    "ra",
    "ad",
    "cd",
    "rcode",
    "qdcount",
    "ancount",
    "nscount",
    "arcount",
    "question",
    "_answers",
    "_addresses",
    "_cnames",
    "_min_ttl",
    "edns_udp_size",
    "edns_do",
    "_wire",
    "_an_pos",
    "_an_memo",
)


@dataclass
class Message:
    """One decoded message.

    A Message returned by ``decode`` builds ``answers``, ``addresses``, ``cnames`` and
    ``min_ttl`` on the first access to any of them: ``decode`` has already validated the
    whole message, so building them cannot fail, and most messages are only counted,
    never rendered. Reading, setting, comparing, printing, copying or pickling a Message
    behaves exactly as if ``decode`` had filled every field.
    """

    # Declared by hand (not ``slots=True``): the four answer-section fields are properties
    # (set on the class below) over ``_answers`` .. ``_min_ttl``; ``_wire`` is the message's
    # bytes until they are built (None after, or when the constructor filled them);
    # ``_an_pos`` and ``_an_memo`` are where the answer section starts and the name memo
    # ``decode`` left. No field has a default, so the slots clash with nothing. (A name,
    # not a literal, so that mypy does not hide the four fields behind the slot names.)
    __slots__ = _MESSAGE_SLOTS

    id: int
    qr: bool
    opcode: int
    aa: bool
    tc: bool
    rd: bool
    ra: bool
    ad: bool
    cd: bool
    rcode: int  # 12-bit extended rcode when an OPT RR is present, else the 4-bit header rcode
    qdcount: int
    ancount: int
    nscount: int
    arcount: int
    question: Question | None  # the first question; None when qdcount == 0
    answers: list[Answer]  # every RR of the answer section, in order
    addresses: list[str]  # A/AAAA data of the answer section, in order
    cnames: list[str]  # CNAME targets of the answer section, in order
    min_ttl: int | None  # smallest TTL in the answer section; None when it is empty
    edns_udp_size: int | None  # the OPT RR's class field; None without OPT
    edns_do: bool  # DO bit of the OPT RR

    def __post_init__(self) -> None:
        self._wire: bytes | None = None


def _lazy_field(slot: str) -> property:
    read = attrgetter(slot)

    def get(m: Message) -> object:
        if m._wire is not None:
            _build_answer_section(m)
        return read(m)

    def set_(m: Message, value: object) -> None:
        # _wire is unset while the constructor runs (it is set in __post_init__).
        if getattr(m, "_wire", None) is not None:
            _build_answer_section(m)  # the other three stay as decode would have filled them
        setattr(m, slot, value)

    return property(get, set_)


for _field in ("answers", "addresses", "cnames", "min_ttl"):
    setattr(Message, _field, _lazy_field("_" + _field))
del _field


# ---------------------------------------------------------------------------------------------
# Label text: lower-case A-Z, escape like dnspython's dns.name._escapify for bytes labels:
# the specials  " ( ) . ; \ @ $  get a backslash, bytes <= 0x20 and >= 0x7F become \DDD.

_LOWER: Final[bytes] = bytes(range(256)).translate(
    bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
)
_NEEDS_ESCAPE: Final[re.Pattern[bytes]] = re.compile(rb'[\x00-\x20\x7f-\xff"().;\\@$]')
_ESCAPE_TEXT: Final[tuple[str, ...]] = tuple(
    "\\" + chr(c) if chr(c) in '"().;\\@$' else (chr(c) if 0x20 < c < 0x7F else f"\\{c:03d}")
    for c in range(256)
)

# Text of a run of uncompressed labels (length bytes included) -> "label.label." text.
# Shared by all messages; bounded by clearing when full (keys are at most 255 bytes).
_RUN_TEXT: dict[bytes, str] = {}
_RUN_TEXT_MAX: Final = 8192


def _run_text(run: bytes) -> str:
    """Text of a run of labels, e.g. b"\\x03www\\x07example" -> "www.example."."""
    text = _RUN_TEXT.get(run)
    if text is not None:
        return text
    parts: list[str] = []
    i = 0
    n = len(run)
    while i < n:
        j = i + 1 + run[i]
        label = run[i + 1 : j].translate(_LOWER)
        if _NEEDS_ESCAPE.search(label) is None:
            parts.append(label.decode("ascii"))
        else:
            parts.append("".join([_ESCAPE_TEXT[c] for c in label]))
        i = j
    parts.append("")
    text = ".".join(parts)
    if len(_RUN_TEXT) >= _RUN_TEXT_MAX:
        _RUN_TEXT.clear()
    _RUN_TEXT[run] = text
    return text


# A name already decoded in this message, by the offset where its first label starts:
# (text, end of its first run incl. terminator/pointer, uncompressed wire length, pointer hops).
_Memo = dict[int, tuple[str, int, int, int]]

_MAX_HOPS: Final = 16  # dnspython's MAX_COMPRESSION_POINTER_CHAIN


def _read_name(buf: bytes, pos: int, end: int, memo: _Memo, short: str) -> tuple[str, int]:
    """Decode the (possibly compressed) name at ``pos``; return (text, offset after it).

    Bytes at or after ``end`` are out of bounds (raises ``short``). The name, and every
    run of labels reached through a pointer, is memoised by offset in ``memo``, so a
    pointer to an already decoded name or suffix costs one dict lookup.

    This is the fast path for the shapes real messages have: labels ending in the root,
    or labels ending in a pointer to a name already decoded. Anything else (a pointer
    to an offset not seen yet, any error) goes to ``_read_name_slow``, which applies the
    same rules in general.
    """
    cap = pos + 255
    p = pos
    while True:
        if p >= end:
            raise DecodeError(short)
        c = buf[p]
        if c == 0 or c > 63:
            break
        p += c + 1
        if p >= cap:
            raise DecodeError("name_too_long")
    if c == 0:
        text = _run_text(buf[pos:p]) if p > pos else "."
        p += 1
        memo[pos] = (text, p, p - pos, 0)
        return text, p
    if c >= 192 and p + 1 < end:
        target = ((c & 0x3F) << 8) | buf[p + 1]
        known = memo.get(target) or _suffix_entry(buf, target, memo)
        if known is not None and target < pos and known[1] <= pos and known[3] < _MAX_HOPS:
            length = p - pos + known[2]
            if length <= 255:
                if p > pos:
                    tail = known[0]
                    text = _run_text(buf[pos:p]) + tail if tail != "." else _run_text(buf[pos:p])
                else:
                    text = known[0]
                p += 2
                memo[pos] = (text, p, length, known[3] + 1)
                return text, p
    return _read_name_slow(buf, pos, end, memo, short)


_SUFFIX_SCAN_MAX: Final = 8  # memo entries _suffix_entry looks through (keeps it O(1))


def _suffix_entry(buf: bytes, target: int, memo: _Memo) -> tuple[str, int, int, int] | None:
    """The memo entry for ``target`` when it is a label inside a memoised name with no pointer.

    That is where a pointer into the middle of a name points (an SOA owner in an NXDOMAIN
    response pointing into the question, a CNAME target sharing a suffix with the previous
    one). A memo entry with no pointer hop covers a chain of labels from its offset to the
    root byte before its end, so any label start in that chain begins a run of labels
    ending in that root: the entry ``_read_name_slow`` would memoise for ``target``,
    computed without its general walk. None when the memo is too big to look through, or
    no such chain has ``target`` as a label start.
    """
    if len(memo) > _SUFFIX_SCAN_MAX:
        return None
    for start, (_, run_end, _, hops) in memo.items():
        if hops == 0 and start < target < run_end - 1:
            p = start
            while p < target:
                p += buf[p] + 1
            if p == target:
                entry = memo[target] = (_run_text(buf[target : run_end - 1]), run_end, run_end - target, 0)
                return entry
    return None


def _read_name_slow(buf: bytes, pos: int, end: int, memo: _Memo, short: str) -> tuple[str, int]:
    """``_read_name`` for any shape: follows pointers to offsets not decoded yet.

    Every label offset of a run reached through a pointer is memoised, and the walk of
    such a run stops at the first offset already memoised, so each byte of a message is
    walked at most twice (once in its own name, once as a pointer target) however the
    pointers are laid out: decoding time stays linear in the message size.
    """
    name_start = start = pos  # start: where the current run of labels starts
    limit = end  # the current run's bytes must lie below this
    length = 1  # uncompressed wire length so far, root byte included
    hops = 0
    after = -1  # offset after the name in the original stream (= end of the first run)
    texts: list[str] = []  # one "label." text per label
    tail = ""  # text of a memoised suffix the name ends with ("" for the root)
    # Label offsets of runs reached through a pointer: (offset, index in texts, length, hops, run end)
    marks: list[tuple[int, int, int, int, int]] = []
    while True:
        run_marks: list[tuple[int, int, int, int]] = []
        if hops:
            run_marks.append((pos, len(texts), length, hops))
        p = pos
        known = None
        while True:
            if p >= limit:
                raise DecodeError(short if hops == 0 else "pointer_loop")
            if hops and p != pos:
                known = memo.get(p)
                if known is not None:
                    break
                run_marks.append((p, len(texts), length, hops))
            c = buf[p]
            if c == 0 or c > 63:
                break
            q = p + c + 1
            length += c + 1
            if length > 255:
                raise DecodeError("name_too_long")
            if q >= limit:
                raise DecodeError(short if hops == 0 else "pointer_loop")
            texts.append(_run_text(buf[p:q]))
            p = q
        if known is not None:
            # The labels continue into a name decoded before: contiguous, no pointer.
            run_end = known[1]
            if run_end > limit:
                raise DecodeError("pointer_loop")
        elif c == 0:
            run_end = p + 1
        elif c < 192:
            raise DecodeError("label_too_long")
        else:
            if p + 1 >= limit:
                raise DecodeError(short if hops == 0 else "pointer_loop")
            run_end = p + 2
            target = ((c & 0x3F) << 8) | buf[p + 1]
            if target >= start:
                raise DecodeError("pointer_forward" if target > p else "pointer_loop")
            hops += 1
            if hops > _MAX_HOPS:
                raise DecodeError("pointer_loop")
            known = memo.get(target)
            if known is not None and known[1] > start:
                raise DecodeError("pointer_loop")
        if after < 0:
            after = run_end
        for r_off, r_texts, r_length, r_hops in run_marks:
            marks.append((r_off, r_texts, r_length, r_hops, run_end))
        if known is not None:
            k_text, _, k_length, k_hops = known
            hops += k_hops
            if hops > _MAX_HOPS:
                raise DecodeError("pointer_loop")
            length += k_length - 1
            if length > 255:
                raise DecodeError("name_too_long")
            if k_text != ".":
                tail = k_text
            break
        if c == 0:
            break
        limit = start
        start = pos = target
    text = "".join(texts) + tail or "."
    memo[name_start] = (text, after, length, hops)
    for r_off, r_texts, r_length, r_hops, r_end in marks:
        memo[r_off] = ("".join(texts[r_texts:]) + tail or ".", r_end, length - r_length + 1, hops - r_hops)
    return text, after


_HEADER: Final = struct.Struct("!HHHHHH")
_QTAIL: Final = struct.Struct("!HH")
_RRHDR: Final = struct.Struct("!HHIH")
_U16PAIR: Final = struct.Struct("!HH")

# Address text by rdata bytes, shared by all messages (cluster addresses repeat a lot);
# bounded by clearing when full.
_A_TEXT: dict[bytes, str] = {}
_AAAA_TEXT: dict[bytes, str] = {}
_ADDR_TEXT_MAX: Final = 16384


def _a_text(raw: bytes) -> str:
    if len(_A_TEXT) >= _ADDR_TEXT_MAX:
        _A_TEXT.clear()
    text = _A_TEXT[raw] = socket.inet_ntoa(raw)
    return text


def _aaaa_text(raw: bytes) -> str:
    if len(_AAAA_TEXT) >= _ADDR_TEXT_MAX:
        _AAAA_TEXT.clear()
    text = _AAAA_TEXT[raw] = socket.inet_ntop(socket.AF_INET6, raw)
    return text


_new_message: Final = object.__new__

# (aa, tc, rd, ra, ad, cd) by header flag bits 4-10.
_FLAG_BITS: Final[tuple[tuple[bool, bool, bool, bool, bool, bool], ...]] = tuple(
    (bool(b & 0x40), bool(b & 0x20), bool(b & 0x10), bool(b & 0x08), bool(b & 0x02), bool(b & 0x01))
    for b in range(128)
)


def decode(buf: bytes, *, partial: bool = False) -> Message:
    """Decode one DNS message; raise ``DecodeError`` (and nothing else) when it is malformed.

    ``partial=True`` is for a capture cut short of the message (snap length): an RR that
    runs past the end of ``buf`` ends the decode instead of failing it, and the Message
    holds the RRs before it (``answers``, ``addresses``, ``cnames``, ``min_ttl`` and the
    EDNS fields describe only what was captured; the counts stay the header's). The
    header and the question must still be complete.

    Every RR is validated here; the answer-section fields (``answers``, ``addresses``,
    ``cnames``, ``min_ttl``) are built on their first access (see ``Message``).
    """
    if type(buf) is not bytes:
        buf = bytes(buf)  # the lazy fields read it later: it must not change
    n = len(buf)
    if n < 12:
        raise DecodeError("short_header")
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(buf, 0)
    memo: _Memo = {}
    pos = 12
    question: Question | None = None
    if qdcount:
        # The first question's name, when it is a run of labels already seen (in any
        # message): the bytes up to the first zero byte are a key of _RUN_TEXT only if they
        # are a complete chain of labels (1-63 octets each, 254 octets at most), and then
        # reading the name from offset 12 follows that very chain and ends on that zero
        # byte, the root: the same text, end and memo entry as _read_name's.
        end = buf.find(0, 12)
        qname = _RUN_TEXT.get(buf[12:end]) if end > 12 else None
        if qname is not None:
            pos = end + 1
            memo[12] = (qname, pos, pos - 12, 0)
        else:
            qname, pos = _read_name(buf, 12, n, memo, "short_question")
        if pos + 4 > n:
            raise DecodeError("short_question")
        qtype, qclass = _QTAIL.unpack_from(buf, pos)
        pos += 4
        question = Question(qname, qtype, qclass)
        for _ in range(qdcount - 1):
            pos = _read_name(buf, pos, n, memo, "short_question")[1] + 4
            if pos > n:
                raise DecodeError("short_question")
    an_pos = pos  # where the lazy fields start reading

    rcode = flags & 0xF
    edns_udp_size: int | None = None
    edns_do = False
    ar_start = ancount + nscount
    total = ar_start + arcount
    try:
        for i in range(total):
            # Owner name: the common shapes inline (a pointer to a name already decoded, the root).
            if pos >= n:
                raise DecodeError("short_rr")
            c = buf[pos]
            if c >= 0xC0 and pos + 1 < n:
                target = ((c & 0x3F) << 8) | buf[pos + 1]
                known = memo.get(target)
                if known is not None and target < pos and known[1] <= pos and known[3] < _MAX_HOPS:
                    name = known[0]
                    pos += 2
                else:
                    name, pos = _read_name(buf, pos, n, memo, "short_rr")
            elif c == 0:
                name = "."
                pos += 1
            else:
                name, pos = _read_name(buf, pos, n, memo, "short_rr")
            rdata = pos + 10
            if rdata > n:
                raise DecodeError("short_rr")
            rtype, rclass, ttl, rdlength = _RRHDR.unpack_from(buf, pos)
            pos = rdata + rdlength
            if pos > n:
                raise DecodeError("short_rr")
            if rtype == 1:
                if rdlength != 4 and rclass == 1:
                    raise DecodeError("bad_rdlength")
            elif rtype == 28:
                if rdlength != 16 and rclass == 1:
                    raise DecodeError("bad_rdlength")
            elif rtype == 5:
                if _read_name(buf, rdata, pos, memo, "bad_rdlength")[1] != pos:
                    raise DecodeError("bad_rdlength")
            elif rtype == 41:
                if i < ar_start or edns_udp_size is not None or name != ".":
                    raise DecodeError("bad_opt")
                o = rdata
                while o < pos:
                    if o + 4 > pos:
                        raise DecodeError("bad_opt")
                    o += 4 + _U16PAIR.unpack_from(buf, o)[1]
                if o != pos:
                    raise DecodeError("bad_opt")
                edns_udp_size = rclass
                edns_do = bool(ttl & 0x8000)
                rcode |= (ttl >> 24) << 4
            elif rtype == 250 and (i != total - 1 or i < ar_start or rclass != 255):
                raise DecodeError("bad_tsig")
    except DecodeError as exc:
        if not partial or exc.reason != "short_rr":
            raise

    m = _new_message(Message)
    m.id = ident
    m.qr = flags >= 0x8000
    m.opcode = (flags >> 11) & 0xF
    m.aa, m.tc, m.rd, m.ra, m.ad, m.cd = _FLAG_BITS[(flags >> 4) & 0x7F]
    m.rcode = rcode
    m.qdcount = qdcount
    m.ancount = ancount
    m.nscount = nscount
    m.arcount = arcount
    m.question = question
    m.edns_udp_size = edns_udp_size
    m.edns_do = edns_do
    lazy: Any = m  # the private slots, not declared to mypy
    if ancount:
        lazy._wire = buf
        lazy._an_pos = an_pos
        lazy._an_memo = memo
    else:
        lazy._wire = None
        lazy._answers = []
        lazy._addresses = []
        lazy._cnames = []
        lazy._min_ttl = None
    return m


def _build_answer_section(m: Any) -> None:
    """Fill ``answers``, ``addresses``, ``cnames`` and ``min_ttl`` of a Message from ``decode``.

    Walks the answer section again, taking every name from the memo ``decode`` left:
    ``_read_name`` stores what it returns under the offset it read from and the memo never
    overwrites an entry, so the owner and CNAME names are those ``decode`` read, with no
    name decoding here. It cannot fail: ``decode`` validated these bytes; the one RR it
    may stop at is the one ``decode(partial=True)`` stopped at, which ends the list here as
    it did there (its checks are repeated in the same order).
    """
    buf = m._wire
    assert buf is not None
    pos: int = m._an_pos
    memo: _Memo = m._an_memo
    answers: list[Answer] = []
    addresses: list[str] = []
    cnames: list[str] = []
    min_ttl: int | None = None
    n = len(buf)
    try:
        for _ in range(m.ancount):
            if pos >= n:
                break
            # The owner: a pointer to a memoised name (decode accepted it, so it followed the
            # pointer inline or read that very name), the root, or a name read by _read_name
            # (memoised at its offset); else the owner a partial decode stopped at.
            c = buf[pos]
            if c >= 0xC0 and pos + 1 < n and (known := memo.get(((c & 0x3F) << 8) | buf[pos + 1])):
                name = known[0]
                pos += 2
            elif c == 0:
                name = "."
                pos += 1
            elif known := memo.get(pos):
                name, pos = known[0], known[1]
            else:
                name, pos = _read_name(buf, pos, n, memo, "short_rr")
            rdata = pos + 10
            if rdata > n:
                break
            rtype, rclass, ttl, rdlength = _RRHDR.unpack_from(buf, pos)
            pos = rdata + rdlength
            if pos > n:
                break
            data = ""
            if rclass == 1 and rtype == 1:
                raw = buf[rdata:pos]
                data = _A_TEXT.get(raw) or _a_text(raw)
                addresses.append(data)
            elif rclass == 1 and rtype == 28:
                raw = buf[rdata:pos]
                data = _AAAA_TEXT.get(raw) or _aaaa_text(raw)
                addresses.append(data)
            elif rtype == 5:
                known = memo.get(rdata)
                data = known[0] if known is not None else _read_name(buf, rdata, pos, memo, "bad_rdlength")[0]
                cnames.append(data)
            if ttl > 0x7FFFFFFF:
                ttl = 0
            if min_ttl is None or ttl < min_ttl:
                min_ttl = ttl
            answers.append(Answer(name, rtype, rclass, ttl, data))
    except DecodeError:
        pass  # unreachable (see above): never raise from a field access
    m._answers = answers
    m._addresses = addresses
    m._cnames = cnames
    m._min_ttl = min_ttl
    m._wire = None
    del m._an_pos, m._an_memo
