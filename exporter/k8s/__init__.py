"""Kubernetes names for dnsotel: the only package that imports ``kubernetes`` (lazily).

Wiring (what the CLI does when ``settings.kubernetes``)::

    from exporter.k8s import K8sConfigError, start_enricher
    enricher = start_enricher(node=settings.node_name, cluster_names=settings.cluster_names,
                              kubeconfig=args.kubeconfig, proc_root=proc_root)
    ...                                  # hand `enricher` to every sink as the Enricher
    enricher.stop()                      # at exit (threads are daemons anyway)

``start_enricher`` returns at once: the API being slow or down delays names, never capture.
A missing or broken kubeconfig (outside a pod) is a ``K8sConfigError`` (a start-up error).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from exporter.k8s.cgroups import CgroupRef, CgroupResolver, parse_cgroup_file, parse_cgroup_path
from exporter.k8s.enricher import KubernetesEnricher, NetnsOwner
from exporter.k8s.index import NODES, PODS, SERVICES, PodIndex, PodInfo, ServiceInfo
from exporter.k8s.selectors import (
    NetnsSelection,
    SelectingSink,
    Selector,
    SelectorError,
    add_selector_args,
    parse_selectors,
    selector_from_args,
)

if TYPE_CHECKING:
    from exporter.k8s.watch import ListWatcher

__all__ = [
    "CgroupRef",
    "CgroupResolver",
    "K8sConfigError",
    "KubernetesEnricher",
    "NetnsOwner",
    "NetnsSelection",
    "PodIndex",
    "PodInfo",
    "SelectingSink",
    "Selector",
    "SelectorError",
    "ServiceInfo",
    "add_selector_args",
    "make_api",
    "parse_cgroup_file",
    "parse_cgroup_path",
    "parse_selectors",
    "selector_from_args",
    "start_enricher",
    "start_watchers",
]


class K8sConfigError(Exception):
    """No usable API configuration (neither in-cluster nor a kubeconfig); one line, says what to do."""


def make_api(kubeconfig: str | None = None, env: Mapping[str, str] | None = None) -> Any:
    """A ``kubernetes.client.CoreV1Api``: in-cluster config inside a pod, else a kubeconfig.

    Inside a pod (``KUBERNETES_SERVICE_HOST`` set, no ``kubeconfig`` given) the service
    account token and CA are used. Outside, ``kubeconfig``, else ``$KUBECONFIG``, else
    ``~/.kube/config``. Only reads configuration; contacts nothing.
    """
    e = os.environ if env is None else env
    try:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException
    except ImportError:
        raise K8sConfigError(
            "the kubernetes Python client is not installed (pip install kubernetes)"
        ) from None
    try:
        if kubeconfig is None and e.get("KUBERNETES_SERVICE_HOST"):
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            return client.CoreV1Api(client.ApiClient(cfg))
        path = (
            kubeconfig or e.get("KUBECONFIG", "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
        )
        if not os.path.exists(path):
            raise K8sConfigError(
                f"no Kubernetes API configuration: {path} does not exist and this is not a pod "
                "(give --kubeconfig, set KUBECONFIG, or turn --kubernetes off)"
            )
        api_client = config.new_client_from_config(config_file=path)  # type: ignore[no-untyped-call]
        return client.CoreV1Api(api_client)
    except ConfigException as exc:
        raise K8sConfigError(f"Kubernetes API configuration: {exc}") from None


def start_watchers(
    api: Any,
    index: PodIndex,
    node: str,
    cluster_names: bool,
    **watch_options: Any,
) -> list[ListWatcher]:
    """Daemon threads feeding ``index``: this node's pods (all pods and services with
    ``cluster_names``) and this node's Node object."""
    from exporter.k8s.watch import ListWatcher

    watchers = [
        ListWatcher(
            PODS,
            api.list_pod_for_all_namespaces,
            index,
            field_selector=None if cluster_names or not node else f"spec.nodeName={node}",
            **watch_options,
        ),
        ListWatcher(
            NODES,
            api.list_node,
            index,
            field_selector=f"metadata.name={node}" if node else None,
            **watch_options,
        ),
    ]
    if cluster_names:
        watchers.append(ListWatcher(SERVICES, api.list_service_for_all_namespaces, index, **watch_options))
    for w in watchers:
        w.start()
    return watchers


def start_enricher(
    node: str,
    cluster_names: bool = False,
    *,
    api: Any = None,
    kubeconfig: str | None = None,
    proc_root: str = "/proc",
    env: Mapping[str, str] | None = None,
    **watch_options: Any,
) -> KubernetesEnricher:
    """Build the index, start its watchers and the netns refresher; returns immediately."""
    if api is None:
        api = make_api(kubeconfig, env)
    index = PodIndex(node)
    enricher = KubernetesEnricher(node, index, CgroupResolver(proc_root))
    enricher.watchers.extend(start_watchers(api, index, node, cluster_names, **watch_options))
    enricher.start()
    return enricher
