"""``KubernetesEnricher``: the ``exporter.enrich.Enricher`` that knows pods, services and containers.

* ``endpoint(addr, port)``: ``p/ns/pod:port``, ``s/ns/svc:port`` or ``r/addr:port``, one dict read
  in the ``PodIndex``.
* ``workload(netns)``: one dict read in a map netns inode -> ``NetnsOwner``, rebuilt aside and
  swapped in by a background thread. The map comes from a scan of ``/proc`` (which processes
  live in which netns, and their cgroup: pod UID + container ID) joined with the index
  (pod UID -> namespace/name, container ID -> container name).

When is the map rebuilt? When ``workload()`` meets a netns it does not know (a new pod; the
caller gets the node-only workload meanwhile, never a wait), when the index changes (a pod
appeared, its container IDs became known, the API came back), and every ``rescan_interval_s``
as a safety net. Scans are at least ``min_rescan_gap_s`` apart, so a burst of unknown
namespaces costs one scan.

The pause (sandbox) process shares the pod's netns; its ID is not among the pod's
``containerStatuses``, so only real containers are named. A netns shared by several
containers (sidecars) names them all, comma-separated, in ``spec.containers`` order.
The host's own netns (PID 1's) is ``Workload(node=..., host_network=True)``: every
host-network pod shares it, so no pod is named for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from exporter.enrich import Workload
from exporter.k8s.cgroups import CgroupResolver, NetnsMembers, NetnsScan
from exporter.k8s.index import PodIndex, PodInfo

log = logging.getLogger(__name__)

_EMPTY_LABELS: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class NetnsOwner:
    """What a network namespace belongs to: the workload, and the pod record when there is one."""

    workload: Workload
    pod: PodInfo | None = None
    containers: tuple[str, ...] = ()

    @property
    def labels(self) -> Mapping[str, str]:
        return self.pod.labels if self.pod is not None else _EMPTY_LABELS


def owner_of(node: str, members: NetnsMembers, index: PodIndex) -> NetnsOwner:
    """Join one netns's processes (pod UIDs, container IDs) with the index."""
    counts: dict[str, int] = {}
    for ref in members.refs:
        counts[ref.pod_uid] = counts.get(ref.pod_uid, 0) + 1
    if not counts:
        return NetnsOwner(Workload(node=node))
    uid = max(sorted(counts), key=lambda u: counts[u])  # one pod per netns; ties: deterministic
    pod = index.pod(uid)
    if pod is None:
        return NetnsOwner(Workload(node=node))  # not (yet) in the index: names come on its next change
    found: set[str] = set()
    for ref in members.refs:
        if ref.pod_uid == uid and ref.container_id:
            name = pod.containers.get(ref.container_id)
            if name is not None:  # the pause/sandbox ID is not a container of the pod
                found.add(name)
    order = {n: i for i, n in enumerate(pod.container_names)}
    names = tuple(sorted(found, key=lambda n: (order.get(n, len(order)), n)))
    wl = Workload(node=node, namespace=pod.namespace, pod=pod.name, container=",".join(names))
    return NetnsOwner(wl, pod, names)


class KubernetesEnricher:
    """Pod/service endpoint names and netns -> pod/container, never blocking the caller.

    ``netns_resolver`` scans /proc (a ``CgroupResolver``). ``start()`` runs the refresher in a
    daemon thread; without it, call ``refresh()`` yourself (tests, one-shot tools).
    """

    def __init__(
        self,
        node: str,
        index: PodIndex,
        netns_resolver: CgroupResolver,
        *,
        rescan_interval_s: float = 30.0,
        min_rescan_gap_s: float = 1.0,
        poll_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.index = index
        self.resolver = netns_resolver
        self.rescan_interval_s = rescan_interval_s
        self.min_rescan_gap_s = min_rescan_gap_s
        self.poll_s = poll_s
        self._clock = clock
        self._node_only = Workload(node=node)
        self._owners: dict[int, NetnsOwner] = {}
        self._unknown: frozenset[int] = frozenset()  # asked for, but not found by the last scan
        self._missed: set[int] = set()  # asked for since the last rebuild, not in the map
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._refresh_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_scan: NetnsScan | None = None
        self._scanned_at = -1e18
        self._built_generation = -1
        self.version = 0  # increases whenever the netns map is swapped (selector caches key on it)
        self.scans = 0
        self.scan_seconds = 0.0  # duration of the last scan
        self.misses = 0
        self.watchers: list[object] = []  # ListWatchers feeding the index, stopped with us

    # --- Enricher ------------------------------------------------------------------------

    def endpoint(self, addr: str, port: int) -> str:
        return self.index.endpoint(addr, port)

    def workload(self, netns: int) -> Workload:
        owner = self._owners.get(netns)
        if owner is not None:
            return owner.workload
        self._miss(netns)
        return self._node_only

    def owner(self, netns: int) -> NetnsOwner | None:
        """The netns's owner, or None when not known (yet); never blocks."""
        owner = self._owners.get(netns)
        if owner is None:
            self._miss(netns)
        return owner

    def labels(self, netns: int) -> Mapping[str, str]:
        owner = self._owners.get(netns)
        return owner.labels if owner is not None else _EMPTY_LABELS

    def _miss(self, netns: int) -> None:
        if netns and netns not in self._unknown and netns not in self._missed:
            self.misses += 1
            self._missed.add(netns)
            self._wake.set()

    # --- refreshing ----------------------------------------------------------------------

    def refresh(self, rescan: bool = True) -> None:
        """Rescan /proc (unless ``rescan`` is False and a scan exists) and rebuild the map now."""
        with self._refresh_lock:
            scan = self._last_scan
            if rescan or scan is None:
                t0 = time.perf_counter()
                scan = self.resolver.scan()
                self.scan_seconds = time.perf_counter() - t0
                self.scans += 1
                self._last_scan = scan
                self._scanned_at = self._clock()
            generation = self.index.generation
            owners: dict[int, NetnsOwner] = {}
            for ino, members in scan.members.items():
                if ino == scan.host_netns:
                    owners[ino] = NetnsOwner(Workload(node=self.node, host_network=True))
                else:
                    owners[ino] = owner_of(self.node, members, self.index)
            missed, self._missed = self._missed, set()
            self._unknown = frozenset(i for i in missed | self._unknown if i not in owners)
            self._owners = owners
            self._built_generation = generation
            self.version += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            woken = self._wake.wait(self.poll_s)
            if self._stop.is_set():
                return
            now = self._clock()
            due = now - self._scanned_at >= self.rescan_interval_s
            changed = self.index.generation != self._built_generation
            if not (woken or due or changed):
                continue
            if now - self._scanned_at < self.min_rescan_gap_s and not due:
                if changed and self._last_scan is not None:
                    self._safe_refresh(rescan=False)  # cheap: re-join the last scan with the index
                # leave _wake set so the rescan happens once the gap has passed
                self._stop.wait(max(0.0, self.min_rescan_gap_s - (now - self._scanned_at)))
                continue
            self._wake.clear()
            self._safe_refresh(rescan=True)

    def _safe_refresh(self, rescan: bool) -> None:
        try:
            self.refresh(rescan=rescan)
        except Exception:
            log.exception("refreshing the netns -> pod map failed")

    def start(self) -> KubernetesEnricher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="dnsotel-k8s-netns", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for w in self.watchers:
            stop = getattr(w, "stop", None)
            if stop is not None:
                stop()
        if self._thread is not None:
            self._thread.join(5)

    def wait_synced(self, timeout: float) -> bool:
        """Block until the index holds its first list of pods (for tools and tests; not the hot path)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.index.synced.get("pods"):
                return True
            time.sleep(0.02)
        return False
