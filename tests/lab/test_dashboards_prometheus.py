"""The dashboards' PromQL against a real Prometheus that scrapes the exporter's real /metrics.

The exporter's ``TelemetrySink`` (the same aggregates it exports over OTLP) serves ``/metrics``
on 127.0.0.1; exchanges built from real DNS wire messages (dnspython, decoded by
``exporter.dns.decode``) are fed to it continuously: a pod asking the cluster resolver
(NOERROR and NXDOMAIN), and the resolver asking an upstream that fails 40 % of the time
(SERVFAIL) and leaves some queries unanswered. Debian's /usr/bin/prometheus, started on
127.0.0.1 with a temporary directory, scrapes it every second and loads the generated rule
file. Every Prometheus query of every dashboard is then evaluated through the HTTP API, with
Grafana's variables set to "All"; the failed-responses panel must show the NXDOMAIN series,
the upstream panels the upstream's error and unanswered ratios.

Needs no root: only the Prometheus binary and loopback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import dns.rcode
import pytest
import yaml

from exporter.enrich import Workload, raw_endpoint
from exporter.records import PACKET_HOST, ROLE_CLIENT
from exporter.telemetry import semconv as sc
from exporter.telemetry.sink import TelemetrySink
from grafana import build
from tests import dnsmsg
from tests.dashboards import substitute, targets
from tests.prometheus import Prometheus

pytestmark = pytest.mark.lab

NODE = "lab-node"
CLUSTER = "lab"
POD_NETNS, RESOLVER_NETNS = 4026532101, 4026532102
POD_IP, SVC_IP, RESOLVER_IP, UPSTREAM_IP = "10.244.1.7", "10.96.0.10", "10.244.2.3", "198.18.0.1"
KUBE_DNS = "s/kube-system/kube-dns:53"
UPSTREAM = raw_endpoint(UPSTREAM_IP, 53)
# per feeding round (every 100 ms)
POD_NOERROR, POD_NXDOMAIN = 7, 3
UP_NOERROR, UP_SERVFAIL, UP_UNANSWERED = 6, 4, 1

# Grafana's variables when every selector is "All" (the dashboards' allValue is .*).
VARIABLES = {
    "$__rate_interval": "10s",
    "$__range": "20s",
    "${threshold}": "100",
    "$threshold": "100",
    "$cluster": ".*",
    "$node": ".*",
    "$namespace": ".*",
    "$pod": ".*",
    "$role": "client",
    "$nameserver": ".*",
    "$resolver_namespace": "kube-system",
}


class LabEnricher:
    """Two workloads on one node: an application pod and the cluster resolver."""

    def endpoint(self, addr: str, port: int) -> str:
        if addr == SVC_IP and port == 53:
            return KUBE_DNS
        return raw_endpoint(addr, port)

    def workload(self, netns: int) -> Workload:
        if netns == POD_NETNS:
            return Workload(node=NODE, namespace="default", pod="web-1", container="app")
        if netns == RESOLVER_NETNS:
            return Workload(node=NODE, namespace="kube-system", pod="coredns-0", container="coredns")
        return Workload(node=NODE)


@dataclass
class Feeder:
    sink: TelemetrySink
    stop: threading.Event
    qid: int = 0

    def exchange(
        self, netns: int, client: str, server: str, name: str, rcode: dns.rcode.Rcode, answered: bool
    ) -> None:
        self.qid = (self.qid + 1) & 0xFFFF
        q = dnsmsg.query(name, "A", self.qid)
        r = None
        if answered:
            r = dnsmsg.response(q, rcode, ("192.0.2.10",) if rcode == dns.rcode.NOERROR else (), ra=False)
        ex = dnsmsg.exchange(
            q,
            r,
            t0=time.time_ns() - 3_000_000,
            latency_ns=3_000_000,
            netns=netns,
            client=(client, 30000 + self.qid % 30000),
            server=(server, 53),
            timeout_ns=5_000_000_000,
        )
        if answered:
            self.sink.on_response(ex)
        else:
            self.sink.on_unanswered(ex)

    def round(self) -> None:
        for _ in range(POD_NOERROR):
            self.exchange(
                POD_NETNS, POD_IP, SVC_IP, "api.default.svc.cluster.local.", dns.rcode.NOERROR, True
            )
        for _ in range(POD_NXDOMAIN):
            self.exchange(POD_NETNS, POD_IP, SVC_IP, "api.svc.cluster.local.", dns.rcode.NXDOMAIN, True)
        for _ in range(UP_NOERROR):
            self.exchange(RESOLVER_NETNS, RESOLVER_IP, UPSTREAM_IP, "example.com.", dns.rcode.NOERROR, True)
        for _ in range(UP_SERVFAIL):
            self.exchange(
                RESOLVER_NETNS, RESOLVER_IP, UPSTREAM_IP, "broken.example.", dns.rcode.SERVFAIL, True
            )
        for _ in range(UP_UNANSWERED):
            self.exchange(RESOLVER_NETNS, RESOLVER_IP, UPSTREAM_IP, "slow.example.", dns.rcode.NOERROR, False)
        self.late_response()

    def late_response(self) -> None:
        """A response after its query timed out: counted in dns.responses.unmatched."""
        r = dnsmsg.response(dnsmsg.query("slow.example.", "A"), ra=False)
        m = dnsmsg.meta(time.time_ns(), RESOLVER_NETNS, PACKET_HOST, (UPSTREAM_IP, 53), (RESOLVER_IP, 31000))
        self.sink.on_unmatched(dnsmsg.packet(m, r), ROLE_CLIENT)

    def run(self) -> None:
        while not self.stop.wait(0.1):
            self.round()


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    tmp = tmp_path_factory.mktemp("prometheus")
    rules = yaml.safe_load(build.RULES_FILE.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"  # evaluate now, not once a minute
    (tmp / "dnsotel.rules.yaml").write_text(yaml.safe_dump(rules))
    sink = TelemetrySink(LabEnricher(), node=NODE, prometheus_port=0, prometheus_addr="127.0.0.1")
    stop = threading.Event()
    feeder = threading.Thread(target=Feeder(sink, stop).run, daemon=True)
    feeder.start()
    try:
        with Prometheus(
            tmp,
            [f"127.0.0.1:{sink.prometheus_port}"],
            # /metrics carries no resource attributes; the collector's
            # resource_to_telemetry_conversion adds k8s_node_name in production.
            labels={sc.prometheus_label(sc.K8S_NODE_NAME): NODE, "cluster": CLUSTER},
            rule_files=[tmp / "dnsotel.rules.yaml"],
        ) as p:
            # ready, and at least 15 s of scrapes (two $__rate_interval windows)
            p.wait_for('count_over_time(up{job="dnsotel"}[1m]) >= 15 and up{job="dnsotel"} == 1', interval=1)
            yield p
    finally:
        stop.set()
        feeder.join(5)
        sink.shutdown()


def panel_queries() -> dict[tuple[str, str, str], str]:
    return {
        (model["uid"], panel["title"], target["refId"]): substitute(target["expr"], VARIABLES)
        for _, model, panel, target in targets("prometheus")
    }


def find(uid: str, title: str, ref: str = "A") -> str:
    return panel_queries()[(uid, title, ref)]


def test_every_panel_query_evaluates(prom: Prometheus) -> None:
    queries = panel_queries()
    empty = [key for key, expr in queries.items() if not prom.query(expr)]
    # With traffic of every kind flowing, only panels about failure modes the feed does not
    # produce may be empty; none is expected here (health counters are created at zero).
    assert not empty, f"panels without data: {empty}"


def test_failed_responses_panel_shows_nxdomain(prom: Prometheus) -> None:
    result = prom.query(find(build.UID_FAILED, "Failed responses by response code"))
    by_code = {r["metric"].get(build.RCODE): float(r["value"][1]) for r in result}
    assert by_code.get("NXDOMAIN", 0) > 0, by_code
    assert by_code.get("SERVFAIL", 0) > 0, by_code
    assert "NOERROR" not in by_code
    pods = prom.query(find(build.UID_FAILED, "Failed responses by pod and code"))
    rows = {(r["metric"][build.POD], r["metric"][build.RCODE]) for r in pods}
    assert ("web-1", "NXDOMAIN") in rows and ("coredns-0", "SERVFAIL") in rows, rows


def test_upstream_panels_show_error_and_unanswered_ratio(prom: Prometheus) -> None:
    errors = prom.query(find(build.UID_UPSTREAM, "Error ratio per nameserver"))
    ratios = {r["metric"][build.NAMESERVER]: float(r["value"][1]) for r in errors}
    assert set(ratios) == {UPSTREAM}, ratios  # the pod's queries to kube-dns are not upstream traffic
    assert ratios[UPSTREAM] == pytest.approx(UP_SERVFAIL / (UP_NOERROR + UP_SERVFAIL), abs=0.05)
    unanswered = prom.query(find(build.UID_UPSTREAM, "Unanswered ratio per nameserver"))
    un = {r["metric"][build.NAMESERVER]: float(r["value"][1]) for r in unanswered}
    expected = UP_UNANSWERED / (UP_NOERROR + UP_SERVFAIL + UP_UNANSWERED)
    assert un[UPSTREAM] == pytest.approx(expected, abs=0.03), un


def test_overview_latency_and_alert_rules_load(prom: Prometheus) -> None:
    p99 = prom.query(find(build.UID_OVERVIEW, "Latency percentiles", "C"))
    assert len(p99) == 1 and 0.001 <= float(p99[0]["value"][1]) <= 0.005, p99  # every latency is 3 ms
    rules = prom.api("rules")["data"]["groups"]
    states = {r["name"]: r["state"] for g in rules for r in g["rules"]}
    assert set(states) == {a.name for a in build.alerts()}
    assert all(r.get("health") == "ok" for g in rules for r in g["rules"]), rules
    # 40 % SERVFAIL and 9 % unanswered from the upstream: both alerts are at least pending
    assert states["DNSServfailRefusedRatioHigh"] in {"pending", "firing"}, states
    assert states["DNSNameserverUnansweredRatioHigh"] in {"pending", "firing"}, states
    assert states["DNSOTelCaptureLosingPackets"] == "inactive", states
