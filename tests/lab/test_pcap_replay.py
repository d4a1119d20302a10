"""Acceptance for the capture-file input: ``dnsotel trace --pcap FILE -o json``.

A real exchange is captured with tshark/tcpdump in the client namespace and in the
resolver namespace (pcapng and pcap, ``-i any``: Linux cooked capture, with direction)
while a client asks dnsmasq for existing names, missing names, a refused zone, a slow
upstream and a never-answering one. The CLI is then run exactly as a user would, and its
rows are checked against the scenario field by field, and its latencies against tshark's
own ``dns.time`` for the same file (within 1 µs).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.lab.conftest import require_lab
from tests.lab.lab import REPO_ROOT, Dnsmasq, Lab, Proc
from tests.lab.upstream import CNAME_TARGET, addresses_for, many_addresses

pytestmark = pytest.mark.lab

DNSOTEL = REPO_ROOT / ".venv" / "bin" / "dnsotel"
SPORT = 41053  # the client's fixed source port (UDP and TCP)
SPORT6 = 41054


@dataclass(frozen=True, slots=True)
class Expect:
    """One query of the scenario and what its response must carry."""

    id: int
    name: str
    qtype: str
    rcode: str | None  # None: never answered
    addresses: frozenset[str] = frozenset()
    cnames: tuple[str, ...] = ()
    transport: str = "udp"
    v6: bool = False
    min_latency_ms: float = 0.0


def _ok(name: str, qtype: str = "A") -> frozenset[str]:
    v4, v6 = addresses_for(name)
    return frozenset([v4 if qtype == "A" else v6])


SCENARIO: list[Expect] = [
    Expect(0x1001, "a.ok.lab.", "A", "NOERROR", _ok("a.ok.lab.")),
    Expect(0x1002, "a.ok.lab.", "AAAA", "NOERROR", _ok("a.ok.lab.", "AAAA")),
    Expect(0x1003, "many.lab.", "A", "NOERROR", frozenset(many_addresses("A"))),
    Expect(0x1004, "missing.nx.lab.", "A", "NXDOMAIN"),
    Expect(0x1005, "zone.refused.lab.", "A", "REFUSED"),
    Expect(0x1006, "slow.delay-40ms.lab.", "A", "NOERROR", _ok("slow.delay-40ms.lab."), min_latency_ms=40),
    Expect(0x1007, "cname.lab.", "A", "NOERROR", _ok(CNAME_TARGET), (CNAME_TARGET,)),
    Expect(0x1008, "gone.never.lab.", "A", None),
    Expect(0x1009, "t.ok.lab.", "A", "NOERROR", _ok("t.ok.lab."), transport="tcp"),
    Expect(0x100A, "six.ok.lab.", "AAAA", "NOERROR", _ok("six.ok.lab.", "AAAA"), v6=True),
]
NEVER_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class Captures:
    lab: Lab
    resolver: Dnsmasq
    files: dict[str, Path]  # "client.pcapng", "client.pcap", "resolver.pcapng", "resolver.pcap"
    client_rows: list[dict[str, Any]]


def _start_capture(lab: Lab, ns: str, argv: list[str], ready: str) -> Proc:
    proc = lab.spawn(ns, argv, tag=argv[0])
    deadline = time.monotonic() + 15
    while ready not in proc.output():
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"capture did not start: {argv}\n{proc.output()}")
        time.sleep(0.05)
    return proc


def _stop_capture(proc: Proc) -> None:
    proc.send_signal(signal.SIGINT)  # both tools finish writing the file on SIGINT
    try:
        proc.popen.wait(10)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def captures() -> Iterator[Captures]:
    require_lab()
    require_tool("tshark", "tcpdump")
    with Lab() as lab:
        lab.start_upstream()
        res = Dnsmasq(lab, cache=False).start()
        files = {
            "client.pcapng": lab.tmp / "client.pcapng",
            "client.pcap": lab.tmp / "client.pcap",
            "resolver.pcapng": lab.tmp / "resolver.pcapng",
            "resolver.pcap": lab.tmp / "resolver.pcap",
        }
        caps = [
            _start_capture(
                lab,
                "client",
                ["tshark", "-n", "-i", "any", "-f", "port 53", "-w", str(files["client.pcapng"])],
                "Capturing on",
            ),
            _start_capture(
                lab,
                "client",
                [
                    "tcpdump",
                    "-n",
                    "-i",
                    "any",
                    "-U",
                    "--immediate-mode",
                    "-Z",
                    "root",
                    "-w",
                    str(files["client.pcap"]),
                    "port 53",
                ],
                "listening on",
            ),
            _start_capture(
                lab,
                "resolver",
                ["tshark", "-n", "-i", "any", "-f", "port 53", "-w", str(files["resolver.pcapng"])],
                "Capturing on",
            ),
            _start_capture(
                lab,
                "resolver",
                [
                    "tshark",
                    "-n",
                    "-i",
                    "any",
                    "-f",
                    "port 53",
                    "-F",
                    "pcap",
                    "-w",
                    str(files["resolver.pcap"]),
                ],
                "Capturing on",
            ),
        ]
        try:
            udp4 = [e for e in SCENARIO if e.transport == "udp" and not e.v6]
            args: list[str] = [
                "--timeout",
                str(NEVER_TIMEOUT_S),
                "--sport",
                str(SPORT),
                "--id",
                str(udp4[0].id),
            ]
            assert [e.id for e in udp4] == list(range(udp4[0].id, udp4[0].id + len(udp4)))
            for e in udp4:
                args += [e.name, e.qtype]
            rows = lab.query("client", *args, server=res.v4)
            tcp = next(e for e in SCENARIO if e.transport == "tcp")
            rows += lab.query(
                "client",
                "--tcp",
                "--sport",
                str(SPORT),
                "--id",
                str(tcp.id),
                tcp.name,
                tcp.qtype,
                server=res.v4,
            )
            six = next(e for e in SCENARIO if e.v6)
            rows += lab.query(
                "client", "--sport", str(SPORT6), "--id", str(six.id), six.name, six.qtype, server=res.v6
            )
            time.sleep(1.0)  # let every capture drain its buffer
        finally:
            for cap in caps:
                _stop_capture(cap)
        yield Captures(lab, res, files, rows)


def _dnsotel(path: Path, *extra: str) -> list[dict[str, Any]]:
    require_tool(str(DNSOTEL))
    proc = subprocess.run(
        [str(DNSOTEL), "trace", "--pcap", str(path), "-o", "json", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"dnsotel failed ({proc.returncode}): {proc.stderr}"
    rows = []
    for line in proc.stdout.splitlines():
        if line.strip():
            rows.append(json.loads(line))  # every stdout line is one JSON object
    return rows


def _tshark_dns_times(path: Path) -> dict[tuple[int, int], int]:
    """(dns id, client port) → tshark's ``dns.time`` of the response, in ns."""
    out = subprocess.run(
        [
            "tshark",
            "-n",
            "-r",
            str(path),
            "-Y",
            "dns.flags.response==1 && dns.time",
            "-T",
            "fields",
            "-e",
            "dns.id",
            "-e",
            "dns.time",
            "-e",
            "udp.dstport",
            "-e",
            "tcp.dstport",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    times: dict[tuple[int, int], int] = {}
    for line in out.splitlines():
        qid, t, uport, tport = ([*line.split("\t"), "", "", "", ""])[:4]
        if not qid or not t:
            continue
        times[(int(qid, 16), int(uport or tport))] = round(float(t) * 1e9)
    return times


def _client_side(c: Captures, kind: str) -> list[dict[str, Any]]:
    return _dnsotel(c.files[f"client.{kind}"])


def test_scenario_ran_as_planned(captures: Captures) -> None:
    """The client saw what the scenario expects (so a CLI mismatch is the CLI's fault)."""
    got = {r["id"]: r for r in captures.client_rows}
    for e in SCENARIO:
        row = got[e.id]
        assert row["rcode"] == e.rcode, row
        assert frozenset(row["answers"]) == e.addresses
    for f in captures.files.values():
        assert f.stat().st_size > 0


@pytest.mark.parametrize("kind", ["pcapng", "pcap"])
def test_client_namespace_rows(captures: Captures, kind: str) -> None:
    rows = _client_side(captures, kind)
    res = captures.resolver
    for e in SCENARIO:
        mine = [r for r in rows if r["id_raw"] == e.id]
        queries = [r for r in mine if r["qr"] == "Q" and not r["unanswered"]]
        responses = [r for r in mine if r["qr"] == "R"]
        unanswered = [r for r in mine if r["unanswered"]]
        assert len(queries) == 1, (e, mine)
        q = queries[0]
        server = res.v6 if e.v6 else res.v4
        sport = SPORT6 if e.v6 else SPORT
        assert (q["name"], q["qtype"], q["transport"]) == (e.name, e.qtype, e.transport)
        assert (q["src.addr"], q["src.port"]) == (
            captures.lab.client.v6 if e.v6 else captures.lab.client.v4,
            sport,
        )
        assert (q["dst.addr"], q["dst.port"]) == (server, 53)
        assert q["id"] == f"{e.id:04x}" and q["rd"] is True and q["rcode"] == ""
        assert q["pkt_type"] == "OUTGOING" and q["latency_ns_raw"] is None
        assert q["nameserver.addr"] == server
        if e.rcode is None:
            assert responses == [], responses
            assert len(unanswered) == 1, mine
            u = unanswered[0]
            assert (u["name"], u["qtype"], u["rcode"]) == (e.name, e.qtype, "")
            assert u["latency_ns"].startswith(">")  # e.g. ">5s": more than the pairing timeout
            assert u["latency_ns_raw"] == 5_000_000_000 and u["timestamp_raw"] == q["timestamp_raw"]
            continue
        assert unanswered == []
        assert len(responses) == 1, mine
        r = responses[0]
        assert (r["name"], r["qtype"], r["rcode"], r["transport"]) == (e.name, e.qtype, e.rcode, e.transport)
        assert (r["src.addr"], r["src.port"], r["dst.port"]) == (server, 53, sport)
        assert r["pkt_type"] == "HOST" and r["ra"] is True and r["tc"] is False
        assert frozenset(r["addresses"]) == e.addresses, r
        assert r["num_answers"] == len(e.addresses) + len(e.cnames)
        assert r["cnames"] == list(e.cnames)
        assert r["ttl"] == (300 if e.addresses else None)
        assert r["latency_ns_raw"] == r["timestamp_raw"] - q["timestamp_raw"]
        assert r["latency_ns_raw"] >= e.min_latency_ms * 1e6
        if e.min_latency_ms:
            assert r["latency_ns_raw"] < (e.min_latency_ms + 200) * 1e6
        assert r["netns_id"] == q["netns_id"]
    # Nothing else in the file: 10 queries, 9 responses, 1 unanswered.
    assert len(rows) == 2 * len(SCENARIO), [(r["id"], r["qr"], r["name"]) for r in rows]


@pytest.mark.parametrize("where", ["client", "resolver"])
@pytest.mark.parametrize("kind", ["pcapng", "pcap"])
def test_latency_matches_tshark(captures: Captures, where: str, kind: str) -> None:
    path = captures.files[f"{where}.{kind}"]
    rows = _dnsotel(path)
    expected = _tshark_dns_times(path)
    assert len(expected) >= len(SCENARIO) - 1
    ours = {(r["id_raw"], r["dst.port"]): r["latency_ns_raw"] for r in rows if r["qr"] == "R"}
    assert set(ours) == set(expected)
    for key, ns in expected.items():
        assert abs(ours[key] - ns) <= 1000, (key, ours[key], ns)


@pytest.mark.parametrize("kind", ["pcapng", "pcap"])
def test_resolver_namespace_sees_both_legs(captures: Captures, kind: str) -> None:
    rows = _dnsotel(captures.files[f"resolver.{kind}"])
    res = captures.resolver
    lab = captures.lab
    for e in SCENARIO:
        # Leg 1: the client's query arriving at dnsmasq (same id), and dnsmasq's answer leaving.
        client_addr = lab.client.v6 if e.v6 else lab.client.v4
        leg1 = [
            r
            for r in rows
            if r["id_raw"] == e.id and r["name"] == e.name and client_addr in (r["src.addr"], r["dst.addr"])
        ]
        q1 = [r for r in leg1 if r["qr"] == "Q" and not r["unanswered"]]
        assert len(q1) == 1 and q1[0]["pkt_type"] == "HOST", leg1
        assert q1[0]["dst.addr"] == (res.v6 if e.v6 else res.v4)
        # Leg 2: dnsmasq forwarding to the upstream (its own id and port).
        leg2 = [
            r
            for r in rows
            if r["name"] == e.name and r["qtype"] == e.qtype and r["nameserver.addr"] == lab.upstream_v4
        ]
        q2 = [r for r in leg2 if r["qr"] == "Q" and not r["unanswered"]]
        assert q2 and all(
            r["src.addr"] == lab.upstream_link.addr_b_v4 and r["pkt_type"] == "OUTGOING" for r in q2
        )
        if e.rcode is None:
            assert not [r for r in leg1 + leg2 if r["qr"] == "R"]
            assert [r for r in leg1 if r["unanswered"]] and [r for r in leg2 if r["unanswered"]]
            continue
        r1 = [r for r in leg1 if r["qr"] == "R"]
        r2 = [r for r in leg2 if r["qr"] == "R"]
        assert len(r1) == 1 and r1[0]["rcode"] == e.rcode and r1[0]["pkt_type"] == "OUTGOING"
        assert r2 and r2[-1]["rcode"] == e.rcode and r2[-1]["pkt_type"] == "HOST"
        assert frozenset(r1[0]["addresses"]) == e.addresses == frozenset(r2[-1]["addresses"])
        # The resolver's answer cannot come before the upstream's.
        assert r1[0]["timestamp_raw"] >= r2[-1]["timestamp_raw"]
        assert r2[-1]["latency_ns_raw"] >= e.min_latency_ms * 1e6


def test_pcap_and_pcapng_agree(captures: Captures) -> None:
    keys = ("id_raw", "qr", "name", "qtype", "rcode", "src", "dst", "transport", "unanswered", "pkt_type")

    def norm(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((*tuple(str(r[k]) for k in keys), tuple(sorted(r["addresses"]))) for r in rows)

    for where in ("client", "resolver"):
        a = _dnsotel(captures.files[f"{where}.pcapng"])
        b = _dnsotel(captures.files[f"{where}.pcap"])
        assert norm(a) == norm(b), where


def test_filter_and_timeout_flags(captures: Captures) -> None:
    path = captures.files["client.pcapng"]
    errors = _dnsotel(path, "--filter", "qr==R,rcode!=NOERROR")
    assert sorted(r["name"] for r in errors) == ["missing.nx.lab.", "zone.refused.lab."]
    slow = _dnsotel(path, "--filter", "latency_ns_raw>30ms")
    assert [r["name"] for r in slow if r["qr"] == "R"] == ["slow.delay-40ms.lab."]
    # With a pairing timeout shorter than the slow answer, that query is declared unanswered
    # and its late response counts as unmatched.
    short = _dnsotel(path, "--timeout", "20ms")
    slow_rows = [r for r in short if r["name"] == "slow.delay-40ms.lab."]
    assert any(r["unanswered"] for r in slow_rows), slow_rows
