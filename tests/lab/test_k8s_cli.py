"""``dnsotel trace`` / ``dnsotel run`` with ``--kubernetes``, as a user runs them (issue 6).

The lab's client and resolver are "pods": their processes live in real cgroups named the way
kubelet (systemd driver) and containerd name them (tests/lab/k8s_cgroups.py), and the fake
API server (tests/k8s_fake_api.py, a real HTTP server the real ``kubernetes`` client talks
to) serves them as this node's pods, with ``containerStatuses`` whose IDs are the cgroup
scope IDs and ``podIPs`` that are the lab's addresses, plus a ``kube-dns`` Service in
``kube-system`` whose clusterIP is the resolver's client-facing address (no kube-proxy
here: the client sends straight to that address, as it would to the clusterIP).

* client pod ``default/<client pod>``, container ``app``: a long-lived sleeper, and every
  DNS query of these tests (tests/lab/client.py, moved into the ``app`` cgroup before it
  execs) in the lab's client netns;
* resolver pod ``kube-system/<coredns pod>``, container ``coredns``: dnsmasq (and a pause
  sleeper, whose sandbox ID is no container of the pod) in the resolver netns; its pod IP
  is its upstream-facing address 198.18.100.1; the upstream (198.18.100.2) is no pod.

``dnsotel`` runs as a subprocess in the host's netns with ``--kubeconfig`` pointing at the
fake API, ``DNSOTEL_NODE_NAME`` set, and ``--netns`` for the client and resolver netns.
Names for a netns arrive in the background after its first packet (the enricher never
makes capture wait), so each test first sends queries until names show, then checks a
fresh, uniquely named query field by field.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exporter.k8s.index import NODES, PODS, SERVICES
from exporter.telemetry import semconv as sc
from tests.k8s_fake_api import FakeApiServer, node, pod, service
from tests.lab.k8s_cgroups import PodCgroups, pod_cgroups
from tests.lab.lab import REPO_ROOT, UPSTREAM_V4, Dnsmasq, Lab
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, attributes

pytestmark = pytest.mark.lab

Row = dict[str, Any]

NODE = "lab-node-k8s"
CLIENT_CONTAINER = "app"
DNS_CONTAINER = "coredns"
KUBE_DNS = "s/kube-system/kube-dns:53"
UPSTREAM_EP = f"r/{UPSTREAM_V4}:53"
START_WITHIN_S = 60.0  # bcc compiles the eBPF program at start
NAMES_WITHIN_S = 20.0  # first packet of a netns -> its pod names on rows
STALE_MS = 2000  # DNSOTEL_K8S_STALE_AFTER_MS in the API-down test
STOP_WITHIN_S = 15.0


# --- the "cluster" -----------------------------------------------------------------------


@dataclass
class Cluster:
    """The lab as one node of a cluster the fake API server describes."""

    lab: Lab
    dnsmasq: Dnsmasq
    api: FakeApiServer
    cgroups: PodCgroups
    kubeconfig: Path
    client_pod: str
    dns_pod: str
    app_scope: Path  # the client's app container cgroup: queries run in it

    @property
    def client_ns(self) -> int:
        return self.lab.namespaces[self.lab.client.name].inode

    @property
    def resolver_ns(self) -> int:
        return self.lab.namespaces[self.lab.resolver.name].inode

    @property
    def netns_args(self) -> list[str]:
        return ["--netns", self.lab.client.ns.path, "--netns", self.lab.resolver.path]

    @property
    def k8s_args(self) -> list[str]:
        return ["--kubernetes", "--cluster-names", "--kubeconfig", str(self.kubeconfig)]

    def query(self, name: str, qtype: str = "A") -> list[Row]:
        """tests/lab/client.py in the client netns, inside the app container's cgroup.

        The shell joins the cgroup first and then execs ``ip netns exec`` (which mounts a
        sysfs of its own, without /sys/fs/cgroup); the cgroup is inherited across both execs.
        """
        client = self.lab.python("tests.lab.client", "--server", self.dnsmasq.v4, name, qtype)
        argv = [
            "sh",
            "-c",
            'echo $$ > "$1/cgroup.procs" && shift && exec "$@"',
            "sh",
            str(self.app_scope),
            *["ip", "netns", "exec", self.lab.client.name, *client],
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, env=env, check=False
        )
        assert out.returncode == 0, f"{argv} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def client_pod_ep(self, port: int) -> str:
        return f"p/default/{self.client_pod}:{port}"

    def dns_pod_ep(self, port: int) -> str:
        return f"p/kube-system/{self.dns_pod}:{port}"


@pytest.fixture(scope="module")
def cluster(lab: Lab, dnsmasq: Dnsmasq) -> Iterator[Cluster]:
    client_uid, dns_uid = str(uuid.uuid4()), str(uuid.uuid4())
    sandbox_id, app_id = secrets.token_hex(32), secrets.token_hex(32)
    dns_sandbox_id, coredns_id = secrets.token_hex(32), secrets.token_hex(32)
    client_pod = f"client-{secrets.token_hex(3)}-x7k2p"
    dns_pod = f"coredns-{secrets.token_hex(3)}-abcde"
    with pod_cgroups() as cg:
        pause = lab.spawn("client", ["sleep", "3600"], tag="k8s-pause")
        app = lab.spawn("client", ["sleep", "3600"], tag="k8s-app")
        cg.add(client_uid, sandbox_id, pause.pid)
        app_scope = cg.add(client_uid, app_id, app.pid)
        dns_pause = lab.spawn("resolver", ["sleep", "3600"], tag="k8s-dns-pause")
        cg.add(dns_uid, dns_sandbox_id, dns_pause.pid)
        cg.add(dns_uid, coredns_id, dnsmasq.pid)
        assert f"cri-containerd-{app_id}.scope" in Path(f"/proc/{app.pid}/cgroup").read_text()
        assert f"cri-containerd-{coredns_id}.scope" in Path(f"/proc/{dnsmasq.pid}/cgroup").read_text()

        api = FakeApiServer().start()
        try:
            api.add(
                PODS,
                pod(
                    "default",
                    client_pod,
                    uid=client_uid,
                    ip=[lab.client.v4, lab.client.v6],
                    node=NODE,
                    containers={CLIENT_CONTAINER: app_id},
                    labels={"app": "client"},
                ),
            )
            api.add(
                PODS,
                pod(
                    "kube-system",
                    dns_pod,
                    uid=dns_uid,
                    ip=[lab.upstream_link.addr_b_v4, lab.upstream_link.addr_b_v6],
                    node=NODE,
                    containers={DNS_CONTAINER: coredns_id},
                    labels={"k8s-app": "kube-dns"},
                ),
            )
            # a pod of another node, and a service of no interest: names must not mix them up
            api.add(PODS, pod("default", "elsewhere", ip="10.244.9.9", node="other-node"))
            api.add(SERVICES, service("default", "kubernetes", "10.96.0.1", port=443))
            api.add(SERVICES, service("kube-system", "kube-dns", [dnsmasq.v4, dnsmasq.v6]))
            api.add(NODES, node(NODE, ["198.18.250.1"]))
            kubeconfig = Path(api.write_kubeconfig(str(lab.tmp / "kubeconfig")))
            yield Cluster(lab, dnsmasq, api, cg, kubeconfig, client_pod, dns_pod, app_scope)
        finally:
            api.stop()
            for proc in (pause, app, dns_pause):
                proc.stop()


# --- running dnsotel ---------------------------------------------------------------------


def dnsotel_argv() -> list[str]:
    script = Path(sys.executable).parent / "dnsotel"
    return [str(script)] if script.exists() else [sys.executable, "-m", "exporter.cli"]


def user_env(**extra: str) -> dict[str, str]:
    """The caller's environment without OTEL_*, DNSOTEL_*, KUBECONFIG: only the test's settings count."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "DNSOTEL_", "KUBERNETES_")) and k != "KUBECONFIG"
    }
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONSAFEPATH", None)
    env["DNSOTEL_NODE_NAME"] = NODE
    env.update(extra)
    return env


class Dnsotel:
    """A ``dnsotel`` subprocess; stdout lines (JSON rows for ``trace -o json``) are collected."""

    def __init__(self, workdir: Path, args: Sequence[str], env: Mapping[str, str]) -> None:
        self.argv = [*dnsotel_argv(), *args]
        self.stderr_path = workdir / f"dnsotel-{time.monotonic_ns()}.stderr"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                env=dict(env),
                text=True,
            )
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rows(self) -> list[Row]:
        with self._cv:
            lines = list(self.lines)
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_rows(self, pred: Callable[[Row], bool], n: int = 1, timeout: float = 5.0) -> list[Row]:
        """The rows matching ``pred`` once there are ``n`` (or all there are at the deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            got = [r for r in self.rows() if pred(r)]
            left = deadline - time.monotonic()
            if len(got) >= n or left <= 0:
                return got
            with self._cv:
                self._cv.wait(min(left, 0.1))

    def wait_ready(self) -> None:
        """Until the "capturing" log line (sockets attached)."""
        deadline = time.monotonic() + START_WITHIN_S
        while time.monotonic() < deadline:
            if '"msg": "capturing"' in self.stderr():
                return
            if not self.alive():
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"dnsotel did not start: rc={self.proc.returncode}\n{self.stderr()[-3000:]}")

    def stop(self) -> int:
        """SIGTERM (as a user's Ctrl-C or service manager would); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"dnsotel did not stop on SIGTERM\n{self.stderr()[-3000:]}") from None
        self._reader.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)


@contextlib.contextmanager
def dnsotel(cluster: Cluster, args: Sequence[str], **env: str) -> Iterator[Dnsotel]:
    """A running ``dnsotel``; killed (by PID) if the test leaves it running."""
    proc = Dnsotel(cluster.lab.tmp, args, user_env(**env))
    try:
        yield proc
    finally:
        proc.kill()


def trace_args(cluster: Cluster, *extra: str) -> list[str]:
    return ["trace", "-o", "json", *cluster.k8s_args, *cluster.netns_args, "--timeout", "1s", *extra]


def unique(label: str = "ok") -> str:
    return f"k8s-{secrets.token_hex(4)}.{label}.lab."


def check(row: Row, **want: Any) -> None:
    bad = [f"{k}: got {row.get(k)!r}, want {v!r}" for k, v in want.items() if row.get(k) != v]
    assert not bad, "\n".join(bad) + f"\nrow: {row}"


def named_rows(name: str, netns: int | None = None) -> Callable[[Row], bool]:
    def pred(r: Row) -> bool:
        return r.get("name") == name and (netns is None or r.get("netns_id") == netns)

    return pred


def until_named(cluster: Cluster, tr: Dnsotel, netns: int, pod_name: str) -> None:
    """Send queries until a row of ``netns`` carries ``pod_name`` (names come in the background)."""
    deadline = time.monotonic() + NAMES_WITHIN_S
    while time.monotonic() < deadline:
        assert tr.alive(), f"dnsotel exited ({tr.proc.returncode}):\n{tr.stderr()[-3000:]}"
        name = unique()
        cluster.query(name)
        got = tr.wait_rows(named_rows(name, netns), n=1, timeout=2.0)
        if any(r.get("k8s.podname") == pod_name for r in got):
            return
    raise AssertionError(
        f"no row of netns {netns} named {pod_name} within {NAMES_WITHIN_S}s\n"
        f"last rows: {tr.rows()[-6:]}\n{tr.stderr()[-3000:]}"
    )


def client_port(rows: Sequence[Row]) -> int:
    ports = {r["src.port"] for r in rows if r.get("qr") == "Q"}
    assert len(ports) == 1, rows
    return int(ports.pop())


# --- acceptance 1: names on the trace's rows ------------------------------------------------


def test_trace_names_pods_services_and_containers(cluster: Cluster) -> None:
    with dnsotel(cluster, trace_args(cluster)) as tr:
        tr.wait_ready()
        until_named(cluster, tr, cluster.client_ns, cluster.client_pod)
        until_named(cluster, tr, cluster.resolver_ns, cluster.dns_pod)

        name = unique()
        answers = cluster.query(name)
        assert answers and answers[0].get("rcode") in ("NOERROR", 0), answers
        # client netns: Q and R; resolver netns: the client's Q and R, its upstream Q and R
        client = tr.wait_rows(named_rows(name, cluster.client_ns), n=2)
        resolver = tr.wait_rows(named_rows(name, cluster.resolver_ns), n=4)
        assert len(client) == 2, client
        assert len(resolver) == 4, resolver
        port = client_port(client)
        me = cluster.client_pod_ep(port)

        pod_cols = {
            "k8s.node": NODE,
            "k8s.namespace": "default",
            "k8s.podname": cluster.client_pod,
            "k8s.containername": CLIENT_CONTAINER,
        }
        q, r = sorted(client, key=lambda row: row["qr"])
        check(q, qr="Q", src=me, dst=KUBE_DNS, nameserver=KUBE_DNS, **pod_cols)
        check(r, qr="R", src=KUBE_DNS, dst=me, nameserver=KUBE_DNS, rcode="NOERROR", **pod_cols)

        dns_cols = {
            "k8s.node": NODE,
            "k8s.namespace": "kube-system",
            "k8s.podname": cluster.dns_pod,
            "k8s.containername": DNS_CONTAINER,
        }
        served = [row for row in resolver if KUBE_DNS in (row["src"], row["dst"])]
        upstream = [row for row in resolver if UPSTREAM_EP in (row["src"], row["dst"])]
        assert len(served) == 2 and len(upstream) == 2, resolver
        sq, sr = sorted(served, key=lambda row: row["qr"])
        check(sq, qr="Q", src=me, dst=KUBE_DNS, nameserver=KUBE_DNS, **dns_cols)
        check(sr, qr="R", src=KUBE_DNS, dst=me, nameserver=KUBE_DNS, **dns_cols)
        uq, ur = sorted(upstream, key=lambda row: row["qr"])
        coredns = cluster.dns_pod_ep(int(uq["src.port"]))
        check(uq, qr="Q", src=coredns, dst=UPSTREAM_EP, nameserver=UPSTREAM_EP, **dns_cols)
        check(ur, qr="R", src=UPSTREAM_EP, dst=coredns, nameserver=UPSTREAM_EP, **dns_cols)

        assert tr.stop() == 0, tr.stderr()[-3000:]
    assert "Traceback" not in tr.stderr(), tr.stderr()


# --- acceptance 2: selectors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "shows_client", "shows_resolver"),
    [
        (["-n", "default"], True, False),
        (["-p", "!{client}"], False, True),
        (["-c", CLIENT_CONTAINER], True, False),
        (["-c", DNS_CONTAINER, "-n", "kube-system"], False, True),
        (["-l", "k8s-app=kube-dns"], False, True),
    ],
    ids=["namespace", "not-client-pod", "container-app", "container-coredns", "label"],
)
def test_trace_selectors(
    cluster: Cluster, selector: list[str], shows_client: bool, shows_resolver: bool
) -> None:
    args = [a.format(client=cluster.client_pod) for a in selector]
    with dnsotel(cluster, trace_args(cluster, *args)) as tr:
        tr.wait_ready()
        shown_ns, shown_pod = (
            (cluster.client_ns, cluster.client_pod)
            if shows_client
            else (cluster.resolver_ns, cluster.dns_pod)
        )
        until_named(cluster, tr, shown_ns, shown_pod)

        name = unique()
        cluster.query(name)
        want_client = 2 if shows_client else 0
        want_resolver = 4 if shows_resolver else 0
        # wait for what must show, then a little longer for what must not
        tr.wait_rows(named_rows(name), n=want_client + want_resolver)
        time.sleep(1.0)
        rows = tr.wait_rows(named_rows(name), n=0, timeout=0)
        client = [r for r in rows if r["netns_id"] == cluster.client_ns]
        resolver = [r for r in rows if r["netns_id"] == cluster.resolver_ns]
        assert len(client) == want_client, f"{args}: client rows {client}"
        assert len(resolver) == want_resolver, f"{args}: resolver rows {resolver}"
        for r in client:
            check(r, **{"k8s.podname": cluster.client_pod, "k8s.containername": CLIENT_CONTAINER})
        for r in resolver:
            check(r, **{"k8s.podname": cluster.dns_pod, "k8s.containername": DNS_CONTAINER})
        # nothing of the pods the selector leaves out, ever (not even before names were known)
        left_out = cluster.resolver_ns if shows_client else cluster.client_ns
        leaked = [r for r in tr.rows() if r["netns_id"] == left_out]
        assert not leaked, f"{args}: rows of a netns the selector leaves out: {leaked[:4]}"
        assert tr.stop() == 0, tr.stderr()[-3000:]


def test_selectors_need_kubernetes(cluster: Cluster) -> None:
    out = subprocess.run(
        [*dnsotel_argv(), "trace", "-o", "json", *cluster.netns_args, "-n", "default"],
        capture_output=True,
        text=True,
        timeout=60,
        env=user_env(),
        cwd=REPO_ROOT,
        check=False,
    )
    assert out.returncode == 2, out
    assert "--kubernetes" in out.stderr


# --- acceptance 3: the API goes away and comes back ------------------------------------------


def test_trace_goes_on_without_the_api(cluster: Cluster) -> None:
    api = cluster.api
    raw_dns = f"r/{cluster.dnsmasq.v4}:53"
    with dnsotel(cluster, trace_args(cluster), DNSOTEL_K8S_STALE_AFTER_MS=str(STALE_MS)) as tr:
        tr.wait_ready()
        until_named(cluster, tr, cluster.client_ns, cluster.client_pod)

        api.stop()
        try:
            stopped_at = time.monotonic()
            degraded: Row | None = None
            first_raw: float | None = None
            sent = 0
            while degraded is None:
                assert time.monotonic() - stopped_at < STALE_MS / 1000 + 20, (
                    f"names never degraded with the API down\n{tr.rows()[-4:]}\n{tr.stderr()[-3000:]}"
                )
                name = unique()
                cluster.query(name)
                sent += 1
                got = tr.wait_rows(named_rows(name, cluster.client_ns), n=2, timeout=3.0)
                assert len(got) == 2, f"capture stopped with the API down (query {sent}): {got}"
                q = next(r for r in got if r["qr"] == "Q")
                if first_raw is None and (q["dst"] == raw_dns or not q["k8s.podname"]):
                    first_raw = time.monotonic() - stopped_at
                # pods and services are watched apart: each degrades after its own window
                if q["dst"] == raw_dns and not q["k8s.podname"]:
                    degraded = q
            # not before the staleness window: until then the names held are still shown
            assert first_raw is not None and first_raw >= STALE_MS / 1000 - 0.2, (
                f"names dropped after {first_raw:.1f}s"
            )
            port = int(degraded["src.port"])
            check(
                degraded,
                src=f"r/{cluster.lab.client.v4}:{port}",
                nameserver=raw_dns,
                **{"k8s.namespace": "", "k8s.podname": "", "k8s.containername": "", "k8s.node": NODE},
            )
        finally:
            api.start()  # same port: what the kubeconfig says

        deadline = time.monotonic() + 20
        while True:
            assert tr.alive(), tr.stderr()[-3000:]
            name = unique()
            cluster.query(name)
            got = tr.wait_rows(named_rows(name, cluster.client_ns), n=2, timeout=3.0)
            assert len(got) == 2, f"capture stopped after the API came back: {got}"
            q = next(r for r in got if r["qr"] == "Q")
            if q["k8s.podname"] == cluster.client_pod and q["dst"] == KUBE_DNS:
                check(q, src=cluster.client_pod_ep(int(q["src.port"])), nameserver=KUBE_DNS)
                break
            assert time.monotonic() < deadline, f"names did not come back: {q}\n{tr.stderr()[-3000:]}"
        assert tr.stop() == 0, tr.stderr()[-3000:]
    err = tr.stderr()
    assert "Traceback" not in err, err
    assert "dropping cached names" in err, err


# --- acceptance 4: spans and metrics over OTLP ----------------------------------------------


def lookup_points(rx: OtlpReceiver) -> list[dict[str, Any]]:
    m = rx.latest_metrics().get(sc.METRIC_LOOKUP_DURATION)
    if m is None:
        return []
    return [attributes(p.attributes) for p in m.histogram.data_points]


def wait_spans(
    rx: OtlpReceiver, spans: Callable[[], list[ReceivedSpan]], timeout: float = 5.0
) -> list[ReceivedSpan]:
    rx.wait(lambda: bool(spans()), timeout)
    return spans()


def test_run_exports_k8s_attributes(cluster: Cluster) -> None:
    with OtlpReceiver() as rx:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "DNSOTEL_TIMEOUT_MS": "1000",
        }
        with dnsotel(cluster, ["run", *cluster.k8s_args, *cluster.netns_args], **env) as run:
            run.wait_ready()

            def client_spans(name: str) -> list[ReceivedSpan]:
                return [
                    s
                    for s in rx.spans()
                    if s.attributes.get(sc.DNS_QUESTION_NAME) == name
                    and s.attributes.get(sc.DNSOTEL_NETNS_ID) == cluster.client_ns
                ]

            span: ReceivedSpan | None = None
            deadline = time.monotonic() + NAMES_WITHIN_S
            while span is None:
                assert run.alive(), run.stderr()[-3000:]
                assert time.monotonic() < deadline, (
                    f"no client span with pod names\n{[s.attributes for s in rx.spans()[-4:]]}\n"
                    f"{run.stderr()[-3000:]}"
                )
                name = unique()
                cluster.query(name)
                got = wait_spans(rx, functools.partial(client_spans, name))
                if got and got[0].attributes.get(sc.K8S_POD_NAME) == cluster.client_pod:
                    span = got[0]
            # a fresh query, now that the names are known
            name = unique()
            cluster.query(name)
            spans = wait_spans(rx, lambda: client_spans(name), timeout=10.0)
            assert len(spans) == 1, [s.attributes for s in spans]
            attrs = spans[0].attributes
            port = attrs[sc.CLIENT_PORT]
            want = {
                sc.K8S_NAMESPACE_NAME: "default",
                sc.K8S_POD_NAME: cluster.client_pod,
                sc.K8S_CONTAINER_NAME: CLIENT_CONTAINER,
                sc.K8S_NODE_NAME: NODE,
                sc.DNS_CLIENT: cluster.client_pod_ep(port),
                sc.DNS_NAMESERVER: KUBE_DNS,
                sc.SERVER_ADDRESS: cluster.dnsmasq.v4,
            }
            bad = {k: (attrs.get(k), v) for k, v in want.items() if attrs.get(k) != v}
            assert not bad, f"(got, want): {bad}\nspan: {attrs}"
            assert spans[0].resource.get(sc.K8S_NODE_NAME) == NODE, spans[0].resource

            # the resolver's spans: its pod, and the upstream as a raw endpoint
            def resolver_spans() -> list[ReceivedSpan]:
                return [
                    s
                    for s in rx.spans()
                    if s.attributes.get(sc.DNS_QUESTION_NAME) == name
                    and s.attributes.get(sc.DNSOTEL_NETNS_ID) == cluster.resolver_ns
                ]

            rx.wait(lambda: len(resolver_spans()) >= 2, 10.0)
            by_ns = {s.attributes.get(sc.DNS_NAMESERVER): s.attributes for s in resolver_spans()}
            assert set(by_ns) == {KUBE_DNS, UPSTREAM_EP}, by_ns
            up = by_ns[UPSTREAM_EP]
            assert up.get(sc.K8S_POD_NAME) == cluster.dns_pod, up
            assert up.get(sc.K8S_CONTAINER_NAME) == DNS_CONTAINER, up
            assert up.get(sc.DNS_CLIENT) == cluster.dns_pod_ep(up[sc.CLIENT_PORT]), up

            # metrics: the client's lookups, by pod and nameserver
            def client_point() -> dict[str, Any] | None:
                for p in lookup_points(rx):
                    if p.get(sc.K8S_POD_NAME) == cluster.client_pod and p.get(sc.DNS_ROLE) == "client":
                        return p
                return None

            assert rx.wait(lambda: client_point() is not None, 10.0), (
                f"no {sc.METRIC_LOOKUP_DURATION} point for the client pod: {lookup_points(rx)}"
            )
            point = client_point()
            assert point is not None
            assert point.get(sc.K8S_NAMESPACE_NAME) == "default", point
            assert point.get(sc.DNS_NAMESERVER) == KUBE_DNS, point
            server_points = [
                p
                for p in lookup_points(rx)
                if p.get(sc.K8S_POD_NAME) == cluster.dns_pod and p.get(sc.DNS_NAMESERVER) == UPSTREAM_EP
            ]
            assert server_points, lookup_points(rx)
            assert all(p.get(sc.K8S_NAMESPACE_NAME) == "kube-system" for p in server_points)

            assert run.stop() == 0, run.stderr()[-3000:]
        assert "Traceback" not in run.stderr(), run.stderr()


def test_selectors_wait_for_a_slow_api(cluster: Cluster) -> None:
    """The API answers its first list only after capture is set up: the selected pod's netns
    is attached as soon as it is known (no start-up error, no rows of other pods).

    Also what makes the selector tests above racy: capture set-up (a cached eBPF compile
    takes ~0.5 s) against the enricher's first /proc scan and pod list.
    """
    cluster.api.paused = True
    try:
        with dnsotel(cluster, trace_args(cluster, "-n", "default")) as tr:
            tr.wait_ready()
            time.sleep(2.0)
            assert tr.alive(), f"dnsotel exited ({tr.proc.returncode}):\n{tr.stderr()[-3000:]}"
            cluster.api.paused = False
            until_named(cluster, tr, cluster.client_ns, cluster.client_pod)
            assert not [r for r in tr.rows() if r["netns_id"] == cluster.resolver_ns]
            assert tr.stop() == 0, tr.stderr()[-3000:]
    finally:
        cluster.api.paused = False
