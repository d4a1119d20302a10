"""Network namespace -> pod UID and container IDs, from ``/proc/PID/cgroup``.

Kubelet puts every container of a pod under a per-pod cgroup whose name carries the pod
UID, and the container runtime names the container's own cgroup after the container ID.
The shapes this parser accepts (cgroup v1 lines ``N:controllers:/path`` and the v2 line
``0::/path`` alike):

* systemd driver: ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/``
  followed by ``cri-containerd-<id>.scope`` (containerd), ``crio-<id>.scope`` (CRI-O) or
  ``docker-<id>.scope`` (Docker/cri-dockerd). Guaranteed pods have no QoS level:
  ``/kubepods.slice/kubepods-pod<uid>.slice/...``.
* cgroupfs driver: ``/kubepods/burstable/pod<uid>/<id>`` and ``/kubepods/pod<uid>/<id>``.
* nested roots (kind, ``/kubelet.slice/kubelet-kubepods.slice/...``), and paths seen from a
  private cgroup namespace (``0::/../../kubepods-...-pod<uid>.slice/cri-containerd-<id>.scope``):
  only the last pod component and the component after it are used.
* static pods: the cgroup carries kubelet's config hash (32 hex digits, no dashes) instead
  of the API UID; the mirror pod's ``kubernetes.io/config.mirror`` annotation holds it.

CRI-O's ``crio-conmon-<id>.scope`` (the monitor process) is not a container and is skipped.

A process in a pod netns yields ``(pod_uid, container_id)``; the pause (sandbox) process
yields the sandbox ID, which is not among the pod's ``containerStatuses`` — the index says
which IDs are real containers (``exporter.k8s.index``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# A pod component: "pod" + UID with -, _ or no separators (static pods: a 32-hex config hash).
_POD = re.compile(
    r"pod([0-9a-f]{8}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{12})(?:\.slice)?$"
)
# A container component: optional runtime prefix, 64 hex digits, optional ".scope".
_CONTAINER = re.compile(r"(?:(cri-containerd|crio|docker|containerd)-)?([0-9a-f]{64})(?:\.scope)?$")
_NETLINK = re.compile(r"net:\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class CgroupRef:
    """What one process's cgroup path says: its pod and container (``container_id`` may be '')."""

    pod_uid: str
    container_id: str = ""
    runtime: str = ""  # containerd | crio | docker | "" (cgroupfs driver: not in the path)


def normalize_uid(raw: str) -> str:
    """Pod UID as the API writes it: systemd's underscores become dashes; a 32-hex hash stays."""
    return raw.replace("_", "-")


def parse_cgroup_path(path: str) -> CgroupRef | None:
    """The pod/container a single cgroup path belongs to, or None for a non-pod path."""
    parts = [p for p in path.split("/") if p and p != ".."]
    for i in range(len(parts) - 1, -1, -1):
        m = _POD.search(parts[i])
        if m is None:
            continue
        # The component must *be* a pod cgroup ("pod<uid>", "kubepods-...-pod<uid>.slice").
        head = parts[i][: m.start()]
        if head and not head.endswith("-"):
            continue
        uid = normalize_uid(m.group(1))
        for nxt in parts[i + 1 : i + 2]:
            if nxt.startswith("crio-conmon-"):
                return None  # CRI-O's monitor process, not a container
            c = _CONTAINER.fullmatch(nxt)
            if c is not None:
                runtime = c.group(1) or ""
                return CgroupRef(uid, c.group(2), "containerd" if runtime == "cri-containerd" else runtime)
        return CgroupRef(uid)
    return None


def parse_cgroup_file(text: str) -> CgroupRef | None:
    """The pod/container of a process from the text of ``/proc/PID/cgroup``.

    Every line is tried (v1 controllers may be attached to different hierarchies, and a
    hybrid system has both v1 lines and the v2 ``0::`` line); the first line naming a
    container wins over lines naming only the pod.
    """
    best: CgroupRef | None = None
    for line in text.splitlines():
        _, sep, rest = line.partition(":")
        if not sep:
            continue
        _, sep, path = rest.partition(":")
        if not sep:
            continue
        ref = parse_cgroup_path(path)
        if ref is None:
            continue
        if ref.container_id:
            return ref
        if best is None:
            best = ref
    return best


@dataclass(slots=True)
class NetnsMembers:
    """The pods and containers whose processes live in one network namespace."""

    inode: int
    refs: set[CgroupRef] = field(default_factory=set)
    pids: int = 0  # processes seen in it (any cgroup)

    @property
    def pod_uids(self) -> set[str]:
        return {r.pod_uid for r in self.refs}


@dataclass(slots=True)
class NetnsScan:
    """One pass over ``proc_root``: every netns that has a process, and the host's netns."""

    members: dict[int, NetnsMembers]
    host_netns: int | None
    processes: int
    errors: int


def _read_netns(proc_root: str, pid: str) -> int:
    link = os.readlink(os.path.join(proc_root, pid, "ns", "net"))
    m = _NETLINK.fullmatch(link)
    if m is None:
        raise OSError(f"unexpected ns link {link!r}")
    return int(m.group(1))


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


class CgroupResolver:
    """Scans ``proc_root`` for network namespaces and the pods/containers inside them.

    ``scan()`` reads, for each PID, the ``ns/net`` link and the ``cgroup`` file. Processes
    that exit during the scan, or whose files we may not read, are skipped and counted.
    The host's namespace is the one of PID 1 in ``proc_root`` (run with ``hostPID: true``
    in a pod, or a /proc mounted from the host).
    """

    def __init__(
        self,
        proc_root: str = "/proc",
        read_netns: Callable[[str, str], int] = _read_netns,
        read_text: Callable[[str], str] = _read_text,
    ) -> None:
        self.proc_root = proc_root
        self._read_netns = read_netns
        self._read_text = read_text
        self._cgroup_cache: dict[tuple[str, int], CgroupRef | None] = {}  # (pid, netns) -> ref

    def pids(self) -> Iterable[str]:
        try:
            names = os.listdir(self.proc_root)
        except OSError:
            return []
        return sorted((n for n in names if n.isdigit()), key=int)

    def scan(self) -> NetnsScan:
        members: dict[int, NetnsMembers] = {}
        errors = 0
        processes = 0
        host: int | None = None
        seen: dict[tuple[str, int], CgroupRef | None] = {}
        for pid in self.pids():
            try:
                ino = self._read_netns(self.proc_root, pid)
            except OSError:
                errors += 1
                continue
            processes += 1
            if pid == "1":
                host = ino
            key = (pid, ino)
            # A process's pod and container never change; reuse the last scan's answer when
            # the same PID is still in the same netns (a recycled PID in another netns misses).
            if key in self._cgroup_cache:
                ref = self._cgroup_cache[key]
            else:
                try:
                    ref = parse_cgroup_file(self._read_text(os.path.join(self.proc_root, pid, "cgroup")))
                except OSError:
                    errors += 1
                    continue
            seen[key] = ref
            mem = members.get(ino)
            if mem is None:
                mem = members[ino] = NetnsMembers(ino)
            mem.pids += 1
            if ref is not None:
                mem.refs.add(ref)
        self._cgroup_cache = seen
        return NetnsScan(members, host, processes, errors)
