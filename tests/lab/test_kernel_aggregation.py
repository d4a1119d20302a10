"""In-kernel aggregation through the real ``dnsotel run``: what a user sees must not change.

``DNSOTEL_PAIRING=kernel`` with ``DNSOTEL_SPAN_SAMPLE_RATIO=0`` (spans only for anomalies):
the kernel counts ordinary exchanges (NOERROR with answers, no TC, faster than the slow
threshold) in its histogram map and sends only the rest to user space. A caching dnsmasq
gives every kind: cache misses (the resolver asks upstream: its server queries are
announced and go to user space), cache hits (counted in the kernel on the resolver side
too), queries with and without EDNS, IPv6, NXDOMAIN, SERVFAIL, a slow answer and a query
never answered.

Checked against what the user would check: the histogram counts per role and rcode equal
the queries sent; the client's histogram buckets and sum match the latencies tcpdump
measured in the client's namespace; ``dnsotel.capture.packets`` equals tcpdump's packet
count; spans exist for the anomalies only, and the slow resolution is still one trace
(client -> resolver -> upstream); the exit summary says how many pairs the kernel counted.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator

import pytest

from exporter.telemetry import semconv as sc
from tests.conftest import require_tool
from tests.lab.lab import UPSTREAM_V4, Dnsmasq, Lab
from tests.lab.test_run_otlp import (
    CLIENT,
    SERVER,
    TIMEOUT_MS,
    counter,
    find_spans,
    histogram_counts,
    otlp_env,
    running,
    tcpdumps,
    wait_attached,
)
from tests.otlp_receiver import OtlpReceiver, attributes

pytestmark = pytest.mark.lab

SLACK_NS = 20_000  # tcpdump and the socket filter stamp one packet this close (a few µs seen)


@pytest.fixture(scope="module")
def cached(lab: Lab) -> Iterator[Dnsmasq]:
    res = Dnsmasq(lab, cache=True).start()
    yield res
    res.stop()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


def test_kernel_aggregation_keeps_every_count_and_anomaly(
    lab: Lab, cached: Dnsmasq, receiver: OtlpReceiver
) -> None:
    require_tool("tcpdump", "tshark")
    client_ns, resolver_ns = lab.client.ns, lab.resolver
    ok = [f"agg{i}.ok.lab." for i in range(5)]
    env = otlp_env(receiver, DNSOTEL_PAIRING="kernel", DNSOTEL_SPAN_SAMPLE_RATIO="0")
    with (
        tcpdumps(lab, "client", "resolver") as dumps,
        running(lab.tmp, [client_ns.path, resolver_ns.path], env) as proc,
    ):
        wait_attached(proc, receiver, 2)
        rows = lab.query("client", "--id", "3000", *ok, server=cached.v4)  # misses: upstream
        rows += lab.query("client", "--id", "3100", *ok, server=cached.v4)  # hits
        rows += lab.query("client", "--id", "3200", "--no-edns", *ok, server=cached.v4)  # hits, no OPT
        rows += lab.query("client", "--id", "3300", *ok[:2], server=cached.v6)  # hits over IPv6
        anomalies = ["agg.nx.lab.", "agg.servfail.lab.", "agg.delay-150ms.lab."]
        rows += lab.query("client", "--id", "3400", *anomalies, server=cached.v4)
        rows += lab.query("client", "--id", "3500", "--timeout", "0.3", "agg.never.lab.", server=cached.v4)
        time.sleep(TIMEOUT_MS / 1000 + 0.5)  # the never-answered query expires
        t_stop = time.time_ns()
        assert proc.stop() == 0, proc.stderr()[-3000:]
    got = Counter(str(r["rcode"]) for r in rows)
    assert got == {"NOERROR": 18, "NXDOMAIN": 1, "SERVFAIL": 1, "None": 1}, rows

    m = receiver.latest_metrics()  # the final export, after SIGTERM
    hist = m[sc.METRIC_LOOKUP_DURATION]
    unans = m[sc.METRIC_QUERIES_UNANSWERED]
    sent = {"NOERROR": 18, "NXDOMAIN": 1, "SERVFAIL": 1}
    client_v4 = histogram_counts(hist, sc.DNS_RESPONSE_CODE, dns__role="client", server__address=cached.v4)
    client_v6 = histogram_counts(hist, sc.DNS_RESPONSE_CODE, dns__role="client", server__address=cached.v6)
    assert client_v4 + client_v6 == sent and client_v6 == {"NOERROR": 2}
    assert histogram_counts(hist, sc.DNS_RESPONSE_CODE, dns__role="server") == sent
    assert counter(unans, dns__role="client", server__address=cached.v4) == 1
    assert counter(unans, dns__role="server") == 1
    asked = {*ok, *anomalies, "agg.never.lab."}
    upstream = Counter(
        {"answer": "NOERROR", "nxdomain": "NXDOMAIN", "servfail": "SERVFAIL", "never": "never"}[q["action"]]
        for q in lab.upstream_queries()
        if q["name"] in asked
    )
    up_never = upstream.pop("never", 0)
    assert upstream["NOERROR"] == 6  # the five misses and the slow one: the hits stayed in the cache
    assert (
        histogram_counts(hist, sc.DNS_RESPONSE_CODE, dns__role="client", server__address=UPSTREAM_V4)
        == upstream
    )
    assert counter(unans, dns__role="client", server__address=UPSTREAM_V4) == up_never

    # the client's NOERROR series over IPv4 (kernel-counted and one slow exchange from user
    # space) against the latencies tcpdump saw in the client's namespace
    (client_dump, _resolver_dump) = dumps
    seen = client_dump.read()
    latencies = []
    for r in rows:
        if r["rcode"] == "NOERROR" and r["server"] == cached.v4:
            q_ts, r_ts = client_dump.times(r["id"], r["sport"], "udp")
            latencies.append(r_ts - q_ts)
    series = {sc.DNS_ROLE: "client", sc.SERVER_ADDRESS: cached.v4, sc.DNS_RESPONSE_CODE: "NOERROR"}
    points = [
        p
        for p in hist.histogram.data_points
        if all(attributes(p.attributes).get(k) == v for k, v in series.items())
    ]
    assert len(points) == 1
    point = points[0]
    assert point.count == len(latencies) == 16
    bounds_ns = [round(b * 1e9) for b in sc.LOOKUP_DURATION_BUCKETS]
    assert list(point.explicit_bounds) == list(sc.LOOKUP_DURATION_BUCKETS)
    cumulative = 0
    for i, b in enumerate(bounds_ns):
        cumulative += point.bucket_counts[i]
        surely_below = sum(1 for x in latencies if x <= b - SLACK_NS)
        maybe_below = sum(1 for x in latencies if x <= b + SLACK_NS)
        assert surely_below <= cumulative <= maybe_below, (i, b, sorted(latencies), list(point.bucket_counts))
    assert abs(point.sum - sum(latencies) / 1e9) <= len(latencies) * SLACK_NS / 1e9
    assert abs(point.min - min(latencies) / 1e9) <= SLACK_NS / 1e9
    assert abs(point.max - max(latencies) / 1e9) <= SLACK_NS / 1e9
    assert bisect_left(sc.LOOKUP_DURATION_BUCKETS, point.max) > bisect_left(
        sc.LOOKUP_DURATION_BUCKETS, point.min
    )

    # every packet counted, none lost, none left pending
    packets = sum(1 for p in seen if p.ts_ns < t_stop) + sum(
        1 for p in _resolver_dump.read() if p.ts_ns < t_stop
    )
    assert counter(m[sc.METRIC_CAPTURE_PACKETS]) == packets
    assert counter(m[sc.METRIC_CAPTURE_LOST]) == 0
    assert counter(m[sc.METRIC_RESPONSES_UNMATCHED]) == 0

    # spans: the anomalies only, on each side; the slow resolution is one trace of three
    spans = receiver.spans()
    client_ids = sorted(
        s.attributes[sc.DNS_ID] for s in find_spans(spans, kind=CLIENT, dnsotel__netns__id=client_ns.inode)
    )
    assert client_ids == [3400, 3401, 3402, 3500]
    server_ids = sorted(
        s.attributes[sc.DNS_ID] for s in find_spans(spans, kind=SERVER, dnsotel__netns__id=resolver_ns.inode)
    )
    assert server_ids == [3400, 3401, 3402, 3500]
    slow = [s for s in spans if s.attributes.get(sc.DNS_QUESTION_NAME) == "agg.delay-150ms.lab."]
    assert sorted(s.span.kind for s in slow) == sorted([CLIENT, SERVER, CLIENT])
    assert len({s.span.trace_id for s in slow}) == 1, [s.attributes for s in slow]

    # what the kernel counted: the client's 17 fast answers, the resolver's 12 cache hits and
    # its 5 fast upstream exchanges; the misses' server side and every anomaly went the user way
    summary = proc.stderr().strip().splitlines()[-1]
    assert summary.endswith("; 34 of the pairs counted in the kernel"), summary
    print(summary)
