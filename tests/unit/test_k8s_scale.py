"""Memory and speed of the index for 10,000 pods and 2,000 services, through the real client.

Prints the figures (run with ``-s``); asserts only loose bounds, figures are read, not asserted.
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc

from exporter.k8s.index import PODS, SERVICES, PodIndex
from exporter.k8s.watch import ListWatcher
from tests.k8s_fake_api import FakeApiServer, pod, service

N_PODS = 10_000
N_SVCS = 2_000


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _pods() -> list[dict[str, object]]:
    out = []
    for i in range(N_PODS):
        ns = f"team-{i % 50}"
        app = f"app-{i % 400}"
        out.append(
            pod(
                ns,
                f"{app}-{i:05d}-7d9f8b6c5d-x{i % 97:02d}zq",
                ip=[f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", f"fd00:10::{i:x}"],
                node=f"node-{i % 100}",
                containers={"app": f"{i:064x}", "istio-proxy": f"{i + 1_000_000:064x}"},
                labels={
                    "app": app,
                    "pod-template-hash": f"7d9f8b{i % 997:04d}",
                    "team": ns,
                    "version": "v1",
                    "app.kubernetes.io/part-of": "shop",
                },
                annotations={"kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z"},
            )
        )
    return out


def test_ten_thousand_pods() -> None:
    with FakeApiServer() as api:
        api.bulk_load(PODS, _pods())
        api.bulk_load(
            SERVICES,
            [service(f"team-{i % 50}", f"svc-{i}", f"10.96.{i >> 8}.{i & 255}") for i in range(N_SVCS)],
        )
        core = api.client()

        gc.collect()
        rss0 = _rss_kib()
        tracemalloc.start()
        snap0 = tracemalloc.take_snapshot()
        index = PodIndex("node-1")
        t0 = time.perf_counter()
        ListWatcher(PODS, core.list_pod_for_all_namespaces, index, page_size=500)._list()
        t_pods = time.perf_counter() - t0
        ListWatcher(SERVICES, core.list_service_for_all_namespaces, index, page_size=500)._list()
        gc.collect()
        _, peak = tracemalloc.get_traced_memory()
        snap1 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        retained = sum(s.size_diff for s in snap1.compare_to(snap0, "filename") if s.size_diff > 0)
        gc.collect()
        rss1 = _rss_kib()

        assert len(index) == N_PODS and len(index.services()) == N_SVCS
        ips = [f"10.0.{(i >> 8) & 255}.{i & 255}" for i in range(0, N_PODS, 7)] + ["8.8.8.8"] * 100
        t0 = time.perf_counter()
        rounds = 20
        for _ in range(rounds):
            for ip in ips:
                index.endpoint(ip, 53)
        per_lookup_ns = (time.perf_counter() - t0) / (rounds * len(ips)) * 1e9
        assert index.endpoint("10.0.0.1", 53).startswith("p/team-1/app-1-00001")
        assert index.endpoint("10.96.0.5", 53) == "s/team-5/svc-5:53"

        print(
            f"\n[k8s index] {N_PODS} pods + {N_SVCS} services (2 IPs, 2 containers, 5 labels per pod): "
            f"retained {retained / 1e6:.1f} MB ({retained / N_PODS:.0f} B/pod incl. services), "
            f"peak during list {peak / 1e6:.1f} MB, RSS +{(rss1 - rss0) / 1024:.1f} MiB "
            f"(pid {os.getpid()}), pod list {t_pods:.2f} s (20 pages), endpoint() {per_lookup_ns:.0f} ns"
        )
        assert retained < 40e6  # loose: the figure is what matters
