"""The Kubernetes enricher on the lab: real netns, real processes in cgroups named the way
kubelet (systemd driver) and containerd name them, a real /proc, the real ``kubernetes``
client against the fake API server; the API goes away mid-run and comes back.

The cgroups (tests/lab/k8s_cgroups.py) are created under the cgroup v1 ``name=systemd``
hierarchy with a per-run slice name and removed at teardown.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.enrich import Workload
from exporter.k8s import start_enricher
from exporter.k8s.index import PODS
from tests.k8s_fake_api import FakeApiServer, pod, service
from tests.lab.k8s_cgroups import PodCgroups, pod_cgroups
from tests.lab.lab import Dnsmasq, Lab
from tests.wait import wait_for

pytestmark = pytest.mark.lab

NODE = "lab-node"


@pytest.fixture(scope="module")
def cgroups() -> Iterator[PodCgroups]:
    with pod_cgroups() as cg:
        yield cg


def test_enricher_on_the_lab(lab: Lab, dnsmasq: Dnsmasq, cgroups: PodCgroups) -> None:
    client_uid, dns_uid = str(uuid.uuid4()), str(uuid.uuid4())
    sandbox_id, app_id = secrets.token_hex(32), secrets.token_hex(32)
    dns_sandbox_id, coredns_id = secrets.token_hex(32), secrets.token_hex(32)

    # the client pod: a pause-like sandbox and an app container, both in the client netns
    pause = lab.spawn("client", ["sleep", "600"], tag="pause")
    app = lab.spawn("client", ["sleep", "600"], tag="app")
    cgroups.add(client_uid, sandbox_id, pause.pid)
    cgroups.add(client_uid, app_id, app.pid)
    # the resolver "pod": dnsmasq is coredns; its sandbox is another sleeper in the resolver netns
    dns_pause = lab.spawn("resolver", ["sleep", "600"], tag="dns-pause")
    cgroups.add(dns_uid, dns_sandbox_id, dns_pause.pid)
    cgroups.add(dns_uid, coredns_id, dnsmasq.pid)
    assert f"cri-containerd-{app_id}.scope" in Path(f"/proc/{app.pid}/cgroup").read_text()

    with FakeApiServer() as api:
        api.add(
            PODS,
            pod(
                "default",
                "client-7d9f",
                uid=client_uid,
                ip=[lab.client.v4, lab.client.v6],
                node=NODE,
                containers={"app": app_id},
                labels={"app": "client"},
            ),
        )
        api.add(
            PODS,
            pod(
                "kube-system",
                "coredns-5d78c-abcde",
                uid=dns_uid,
                ip=["198.18.100.1"],
                node=NODE,
                containers={"coredns": coredns_id},
                labels={"k8s-app": "kube-dns"},
            ),
        )
        api.add("services", service("kube-system", "kube-dns", [dnsmasq.v4, dnsmasq.v6]))
        enricher = start_enricher(
            NODE,
            cluster_names=True,
            api=api.client(),
            proc_root="/proc",
            backoff_initial_s=0.05,
            backoff_max_s=0.3,
            stale_after_s=1.0,
            min_healthy_s=0.5,
        )
        try:
            client_ns = lab.namespaces[lab.client.name].inode
            resolver_ns = lab.namespaces[lab.resolver.name].inode
            upstream_ns = lab.namespaces[lab.upstream.name].inode
            want_client = Workload(NODE, "default", "client-7d9f", "app")
            want_dns = Workload(NODE, "kube-system", "coredns-5d78c-abcde", "coredns")
            enricher.workload(client_ns)  # first sight: answered at once, looked up in the background
            wait_for(lambda: enricher.workload(client_ns) == want_client, 15, "client netns -> pod")
            wait_for(lambda: enricher.workload(resolver_ns) == want_dns, 15, "resolver netns -> pod")
            assert enricher.workload(upstream_ns) == Workload(NODE)  # a netns of no pod
            try:
                host_ns = int(os.readlink("/proc/1/ns/net")[5:-1])
            except PermissionError:  # PID 1 more privileged than us (no CAP_SYS_PTRACE over it)
                host_ns = None
            if host_ns is not None:
                assert enricher.workload(host_ns) == Workload(NODE, host_network=True)
            assert enricher.endpoint(dnsmasq.v4, 53) == "s/kube-system/kube-dns:53"
            assert enricher.endpoint(dnsmasq.v6, 53) == "s/kube-system/kube-dns:53"
            assert enricher.endpoint(lab.client.v4, 38480) == "p/default/client-7d9f:38480"
            assert enricher.endpoint("198.18.100.2", 53) == "r/198.18.100.2:53"  # the upstream

            # the resolver really answers the client through the names we just checked
            rows = lab.query("client", "a.ok.lab.", "A", server=dnsmasq.v4)
            assert rows and rows[0].get("rcode") in ("NOERROR", 0)

            # the API goes away: lookups go on, never waiting; names degrade after stale_after
            api.stop()
            worst = 0.0
            t_end = time.monotonic() + 2.0
            while time.monotonic() < t_end:
                t0 = time.perf_counter()
                enricher.endpoint(dnsmasq.v4, 53)
                enricher.workload(client_ns)
                worst = max(worst, time.perf_counter() - t0)
            # a lookup that waited on the API would take its client timeout (seconds); a dict read
            # takes microseconds: 1 s tells them apart even on a loaded 2-core machine
            assert worst < 1.0, f"a lookup took {worst * 1000:.1f} ms with the API down"
            wait_for(lambda: enricher.endpoint(dnsmasq.v4, 53) == f"r/{dnsmasq.v4}:53", 15, "degraded")
            wait_for(lambda: enricher.workload(client_ns) == Workload(NODE), 15, "workload degraded")

            # the API is back: names return
            api.start()
            wait_for(lambda: enricher.endpoint(dnsmasq.v4, 53) == "s/kube-system/kube-dns:53", 15, "back")
            wait_for(lambda: enricher.workload(client_ns) == want_client, 15, "workload back")
            assert enricher.scan_seconds < 1.0
        finally:
            enricher.stop()
