"""``dnsotel trace`` output: rows built from real DNS messages, columns, JSON, the sink."""

from __future__ import annotations

import io
import json
import time
from typing import Any, ClassVar

import dns.rcode
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.dns import Question, decode
from exporter.enrich import PlainEnricher, Workload, raw_endpoint
from exporter.output import (
    DEFAULT_FIELDS,
    FIELDS,
    FieldError,
    OutputError,
    Row,
    TraceSink,
    build_row,
    describe_fields,
    make_trace_sink,
    parse_fields,
    parse_filters,
)
from exporter.output.fields import format_duration, format_timestamp
from exporter.output.table import ColumnsFormatter, JsonFormatter, shorten
from exporter.records import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    PACKET_HOST,
    PACKET_OUTGOING,
    ROLE_CLIENT,
    DnsPacket,
    Exchange,
    PacketMeta,
)
from tests import dnsmsg
from tests.fixtures.output.make_golden import GOLDEN
from tests.fixtures.output.make_golden import HERE as GOLDEN_DIR

SEC = 1_000_000_000
MS = 1_000_000
T0 = 1_725_030_921 * SEC + 137_120_000  # 2024-08-30T15:15:21.137120000Z
NETNS = 4026532481
POD_IP, POD_PORT = "10.244.1.7", 50037
KUBE_DNS = "10.96.0.10"
NAME = "inspektor-gadget.io."


# -- real messages: dnspython builds the wire, our decoder reads it -------------------------


def query_wire(name: str = NAME, qtype: str = "A", id: int = 0xC3B5) -> bytes:
    return dnsmsg.wire(dnsmsg.query(name, qtype, id))


def response_wire(
    name: str = NAME,
    qtype: str = "A",
    id: int = 0xC3B5,
    *,
    addresses: tuple[str, ...] = (),
    cname: str | None = None,
    rcode: int = dns.rcode.NOERROR,
    ttl: int = 300,
    tc: bool = False,
) -> bytes:
    q = dnsmsg.query(name, qtype, id)
    return dnsmsg.wire(dnsmsg.response(q, rcode, addresses, cname=cname, ttl=ttl, cname_ttl=ttl * 2, tc=tc))


def query_pkt(ts: int = T0, **kw: Any) -> DnsPacket:
    transport = kw.pop("transport", IPPROTO_UDP)
    m = dnsmsg.meta(ts, NETNS, PACKET_OUTGOING, (POD_IP, POD_PORT), (KUBE_DNS, 53), transport, ifindex=3)
    return dnsmsg.packet(m, query_wire(**kw))


def response_pkt(ts: int = T0 + 28 * MS, **kw: Any) -> DnsPacket:
    transport = kw.pop("transport", IPPROTO_UDP)
    m = dnsmsg.meta(ts, NETNS, PACKET_HOST, (KUBE_DNS, 53), (POD_IP, POD_PORT), transport, ifindex=3)
    return dnsmsg.packet(m, response_wire(**kw))


class K8sEnricher:
    """What the Kubernetes enricher answers for a pod talking to kube-dns."""

    names: ClassVar[dict[str, str]] = {POD_IP: "p/demo/mypod", KUBE_DNS: "s/kube-system/kube-dns"}

    def endpoint(self, addr: str, port: int) -> str:
        base = self.names.get(addr)
        return f"{base}:{port}" if base else raw_endpoint(addr, port)

    def workload(self, netns: int) -> Workload:
        if netns == NETNS:
            return Workload(node="minikube-docker", namespace="demo", pod="mypod", container="mypod")
        return Workload(node="minikube-docker")


ENRICH = K8sEnricher()
ADDRS = ("172.67.16.63", "104.21.11.16")


def query_row(**kw: Any) -> Row:
    return build_row(query_pkt(**kw), ENRICH)


def response_row(latency: int = 28 * MS, **kw: Any) -> Row:
    kw.setdefault("addresses", ADDRS)
    return build_row(response_pkt(T0 + latency, **kw), ENRICH, latency_ns=latency)


def unanswered_row(timeout: int = 5 * SEC) -> Row:
    return build_row(query_pkt(), ENRICH, latency_ns=timeout, unanswered=True)


def unmatched_row(**kw: Any) -> Row:
    return build_row(response_pkt(**kw), ENRICH)


def texts(row: Row, *names: str) -> dict[str, str]:
    return {n: FIELDS[n].text(row) for n in names}


# -- rows -----------------------------------------------------------------------------------


def test_query_row_fields() -> None:
    row = query_row()
    assert texts(row, "timestamp", "netns_id", "ifindex", "src", "dst", "nameserver", "id", "qr") == {
        "timestamp": "2024-08-30T15:15:21.137120000Z",
        "netns_id": str(NETNS),
        "ifindex": "3",
        "src": "p/demo/mypod:50037",
        "dst": "s/kube-system/kube-dns:53",
        "nameserver": "s/kube-system/kube-dns:53",
        "id": "c3b5",
        "qr": "Q",
    }
    assert texts(row, "qtype", "name", "rcode", "latency_ns", "num_answers", "addresses", "ttl") == {
        "qtype": "A",
        "name": NAME,
        "rcode": "",
        "latency_ns": "",
        "num_answers": "0",
        "addresses": "",
        "ttl": "",
    }
    assert texts(row, "tc", "rd", "ra", "pkt_type", "transport", "unanswered") == {
        "tc": "false",
        "rd": "true",
        "ra": "false",
        "pkt_type": "OUTGOING",
        "transport": "udp",
        "unanswered": "false",
    }
    assert texts(row, "k8s.node", "k8s.namespace", "k8s.podname", "k8s.containername") == {
        "k8s.node": "minikube-docker",
        "k8s.namespace": "demo",
        "k8s.podname": "mypod",
        "k8s.containername": "mypod",
    }
    assert (FIELDS["id_raw"].raw(row), FIELDS["qtype_raw"].raw(row), FIELDS["rcode_raw"].raw(row)) == (
        0xC3B5,
        1,
        None,
    )
    assert FIELDS["timestamp_raw"].raw(row) == T0
    assert FIELDS["pkt_type_raw"].raw(row) == PACKET_OUTGOING
    assert FIELDS["qr_raw"].raw(row) is False


def test_response_row_has_latency_answers_and_nameserver_is_its_source() -> None:
    row = response_row(latency=28 * MS + 123_456, cname="cdn.example.net.", qtype="A")
    assert texts(row, "qr", "rcode", "latency_ns", "num_answers", "addresses", "cnames", "ttl") == {
        "qr": "R",
        "rcode": "NOERROR",
        "latency_ns": "28.12ms",
        "num_answers": "3",
        "addresses": "172.67.16.63,104.21.11.16",
        "cnames": "cdn.example.net.",
        "ttl": "300",
    }
    assert texts(row, "src", "dst", "nameserver", "nameserver.addr", "nameserver.port", "pkt_type", "ra") == {
        "src": "s/kube-system/kube-dns:53",
        "dst": "p/demo/mypod:50037",
        "nameserver": "s/kube-system/kube-dns:53",
        "nameserver.addr": KUBE_DNS,
        "nameserver.port": "53",
        "pkt_type": "HOST",
        "ra": "true",
    }
    assert FIELDS["latency_ns_raw"].raw(row) == 28 * MS + 123_456
    assert FIELDS["rcode_raw"].raw(row) == 0
    assert FIELDS["qr_raw"].raw(row) is True


def test_unanswered_row_is_the_query_with_the_timeout() -> None:
    row = unanswered_row()
    assert texts(row, "timestamp", "qr", "rcode", "latency_ns", "latency_ns_raw", "unanswered", "id") == {
        "timestamp": "2024-08-30T15:15:21.137120000Z",  # the query's time
        "qr": "Q",
        "rcode": "",
        "latency_ns": ">5s",
        "latency_ns_raw": str(5 * SEC),
        "unanswered": "true",
        "id": "c3b5",
    }


def test_unmatched_response_has_no_latency() -> None:
    row = unmatched_row(rcode=dns.rcode.NXDOMAIN)
    assert texts(row, "qr", "rcode", "rcode_raw", "latency_ns", "latency_ns_raw", "unanswered") == {
        "qr": "R",
        "rcode": "NXDOMAIN",
        "rcode_raw": "3",
        "latency_ns": "",
        "latency_ns_raw": "",
        "unanswered": "false",
    }


def test_aaaa_tcp_truncated_and_ipv6_endpoints() -> None:
    msg = decode(response_wire(qtype="AAAA", addresses=("2606:4700::6810:b10",), tc=True))
    pkt = DnsPacket(PacketMeta(T0, 7, 1, PACKET_HOST, IPPROTO_TCP, "fd00::a", 53, "fd00::7", 4242, True), msg)
    row = build_row(pkt, PlainEnricher(node="n1"), latency_ns=999)
    assert texts(row, "src", "dst", "qtype", "qtype_raw", "transport", "tc", "addresses", "latency_ns") == {
        "src": "r/[fd00::a]:53",
        "dst": "r/[fd00::7]:4242",
        "qtype": "AAAA",
        "qtype_raw": "28",
        "transport": "tcp",
        "tc": "true",
        "addresses": "2606:4700::6810:b10",
        "latency_ns": "999ns",
    }
    assert texts(row, "k8s.node", "k8s.namespace", "k8s.podname") == {
        "k8s.node": "n1",
        "k8s.namespace": "",
        "k8s.podname": "",
    }


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0ns"),
        (999, "999ns"),
        (1_000, "1.00µs"),
        (12_345, "12.35µs"),
        (999_994, "999.99µs"),
        (5 * MS, "5.00ms"),
        (28_123_456, "28.12ms"),
        (SEC, "1s"),
        (1_500 * MS, "1.5s"),
        (90 * SEC, "1m30s"),
        (3600 * SEC, "1h0m0s"),
        (SEC + 1, "1.000000001s"),
    ],
)
def test_latency_is_formatted_like_trace_dns(ns: int, text: str) -> None:
    assert format_duration(ns) == text


def test_timestamp_format() -> None:
    assert format_timestamp(0) == "1970-01-01T00:00:00.000000000Z"
    assert format_timestamp(T0 + 5) == "2024-08-30T15:15:21.137120005Z"


# -- columns -----------------------------------------------------------------------------------


def test_default_columns_header_and_rows_are_aligned() -> None:
    fmt = ColumnsFormatter(parse_fields(None))
    lines = [fmt.header(), fmt.format(query_row()), fmt.format(response_row())]
    assert lines == [
        "K8S.NAMESPACE    K8S.PODNAME                    SRC                            "
        "DST                            QR QTYPE  NAME                           RCODE    "
        "LATENCY_NS ADDRESSES",
        "demo             mypod                          p/demo/mypod:50037             "
        "s/kube-system/kube-dns:53      Q  A      inspektor-gadget.io.",
        "demo             mypod                          s/kube-system/kube-dns:53      "
        "p/demo/mypod:50037             R  A      inspektor-gadget.io.           NOERROR  "
        "   28.00ms 172.67.16.63,104.21.11.…",
    ]
    # every column starts at the same offset on every line
    starts = [lines[0].index(f" {h}") + 1 for h in ("SRC", "QR", "NAME ", "RCODE", "ADDRESSES")]
    assert [lines[2][s - 1] for s in starts] == [" "] * len(starts)
    assert lines[2][starts[1]] == "R"
    assert lines[2][starts[3] : starts[3] + 7] == "NOERROR"


def test_columns_truncate_with_ellipsis_at_end_or_middle() -> None:
    long_name = "a-very-long-label-that-goes-on.and-on.example.com."
    row = build_row(query_pkt(name=long_name), ENRICH)
    fmt = ColumnsFormatter(parse_fields("name,id,qr"))
    line = fmt.format(row)
    assert line == "a-very-long-label-that-goes-o… c3b5 Q"
    assert len(line.split(" ")[0]) == FIELDS["name"].width == 30

    class LongPod(K8sEnricher):
        def workload(self, netns: int) -> Workload:
            return Workload(namespace="kube-system", pod="coredns-7db6d8ff4d-r7hwl-extra-long-name")

    row = build_row(query_pkt(), LongPod())
    line = ColumnsFormatter(parse_fields("k8s.podname,qr")).format(row)
    assert line == "coredns-7db6d8f…xtra-long-name Q"


def test_shorten_rules() -> None:
    from exporter.output.fields import Ellipsis

    assert shorten("abcdefgh", 8) == "abcdefgh"
    assert shorten("abcdefgh", 5) == "abcd…"
    assert shorten("abcdefgh", 5, Ellipsis.MIDDLE) == "ab…gh"
    assert shorten("abcdefgh", 6, Ellipsis.MIDDLE) == "abc…gh"
    assert shorten("abcdefgh", 1) == "…"


def test_control_characters_in_names_are_escaped_in_columns() -> None:
    class Evil(K8sEnricher):
        def workload(self, netns: int) -> Workload:
            return Workload(pod="x\x1b[2Jy")

    line = ColumnsFormatter(parse_fields("k8s.podname,qr")).format(build_row(query_pkt(), Evil()))
    assert "\x1b" not in line
    assert line.startswith("x\\x1b[2Jy")


def test_every_header_fits_its_column() -> None:
    for f in FIELDS.values():
        assert len(f.header) <= f.width, f.name


def test_fields_choose_columns_case_insensitively() -> None:
    fmt = ColumnsFormatter(parse_fields("k8s.podName, qr,latency_ns"))
    assert fmt.header() == "K8S.PODNAME                    QR LATENCY_NS"
    assert fmt.format(response_row()) == "mypod                          R     28.00ms"


@pytest.mark.parametrize("spec", ["qr,bogus", "name,,qr", "latency"])
def test_unknown_or_empty_field_name_is_an_error_naming_it(spec: str) -> None:
    with pytest.raises(FieldError) as e:
        parse_fields(spec)
    bad = next(n for n in spec.split(",") if n not in FIELDS)
    assert repr(bad) in str(e.value) or (bad == "" and "empty field name" in str(e.value))


# -- JSON --------------------------------------------------------------------------------------


def test_json_has_every_field_with_json_types() -> None:
    obj = json.loads(JsonFormatter().format(response_row(cname="cdn.example.net.")))
    assert list(obj) == list(FIELDS)
    assert obj["latency_ns"] == "28.00ms"
    assert obj["latency_ns_raw"] == 28 * MS
    assert obj["addresses"] == list(ADDRS)
    assert obj["cnames"] == ["cdn.example.net."]
    assert obj["num_answers"] == 3
    assert obj["ttl"] == 300
    assert obj["id"] == "c3b5" and obj["id_raw"] == 0xC3B5
    assert obj["qr"] == "R" and obj["qr_raw"] is True
    assert obj["rcode"] == "NOERROR" and obj["rcode_raw"] == 0
    assert obj["tc"] is False and obj["ra"] is True and obj["unanswered"] is False
    assert obj["timestamp_raw"] == T0 + 28 * MS
    assert obj["netns_id"] == NETNS
    assert obj["k8s.podname"] == "mypod"
    assert obj["src.port"] == 53 and obj["dst.addr"] == POD_IP


def test_json_absent_values_are_null_and_lists_empty() -> None:
    obj = json.loads(JsonFormatter().format(query_row()))
    assert obj["rcode"] == "" and obj["rcode_raw"] is None
    assert obj["latency_ns"] == "" and obj["latency_ns_raw"] is None
    assert obj["addresses"] == [] and obj["cnames"] == [] and obj["ttl"] is None
    obj = json.loads(JsonFormatter().format(unanswered_row()))
    assert obj["unanswered"] is True and obj["latency_ns_raw"] == 5 * SEC and obj["qr"] == "Q"


def test_json_selected_fields_bring_their_raw_twin() -> None:
    line = JsonFormatter(parse_fields("name,latency_ns,addresses")).format(response_row())
    assert "\n" not in line
    assert json.loads(line) == {
        "name": NAME,
        "latency_ns": "28.00ms",
        "latency_ns_raw": 28 * MS,
        "addresses": list(ADDRS),
    }


# -- the sink ----------------------------------------------------------------------------------


class CountingStream(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def drive(sink: TraceSink) -> None:
    """A query, its response, an unanswered query and an unmatched response."""
    q = query_pkt()
    r = response_pkt(T0 + 28 * MS, addresses=ADDRS)
    sink.on_query(q, ROLE_CLIENT, False)
    sink.on_response(Exchange(q, r, ROLE_CLIENT))
    q2 = query_pkt(T0 + SEC, id=0x0E01, name="upstream.test.")
    sink.on_query(q2, ROLE_CLIENT, False)
    sink.on_unanswered(Exchange(q2, None, ROLE_CLIENT, timeout_ns=5 * SEC))
    sink.on_unmatched(response_pkt(T0 + 7 * SEC, id=0x0BAD, rcode=dns.rcode.SERVFAIL), ROLE_CLIENT)


def test_sink_writes_one_flushed_line_per_event() -> None:
    out = CountingStream()
    sink = make_trace_sink(out, fields="id,qr,name,rcode,latency_ns,unanswered", enricher=ENRICH)
    drive(sink)
    assert out.getvalue().splitlines() == [
        "ID   QR NAME                           RCODE    LATENCY_NS UNANSWERED",
        "c3b5 Q  inspektor-gadget.io.                               false",
        "c3b5 R  inspektor-gadget.io.           NOERROR     28.00ms false",
        "0e01 Q  upstream.test.                                     false",
        "0e01 Q  upstream.test.                                 >5s true",
        "0bad R  inspektor-gadget.io.           SERVFAIL            false",
    ]
    lines = out.getvalue().splitlines()
    flag_col = lines[0].index(" UNANSWERED") + 1
    assert all(line[flag_col:] in ("true", "false") for line in lines[1:])
    latency_end = lines[0].index(" LATENCY_NS ") + 1 + len("LATENCY_NS")
    assert lines[2][:latency_end].endswith("28.00ms") and lines[4][:latency_end].endswith(">5s")
    assert sink.rows_written == 5 and sink.rows_filtered == 0
    assert out.flushes == 6  # header + every row, nothing waits in a buffer


def test_sink_filters_and_counts() -> None:
    out = io.StringIO()
    sink = TraceSink(
        out, parse_fields("id,qr,rcode"), "columns", parse_filters(["qr==R"]), ENRICH, header=False
    )
    drive(sink)
    assert out.getvalue().splitlines() == ["c3b5 R  NOERROR", "0bad R  SERVFAIL"]
    assert (sink.rows_written, sink.rows_filtered) == (2, 3)


def test_sink_json_lines() -> None:
    out = io.StringIO()
    sink = make_trace_sink(out, fmt="json", filters=["unanswered==true"], enricher=ENRICH)
    drive(sink)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["id"] == "0e01" and obj["name"] == "upstream.test." and obj["latency_ns"] == ">5s"
    assert set(obj) == set(FIELDS)


def test_sink_default_enricher_and_default_columns() -> None:
    out = io.StringIO()
    sink = TraceSink(out)
    sink.on_query(query_pkt(), ROLE_CLIENT, False)
    header, line = out.getvalue().splitlines()
    assert header.split() == [FIELDS[n].header for n in DEFAULT_FIELDS]
    assert f"r/{POD_IP}:{POD_PORT}" in line and f"r/{KUBE_DNS}:53" in line


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"fields": "name,nope"}, "'nope'"),
        ({"filters": ["nope==1"]}, "'nope'"),
        ({"filters": ["name~("]}, "'name~('"),
        ({"fmt": "yaml"}, "'yaml'"),
    ],
)
def test_make_trace_sink_rejects_bad_options_before_writing(kw: dict[str, Any], needle: str) -> None:
    out = io.StringIO()
    with pytest.raises(OutputError) as e:
        make_trace_sink(out, **kw)
    assert needle in str(e.value)
    assert out.getvalue() == ""


def test_describe_fields_lists_every_field() -> None:
    text = describe_fields()
    for name in FIELDS:
        assert f"\n{name} " in text


def test_rows_from_the_real_pairer() -> None:
    from exporter.pairing import Pairer

    out = io.StringIO()
    sink = make_trace_sink(out, fields="id,qr,rcode,latency_ns,unanswered", enricher=ENRICH)
    pairer = Pairer(sink, timeout_ns=5 * SEC)
    pairer.feed(query_pkt(T0))
    pairer.feed(response_pkt(T0 + 28 * MS, addresses=ADDRS))
    pairer.feed(query_pkt(T0 + SEC, id=0x0E01))
    pairer.feed(response_pkt(T0 + 2 * SEC, id=0x0BAD, rcode=dns.rcode.SERVFAIL))
    pairer.advance(T0 + 7 * SEC)
    assert out.getvalue().splitlines() == [
        "ID   QR RCODE    LATENCY_NS UNANSWERED",
        "c3b5 Q                      false",
        "c3b5 R  NOERROR     28.00ms false",
        "0e01 Q                      false",
        "0bad R  SERVFAIL            false",
        "0e01 Q                  >5s true",
    ]


# -- byte-identical to the formatters before the fast paths -------------------------------------
#
# tests/fixtures/output/*.txt were written by the simple formatters before the compiled fast
# paths existed (61 rows with hostile names and boundary values, 50 field selections, 982
# filter rules and their error messages); the compiled formatters must print the same bytes.


@pytest.mark.parametrize("golden", sorted(GOLDEN))
def test_output_is_byte_identical_to_the_golden_files(golden: str) -> None:
    want = (GOLDEN_DIR / golden).read_text(encoding="utf-8")
    got = GOLDEN[golden]()
    assert got.split("\n") == want.split("\n")


# Anything an enricher, the decoder or a hostile packet could put in a string: every code
# point but surrogates (which no str from UTF-8 or inet_ntop holds), weighted to the
# characters that need escaping in JSON or on a terminal.
_NASTY = st.sampled_from(list('"\\\x00\x01\x1b\x1f\x7f\n\r\t\x85\u00a0\u2028\u2029\u200b…é😀漢,.:/{}'))
TEXT = st.text(st.one_of(_NASTY, st.characters(exclude_categories=["Cs"])), max_size=40)
INT16 = st.integers(0, 0xFFFF)


Case = tuple[DnsPacket, Any, int | None, bool]  # a packet, its enricher, latency, unanswered


@st.composite
def packets(draw: st.DrawFn) -> Case:
    from tests.fixtures.output.cases import Enr, Msg

    qr = draw(st.booleans())
    name = draw(st.one_of(st.none(), TEXT))
    question = None if name is None else Question(name, draw(st.one_of(INT16, st.sampled_from([1, 28]))), 1)
    msg = Msg(
        draw(INT16),
        qr,
        draw(st.booleans()),
        draw(st.booleans()),
        draw(st.booleans()),
        draw(st.integers(0, 4095)),
        draw(INT16),
        question,
        draw(st.lists(TEXT, max_size=3)),
        draw(st.lists(TEXT, max_size=3)),
        draw(st.one_of(st.none(), st.integers(0, 2**31))),
    )
    src, dst = draw(TEXT), draw(TEXT)
    ports = st.integers(0, 65535)
    pm = PacketMeta(
        draw(st.integers(-(10**18), 2 * 10**18)),
        draw(st.integers(0, 2**32)),
        draw(st.integers(0, 2**31)),
        draw(st.integers(0, 300)),
        draw(st.sampled_from([IPPROTO_UDP, IPPROTO_TCP, 0, 132])),
        src,
        draw(ports),
        dst,
        draw(ports),
        False,
    )
    names = draw(st.dictionaries(st.sampled_from([src, dst]), TEXT, max_size=2))
    wl = Workload(draw(TEXT), draw(TEXT), draw(TEXT), draw(TEXT))
    latency = draw(st.one_of(st.none(), st.integers(0, 10**15)))
    unanswered = latency is not None and draw(st.booleans())
    return DnsPacket(pm, msg), Enr(names, wl), latency, unanswered  # type: ignore[arg-type]


SELECTIONS = [None, ",".join(DEFAULT_FIELDS), ",".join(FIELDS), "name,src,latency_ns,addresses,id"]


FILTER_EXPRS = [
    "qr==R",
    "qr!=Q",
    "qtype==A",
    "qtype==AAAA",
    "qtype!=A",
    "qtype~^A",
    "rcode==NOERROR",
    "rcode==NameError",
    "rcode==",
    "rcode~^NX|SERV",
    "id==00ff",
    "id~^0",
    "pkt_type==OUTGOING",
    "transport==udp",
    "latency_ns>5ms",
    "latency_ns_raw<=1000",
    "latency_ns_raw==",
    "ttl>=300",
    "rcode_raw>0",
    "qtype_raw==28",
    "unanswered==true",
    "tc==false",
    "name~\\.",
    "src~:5",
    "addresses!=",
    "k8s.podname==",
    "qr==R,rcode!=NOERROR",
]


_SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


# lone surrogates included: json.dumps passes them through (ensure_ascii=False), so must we
@given(st.text(st.one_of(_NASTY, st.characters(), _SURROGATE)))
def test_json_strings_are_what_json_dumps_writes(s: str) -> None:
    from exporter.output.table import _json_list

    line = JsonFormatter(parse_fields("name")).format(_named(s))
    assert line == json.dumps({"name": s}, ensure_ascii=False, separators=(",", ":"))
    assert json.loads(line) == {"name": s}
    assert _json_list([s, s]) == json.dumps([s, s], ensure_ascii=False, separators=(",", ":"))


def _named(name: str) -> Row:
    from tests.fixtures.output.cases import msg, pkt

    return build_row(pkt(msg(qr=False, name=name)), ENRICH)


def test_code_names_are_plain_text() -> None:
    """Fields marked ``plain`` skip escaping: every name they can show must need none."""
    from json.encoder import encode_basestring

    from exporter.dns.codes import RCODE_NAMES, TYPE_NAMES
    from exporter.records import PKT_TYPE_NAMES, TRANSPORT_NAMES

    for table in (TYPE_NAMES, RCODE_NAMES, PKT_TYPE_NAMES, TRANSPORT_NAMES):
        for v in table.values():
            assert v.isprintable() and encode_basestring(v) == f'"{v}"', v
    assert {f.name for f in FIELDS.values() if f.plain} >= {"qtype", "rcode", "pkt_type", "transport", "id"}
    assert not any(FIELDS[n].plain for n in ("name", "src", "dst", "k8s.podname", "addresses", "src.addr"))


@given(st.integers(-(10**19), 10**20))
def test_timestamp_matches_strftime(ts: int) -> None:
    secs, frac = divmod(ts, SEC)
    try:
        want = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"
    except (OverflowError, OSError, ValueError):
        return
    assert format_timestamp(ts) == want
    assert format_timestamp(ts) == want  # from the cache this time


def test_timestamp_cache_stays_small() -> None:
    from exporter.output import fields

    for s in range(1000):
        assert format_timestamp(T0 + s * SEC + 7).endswith(".137120007Z")
    assert len(fields._ts_prefixes) <= fields._TS_CACHE_MAX


class CountingEnricher(K8sEnricher):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def endpoint(self, addr: str, port: int) -> str:
        self.calls.append("endpoint")
        return super().endpoint(addr, port)

    def workload(self, netns: int) -> Workload:
        self.calls.append("workload")
        return super().workload(netns)


def test_rows_compute_only_what_is_read() -> None:
    enr = CountingEnricher()
    row = build_row(response_pkt(addresses=ADDRS), enr, latency_ns=5)
    assert enr.calls == []
    assert JsonFormatter(parse_fields("name,qr,latency_ns")).format(row).startswith('{"name":')
    assert enr.calls == []  # no endpoint, no workload
    assert (row.src, row.src, row.nameserver) == ("s/kube-system/kube-dns:53",) * 3
    assert row.workload.pod == row.workload.pod == "mypod"
    assert enr.calls == ["endpoint", "workload"]  # once each, however often read
    JsonFormatter().format(row)
    assert enr.calls == ["endpoint", "workload", "endpoint"]  # dst, for the first time


def test_filtered_out_rows_are_never_formatted() -> None:
    enr = CountingEnricher()
    sink = make_trace_sink(io.StringIO(), fmt="json", filters=["qr==R"], enricher=enr)
    sink.on_query(query_pkt(), ROLE_CLIENT, False)
    assert enr.calls == [] and sink.rows_filtered == 1


# -- flushing: every line on a terminal; held up to 100 ms on a pipe once the loop flushes idle --


class Tty(CountingStream):
    def isatty(self) -> bool:
        return True


def test_terminal_flushes_every_line_even_after_idle_flushes() -> None:
    out = Tty()
    sink = make_trace_sink(out, fmt="json", enricher=ENRICH)
    sink.flush_pending()
    drive(sink)
    assert out.flushes == 5


def test_pipe_flushes_every_line_until_the_loop_flushes_idle() -> None:
    out = CountingStream()
    sink = make_trace_sink(out, fmt="json", enricher=ENRICH)
    drive(sink)
    assert out.flushes == 5  # nobody promised to flush it later: every line, as before


def test_pipe_holds_rows_at_most_the_hold_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.output import sink as sink_mod

    now = [100.0]
    monkeypatch.setattr(sink_mod, "_monotonic", lambda: now[0])
    out = CountingStream()
    sink = make_trace_sink(out, fmt="json", enricher=ENRICH)
    sink.flush_pending()  # the capture loop's idle hook: arms holding
    assert out.flushes == 0  # nothing held, nothing flushed
    drive(sink)
    assert out.flushes == 0 and len(out.getvalue().splitlines()) == 5  # written, not flushed yet
    sink.flush_pending()
    assert out.flushes == 0  # rows came since the last poll: busy, hold on
    sink.flush_pending()
    assert out.flushes == 1  # a poll with no new row: idle, flush
    sink.flush_pending()
    assert out.flushes == 1  # nothing held
    sink.on_query(query_pkt(), ROLE_CLIENT, False)
    now[0] += sink_mod.FLUSH_HOLD_S * 1.01
    sink.flush_pending()
    assert out.flushes == 2  # still busy, but the row waited long enough
    sink.on_query(query_pkt(), ROLE_CLIENT, False)
    now[0] += sink_mod.FLUSH_HOLD_S * 1.01  # a busy trace: the row 100 ms after the last flush flushes
    sink.on_query(query_pkt(), ROLE_CLIENT, False)
    assert out.flushes == 3
    sink.on_query(query_pkt(), ROLE_CLIENT, False)
    sink.close()
    assert out.flushes == 4
    sink.close()
    assert out.flushes == 4


def test_flush_false_leaves_it_to_the_stream() -> None:
    out = CountingStream()
    sink = TraceSink(out, parse_fields("id"), enricher=ENRICH, flush=False)
    drive(sink)
    sink.flush_pending()
    sink.flush_pending()
    assert out.flushes == 0 and len(out.getvalue().splitlines()) == 6
