"""``dnsotel run``'s /metrics scraped by the real Prometheus, and the newcomer mode (issue 4).

``dnsotel run`` runs as a subprocess (helpers in ``test_run_otlp``), capturing in the lab's
client namespace. Debian's ``/usr/bin/prometheus`` runs on 127.0.0.1 with a temporary data
directory, scrapes the exporter every second and is asked, through its HTTP API, what a
dashboard would ask.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.telemetry import semconv as sc
from tests.lab.lab import Dnsmasq, Lab
from tests.lab.test_run_otlp import (
    TIMEOUT_MS,
    histogram_counts,
    otlp_env,
    running,
)
from tests.otlp_receiver import OtlpReceiver
from tests.prometheus import Prometheus, free_port, samples
from tests.wait import wait_for

pytestmark = pytest.mark.lab

NEWCOMER_PORT = 9464


def sample_sum(text: str, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, lab), v in samples(text).items()
        if n == name and all(dict(lab).get(k) == val for k, val in labels.items())
    )


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


def test_prometheus_scrapes_dnsotel_run(
    lab: Lab, dnsmasq: Dnsmasq, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    """NXDOMAIN count by Prometheus == NXDOMAIN queries sent == the same count over OTLP."""
    metrics_port = free_port()
    env = otlp_env(receiver, DNSOTEL_PROMETHEUS_PORT=str(metrics_port))
    with (
        Prometheus(tmp_path, [f"127.0.0.1:{metrics_port}"]) as prom,
        running(tmp_path, [lab.client.ns.path], env) as proc,
    ):
        attached = sc.prometheus_metric(sc.METRIC_NETNS_ATTACHED)

        def scraped_attached() -> bool:
            assert proc.alive(), proc.stderr()[-3000:]
            return prom.value(attached) == 1

        wait_for(scraped_attached, 60, lambda: f"{attached} == 1 in Prometheus\n{proc.stderr()[-2000:]}", 0.5)
        nx = [f"p{i}.nx.lab." for i in range(4)]
        ok = ["p1.ok.lab.", "p2.ok.lab."]
        rows = lab.query("client", "--id", "5000", *nx, *ok, server=dnsmasq.v4)
        assert [r["rcode"] for r in rows] == ["NXDOMAIN"] * 4 + ["NOERROR"] * 2
        count = sc.prometheus_metric(sc.METRIC_LOOKUP_DURATION) + "_count"
        role = sc.prometheus_label(sc.DNS_ROLE)
        rcode = sc.prometheus_label(sc.DNS_RESPONSE_CODE)
        q_nx = f'sum({count}{{{rcode}="NXDOMAIN",{role}="client"}})'
        q_ok = f'sum({count}{{{rcode}="NOERROR",{role}="client"}})'
        wait_for(
            lambda: prom.value(q_nx) == 4 and prom.value(q_ok) == 2,
            30,
            lambda: "NX/OK in Prometheus",
            0.5,
        )
        # stays exact (no double counting across scrapes)
        time.sleep(2)
        assert prom.value(q_nx) == 4
        assert prom.value(q_ok) == 2
        lost = sc.prometheus_metric(sc.METRIC_CAPTURE_LOST)
        assert prom.value(f"sum({lost})") == 0
        assert proc.stop() == 0, proc.stderr()[-3000:]
    # the same aggregates went out over OTLP
    hist = receiver.latest_metrics()[sc.METRIC_LOOKUP_DURATION]
    assert histogram_counts(hist, sc.DNS_RESPONSE_CODE, dns__role="client") == {"NXDOMAIN": 4, "NOERROR": 2}
    # an OTLP endpoint is configured: no table on stdout
    assert proc.stdout() == ""


def test_newcomer_mode(lab: Lab, dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    """No OTLP endpoint: the table on stdout, /metrics on 127.0.0.1:9464.

    dnsotel runs in the lab's upstream namespace (its own loopback), so port 9464 is
    certainly its own whatever else runs on this machine; it captures in the client's.
    """
    ns = lab.upstream.name
    env = {"DNSOTEL_TIMEOUT_MS": str(TIMEOUT_MS)}
    url = f"http://127.0.0.1:{NEWCOMER_PORT}/metrics"
    get = f"import sys, urllib.request as u; sys.stdout.write(u.urlopen({url!r}, timeout=5).read().decode())"

    def scrape() -> str:
        out = lab.exec("upstream", [sys.executable, "-c", get], check=False)
        return out.stdout if out.returncode == 0 else ""

    with running(tmp_path, [lab.client.ns.path], env, in_netns=ns) as proc:
        attached = sc.prometheus_metric(sc.METRIC_NETNS_ATTACHED)

        def ready() -> bool:
            assert proc.alive(), proc.stderr()[-3000:]
            text = scrape()
            return bool(text) and sample_sum(text, attached) == 1

        wait_for(ready, 60, lambda: f"{url} in {ns}\n{proc.stderr()[-2000:]}", 0.3)
        listening = lab.exec("upstream", ["ss", "-H", "-l", "-t", "-n"]).stdout.split()
        assert f"127.0.0.1:{NEWCOMER_PORT}" in listening  # loopback only: nothing else has :9464
        assert not [
            a for a in listening if a.endswith(f":{NEWCOMER_PORT}") and not a.startswith("127.0.0.1:")
        ]
        rows = lab.query("client", "--id", "6000", "n1.nx.lab.", "n1.ok.lab.", server=dnsmasq.v4)
        assert [r["rcode"] for r in rows] == ["NXDOMAIN", "NOERROR"]
        count = sc.prometheus_metric(sc.METRIC_LOOKUP_DURATION) + "_count"
        rcode = sc.prometheus_label(sc.DNS_RESPONSE_CODE)
        wait_for(lambda: sample_sum(scrape(), count, **{rcode: "NXDOMAIN"}) == 1, 10, lambda: scrape(), 0.3)
        assert proc.stop() == 0, proc.stderr()[-3000:]
    table = proc.stdout().splitlines()
    print("\n".join(table))
    assert len(table) >= 3, table  # a header, then a row per pair
    assert any("n1.nx.lab." in line and "NXDOMAIN" in line for line in table), table
    assert any("n1.ok.lab." in line and "NOERROR" in line for line in table), table
