"""The ``--filter`` language: every operator, escapes, numeric ``_raw`` fields, errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.output import FIELDS, FilterError, parse_filters
from exporter.output.filter import parse_duration, split_escaped
from tests.unit.test_output import (
    MS,
    NETNS,
    SEC,
    query_row,
    response_row,
    unanswered_row,
    unmatched_row,
)

NX = 3  # NXDOMAIN

QUERY = query_row()
RESPONSE = response_row(latency=28 * MS)  # NOERROR, 2 addresses, ttl 300
SLOW = response_row(latency=1_500 * MS, addresses=("10.0.0.1",))
UNANSWERED = unanswered_row(5 * SEC)
NXDOMAIN = unmatched_row(rcode=NX)
ROWS = {"query": QUERY, "response": RESPONSE, "slow": SLOW, "unanswered": UNANSWERED, "nxdomain": NXDOMAIN}


def matching(*exprs: str) -> set[str]:
    f = parse_filters(list(exprs))
    return {name for name, row in ROWS.items() if f.match(row)}


@pytest.mark.parametrize(
    ("exprs", "expected"),
    [
        # == / = / != on the displayed text
        (["qr==R"], {"response", "slow", "nxdomain"}),
        (["qr=Q"], {"query", "unanswered"}),
        (["qr!=Q"], {"response", "slow", "nxdomain"}),
        (["name==inspektor-gadget.io."], set(ROWS)),
        (["name==inspektor-gadget.io"], set()),  # exact: the trailing dot is part of the name
        (["rcode==NOERROR"], {"response", "slow"}),
        (["rcode==NXDOMAIN"], {"nxdomain"}),
        (["rcode==NameError"], {"nxdomain"}),  # trace_dns's name for it
        (["rcode==Success"], {"response", "slow"}),
        (["rcode!=NOERROR"], {"query", "unanswered", "nxdomain"}),  # queries have no rcode
        (["rcode=="], {"query", "unanswered"}),  # empty value: rows without an rcode
        (["addresses!="], {"response", "slow"}),
        (["id==c3b5"], set(ROWS)),
        (["k8s.podName==mypod"], set(ROWS)),  # field names are case-insensitive, like trace_dns
        (["latency_ns==28.00ms"], {"response"}),  # == on a display field compares its text
        # ~ / !~ : Python regex, searched anywhere in the displayed text
        (["name~gadget"], set(ROWS)),
        (["name~^gadget"], set()),
        (["rcode~^NX|SERV"], {"nxdomain"}),
        (["rcode!~^NO"], {"query", "unanswered", "nxdomain"}),
        (["latency_ns~s$"], {"response", "slow", "unanswered"}),
        (["num_answers~^[23]$"], {"response"}),
        (["id~^c\\db5$"], set(ROWS)),  # a backslash before anything but , or \ reaches the regex
        # \, is a literal comma; a bare comma ANDs
        (["addresses==172.67.16.63\\,104.21.11.16"], {"response"}),
        (["addresses~63\\,104"], {"response"}),
        (["qr==R,rcode==NOERROR"], {"response", "slow"}),
        (["qr==R,rcode==NOERROR,addresses==10.0.0.1"], {"slow"}),
        # several --filter options AND together
        (["qr==R", "rcode==NOERROR"], {"response", "slow"}),
        (["qr==R", "rcode!=NOERROR"], {"nxdomain"}),
        # numbers: _raw fields and numeric fields, absent values never compare
        (["latency_ns_raw>5000000"], {"response", "slow", "unanswered"}),
        (["latency_ns_raw>=28000000"], {"response", "slow", "unanswered"}),
        (["latency_ns_raw>28000000"], {"slow", "unanswered"}),
        (["latency_ns_raw<28000000"], set()),
        (["latency_ns_raw<=28000000"], {"response"}),
        (["latency_ns_raw==28000000"], {"response"}),
        (["latency_ns_raw!=28000000"], {"query", "slow", "unanswered", "nxdomain"}),
        (["latency_ns_raw=="], {"query", "nxdomain"}),  # no latency at all
        # durations with units on latency fields (trace_dns needs plain nanoseconds here)
        (["latency_ns>5ms"], {"response", "slow", "unanswered"}),
        (["latency_ns_raw>1s"], {"slow", "unanswered"}),
        (["latency_ns>1.5s"], {"unanswered"}),
        (["latency_ns>=1.5s"], {"slow", "unanswered"}),
        (["latency_ns<30000us"], {"response"}),
        (["latency_ns<28.5µs"], set()),
        (["latency_ns<1m30s", "unanswered==false"], {"response", "slow"}),
        (["qr==R", "latency_ns>5ms"], {"response", "slow"}),
        (["rcode_raw>0"], {"nxdomain"}),  # errors only: queries have no rcode_raw
        (["rcode_raw==3"], {"nxdomain"}),
        (["qtype_raw==1"], set(ROWS)),
        (["num_answers>=2"], {"response"}),
        (["num_answers==1"], {"slow"}),
        (["ttl<301"], {"response", "slow"}),
        (["id_raw==0xc3b5"], set(ROWS)),
        (["id_raw==50101"], set(ROWS)),
        ([f"netns_id=={NETNS}"], set(ROWS)),
        (["dst.port==53"], {"query", "unanswered"}),
        (["nameserver.port==53"], set(ROWS)),
        (["pkt_type_raw==4"], {"query", "unanswered"}),
        # flags: true/false/1/0
        (["unanswered==true"], {"unanswered"}),
        (["unanswered==1"], {"unanswered"}),
        (["unanswered!=true"], {"query", "response", "slow", "nxdomain"}),
        (["qr_raw==0"], {"query", "unanswered"}),
        (["ra==true"], {"response", "slow", "nxdomain"}),
        (["tc==false"], set(ROWS)),
        (["pkt_type==OUTGOING"], {"query", "unanswered"}),
        (["transport==udp"], set(ROWS)),
    ],
)
def test_filter_matches(exprs: list[str], expected: set[str]) -> None:
    assert matching(*exprs) == expected


def test_no_filter_matches_everything() -> None:
    f = parse_filters([])
    assert not f
    assert all(f.match(row) for row in ROWS.values())


def test_literal_backslash() -> None:
    assert split_escaped(r"name~a\\,qr==Q") == ["name~a\\", "qr==Q"]
    assert split_escaped(r"a\,b,c\d,e\\") == ["a,b", r"c\d", "e\\"]


@given(st.lists(st.text(alphabet="ab,\\=", max_size=6), min_size=1, max_size=4))
def test_split_escaped_undoes_escaping(parts: list[str]) -> None:
    escaped = ",".join(p.replace("\\", "\\\\").replace(",", "\\,") for p in parts)
    assert split_escaped(escaped) == parts


@given(st.integers(min_value=0, max_value=10 * SEC))
def test_latency_threshold_agrees_with_the_number(threshold: int) -> None:
    for op, cmp in ((">", int.__gt__), (">=", int.__ge__), ("<", int.__lt__), ("<=", int.__le__)):
        f = parse_filters([f"latency_ns_raw{op}{threshold}"])
        for row in ROWS.values():
            want = row.latency_ns is not None and cmp(row.latency_ns, threshold)
            assert f.match(row) is want, (op, threshold, row)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_not_equal_is_the_negation_of_equal(name: str) -> None:
    for row in ROWS.values():
        value = FIELDS[name].text(row).replace("\\", "\\\\").replace(",", "\\,")
        if value[:1] in "!~<>=" and value:
            continue  # a value cannot start with an operator character (as in trace_dns)
        eq, ne = parse_filters([f"{name}=={value}"]), parse_filters([f"{name}!={value}"])
        for other in ROWS.values():
            assert eq.match(other) is not ne.match(other)
        assert eq.match(row) is True  # a row always equals its own displayed value


DURATIONS = [
    ("5ms", 5 * MS),
    ("1.5s", 1_500 * MS),
    ("250us", 250_000),
    ("250µs", 250_000),
    ("100ns", 100),
    ("1m30s", 90 * SEC),
    ("2h", 7200 * SEC),
    ("12345", 12345),
    (".5s", 500 * MS),
]


@pytest.mark.parametrize(("text", "ns"), DURATIONS)
def test_parse_duration(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize(
    ("exprs", "needles"),
    [
        (["nope==1"], ["'nope'", "unknown field"]),
        (["qr==R,bogus~x"], ["'bogus'"]),
        (["name~("], ["'name~('", "regular expression", "'name'"]),
        (["rcode!~[a-"], ["'rcode!~[a-'", "regular expression"]),
        (["latency_ns_raw>fast"], ["'latency_ns_raw'", "'fast'", "duration"]),
        (["latency_ns>5 parsecs"], ["'latency_ns'", "'5 parsecs'"]),
        (["num_answers==two"], ["'num_answers'", "'two'", "integer"]),
        (["ttl<"], ["'ttl'", "integer"]),
        (["name>abc"], ["'name'", "cannot be ordered"]),
        (["rcode>=1"], ["'rcode'", "rcode_raw"]),
        (["tc==maybe"], ["'tc'", "'maybe'"]),
        (["unanswered>0"], ["'unanswered'", "== or !="]),
        ([""], ["empty filter"]),
        (["   "], ["empty filter"]),
        (["qr==R,,rcode==NOERROR"], ["empty rule", "'qr==R,,rcode==NOERROR'"]),
        (["qr==R,"], ["empty rule"]),
        (["qr==R", ""], ["empty filter"]),
        (["name"], ["no operator", "'name'"]),
        (["==R"], ["no field name", "'==R'"]),
        (["latency_ns=>5ms"], ["invalid operator", "'=>'", "'latency_ns=>5ms'"]),
        (["latency_ns==>5s"], ["invalid operator", "'==>'"]),
        (["name~=x"], ["invalid operator", "'~='"]),
    ],
)
def test_bad_filters_name_what_is_wrong(exprs: list[str], needles: list[str]) -> None:
    with pytest.raises(FilterError) as e:
        parse_filters(exprs)
    for needle in needles:
        assert needle in str(e.value)
