"""deploy/: the kustomize tree renders, every manifest is valid Kubernetes (offline schemas), and
the DaemonSet grants exactly what the code needs (env the config reads, mounts the paths the
code opens, capabilities, RBAC the watchers use), no more.

The tree is rendered by a small renderer for the kustomize features deploy/ uses
(resources, namespace, labels, images, strategic-merge patches by target); when ``kubectl``
is installed its ``kubectl kustomize`` output is compared with ours.
"""

from __future__ import annotations

import copy
import inspect
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
OVERLAY = K8S / "overlays" / "otel-collector"
K8S_VERSION = "1.30"  # oldest API we validate against (AKS/EKS/GKE supported range)
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "Node", "PersistentVolume"}
EXPECTED_CAPS = {"BPF", "PERFMON", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"}


# --- a tiny kustomize ---------------------------------------------------------------------


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge for what deploy/ patches: maps merge, lists of named maps merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        by_name = {x["name"]: x for x in base}
        added = [copy.deepcopy(p) for p in patch if p["name"] not in by_name]
        merged = [_merge(b, next((p for p in patch if p["name"] == b["name"]), {})) for b in base]
        return added + merged
    return copy.deepcopy(patch)


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    return all(
        obj.get(k) == v if k == "kind" else obj["metadata"].get(k) == v
        for k, v in target.items()
        if k in ("kind", "name", "namespace")
    )


def render(directory: Path) -> list[dict[str, Any]]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(k) <= {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}, (
        f"{directory}: the test's renderer does not know {set(k)}"
    )
    objs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        path = (directory / res).resolve()
        assert path.is_relative_to(K8S), f"{res} is outside deploy/kubernetes"
        if path.is_dir():
            objs += render(path)
        else:
            objs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in k.get("patches", []):
        doc = yaml.safe_load((directory / patch["path"]).read_text())
        target = patch.get("target") or {"kind": doc["kind"], "name": doc["metadata"]["name"]}
        hits = [i for i, o in enumerate(objs) if _matches(o, target)]
        assert hits, f"patch {patch['path']} matches nothing"
        for i in hits:
            objs[i] = _merge(objs[i], {key: v for key, v in doc.items() if key != "metadata"})
    ns = k.get("namespace")
    for o in objs:
        if ns and o["kind"] not in CLUSTER_SCOPED:
            o["metadata"]["namespace"] = ns
        if ns and o["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            for s in o.get("subjects", []):
                if s.get("kind") == "ServiceAccount":
                    s["namespace"] = ns
        for entry in k.get("labels", []):
            assert not entry.get("includeSelectors") and not entry.get("includeTemplates")
            o["metadata"].setdefault("labels", {}).update(entry["pairs"])
        for img in k.get("images", []):
            for c in _containers(o):
                if c["image"].split(":")[0] == img["name"]:
                    c["image"] = f"{img.get('newName', img['name'])}:{img['newTag']}"
    return objs


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


def _canon(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _canon(v) for k, v in x.items()}
    if isinstance(x, list):
        items = [_canon(v) for v in x]
        if all(isinstance(v, dict) and "name" in v for v in items):
            items.sort(key=lambda v: v["name"])
        return items
    return x


def _by_kind(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {o["kind"]: o for o in objs}
    assert len(out) == len(objs), "one object per kind expected in deploy/"
    return out


BASE = render(K8S)
WITH_OTLP = render(OVERLAY)


# --- rendering and schemas ----------------------------------------------------------------


@pytest.mark.parametrize("directory", [K8S, K8S / "base", OVERLAY], ids=lambda p: str(p.relative_to(DEPLOY)))
def test_kubectl_kustomize_agrees_with_the_renderer(directory: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the renderer alone is used")
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert _canon(sorted(theirs, key=lambda o: o["kind"])) == _canon(
        sorted(render(directory), key=lambda o: o["kind"])
    )


@pytest.mark.parametrize("objs", [BASE, WITH_OTLP], ids=["base", "otel-collector"])
def test_every_manifest_validates_against_the_kubernetes_schemas(objs: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    kinds = set()
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # raises with the path of the error
        kinds.add(obj["kind"])
    assert kinds == {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Service",
    }


def test_validation_really_rejects_a_bad_manifest() -> None:
    import kubernetes_validate

    ds = copy.deepcopy(_by_kind(BASE)["DaemonSet"])
    ds["spec"]["template"]["spec"]["hostPID"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSION, strict=True)


# --- what the DaemonSet grants vs what the code needs -------------------------------------


def _ds(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    ds = _by_kind(objs)["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_env_vars_are_ones_the_config_reads() -> None:
    config_src = (ROOT / "exporter" / "config.py").read_text()
    _, c = _ds(WITH_OTLP)
    for name in _env(c):
        if name.startswith("DNSOTEL_"):
            assert f'"{name}"' in config_src, (
                f"{name} is set by the DaemonSet but exporter/config.py never reads it"
            )
        else:
            assert name.startswith("OTEL_"), f"{name}: neither DNSOTEL_* nor an OpenTelemetry SDK variable"
    env = _env(_ds(BASE)[1])
    assert env["DNSOTEL_KUBERNETES"] == "true"
    assert env["DNSOTEL_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["DNSOTEL_PROMETHEUS_ADDR"] == "0.0.0.0"
    from exporter.config import from_env

    s = from_env({k: v for k, v in env.items() if isinstance(v, str)} | {"DNSOTEL_NODE_NAME": "n1"})
    assert s.kubernetes and s.prometheus_port == 9464 and s.node_name == "n1"
    assert s.proc_root == env["DNSOTEL_PROC_ROOT"]


def test_mounts_cover_the_paths_the_code_opens() -> None:
    from exporter import netns

    pod, c = _ds(BASE)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert all(m.get("readOnly") for m in mounts.values()), "every host mount is read-only"
    proc_root = _env(c)["DNSOTEL_PROC_ROOT"]
    assert volumes[mounts[proc_root]["name"]]["hostPath"]["path"] == "/proc"
    run_netns = inspect.signature(netns.discover).parameters["run_netns"].default
    m = mounts[run_netns]
    assert volumes[m["name"]]["hostPath"]["path"] == "/var/run/netns"
    assert m["mountPropagation"] == "HostToContainer"  # namespaces created later appear inside
    assert pod["hostPID"] is True and pod["hostNetwork"] is False


def test_capabilities_are_explicit_and_not_privileged() -> None:
    _, c = _ds(BASE)
    sc = c["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == EXPECTED_CAPS
    # the capture code checks for these at start (exporter/capture/ebpf.py _missing_caps)
    ebpf_src = (ROOT / "exporter" / "capture" / "ebpf.py").read_text()
    for cap in ("CAP_SYS_ADMIN", "CAP_NET_RAW", "CAP_BPF"):
        assert cap in ebpf_src and cap.removeprefix("CAP_") in sc["capabilities"]["add"]


def test_cluster_role_allows_exactly_what_the_watchers_use() -> None:
    from exporter.k8s.watch import REQUIRED_RBAC

    role = _by_kind(BASE)["ClusterRole"]
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""]
        for res in rule["resources"]:
            granted.setdefault(res, set()).update(rule["verbs"])
    assert granted == {k: set(v) for k, v in REQUIRED_RBAC.items()}
    assert all(v <= {"get", "list", "watch"} for v in granted.values())
    binding = _by_kind(BASE)["ClusterRoleBinding"]
    sa = _by_kind(BASE)["ServiceAccount"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"]}
    ]
    pod, _ = _ds(BASE)
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    # the code lists/watches exactly these (exporter/k8s/__init__.py start_watchers)
    src = (ROOT / "exporter" / "k8s" / "__init__.py").read_text()
    used = set(re.findall(r"api\.list_(\w+?)(?:_for_all_namespaces)?\b", src))
    assert {u + "s" for u in used} == set(REQUIRED_RBAC)


def test_probes_service_and_scheduling() -> None:
    objs = _by_kind(BASE)
    pod, c = _ds(BASE)
    port = int(_env(c)["DNSOTEL_PROMETHEUS_PORT"])
    (cport,) = c["ports"]
    assert cport["containerPort"] == port
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/metrics" and c[probe]["httpGet"]["port"] == cport["name"]
    svc = objs["Service"]
    labels = objs["DaemonSet"]["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert svc["spec"]["ports"][0]["targetPort"] == cport["name"]
    assert {"operator": "Exists"} in pod["tolerations"]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert all(o["metadata"].get("namespace") in (None, "dnsotel") for o in objs.values())


def test_otel_collector_overlay_sets_the_otlp_endpoint_only_there() -> None:
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in _env(_ds(BASE)[1])
    env = _env(_ds(WITH_OTLP)[1])
    assert re.match(r"^http://[a-z0-9.-]+\.svc(\.cluster\.local)?:4317$", env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert {k for k in _env(_ds(BASE)[1])} <= set(env)  # the base's variables survive the patch


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM debian:bookworm", text, re.M)
    for pkg in ("python3-bpfcc", "linux-headers-amd64"):
        assert pkg in text
    assert "venv --system-site-packages" in text
    assert "scripts/setup.sh kernel_headers" in text  # headers linked for the node's kernel
    for src in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "kernel_headers()" in setup and '"$step"' in setup  # callable as a step
