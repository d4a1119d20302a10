"""Real cgroups named the way kubelet (systemd driver) and containerd name them, for lab tests.

Cgroups are created under the cgroup v1 ``name=systemd`` hierarchy (/sys/fs/cgroup/systemd)
with a per-run slice name, so a concurrent run or a real kubelet is never touched. The lab's
PIDs are written into their ``cgroup.procs``; at teardown the PIDs are moved back to the root
cgroup and the directories removed, deepest first.

Used by tests/lab/test_k8s_lab.py (the enricher directly) and tests/lab/test_k8s_cli.py
(``dnsotel trace``/``run`` as subprocesses)::

    with pod_cgroups() as cg:
        scope = cg.add(pod_uid, container_id, pid)   # .../cri-containerd-<id>.scope
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import require

CGROUP_ROOT = Path("/sys/fs/cgroup/systemd")


class PodCgroups:
    """kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope"""

    def __init__(self, root: Path) -> None:
        self.root = root
        # a per-run top slice so a concurrent run or a real kubelet is never touched
        self.top = root / f"kubepods-dnsotel{secrets.token_hex(3)}.slice"
        self.dirs: list[Path] = []
        self.pids: list[int] = []

    def scope(self, uid: str, container_id: str) -> Path:
        """The container's cgroup directory (created, with its parents, if missing)."""
        qos = self.top / f"{self.top.stem}-besteffort.slice"
        pod_dir = qos / f"{self.top.stem}-besteffort-pod{uid.replace('-', '_')}.slice"
        scope = pod_dir / f"cri-containerd-{container_id}.scope"
        for d in (self.top, qos, pod_dir, scope):
            if not d.exists():
                d.mkdir()
                self.dirs.append(d)
        return scope

    def add(self, uid: str, container_id: str, pid: int) -> Path:
        """Move ``pid`` into the container's cgroup; returns the cgroup directory."""
        scope = self.scope(uid, container_id)
        (scope / "cgroup.procs").write_text(f"{pid}\n")
        self.pids.append(pid)
        return scope

    def remove(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(OSError):
                (self.root / "cgroup.procs").write_text(f"{pid}\n")
        for d in sorted(self.dirs, key=lambda p: len(p.parts), reverse=True):
            for _ in range(50):  # a process that just exited may keep the cgroup busy briefly
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def require_cgroups() -> None:
    require(os.geteuid() == 0, "needs root (cgroups)")
    require(
        (CGROUP_ROOT / "cgroup.procs").exists() and os.access(CGROUP_ROOT, os.W_OK),
        "needs the cgroup v1 name=systemd hierarchy at /sys/fs/cgroup/systemd",
    )


@contextlib.contextmanager
def pod_cgroups() -> Iterator[PodCgroups]:
    """A ``PodCgroups`` whose directories are gone afterwards (asserted)."""
    require_cgroups()
    cg = PodCgroups(CGROUP_ROOT)
    try:
        yield cg
    finally:
        cg.remove()
    left = [d for d in cg.dirs if d.exists()]
    assert not left, f"cgroup directories left behind: {left}"
