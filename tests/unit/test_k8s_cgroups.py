"""netns -> pod/container from /proc/PID/cgroup: every cgroup style, on fixture /proc trees."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from exporter.enrich import Workload
from exporter.k8s.cgroups import CgroupRef, CgroupResolver, parse_cgroup_file, parse_cgroup_path
from exporter.k8s.enricher import KubernetesEnricher
from exporter.k8s.index import PODS, PodIndex

PROC = Path(__file__).resolve().parents[1] / "fixtures" / "proc"
STYLES = sorted(p.name for p in PROC.iterdir() if p.is_dir() and (p / "expected.json").exists())
UID = "6f1c1f4e-1c2b-4c51-9a0e-1d2e3f405162"
UID_US = UID.replace("-", "_")
C = "ab" * 32


@pytest.mark.parametrize(
    ("path", "ref"),
    [
        # systemd driver, each runtime, each QoS class
        (
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{C}.scope",
            CgroupRef(UID, C, "containerd"),
        ),
        (
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/crio-{C}.scope",
            CgroupRef(UID, C, "crio"),
        ),
        (f"/kubepods.slice/kubepods-pod{UID_US}.slice/docker-{C}.scope", CgroupRef(UID, C, "docker")),
        # cgroupfs driver
        (f"/kubepods/burstable/pod{UID}/{C}", CgroupRef(UID, C, "")),
        (f"/kubepods/pod{UID}/{C}", CgroupRef(UID, C, "")),
        # nested kubelet root (kind), private cgroup namespace, CRI-O's nested "container"
        (
            f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_US}.slice/cri-containerd-{C}.scope",
            CgroupRef(UID, C, "containerd"),
        ),
        (
            f"/../../kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{C}.scope",
            CgroupRef(UID, C, "containerd"),
        ),
        (f"/kubepods.slice/kubepods-pod{UID_US}.slice/crio-{C}.scope/container", CgroupRef(UID, C, "crio")),
        # the pod cgroup itself (a process not in a container cgroup)
        (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice", CgroupRef(UID)),
        # static pod: kubelet's config hash instead of a UID
        (
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{'8f' * 16}.slice/"
            f"cri-containerd-{C}.scope",
            CgroupRef("8f" * 16, C, "containerd"),
        ),
        # not pods
        (
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/crio-conmon-{C}.scope",
            None,
        ),
        ("/system.slice/containerd.service", None),
        ("/user.slice/user-1000.slice/session-3.scope", None),
        (f"/system.slice/docker-{C}.scope", None),
        ("/", None),
        ("/kubepods.slice/kubepods-burstable.slice", None),
        (f"/ipod{UID}/{C}", None),
    ],
)
def test_parse_cgroup_path(path: str, ref: CgroupRef | None) -> None:
    assert parse_cgroup_path(path) == ref


def test_parse_cgroup_file_prefers_a_line_with_a_container() -> None:
    text = (
        f"3:memory:/kubepods/burstable/pod{UID}\n"
        f"2:cpu,cpuacct:/kubepods/burstable/pod{UID}/{C}\n"
        "1:name=systemd:/\n"
        "garbage line\n"
    )
    assert parse_cgroup_file(text) == CgroupRef(UID, C, "")
    assert parse_cgroup_file("0::/init.scope\n") is None
    assert parse_cgroup_file("") is None


def _enricher(style: str) -> tuple[KubernetesEnricher, dict[str, dict[str, object]]]:
    root = PROC / style
    index = PodIndex("node-1")
    index.replace(PODS, json.loads((root / "pods.json").read_text()))
    enricher = KubernetesEnricher("node-1", index, CgroupResolver(str(root)))
    enricher.refresh()
    return enricher, json.loads((root / "expected.json").read_text())


@pytest.mark.parametrize("style", STYLES)
def test_fixture_tree_maps_every_netns(style: str) -> None:
    enricher, expected = _enricher(style)
    assert expected, "fixture tree has no expectations"
    for ino, want in expected.items():
        got = enricher.workload(int(ino))
        assert got == Workload(node="node-1", **want), (style, ino)  # type: ignore[arg-type]


@pytest.mark.parametrize("style", STYLES)
def test_fixture_tree_endpoints(style: str) -> None:
    enricher, _ = _enricher(style)
    assert enricher.endpoint("10.244.1.5", 38480) == "p/default/web:38480"
    assert enricher.endpoint("fd00:10:244:1::5", 53) == "p/default/web:53"
    assert enricher.endpoint("10.244.1.6", 53) == "p/kube-system/coredns-5d78c9869d-abcde:53"
    # the host-network pod's IP is the node's: never named after that pod
    assert enricher.endpoint("192.0.2.10", 53) == "r/192.0.2.10:53"


def test_selectors_see_labels_through_the_enricher() -> None:
    enricher, _ = _enricher("containerd-systemd-v2")
    owner = enricher.owner(4026532100)
    assert owner is not None and owner.labels == {"app": "web", "tier": "frontend"}
    assert owner.containers == ("web", "proxy")


def test_unknown_pod_uid_gives_the_node_only_then_names_after_the_index_learns_it() -> None:
    root = PROC / "containerd-systemd-v1"
    index = PodIndex("node-1")
    enricher = KubernetesEnricher("node-1", index, CgroupResolver(str(root)))
    enricher.refresh()
    assert enricher.workload(4026532100) == Workload(node="node-1")
    index.replace(PODS, json.loads((root / "pods.json").read_text()))
    enricher.refresh(rescan=False)  # re-join the last scan with the index: no /proc read
    assert enricher.workload(4026532100).pod == "web"
    assert enricher.scans == 1


def test_missing_netns_never_blocks_and_is_looked_up_in_the_background() -> None:
    root = PROC / "crio-systemd-v2"
    index = PodIndex("node-1")
    index.replace(PODS, json.loads((root / "pods.json").read_text()))
    enricher = KubernetesEnricher(
        "node-1", index, CgroupResolver(str(root)), min_rescan_gap_s=0.0, poll_s=0.01
    )
    assert enricher.workload(4026532110) == Workload(node="node-1")  # first ask: not scanned yet
    enricher.start()
    try:
        import time

        deadline = time.monotonic() + 5
        while enricher.workload(4026532110).pod == "" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert enricher.workload(4026532110).container == "coredns"
    finally:
        enricher.stop()


def test_vanished_processes_and_unreadable_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "7" / "ns").mkdir(parents=True)
    (tmp_path / "7" / "ns" / "net").symlink_to("net:[4026532999]")  # no cgroup file: exited mid-scan
    (tmp_path / "8").mkdir()  # no ns link at all
    (tmp_path / "self").mkdir()  # not a PID
    scan = CgroupResolver(str(tmp_path)).scan()
    assert scan.members == {}
    assert scan.errors == 2


def test_real_proc_of_this_machine() -> None:
    """The resolver runs on a real /proc: our own process is in the namespace our ns/net names."""
    if not os.path.exists("/proc/self/ns/net"):
        pytest.skip("no /proc")
    mine = int(os.readlink("/proc/self/ns/net")[5:-1])
    scan = CgroupResolver("/proc").scan()
    assert mine in scan.members
    assert scan.members[mine].pids >= 1
