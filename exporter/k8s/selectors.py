"""``kubectl gadget``-style selectors: which pods' DNS to show (and capture).

Flags (the same letters as ``kubectl gadget trace_dns``)::

    -n, --namespace ns1,ns2      only these namespaces; '!ns' excludes one (-n '!kube-system')
    -p, --podname pod1,pod2      only these pods; '!pod' excludes
    -c, --containername c1,c2    only netns holding one of these containers; '!c' excludes
    -l, --selector k=v,k2!=v2    a Kubernetes label selector on the pod's labels
                                 (k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b))
    -A, --all-namespaces         every namespace (the default for a node's exporter)

Inside one flag, names are alternatives (OR) and exclusions all apply (AND); different flags
combine with AND. ``dnsotel`` runs on a node, so with no ``-n`` every namespace is shown
(``kubectl gadget`` would default to the kubeconfig's namespace); ``-A`` is accepted for
muscle memory and rejected together with ``-n``.

A network namespace is shared by every container of its pod, so ``-c`` matches a netns when
*any* of its containers passes (``-c '!istio-proxy'`` keeps pods that also run something
else). As soon as any selector is given, only pod namespaces can match: the host's netns
(shared by host-network pods) and namespaces of no pod are left out.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from exporter.enrich import Workload
from exporter.k8s.enricher import NetnsOwner


class SelectorError(ValueError):
    """A selector flag that does not parse; the message names the flag and the bad part."""


@dataclass(frozen=True, slots=True)
class NameSet:
    include: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude)

    def match(self, value: str) -> bool:
        if self.include and value not in self.include:
            return False
        return value not in self.exclude

    def match_any(self, values: Iterable[str]) -> bool:
        return any(self.match(v) for v in values)


_KEY = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?$")


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def match(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        if self.op == "exists":
            return has
        if self.op == "!exists":
            return not has
        if self.op in ("=", "in"):
            return has and labels[self.key] in self.values
        # "!=" and "notin" match when the label is absent, as in Kubernetes
        return not has or labels[self.key] not in self.values


@dataclass(frozen=True, slots=True)
class Selector:
    namespaces: NameSet = field(default_factory=NameSet)
    pods: NameSet = field(default_factory=NameSet)
    containers: NameSet = field(default_factory=NameSet)
    labels: tuple[LabelRequirement, ...] = ()
    all_namespaces: bool = False

    @property
    def active(self) -> bool:
        """True when anything is selected at all (else every netns matches)."""
        return self.namespaces.active or self.pods.active or self.containers.active or bool(self.labels)

    def match(self, workload: Workload, labels: Mapping[str, str]) -> bool:
        if not self.active:
            return True
        if workload.host_network or not workload.pod:
            return False
        if not self.namespaces.match(workload.namespace):
            return False
        if not self.pods.match(workload.pod):
            return False
        if self.containers.active:
            names = [c for c in workload.container.split(",") if c]
            if not self.containers.match_any(names):
                return False
        return all(req.match(labels) for req in self.labels)


def _names(flag: str, raw: str | Sequence[str] | None) -> NameSet:
    if raw is None:
        return NameSet()
    parts: list[str] = []
    for chunk in [raw] if isinstance(raw, str) else raw:
        parts += [p.strip() for p in chunk.split(",")]
    include: set[str] = set()
    exclude: set[str] = set()
    for p in parts:
        if not p:
            continue
        neg = p.startswith("!")
        name = p[1:].strip() if neg else p
        if not name or any(ch.isspace() for ch in name) or name.startswith("!"):
            raise SelectorError(f"{flag} {p!r}: expected a name or !name")
        (exclude if neg else include).add(name)
    if not include and not exclude:
        raise SelectorError(f"{flag}: give at least one name")
    return NameSet(frozenset(include), frozenset(exclude))


def _split_terms(text: str) -> list[str]:
    terms: list[str] = []
    depth = 0
    cur = ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"--selector {text!r}: unbalanced ')'")
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise SelectorError(f"--selector {text!r}: unbalanced '('")
    terms.append(cur)
    return [t.strip() for t in terms]


_SET_TERM = re.compile(r"^(\S+)\s+(in|notin)\s*\((.*)\)$")


def parse_label_selector(text: str) -> tuple[LabelRequirement, ...]:
    """Kubernetes label-selector syntax, e.g. ``app=web,tier!=db,env in (a,b),!canary``."""
    reqs: list[LabelRequirement] = []
    for term in _split_terms(text):
        if not term:
            raise SelectorError(f"--selector {text!r}: empty requirement")
        m = _SET_TERM.match(term)
        if m:
            key, op, inner = m.group(1), m.group(2), m.group(3)
            values = [v.strip() for v in inner.split(",")]
            if not values or any(not _VALUE.match(v) for v in values) or values == [""]:
                raise SelectorError(f"--selector {term!r}: bad value list")
            _check_key(term, key)
            reqs.append(LabelRequirement(key, op, frozenset(values)))
            continue
        for op_text, op in (("!=", "!="), ("==", "="), ("=", "=")):
            if op_text in term:
                key, _, value = term.partition(op_text)
                key, value = key.strip(), value.strip()
                _check_key(term, key)
                if not _VALUE.match(value):
                    raise SelectorError(f"--selector {term!r}: bad label value {value!r}")
                reqs.append(LabelRequirement(key, op, frozenset({value})))
                break
        else:
            neg = term.startswith("!")
            key = term[1:].strip() if neg else term
            _check_key(term, key)
            reqs.append(LabelRequirement(key, "!exists" if neg else "exists"))
    return tuple(reqs)


def _check_key(term: str, key: str) -> None:
    if not _KEY.match(key):
        raise SelectorError(f"--selector {term!r}: bad label key {key!r}")


def parse_selectors(
    namespace: str | Sequence[str] | None = None,
    podname: str | Sequence[str] | None = None,
    containername: str | Sequence[str] | None = None,
    selector: str | Sequence[str] | None = None,
    all_namespaces: bool = False,
) -> Selector:
    """The ``Selector`` for the flags as typed; raises ``SelectorError`` with the flag's name."""
    ns = _names("--namespace", namespace)
    if all_namespaces and ns.active:
        raise SelectorError("--all-namespaces (-A) and --namespace (-n) exclude each other")
    labels: tuple[LabelRequirement, ...] = ()
    if selector:
        for text in [selector] if isinstance(selector, str) else selector:
            labels += parse_label_selector(text)
    return Selector(
        namespaces=ns,
        pods=_names("--podname", podname),
        containers=_names("--containername", containername),
        labels=labels,
        all_namespaces=all_namespaces,
    )


# --- CLI glue --------------------------------------------------------------------------------


def add_selector_args(p: argparse.ArgumentParser) -> None:
    """The ``kubectl gadget`` selector flags, as an argument group (``dnsotel trace``/``run``)."""
    g = p.add_argument_group("kubernetes selectors (need --kubernetes or DNSOTEL_KUBERNETES=true)")
    g.add_argument("-n", "--namespace", action="append", metavar="NS[,NS]", help="namespaces; '!ns' excludes")
    g.add_argument("-p", "--podname", action="append", metavar="POD[,POD]", help="pod names; '!pod' excludes")
    g.add_argument(
        "-c", "--containername", action="append", metavar="C[,C]", help="container names; '!c' excludes"
    )
    g.add_argument(
        "-l", "--selector", action="append", metavar="LABELS", help="label selector, e.g. app=web,tier!=db"
    )
    g.add_argument(
        "-A", "--all-namespaces", action="store_true", default=False, help="all namespaces (the default)"
    )


def selector_from_args(args: argparse.Namespace) -> Selector:
    """Raises ``SelectorError`` (the CLI turns it into a usage error, exit 2)."""
    return parse_selectors(
        namespace=getattr(args, "namespace", None),
        podname=getattr(args, "podname", None),
        containername=getattr(args, "containername", None),
        selector=getattr(args, "selector", None),
        all_namespaces=bool(getattr(args, "all_namespaces", False)),
    )


class _OwnerSource(Protocol):
    version: int

    def owner(self, netns: int) -> NetnsOwner | None: ...


class NetnsSelection:
    """Which netns inodes a selector keeps, cached until the enricher's map changes.

    ``wanted(inode)`` is what the capture side asks ("attach to / show this netns?"); it is a
    dict read once decided. An undecided netns whose owner is not known yet is *not* cached
    as rejected, so a new pod is picked up as soon as the enricher knows it.
    """

    def __init__(self, selector: Selector, enricher: _OwnerSource) -> None:
        self.selector = selector
        self._enricher = enricher
        self._version = -1
        self._decided: dict[int, bool] = {}

    def wanted(self, netns: int) -> bool:
        if not self.selector.active:
            return True
        version = self._enricher.version
        if version != self._version:
            self._decided = {}
            self._version = version
        hit = self._decided.get(netns)
        if hit is not None:
            return hit
        owner = self._enricher.owner(netns)
        if owner is None:
            return False  # not known yet: ask again next time
        ok = self.selector.match(owner.workload, owner.labels)
        self._decided[netns] = ok
        return ok

    def filter_paths(self, found: Mapping[int, str]) -> dict[int, str]:
        """The subset of a ``netns.discover()`` result to capture in."""
        return {ino: path for ino, path in found.items() if self.wanted(ino)}


class SelectingSink:
    """A ``records.PairSink`` that forwards only events of selected network namespaces."""

    def __init__(self, inner: Any, selection: NetnsSelection) -> None:
        self._inner = inner
        self._wanted: Callable[[int], bool] = selection.wanted
        self.dropped = 0

    def _ok(self, netns: int) -> bool:
        if self._wanted(netns):
            return True
        self.dropped += 1
        return False

    def on_query(self, pkt: Any, role: str, retransmit: bool) -> None:
        if self._ok(pkt.meta.netns):
            self._inner.on_query(pkt, role, retransmit)

    def on_response(self, ex: Any) -> None:
        pkt = ex.response if ex.response is not None else ex.query
        if pkt is None or self._ok(pkt.meta.netns):
            self._inner.on_response(ex)

    def on_unanswered(self, ex: Any) -> None:
        pkt = ex.query if ex.query is not None else ex.response
        if pkt is None or self._ok(pkt.meta.netns):
            self._inner.on_unanswered(ex)

    def on_unmatched(self, pkt: Any, role: str) -> None:
        if self._ok(pkt.meta.netns):
            self._inner.on_unmatched(pkt, role)

    def __getattr__(self, name: str) -> Any:  # flush/close/counters of the wrapped sink
        return getattr(self._inner, name)
