"""``dnsotel run``'s /metrics scraped by the real Prometheus, and the newcomer mode (issue 4).

``dnsotel run`` runs as a subprocess (helpers in ``test_run_otlp``), capturing in the lab's
client namespace. Debian's ``/usr/bin/prometheus`` runs on 127.0.0.1 with a temporary data
directory, scrapes the exporter every second and is asked, through its HTTP API, what a
dashboard would ask.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.telemetry import semconv as sc
from tests.conftest import require_tool
from tests.lab.lab import Dnsmasq, Lab
from tests.lab.test_run_otlp import (
    TIMEOUT_MS,
    histogram_counts,
    otlp_env,
    running,
    wait_for,
)
from tests.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.lab

PROMETHEUS = "/usr/bin/prometheus"
NEWCOMER_PORT = 9464


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def sample_sum(text: str, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, lab), v in samples(text).items()
        if n == name and all(dict(lab).get(k) == val for k, val in labels.items())
    )


class Prometheus:
    """``/usr/bin/prometheus`` on 127.0.0.1:<free port>, scraping ``targets`` every second."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        self.tmp = tmp
        self.port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: dnsotel\n    static_configs: [{{targets: {json.dumps(targets)}}}]\n"
        )
        self.log = tmp / "prometheus.log"
        with self.log.open("wb") as err:
            self.popen = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

    def query(self, promql: str) -> list[dict[str, Any]]:
        assert self.popen.poll() is None, self.log.read_text()[-2000:]
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            body = json.loads(fetch(url))
        except OSError:
            return []
        result: list[dict[str, Any]] = body.get("data", {}).get("result", [])
        return result

    def value(self, promql: str) -> float | None:
        """The value of a query that yields one series (None while it yields nothing)."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()  # by PID
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


def test_prometheus_scrapes_dnsotel_run(
    lab: Lab, dnsmasq: Dnsmasq, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    """NXDOMAIN count by Prometheus == NXDOMAIN queries sent == the same count over OTLP."""
    require_tool(PROMETHEUS)
    metrics_port = free_port()
    env = otlp_env(receiver, DNSOTEL_PROMETHEUS_PORT=str(metrics_port))
    target = f"127.0.0.1:{metrics_port}"
    prom = Prometheus(tmp_path, [target])
    try:
        with running(tmp_path, [lab.client.ns.path], env) as proc:
            attached = sc.prometheus_metric(sc.METRIC_NETNS_ATTACHED)

            def scraped_attached() -> bool:
                assert proc.alive(), proc.stderr()[-3000:]
                return prom.value(attached) == 1

            wait_for(
                scraped_attached, 60, lambda: f"{attached} == 1 in Prometheus\n{proc.stderr()[-2000:]}", 0.5
            )
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
    finally:
        prom.stop()
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
