"""Names for what the pipeline sees: netns -> workload, IP:port -> endpoint.

The output table, spans and metrics ask an ``Enricher``; without Kubernetes the
``PlainEnricher`` answers with the raw forms (``r/198.18.0.1:53``). The Kubernetes
enricher (``exporter.k8s``) answers ``p/ns/pod:port`` and ``s/ns/svc:port`` and knows
which pod and container a network namespace belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Workload:
    """Where an observing network namespace belongs. Empty strings when unknown."""

    node: str = ""
    namespace: str = ""
    pod: str = ""
    container: str = ""
    host_network: bool = False  # the host's namespace, shared by every host-network pod


NO_WORKLOAD = Workload()


def raw_endpoint(addr: str, port: int) -> str:
    """``trace_dns``'s raw endpoint form: ``r/1.2.3.4:53``, ``r/[fd00::1]:53``."""
    if ":" in addr:
        return f"r/[{addr}]:{port}"
    return f"r/{addr}:{port}"


class Enricher(Protocol):
    def endpoint(self, addr: str, port: int) -> str:
        """``p/ns/pod:port``, ``s/ns/svc:port`` or ``r/addr:port``."""
        ...

    def workload(self, netns: int) -> Workload:
        """The pod/container that owns network namespace ``netns`` (inode)."""
        ...


class PlainEnricher:
    """No Kubernetes: raw endpoints, and only the node name (when known) for workloads."""

    def __init__(self, node: str = "") -> None:
        self._workload = Workload(node=node)

    def endpoint(self, addr: str, port: int) -> str:
        return raw_endpoint(addr, port)

    def workload(self, netns: int) -> Workload:
        return self._workload
