"""The eBPF capture on the real kernel: real DNS traffic between namespaces this module creates.

Topology (names carry a per-run prefix; removed by name at the end):

    <p>c (client)  veth 198.18.0.1/24, fd00:53::1/64  <-->  <p>s (server) 198.18.0.2, fd00:53::2
                                                            dnsmasq: x.lab -> 198.18.0.9 / fd00::9

One ``EbpfCapture`` (one compiled program) serves every test of the module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporter.netns import NetnsWatcher, discover
from exporter.records import IPPROTO_TCP, IPPROTO_UDP, PACKET_HOST, PACKET_OUTGOING, Segment
from tests.conftest import require, require_root, require_tool

pytestmark = pytest.mark.lab

dns_message = pytest.importorskip("dns.message")

PREFIX = f"dc{os.getpid() % 100000}"
CLIENT, SERVER = f"{PREFIX}c", f"{PREFIX}s"
C4, S4, C6, S6 = "198.18.0.1", "198.18.0.2", "fd00:53::1", "fd00:53::2"
PY = sys.executable


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


def ns_inode(name: str) -> int:
    return os.stat(f"/var/run/netns/{name}").st_ino


def ifindex(ns: str, dev: str) -> int:
    out = sh("ip", "-n", ns, "-j", "link", "show", "dev", dev).stdout
    return int(json.loads(out)[0]["ifindex"])


def in_ns(ns: str, code: str, *args: str) -> str:
    return sh("ip", "netns", "exec", ns, PY, "-c", code, *args).stdout


QUERY = """
import sys, dns.message, dns.query
server, name, qtype, qid, proto = sys.argv[1:6]
q = dns.message.make_query(name, qtype)
q.id = int(qid)
r = (dns.query.tcp if proto == "tcp" else dns.query.udp)(q, server, timeout=2)
print(r.id, r.answer[0][0].address if r.answer else "-")
"""

SEND = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
if len(sys.argv) > 4:
    s.setsockopt(socket.IPPROTO_IPV6, 59, bytes.fromhex(sys.argv[4]))  # IPV6_DSTOPTS
for _ in range(int(sys.argv[3].split("x")[1]) if "x" in sys.argv[3] else 1):
    s.sendto(b"\\x12\\x34" + b"z" * (int(sys.argv[3].split("x")[0]) - 2), (sys.argv[1], int(sys.argv[2])))
"""


def query(server: str, name: str, qtype: str, qid: int, proto: str = "udp") -> str:
    return in_ns(CLIENT, QUERY, server, name, qtype, str(qid), proto).strip()


def send(ns: str, addr: str, port: int, size: int, count: int = 1, dstopts: str | None = None) -> None:
    in_ns(ns, SEND, addr, str(port), f"{size}x{count}", *([dstopts] if dstopts else []))


class Collector:
    def __init__(self) -> None:
        self.segs: list[Segment] = []
        self.cap: object = None

    def __call__(self, seg: Segment) -> None:
        self.segs.append(seg)

    def wait(self, cond: Callable[[list[Segment]], bool], timeout: float = 3.0) -> list[Segment]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.cap.poll(50)  # type: ignore[attr-defined]
            if cond(self.segs):
                return self.segs
        return self.segs

    def drain(self) -> None:
        while self.cap.poll(20):  # type: ignore[attr-defined]
            pass
        self.segs.clear()


def dns_id(seg: Segment) -> int:
    data = seg.payload[2:] if seg.meta.transport == IPPROTO_TCP else seg.payload
    return int.from_bytes(data[:2], "big") if len(data) >= 2 else -1


@pytest.fixture(scope="module")
def topo() -> Iterator[dict[str, int]]:
    require_root()
    require_tool("ip", "/usr/sbin/dnsmasq")
    made: list[str] = []
    dnsmasq: subprocess.Popen[bytes] | None = None
    try:
        for ns in (CLIENT, SERVER):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip",
            "link",
            "add",
            f"{PREFIX}a",
            "netns",
            CLIENT,
            "type",
            "veth",
            "peer",
            f"{PREFIX}b",
            "netns",
            SERVER,
        )
        for ns, dev, a4, a6 in ((CLIENT, f"{PREFIX}a", C4, C6), (SERVER, f"{PREFIX}b", S4, S6)):
            sh("ip", "-n", ns, "addr", "add", f"{a4}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        conf = (
            f"--conf-file=/dev/null --keep-in-foreground --no-resolv --no-hosts --port=53 --bind-interfaces "
            f"--listen-address={S4} --listen-address={S6} "
            "--address=/x.lab/198.18.0.9 --address=/x.lab/fd00::9 "
            f"--pid-file=/tmp/{PREFIX}-dnsmasq.pid --user=root"
        )
        dnsmasq = subprocess.Popen(["ip", "netns", "exec", SERVER, "/usr/sbin/dnsmasq", *conf.split()])
        for _ in range(50):
            if ":53 " in sh("ip", "netns", "exec", SERVER, "ss", "-lnu", check=False).stdout:
                break
            time.sleep(0.1)
        yield {"client": ns_inode(CLIENT), "server": ns_inode(SERVER)}
    finally:
        if dnsmasq is not None:
            dnsmasq.kill()  # ip netns exec execs dnsmasq: this PID is dnsmasq
            dnsmasq.wait(5)
        Path(f"/tmp/{PREFIX}-dnsmasq.pid").unlink(missing_ok=True)
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


def _capture(**kw: object) -> tuple[Collector, object]:
    try:
        from exporter.capture.ebpf import CaptureError, EbpfCapture
    except ImportError as exc:  # pragma: no cover
        require(False, f"capture module: {exc}")
        raise
    col = Collector()
    try:
        cap = EbpfCapture(col, **kw)  # type: ignore[arg-type]
    except CaptureError as exc:
        require(False, f"eBPF capture cannot start here: {exc}")
        raise
    col.cap = cap
    return col, cap


@pytest.fixture(scope="module")
def col(topo: dict[str, int]) -> Iterator[Collector]:
    c, cap = _capture()
    cap.attach(f"/var/run/netns/{CLIENT}", topo["client"])  # type: ignore[attr-defined]
    yield c
    cap.close()  # type: ignore[attr-defined]


@pytest.fixture
def fresh(col: Collector) -> Collector:
    col.drain()
    return col


def _pair(col: Collector, qid: int, netns: int) -> tuple[Segment, Segment]:
    def done(segs: list[Segment]) -> bool:
        return sum(1 for s in segs if dns_id(s) == qid and s.meta.netns == netns) >= 2

    segs = [s for s in col.wait(done) if dns_id(s) == qid and s.meta.netns == netns]
    q = [s for s in segs if s.meta.dport == 53]
    r = [s for s in segs if s.meta.sport == 53]
    assert q and r, f"query/response for id {qid} not captured: {col.segs}"
    return q[0], r[0]


@pytest.mark.parametrize(
    ("server", "client", "qtype", "answer"), [(S4, C4, "A", "198.18.0.9"), (S6, C6, "AAAA", "fd00::9")]
)
def test_udp_query_and_response_seen_in_client_netns(
    fresh: Collector, topo: dict[str, int], server: str, client: str, qtype: str, answer: str
) -> None:
    qid = 0x1200 + len(qtype)
    before = time.time_ns()
    assert query(server, "www.x.lab", qtype, qid) == f"{qid} {answer}"
    after = time.time_ns()
    q, r = _pair(fresh, qid, topo["client"])
    dev = ifindex(CLIENT, f"{PREFIX}a")
    assert (q.meta.pkt_type, r.meta.pkt_type) == (PACKET_OUTGOING, PACKET_HOST)
    assert (q.meta.src, q.meta.dst, q.meta.dport) == (client, server, 53)
    assert (r.meta.src, r.meta.sport, r.meta.dst, r.meta.dport) == (server, 53, client, q.meta.sport)
    assert q.meta.ifindex == r.meta.ifindex == dev
    assert q.meta.transport == r.meta.transport == IPPROTO_UDP
    assert q.meta.ipv6 is r.meta.ipv6 is (":" in server)
    assert before <= q.meta.ts_ns <= r.meta.ts_ns <= after
    qm, rm = dns_message.from_wire(q.payload), dns_message.from_wire(r.payload)
    assert (qm.id, str(qm.question[0].name)) == (qid, "www.x.lab.")
    assert rm.id == qid and rm.answer[0][0].address == answer
    assert q.orig_len == len(q.payload) and r.orig_len == len(r.payload)


def test_tcp_dns_segments_carry_payload_seq_and_flags(fresh: Collector, topo: dict[str, int]) -> None:
    qid = 0x7C01
    assert query(S4, "tcp.x.lab", "A", qid, "tcp") == f"{qid} 198.18.0.9"
    segs = fresh.wait(
        lambda ss: sum(1 for s in ss if dns_id(s) == qid) >= 2 and any(s.tcp_flags & 1 for s in ss)
    )
    tcp = [s for s in segs if s.meta.transport == IPPROTO_TCP and s.meta.netns == topo["client"]]
    syn = [s for s in tcp if s.tcp_flags & 0x02 and s.meta.dport == 53]
    assert syn and syn[0].payload == b"" and syn[0].meta.pkt_type == PACKET_OUTGOING
    q = next(s for s in tcp if s.meta.dport == 53 and s.payload)
    r = next(s for s in tcp if s.meta.sport == 53 and s.payload)
    assert q.tcp_seq == (syn[0].tcp_seq + 1) & 0xFFFFFFFF  # first data byte follows the SYN
    assert q.tcp_flags & 0x10 and r.tcp_flags & 0x10  # ACK
    assert int.from_bytes(q.payload[:2], "big") == len(q.payload) - 2  # the TCP length prefix
    assert dns_message.from_wire(q.payload[2:]).id == qid
    assert dns_message.from_wire(r.payload[2:]).answer[0][0].address == "198.18.0.9"
    assert any(s.tcp_flags & 0x01 for s in tcp)  # FIN seen


def test_two_namespaces_one_program_each_event_names_its_netns(col: Collector, topo: dict[str, int]) -> None:
    cap = col.cap
    cap.attach(f"/var/run/netns/{SERVER}", topo["server"])  # type: ignore[attr-defined]
    try:
        assert cap.attached == {topo["client"], topo["server"]}  # type: ignore[attr-defined]
        col.drain()
        qid = 0x2222
        assert query(S4, "both.x.lab", "A", qid).startswith(str(qid))
        cq, cr = _pair(col, qid, topo["client"])
        sq, sr = _pair(col, qid, topo["server"])
        assert (cq.meta.pkt_type, cr.meta.pkt_type) == (PACKET_OUTGOING, PACKET_HOST)
        assert (sq.meta.pkt_type, sr.meta.pkt_type) == (PACKET_HOST, PACKET_OUTGOING)
        assert sq.meta.ifindex == ifindex(SERVER, f"{PREFIX}b")
        assert sq.payload == cq.payload and sr.payload == cr.payload
        assert cq.meta.ts_ns <= sq.meta.ts_ns <= sr.meta.ts_ns <= cr.meta.ts_ns
        assert {s.meta.netns for s in col.segs} <= {topo["client"], topo["server"]}
    finally:
        cap.detach(topo["server"])  # type: ignore[attr-defined]
    assert cap.attached == {topo["client"]}  # type: ignore[attr-defined]


def test_loopback_and_ipv6_extension_headers(fresh: Collector, topo: dict[str, int]) -> None:
    send(CLIENT, "127.0.0.1", 53, 40)
    send(CLIENT, "::1", 53, 41, dstopts="0000010400000000")  # destination options header, PadN
    segs = fresh.wait(lambda ss: len({(s.meta.ipv6, s.meta.pkt_type) for s in ss}) >= 4)
    lo = {(s.meta.src, s.meta.dst, s.meta.pkt_type, len(s.payload)) for s in segs}
    assert ("127.0.0.1", "127.0.0.1", PACKET_OUTGOING, 40) in lo
    assert ("127.0.0.1", "127.0.0.1", PACKET_HOST, 40) in lo
    assert ("::1", "::1", PACKET_OUTGOING, 41) in lo  # found behind the extension header
    assert all(s.meta.ifindex == 1 for s in segs)


def test_other_ports_are_not_delivered(fresh: Collector) -> None:
    for port in (54, 5353, 8053):
        send(CLIENT, "127.0.0.1", port, 30)
    send(CLIENT, "127.0.0.1", 53, 31)  # a marker that does arrive
    segs = fresh.wait(lambda ss: any(len(s.payload) == 31 for s in ss))
    assert any(len(s.payload) == 31 for s in segs)
    assert {s.meta.dport for s in segs} == {53}


def test_payload_truncated_to_max_payload_and_fragments(fresh: Collector, topo: dict[str, int]) -> None:
    before = fresh.cap.counters()  # type: ignore[attr-defined]
    send(CLIENT, "127.0.0.1", 53, 1000)
    send(CLIENT, S4, 53, 3000)  # over the 1500-byte veth: IP fragments
    segs = fresh.wait(lambda ss: len(ss) >= 3)
    lo = next(s for s in segs if s.meta.dst == "127.0.0.1")
    assert (len(lo.payload), lo.orig_len) == (512, 1000)
    assert lo.payload == b"\x12\x34" + b"z" * 510
    frag = next(s for s in segs if s.meta.dst == S4)
    assert (len(frag.payload), frag.orig_len) == (512, 3000)  # first fragment: datagram length
    after = fresh.cap.counters()  # type: ignore[attr-defined]
    assert after["fragments_skipped"] - before["fragments_skipped"] >= 2  # the later fragments
    assert after["lost"] == 0 == fresh.cap.lost()  # type: ignore[attr-defined]
    assert after["events"] > before["events"]


def test_watcher_attaches_new_namespace_within_2s_and_survives_its_deletion(col: Collector) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-netns-"))
    empty_proc = run_dir / "proc"
    empty_proc.mkdir()
    cap = col.cap
    name = f"{PREFIX}n"
    w = NetnsWatcher(cap.attach, cap.detach, proc_root=str(empty_proc), run_netns=str(run_dir / "run"))  # type: ignore[attr-defined]
    (run_dir / "run").mkdir()
    try:
        assert w.scan() == 0
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        (run_dir / "run" / name).symlink_to(f"/var/run/netns/{name}")
        ino = ns_inode(name)
        t0 = time.monotonic()
        while ino not in cap.attached and time.monotonic() - t0 < 2.0:  # type: ignore[attr-defined]
            w.tick()
            time.sleep(0.05)
        assert ino in cap.attached  # type: ignore[attr-defined]
        assert time.monotonic() - t0 < 2.0
        col.drain()
        send(name, "127.0.0.1", 53, 33)
        segs = col.wait(lambda ss: any(s.meta.netns == ino for s in ss))
        assert any(s.meta.netns == ino and len(s.payload) == 33 for s in segs)

        sh("ip", "netns", "del", name)  # the symlink now dangles: the namespace vanished
        assert w.scan() == 0
        assert ino not in cap.attached and w.attach_failures == 0  # type: ignore[attr-defined]
    finally:
        sh("ip", "netns", "del", name, check=False)
        shutil.rmtree(run_dir)


def test_discover_on_the_real_proc_finds_test_namespaces_not_the_host(topo: dict[str, int]) -> None:
    found = discover()
    own = os.stat("/proc/self/ns/net").st_ino  # the exporter runs in the host's netns
    assert found[topo["client"]] == f"/var/run/netns/{CLIENT}"
    assert found[topo["server"]] == f"/var/run/netns/{SERVER}"
    assert own not in found
    assert own in discover(include_host=True)


def test_attach_to_a_vanished_namespace_fails_cleanly_and_keeps_this_thread_home(col: Collector) -> None:
    home = os.stat("/proc/thread-self/ns/net").st_ino
    with pytest.raises(OSError):
        col.cap.attach("/var/run/netns/does-not-exist-" + PREFIX, 1)  # type: ignore[attr-defined]
    with pytest.raises(OSError):  # right path, wrong inode (e.g. a reused PID)
        col.cap.attach(f"/var/run/netns/{CLIENT}x", 1)  # type: ignore[attr-defined]
    assert os.stat("/proc/thread-self/ns/net").st_ino == home


def test_max_payload_4096_ports_list_and_ring_overflow_counted(topo: dict[str, int]) -> None:
    big, cap = _capture(max_payload=4096, dns_ports=(53, 5353), ringbuf_pages=4)
    try:
        cap.attach(f"/var/run/netns/{CLIENT}", topo["client"])  # type: ignore[attr-defined]
        send(CLIENT, "127.0.0.1", 5353, 3000)
        segs = big.wait(lambda ss: len(ss) >= 2)
        assert {(s.meta.dport, len(s.payload), s.orig_len) for s in segs} == {(5353, 3000, 3000)}
        assert segs[0].payload == b"\x12\x34" + b"z" * 2998
        assert cap.lost() == 0  # type: ignore[attr-defined]
        send(CLIENT, "127.0.0.1", 53, 3000, count=40)  # 80 events of ~3 KiB into a 16 KiB ring, unread
        lost = cap.lost()  # type: ignore[attr-defined]
        big.drain()
        assert lost > 0
        assert cap.counters()["lost"] == lost  # type: ignore[attr-defined]
    finally:
        cap.close()  # type: ignore[attr-defined]


def test_event_struct_mirror_matches_the_compiled_struct(col: Collector) -> None:
    from exporter.capture.events import layout_mismatches

    compiled = col.cap._bpf[b"scratch"].Leaf._type_  # type: ignore[attr-defined]
    assert layout_mismatches(compiled, 512) == []


def test_socket_queue_stays_empty(col: Collector, topo: dict[str, int]) -> None:
    send(CLIENT, "127.0.0.1", 53, 40, count=50)
    col.wait(lambda ss: len(ss) >= 100)
    out = sh("ip", "netns", "exec", CLIENT, "ss", "-f", "link", "-n", "-a", "-p").stdout
    lines = [ln for ln in out.splitlines() if f"pid={os.getpid()}," in ln]
    assert lines, out
    assert all(ln.split()[2] == "0" for ln in lines), out  # Recv-Q: the filter returns 0, nothing queued


TUN = """
import fcntl, os, socket, struct, subprocess
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"dnsotun0", 0x0001 | 0x1000))  # TUNSETIFF, IFF_TUN|IFF_NO_PI
subprocess.run(["ip", "addr", "add", "198.19.0.1", "peer", "198.19.0.2", "dev", "dnsotun0"], check=True)
subprocess.run(["ip", "link", "set", "dnsotun0", "up"], check=True)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"\\x55\\x66" + b"t" * 20, ("198.19.0.2", 53))
while True:  # the query as the tun device got it (skip anything else the kernel sends)
    pkt = os.read(fd, 4096)
    if pkt[0] >> 4 == 4 and pkt[9] == 17:
        break
ihl = (pkt[0] & 15) * 4
# the "response": addresses and ports swapped (both checksums stay valid), written back in
ip = pkt[:12] + pkt[16:20] + pkt[12:16] + pkt[20:ihl]
os.write(fd, ip + pkt[ihl + 2 : ihl + 4] + pkt[ihl : ihl + 2] + pkt[ihl + 4 :])
print(len(s.recv(100)))
"""


def test_device_without_l2_header_tun(fresh: Collector, topo: dict[str, int]) -> None:
    require(os.path.exists("/dev/net/tun"), "needs /dev/net/tun")
    assert in_ns(CLIENT, TUN).strip() == "22"
    segs = fresh.wait(lambda ss: len([s for s in ss if s.meta.src.startswith("198.19.")]) >= 2)
    tun = {
        (s.meta.pkt_type, s.meta.src, s.meta.dst, s.payload) for s in segs if s.meta.src.startswith("198.19.")
    }
    payload = b"\x55\x66" + b"t" * 20
    assert (PACKET_OUTGOING, "198.19.0.1", "198.19.0.2", payload) in tun
    assert (PACKET_HOST, "198.19.0.2", "198.19.0.1", payload) in tun
