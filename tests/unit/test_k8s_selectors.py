"""kubectl-gadget selectors: -n/-p/-c/-l/-A, '!' exclusions, and what the CLI filters with them."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest

from exporter.enrich import Workload
from exporter.k8s.enricher import NetnsOwner
from exporter.k8s.selectors import (
    NetnsSelection,
    SelectingSink,
    SelectorError,
    add_selector_args,
    parse_label_selector,
    parse_selectors,
    selector_from_args,
)

WEB = Workload("n1", "default", "web-7d9f", "web,istio-proxy")
DNS = Workload("n1", "kube-system", "coredns-1", "coredns")
HOST = Workload("n1", host_network=True)
NONE = Workload("n1")
WEB_L = {"app": "web", "tier": "frontend"}
DNS_L = {"k8s-app": "kube-dns"}


def test_no_selector_matches_everything() -> None:
    s = parse_selectors()
    assert not s.active
    assert all(s.match(w, {}) for w in (WEB, DNS, HOST, NONE))


@pytest.mark.parametrize(
    ("kw", "web", "dns"),
    [
        ({"namespace": "default"}, True, False),
        ({"namespace": "default,kube-system"}, True, True),
        ({"namespace": ["default", "kube-system"]}, True, True),  # repeated -n
        ({"namespace": "!kube-system"}, True, False),
        ({"podname": "web-7d9f"}, True, False),
        ({"podname": "!web-7d9f"}, False, True),
        ({"containername": "coredns"}, False, True),
        ({"containername": "istio-proxy"}, True, False),  # any container of the shared netns
        ({"containername": "!istio-proxy"}, True, True),  # web also runs "web"
        ({"selector": "app=web"}, True, False),
        ({"selector": "app==web,tier!=db"}, True, False),
        ({"selector": "tier!=frontend"}, False, True),  # != matches pods without the label
        ({"selector": "k8s-app"}, False, True),
        ({"selector": "!k8s-app"}, True, False),
        ({"selector": "app in (web, api),tier notin (db)"}, True, False),
        ({"namespace": "default", "selector": "app=api"}, False, False),
        ({"all_namespaces": True}, True, True),
    ],
)
def test_matching(kw: dict[str, object], web: bool, dns: bool) -> None:
    s = parse_selectors(**kw)  # type: ignore[arg-type]
    assert s.match(WEB, WEB_L) is web
    assert s.match(DNS, DNS_L) is dns


def test_any_selector_leaves_out_the_host_and_unknown_namespaces() -> None:
    s = parse_selectors(namespace="!kube-system")
    assert not s.match(HOST, {}) and not s.match(NONE, {})


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"namespace": "a", "all_namespaces": True}, "exclude each other"),
        ({"namespace": ","}, "at least one"),
        ({"podname": "!"}, "expected a name"),
        ({"namespace": "a b"}, "expected a name"),
        ({"selector": "app in (a,b"}, "unbalanced"),
        ({"selector": "=x"}, "bad label key"),
        ({"selector": "a=b c"}, "bad label value"),
        ({"selector": "a,,b"}, "empty requirement"),
    ],
)
def test_errors_name_the_flag(kw: dict[str, object], msg: str) -> None:
    with pytest.raises(SelectorError, match=msg):
        parse_selectors(**kw)  # type: ignore[arg-type]


def test_label_selector_forms() -> None:
    reqs = parse_label_selector("example.com/role=db,env notin (dev,test),!canary")
    assert [(r.key, r.op) for r in reqs] == [
        ("example.com/role", "="),
        ("env", "notin"),
        ("canary", "!exists"),
    ]


def test_argparse_flags_like_kubectl_gadget() -> None:
    p = argparse.ArgumentParser()
    add_selector_args(p)
    args = p.parse_args(["-n", "!kube-system", "-p", "web", "-c", "app", "-l", "app=web", "-l", "tier!=db"])
    s = selector_from_args(args)
    assert s.namespaces.exclude == {"kube-system"} and s.pods.include == {"web"}
    assert len(s.labels) == 2
    args = p.parse_args(["--namespace", "a,b", "--podname", "x", "--containername", "y", "--selector", "k=v"])
    assert selector_from_args(args).namespaces.include == {"a", "b"}
    assert selector_from_args(p.parse_args(["-A"])).all_namespaces


class FakeOwners:
    def __init__(self) -> None:
        self.version = 0
        self.owners: dict[int, NetnsOwner] = {}
        self.asked = 0

    def owner(self, netns: int) -> NetnsOwner | None:
        self.asked += 1
        return self.owners.get(netns)


def test_netns_selection_caches_until_the_enricher_changes_and_retries_unknown() -> None:
    src = FakeOwners()
    sel = NetnsSelection(parse_selectors(namespace="default"), src)
    assert sel.wanted(7) is False  # not known yet
    src.owners[7] = NetnsOwner(WEB)
    assert sel.wanted(7) is True  # unknown was not cached as "no"
    asked = src.asked
    for _ in range(100):
        assert sel.wanted(7)
    assert src.asked == asked  # decided: a dict read
    src.owners[7] = NetnsOwner(DNS)
    src.version += 1
    assert sel.wanted(7) is False
    assert sel.filter_paths({7: "/proc/9/ns/net"}) == {}


def test_selecting_sink_forwards_only_selected_netns() -> None:
    src = FakeOwners()
    src.owners[1] = NetnsOwner(WEB)
    src.owners[2] = NetnsOwner(DNS)
    got: list[tuple[str, int]] = []

    class Inner:
        def on_query(self, pkt: object, role: str, retransmit: bool) -> None:
            got.append(("q", pkt.meta.netns))  # type: ignore[attr-defined]

        def on_unmatched(self, pkt: object, role: str) -> None:
            got.append(("u", pkt.meta.netns))  # type: ignore[attr-defined]

        def on_response(self, ex: object) -> None:
            got.append(("r", ex.response.meta.netns))  # type: ignore[attr-defined]

        def on_unanswered(self, ex: object) -> None:
            got.append(("t", ex.query.meta.netns))  # type: ignore[attr-defined]

        rows_written = 3

    sink = SelectingSink(Inner(), NetnsSelection(parse_selectors(namespace="kube-system"), src))
    for ns in (1, 2):
        pkt = SimpleNamespace(meta=SimpleNamespace(netns=ns))
        sink.on_query(pkt, "client", False)
        sink.on_unmatched(pkt, "client")
        sink.on_response(SimpleNamespace(query=pkt, response=pkt))
        sink.on_unanswered(SimpleNamespace(query=pkt, response=None))
    assert got == [("q", 2), ("u", 2), ("r", 2), ("t", 2)]
    assert sink.dropped == 4
    assert sink.rows_written == 3  # other attributes pass through
