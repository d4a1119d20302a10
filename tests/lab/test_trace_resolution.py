"""One trace per resolution, end to end (issue 5): what a user sees in Tempo.

``dnsotel run`` captures the lab's client and resolver namespaces (as subprocesses in the
host's netns, exporting over OTLP/gRPC to ``tests.otlp_receiver``); real dnsmasq and
unbound forward to the scriptable upstream (``tests/lab/upstream.py``). Checked:

* client -> resolver (cache cleared) -> upstream adding 40 ms: ONE trace, three spans that
  nest (client CLIENT, resolver SERVER child of it, upstream CLIENT child of that, carrying
  the upstream as ``server.address``); the same question again, from the cache: two spans;
* the same with the two namespaces captured by two exporter processes (two "nodes");
* ten clients asking unbound at once: one upstream span, parented to the earliest server
  span, linked to the nine others;
* getaddrinfo in a client whose resolv.conf has ``ndots:5`` and three search domains: every
  try carries its ``dns.search_expansion.index`` and the original name;
* a truncated UDP answer and the client's TCP retry: events and the link between them.

Every test runs with user-space pairing and with kernel pairing (``DNSOTEL_PAIRING``): in
kernel mode the tracker learns a resolver's pending queries from the kernel's QUERY_NOTICE
records and sees client queries when their exchanges complete.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from exporter.telemetry import semconv as sc
from tests.lab.lab import RESOLVER_UP_V4, UPSTREAM_V4, Client, Dnsmasq, Lab, Unbound
from tests.lab.test_run_otlp import Dnsotel, otlp_env, running
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.wait import wait_for

pytestmark = pytest.mark.lab

SEARCH = ("default.svc.cluster.lab", "svc.cluster.lab", "cluster.lab")
N_COALESCE = 10
CLIENT_KIND = trace_pb2.Span.SPAN_KIND_CLIENT
SERVER_KIND = trace_pb2.Span.SPAN_KIND_SERVER
ENV = {"OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_METRIC_EXPORT_INTERVAL": "500"}


# --- fixtures -----------------------------------------------------------------------------------
class Setup:
    def __init__(
        self, lab: Lab, coalesce: list[Client], search: Client, dnsmasq: Dnsmasq, unbound: Unbound
    ) -> None:
        self.lab = lab
        self.coalesce = coalesce
        self.search = search
        self.dnsmasq = dnsmasq
        self.unbound = unbound


@pytest.fixture(scope="module")
def setup(lab: Lab) -> Iterator[Setup]:
    coalesce = [lab.client, *lab.add_clients(N_COALESCE - 1)]
    search = lab.add_client()
    k = search.ns.index
    lab.set_resolv_conf(search.name, [f"198.18.{k + 1}.1"], search=SEARCH, options=["ndots:5"])
    lab.spawn(search.name, ["sleep", "3600"], tag="pod")  # the pod's long-lived process
    dnsmasq = Dnsmasq(lab, cache=True).start()
    unbound = Unbound(lab, cache=True).start()
    yield Setup(lab, coalesce, search, dnsmasq, unbound)
    unbound.stop()
    dnsmasq.stop()


@pytest.fixture(scope="module", params=["user", "kernel"])
def pairing(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


@pytest.fixture(scope="module")
def rx(pairing: str) -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def netns_path(name: str) -> str:
    return f"/var/run/netns/{name}"


def wait_capturing(
    s: Setup, rx: OtlpReceiver, proc: Dnsotel, client: Client, *, server_side: bool = True
) -> None:
    """Until a probe query from ``client`` comes back as spans (capture attached, export working)."""
    seen: set[str] = set()

    def ok() -> bool:
        assert proc.alive(), f"dnsotel exited:\n{proc.stderr()[-3000:]}"
        name = f"probe-{secrets.token_hex(3)}.ok.lab."
        seen.add(name)
        s.lab.query(client.name, name, server=client.resolver_v4)
        time.sleep(0.5)
        kinds = {sp.span.kind for sp in rx.spans() if sp.attributes.get(sc.DNS_QUESTION_NAME) in seen}
        return CLIENT_KIND in kinds and (SERVER_KIND in kinds or not server_side)

    wait_for(ok, 90, lambda: f"probe spans\n{proc.stderr()[-3000:]}", step=0.5)


@pytest.fixture(scope="module")
def exporter(
    setup: Setup, rx: OtlpReceiver, pairing: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dnsotel]:
    lab = setup.lab
    paths = [netns_path(n) for n in (lab.client.name, lab.resolver.name, setup.search.name)]
    env = otlp_env(rx, DNSOTEL_PAIRING=pairing, **ENV)
    with running(tmp_path_factory.mktemp("dnsotel"), paths, env) as proc:
        wait_capturing(setup, rx, proc, lab.client)
        assert f'"pairing": "{pairing}"' in proc.stderr(), proc.stderr()[-3000:]
        yield proc


# --- reading spans --------------------------------------------------------------------------------
def spans_named(rx: OtlpReceiver, name: str) -> list[ReceivedSpan]:
    return sorted(
        (s for s in rx.spans() if s.attributes.get(sc.DNS_QUESTION_NAME) == name),
        key=lambda s: s.span.start_time_unix_nano,
    )


def wait_spans(
    rx: OtlpReceiver, pred: Callable[[list[ReceivedSpan]], bool], name: str, timeout: float = 20
) -> list[ReceivedSpan]:
    wait_for(
        lambda: pred(spans_named(rx, name)),
        timeout,
        lambda: f"spans of {name}: {describe(spans_named(rx, name))}",
    )
    return spans_named(rx, name)


def describe(spans: list[ReceivedSpan]) -> str:
    return "\n".join(
        f"  {s.span.kind} trace={s.span.trace_id.hex()} id={s.span.span_id.hex()}"
        f" parent={s.span.parent_span_id.hex()}"
        f" {s.attributes.get(sc.CLIENT_ADDRESS)}->{s.attributes.get(sc.SERVER_ADDRESS)}"
        for s in spans
    )


def by_trace(spans: list[ReceivedSpan]) -> dict[bytes, list[ReceivedSpan]]:
    out: dict[bytes, list[ReceivedSpan]] = {}
    for s in spans:
        out.setdefault(s.span.trace_id, []).append(s)
    return out


def assert_resolution_trace(trace: list[ReceivedSpan], client_addr: str, delay_ms: int) -> None:
    """client (CLIENT) > resolver (SERVER) > upstream (CLIENT): parents and nested durations."""
    assert len(trace) == 3, describe(trace)
    client, server, upstream = sorted(trace, key=lambda s: s.span.start_time_unix_nano)
    assert [s.span.kind for s in (client, server, upstream)] == [CLIENT_KIND, SERVER_KIND, CLIENT_KIND], (
        describe(trace)
    )
    assert client.attributes[sc.CLIENT_ADDRESS] == client_addr
    assert client.span.parent_span_id == b""
    assert server.span.parent_span_id == client.span.span_id
    assert upstream.span.parent_span_id == server.span.span_id
    assert upstream.attributes[sc.SERVER_ADDRESS] == UPSTREAM_V4
    assert upstream.attributes[sc.CLIENT_ADDRESS] == RESOLVER_UP_V4
    c, s_, u = client.span, server.span, upstream.span
    assert c.start_time_unix_nano <= s_.start_time_unix_nano <= u.start_time_unix_nano
    assert u.end_time_unix_nano <= s_.end_time_unix_nano <= c.end_time_unix_nano
    assert u.end_time_unix_nano - u.start_time_unix_nano >= delay_ms * 1_000_000


# --- tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dnsmasq", "unbound"])
def test_client_resolver_upstream_one_trace_then_cached(
    kind: str, setup: Setup, rx: OtlpReceiver, exporter: Dnsotel
) -> None:
    lab = setup.lab
    res = setup.dnsmasq if kind == "dnsmasq" else setup.unbound
    res.clear_cache()
    name = f"r{secrets.token_hex(3)}.delay-40ms.lab."
    (row,) = lab.query("client", name, "A", server=res.v4)
    assert row["rcode"] == "NOERROR", row
    spans = wait_spans(rx, lambda sp: len(sp) >= 3, name)
    traces = by_trace(spans)
    assert len(traces) == 1, describe(spans)
    assert_resolution_trace(next(iter(traces.values())), lab.client.v4, 40)

    (row,) = lab.query("client", name, "A", server=res.v4)  # answered from the cache
    assert row["rcode"] == "NOERROR" and row["elapsed_ms"] < 40, row
    spans = wait_spans(
        rx, lambda sp: len(by_trace(sp)) >= 2 and min(map(len, by_trace(sp).values())) >= 2, name
    )
    time.sleep(1.0)  # anything else of that trace would have been exported by now
    traces = by_trace(spans_named(rx, name))
    assert sorted(map(len, traces.values())) == [2, 3], describe(spans_named(rx, name))
    cached = next(t for t in traces.values() if len(t) == 2)
    client, server = sorted(cached, key=lambda s: s.span.start_time_unix_nano)
    assert (client.span.kind, server.span.kind) == (CLIENT_KIND, SERVER_KIND)
    assert server.span.parent_span_id == client.span.span_id


def test_two_exporters_on_two_nodes_give_the_same_trace(
    setup: Setup, pairing: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    lab = setup.lab
    with OtlpReceiver() as rx2:
        tmp = tmp_path_factory.mktemp("two-nodes")
        env = otlp_env(rx2, DNSOTEL_PAIRING=pairing, **ENV)
        with (
            running(tmp, [netns_path(lab.client.name)], env) as node_a,
            running(tmp, [netns_path(lab.resolver.name)], env) as node_b,
        ):
            wait_capturing(setup, rx2, node_a, lab.client)
            wait_capturing(setup, rx2, node_b, lab.client)
            setup.dnsmasq.clear_cache()
            name = f"n{secrets.token_hex(3)}.delay-40ms.lab."
            (row,) = lab.query("client", name, "A", server=setup.dnsmasq.v4)
            assert row["rcode"] == "NOERROR", row
            spans = wait_spans(rx2, lambda sp: len(sp) >= 3, name)
        traces = by_trace(spans)
        assert len(traces) == 1, describe(spans)
        assert_resolution_trace(spans, lab.client.v4, 40)
        # each span came from the exporter that sees its namespace
        netns = {s.span.kind: s.attributes[sc.DNSOTEL_NETNS_ID] for s in spans if s.span.kind == SERVER_KIND}
        assert netns[SERVER_KIND] == lab.resolver.inode


# --- ten clients at once --------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def udp_socket_in(ns: str) -> socket.socket:
    """A UDP socket created inside network namespace ``ns`` (setns in a helper thread)."""
    out: list[socket.socket | BaseException] = []

    def make() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(netns_path(ns), os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            try:
                out.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            finally:
                _libc.setns(own, CLONE_NEWNET)
        except BaseException as exc:
            out.append(exc)
        finally:
            os.close(own)
            os.close(target)

    t = threading.Thread(target=make)
    t.start()
    t.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def test_ten_clients_at_once_through_unbound_one_upstream_span(
    setup: Setup, rx: OtlpReceiver, exporter: Dnsotel
) -> None:
    res = setup.unbound
    res.clear_cache()
    name = f"c{secrets.token_hex(3)}.delay-200ms.lab."
    socks = [udp_socket_in(c.name) for c in setup.coalesce]
    try:
        for i, (c, sock) in enumerate(zip(setup.coalesce, socks, strict=True)):
            q = dns.message.make_query(name, "A")
            q.id = 0x4000 + i
            sock.sendto(q.to_wire(), (f"198.18.{c.ns.index + 1}.3", 53))
        answered = 0
        deadline = time.monotonic() + 5
        while answered < len(socks) and time.monotonic() < deadline:
            ready, _, _ = select.select(socks, [], [], 0.5)
            for sock in ready:
                data = sock.recv(4096)
                assert dns.message.from_wire(data).rcode() == 0
                answered += 1
        assert answered == len(socks)
    finally:
        for sock in socks:
            sock.close()
    ups = [q for q in setup.lab.upstream_queries() if q["name"] == name]
    assert len(ups) == 1, ups  # unbound coalesced the ten questions

    # the exporter sees the first client's namespace and the resolver's: 10 server spans, 1 upstream
    def complete(sp: list[ReceivedSpan]) -> bool:
        return sum(s.span.kind == SERVER_KIND for s in sp) >= N_COALESCE and any(
            s.attributes.get(sc.CLIENT_ADDRESS) == RESOLVER_UP_V4 for s in sp
        )

    spans = wait_spans(rx, complete, name)
    servers = sorted(
        (s for s in spans if s.span.kind == SERVER_KIND), key=lambda s: s.span.start_time_unix_nano
    )
    (upstream,) = [s for s in spans if s.attributes.get(sc.CLIENT_ADDRESS) == RESOLVER_UP_V4]
    earliest = servers[0]
    assert upstream.span.trace_id == earliest.span.trace_id
    assert upstream.span.parent_span_id == earliest.span.span_id
    linked = {(lk.trace_id, lk.span_id) for lk in upstream.span.links}
    assert linked == {(s.span.trace_id, s.span.span_id) for s in servers[1:]}, describe(spans)
    assert all(
        {kv.key: kv.value.string_value for kv in lk.attributes}[sc.SPAN_LINK_REASON]
        == sc.SPAN_LINK_REASON_COALESCED
        for lk in upstream.span.links
    )
    assert len({s.span.trace_id for s in servers}) == N_COALESCE


# --- search list ----------------------------------------------------------------------------------
def test_getaddrinfo_search_expansion_is_marked(setup: Setup, rx: OtlpReceiver, exporter: Dnsotel) -> None:
    lab, client = setup.lab, setup.search
    # a first query from the namespace has the exporter read its resolv.conf (in the background)
    lab.query(client.name, f"warm-{secrets.token_hex(2)}.ok.lab.", server=client.resolver_v4)
    time.sleep(1.0)
    original = f"w{secrets.token_hex(3)}.example.ok.lab."
    (row,) = lab.query(client.name, "--system", original.rstrip("."), "A")
    assert row["error"] is None and row["addresses"], row
    tries = [original + s + "." for s in SEARCH] + [original]
    for name in tries:
        wait_spans(rx, lambda sp: {CLIENT_KIND, SERVER_KIND} <= {s.span.kind for s in sp}, name)
    time.sleep(0.5)
    for index, name in enumerate(tries):
        spans = [s for s in spans_named(rx, name) if s.attributes.get(sc.CLIENT_ADDRESS) == client.v4]
        assert {s.span.kind for s in spans} == {CLIENT_KIND, SERVER_KIND}, describe(spans)
        for s in spans:
            assert s.attributes.get(sc.DNS_SEARCH_EXPANSION_INDEX) == index, (name, s.attributes)
            assert s.attributes.get(sc.DNS_SEARCH_EXPANSION_ORIGINAL_NAME) == original
            assert s.attributes[sc.DNS_RESPONSE_CODE] == ("NOERROR" if index == len(SEARCH) else "NXDOMAIN")
        # the resolver's upstream queries for the tries are children, not tries
        for up in (s for s in spans_named(rx, name) if s.attributes.get(sc.CLIENT_ADDRESS) == RESOLVER_UP_V4):
            assert sc.DNS_SEARCH_EXPANSION_INDEX not in up.attributes


# --- truncation -----------------------------------------------------------------------------------
def test_truncated_answer_then_tcp_retry(setup: Setup, rx: OtlpReceiver, exporter: Dnsotel) -> None:
    lab = setup.lab
    name = f"t{secrets.token_hex(3)}.tc.lab."
    rows = lab.query("client", "--tcp-fallback", name, "A", server=setup.dnsmasq.v4)
    assert [r["transport"] for r in rows] == ["udp", "tcp"] and rows[0]["tc"], rows

    def both(sp: list[ReceivedSpan]) -> bool:
        mine = [
            s
            for s in sp
            if s.attributes.get(sc.CLIENT_ADDRESS) == lab.client.v4 and s.span.kind == CLIENT_KIND
        ]
        return {s.attributes.get(sc.NETWORK_TRANSPORT) for s in mine} == {"udp", "tcp"}

    spans = wait_spans(rx, both, name)
    mine = [
        s
        for s in spans
        if s.attributes.get(sc.CLIENT_ADDRESS) == lab.client.v4 and s.span.kind == CLIENT_KIND
    ]
    udp = next(s for s in mine if s.attributes[sc.NETWORK_TRANSPORT] == "udp")
    tcp = next(s for s in mine if s.attributes[sc.NETWORK_TRANSPORT] == "tcp")
    assert [e.name for e in udp.span.events] == [sc.SPAN_EVENT_TRUNCATED]
    (ev,) = [e for e in tcp.span.events if e.name == sc.SPAN_EVENT_TCP_RETRY_AFTER_TRUNCATION]
    ev_attrs: dict[str, Any] = {kv.key: kv.value.int_value or kv.value.string_value for kv in ev.attributes}
    assert ev_attrs[sc.DNS_ID] == rows[0]["id"] and ev_attrs[sc.CLIENT_PORT] == rows[0]["sport"]
    assert [(lk.trace_id, lk.span_id) for lk in tcp.span.links] == [(udp.span.trace_id, udp.span.span_id)]
    # the resolver's side of the client's TCP retry is linked the same way
    srv_tcp = [
        s
        for s in spans
        if s.span.kind == SERVER_KIND
        and s.attributes.get(sc.NETWORK_TRANSPORT) == "tcp"
        and s.attributes.get(sc.CLIENT_ADDRESS) == lab.client.v4
    ]
    assert srv_tcp and all(s.span.links for s in srv_tcp), describe(spans)


def test_resolv_conf_file_is_what_the_pod_sees(setup: Setup) -> None:
    """The lab's premise: the pod's process sees its netns' resolv.conf through /proc/<pid>/root."""
    lab = setup.lab
    pid = next(p.pid for p in lab.procs if p.ns == setup.search.name and p.argv[0] == "sleep")
    text = Path(f"/proc/{pid}/root/etc/resolv.conf").read_text()
    assert "ndots:5" in text and SEARCH[0] in text
