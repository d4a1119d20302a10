"""``dnsotel run`` as a user runs it, exporting over OTLP to a real gRPC receiver (issue 4).

The exporter is started as a subprocess in the host's network namespace with
``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:<port>`` (``tests/otlp_receiver.py``, the
collector's own protobuf services on grpcio) and ``--netns`` pointing at the lab's client
namespace (and the resolver's), and stopped with SIGTERM, which must end it with exit code
0 within :data:`STOP_WITHIN_S` after flushing the spans and metrics it holds.

Durations are checked against the packets themselves: tcpdump runs in the same namespace
(``-i any --nano``), tshark reads the DNS id and timestamps back, and a span's duration
must match the query→response gap tcpdump saw in that namespace within 1 ms.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from exporter.telemetry import semconv as sc
from tests.conftest import require_tool
from tests.lab.lab import UPSTREAM_V4, Dnsmasq, Lab
from tests.otlp_receiver import OtlpHttpReceiver, OtlpReceiver, ReceivedSpan, attributes
from tests.wait import wait_for

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
STOP_WITHIN_S = 10.0  # SIGTERM -> exit 0, flush included
START_WITHIN_S = 60.0  # bcc compiles the program at start (~1 s here)
TIMEOUT_MS = 1000  # DNSOTEL_TIMEOUT_MS: queries unanswered after this long
INTERVAL_MS = 500  # OTEL_METRIC_EXPORT_INTERVAL
Receiver = OtlpReceiver | OtlpHttpReceiver
TCPDUMP = ("tcpdump", "-i", "any", "--immediate-mode", "--nano", "-U", "-n")


# --- running dnsotel ---------------------------------------------------------------------


def dnsotel_argv() -> list[str]:
    """The installed ``dnsotel`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "dnsotel"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "exporter.cli"]


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without OTEL_*/DNSOTEL_* (so only the test's settings count)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DNSOTEL_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONSAFEPATH", None)
    env.update(extra)
    return env


@dataclass
class Dnsotel:
    """One ``dnsotel run`` subprocess; stdout and stderr go to files."""

    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    stopped_rc: int | None = None
    stop_seconds: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, within_s: float = STOP_WITHIN_S) -> int:
        """SIGTERM, as a user's service manager would; the exit code (SIGKILL after ``within_s``)."""
        t0 = time.monotonic()
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
        try:
            rc = self.popen.wait(within_s)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)
            raise AssertionError(
                f"dnsotel did not exit within {within_s}s of SIGTERM\n{self.stderr()[-3000:]}"
            ) from None
        self.stop_seconds = time.monotonic() - t0
        self.stopped_rc = rc
        return rc

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def start_dnsotel(
    tmp: Path, netns: Sequence[str], env: Mapping[str, str], *, in_netns: str | None = None
) -> Dnsotel:
    """``dnsotel run --netns P ...`` with ``env`` (on top of a clean environment).

    ``in_netns``: run it inside that named namespace (``ip netns exec`` execs, so the PID is
    dnsotel's) instead of the host's.
    """
    n = len(list(tmp.glob("dnsotel-*.stdout")))
    out = tmp / f"dnsotel-{n}.stdout"
    err = tmp / f"dnsotel-{n}.stderr"
    argv = [*dnsotel_argv(), "run"]
    for path in netns:
        argv += ["--netns", path]
    if in_netns is not None:
        argv = ["ip", "netns", "exec", in_netns, *argv]
    with out.open("wb") as o, err.open("wb") as e:
        popen = subprocess.Popen(argv, stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=clean_env(env))
    return Dnsotel(popen, out, err)


def otlp_env(rx: Receiver, **extra: str) -> dict[str, str]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": str(INTERVAL_MS),
        "DNSOTEL_TIMEOUT_MS": str(TIMEOUT_MS),
    }
    env.update(extra)
    return env


@contextlib.contextmanager
def running(
    tmp: Path, netns: Sequence[str], env: Mapping[str, str], *, in_netns: str | None = None
) -> Iterator[Dnsotel]:
    """A ``dnsotel run`` that is SIGKILLed (by PID) if the test leaves it running."""
    proc = start_dnsotel(tmp, netns, env, in_netns=in_netns)
    try:
        yield proc
    finally:
        proc.kill()


def wait_attached(proc: Dnsotel, rx: Receiver, n: int) -> None:
    """Until an OTLP metric export says ``dnsotel.netns.attached == n`` (capture is on)."""

    def ready() -> bool:
        assert proc.alive(), f"dnsotel exited ({proc.popen.returncode}):\n{proc.stderr()[-3000:]}"
        m = rx.latest_metrics().get(sc.METRIC_NETNS_ATTACHED)
        return m is not None and gauge(m) == n

    wait_for(ready, START_WITHIN_S, lambda: f"{sc.METRIC_NETNS_ATTACHED} == {n}\n{proc.stderr()[-2000:]}")


# --- reading OTLP metrics ----------------------------------------------------------------


def gauge(m: metrics_pb2.Metric) -> int:
    return sum(int(p.as_int) for p in m.gauge.data_points)


def counter(m: metrics_pb2.Metric, **match: str) -> int:
    return sum(int(p.as_int) for p in m.sum.data_points if _matches(attributes(p.attributes), match))


def _matches(attrs: Mapping[str, Any], match: Mapping[str, str]) -> bool:
    return all(attrs.get(k.replace("__", ".")) == v for k, v in match.items())


def histogram_counts(m: metrics_pb2.Metric, by: str, **match: str) -> Counter[str]:
    """Sum of the histogram's counts per value of attribute ``by``, over points matching ``match``.

    ``match`` keys use ``__`` for ``.``: ``dns__role="client"``.
    """
    out: Counter[str] = Counter()
    for p in m.histogram.data_points:
        attrs = attributes(p.attributes)
        if _matches(attrs, match):
            out[str(attrs.get(by, ""))] += int(p.count)  # "": the attribute is absent
    return out


# --- packets seen by tcpdump ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """A DNS message tcpdump captured: wall time (ns), id, response bit, client port, transport."""

    ts_ns: int
    dns_id: int
    response: bool
    client_port: int
    transport: str


@dataclass
class Tcpdump:
    """tcpdump on every interface of one lab namespace, port 53, ns timestamps."""

    ns: str
    path: Path
    popen: subprocess.Popen[bytes]
    log: Path
    seen: list[Seen] = field(default_factory=list)

    def stop(self) -> None:
        if self.popen.poll() is None:
            time.sleep(0.3)  # let it write what the kernel already handed over
            os.kill(self.popen.pid, signal.SIGINT)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)

    def read(self) -> list[Seen]:
        """The DNS messages in the capture file (tshark decodes them, TCP included)."""
        self.stop()
        fields = (
            *("frame.time_epoch", "dns.id", "dns.flags.response"),
            *("udp.srcport", "udp.dstport", "tcp.srcport", "tcp.dstport"),
        )
        argv = ["tshark", "-n", "-r", str(self.path), "-Y", "dns", "-T", "fields", "-E", "occurrence=f"]
        for f in fields:
            argv += ["-e", f]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
        seen: list[Seen] = []
        for line in out.splitlines():
            ts, qid, resp, usp, udp_, tsp, tdp = [*line.split("\t"), *[""] * 7][:7]
            if not qid:
                continue
            sec, _, frac = ts.partition(".")
            ts_ns = int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])
            is_resp = resp in ("1", "True", "true")
            sport, dport, transport = (int(usp), int(udp_), "udp") if usp else (int(tsp), int(tdp), "tcp")
            seen.append(Seen(ts_ns, int(qid, 0), is_resp, dport if is_resp else sport, transport))
        self.seen = seen
        return seen

    def times(self, dns_id: int, client_port: int, transport: str) -> tuple[int, int]:
        """(query, response) wall times of one exchange as captured (the first of each)."""
        key = (dns_id, client_port, transport)
        q = [s.ts_ns for s in self.seen if (s.dns_id, s.client_port, s.transport) == key and not s.response]
        r = [s.ts_ns for s in self.seen if (s.dns_id, s.client_port, s.transport) == key and s.response]
        assert q and r, f"tcpdump in {self.ns} saw no exchange id={dns_id} port={client_port}/{transport}"
        return min(q), min(r)


def start_tcpdump(lab: Lab, ns: str) -> Tcpdump:
    name = lab.ns_name(ns)
    n = len(list(lab.tmp.glob(f"tcpdump-{name}-*.pcap")))
    path = lab.tmp / f"tcpdump-{name}-{n}.pcap"
    log = lab.tmp / f"tcpdump-{name}-{n}.log"
    with log.open("wb") as err:
        popen = subprocess.Popen(
            ["ip", "netns", "exec", name, *TCPDUMP, "-w", str(path), "port", "53"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    dump = Tcpdump(name, path, popen, log)
    wait_for(lambda: b"listening on" in log.read_bytes(), 10, lambda: f"tcpdump in {name}: {log.read_text()}")
    return dump


@contextlib.contextmanager
def tcpdumps(lab: Lab, *namespaces: str) -> Iterator[list[Tcpdump]]:
    """tcpdump in each namespace for the duration of the block (stopped by PID after it)."""
    dumps: list[Tcpdump] = []
    try:
        for ns in namespaces:
            dumps.append(start_tcpdump(lab, ns))
        yield dumps
    finally:
        for d in dumps:
            d.stop()


# --- spans ---------------------------------------------------------------------------------


def duration_ms(s: trace_pb2.Span) -> float:
    return (s.end_time_unix_nano - s.start_time_unix_nano) / 1e6


def find_spans(spans: Sequence[ReceivedSpan], **match: Any) -> list[ReceivedSpan]:
    """Spans whose attributes match (``__`` for ``.`` in keys); ``kind=`` matches the span kind."""
    kind = match.pop("kind", None)
    out = []
    for s in spans:
        if kind is not None and s.span.kind != kind:
            continue
        attrs = s.attributes
        if all(attrs.get(k.replace("__", ".")) == v for k, v in match.items()):
            out.append(s)
    return out


def one_span(spans: Sequence[ReceivedSpan], **match: Any) -> ReceivedSpan:
    found = find_spans(spans, **match)
    assert len(found) == 1, f"expected one span matching {match}, got {len(found)}"
    return found[0]


CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
SERVER = trace_pb2.Span.SPAN_KIND_SERVER
ERROR = trace_pb2.Status.STATUS_CODE_ERROR
UNSET = trace_pb2.Status.STATUS_CODE_UNSET


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


# --- 1. the spans a user searches for --------------------------------------------------------


def test_spans_per_scenario(lab: Lab, dnsmasq: Dnsmasq, receiver: OtlpReceiver) -> None:
    require_tool("tcpdump", "tshark")
    client_ns, resolver_ns = lab.client.ns, lab.resolver
    # the `many` answer (40 A records, 673 bytes of DNS) is longer than the default snap
    # length (512): copy whole messages here; test_counts_exact shows the default's effect
    env = otlp_env(receiver, DNSOTEL_SNAPLEN="1232")
    with (
        tcpdumps(lab, "client", "resolver") as dumps,
        running(lab.tmp, [client_ns.path, resolver_ns.path], env) as proc,
    ):
        wait_attached(proc, receiver, 2)
        rows = lab.query(
            "client",
            "--id",
            "1000",
            "a.ok.lab.",
            "m.many.lab.",
            "x.nx.lab.",
            "s.servfail.lab.",
            "r.refused.lab.",
            "d.delay-40ms.lab.",
            server=dnsmasq.v4,
        )
        rows += lab.query("client", "--id", "1100", "--timeout", "1.5", "n.never.lab.", server=dnsmasq.v4)
        rows += lab.query("client", "--id", "1200", "--tcp-fallback", "t.tc.lab.", server=dnsmasq.v4)
        rows += lab.query("client", "--id", "1300", "six.ok.lab.", "six.ok.lab.", "AAAA", server=dnsmasq.v6)
        # the unanswered query is declared after DNSOTEL_TIMEOUT_MS; then stop and flush
        time.sleep(TIMEOUT_MS / 1000 + 0.5)
        assert proc.stop() == 0, proc.stderr()[-3000:]
    cdump, rdump = dumps
    cdump.read()
    rdump.read()
    spans = receiver.spans()
    by_id = {r["id"]: r for r in rows}
    expected = {
        1000: "NOERROR",
        1001: "NOERROR",
        1002: "NXDOMAIN",
        1003: "SERVFAIL",
        1004: "REFUSED",
        1005: "NOERROR",
        1100: None,
        1300: "NOERROR",
        1301: "NOERROR",
    }
    for qid, rcode in expected.items():
        assert by_id[qid]["rcode"] == rcode, by_id[qid]
    report: list[str] = []
    offsets: list[int] = []
    for row in rows:
        qid, sport, transport = row["id"], row["sport"], row["transport"]
        name, qtype = row["name"], row["type"]
        c = one_span(
            spans,
            kind=CLIENT,
            dnsotel__netns__id=client_ns.inode,
            dns__id=qid,
            network__transport=transport,
        )
        a = c.attributes
        assert c.span.name == f"DNS {qtype}"
        assert a[sc.DNS_QUESTION_NAME] == name
        assert a[sc.DNS_QUESTION_TYPE] == qtype
        assert a[sc.SERVER_ADDRESS] == row["server"]
        assert a[sc.SERVER_PORT] == 53
        assert a[sc.CLIENT_PORT] == sport
        v6 = ":" in row["server"]
        assert a[sc.CLIENT_ADDRESS] == (lab.client.v6 if v6 else lab.client.v4)
        assert a[sc.NETWORK_TYPE] == ("ipv6" if v6 else "ipv4")
        rcode = row["rcode"]
        if rcode is None:  # unanswered: ends at query + timeout, error.type timeout, no rcode
            assert sc.DNS_RESPONSE_CODE not in a
            assert a[sc.ERROR_TYPE] == sc.ERROR_TYPE_TIMEOUT
            assert c.span.status.code == ERROR
            assert duration_ms(c.span) == TIMEOUT_MS
            assert sc.DNS_ANSWERS not in a
            report.append(f"{name} {qtype} {transport}: unanswered, {duration_ms(c.span)} ms")
            continue
        assert a[sc.DNS_RESPONSE_CODE] == rcode
        assert a[sc.DNS_ANSWERS] == row["answers"]
        assert a[sc.DNS_ANSWER_COUNT] == row["num_answers"]
        assert a[sc.DNS_FLAGS_TRUNCATED] == row["tc"]
        if rcode == "NOERROR":
            assert c.span.status.code == UNSET
            assert sc.ERROR_TYPE not in a
        else:
            assert c.span.status.code == ERROR
            assert a[sc.ERROR_TYPE] == rcode
        # duration: the packets' own timestamps in the client's namespace, within 1 ms;
        # and never longer than what the client process measured around send/recv
        dur = duration_ms(c.span)
        q_ns, r_ns = cdump.times(qid, sport, transport)
        gap = (r_ns - q_ns) / 1e6
        assert abs(dur - gap) < 1.0, (name, dur, gap)
        # kernel time -> wall time: the span starts when tcpdump saw the query leave
        offsets.append(c.span.start_time_unix_nano - q_ns)
        assert dur <= row["elapsed_ms"], (name, dur, row["elapsed_ms"])
        # the resolver's serving side: a SERVER span in its netns, in the same trace
        s = one_span(
            spans,
            kind=SERVER,
            dnsotel__netns__id=resolver_ns.inode,
            dns__id=qid,
            client__port=sport,
            network__transport=transport,
        )
        assert s.span.name == c.span.name
        assert s.attributes[sc.DNS_RESPONSE_CODE] == rcode
        assert s.span.trace_id == c.span.trace_id
        assert s.span.parent_span_id == c.span.span_id
        sdur = duration_ms(s.span)
        sq_ns, sr_ns = rdump.times(qid, sport, transport)
        sgap = (sr_ns - sq_ns) / 1e6
        assert abs(sdur - sgap) < 1.0, (name, sdur, sgap)
        assert sdur <= dur
        report.append(
            f"{name} {qtype} {transport} {rcode}: client span {dur:.3f} ms (tcpdump {gap:.3f}, client "
            f"{row['elapsed_ms']:.3f}), server span {sdur:.3f} ms (tcpdump {sgap:.3f})"
        )
    # 40 addresses in the `many` answer
    many = one_span(spans, kind=CLIENT, dnsotel__netns__id=client_ns.inode, dns__id=1001)
    assert len(many.attributes[sc.DNS_ANSWERS]) == 40
    # the upstream's delay, as the resolver saw its own upstream query: 40 ms and a little
    up = one_span(
        spans, kind=CLIENT, dnsotel__netns__id=resolver_ns.inode, dns__question__name="d.delay-40ms.lab."
    )
    assert up.attributes[sc.SERVER_ADDRESS] == UPSTREAM_V4
    updur = duration_ms(up.span)
    assert 40.0 <= updur < 45.0, updur
    report.append(f"resolver -> upstream for d.delay-40ms.lab.: {updur:.3f} ms")
    # truncated over UDP, then the same id over TCP with the answer
    tc_udp = one_span(
        spans, kind=CLIENT, dnsotel__netns__id=client_ns.inode, dns__id=1200, network__transport="udp"
    )
    tc_tcp = one_span(
        spans, kind=CLIENT, dnsotel__netns__id=client_ns.inode, dns__id=1200, network__transport="tcp"
    )
    assert tc_udp.attributes[sc.DNS_FLAGS_TRUNCATED] is True
    assert tc_udp.attributes[sc.DNS_ANSWERS] == []
    assert tc_tcp.attributes[sc.DNS_FLAGS_TRUNCATED] is False
    assert len(tc_tcp.attributes[sc.DNS_ANSWERS]) == 1
    # the clock conversion: span start vs tcpdump's timestamp of the same query
    worst = max(abs(o) for o in offsets) / 1e6
    assert worst < 1.0, offsets
    report.append(f"span start vs tcpdump query time: at most {worst:.3f} ms apart")
    assert proc.stop_seconds is not None
    report.append(f"SIGTERM -> exit 0 in {proc.stop_seconds:.2f} s")
    print("\n".join(report))


# --- 2. metric counts exact, per role ------------------------------------------------------


def test_counts_exact(lab: Lab, dnsmasq: Dnsmasq, receiver: OtlpReceiver) -> None:
    """5 NOERROR, 3 NXDOMAIN, 2 SERVFAIL, 2 unanswered from the client; exact per role, after SIGTERM."""
    require_tool("tcpdump", "tshark")
    client_ns, resolver_ns = lab.client.ns, lab.resolver
    names = {
        "NOERROR": ["c1.ok.lab.", "c2.ok.lab.", "c3.ok.lab.", "c.delay-20ms.lab.", "c.many.lab."],
        "NXDOMAIN": ["c1.nx.lab.", "c2.nx.lab.", "c3.nx.lab."],
        "SERVFAIL": ["c1.servfail.lab.", "c2.servfail.lab."],
    }
    never = ["c1.never.lab.", "c2.never.lab."]
    asked = {n for ns in names.values() for n in ns} | set(never)
    env = otlp_env(receiver)
    with (
        tcpdumps(lab, "client", "resolver") as dumps,
        running(lab.tmp, [client_ns.path, resolver_ns.path], env) as proc,
    ):
        wait_attached(proc, receiver, 2)
        running_metrics = receiver.latest_metrics()
        rows = lab.query("client", "--id", "2000", "--timeout", "0.3", *never, server=dnsmasq.v4)
        time.sleep(TIMEOUT_MS / 1000 + 0.5)  # both declared unanswered
        order = [n for rc in ("NOERROR", "NXDOMAIN", "SERVFAIL") for n in names[rc]]
        rows += lab.query("client", "--id", "2100", *order, server=dnsmasq.v4)
        # stop at once: what the exporter holds (spans queued, metrics since the last
        # export) must be flushed by the shutdown
        t_stop = time.time_ns()
        assert proc.stop() == 0, proc.stderr()[-3000:]
    got = Counter(str(r["rcode"]) for r in rows)
    assert got == {"NOERROR": 5, "NXDOMAIN": 3, "SERVFAIL": 2, "None": 2}, rows

    m = receiver.latest_metrics()  # the final export, made after SIGTERM
    hist = m[sc.METRIC_LOOKUP_DURATION]
    unans = m[sc.METRIC_QUERIES_UNANSWERED]
    sent = {"NOERROR": 5, "NXDOMAIN": 3, "SERVFAIL": 2}
    # the client's lookups (client netns, to the resolver's address)
    assert (
        histogram_counts(hist, sc.DNS_RESPONSE_CODE, dns__role="client", server__address=dnsmasq.v4) == sent
    )
    assert counter(unans, dns__role="client", server__address=dnsmasq.v4) == 2
    # the resolver serving them (resolver netns, SERVER side)
    assert histogram_counts(hist, sc.DNS_RESPONSE_CODE, dns__role="server") == sent
    assert counter(unans, dns__role="server") == 2
    # the resolver's own lookups upstream, against what the upstream logged receiving
    upstream = Counter(
        {"answer": "NOERROR", "nxdomain": "NXDOMAIN", "servfail": "SERVFAIL", "never": "never"}[q["action"]]
        for q in lab.upstream_queries()
        if q["name"] in asked
    )
    up_never = upstream.pop("never", 0)
    assert (
        histogram_counts(hist, sc.DNS_RESPONSE_CODE, dns__role="client", server__address=UPSTREAM_V4)
        == upstream
    )
    assert counter(unans, dns__role="client", server__address=UPSTREAM_V4) == up_never
    # error.type on the histogram: the rcode when not NOERROR
    assert histogram_counts(hist, sc.ERROR_TYPE, dns__role="server") == {"": 5, "NXDOMAIN": 3, "SERVFAIL": 2}

    # health: attached while running and in the final export, nothing lost, every packet counted
    assert gauge(running_metrics[sc.METRIC_NETNS_ATTACHED]) == 2
    assert gauge(m[sc.METRIC_NETNS_ATTACHED]) == 2
    assert counter(m[sc.METRIC_CAPTURE_LOST]) == 0
    assert gauge(m[sc.METRIC_PAIRS_PENDING]) == 0
    packets = sum(1 for d in dumps for p in d.read() if p.ts_ns < t_stop)  # all DNS, all UDP here
    assert counter(m[sc.METRIC_CAPTURE_PACKETS]) == packets
    assert counter(m[sc.METRIC_RESPONSES_UNMATCHED]) == 0

    # spans: every one flushed at shutdown, none dropped
    spans = receiver.spans()
    client_spans = find_spans(spans, dnsotel__netns__id=client_ns.inode)
    assert sorted(s.attributes[sc.DNS_ID] for s in client_spans) == [2000, 2001, *range(2100, 2110)]
    assert counter(m[sc.METRIC_SPANS_EXPORTED]) == len(spans)
    assert counter(m[sc.METRIC_SPANS_DROPPED]) == 0
    # the default snap length (1232 bytes of DNS, the EDNS size resolvers answer with)
    # copies the whole 40-address `many` answer
    many_row = next(r for r in rows if r["name"] == "c.many.lab.")
    many = one_span(spans, kind=CLIENT, dnsotel__netns__id=client_ns.inode, dns__id=many_row["id"])
    assert many.attributes[sc.DNS_ANSWER_COUNT] == 40
    kept = many.attributes[sc.DNS_ANSWERS]
    assert kept == many_row["answers"]
    print(
        f"packets {packets}, spans {len(spans)}, upstream {dict(upstream)} never {up_never}, "
        f"many answers kept {len(kept)}/40, SIGTERM -> exit 0 in {proc.stop_seconds:.2f} s"
    )


# --- 4. the collector goes away and comes back ---------------------------------------------


def test_collector_restart(lab: Lab, dnsmasq: Dnsmasq, receiver: OtlpReceiver) -> None:
    """Stop the receiver mid-run, restart it on the same port: capture and counts carry on.

    Every query is NXDOMAIN, so every exchange becomes a span. With
    ``OTEL_EXPORTER_OTLP_TIMEOUT=2`` the SDK's gRPC exporter gives a failed batch up after
    about 1 s of retries, and the exporter counts it in ``dnsotel.spans.dropped``.
    """
    port = receiver.port
    env = otlp_env(receiver, OTEL_EXPORTER_OTLP_TIMEOUT="2")
    client_ns = lab.client.ns
    per_phase = 4

    def ids_received() -> list[int]:
        return [
            s.attributes[sc.DNS_ID] for s in find_spans(receiver.spans(), dnsotel__netns__id=client_ns.inode)
        ]

    def ask(first_id: int) -> None:
        qnames = [f"g{first_id + i}.nx.lab." for i in range(per_phase)]
        rows = lab.query("client", "--id", str(first_id), *qnames, server=dnsmasq.v4)
        assert [r["rcode"] for r in rows] == ["NXDOMAIN"] * per_phase

    with running(lab.tmp, [client_ns.path], env) as proc:
        wait_attached(proc, receiver, 1)
        ask(3000)
        wait_for(lambda: len(ids_received()) >= per_phase, 10, lambda: f"phase A spans: {ids_received()}")
        receiver.stop()
        t_down = time.monotonic()
        ask(3100)
        time.sleep(5)  # the batch with 3100.. fails (about 1 s of retries) and is dropped
        assert proc.alive(), proc.stderr()[-3000:]
        receiver.start()  # same port
        assert receiver.port == port
        down_s = time.monotonic() - t_down
        t_up = time.monotonic()
        ask(3200)
        wait_for(
            lambda: any(i >= 3200 for i in ids_received()),
            30,
            lambda: f"spans after restart: {ids_received()}",
        )
        resumed_s = time.monotonic() - t_up

        def nx_exported() -> int:
            m = receiver.latest_metrics().get(sc.METRIC_LOOKUP_DURATION)
            return histogram_counts(m, sc.DNS_RESPONSE_CODE)["NXDOMAIN"] if m is not None else 0

        # the periodic metric export resumed too, with the gap's lookups counted
        wait_for(lambda: nx_exported() == 3 * per_phase, 10, lambda: f"NXDOMAIN count {nx_exported()}")
        assert proc.alive(), proc.stderr()[-3000:]
        assert proc.stop() == 0, proc.stderr()[-3000:]
    m = receiver.latest_metrics()
    sent = 3 * per_phase
    assert histogram_counts(m[sc.METRIC_LOOKUP_DURATION], sc.DNS_RESPONSE_CODE, dns__role="client") == {
        "NXDOMAIN": sent
    }
    assert counter(m[sc.METRIC_CAPTURE_PACKETS]) == 2 * sent
    assert counter(m[sc.METRIC_CAPTURE_LOST]) == 0
    got = ids_received()
    dropped = counter(m[sc.METRIC_SPANS_DROPPED])
    exported = counter(m[sc.METRIC_SPANS_EXPORTED])
    assert len(got) == len(set(got)), f"duplicate spans: {sorted(got)}"
    assert set(got) >= {*range(3000, 3000 + per_phase), *range(3200, 3200 + per_phase)}
    # what holds: each span is either received once or counted dropped, never both
    assert exported == len(got)
    assert exported + dropped == sent, (exported, dropped, sorted(got))
    assert dropped == per_phase, sorted(got)
    log = proc.stderr()
    assert "Traceback" not in log, log
    print(
        f"collector down {down_s:.1f} s; spans resumed {resumed_s:.2f} s after restart; "
        f"exported {exported}, dropped {dropped} of {sent}; exporter log lines {len(log.splitlines())}"
    )


# --- 5. an invalid setting stops the start ---------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("DNSOTEL_SPAN_SAMPLE_RATIO", "2"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "bogus"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "fast"),
        ("DNSOTEL_TIMEOUT_MS", "0"),
        ("DNSOTEL_PROMETHEUS_PORT", "99999"),
    ],
)
def test_invalid_setting_fails_at_start(tmp_path: Path, var: str, value: str) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", var: value}
    proc = start_dnsotel(tmp_path, ["/var/run/netns/dnsotel-test-absent"], env)
    try:
        rc = proc.popen.wait(30)
    finally:
        proc.kill()
    err = proc.stderr().strip().splitlines()
    assert rc == 1, err
    assert len(err) == 1, err
    assert err[0].startswith("dnsotel: ") and var in err[0], err
    assert proc.stdout() == ""


def test_metrics_port_in_use_fails_at_start(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = start_dnsotel(
            tmp_path, ["/var/run/netns/dnsotel-test-absent"], {"DNSOTEL_PROMETHEUS_PORT": str(port)}
        )
        try:
            rc = proc.popen.wait(30)
        finally:
            proc.kill()
    err = proc.stderr().strip().splitlines()
    assert rc == 1, err
    assert len(err) == 1 and f"127.0.0.1:{port}" in err[0] and "DNSOTEL_PROMETHEUS_PORT" in err[0], err


# --- OTLP over HTTP ------------------------------------------------------------------------


def test_http_protobuf(lab: Lab, dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf: the same span and metrics over OTLP/HTTP."""
    with OtlpHttpReceiver() as rx:
        env = otlp_env(rx, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
        with running(tmp_path, [lab.client.ns.path], env) as proc:
            wait_attached(proc, rx, 1)
            rows = lab.query("client", "--id", "4000", "h.nx.lab.", server=dnsmasq.v4)
            assert proc.stop() == 0, proc.stderr()[-3000:]
        span = one_span(rx.spans(), dns__id=4000)
        assert span.span.name == "DNS A"
        assert span.attributes[sc.ERROR_TYPE] == "NXDOMAIN"
        assert span.attributes[sc.CLIENT_PORT] == rows[0]["sport"]
        hist = rx.latest_metrics()[sc.METRIC_LOOKUP_DURATION]
        assert histogram_counts(hist, sc.DNS_RESPONSE_CODE, dns__role="client") == {"NXDOMAIN": 1}
        assert set(rx.content_types) == {"application/x-protobuf"}
