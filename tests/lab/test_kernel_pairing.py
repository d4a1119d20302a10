"""Kernel pairing (DNSOTEL_PAIRING=kernel) against user-space pairing, on the same packets.

Two ``EbpfCapture`` instances run side by side on the same namespaces (the lab's client
and resolver): one compiled as today, feeding ``Engine`` (pairing.py), one compiled with
``-DKERNEL_PAIRING``, feeding ``KernelPairedEngine``. Each scenario's traffic is seen by
both; the exchanges both report must be the same: keys, roles, addresses, ifindex and
pkt_type of both packets, rcodes, answers, retransmission counts and times, unanswered
timeouts, unmatched responses. Timestamps: each socket's filter stamps the packet itself,
microseconds apart, so times are compared within ``TS_SLACK_NS`` (the largest difference
seen is printed).

What the resolution tracker is fed must match too: every query's first sighting reaches
``on_query`` in both modes (in kernel mode from the QUERY_NOTICE records of server-side
queries, and just before the exchange for client-side ones), and every exchange's query
is the very packet object ``on_query`` got.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from exporter.records import DnsPacket, Exchange
from tests.conftest import require, require_root, require_tool
from tests.lab.lab import Lab

pytestmark = pytest.mark.lab

TIMEOUT_NS = 1_000_000_000
TS_SLACK_NS = 200_000  # two sockets' filters stamp one packet this close (measured: a few µs)


@dataclass
class Recorder:
    """A PairSink keeping what it was told, in comparable form."""

    exchanges: list[dict[str, Any]] = field(default_factory=list)
    unmatched: list[tuple[Any, ...]] = field(default_factory=list)
    queries: list[tuple[Any, ...]] = field(default_factory=list)  # first sightings: key
    announced: dict[int, DnsPacket] = field(default_factory=dict)  # id -> packet given to on_query

    def on_query(self, pkt: DnsPacket, role: str, retransmit: bool) -> None:
        if retransmit:
            return
        m, q = pkt.meta, pkt.msg.question
        self.queries.append((role, m.netns, m.transport, m.src, m.sport, pkt.msg.id, q.name if q else None))
        self.announced[id(pkt)] = pkt

    def _exchange(self, ex: Exchange) -> None:
        d = describe(ex)
        d["announced"] = ex.query is not None and self.announced.pop(id(ex.query), None) is ex.query
        self.exchanges.append(d)

    def on_response(self, ex: Exchange) -> None:
        self._exchange(ex)

    def on_unanswered(self, ex: Exchange) -> None:
        self._exchange(ex)

    def on_unmatched(self, pkt: DnsPacket, role: str) -> None:
        m, q = pkt.meta, pkt.msg.question
        self.unmatched.append(
            (role, m.netns, m.transport, m.src, m.sport, m.dst, m.dport, pkt.msg.id, q.name if q else None)
        )


def describe(ex: Exchange) -> dict[str, Any]:
    q = ex.query
    assert q is not None
    qm, msg = q.meta, q.msg
    qu = msg.question
    d: dict[str, Any] = {
        "key": (ex.role, qm.netns, qm.transport, qm.src, qm.sport, msg.id, qu.name if qu else None),
        "query": (qm.dst, qm.dport, qm.ifindex, qm.pkt_type, qm.ipv6, qu.qtype if qu else None, msg.rd),
        "q_ts": qm.ts_ns,
        "retransmits": ex.retransmits,
        "retransmit_ts": ex.retransmit_ts_ns,
        "timeout_ns": ex.timeout_ns,
        "response": None,
        "r_ts": None,
    }
    if ex.response is not None:
        rm, r = ex.response.meta, ex.response.msg
        d["response"] = (
            rm.src,
            rm.sport,
            rm.dst,
            rm.dport,
            rm.ifindex,
            rm.pkt_type,
            r.rcode,
            r.tc,
            r.addresses,
            r.cnames,
        )
        d["r_ts"] = rm.ts_ns
    return d


class Pair:
    """The two captures and engines, attached to the same namespaces."""

    def __init__(self) -> None:
        from exporter.capture.ebpf import CaptureError, EbpfCapture
        from exporter.kpairing import KernelPairedEngine
        from exporter.pipeline import Engine

        self.urec, self.krec = Recorder(), Recorder()
        self.uengine = Engine([self.urec], timeout_ns=TIMEOUT_NS)
        self.kengine = KernelPairedEngine([self.krec], timeout_ns=TIMEOUT_NS, scan_every_ns=50_000_000)
        try:
            self.ucap = EbpfCapture(self.uengine.on_segment)
            self.kcap = EbpfCapture(
                self.kengine.on_segment,
                on_paired=self.kengine.on_paired,
                wall_offset_ns=self.ucap.wall_offset_ns,
            )
        except CaptureError as exc:
            require(False, f"eBPF capture cannot start here: {exc}")
            raise
        self.kengine.bind(self.kcap)
        self.max_ts_diff = 0

    def attach(self, path: str, inode: int) -> None:
        # kernel first: user space sees every packet the kernel one does (none before the attach)
        self.kcap.attach(path, inode)
        self.ucap.attach(path, inode)

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.ucap.poll(10)
            self.kcap.poll(10)
            now = time.time_ns()
            self.uengine.advance(now)
            self.kengine.advance(now)

    def reset(self) -> None:
        self.pump(TIMEOUT_NS / 1e9 + 0.4)  # everything earlier: paired or expired
        for rec in (self.urec, self.krec):
            rec.exchanges.clear()
            rec.unmatched.clear()
            rec.queries.clear()
            rec.announced.clear()

    def close(self) -> None:
        self.ucap.close()
        self.kcap.close()


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Lab, Any, Pair]]:
    require_root()
    require_tool("ip", "/usr/sbin/dnsmasq")
    lab = Lab().start()
    pair: Pair | None = None
    try:
        lab.start_upstream()
        res = lab.start_dnsmasq(cache=False)
        pair = Pair()
        pair.attach(lab.client.ns.path, lab.client.ns.inode)
        pair.attach(lab.resolver.path, lab.resolver.inode)
        yield lab, res, pair
    finally:
        if pair is not None:
            pair.close()
        lab.close()


def run_and_compare(pair: Pair, traffic: Callable[[], None], *, wait: float = 1.6) -> list[dict[str, Any]]:
    """Run ``traffic``, let both sides pair and expire, assert they reported the same."""
    pair.reset()
    traffic()
    pair.pump(wait)
    u = sorted(pair.urec.exchanges, key=lambda d: (repr(d["key"]), d["q_ts"]))
    k = sorted(pair.krec.exchanges, key=lambda d: (repr(d["key"]), d["q_ts"]))
    assert [d["key"] for d in k] == [d["key"] for d in u]
    for a, b in zip(u, k, strict=True):
        for f in ("query", "response", "retransmits", "timeout_ns"):
            if f == "timeout_ns" and a["timeout_ns"] != TIMEOUT_NS:  # superseded: time waited
                assert abs(a[f] - b[f]) <= TS_SLACK_NS, (f, a, b)
                continue
            assert a[f] == b[f], (f, a, b)
        for f in ("q_ts", "r_ts"):
            if a[f] is None:
                assert b[f] is None
                continue
            pair.max_ts_diff = max(pair.max_ts_diff, abs(a[f] - b[f]))
            assert abs(a[f] - b[f]) <= TS_SLACK_NS, (f, a, b)
        # the kernel keeps the times of the first 4 retransmissions (the count is exact)
        assert len(b["retransmit_ts"]) == min(4, len(a["retransmit_ts"]))
        for x, y in zip(a["retransmit_ts"][:4], b["retransmit_ts"], strict=True):
            assert abs(x - y) <= TS_SLACK_NS
    assert sorted(pair.krec.unmatched, key=repr) == sorted(pair.urec.unmatched, key=repr)
    # the tracker's view: the same first sightings, and each exchange carries the packet it saw
    assert sorted(pair.krec.queries, key=repr) == sorted(pair.urec.queries, key=repr)
    assert all(d["announced"] for d in u), [d for d in u if not d["announced"]]
    assert all(d["announced"] for d in k), [d for d in k if not d["announced"]]
    us, ks = pair.uengine.pairing_stats(), pair.kengine.pairing_stats()
    assert ks.pending == 0, ks
    assert us.pending == 0, us
    print(f"{len(u)} exchanges, {len(pair.urec.unmatched)} unmatched, max ts diff {pair.max_ts_diff} ns")
    return u


def kinds(exs: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in exs:
        k = "unanswered" if d["response"] is None else f"rcode{d['response'][6]}"
        out[k] = out.get(k, 0) + 1
    return out


def test_resolver_scenarios_v4(env: tuple[Lab, Any, Pair]) -> None:
    lab, res, pair = env
    names = ["a.ok.lab.", "b.nx.lab.", "c.servfail.lab.", "d.refused.lab.", "e.delay-150ms.ok.lab."]
    names += ["f.cname.lab.", "g.many.lab."]

    def traffic() -> None:
        lab.query("client", *names, server=res.v4)
        lab.query("client", "--tcp-fallback", "--no-edns", "h.tc.lab.", server=res.v4)

    exs = run_and_compare(pair, traffic)
    # client side and resolver side (server role, and client role toward the upstream)
    assert len(exs) >= 2 * len(names)
    got = kinds(exs)
    assert got.get("rcode3", 0) >= 2 and got.get("rcode2", 0) >= 1 and got.get("rcode5", 0) >= 1, got
    transports = {d["key"][2] for d in exs}
    assert transports == {6, 17}, transports  # the tc fallback went over TCP (user path in both)


def test_resolver_scenarios_v6(env: tuple[Lab, Any, Pair]) -> None:
    lab, res, pair = env

    def traffic() -> None:
        lab.query("client", "a6.ok.lab.", "AAAA", "b6.nx.lab.", "c6.many.lab.", "AAAA", server=res.v6)

    exs = run_and_compare(pair, traffic)
    assert sum(1 for d in exs if d["query"][4]) >= 6  # client and server side (upstream leg is v4)


def test_never_answered_and_upstream_retransmissions(env: tuple[Lab, Any, Pair]) -> None:
    lab, res, pair = env

    def traffic() -> None:
        lab.query("client", "--timeout", "0.3", "x.never.lab.", "y.delay-50ms.ok.lab.", server=res.v4)

    exs = run_and_compare(pair, traffic, wait=2.0)
    assert kinds(exs).get("unanswered", 0) >= 2, exs  # client side and resolver side


# A client and a server on the client namespace's loopback (each packet seen OUTGOING, then
# HOST: a client-role and a server-role exchange), scripted byte by byte.
SCRIPT = r"""
import socket, struct, sys, time
fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
host = "::1" if fam == socket.AF_INET6 else "127.0.0.1"
srv = socket.socket(fam, socket.SOCK_DGRAM); srv.bind((host, 53)); srv.settimeout(2)
cli = socket.socket(fam, socket.SOCK_DGRAM); cli.bind((host, 0))

def name(n):
    return b"".join(bytes([len(p)]) + p.encode() for p in n.rstrip(".").split(".")) + b"\0"

def msg(qid, flags, q, qtype=1, an=b"", ancount=0):
    qd = 1 if q is not None else 0
    body = (name(q) + struct.pack(">HH", qtype, 1)) if q is not None else b""
    return struct.pack(">HHHHHH", qid, flags, qd, ancount, 0, 0) + body + an

def ask(qid, q, qtype=1):
    cli.sendto(msg(qid, 0x0100, q, qtype), (host, 53))

def answer(qid, q, rcode=0, qtype=1):
    data, peer = srv.recvfrom(512)
    srv.sendto(msg(qid, 0x8180 | rcode, q, qtype), cli.getsockname()[:2])
    return data

def pause():
    time.sleep(0.02)

# retransmission: the same query twice, one answer
ask(100, "retx.test."); pause(); ask(100, "retx.test."); pause()
srv.recvfrom(512); answer(100, "retx.test."); pause()
# an answer to another question (unmatched), then the right one
ask(101, "um.test."); pause(); answer(101, "other.test."); pause()
srv.sendto(msg(101, 0x8180, "um.test."), cli.getsockname()[:2]); pause()
# superseded: same port and id, new question
ask(102, "old.test."); pause(); ask(102, "new.test."); pause()
srv.recvfrom(512); answer(102, "new.test."); pause()
# an error answer without a question pairs on the key
ask(103, "noq.test."); pause(); srv.recvfrom(512)
srv.sendto(msg(103, 0x8181, None), cli.getsockname()[:2]); pause()
# case differs between query and answer
ask(104, "MiXeD.Test."); pause(); answer(104, "mixed.test."); pause()
# another type, same name: different question (unmatched), then the right one
ask(105, "t.test.", 28); pause(); answer(105, "t.test.", qtype=1); pause()
srv.sendto(msg(105, 0x8180, "t.test.", 28), cli.getsockname()[:2]); pause()
# never answered
ask(106, "never.test."); pause()
# a response nobody asked for
srv.sendto(msg(107, 0x8183, "orphan.test."), cli.getsockname()[:2]); pause()
# retransmitted 6 times (more than the kernel keeps times of), then answered
for _ in range(7):
    ask(108, "many-retx.test."); time.sleep(0.005)
answer(108, "many-retx.test.")
"""


@pytest.mark.parametrize("family", ["4", "6"])
def test_scripted_exchanges(env: tuple[Lab, Any, Pair], family: str) -> None:
    lab, _res, pair = env
    import sys

    def traffic() -> None:
        lab.exec("client", [sys.executable, "-c", SCRIPT, family], timeout=30)

    exs = run_and_compare(pair, traffic)
    by_name: dict[tuple[str, str], dict[str, Any]] = {(d["key"][6], d["key"][0]): d for d in exs}
    for role in ("client", "server"):
        assert by_name[("retx.test.", role)]["retransmits"] == 1
        assert by_name[("um.test.", role)]["response"] is not None
        assert by_name[("old.test.", role)]["response"] is None
        assert by_name[("old.test.", role)]["timeout_ns"] < TIMEOUT_NS
        assert by_name[("new.test.", role)]["response"] is not None
        assert by_name[("noq.test.", role)]["response"][6] == 1
        assert by_name[("mixed.test.", role)]["response"] is not None
        assert by_name[("never.test.", role)]["response"] is None
        assert by_name[("many-retx.test.", role)]["retransmits"] == 6
    assert len(pair.urec.unmatched) == 2 * 3  # other.test., t.test. A, orphan.test.; both roles
    k = pair.kcap.counters()
    assert k["kernel_paired"] > 0 and k["kernel_retransmits"] > 0 and k["kernel_superseded"] > 0, k
    assert k["kernel_notices"] > 0, k


def test_kernel_pending_table_full_falls_back_to_user_space(env: tuple[Lab, Any, Pair]) -> None:
    """A tiny kernel table: the queries that do not fit pair in user space, nothing is lost."""
    lab, res, _pair = env
    from exporter.capture.ebpf import EbpfCapture
    from exporter.kpairing import KernelPairedEngine

    rec = Recorder()
    eng = KernelPairedEngine([rec], timeout_ns=TIMEOUT_NS)
    cap = EbpfCapture(eng.on_segment, on_paired=eng.on_paired, max_pending=2)
    eng.bind(cap)
    try:
        cap.attach(lab.client.ns.path, lab.client.ns.inode)
        names = [f"n{i}.delay-100ms.ok.lab." for i in range(6)]
        argv = [*lab.python("tests.lab.client", "--server", res.v4, *names)]
        procs = [lab.spawn("client", argv, tag=f"par{i}") for i in range(3)]  # in parallel
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(p.alive for p in procs):
            cap.poll(20)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            cap.poll(20)
            eng.advance(time.time_ns())
        answered = [d for d in rec.exchanges if d["response"] is not None]
        assert len(answered) == 18, rec.exchanges
        assert cap.counters()["kernel_table_full"] > 0
        assert not rec.unmatched
    finally:
        cap.close()


def test_refused_ring_buffer_probe() -> None:
    require_root()
    from exporter.capture.ebpf import CaptureError, probe_ringbuf

    probe_ringbuf(1 << 20)  # 1 MiB: accepted
    with pytest.raises(CaptureError, match="the kernel refused a 12 KiB ring buffer"):
        probe_ringbuf(3 * 4096)  # not a power of two: EINVAL
