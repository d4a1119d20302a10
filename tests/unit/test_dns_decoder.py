"""The DNS wire decoder against dnspython, the independent oracle.

Every message is built (or parsed) by dnspython and the decoder's fields are compared
with what dnspython reads from the same bytes. Two oracle settings:

* ``oracle(wire)``: plain ``dns.message.from_wire`` with ``ignore_trailing=True`` (we
  ignore trailing bytes, see the decoder's docstring), ``keyring=False`` (never verify a
  TSIG) and ``one_rr_per_rrset=True`` (keep every RR, in wire order).
* ``oracle(wire, lenient=True)``: the same, with dnspython told to treat the rdata we do
  not interpret as opaque (every type but A/AAAA in class IN, CNAME and OPT becomes
  ``GenericRdata``, every EDNS option a ``GenericOption``) and to read UPDATE messages
  like queries. This encodes the decoder's documented divergences and nothing else: on
  any input, the decoder and the lenient oracle must both reject, or both accept and agree.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import pickle
import struct
from collections.abc import Iterator
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.OPT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset
import dns.tsigkeyring
import dns.update
import pytest

from exporter.dns import (
    DECODE_REASONS,
    DecodeError,
    Message,
    class_name,
    decode,
    opcode_name,
    rcode_name,
    type_name,
)

# ---------------------------------------------------------------------------------------------
# The oracle


@contextlib.contextmanager
def lenient_dnspython() -> Iterator[None]:
    """dnspython reading only what the decoder interprets; everything else opaque."""
    rdata_mod: Any = dns.rdata
    edns_mod: Any = dns.edns
    message_mod: Any = dns.message
    saved_classes = dict(rdata_mod._rdata_classes)
    saved_dynamic = rdata_mod._dynamic_load_allowed
    saved_options = dict(edns_mod._type_to_class)
    saved_factory = message_mod._message_factory_from_opcode
    IN, ANY = dns.rdataclass.IN, dns.rdataclass.ANY
    rdata_mod._rdata_classes.clear()
    rdata_mod._rdata_classes.update(
        {
            (IN, dns.rdatatype.A): dns.rdtypes.IN.A.A,
            (IN, dns.rdatatype.AAAA): dns.rdtypes.IN.AAAA.AAAA,
            (ANY, dns.rdatatype.CNAME): dns.rdtypes.ANY.CNAME.CNAME,
            (ANY, dns.rdatatype.OPT): dns.rdtypes.ANY.OPT.OPT,
        }
    )
    rdata_mod._dynamic_load_allowed = False
    edns_mod._type_to_class.clear()
    message_mod._message_factory_from_opcode = lambda opcode: dns.message.QueryMessage
    try:
        yield
    finally:
        rdata_mod._rdata_classes.clear()
        rdata_mod._rdata_classes.update(saved_classes)
        rdata_mod._dynamic_load_allowed = saved_dynamic
        edns_mod._type_to_class.clear()
        edns_mod._type_to_class.update(saved_options)
        message_mod._message_factory_from_opcode = saved_factory


def _name_text(name: dns.name.Name) -> str:
    return str(name.to_text()).lower()


def oracle(wire: bytes, lenient: bool = False) -> dict[str, Any] | None:
    """What dnspython reads from ``wire``, in the decoder's fields; None when it rejects."""
    ctx = lenient_dnspython() if lenient else contextlib.nullcontext()
    with ctx:
        try:
            m = dns.message.from_wire(wire, keyring=False, ignore_trailing=True, one_rr_per_rrset=True)
        except Exception:
            return None
        return _fields_of(m)


def _fields_of(m: dns.message.Message) -> dict[str, Any]:
    flags = int(m.flags)
    answers = []
    addresses = []
    cnames = []
    for rrset in m.answer:
        assert len(rrset) == 1
        rd = rrset[0]
        data = ""
        if rrset.rdclass == dns.rdataclass.IN and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            data = rd.address
            addresses.append(data)
        elif rrset.rdtype == dns.rdatatype.CNAME:
            data = _name_text(rd.target)
            cnames.append(data)
        answers.append((_name_text(rrset.name), int(rrset.rdtype), int(rrset.rdclass), rrset.ttl, data))
    question = None
    if m.question:
        q = m.question[0]
        question = (_name_text(q.name), int(q.rdtype), int(q.rdclass))
    return {
        "id": m.id,
        "qr": bool(flags & dns.flags.QR),
        "opcode": int(m.opcode()),
        "aa": bool(flags & dns.flags.AA),
        "tc": bool(flags & dns.flags.TC),
        "rd": bool(flags & dns.flags.RD),
        "ra": bool(flags & dns.flags.RA),
        "ad": bool(flags & dns.flags.AD),
        "cd": bool(flags & dns.flags.CD),
        "rcode": int(m.rcode()),
        "qdcount": len(m.question),
        "ancount": len(m.answer),
        "nscount": len(m.authority),
        "arcount": len(m.additional) + (m.opt is not None) + (m.tsig is not None),
        "question": question,
        "answers": answers,
        "addresses": addresses,
        "cnames": cnames,
        "min_ttl": min((a[3] for a in answers), default=None),
        "edns_udp_size": m.payload if m.opt is not None else None,
        "edns_do": bool(m.ednsflags & dns.flags.DO),
    }


def fields(msg: Message) -> dict[str, Any]:
    """The decoder's Message in the oracle's shape."""
    q = msg.question
    return {
        "id": msg.id,
        "qr": msg.qr,
        "opcode": msg.opcode,
        "aa": msg.aa,
        "tc": msg.tc,
        "rd": msg.rd,
        "ra": msg.ra,
        "ad": msg.ad,
        "cd": msg.cd,
        "rcode": msg.rcode,
        "qdcount": msg.qdcount,
        "ancount": msg.ancount,
        "nscount": msg.nscount,
        "arcount": msg.arcount,
        "question": None if q is None else (q.name, q.qtype, q.qclass),
        "answers": [(a.name, a.rtype, a.rclass, a.ttl, a.data) for a in msg.answers],
        "addresses": msg.addresses,
        "cnames": msg.cnames,
        "min_ttl": msg.min_ttl,
        "edns_udp_size": msg.edns_udp_size,
        "edns_do": msg.edns_do,
    }


def ours(wire: bytes) -> dict[str, Any] | str:
    """The decoder's fields, or the DecodeError reason (any other exception propagates)."""
    try:
        return fields(decode(wire))
    except DecodeError as e:
        assert e.reason in DECODE_REASONS, e.reason
        return e.reason


def assert_agrees(wire: bytes, lenient: bool = True) -> None:
    """Both reject, or both accept and agree field by field."""
    got = ours(wire)
    want = oracle(wire, lenient=lenient)
    if want is None:
        assert isinstance(got, str), f"dnspython rejects, we accept: {wire.hex()}"
    else:
        assert got == want, wire.hex()


# ---------------------------------------------------------------------------------------------
# Messages built with dnspython


def rr(name: str, ttl: int, rdtype: str, *values: str, rdclass: str = "IN") -> dns.rrset.RRset:
    return dns.rrset.from_text(name, ttl, rdclass, rdtype, *values)


def query(
    name: str | dns.name.Name = "www.example.com.", rdtype: str = "A", **kw: Any
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)
    q.id = 0xBEEF
    return q


def built_messages() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    q = query("my-svc.my-namespace.svc.cluster.local.", "A", use_edns=0, payload=1232, want_dnssec=True)
    out["query_edns_do"] = q.to_wire()
    out["query_no_edns"] = query("example.org.", "AAAA").to_wire()
    q.flags |= dns.flags.CD | dns.flags.AD
    out["query_cd_ad"] = q.to_wire()

    r = dns.message.make_response(query("api.example.com.", use_edns=0))
    r.flags |= dns.flags.RA | dns.flags.AA
    r.answer.append(rr("api.example.com.", 300, "A", "10.0.0.1", "192.168.255.254"))
    out["two_a"] = r.to_wire()

    r = dns.message.make_response(query("www.example.com.", "AAAA", use_edns=0, payload=4096))
    r.use_edns(0, 0, 4096)
    r.answer.append(rr("www.example.com.", 300, "CNAME", "www.example.com.edgekey.net."))
    r.answer.append(rr("www.example.com.edgekey.net.", 60, "CNAME", "e1234.b.akamaiedge.net."))
    r.answer.append(
        rr("e1234.b.akamaiedge.net.", 20, "AAAA", "2600:1406:3a00:21::173e:2e65", "::ffff:1.2.3.4")
    )
    out["aaaa_cname_chain"] = r.to_wire()

    r = dns.message.make_response(query("example.com.", "MX"))
    r.answer.append(rr("example.com.", 3600, "MX", "10 mail.example.com.", "20 mx2.example.net."))
    r.additional.append(rr("mail.example.com.", 3600, "A", "192.0.2.25"))
    out["mx_with_glue"] = r.to_wire()

    r = dns.message.make_response(query("example.com.", "TXT"))
    r.answer.append(rr("example.com.", 120, "TXT", '"v=spf1 -all"', '"a\\"b" "c;d"'))
    out["txt"] = r.to_wire()

    r = dns.message.make_response(query("_http._tcp.my-svc.default.svc.cluster.local.", "SRV"))
    r.answer.append(
        rr(
            "_http._tcp.my-svc.default.svc.cluster.local.",
            5,
            "SRV",
            "0 100 80 my-svc.default.svc.cluster.local.",
        )
    )
    r.additional.append(rr("my-svc.default.svc.cluster.local.", 5, "A", "10.96.0.10"))
    out["srv"] = r.to_wire()

    r = dns.message.make_response(query("nope.default.svc.cluster.local.", use_edns=0))
    r.set_rcode(dns.rcode.NXDOMAIN)
    r.authority.append(
        rr("cluster.local.", 30, "SOA", "ns.dns.cluster.local. hostmaster.cluster.local. 1 2 3 4 30")
    )
    out["nxdomain_soa"] = r.to_wire()

    r = dns.message.make_response(query("example.com.", use_edns=0))
    r.set_rcode(dns.rcode.BADVERS)
    out["badvers"] = r.to_wire()

    r = dns.message.make_response(query("example.com.", use_edns=0))
    r.set_rcode(3841)  # private use, 12 bits
    out["ext_rcode_private"] = r.to_wire()

    r = dns.message.make_response(query("WwW.ExAmPlE.CoM."))
    r.answer.append(rr("WWW.EXAMPLE.COM.", 1, "A", "127.0.0.1"))
    out["uppercase"] = r.to_wire()

    weird = dns.name.Name(
        [b"a.b", b"sp ace", b'q"t', b"(p)", b"s;c", b"at@", b"d$", b"b\\s", b"\x00\x7f\xff\x80", b"ok", b""]
    )
    r = dns.message.make_response(query(weird, "TXT"))
    r.answer.append(dns.rrset.from_rdata(weird, 7, dns.rdata.from_text("IN", "CNAME", "x.example.")))
    out["special_bytes"] = r.to_wire()

    out["root_query"] = query(dns.name.root, "NS").to_wire()

    formerr = dns.message.Message(id=0x0101)
    formerr.flags = dns.flags.QR | dns.flags.RA
    formerr.set_rcode(dns.rcode.FORMERR)
    out["empty_question_formerr"] = formerr.to_wire()

    r = dns.message.make_response(query("example.com.", "HTTPS", use_edns=0))
    r.answer.append(rr("example.com.", 300, "HTTPS", '1 . alpn="h2,h3"'))
    out["https"] = r.to_wire()

    q = query(
        "example.com.",
        use_edns=0,
        options=[dns.edns.ECSOption("10.1.2.0", 24), dns.edns.GenericOption(10, b"12345678")],
    )
    out["edns_options"] = q.to_wire()

    r = dns.message.make_response(query("example.com."))
    r.answer.append(rr("example.com.", 1, "A", "chaos.example. 1234", rdclass="CH"))
    out["class_ch_a"] = r.to_wire()

    upd = dns.update.UpdateMessage("example.com.")
    upd.add("host.example.com.", 300, "A", "10.0.0.9")
    upd.delete("old.example.com.")
    out["update"] = upd.to_wire()

    keyring = dns.tsigkeyring.from_text({"key.": "MTIzNDU2Nzg5MDEyMzQ1Ng=="})
    signed = query("example.com.")
    signed.use_tsig(keyring, keyname="key.")
    out["tsig_signed"] = signed.to_wire()
    return out


BUILT = built_messages()


@pytest.mark.parametrize("label", sorted(BUILT))
def test_matches_dnspython(label: str) -> None:
    wire = BUILT[label]
    want = oracle(wire)
    assert want is not None
    assert ours(wire) == want


def test_spot_values() -> None:
    """A few fields checked by hand, in case dnspython and we share a misreading."""
    m = decode(BUILT["aaaa_cname_chain"])
    assert m.question is not None and m.question.name == "www.example.com." and m.question.qtype == 28
    assert m.cnames == ["www.example.com.edgekey.net.", "e1234.b.akamaiedge.net."]
    assert sorted(m.addresses) == [
        "2600:1406:3a00:21::173e:2e65",
        "::ffff:1.2.3.4",
    ]  # rrset order is dnspython's
    assert m.min_ttl == 20 and m.edns_udp_size == 4096 and not m.edns_do
    m = decode(BUILT["badvers"])
    assert m.rcode == 16 and rcode_name(m.rcode) == "BADVERS"
    m = decode(BUILT["query_edns_do"])
    assert m.edns_do and m.edns_udp_size == 1232 and not m.qr and m.rd
    m = decode(BUILT["empty_question_formerr"])
    assert m.question is None and m.rcode == 1 and m.answers == [] and m.min_ttl is None
    assert decode(BUILT["root_query"]).question == decode(BUILT["root_query"]).question
    q = decode(BUILT["root_query"]).question
    assert q is not None and q.name == "."
    q = decode(BUILT["special_bytes"]).question
    assert q is not None
    assert q.name == 'a\\.b.sp\\032ace.q\\"t.\\(p\\).s\\;c.at\\@.d\\$.b\\\\s.\\000\\127\\255\\128.ok.'


def test_ttl_top_bit_reads_as_zero() -> None:
    r = dns.message.make_response(query())
    r.answer.append(rr("www.example.com.", 1, "A", "1.2.3.4"))
    wire = bytearray(r.to_wire())
    ttl_at = wire.rindex(b"\x00\x01\x00\x01\x00\x00\x00\x01") + 4
    wire[ttl_at : ttl_at + 4] = struct.pack("!I", 0x80000001)
    m = decode(bytes(wire))
    assert m.answers[0].ttl == 0 and m.min_ttl == 0
    assert ours(bytes(wire)) == oracle(bytes(wire))


# ---------------------------------------------------------------------------------------------
# Hand-made wire: compression shapes and malformed names

HDR = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0)


def header(qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, flags: int = 0x8180) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qd, an, ns, ar)


def labels(*parts: bytes) -> bytes:
    return b"".join(bytes([len(p)]) + p for p in parts) + b"\x00"


def ptr(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


QTAIL = b"\x00\x01\x00\x01"


def a_rr(owner: bytes, addr: bytes = b"\x0a\x00\x00\x01", ttl: int = 60) -> bytes:
    return owner + struct.pack("!HHIH", 1, 1, ttl, len(addr)) + addr


def test_pointer_into_middle_of_name_and_chains() -> None:
    qname = labels(b"www", b"example", b"com")  # at 12; "example" at 16, "com" at 24
    body = qname + QTAIL
    rr1 = a_rr(ptr(16))  # example.com.
    rr2_owner_at = 12 + len(body) + len(rr1)
    rr2 = a_rr(b"\x03foo" + ptr(24))  # foo.com.
    rr3 = a_rr(b"\x03bar" + ptr(rr2_owner_at))  # bar.foo.com. (pointer to a pointer chain)
    cname_rdata = b"\x01x" + ptr(16)
    rr4 = ptr(12) + struct.pack("!HHIH", 5, 1, 9, len(cname_rdata)) + cname_rdata
    wire = header(an=4) + body + rr1 + rr2 + rr3 + rr4
    m = decode(wire)
    assert [a.name for a in m.answers] == ["example.com.", "foo.com.", "bar.foo.com.", "www.example.com."]
    assert m.cnames == ["x.example.com."]
    assert ours(wire) == oracle(wire)


def test_uncompressed_names_everywhere() -> None:
    qname = labels(b"Www", b"Example", b"COM")
    wire = header(an=2) + qname + QTAIL + a_rr(qname) + a_rr(labels(b"a", b"b"), b"\x01\x02\x03\x04")
    m = decode(wire)
    assert [a.name for a in m.answers] == ["www.example.com.", "a.b."]
    assert ours(wire) == oracle(wire)


def _chain(hops: int) -> bytes:
    """A message whose single answer's owner follows ``hops`` pointers to reach "x."."""
    # question "x." at 12; then hops-1 bare pointers laid out in the question tail area
    # cannot be placed in a question, so put them in rdata of a NULL RR in the answer.
    qname = labels(b"x")  # 12..14
    body = header(an=2) + qname + QTAIL  # ends at 19
    # NULL RR owned by the root, whose rdata holds a pointer chain: p1 -> 12, p2 -> p1, ...
    rdata_at = len(body) + 1 + 10
    chain = b""
    prev = 12
    for i in range(hops - 1):
        chain += ptr(prev)
        prev = rdata_at + 2 * i
    null_rr = b"\x00" + struct.pack("!HHIH", 10, 1, 0, len(chain)) + chain
    return body + null_rr + a_rr(ptr(prev))


@pytest.mark.parametrize("hops", [1, 2, 16, 17, 30])
def test_pointer_chain_length_limit(hops: int) -> None:
    wire = _chain(hops)
    got = ours(wire)
    if hops <= 16:
        assert isinstance(got, dict) and got["answers"][1][0] == "x."
    else:
        assert got == "pointer_loop"
    assert_agrees(wire, lenient=False)


MALFORMED: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "short_header"),
    "eleven_bytes": (HDR[:11], "short_header"),
    "question_missing": (header(), "short_question"),
    "question_name_cut": (header() + b"\x03ww", "short_question"),
    "question_no_terminator": (header() + b"\x03www", "short_question"),
    "question_tail_cut": (header() + labels(b"a") + b"\x00\x01\x00", "short_question"),
    "pointer_half": (header() + b"\xc0", "short_question"),
    "forward_pointer": (header() + ptr(20) + QTAIL + labels(b"a"), "pointer_forward"),
    "self_pointer": (header() + ptr(12) + QTAIL, "pointer_loop"),
    "pointer_into_own_labels": (header() + b"\x01a" + ptr(12) + QTAIL, "pointer_loop"),
    # 19 -> 15 -> 19: the qtype field holds a pointer back to the answer's owner. A cycle
    # is always closed by a pointer that points ahead of itself (or by an overlap).
    "two_pointer_cycle": (
        header(an=1) + b"\x01a\x00" + ptr(19) + b"\x00\x01" + a_rr(ptr(15)),
        "pointer_forward",
    ),
    "label_64": (header() + bytes([64]) + b"a" * 64 + b"\x00" + QTAIL, "label_too_long"),
    "label_type_0x80": (header() + b"\x80\x00" + QTAIL, "label_too_long"),
    "name_256_uncompressed": (header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00" + QTAIL, "name_too_long"),
    "rr_missing": (header(an=1) + labels(b"a") + QTAIL, "short_rr"),
    "rr_header_cut": (header(an=1) + labels(b"a") + QTAIL + ptr(12) + b"\x00\x01\x00", "short_rr"),
    "rdlength_past_end": (
        header(an=1) + labels(b"a") + QTAIL + ptr(12) + struct.pack("!HHIH", 1, 1, 0, 9) + b"\x01" * 4,
        "short_rr",
    ),
    "a_5_bytes": (
        header(an=1) + labels(b"a") + QTAIL + a_rr(ptr(12), b"\x01\x02\x03\x04\x05"),
        "bad_rdlength",
    ),
    "a_3_bytes": (header(an=1) + labels(b"a") + QTAIL + a_rr(ptr(12), b"\x01\x02\x03"), "bad_rdlength"),
    "aaaa_15_bytes": (
        header(an=1) + labels(b"a") + QTAIL + ptr(12) + struct.pack("!HHIH", 28, 1, 0, 15) + b"\x00" * 15,
        "bad_rdlength",
    ),
    "a_in_additional_bad": (header(ar=1) + labels(b"a") + QTAIL + a_rr(ptr(12), b"\x01"), "bad_rdlength"),
    "cname_rdata_longer_than_name": (
        header(an=1)
        + labels(b"a")
        + QTAIL
        + ptr(12)
        + struct.pack("!HHIH", 5, 1, 0, 4)
        + ptr(12)
        + b"\x00\x00",
        "bad_rdlength",
    ),
    "cname_name_past_rdata": (
        header(an=1) + labels(b"a") + QTAIL + ptr(12) + struct.pack("!HHIH", 5, 1, 0, 2) + b"\x01b\x00",
        "bad_rdlength",
    ),
    "opt_in_answer": (
        header(an=1) + labels(b"a") + QTAIL + b"\x00" + struct.pack("!HHIH", 41, 512, 0, 0),
        "bad_opt",
    ),
    "two_opts": (
        header(ar=2) + labels(b"a") + QTAIL + (b"\x00" + struct.pack("!HHIH", 41, 512, 0, 0)) * 2,
        "bad_opt",
    ),
    "opt_not_root": (
        header(ar=1) + labels(b"a") + QTAIL + ptr(12) + struct.pack("!HHIH", 41, 512, 0, 0),
        "bad_opt",
    ),
    "opt_option_overruns": (
        header(ar=1) + labels(b"a") + QTAIL + b"\x00" + struct.pack("!HHIHHH", 41, 512, 0, 6, 10, 8) + b"12",
        "bad_opt",
    ),
    "opt_option_cut": (
        header(ar=1) + labels(b"a") + QTAIL + b"\x00" + struct.pack("!HHIH", 41, 512, 0, 2) + b"\x00\x0a",
        "bad_opt",
    ),
    "tsig_not_last": (
        header(ar=2) + labels(b"a") + QTAIL + b"\x00" + struct.pack("!HHIH", 250, 255, 0, 0) + a_rr(ptr(12)),
        "bad_tsig",
    ),
    "tsig_in_answer": (
        header(an=1) + labels(b"a") + QTAIL + b"\x00" + struct.pack("!HHIH", 250, 255, 0, 0),
        "bad_tsig",
    ),
}

# A name that reaches 256 octets only through compression: 3 x 63-octet labels (193 octets
# with root) in the question, then an answer adding one more 63-octet label in front.
_LONG = (b"\x3f" + b"b" * 63) * 3 + b"\x00"
MALFORMED["name_256_via_pointer"] = (
    header(an=1) + _LONG + QTAIL + a_rr(b"\x3f" + b"c" * 63 + ptr(12)),
    "name_too_long",
)
# ...and the longest legal one: 255 octets (63+1)*3 + (61+1) + 1.
_OK255 = header(an=1) + _LONG + QTAIL + a_rr(b"\x3d" + b"c" * 61 + ptr(12))


@pytest.mark.parametrize("label", sorted(MALFORMED))
def test_malformed_rejected_like_dnspython(label: str) -> None:
    wire, reason = MALFORMED[label]
    assert ours(wire) == reason
    assert oracle(wire) is None, "dnspython accepts it"


def test_longest_name_accepted() -> None:
    m = decode(_OK255)
    assert len(m.answers[0].name) == 254  # 255 wire octets: 254 characters of text incl. dots
    assert ours(_OK255) == oracle(_OK255)


def test_pointer_target_running_into_the_pointing_name() -> None:
    # Question "a." at 12; answer owner at 19 = "\x01z" + pointer to 13 (the "a" byte): the
    # target's labels are read from 13 and walk into offset 19, the very name that points.
    base = header(an=1) + b"\x01a\x00" + QTAIL
    assert len(base) == 19
    wire = base + a_rr(b"\x01\x01" + ptr(13))
    assert oracle(wire) is None
    assert isinstance(ours(wire), str)


# ---------------------------------------------------------------------------------------------
# Deliberate divergences from plain dnspython: tested as our behaviour, explicitly.


def test_trailing_bytes_are_ignored() -> None:
    wire = BUILT["two_a"] + b"\x00junk"
    with pytest.raises(dns.message.TrailingJunk):
        dns.message.from_wire(wire)
    assert ours(wire) == oracle(BUILT["two_a"])


def test_uninterpreted_rdata_is_skipped_by_rdlength() -> None:
    # An MX whose exchange name is cut short: dnspython rejects, we skip it (data "").
    mx_rdata = b"\x00\x0a\x04mail"  # preference 10, then a label with no terminator
    wire = header(an=2) + labels(b"a") + QTAIL
    wire += ptr(12) + struct.pack("!HHIH", 15, 1, 60, len(mx_rdata)) + mx_rdata + a_rr(ptr(12))
    assert oracle(wire) is None
    m = decode(wire)
    assert [(a.rtype, a.data) for a in m.answers] == [(15, ""), (1, "10.0.0.1")]
    assert ours(wire) == oracle(wire, lenient=True)


def test_edns_option_payload_not_validated() -> None:
    bad_ecs = struct.pack("!HHBB", 7, 0, 0, 0)  # ECS with unknown family 7
    opt = (
        b"\x00"
        + struct.pack("!HHIH", 41, 1232, 0x8000, 4 + len(bad_ecs))
        + struct.pack("!HH", 8, len(bad_ecs))
        + bad_ecs
    )
    wire = header(ar=1, flags=0x0100) + labels(b"a") + QTAIL + opt
    assert oracle(wire) is None
    m = decode(wire)
    assert m.edns_udp_size == 1232 and m.edns_do
    assert ours(wire) == oracle(wire, lenient=True)


def test_update_messages_decoded_like_queries() -> None:
    # An UPDATE whose prerequisite carries an A RR before any zone: dnspython's update
    # reader rejects it (no zone); we report the header and RRs as they are.
    wire = header(qd=0, an=1, flags=0x2800) + a_rr(labels(b"h", b"example"))
    assert oracle(wire) is None
    m = decode(wire)
    assert opcode_name(m.opcode) == "UPDATE" and m.addresses == ["10.0.0.1"]
    assert ours(wire) == oracle(wire, lenient=True)


def test_tsig_is_not_verified() -> None:
    with pytest.raises(dns.message.UnknownTSIGKey):
        dns.message.from_wire(BUILT["tsig_signed"])
    m = decode(BUILT["tsig_signed"])
    assert m.arcount == 1 and m.question is not None


# ---------------------------------------------------------------------------------------------
# Truncation at every offset and every single bit flip of real messages.

REAL = ["two_a", "aaaa_cname_chain", "nxdomain_soa", "query_edns_do", "mx_with_glue", "special_bytes", "srv"]


@pytest.mark.parametrize("label", REAL)
def test_truncations(label: str) -> None:
    wire = BUILT[label]
    for cut in range(len(wire)):
        got = ours(wire[:cut])
        assert isinstance(got, str), f"accepted a {cut}-byte prefix of {len(wire)}"
        assert oracle(wire[:cut], lenient=True) is None


@pytest.mark.parametrize("label", REAL)
def test_single_bit_flips(label: str) -> None:
    wire = BUILT[label]
    for i in range(len(wire) * 8):
        flipped = bytearray(wire)
        flipped[i >> 3] ^= 0x80 >> (i & 7)
        assert_agrees(bytes(flipped))


# ---------------------------------------------------------------------------------------------
# Mnemonics

# IANA assignments that dnspython 2.9 has no enum member for.
IANA_TYPES_NOT_IN_DNSPYTHON = {
    31: "EID",
    32: "NIMLOC",
    34: "ATMA",
    40: "SINK",
    57: "RKEY",
    58: "TALINK",
    100: "UINFO",
    101: "UID",
    102: "GID",
    259: "DOA",
    263: "CLA",
    264: "IPN",
}


def test_type_names_cover_dnspython_and_iana() -> None:
    for t in dns.rdatatype.RdataType:
        if t == 0:
            continue  # reserved: dnspython says TYPE0, we say "0" like every unassigned value
        assert type_name(int(t)) == dns.rdatatype.to_text(t), int(t)
    for t, name in IANA_TYPES_NOT_IN_DNSPYTHON.items():
        assert type_name(t) == name
    assert (type_name(64), type_name(65), type_name(32768), type_name(32769)) == (
        "SVCB",
        "HTTPS",
        "TA",
        "DLV",
    )
    for unassigned in (0, 54, 69, 98, 110, 127, 129, 248, 265, 32767, 32770, 65280, 65534, 65535):
        assert type_name(unassigned) == str(unassigned)


def test_rcode_names() -> None:
    for r in range(24):
        if 12 <= r <= 15:
            assert rcode_name(r) == str(r)
        else:
            assert rcode_name(r) == dns.rcode.to_text(dns.rcode.Rcode(r)), r
    assert rcode_name(16) == "BADVERS"
    assert rcode_name(11) == "DSOTYPENI"
    assert rcode_name(24) == "24" and rcode_name(4095) == "4095"


def test_class_and_opcode_names() -> None:
    assert [class_name(c) for c in (1, 3, 4, 254, 255)] == ["IN", "CH", "HS", "NONE", "ANY"]
    assert class_name(2) == "2" and class_name(0) == "0"
    for o in dns.opcode.Opcode:
        assert opcode_name(int(o)) == dns.opcode.to_text(o)
    assert opcode_name(6) == "DSO" and opcode_name(3) == "3" and opcode_name(15) == "15"


def test_reasons_are_a_small_fixed_set() -> None:
    raised = {reason for _, reason in MALFORMED.values()} | {"pointer_loop"}
    assert raised == DECODE_REASONS
    with pytest.raises(DecodeError) as info:
        decode(b"\x00")
    assert info.value.reason == "short_header"


# ---------------------------------------------------------------------------------------------
# partial=True: a capture cut short of the message (snap length)


@pytest.mark.parametrize("label", ["two_a", "aaaa_cname_chain", "mx_with_glue", "nxdomain_soa"])
def test_partial_decode_of_truncated_captures(label: str) -> None:
    wire = BUILT[label]
    full = oracle(wire)
    assert full is not None
    question_end = 12 + len(dns.name.from_text(full["question"][0]).to_wire()) + 4 if full["question"] else 12
    seen = 0
    for cut in range(len(wire) + 1):
        if cut < question_end:
            assert isinstance(ours(wire[:cut]), str)
            with pytest.raises(DecodeError):
                decode(wire[:cut], partial=True)
            continue
        m = decode(wire[:cut], partial=True)
        got = fields(m)
        for key in ("id", "qr", "opcode", "question", "ancount"):
            assert got[key] == full[key]
        assert got["rcode"] & 0xF == full["rcode"] & 0xF  # the extended bits live in the OPT RR
        # What was captured is a prefix of the answer section, growing with the cut.
        assert got["answers"] == full["answers"][: len(got["answers"])]
        assert len(got["answers"]) >= seen
        seen = len(got["answers"])
    assert fields(decode(wire, partial=True)) == full


def test_partial_still_rejects_malformed() -> None:
    for label in ("self_pointer", "a_5_bytes", "label_64"):
        wire, reason = MALFORMED[label]
        with pytest.raises(DecodeError) as info:
            decode(wire, partial=True)
        assert info.value.reason == reason


# ---------------------------------------------------------------------------------------------
# The answer-section fields are built on first access: the Message behaves as if eager.

LAZY = ("answers", "addresses", "cnames", "min_ttl")


def lazy_fields(m: Message) -> tuple[Any, ...]:
    return tuple(getattr(m, name) for name in LAZY)


@pytest.mark.parametrize("label", sorted(BUILT))
def test_lazy_fields_in_any_order_and_as_a_dataclass(label: str) -> None:
    wire = BUILT[label]
    want = lazy_fields(decode(wire))
    for first in LAZY:  # whichever field is read first builds all four the same way
        m = decode(wire)
        getattr(m, first)
        assert lazy_fields(m) == want
    m = decode(wire)
    eager = dataclasses.replace(m)  # the constructor: every field given
    assert eager == m and m == eager and repr(m) == repr(eager)
    assert dataclasses.asdict(decode(wire)) == dataclasses.asdict(eager)
    assert [f.name for f in dataclasses.fields(Message)] == [
        *("id", "qr", "opcode", "aa", "tc", "rd", "ra", "ad", "cd", "rcode"),
        *("qdcount", "ancount", "nscount", "arcount", "question"),
        *LAZY,
        *("edns_udp_size", "edns_do"),
    ]
    assert pickle.loads(pickle.dumps(decode(wire))) == m
    assert copy.copy(decode(wire)) == m and copy.deepcopy(decode(wire)) == m


def test_setting_a_lazy_field_before_reading_it() -> None:
    m = decode(BUILT["aaaa_cname_chain"])
    m.addresses = ["192.0.2.1"]
    assert m.addresses == ["192.0.2.1"]
    assert m.cnames == ["www.example.com.edgekey.net.", "e1234.b.akamaiedge.net."] and m.min_ttl == 20
    assert len(m.answers) == 4


def test_lazy_fields_read_the_bytes_decode_saw() -> None:
    wire = bytearray(BUILT["two_a"])
    m = decode(wire)  # type: ignore[arg-type]  # a bytearray is copied, not kept
    wire[-20:] = b"\xff" * 20
    assert m.addresses == decode(BUILT["two_a"]).addresses
    assert sorted(m.addresses) == ["10.0.0.1", "192.168.255.254"]


def test_pointer_into_the_middle_of_names_read_before() -> None:
    # Owners and CNAME targets pointing at label starts inside names without pointers (the
    # question, a CNAME target), and at a byte that is not a label start (legal: the bytes
    # there are read as labels).
    qname = labels(b"www", b"example", b"com")  # at 12; "example" at 16, "com" at 24
    cname_at = 12 + len(qname) + 4 + 2 + 10  # rdata of the first answer
    cname_rdata = labels(b"edge", b"cdn", b"net")  # "cdn" at cname_at + 5
    rr1 = ptr(12) + struct.pack("!HHIH", 5, 1, 30, len(cname_rdata)) + cname_rdata
    rr2_rdata = b"\x02e7" + ptr(cname_at + 5)  # e7.cdn.net.
    rr2 = ptr(cname_at) + struct.pack("!HHIH", 5, 1, 20, len(rr2_rdata)) + rr2_rdata
    rr3 = a_rr(ptr(cname_at + 9))  # net.
    soa = ptr(16) + struct.pack("!HHIH", 6, 1, 30, 0)
    wire = header(an=3, ns=1) + qname + QTAIL + rr1 + rr2 + rr3 + soa
    m = decode(wire)
    assert [a.name for a in m.answers] == ["www.example.com.", "edge.cdn.net.", "net."]
    assert m.cnames == ["edge.cdn.net.", "e7.cdn.net."]
    assert_agrees(wire)  # lenient: dnspython rejects an empty SOA rdata, we skip it
    # "\x03x\x01y": the byte at 14 starts no label of the question, yet reads as "y.".
    wire = header(an=1) + labels(b"x\x01y") + QTAIL + a_rr(ptr(14))
    assert [a.name for a in decode(wire).answers] == ["y."]
    assert ours(wire) == oracle(wire)
