"""PodIndex semantics: which IPs name which pod/service, and what is never mapped."""

from __future__ import annotations

from exporter.k8s.index import NODES, PODS, SERVICES, PodIndex, pod_from_json, strip_container_id
from tests.k8s_fake_api import node, pod, service


def test_dual_stack_pods_and_services() -> None:
    idx = PodIndex("n1")
    idx.replace(PODS, [pod("default", "web", ip=["10.0.0.5", "FD00:0:0::5"])])
    idx.replace(SERVICES, [service("kube-system", "kube-dns", ["10.96.0.10", "fd00:96::a"])])
    assert idx.endpoint("10.0.0.5", 38480) == "p/default/web:38480"
    assert idx.endpoint("fd00::5", 53) == "p/default/web:53"  # API text normalized to inet_ntop form
    assert idx.endpoint("10.96.0.10", 53) == "s/kube-system/kube-dns:53"
    assert idx.endpoint("fd00:96::a", 53) == "s/kube-system/kube-dns:53"
    assert idx.endpoint("168.63.129.16", 53) == "r/168.63.129.16:53"
    assert idx.endpoint("2001:db8::1", 53) == "r/[2001:db8::1]:53"


def test_host_network_and_finished_pods_are_not_mapped() -> None:
    idx = PodIndex("n1")
    idx.replace(
        PODS,
        [
            pod("kube-system", "kube-proxy", ip="192.0.2.1", host_network=True),
            pod("default", "job-done", ip="10.0.0.7", phase="Succeeded"),
            pod("default", "job-new", ip="10.0.0.7"),  # the finished pod's IP was handed on
        ],
    )
    idx.replace(NODES, [node("n1", ["192.0.2.1"]), node("n2", ["192.0.2.2"])])
    assert idx.endpoint("192.0.2.1", 53) == "r/192.0.2.1:53"
    assert idx.endpoint("10.0.0.7", 53) == "p/default/job-new:53"
    assert idx.node_ips == frozenset({"192.0.2.1"})


def test_delete_of_an_old_owner_keeps_the_new_owner_of_an_ip() -> None:
    idx = PodIndex()
    old = pod("default", "old", ip="10.0.0.9", uid="u-old")
    new = pod("default", "new", ip="10.0.0.9", uid="u-new")
    idx.apply(PODS, "ADDED", old)
    idx.apply(PODS, "ADDED", new)
    idx.apply(PODS, "DELETED", old)
    assert idx.endpoint("10.0.0.9", 1) == "p/default/new:1"
    g = idx.generation
    idx.apply(PODS, "DELETED", new)
    assert idx.endpoint("10.0.0.9", 1) == "r/10.0.0.9:1"
    assert idx.generation == g + 1


def test_service_ip_wins_and_headless_services_have_none() -> None:
    idx = PodIndex()
    idx.apply(SERVICES, "ADDED", service("default", "svc", "10.96.0.20"))
    idx.apply(PODS, "ADDED", pod("default", "weird", ip="10.96.0.20"))
    assert idx.endpoint("10.96.0.20", 80) == "s/default/svc:80"
    headless = service("default", "headless", "None")
    idx.apply(SERVICES, "ADDED", headless)
    assert idx.endpoint("None", 80) == "r/None:80"


def test_clear_drops_names() -> None:
    idx = PodIndex()
    idx.replace(PODS, [pod("a", "b", ip="10.1.1.1")])
    idx.clear(PODS)
    assert idx.endpoint("10.1.1.1", 1) == "r/10.1.1.1:1" and not idx.synced[PODS]


def test_container_ids_and_static_pod_alias() -> None:
    assert strip_container_id("containerd://abc") == "abc"
    assert strip_container_id("cri-o://abc") == "abc"
    assert strip_container_id("docker://abc") == "abc"
    assert strip_container_id("abc") == "abc"
    obj = pod(
        "kube-system",
        "etcd-n1",
        containers={"etcd": "ee" * 32},
        annotations={"kubernetes.io/config.mirror": "h" * 32},
    )
    p = pod_from_json(obj)
    assert p is not None and p.containers == {"ee" * 32: "etcd"} and p.container_names == ("etcd",)
    idx = PodIndex()
    idx.apply(PODS, "ADDED", obj)
    assert idx.pod("h" * 32) is p or idx.pod("h" * 32) == p
    assert pod_from_json({"metadata": {"name": "no-uid"}}) is None
