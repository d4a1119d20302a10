"""The lab itself: topology, scriptable upstream, real resolvers, client, teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab.conftest import require_lab
from tests.lab.lab import ETC_NETNS, REPO_ROOT, Dnsmasq, Lab, Resolver, Unbound
from tests.lab.upstream import CNAME_TARGET, addresses_for, many_addresses
from tests.wait import wait_for

pytestmark = pytest.mark.lab


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _pid_alive(pid: int, argv0: str) -> bool:
    """The PID exists, is not a zombie, and runs ``argv0`` (or ``ip netns exec`` still)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and (argv0.encode() in cmdline or cmdline.startswith(b"ip\0netns\0exec"))


def _by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{r['name']}/{r['type']}/{r['transport']}": r for r in rows}


# --- topology ---------------------------------------------------------------------------


def test_topology(lab: Lab) -> None:
    names = _netns_names()
    for ns in (lab.client.ns, lab.resolver, lab.upstream):
        assert ns.name in names and ns.name.startswith(lab.prefix)
        assert ns.path == f"/var/run/netns/{ns.name}"
    inodes = {lab.client.ns.inode, lab.resolver.inode, lab.upstream.inode}
    assert len(inodes) == 3 and os.stat("/proc/self/ns/net").st_ino not in inodes
    addrs = json.loads(lab.exec("resolver", ["ip", "-j", "addr"]).stdout)
    have = {a["local"] for link in addrs for a in link["addr_info"]}
    assert {"198.18.1.1", "198.18.1.3", "fd00:1::1", "fd00:1::3", "198.18.100.1", "fd00:100::1"} <= have
    for role in ("client", "resolver", "upstream"):
        links = json.loads(lab.exec(role, ["ip", "-j", "link"]).stdout)
        assert any(link["ifname"] == "lo" and "UP" in link["flags"] for link in links)
        for family in ("-4", "-6"):
            routes = lab.exec(role, ["ip", family, "route", "show", "default"]).stdout
            assert routes.strip() == "", f"no default route in {role}"
        assert all(len(link["ifname"]) <= 15 for link in links)
    # The client reaches only the resolver; the upstream is not routable from it.
    ping = lab.query("client", "a.ok.lab.", "--timeout", "0.3", server=lab.upstream_v4, timeout=10)
    assert ping == [] or ping[0]["error"] is not None


# --- the upstream, queried directly from the resolver namespace ------------------------


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_upstream_behaviours_direct(lab: Lab, family: str) -> None:
    server = lab.upstream_v4 if family == "v4" else lab.upstream_v6
    rows = lab.query(
        "resolver",
        "--timeout",
        "1",
        "a.ok.lab.",
        "a.ok.lab.",
        "AAAA",
        "ok.lab.",
        "many.lab.",
        "many.lab.",
        "AAAA",
        "nx.lab.",
        "deep.name.nx.lab.",
        "servfail.lab.",
        "refused.lab.",
        "cname.lab.",
        "never.lab.",
        "tc.lab.",
        "other.lab.",
        "example.com.",
        "a.ok.lab.",
        "MX",
        server=server,
    )
    assert len(rows) == 15
    r = rows
    assert (r[0]["rcode"], r[0]["answers"], r[0]["aa"]) == ("NOERROR", [addresses_for("a.ok.lab.")[0]], True)
    assert r[1]["answers"] == [addresses_for("a.ok.lab.")[1]] and r[1]["ttl"] == 300
    assert r[2]["answers"] == [addresses_for("ok.lab")[0]]
    assert sorted(r[3]["answers"]) == sorted(many_addresses("A")) and r[3]["num_answers"] == 40
    assert sorted(r[4]["answers"]) == sorted(many_addresses("AAAA"))  # 1.2 kB: needs the client's EDNS
    assert [x["rcode"] for x in r[5:9]] == ["NXDOMAIN", "NXDOMAIN", "SERVFAIL", "REFUSED"]
    assert r[9]["cnames"] == [CNAME_TARGET] and r[9]["answers"] == [addresses_for(CNAME_TARGET)[0]]
    assert r[9]["num_answers"] == 2
    assert r[10]["error"] == "timeout" and r[10]["rcode"] is None
    assert r[11]["tc"] is True and r[11]["answers"] == [] and r[11]["rcode"] == "NOERROR"
    assert r[12]["rcode"] == "NXDOMAIN"
    assert r[13]["rcode"] == "REFUSED"
    assert r[14]["rcode"] == "NOERROR" and r[14]["num_answers"] == 0  # NODATA
    ttl = lab.query("resolver", "t.ttl-7.ok.lab.", server=server)[0]
    assert ttl["ttl"] == 7
    # Without EDNS the 40-record AAAA answer does not fit 512 bytes: truncated, TCP has it all.
    small = lab.query("resolver", "--no-edns", "--tcp-fallback", "many.lab.", "AAAA", server=server)
    assert small[0]["tc"] is True and small[0]["num_answers"] == 0
    assert small[1]["transport"] == "tcp" and small[1]["num_answers"] == 40
    seen = [q for q in lab.upstream_queries() if q["name"] == "never.lab."]
    assert seen and seen[-1]["action"] == "never"


def test_upstream_fixed_id_sport_and_tcp(lab: Lab) -> None:
    rows = lab.query(
        "resolver", "--id", "4660", "--sport", "40053", "a.ok.lab.", "b.ok.lab.", server=lab.upstream_v4
    )
    assert [(r["id"], r["sport"]) for r in rows] == [(4660, 40053), (4661, 40053)]
    log = {(q["id"], q["sport"], q["transport"]) for q in lab.upstream_queries()}
    assert (4660, 40053, "udp") in log and (4661, 40053, "udp") in log
    rows = lab.query(
        "resolver", "--tcp", "--id", "7", "--sport", "40054", "c.ok.lab.", server=lab.upstream_v6
    )
    assert rows[0]["transport"] == "tcp" and rows[0]["id"] == 7 and rows[0]["sport"] == 40054
    assert rows[0]["answers"] == [addresses_for("c.ok.lab.")[0]]


def test_upstream_survives_malformed_queries(lab: Lab) -> None:
    script = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(2)\n"
        "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.settimeout(2)\n"
        "loop = b'\\x12\\x34\\x01\\x00\\x00\\x01'+b'\\x00'*6+b'\\xc0\\x0c\\x00\\x01'\n"  # pointer loop
        "for p in [b'', b'\\x00', loop, b'\\xff'*40]:\n"
        "    u.sendto(p, (sys.argv[1], 53))\n"
        "u.sendto(b'\\x12\\x34\\x01\\x00\\x00\\x01'+b'\\x00'*6+b'\\x3f', (sys.argv[1], 53))\n"
        "print(u.recv(100)[3] & 15)\n"  # FORMERR = 1
        "s.connect((sys.argv[1], 53)); s.sendall(b'\\x00\\x05hello\\x00\\x02\\xff'); s.close()\n"
    )
    out = lab.exec("resolver", [sys.executable, "-c", script, lab.upstream_v4]).stdout
    assert out.strip().splitlines()[-1] == "1"
    assert lab.upstream_proc is not None and lab.upstream_proc.alive()
    assert lab.query("resolver", "still.ok.lab.", server=lab.upstream_v4)[0]["rcode"] == "NOERROR"


def test_tcp_pipelined_responses_share_one_segment(lab: Lab) -> None:
    require_lab()
    pcap = lab.tmp / "pipeline.pcap"
    cap = lab.spawn(
        "resolver",
        [
            "tcpdump",
            "-i",
            "any",
            "-n",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-w",
            str(pcap),
            "tcp port 53",
        ],
        tag="tcpdump",
    )
    try:
        wait_for(lambda: "listening on" in cap.output(), 10, cap.output, 0.05)
        rows = lab.query(
            "resolver",
            "--pipeline",
            "--id",
            "100",
            "p1.ok.lab.",
            "p2.delay-30ms.ok.lab.",
            server=lab.upstream_v4,
        )
        assert [r["id"] for r in rows] == [100, 101]
        assert [r["rcode"] for r in rows] == ["NOERROR", "NOERROR"]
        time.sleep(0.3)
    finally:
        cap.send_signal(signal.SIGINT)
        cap.popen.wait(5)
    fields = subprocess.run(
        [
            "tshark",
            "-n",
            "-r",
            str(pcap),
            "-Y",
            "dns",
            "-T",
            "fields",
            "-e",
            "dns.flags.response",
            "-e",
            "dns.id",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    frames = [line.split("\t") for line in fields if line.strip()]
    # One frame carries both queries, one frame carries both responses.
    assert ["0,0", "0x0064,0x0065"] in frames, frames
    assert ["1,1", "0x0064,0x0065"] in frames, frames


# --- through the real resolvers --------------------------------------------------------


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_behaviours_through_resolver(lab: Lab, resolver: Resolver, family: str) -> None:
    server = resolver.v4 if family == "v4" else resolver.v6
    tag = f"{resolver.kind}-{family}"
    rows = lab.query(
        "client",
        "--timeout",
        "3",
        f"{tag}.ok.lab.",
        f"{tag}.ok.lab.",
        "AAAA",
        "many.lab.",
        f"{tag}.nx.lab.",
        f"{tag}.servfail.lab.",
        f"{tag}.refused.lab.",
        f"{tag}.cname.lab.",
        "example.org.",
        server=server,
    )
    v4, v6 = addresses_for(f"{tag}.ok.lab.")
    assert [r["rcode"] for r in rows[:4]] == ["NOERROR", "NOERROR", "NOERROR", "NXDOMAIN"]
    assert rows[0]["answers"] == [v4] and rows[1]["answers"] == [v6]
    assert rows[0]["ra"] is True and rows[0]["rd"] is True
    assert sorted(rows[2]["answers"]) == sorted(many_addresses("A"))
    assert rows[4]["rcode"] == "SERVFAIL"
    # dnsmasq passes REFUSED through; unbound treats a refusing forwarder as failed.
    assert rows[5]["rcode"] == ("REFUSED" if isinstance(resolver, Dnsmasq) else "SERVFAIL")
    assert rows[6]["cnames"] == [CNAME_TARGET] and rows[6]["answers"] == [addresses_for(CNAME_TARGET)[0]]
    assert (
        rows[7]["rcode"] == "REFUSED"
        if isinstance(resolver, Dnsmasq)
        else rows[7]["rcode"]
        in (
            "REFUSED",
            "SERVFAIL",
        )
    )
    got = {q["name"] for q in lab.upstream_queries() if q["src"] in (lab.upstream_link.addr_b_v4,)}
    assert f"{tag}.ok.lab." in got and f"{tag}.nx.lab." in got  # really forwarded (no cache)


def test_delay_is_observed(lab: Lab, resolver: Resolver) -> None:
    resolver.clear_cache()
    rows = lab.query(
        "client",
        "--timeout",
        "3",
        f"{resolver.kind}.delay-150ms.lab.",
        f"{resolver.kind}.delay-80ms.nx.lab.",
        server=resolver.v4,
    )
    assert rows[0]["rcode"] == "NOERROR" and rows[1]["rcode"] == "NXDOMAIN"
    assert 150 <= rows[0]["elapsed_ms"] < 150 + 250, rows[0]
    assert 80 <= rows[1]["elapsed_ms"] < 80 + 250, rows[1]


def test_truncation_then_tcp(lab: Lab, resolver: Resolver) -> None:
    name = f"{resolver.kind}.tc.lab."
    rows = lab.query("client", "--tcp-fallback", name, server=resolver.v6)
    full = [addresses_for(name)[0]]
    if isinstance(resolver, Dnsmasq):
        # dnsmasq relays the truncated answer; the client retries over TCP, dnsmasq forwards over TCP.
        assert rows[0]["tc"] is True and rows[0]["answers"] == []
        assert rows[1]["transport"] == "tcp" and rows[1]["answers"] == full
    else:
        # unbound retries upstream over TCP itself and answers the client in full over UDP.
        assert rows[0]["tc"] is False and rows[0]["answers"] == full and len(rows) == 1
    upstream = [(q["transport"], q["action"]) for q in lab.upstream_queries() if q["name"] == name]
    assert ("udp", "truncate") in upstream and ("tcp", "answer") in upstream
    direct = lab.query("client", "--tcp", f"direct-{name}", server=resolver.v4)
    assert direct[0]["answers"] == [addresses_for(f"direct-{name}")[0]]


def test_never_times_out(lab: Lab, resolver: Resolver) -> None:
    resolver.clear_cache()
    try:
        rows = lab.query("client", "--timeout", "1.5", f"{resolver.kind}.never.lab.", server=resolver.v4)
        assert rows[0]["error"] == "timeout" and rows[0]["rcode"] is None
        assert rows[0]["elapsed_ms"] >= 1500
        assert any(q["name"] == f"{resolver.kind}.never.lab." for q in lab.upstream_queries())
    finally:
        resolver.clear_cache()  # unbound marks a silent forwarder down: forget it


def test_system_resolver_search_list(lab: Lab, dnsmasq: Dnsmasq) -> None:
    c = lab.add_client()
    try:
        dnsmasq.restart()
        lab.set_resolv_conf(
            c.name,
            [c.link.addr_b_v4],
            search=["nx.lab.", "ok.lab."],
            options=["ndots:2", "timeout:1", "attempts:1"],
        )
        assert (ETC_NETNS / c.name / "resolv.conf").exists()
        before = len(lab.upstream_queries())
        rows = lab.query(c.name, "--system", "host1", "host1", "AAAA", "gone.nx.lab.")
        assert rows[0]["addresses"] == [addresses_for("host1.ok.lab.")[0]] and rows[0]["error"] is None
        assert rows[1]["addresses"] == [addresses_for("host1.ok.lab.")[1]]
        assert rows[2]["addresses"] == [] and rows[2]["error"] == "EAI_NONAME"
        asked = [(q["name"], q["type"]) for q in lab.upstream_queries()[before:]]
        # ndots:2 and a single-label name: the search list first, in order, then nothing else answers.
        assert asked.index(("host1.nx.lab.", "A")) < asked.index(("host1.ok.lab.", "A"))
    finally:
        lab.remove_client(c.name)
        dnsmasq.restart()
    assert not (ETC_NETNS / c.name).exists()


def test_add_and_remove_clients(lab: Lab, dnsmasq: Dnsmasq) -> None:
    added = lab.add_clients(10)
    try:
        dnsmasq.restart()  # listen on the new links too
        inodes = {c.ns.inode for c in added}
        assert len(inodes) == 10
        for c in added:
            rows = lab.query(c.name, f"{c.name}.ok.lab.", server=c.link.addr_b_v4)
            assert rows[0]["answers"] == [addresses_for(f"{c.name}.ok.lab.")[0]]
            assert any(q["src"] == lab.upstream_link.addr_b_v4 for q in lab.upstream_queries())
        gone = added.pop(1)
        lab.remove_client(gone.name)
        assert gone.name not in _netns_names()
        links = json.loads(lab.exec("resolver", ["ip", "-j", "link"]).stdout)
        assert gone.link.b not in {link["ifname"] for link in links}
        rows = lab.query(added[1].name, "after.ok.lab.", server=added[1].link.addr_b_v6)
        assert rows[0]["rcode"] == "NOERROR"
    finally:
        for c in added:
            lab.remove_client(c.name)
        dnsmasq.restart()


# --- teardown ---------------------------------------------------------------------------


def test_teardown_removes_everything() -> None:
    require_lab()
    with pytest.raises(ZeroDivisionError), Lab() as lab:
        up = lab.start_upstream()
        dm = lab.start_dnsmasq()
        ub = lab.start_unbound()
        extra = lab.add_client()
        lab.set_resolv_conf(extra.name, [extra.resolver_v4])
        sleeper = lab.spawn("client", ["sleep", "300"])
        pids = [(up.pid, "python"), (dm.pid, "dnsmasq"), (ub.pid, "unbound"), (sleeper.pid, "sleep")]
        names = [ns.name for ns in lab.namespaces.values()]
        assert len(names) == 4
        # (between fork and exec a child's cmdline is still the parent's: allow a moment)
        wait_for(lambda: all(_pid_alive(p, a) for p, a in pids), 5, lambda: f"not all running: {pids}", 0.05)
        tmp = lab.tmp
        1 / 0  # noqa: B018 - the test failed: teardown must still happen
    assert not set(names) & _netns_names()
    assert not [p for p, a in pids if _pid_alive(p, a)]
    assert not (ETC_NETNS / extra.name).exists() and not tmp.exists()
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert lab.prefix not in host_links


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_teardown_when_interrupted(sig: signal.Signals) -> None:
    require_lab()
    script = (
        "import sys, time\n"
        "from tests.lab.lab import Lab\n"
        "lab = Lab().start()\n"
        "p = lab.spawn('client', ['sleep', '300'])\n"
        "print(lab.prefix, p.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert proc.stdout is not None
        prefix, pid = proc.stdout.readline().split()
        assert any(n.startswith(prefix) for n in _netns_names())
        proc.send_signal(sig)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not any(n.startswith(prefix) for n in _netns_names())
    assert not _pid_alive(int(pid), "sleep")


def test_unbound_control_socket(lab: Lab, unbound: Unbound) -> None:
    status = unbound.control("status")
    assert "is running" in status
