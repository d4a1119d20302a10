"""The sink's /metrics, read by prometheus-client's parser and scraped by the real Prometheus."""

from __future__ import annotations

from pathlib import Path

import dns.rcode
import pytest

from exporter.records import ROLE_CLIENT
from exporter.telemetry import semconv as sc
from exporter.telemetry.sink import TelemetrySink
from tests.prometheus import Prometheus, fetch, samples
from tests.unit.test_telemetry import FakeEnricher, make_exchange


def feed_mix(sink: TelemetrySink) -> None:
    for i in range(7):
        sink.on_response(make_exchange(qid=i, rcode=dns.rcode.NXDOMAIN, latency_ns=(i + 1) * 1_000_000))
    for i in range(3):
        sink.on_response(make_exchange(qid=i, latency_ns=200_000))
    sink.on_unanswered(make_exchange(answered=False))
    sink.on_unmatched(make_exchange().response, ROLE_CLIENT)  # type: ignore[arg-type]


def test_metrics_endpoint_uses_prometheus_names() -> None:
    sink = TelemetrySink(FakeEnricher(), prometheus_port=0, metric_interval_s=3600)
    try:
        feed_mix(sink)
        assert sink.prometheus_port
        text = fetch(f"http://127.0.0.1:{sink.prometheus_port}/metrics")
    finally:
        sink.shutdown(2)
    got = samples(text)
    nx = {
        "dns_role": "client",
        "dns_question_type": "A",
        "dns_response_code": "NXDOMAIN",
        "error_type": "NXDOMAIN",
        "server_address": "10.96.0.10",
        "dns_nameserver": "s/kube-system/kube-dns:53",
        "network_transport": "udp",
        "k8s_namespace_name": "default",
        "k8s_pod_name": "web-1",
    }
    assert got[("dns_lookup_duration_seconds_count", tuple(sorted(nx.items())))] == 7
    assert got[("dns_lookup_duration_seconds_bucket", tuple(sorted({**nx, "le": "0.005"}.items())))] == 5
    assert got[("dns_lookup_duration_seconds_bucket", tuple(sorted({**nx, "le": "+Inf"}.items())))] == 7
    assert got[("dns_lookup_duration_seconds_sum", tuple(sorted(nx.items())))] == pytest.approx(0.028)
    names = {n for n, _ in got}
    assert sc.prometheus_metric(sc.METRIC_QUERIES_UNANSWERED) == "dns_queries_unanswered_total"
    for metric in (
        sc.METRIC_QUERIES_UNANSWERED,
        sc.METRIC_RESPONSES_UNMATCHED,
        sc.METRIC_CAPTURE_PACKETS,
        sc.METRIC_CAPTURE_LOST,
        sc.METRIC_DECODE_ERRORS,
        sc.METRIC_PAIRS_PENDING,
        sc.METRIC_PAIRS_EVICTED,
        sc.METRIC_SPANS_EXPORTED,
        sc.METRIC_SPANS_DROPPED,
        sc.METRIC_NETNS_ATTACHED,
    ):
        assert sc.prometheus_metric(metric) in names, metric
    unanswered = [v for (n, _), v in got.items() if n == "dns_queries_unanswered_total"]
    assert unanswered == [1]


def test_real_prometheus_scrapes_the_sink(tmp_path: Path) -> None:
    sink = TelemetrySink(FakeEnricher(), prometheus_port=0, metric_interval_s=3600)
    try:
        with Prometheus(tmp_path, [f"127.0.0.1:{sink.prometheus_port}"]) as prom:
            feed_mix(sink)
            result = prom.wait_for('dns_lookup_duration_seconds_count{dns_response_code="NXDOMAIN"}')
        assert len(result) == 1, result
        value = result[0]["value"]
        assert isinstance(value, list)
        assert float(value[1]) == 7
        metric = result[0]["metric"]
        assert isinstance(metric, dict)
        assert metric["dns_nameserver"] == "s/kube-system/kube-dns:53"
        assert metric["job"] == "dnsotel"
    finally:
        sink.shutdown(2)
