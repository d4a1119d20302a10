"""List+watch through the real ``kubernetes`` client against a real (fake) API server on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.k8s import K8sConfigError, make_api, start_enricher
from exporter.k8s.index import NODES, PODS, SERVICES, PodIndex
from exporter.k8s.watch import ListWatcher
from tests.k8s_fake_api import FakeApiServer, node, pod, service
from tests.wait import wait_for


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as srv:
        yield srv


FAST = dict(backoff_initial_s=0.05, backoff_max_s=0.2, watch_timeout_s=30, min_healthy_s=0.5)


def watcher(srv: FakeApiServer, kind: str, index: PodIndex, **kw: object) -> ListWatcher:
    core = srv.client()
    fn = {
        PODS: core.list_pod_for_all_namespaces,
        SERVICES: core.list_service_for_all_namespaces,
        NODES: core.list_node,
    }[kind]
    opts = {**FAST, **kw}
    return ListWatcher(kind, fn, index, **opts).start()  # type: ignore[arg-type]


def test_list_then_watch_added_modified_deleted(api: FakeApiServer) -> None:
    api.add(PODS, pod("default", "web", ip=["198.18.1.2", "fd00:1::2"], node="n1", uid="u-web"))
    api.add(PODS, pod("default", "elsewhere", ip="198.18.9.9", node="n2"))
    index = PodIndex("n1")
    w = watcher(api, PODS, index, field_selector="spec.nodeName=n1", page_size=1)
    try:
        wait_for(lambda: index.synced[PODS], what="first list")
        assert index.endpoint("198.18.1.2", 38480) == "p/default/web:38480"
        assert index.endpoint("fd00:1::2", 53) == "p/default/web:53"
        assert index.endpoint("198.18.9.9", 53) == "r/198.18.9.9:53"  # another node's pod: not listed
        wait_for(lambda: api.open_watches() == 1, what="watch open")
        # ADDED
        api.add(PODS, pod("default", "db", ip="198.18.1.3", node="n1", uid="u-db"))
        wait_for(lambda: index.endpoint("198.18.1.3", 5432) == "p/default/db:5432", what="ADDED")
        # MODIFIED: the pod's IP changes (new sandbox): the old IP goes raw
        api.modify(PODS, pod("default", "db", ip="198.18.1.4", node="n1", uid="u-db"))
        wait_for(lambda: index.endpoint("198.18.1.4", 1) == "p/default/db:1", what="MODIFIED")
        assert index.endpoint("198.18.1.3", 1) == "r/198.18.1.3:1"
        # DELETED
        api.delete(PODS, pod("default", "web", ip=["198.18.1.2", "fd00:1::2"], node="n1", uid="u-web"))
        wait_for(lambda: index.endpoint("198.18.1.2", 1) == "r/198.18.1.2:1", what="DELETED")
        assert index.endpoint("fd00:1::2", 53) == "r/[fd00:1::2]:53"
        assert w.stats.lists == 1 and w.stats.events == 3
        assert w.resource_version == str(api.resource_version)
        # paging: two objects matched the selector at list time (n1 only) -> 2 pages of 1... one here
        lists = [q for _, p, q in api.requests if p == "/api/v1/pods" and "watch" not in q]
        assert all(q.get("fieldSelector") == "spec.nodeName=n1" and q.get("limit") == "1" for q in lists)
    finally:
        w.stop()


def test_paged_list_follows_continue_tokens(api: FakeApiServer) -> None:
    api.bulk_load(PODS, [pod("ns", f"p{i}", ip=f"198.18.2.{i}", node="n1") for i in range(1, 8)])
    index = PodIndex("n1")
    w = watcher(api, PODS, index, page_size=3)
    try:
        wait_for(lambda: index.synced[PODS])
        assert len(index) == 7
        pages = [q for _, p, q in api.requests if p == "/api/v1/pods" and "watch" not in q]
        assert len(pages) == 3 and "continue" in pages[1] and "continue" in pages[2]
    finally:
        w.stop()


def test_bookmarks_move_the_resource_version(api: FakeApiServer) -> None:
    index = PodIndex("n1")
    w = watcher(api, PODS, index)
    try:
        wait_for(lambda: api.open_watches() == 1)
        before = w.resource_version
        api.add(PODS, pod("other", "x", node="n2", ip="198.18.3.3"))  # an event for another kind/selector
        api.bookmark()
        wait_for(lambda: w.stats.bookmarks == 1, what="bookmark")
        assert int(w.resource_version or 0) > int(before or 0)
        # the next watch resumes from the bookmark's version, not the list's
        api.disconnect_watches()
        wait_for(lambda: w.stats.watches >= 2 and api.open_watches() == 1)
        watch_rvs = [q["resourceVersion"] for _, p, q in api.requests if q.get("watch") == "true"]
        assert watch_rvs[-1] == w.resource_version
        assert all(
            q.get("allowWatchBookmarks") == "true" for _, p, q in api.requests if q.get("watch") == "true"
        )
    finally:
        w.stop()


def test_gone_410_relists(api: FakeApiServer) -> None:
    api.add(PODS, pod("default", "a", ip="198.18.4.1", node="n1", uid="u-a"))
    index = PodIndex("n1")
    w = watcher(api, PODS, index)
    try:
        wait_for(lambda: api.open_watches() == 1)
        # while the watch is cut, a pod changes and the server compacts its history
        api.disconnect_watches()
        api.delete(PODS, pod("default", "a", ip="198.18.4.1", node="n1", uid="u-a"))
        api.add(PODS, pod("default", "b", ip="198.18.4.2", node="n1", uid="u-b"))
        api.compact()
        wait_for(lambda: w.stats.relists_gone >= 1, what="410 -> relist")
        wait_for(lambda: index.endpoint("198.18.4.2", 1) == "p/default/b:1", what="relisted state")
        assert index.endpoint("198.18.4.1", 1) == "r/198.18.4.1:1"
        assert w.stats.lists >= 2
    finally:
        w.stop()


def test_410_as_error_event_on_an_open_watch(api: FakeApiServer) -> None:
    """A watch started from a version older than the history gets an ERROR event (code 410)."""
    index = PodIndex("n1")
    w = ListWatcher(PODS, api.client().list_pod_for_all_namespaces, index, **FAST)  # type: ignore[arg-type]
    api.add(PODS, pod("default", "c", ip="198.18.4.3", node="n1"))
    api.compact()
    w.resource_version = "1"  # ancient
    w.step()  # one watch: ERROR 410 -> Gone handled
    assert w.stats.relists_gone == 1 and w.resource_version is None
    t = threading.Thread(target=w.step, daemon=True)  # the next step lists again, then watches
    t.start()
    wait_for(lambda: index.endpoint("198.18.4.3", 1) == "p/default/c:1")
    w.stop()
    t.join(5)


def test_disconnect_resumes_without_relisting(api: FakeApiServer) -> None:
    index = PodIndex("n1")
    w = watcher(api, PODS, index)
    try:
        wait_for(lambda: api.open_watches() == 1)
        api.disconnect_watches()
        api.add(PODS, pod("default", "late", ip="198.18.5.1", node="n1"))  # happens while cut
        wait_for(lambda: index.endpoint("198.18.5.1", 1) == "p/default/late:1", what="resume")
        assert w.stats.lists == 1  # resumed from the resource version: no relist
        assert w.stats.errors >= 1
    finally:
        w.stop()


def test_api_down_degrades_names_never_blocks_then_names_return(api: FakeApiServer) -> None:
    api.add(PODS, pod("default", "web", ip="198.18.6.1", node="n1"))
    api.add(SERVICES, service("kube-system", "kube-dns", ["198.18.6.10", "fd00:6::a"]))
    index = PodIndex("n1")
    ws = [watcher(api, PODS, index, stale_after_s=0.5), watcher(api, SERVICES, index, stale_after_s=0.5)]
    try:
        wait_for(lambda: index.endpoint("198.18.6.10", 53) == "s/kube-system/kube-dns:53")
        assert index.endpoint("fd00:6::a", 53) == "s/kube-system/kube-dns:53"
        api.stop()
        # lookups go on at full speed while the watchers fail and back off
        worst = 0.0
        t_end = time.monotonic() + 1.5
        n = 0
        while time.monotonic() < t_end:
            t0 = time.perf_counter()
            index.endpoint("198.18.6.1", 53)
            index.endpoint("198.18.6.10", 53)
            worst = max(worst, time.perf_counter() - t0)
            n += 1
        # a lookup that waited on the API would take its client timeout (seconds); a dict read
        # takes microseconds: 1 s tells them apart even on a loaded 2-core machine
        assert worst < 1.0, f"a lookup took {worst * 1000:.1f} ms while the API was down"
        wait_for(lambda: all(w.stats.degraded >= 1 for w in ws), what="degrade after stale_after")
        assert index.endpoint("198.18.6.1", 53) == "r/198.18.6.1:53"
        assert index.endpoint("198.18.6.10", 53) == "r/198.18.6.10:53"
        api.add(PODS, pod("default", "new", ip="198.18.6.2", node="n1"))  # changes while "down"
        api.start()  # same port
        wait_for(lambda: index.endpoint("198.18.6.10", 53) == "s/kube-system/kube-dns:53", what="back")
        wait_for(lambda: index.endpoint("198.18.6.2", 53) == "p/default/new:53")
        assert index.endpoint("198.18.6.1", 53) == "p/default/web:53"
    finally:
        for w in ws:
            w.stop()


def test_api_unreachable_at_start(tmp_path: Path) -> None:
    srv = FakeApiServer()
    srv.start()
    port = srv.port
    srv.stop()  # nothing listens there now
    index = PodIndex("n1")
    w = watcher(srv, PODS, index)
    try:
        wait_for(lambda: w.stats.errors >= 2)
        assert not index.synced[PODS]
        assert index.endpoint("198.18.7.1", 53) == "r/198.18.7.1:53"
        srv.add(PODS, pod("default", "p", ip="198.18.7.1", node="n1"))
        srv.port = port
        srv.start()
        wait_for(lambda: index.endpoint("198.18.7.1", 53) == "p/default/p:53")
    finally:
        w.stop()
        srv.stop()


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    w = ListWatcher(
        PODS, lambda **k: None, PodIndex(), backoff_initial_s=1, backoff_max_s=30, rng=lambda: 0.5
    )
    assert [w.backoff_delay(n) for n in (1, 2, 3, 4, 5, 6, 7)] == [1, 2, 4, 8, 16, 30, 30]
    lo = ListWatcher(PODS, lambda **k: None, PodIndex(), backoff_initial_s=1, rng=lambda: 0.0)
    hi = ListWatcher(PODS, lambda **k: None, PodIndex(), backoff_initial_s=1, rng=lambda: 0.999)
    assert lo.backoff_delay(3) == 2.0 and 5.9 < hi.backoff_delay(3) < 6.0


def test_nodes_and_cluster_wide_start_enricher(api: FakeApiServer, tmp_path: Path) -> None:
    api.add(NODES, node("n1", ["192.0.2.1"]))
    api.add(NODES, node("n2", ["192.0.2.2"]))
    api.add(PODS, pod("default", "local", ip="198.18.8.1", node="n1"))
    api.add(PODS, pod("default", "remote", ip="198.18.8.2", node="n2"))
    api.add(SERVICES, service("kube-system", "kube-dns", "198.18.8.10"))
    kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"))
    local = start_enricher("n1", cluster_names=False, kubeconfig=kubeconfig, proc_root=str(tmp_path), **FAST)
    wide = start_enricher("n1", cluster_names=True, kubeconfig=kubeconfig, proc_root=str(tmp_path), **FAST)
    try:
        wait_for(lambda: local.index.synced[PODS] and local.index.synced[NODES])
        wait_for(lambda: all(wide.index.synced.values()))
        assert local.endpoint("198.18.8.1", 53) == "p/default/local:53"
        assert local.endpoint("198.18.8.2", 53) == "r/198.18.8.2:53"
        assert local.endpoint("198.18.8.10", 53) == "r/198.18.8.10:53"
        assert wide.endpoint("198.18.8.2", 53) == "p/default/remote:53"
        assert wide.endpoint("198.18.8.10", 53) == "s/kube-system/kube-dns:53"
        assert local.index.node_ips == frozenset({"192.0.2.1"})
        pod_lists = [q for _, p, q in api.requests if p == "/api/v1/pods" and "watch" not in q]
        assert {q.get("fieldSelector") for q in pod_lists} == {"spec.nodeName=n1", None}
        node_q = [q for _, p, q in api.requests if p == "/api/v1/nodes"]
        assert all(q.get("fieldSelector") == "metadata.name=n1" for q in node_q)
    finally:
        local.stop()
        wide.stop()


def test_make_api_config_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(K8sConfigError, match="does not exist"):
        make_api(env={"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "nope")})
    # in-cluster: KUBERNETES_SERVICE_HOST and the service account files
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok")
    (sa / "ca.crt").write_text("not checked until a request is made\n")
    from kubernetes.config import incluster_config

    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(sa / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(sa / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    core = make_api()
    assert core.api_client.configuration.host == "https://10.96.0.1:443"
    assert core.api_client.configuration.api_key["BearerToken"].lower() == "bearer tok"
    assert core.api_client.configuration.refresh_api_key_hook is not None  # rotated SA tokens are re-read
