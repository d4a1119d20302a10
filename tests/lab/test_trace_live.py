"""``dnsotel trace`` on live lab traffic, run the way a user runs it (issue 3 acceptance).

Each test starts (or shares) a real ``dnsotel trace -o json --netns ... --timeout 1s``
subprocess, sends DNS traffic with the lab client, and checks the rows a user would
expect, field by field; the trace is stopped with SIGTERM or SIGINT and must exit 0
with its summary line on stderr.

Latency (``test_latency_equals_the_delay_the_upstream_added``): the upstream is *told* to
wait N ms by the name ``delay-Nms``; it *really* holds the query a little longer (asyncio
scheduling, dnspython encoding: 2-3 ms here). "The delay the upstream added" is measured
independently of dnsotel: tcpdump in the upstream's namespace records when the query
arrives on and the response leaves its interface (tshark reads the two timestamps). Then:

* dnsotel's latency of the resolver's upstream exchange (resolver netns, one veth away)
  is within 1 ms of that wire-to-wire delay;
* dnsotel's latency of the client's exchange in the client netns is within 1 ms of the
  same exchange seen at the resolver's interface, is at least the upstream's delay (the
  difference is dnsmasq's own forwarding time, 0.1-5 ms, printed), and at most the
  client's own measured elapsed time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.lab.lab import REPO_ROOT, Dnsmasq, Lab, Proc, Resolver, Unbound
from tests.lab.upstream import CNAME_TARGET, addresses_for, many_addresses

pytestmark = pytest.mark.lab

Row = dict[str, Any]

TIMEOUT_S = 1.0  # --timeout of every trace here: unanswered rows come 1 s after the query
SUMMARY = re.compile(r"^dnsotel: (\d+) packets seen, (\d+) lost in the kernel, (\d+) undecodable\b")
UPSTREAM_NS = "r/198.18.100.2:53"


def dnsotel_argv() -> list[str]:
    """The installed ``dnsotel`` script next to this Python, else ``python -m exporter.cli``."""
    script = Path(sys.executable).parent / "dnsotel"
    if script.exists():
        return [str(script)]
    found = shutil.which("dnsotel")
    return [found] if found else [sys.executable, "-m", "exporter.cli"]


class Trace:
    """A running ``dnsotel trace`` whose stdout lines are collected with their arrival time."""

    def __init__(self, args: Sequence[str], workdir: Path, json_rows: bool = True) -> None:
        self.argv = [*dnsotel_argv(), "trace", *args]
        self.json_rows = json_rows
        self.stderr_path = workdir / f"trace-{os.getpid()}-{time.monotonic_ns()}.stderr"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            text=True,
        )
        self.lines: list[tuple[int, str]] = []  # (wall-clock ns when read, line)
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.returncode: int | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cv:
                self.lines.append((time.time_ns(), line.rstrip("\n")))
                self._cv.notify_all()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the "capturing" log line (sockets attached) or the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if '"msg": "capturing"' in self.stderr():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise AssertionError(f"dnsotel trace did not start: rc={self.proc.returncode}\n{self.stderr()}")

    def rows(self) -> list[tuple[int, Row]]:
        with self._cv:
            return [(t, json.loads(line)) for t, line in self.lines]

    def wait_rows(self, pred: Callable[[Row], bool], n: int, timeout: float = 5.0) -> list[Row]:
        """The rows matching ``pred`` once there are at least ``n`` (or all there are at the deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            got = [r for _, r in self.rows() if pred(r)]
            left = deadline - time.monotonic()
            if len(got) >= n or left <= 0:
                return got
            with self._cv:
                self._cv.wait(min(left, 0.1))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, str]:
        """Send ``sig``, wait for exit; returns (exit code, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        with contextlib.suppress(OSError):
            self._stderr.close()
        self.returncode = self.proc.returncode
        return self.proc.returncode, self.stderr()


def assert_clean_exit(rc: int, err: str) -> re.Match[str]:
    """Exit 0; stderr is only info-level JSON log lines and the summary; returns the summary match."""
    assert rc == 0, err
    assert "Traceback" not in err, err
    summary = None
    for line in err.splitlines():
        m = SUMMARY.match(line)
        if m:
            summary = m
            continue
        rec = json.loads(line)  # anything else must be a structured log line
        assert rec["level"] in ("info", "debug"), line
    assert summary is not None, f"no summary line on stderr:\n{err}"
    return summary


def ifindex(lab: Lab, ns: str, dev: str) -> int:
    out = lab.exec(ns, ["ip", "-j", "link", "show", "dev", dev]).stdout
    return int(json.loads(out)[0]["ifindex"])


def ep(addr: str, port: int) -> str:
    return f"r/[{addr}]:{port}" if ":" in addr else f"r/{addr}:{port}"


def mismatches(row: Row, **want: Any) -> list[str]:
    return [f"{k}: got {row.get(k)!r}, want {v!r}" for k, v in want.items() if row.get(k) != v]


def check(row: Row, **want: Any) -> None:
    bad = mismatches(row, **want)
    assert not bad, "\n".join(bad) + f"\nrow: {row}"


def by(netns: int, **fields: Any) -> Callable[[Row], bool]:
    def pred(r: Row) -> bool:
        return r["netns_id"] == netns and all(r.get(k) == v for k, v in fields.items())

    return pred


class Sniffer:
    """tcpdump in a lab namespace (port 53), read back with tshark: the independent witness."""

    def __init__(self, lab: Lab, ns: str, dev: str) -> None:
        self.lab = lab
        self.path = lab.tmp / f"sniff-{dev}-{time.monotonic_ns()}.pcap"
        self.proc: Proc = lab.spawn(
            ns,
            [
                "tcpdump",
                "-i",
                dev,
                "--immediate-mode",
                "-U",
                "-n",
                "-Z",
                "root",
                "-w",
                str(self.path),
                "port 53",
            ],
            tag="tcpdump",
        )
        deadline = time.monotonic() + 10
        while "listening on" not in self.proc.output():
            assert self.proc.alive() and time.monotonic() < deadline, self.proc.output()
            time.sleep(0.05)

    def fields(self, display_filter: str, *fields: str) -> list[list[str]]:
        time.sleep(0.2)
        self.proc.stop()
        argv = ["tshark", "-r", str(self.path), "-Y", display_filter, "-T", "fields"]
        argv += ["-E", "separator=/t", *[x for f in fields for x in ("-e", f)]]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
        return [line.split("\t") for line in out.splitlines() if line.strip()]


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools() -> None:
    require_tool("tcpdump", "tshark")


@pytest.fixture(scope="module")
def trace(lab: Lab, dnsmasq: Dnsmasq, unbound: Unbound) -> Iterator[Trace]:
    """One trace over the client's and the resolver's namespaces, shared by the module."""
    t = Trace(
        ["-o", "json", "--netns", lab.client.ns.path, "--netns", lab.resolver.path, "--timeout", "1s"],
        lab.tmp,
    )
    t.wait_ready()
    yield t
    t.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def where(lab: Lab) -> dict[str, int]:
    """netns ids and interface indexes of the lab, as dnsotel must report them."""
    return {
        "client": os.stat(lab.client.ns.path).st_ino,
        "resolver": os.stat(lab.resolver.path).st_ino,
        "client_if": ifindex(lab, "client", lab.client.link.a),
        "resolver_client_if": ifindex(lab, "resolver", lab.client.link.b),
        "resolver_up_if": ifindex(lab, "resolver", lab.upstream_link.b),
    }


_next_id = iter(range(0x1000, 0xF000, 16))


def new_id() -> int:
    return next(_next_id)


def client_pair(
    trace: Trace, where: dict[str, int], qid: int, transport: str = "udp", timeout: float = 5.0
) -> tuple[Row, Row]:
    rows = trace.wait_rows(by(where["client"], id_raw=qid, transport=transport), 2, timeout)
    qs = [r for r in rows if r["qr"] == "Q"]
    rs = [r for r in rows if r["qr"] == "R"]
    assert len(qs) == 1 and len(rs) == 1, rows
    return qs[0], rs[0]


def expect_client_rows(
    q: Row, r: Row, res: Row, where: dict[str, int], server: str, transport: str = "udp"
) -> None:
    """The query/response rows in the client's netns for one lab client result ``res``."""
    client = res["sport"]
    caddr = "198.18.1.2" if ":" not in server else "fd00:1::2"
    common = {
        "netns_id": where["client"],
        "ifindex": where["client_if"],
        "id": f"{res['id']:04x}",
        "id_raw": res["id"],
        "qtype": res["type"],
        "name": res["name"],
        "transport": transport,
        "nameserver": ep(server, 53),
        "nameserver.addr": server,
        "nameserver.port": 53,
        "unanswered": False,
    }
    check(
        q,
        **common,
        pkt_type="OUTGOING",
        qr="Q",
        qr_raw=False,
        src=ep(caddr, client),
        dst=ep(server, 53),
        rcode="",
        rcode_raw=None,
        latency_ns="",
        latency_ns_raw=None,
        num_answers=0,
        addresses=[],
        tc=False,
        rd=True,
    )
    check(
        r,
        **common,
        pkt_type="HOST",
        qr="R",
        qr_raw=True,
        src=ep(server, 53),
        dst=ep(caddr, client),
        rcode=res["rcode"],
        num_answers=res["num_answers"],
        addresses=res["answers"],
        cnames=res["cnames"],
        ttl=res["ttl"],
        tc=res["tc"],
        ra=res["ra"],
    )
    assert r["timestamp_raw"] > q["timestamp_raw"]
    assert r["latency_ns_raw"] == r["timestamp_raw"] - q["timestamp_raw"]
    # the kernel saw the exchange inside the client's own measured time
    assert 0 < r["latency_ns_raw"] <= res["elapsed_ms"] * 1e6, (r["latency_ns"], res["elapsed_ms"])


def resolver_of(request: pytest.FixtureRequest, name: str) -> Resolver:
    res: Resolver = request.getfixturevalue(name)
    return res


# --- the client's namespace -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dnsmasq", "unbound"])
def test_udp_v4_pair_in_client_netns(
    request: pytest.FixtureRequest, kind: str, lab: Lab, trace: Trace, where: dict[str, int]
) -> None:
    res = resolver_of(request, kind)
    qid = new_id()
    name = f"a{qid}.ttl-77.ok.lab."
    (out,) = lab.query("client", "--id", str(qid), name, "A", server=res.v4)
    assert out["rcode"] == "NOERROR" and out["answers"] == [addresses_for(name)[0]], out
    q, r = client_pair(trace, where, qid)
    expect_client_rows(q, r, out, where, res.v4)
    check(r, rcode="NOERROR", rcode_raw=0, addresses=[addresses_for(name)[0]], num_answers=1)
    if kind == "dnsmasq":  # no cache: the upstream's TTL passes through
        check(r, ttl=77)


@pytest.mark.parametrize("kind", ["dnsmasq", "unbound"])
def test_ipv6_pair_in_client_netns(
    request: pytest.FixtureRequest, kind: str, lab: Lab, trace: Trace, where: dict[str, int]
) -> None:
    res = resolver_of(request, kind)
    qid = new_id()
    name = f"v6-{qid}.ok.lab."
    (out,) = lab.query("client", "--id", str(qid), name, "AAAA", server=res.v6)
    q, r = client_pair(trace, where, qid)
    expect_client_rows(q, r, out, where, res.v6)
    check(q, src=f"r/[fd00:1::2]:{out['sport']}", dst=f"r/[fd00:1::{res.host}]:53", qtype="AAAA")
    check(r, addresses=[addresses_for(name)[1]], rcode="NOERROR")


# dnsmasq passes the upstream's code through; unbound turns an upstream REFUSED into SERVFAIL
RCODES = {
    "dnsmasq": {"nx": "NXDOMAIN", "servfail": "SERVFAIL", "refused": "REFUSED"},
    "unbound": {"nx": "NXDOMAIN", "servfail": "SERVFAIL", "refused": "SERVFAIL"},
}
RCODE_RAW = {"NXDOMAIN": 3, "SERVFAIL": 2, "REFUSED": 5}


@pytest.mark.parametrize("kind", ["dnsmasq", "unbound"])
def test_error_rcodes(
    request: pytest.FixtureRequest, kind: str, lab: Lab, trace: Trace, where: dict[str, int]
) -> None:
    res = resolver_of(request, kind)
    qid = new_id()
    zones = list(RCODES[kind])
    names = [f"e{qid}.{z}.lab." for z in zones]
    outs = lab.query("client", "--id", str(qid), *names, server=res.v4, timeout=120)
    for i, (zone, out) in enumerate(zip(zones, outs, strict=True)):
        assert out["rcode"] == RCODES[kind][zone], out
        q, r = client_pair(trace, where, qid + i)
        expect_client_rows(q, r, out, where, res.v4)
        want = RCODES[kind][zone]
        check(r, rcode=want, rcode_raw=RCODE_RAW[want], num_answers=0, addresses=[])


def test_many_addresses_and_cname(lab: Lab, trace: Trace, where: dict[str, int], dnsmasq: Dnsmasq) -> None:
    qid = new_id()
    many, cname = f"m{qid}.many.lab.", f"c{qid}.cname.lab."
    outs = lab.query("client", "--id", str(qid), many, "A", cname, "AAAA", server=dnsmasq.v4)
    q, r = client_pair(trace, where, qid)
    assert r["num_answers"] == 40, r
    # dnsmasq shuffles the records; the row keeps the wire order, as the client saw it
    assert sorted(outs[0]["answers"]) == sorted(many_addresses("A"))
    assert set(r["addresses"]) <= set(many_addresses("A"))
    q, r = client_pair(trace, where, qid + 1)
    expect_client_rows(q, r, outs[1], where, dnsmasq.v4)
    check(r, cnames=[CNAME_TARGET], addresses=[addresses_for(CNAME_TARGET)[1]], num_answers=2, qtype="AAAA")


def test_many_addresses_complete_with_the_default_snaplen(
    lab: Lab, trace: Trace, where: dict[str, int], dnsmasq: Dnsmasq
) -> None:
    qid = new_id()
    (out,) = lab.query("client", "--id", str(qid), f"d{qid}.many.lab.", "A", server=dnsmasq.v4)
    q, r = client_pair(trace, where, qid)
    expect_client_rows(q, r, out, where, dnsmasq.v4)


def test_many_addresses_cut_by_a_small_snaplen_still_pair(
    lab: Lab, where: dict[str, int], dnsmasq: Dnsmasq
) -> None:
    """--snaplen 512 copies ~512 of the ~690 bytes of a 40-address answer: the pair and the
    answer count survive (the message is decoded as far as it goes), the addresses are the
    ones that fit, in order."""
    t = Trace(["-o", "json", "--netns", lab.client.ns.path, "--snaplen", "512", "--timeout", "1s"], lab.tmp)
    try:
        t.wait_ready()
        qid = new_id()
        name = f"s{qid}.many.lab."
        outs = lab.query("client", "--id", str(qid), name, "A", name, "AAAA", server=dnsmasq.v4)
        for i in range(2):
            _q, r = client_pair(t, where, qid + i)
            assert r["num_answers"] == 40 and r["rcode"] == "NOERROR" and not r["unanswered"]
            kept = r["addresses"]
            assert 0 < len(kept) < 40 and kept == outs[i]["answers"][: len(kept)]
    finally:
        rc, err = t.stop(signal.SIGINT)
    summary = assert_clean_exit(rc, err)
    assert summary.group(2) == "0" and summary.group(3) == "0", err


# --- the resolver's namespace ----------------------------------------------------------------


def test_resolver_netns_sees_client_query_and_its_own_upstream_query(
    lab: Lab, trace: Trace, where: dict[str, int], dnsmasq: Dnsmasq
) -> None:
    qid = new_id()
    name = f"r{qid}.ok.lab."
    (out,) = lab.query("client", "--id", str(qid), name, server=dnsmasq.v4)
    res_ns = where["resolver"]
    rows = trace.wait_rows(by(res_ns, id_raw=qid), 2)
    cq = [r for r in rows if r["qr"] == "Q"]
    cr = [r for r in rows if r["qr"] == "R"]
    assert len(cq) == 1 and len(cr) == 1, rows
    client_ep = ep("198.18.1.2", out["sport"])
    # the client's query arrives (HOST), the resolver's answer leaves (OUTGOING)
    check(cq[0], pkt_type="HOST", ifindex=where["resolver_client_if"], src=client_ep, dst=ep(dnsmasq.v4, 53))
    check(cq[0], nameserver=ep(dnsmasq.v4, 53), qtype="A", name=name, transport="udp")
    check(cr[0], pkt_type="OUTGOING", ifindex=where["resolver_client_if"], src=ep(dnsmasq.v4, 53))
    check(cr[0], dst=client_ep, rcode="NOERROR", addresses=[addresses_for(name)[0]])
    # the resolver's own query to the upstream: OUTGOING, the upstream as nameserver
    up = [q for q in lab.upstream_queries() if q["name"] == name]
    assert len(up) == 1, up
    uq, ur = trace.wait_rows(by(res_ns, name=name, nameserver=UPSTREAM_NS), 2)
    uq, ur = sorted((uq, ur), key=lambda r: r["qr"])
    resolver_ep = ep("198.18.100.1", up[0]["sport"])
    common = {"ifindex": where["resolver_up_if"], "id_raw": up[0]["id"], "name": name, "transport": "udp"}
    check(uq, **common, qr="Q", pkt_type="OUTGOING", src=resolver_ep, dst=UPSTREAM_NS, nameserver=UPSTREAM_NS)
    check(ur, **common, qr="R", pkt_type="HOST", src=UPSTREAM_NS, dst=resolver_ep, rcode="NOERROR")
    check(ur, addresses=[addresses_for(name)[0]], unanswered=False)
    # nesting: upstream exchange inside the client's exchange, both inside the client's view
    assert cq[0]["timestamp_raw"] < uq["timestamp_raw"] < ur["timestamp_raw"] < cr[0]["timestamp_raw"]
    assert 0 < ur["latency_ns_raw"] < cr[0]["latency_ns_raw"]
    # a query the resolver does not answer from cache in the client's netns is seen exactly once
    assert not trace.wait_rows(by(where["client"], name=name, nameserver=UPSTREAM_NS), 1, 0.2)


def test_latency_equals_the_delay_the_upstream_added(
    tools: None, lab: Lab, trace: Trace, where: dict[str, int], dnsmasq: Dnsmasq
) -> None:
    told_ms = 50
    qid = new_id()
    name = f"l{qid}.delay-{told_ms}ms.lab."
    sniff = Sniffer(lab, "upstream", lab.upstream_link.a)
    (out,) = lab.query("client", "--id", str(qid), name, server=dnsmasq.v4)
    wire = sniff.fields(f'dns.qry.name == "{name[:-1]}"', "frame.time_epoch", "dns.flags.response")
    assert [w[1] for w in wire] in (["0", "1"], ["False", "True"]), wire
    upstream_ms = (float(wire[1][0]) - float(wire[0][0])) * 1000  # response left - query arrived
    q, r = client_pair(trace, where, qid)
    expect_client_rows(q, r, out, where, dnsmasq.v4)
    res_ns = where["resolver"]
    (ur,) = trace.wait_rows(by(res_ns, name=name, nameserver=UPSTREAM_NS, qr="R"), 1)
    (sr,) = trace.wait_rows(by(res_ns, id_raw=qid, qr="R"), 1)  # dnsmasq's answer to the client
    upstream_seen_ms = ur["latency_ns_raw"] / 1e6
    served_ms = sr["latency_ns_raw"] / 1e6
    client_ms = r["latency_ns_raw"] / 1e6
    report = (
        f"told {told_ms} ms; upstream wire-to-wire (tcpdump in its netns) {upstream_ms:.3f} ms; dnsotel: "
        f"upstream exchange seen in the resolver netns {upstream_seen_ms:.3f} ms, client exchange seen in "
        f"the resolver netns {served_ms:.3f} ms (dnsmasq adds {served_ms - upstream_seen_ms:.3f} ms), "
        f"in the client netns {client_ms:.3f} ms; client elapsed {out['elapsed_ms']:.3f} ms"
    )
    print(report)
    assert told_ms <= upstream_ms < told_ms + 20, report
    # the same exchange one veth away from where tcpdump saw it
    assert abs(upstream_seen_ms - upstream_ms) < 1.0, report
    # the client's exchange: in its own netns vs at the resolver's interface (one veth apart)
    assert abs(client_ms - served_ms) < 1.0, report
    # ... and it contains the upstream's delay and fits in what the client measured itself
    assert upstream_ms <= client_ms <= out["elapsed_ms"], report


# --- TCP ---------------------------------------------------------------------------------------


def test_tcp_query(lab: Lab, trace: Trace, where: dict[str, int], dnsmasq: Dnsmasq) -> None:
    qid = new_id()
    name = f"t{qid}.ok.lab."
    (out,) = lab.query("client", "--tcp", "--id", str(qid), name, "AAAA", server=dnsmasq.v4)
    q, r = client_pair(trace, where, qid, transport="tcp")
    expect_client_rows(q, r, out, where, dnsmasq.v4, transport="tcp")
    check(r, addresses=[addresses_for(name)[1]], transport="tcp")


def test_tcp_pipelined_responses_in_one_segment_are_two_rows(
    tools: None, lab: Lab, trace: Trace, where: dict[str, int]
) -> None:
    """The resolver's netns sends two queries in one segment; the upstream answers both in one."""
    qid = new_id()
    names = [f"p{qid}.ok.lab.", f"p{qid + 1}.ok.lab."]
    sniff = Sniffer(lab, "resolver", lab.upstream_link.b)
    outs = lab.query("resolver", "--pipeline", "--id", str(qid), *names, server=lab.upstream_v4)
    assert [o["rcode"] for o in outs] == ["NOERROR", "NOERROR"], outs
    segs = sniff.fields("tcp.srcport == 53 && tcp.len > 0", "dns.id", "tcp.len")
    assert len(segs) == 1, f"the upstream's answers were not one segment: {segs}"
    assert sorted(int(x, 0) for x in segs[0][0].split(",")) == [qid, qid + 1], segs
    res_ns = where["resolver"]
    sport = outs[0]["sport"]
    for i, name in enumerate(names):
        rows = trace.wait_rows(by(res_ns, id_raw=qid + i, transport="tcp"), 2)
        qs = [r for r in rows if r["qr"] == "Q"]
        rs = [r for r in rows if r["qr"] == "R"]
        assert len(qs) == 1 and len(rs) == 1, rows
        resolver_ep = ep("198.18.100.1", sport)
        check(qs[0], pkt_type="OUTGOING", src=resolver_ep, dst=UPSTREAM_NS, name=name, nameserver=UPSTREAM_NS)
        check(rs[0], pkt_type="HOST", src=UPSTREAM_NS, dst=resolver_ep, name=name, rcode="NOERROR")
        check(rs[0], addresses=outs[i]["answers"], ifindex=where["resolver_up_if"], unanswered=False)
        assert rs[0]["latency_ns_raw"] > 0
    r0, r1 = (trace.wait_rows(by(res_ns, id_raw=qid + i, qr="R"), 1)[0] for i in (0, 1))
    assert r0["timestamp_raw"] == r1["timestamp_raw"], "one segment: one kernel timestamp"


def test_truncated_udp_then_tcp_retry(
    lab: Lab, trace: Trace, where: dict[str, int], dnsmasq: Dnsmasq
) -> None:
    qid = new_id()
    name = f"x{qid}.tc.lab."
    udp, tcp = lab.query("client", "--tcp-fallback", "--id", str(qid), name, server=dnsmasq.v4)
    assert udp["tc"] and not tcp["tc"], (udp, tcp)
    uq, ur = client_pair(trace, where, qid, "udp")
    expect_client_rows(uq, ur, udp, where, dnsmasq.v4, "udp")
    check(ur, tc=True, num_answers=0, addresses=[], rcode="NOERROR")
    tq, tr = client_pair(trace, where, qid, "tcp")
    expect_client_rows(tq, tr, tcp, where, dnsmasq.v4, "tcp")
    check(tr, tc=False, addresses=[addresses_for(name)[0]])
    assert ur["timestamp_raw"] < tq["timestamp_raw"]


# --- unanswered ------------------------------------------------------------------------------


def test_never_answered_is_reported_after_the_timeout_and_not_before(
    lab: Lab, trace: Trace, where: dict[str, int], dnsmasq: Dnsmasq
) -> None:
    qid = new_id()
    name = f"n{qid}.never.lab."
    (out,) = lab.query("client", "--timeout", "2", "--id", str(qid), name, server=dnsmasq.v4)
    assert out["error"] == "timeout"
    deadline = time.monotonic() + 3
    seen: list[tuple[int, Row]] = []
    while time.monotonic() < deadline and len([r for _, r in seen if r["unanswered"]]) < 3:
        seen = [(t, r) for t, r in trace.rows() if r["name"] == name]
        time.sleep(0.05)
    mine = [(t, r) for t, r in seen if r["netns_id"] == where["client"]]
    assert [r["unanswered"] for _, r in mine] == [False, True], mine
    (_, q), (arrived, u) = mine
    check(u, qr="Q", pkt_type="OUTGOING", id_raw=qid, name=name, unanswered=True, rcode="", rcode_raw=None)
    check(u, latency_ns=">1s", latency_ns_raw=int(TIMEOUT_S * 1e9), timestamp_raw=q["timestamp_raw"])
    check(u, src=q["src"], dst=q["dst"], nameserver=ep(dnsmasq.v4, 53), ifindex=where["client_if"])
    waited = (arrived - q["timestamp_raw"]) / 1e9
    assert TIMEOUT_S <= waited < TIMEOUT_S + 0.5, f"unanswered row printed {waited:.3f} s after the query"
    # the resolver's netns: the client's query (HOST) and its own upstream query, both unanswered
    res_rows = [r for _, r in seen if r["netns_id"] == where["resolver"] and r["unanswered"]]
    kinds = sorted((r["pkt_type"], r["nameserver"]) for r in res_rows)
    assert kinds == [("HOST", ep(dnsmasq.v4, 53)), ("OUTGOING", UPSTREAM_NS)], res_rows
    assert not [r for _, r in seen if r["qr"] == "R"]


# --- namespaces come and go -----------------------------------------------------------------

PROBE = """
import socket, struct, sys, time, json
server, t_end = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
name = sys.argv[3].encode()
qname = b"".join(bytes([len(p)]) + p for p in name.rstrip(b".").split(b".")) + b"\\0"
i = 0
while time.time() < t_end:
    i += 1
    s.sendto(struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0) + qname + b"\\0\\1\\0\\1", (server, 53))
    print(json.dumps({"id": i, "sent_ns": time.time_ns()}), flush=True)
    time.sleep(0.05)
"""


def test_namespace_created_after_start_is_captured_within_2s_and_its_deletion_is_clean(
    lab: Lab, where: dict[str, int], dnsmasq: Dnsmasq
) -> None:
    tag = f"{lab.prefix}-late"
    # every namespace of the machine is attached; only our names are printed
    t = Trace(["-o", "json", "--timeout", "1s", "--filter", f"name~{tag}"], lab.tmp)
    c2 = None
    try:
        t.wait_ready()
        t0 = time.time_ns()
        c2 = lab.add_client()
        ino = os.stat(c2.ns.path).st_ino
        # probe: a query every 50 ms from the moment the namespace is usable until t0 + 3 s
        probe = lab.exec(
            c2.name,
            [sys.executable, "-c", PROBE, c2.resolver_v4, str(t0 / 1e9 + 3), f"probe.{tag}.ok.lab."],
            timeout=30,
        )
        sent = {d["id"]: d["sent_ns"] for d in map(json.loads, probe.stdout.splitlines())}
        rows = t.wait_rows(by(ino, name=f"probe.{tag}.ok.lab."), len(sent), 3)
        seen = sorted(r["id_raw"] for r in rows if r["qr"] == "Q")
        assert seen, f"nothing captured in the new namespace {ino}"
        first = (sent[seen[0]] - t0) / 1e9
        after_2s = [i for i, ns in sent.items() if ns - t0 >= 2e9]
        print(f"new netns: first query captured was sent {first:.3f} s after creation started")
        assert after_2s and set(after_2s) <= set(seen), (first, after_2s, seen)
        # and a real exchange with the resolver, now listening on the new link too
        dnsmasq.restart()
        qid = new_id()
        (out,) = lab.query(c2.name, "--id", str(qid), f"q.{tag}.ok.lab.", server=c2.resolver_v4)
        pair = t.wait_rows(by(ino, id_raw=qid), 2)
        assert sorted(r["pkt_type"] for r in pair) == ["HOST", "OUTGOING"], pair
        check(next(r for r in pair if r["qr"] == "R"), addresses=out["answers"], rcode="NOERROR")
        lab.remove_client(c2.name)
        c2 = None
        time.sleep(2.5)  # at least two rescans after the namespace went away
        assert t.proc.poll() is None, t.stderr()
    finally:
        if c2 is not None:
            lab.remove_client(c2.name)
        rc, err = t.stop(signal.SIGTERM)
        dnsmasq.restart()
    assert_clean_exit(rc, err)


# --- output options ----------------------------------------------------------------------------


def test_filter_fields_and_aligned_columns_on_live_rows(
    lab: Lab, where: dict[str, int], dnsmasq: Dnsmasq
) -> None:
    fields = "src,dst,qr,qtype,name,rcode,latency_ns,addresses"
    t = Trace(
        [
            "-o",
            "columns",
            "--fields",
            fields,
            "--filter",
            "qr==R,rcode!=NOERROR",
            "--netns",
            lab.client.ns.path,
        ],
        lab.tmp,
        json_rows=False,
    )
    try:
        t.wait_ready()
        qid = new_id()
        names = [f"f{qid}.ok.lab.", f"f{qid}.nx.lab.", f"f{qid}.servfail.lab."]
        lab.query("client", "--id", str(qid), *names, server=dnsmasq.v4)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(t.lines) < 3:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        rc, err = t.stop(signal.SIGINT)
    assert_clean_exit(rc, err)
    lines = [line for _, line in t.lines]
    assert len(lines) == 3, lines  # header + the two failed responses; no queries, no NOERROR
    header, *rows = lines
    assert header.split() == [f.upper() for f in fields.split(",")], header
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    for row in rows:
        for s in starts[1:]:
            assert s > len(row) or row[s - 1] == " ", f"column boundary at {s} not aligned:\n{header}\n{row}"
    assert "NXDOMAIN" in rows[0] and "SERVFAIL" in rows[1], rows
    assert [row.split()[2] for row in rows] == ["R", "R"]
    assert all(f"f{qid}." in row for row in rows)


# --- the shared trace stops cleanly -----------------------------------------------------------


def test_sigterm_ends_the_trace_with_exit_0_and_the_summary(trace: Trace) -> None:
    rows = trace.rows()
    rc, err = trace.stop(signal.SIGTERM)
    summary = assert_clean_exit(rc, err)
    packets, lost, undecodable = (int(summary.group(i)) for i in (1, 2, 3))
    assert lost == 0 and undecodable == 0, err
    assert packets > 0 and len(rows) > 0
