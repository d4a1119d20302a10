"""The pod/service index: IP -> ``p/ns/pod`` or ``s/ns/svc``, pod UID -> pod, fed by list+watch.

Only what the enricher and the selectors need is kept per object (slotted records with
interned strings); a 10,000-pod cluster costs a few MB (see ``tests/unit/test_k8s_scale.py``).

Readers (the capture thread: ``endpoint()``, ``pod()``) never take a lock: they read a
dict whose reference is replaced whole on a relist and mutated one key at a time by a
watch event, both atomic under the GIL. Writers (the watch threads) serialize on a lock.

IPs:

* every ``status.podIPs`` entry (dual stack), of pods that are not finished
  (``Succeeded``/``Failed`` pods keep their IP in status after it was handed to a new pod);
* never the IPs of ``hostNetwork`` pods: they are the node's address, shared by every
  host-network pod and the node itself;
* every ``spec.clusterIPs`` entry of services (dual stack); headless services (``None``)
  have none; their endpoints are pod IPs and resolve as pods.
"""

from __future__ import annotations

import ipaddress
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exporter.enrich import raw_endpoint

PODS = "pods"
SERVICES = "services"
NODES = "nodes"
KINDS = (PODS, SERVICES, NODES)

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"  # static pods: kubelet's hash, used in cgroup names
_FINISHED = frozenset({"Succeeded", "Failed"})
_ID_PREFIXES = ("containerd://", "cri-o://", "docker://")

_intern = sys.intern


@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    containers: Mapping[str, str]  # container ID (no runtime prefix) -> container name
    container_names: tuple[str, ...]  # spec.containers order (app containers, not init ones)
    ips: tuple[str, ...]
    host_network: bool = False
    node: str = ""
    finished: bool = False
    mirror_hash: str = ""  # static pods: the UID kubelet uses in cgroup paths


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    namespace: str
    name: str
    ips: tuple[str, ...]


def _norm_ip(text: str) -> str | None:
    try:
        return ipaddress.ip_address(text.strip()).compressed
    except ValueError:
        return None


def strip_container_id(raw: str) -> str:
    for p in _ID_PREFIXES:
        if raw.startswith(p):
            return raw[len(p) :]
    _, sep, rest = raw.partition("://")
    return rest if sep else raw


def _strs(m: Any) -> dict[str, str]:
    if not isinstance(m, dict):
        return {}
    return {_intern(str(k)): _intern(str(v)) for k, v in m.items()}


def pod_from_json(obj: Mapping[str, Any]) -> PodInfo | None:
    """The parts of a Pod (as the API's JSON) that the index keeps; None if it has no UID."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    uid = meta.get("uid")
    if not uid:
        return None
    containers: dict[str, str] = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or ():
            cid = cs.get("containerID")
            if cid and cs.get("name"):
                containers[strip_container_id(str(cid))] = _intern(str(cs["name"]))
    ips: list[str] = []
    for entry in status.get("podIPs") or ():
        ip = _norm_ip(str(entry.get("ip", "")))
        if ip and ip not in ips:
            ips.append(ip)
    if not ips and status.get("podIP"):
        ip = _norm_ip(str(status["podIP"]))
        if ip:
            ips.append(ip)
    names = tuple(_intern(str(c.get("name", ""))) for c in spec.get("containers") or () if c.get("name"))
    annotations = meta.get("annotations") or {}
    return PodInfo(
        namespace=_intern(str(meta.get("namespace", ""))),
        name=str(meta.get("name", "")),
        uid=str(uid),
        labels=_strs(meta.get("labels")),
        containers=containers,
        container_names=names,
        ips=tuple(ips),
        host_network=bool(spec.get("hostNetwork", False)),
        node=_intern(str(spec.get("nodeName", ""))),
        finished=status.get("phase") in _FINISHED,
        mirror_hash=str(annotations.get(MIRROR_ANNOTATION, "")),
    )


def service_from_json(obj: Mapping[str, Any]) -> ServiceInfo | None:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    if not meta.get("name"):
        return None
    raw = list(spec.get("clusterIPs") or ())
    if not raw and spec.get("clusterIP"):
        raw = [spec["clusterIP"]]
    ips: list[str] = []
    for text in raw:
        ip = _norm_ip(str(text)) if str(text) != "None" else None
        if ip and ip not in ips:
            ips.append(ip)
    return ServiceInfo(_intern(str(meta.get("namespace", ""))), str(meta["name"]), tuple(ips))


def node_addresses(obj: Mapping[str, Any]) -> tuple[str, ...]:
    out: list[str] = []
    for a in (obj.get("status") or {}).get("addresses") or ():
        if a.get("type") in ("InternalIP", "ExternalIP"):
            ip = _norm_ip(str(a.get("address", "")))
            if ip and ip not in out:
                out.append(ip)
    return tuple(out)


def _svc_key(s: ServiceInfo) -> str:
    return f"{s.namespace}/{s.name}"


class PodIndex:
    """IP and UID lookups over the pods and services a watcher feeds in.

    The feeding side is the ``WatchSink`` protocol of ``exporter.k8s.watch``:
    ``replace(kind, items)`` after a (re)list, ``apply(kind, type, obj)`` per watch event,
    ``clear(kind)`` when the API has been unreachable too long to trust what we hold.
    ``generation`` increases on every change, so caches built on the index know when to refresh.
    """

    def __init__(self, node: str = "") -> None:
        self.node = node
        self._lock = threading.Lock()
        self._pods: dict[str, PodInfo] = {}  # uid -> pod
        self._alias: dict[str, str] = {}  # static pod config hash -> uid
        self._services: dict[str, ServiceInfo] = {}  # ns/name -> service
        self._names: dict[str, str] = {}  # ip -> "p/ns/pod" | "s/ns/svc"
        self._owner: dict[str, PodInfo | ServiceInfo] = {}  # ip -> the record that named it
        self.node_ips: frozenset[str] = frozenset()
        self.generation = 0
        self.synced: dict[str, bool] = dict.fromkeys(KINDS, False)

    # --- readers (lock-free) -------------------------------------------------------------

    def endpoint(self, addr: str, port: int) -> str:
        name = self._names.get(addr)
        if name is None:
            return raw_endpoint(addr, port)
        return f"{name}:{port}"

    def name_of(self, addr: str) -> str | None:
        return self._names.get(addr)

    def pod(self, uid: str) -> PodInfo | None:
        p = self._pods.get(uid)
        if p is None:
            alias = self._alias.get(uid)
            if alias is not None:
                p = self._pods.get(alias)
        return p

    def pods(self) -> list[PodInfo]:
        return list(self._pods.values())

    def services(self) -> list[ServiceInfo]:
        return list(self._services.values())

    def __len__(self) -> int:
        return len(self._pods)

    # --- WatchSink -----------------------------------------------------------------------

    def slim(self, kind: str, obj: Mapping[str, Any]) -> Any:
        """Pods and services become records as each list page arrives; nodes stay JSON (one)."""
        if kind == PODS:
            return pod_from_json(obj)
        if kind == SERVICES:
            return service_from_json(obj)
        return obj

    def replace(self, kind: str, items: Iterable[Any]) -> None:
        """After a (re)list: ``items`` are raw JSON objects or ``slim`` results (records)."""
        if kind == PODS:
            pods: dict[str, PodInfo] = {}
            for obj in items:
                p = obj if isinstance(obj, PodInfo) or obj is None else pod_from_json(obj)
                if p is not None:
                    pods[p.uid] = p
            with self._lock:
                self._pods = pods
                self._alias = {p.mirror_hash: p.uid for p in pods.values() if p.mirror_hash}
                self._rebuild_names()
                self.synced[PODS] = True
                self.generation += 1
        elif kind == SERVICES:
            svcs: dict[str, ServiceInfo] = {}
            for obj in items:
                s = obj if isinstance(obj, ServiceInfo) or obj is None else service_from_json(obj)
                if s is not None:
                    svcs[_svc_key(s)] = s
            with self._lock:
                self._services = svcs
                self._rebuild_names()
                self.synced[SERVICES] = True
                self.generation += 1
        elif kind == NODES:
            ips: set[str] = set()
            for obj in items:
                if (obj.get("metadata") or {}).get("name") == self.node or not self.node:
                    ips.update(node_addresses(obj))
            with self._lock:
                self.node_ips = frozenset(ips)
                self.synced[NODES] = True
                self.generation += 1

    def apply(self, kind: str, event_type: str, obj: Mapping[str, Any]) -> None:
        deleted = event_type == "DELETED"
        with self._lock:
            if kind == PODS:
                p = pod_from_json(obj)
                if p is None:
                    return
                old = self._pods.get(p.uid)
                if old is not None:
                    self._unmap(old.ips, old)
                    if old.mirror_hash:
                        self._alias.pop(old.mirror_hash, None)
                if deleted:
                    self._pods.pop(p.uid, None)
                else:
                    self._pods[p.uid] = p
                    if p.mirror_hash:
                        self._alias[p.mirror_hash] = p.uid
                    self._map_pod(p)
            elif kind == SERVICES:
                s = service_from_json(obj)
                if s is None:
                    return
                key = _svc_key(s)
                old_s = self._services.get(key)
                if old_s is not None:
                    self._unmap(old_s.ips, old_s)
                if deleted:
                    self._services.pop(key, None)
                else:
                    self._services[key] = s
                    self._map_service(s)
            elif kind == NODES:
                if self.node and (obj.get("metadata") or {}).get("name") != self.node:
                    return
                self.node_ips = frozenset() if deleted else frozenset(node_addresses(obj))
            else:
                return
            self.generation += 1

    def clear(self, kind: str) -> None:
        with self._lock:
            if kind == PODS:
                self._pods = {}
                self._alias = {}
            elif kind == SERVICES:
                self._services = {}
            elif kind == NODES:
                self.node_ips = frozenset()
            self.synced[kind] = False
            self._rebuild_names()
            self.generation += 1

    # --- writers' helpers (lock held) ----------------------------------------------------

    def _map_pod(
        self,
        p: PodInfo,
        names: dict[str, str] | None = None,
        owner: dict[str, PodInfo | ServiceInfo] | None = None,
    ) -> None:
        if p.host_network or p.finished:
            return
        names = self._names if names is None else names
        owner = self._owner if owner is None else owner
        name = f"p/{p.namespace}/{p.name}"
        for ip in p.ips:
            if isinstance(owner.get(ip), ServiceInfo):
                continue  # a service IP is never a pod IP; keep the service
            names[ip] = name
            owner[ip] = p

    def _map_service(
        self,
        s: ServiceInfo,
        names: dict[str, str] | None = None,
        owner: dict[str, PodInfo | ServiceInfo] | None = None,
    ) -> None:
        names = self._names if names is None else names
        owner = self._owner if owner is None else owner
        name = f"s/{s.namespace}/{s.name}"
        for ip in s.ips:
            names[ip] = name
            owner[ip] = s

    def _unmap(self, ips: Iterable[str], record: PodInfo | ServiceInfo) -> None:
        for ip in ips:
            if self._owner.get(ip) is record:
                del self._owner[ip]
                self._names.pop(ip, None)

    def _rebuild_names(self) -> None:
        """Build the IP maps aside, then swap them in: readers never see a half-built map."""
        names: dict[str, str] = {}
        owner: dict[str, PodInfo | ServiceInfo] = {}
        for s in self._services.values():
            self._map_service(s, names, owner)
        for p in self._pods.values():
            self._map_pod(p, names, owner)
        self._owner = owner
        self._names = names
