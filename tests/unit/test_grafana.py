"""Dashboards and alert rules: fresh, valid PromQL/TraceQL, only names the exporter emits.

PromQL is checked by promtool (Debian's `prometheus` package): each dashboard expression, with
Grafana's variables replaced by sample values, becomes a recording rule in a temporary rule file
that `promtool check rules` must accept. Metric and label names are checked against the sets derived
from exporter/telemetry/semconv.py. TraceQL has no parser here (no Tempo); its attribute references
and intrinsics are checked against semconv.span_attributes().
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from exporter.telemetry import semconv as sc
from grafana import build
from tests.dashboards import dashboards, panels, substitute, targets

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
needs_promtool = pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="needs promtool (Debian prometheus)")

# --- what the exporter emits ---------------------------------------------------------------
# Labels that come from the resource (node), Prometheus (job, instance) or an external label (cluster).
RESOURCE_LABELS = frozenset({sc.prometheus_label(sc.K8S_NODE_NAME), "cluster", "job", "instance"})


def _series_attributes() -> dict[str, frozenset[str]]:
    """Prometheus series name -> the labels it can carry."""
    out: dict[str, frozenset[str]] = {}
    for metric in sc.METRIC_UNITS:
        labels = (
            frozenset(sc.prometheus_label(a) for a in sc.METRIC_ATTRIBUTES.get(metric, ())) | RESOURCE_LABELS
        )
        base = sc.prometheus_metric(metric)
        if metric in sc.HISTOGRAMS:
            out[base + "_bucket"] = labels | {"le"}
            out[base + "_count"] = labels
            out[base + "_sum"] = labels
        else:
            out[base] = labels
    return out


SERIES = _series_attributes()
ALL_LABELS = frozenset().union(*SERIES.values())
FUNCTIONS = frozenset(
    {"sum", "max", "min", "avg", "count", "topk", "rate", "increase", "histogram_quantile", "sort_desc"}
    | {"vector", "absent"}
)
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "offset"})
KEYWORDS |= {"and", "or", "unless", "bool"}

# Sample values for Grafana's variables, so that the expressions become plain PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__range": "1h",
    "$__interval": "1m",
    "${threshold}": "100",
    "$threshold": "100",
    "$cluster": "lab",
    "$node": "node-a",
    "$namespace": "default",
    "$pod": "client-0",
    "$role": "client",
    "$nameserver": "r/10.0.0.53:53",
    "$resolver_namespace": "kube-system",
}


# --- collecting the generated queries ----------------------------------------------------------
def promql_targets() -> Iterator[tuple[str, str]]:
    """(where, expression) of every Prometheus query in the dashboards, label_values() unwrapped."""
    for name, _, panel, target in targets("prometheus"):
        yield f"{name}: {panel['title']} {target['refId']}", target["expr"]
    for name, model in dashboards().items():
        for var in model["templating"]["list"]:
            if var["type"] == "query":
                query = var["query"]["query"]
                m = re.fullmatch(r"label_values\((.+), *([a-zA-Z_]\w*)\)", query, re.S)
                assert m, f"{name}: variable {var['name']}: unexpected query {query!r}"
                assert m.group(2) in ALL_LABELS, f"{name}: variable {var['name']}: unknown label {m.group(2)}"
                yield f"{name}: variable {var['name']}", m.group(1)


def traceql_targets() -> Iterator[tuple[str, str]]:
    for name, _, panel, target in targets("tempo"):
        yield f"{name}: {panel['title']}", target["query"]


def rule_expressions() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(build.RULES_FILE.read_text())["groups"]:
        for rule in group["rules"]:
            yield f"rule {rule['alert']}", rule["expr"]


# --- a small PromQL name scanner ----------------------------------------------------------------
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*\"\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w.])[a-zA-Z_:][\w:]*")


def promql_names(expr: str) -> tuple[set[str], set[str], list[tuple[str, set[str]]]]:
    """(metric names, label names, [(metric, labels matched in its selector)]) of a PromQL expression."""
    text = _STRING.sub('""', expr)
    metrics: set[str] = set()
    labels: set[str] = set()
    selectors: list[tuple[str, set[str]]] = []
    for m in _SELECTOR.finditer(text):
        matched = set(_MATCHER.findall(m.group(2)))
        labels |= matched
        if m.group(1) and m.group(1) not in KEYWORDS:
            selectors.append((m.group(1), matched))
    text = _SELECTOR.sub(lambda m: (m.group(1) or "") + " ", text)
    for m in _GROUPING.finditer(text):
        labels |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    for m in _IDENT.finditer(text):
        token = m.group(0)
        following = text[m.end() :].lstrip()[:1]
        if token in KEYWORDS:
            continue
        if following == "(":
            assert token in FUNCTIONS, f"unexpected function {token} in {expr!r}"
            continue
        metrics.add(token)
    return metrics, labels, selectors


# --- tests --------------------------------------------------------------------------------------
def test_generated_files_are_fresh() -> None:
    stale = build.stale(build.render())
    names = ", ".join(str(p.relative_to(build.ROOT)) for p in stale)
    assert not stale, f"generated files are stale: {names}; run `make dashboards` and commit the result"


def test_generation_is_deterministic() -> None:
    assert build.render() == build.render()


def test_dashboards_cover_the_five_steps() -> None:
    models = {m["uid"]: m for m in dashboards().values()}
    assert set(models) == {
        build.UID_OVERVIEW,
        build.UID_FAILED,
        build.UID_SLOW,
        build.UID_UPSTREAM,
        build.UID_LOOKUP,
    }
    for uid, model in models.items():
        variables = {v["name"] for v in model["templating"]["list"]}
        assert {"datasource", "tempo_datasource", "cluster", "node"} <= variables, uid
        for panel in panels(model):
            if panel["type"] == "row":
                continue
            assert panel.get("description", "").strip(), f"{uid}: panel {panel['title']} has no description"
            assert "Bad" in panel["description"] or panel["type"] == "text", f"{uid}: {panel['title']}"
    for uid in (build.UID_OVERVIEW, build.UID_FAILED, build.UID_SLOW):
        variables = {v["name"] for v in models[uid]["templating"]["list"]}
        assert {"namespace", "pod", "nameserver"} <= variables, uid
    assert "threshold" in {v["name"] for v in models[build.UID_SLOW]["templating"]["list"]}
    assert "name" in {v["name"] for v in models[build.UID_LOOKUP]["templating"]["list"]}
    tempo_panels = {
        uid for uid, m in models.items() for p in panels(m) if p.get("datasource", {}).get("type") == "tempo"
    }
    assert tempo_panels == {build.UID_FAILED, build.UID_SLOW, build.UID_UPSTREAM, build.UID_LOOKUP}
    slow = next(q for w, q in traceql_targets() if w.startswith("slow-queries"))
    assert "duration > ${threshold}ms" in slow
    assert any('span.dns.question.name = "${name}"' in q for _, q in traceql_targets())


def test_datasource_uids_match_local_provisioning() -> None:
    provisioning = (
        build.ROOT / "deploy" / "local" / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
    )
    uids = {d["uid"]: d["type"] for d in yaml.safe_load(provisioning.read_text())["datasources"]}
    assert uids.get(build.PROMETHEUS_UID) == "prometheus"
    assert uids.get(build.TEMPO_UID) == "tempo"


@pytest.mark.parametrize(("where", "expr"), [*promql_targets(), *rule_expressions()])
def test_promql_names_only_what_the_exporter_emits(where: str, expr: str) -> None:
    metrics, labels, selectors = promql_names(substitute(expr, GRAFANA_VARIABLES))
    assert metrics or expr.startswith("vector("), f"{where}: no metric in {expr!r}"
    assert metrics <= set(SERIES), f"{where}: unknown metrics {sorted(metrics - set(SERIES))}"
    assert labels <= ALL_LABELS, f"{where}: unknown labels {sorted(labels - ALL_LABELS)}"
    for metric, matched in selectors:
        extra = matched - SERIES[metric]
        assert not extra, f"{where}: {metric} has no label(s) {sorted(extra)}"


def test_name_scanner_catches_unknown_names() -> None:
    metrics, labels, _ = promql_names('sum by (foo) (rate(dns_bogus_total{bar="x"}[5m]))')
    assert metrics == {"dns_bogus_total"}
    assert labels == {"foo", "bar"}


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


@needs_promtool
def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    rules = [
        {
            "record": f"dnsotel:check:{i}",
            "expr": substitute(expr, GRAFANA_VARIABLES),
            "labels": {"where": where},
        }
        for i, (where, expr) in enumerate(promql_targets())
    ]
    path = tmp_path / "dashboards.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


@needs_promtool
def test_rule_file_passes_promtool_check() -> None:
    result = _promtool("check", "rules", str(build.RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_prometheusrule_manifest_passes_promtool_check(tmp_path: Path) -> None:
    manifest = yaml.safe_load(build.PROMETHEUS_RULE_FILE.read_text())
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["spec"]["groups"] == yaml.safe_load(build.RULES_FILE.read_text())["groups"]
    path = tmp_path / "spec.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    tests_dir = build.RULE_TESTS_FILE.parent
    files = sorted(p.name for p in tests_dir.glob("*.yaml"))
    result = _promtool("test", "rules", *files, cwd=tests_dir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_complete_and_unit_tested() -> None:
    rules = [r for g in yaml.safe_load(build.RULES_FILE.read_text())["groups"] for r in g["rules"]]
    uids = {m["uid"] for m in dashboards().values()}
    tests = yaml.safe_load(build.RULE_TESTS_FILE.read_text())["tests"]
    fires: dict[str, int] = {}
    silent: dict[str, int] = {}
    for t in tests:
        for case in t["alert_rule_test"]:
            bucket = fires if case["exp_alerts"] else silent
            bucket[case["alertname"]] = bucket.get(case["alertname"], 0) + 1
    assert len(rules) >= 6
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], name
        m = re.match(r"/d/([\w-]+)", ann["dashboard"])
        assert m and m.group(1) in uids, (
            f"{name}: dashboard annotation {ann['dashboard']!r} names no dashboard"
        )
        assert fires.get(name), f"{name}: no promtool test where it fires"
        assert silent.get(name), f"{name}: no promtool test where it stays silent"


_TQL_ATTR = re.compile(r"(?<![\w.])(span|resource)?\.([a-z_][\w]*(?:\.[a-z_][\w]*)*)")
TRACEQL_INTRINSICS = frozenset({"name", "duration", "status", "kind"})
TRACEQL_WORDS = frozenset(
    {"select", "nil", "true", "false", "client", "server", "error", "ok", "unset", "ms"}
)


@pytest.mark.parametrize(("where", "query"), list(traceql_targets()))
def test_traceql_names_only_span_attributes(where: str, query: str) -> None:
    text = _STRING.sub('""', query.replace("${threshold}", GRAFANA_VARIABLES["${threshold}"]))
    attrs = {m.group(2) for m in _TQL_ATTR.finditer(text)}
    assert attrs, where
    assert attrs <= sc.span_attributes(), (
        f"{where}: unknown attributes {sorted(attrs - sc.span_attributes())}"
    )
    rest = _TQL_ATTR.sub(" ", text)
    words = set(re.findall(r"(?<![\w.])[a-zA-Z_]\w*", rest))
    unknown = words - TRACEQL_INTRINSICS - TRACEQL_WORDS
    assert not unknown, f"{where}: unknown identifiers {sorted(unknown)}"
    assert text.count("{") == text.count("}") and text.count("(") == text.count(")"), where
    assert re.match(r"\{ .+ \}( \| select\(.+\))?$", text), where


@needs_promtool
def test_local_prometheus_config_is_valid(tmp_path: Path) -> None:
    local = build.ROOT / "deploy" / "local"
    config = yaml.safe_load((local / "prometheus.yml").read_text())
    assert [Path(p).name for p in config["rule_files"]] == [build.RULES_FILE.name]
    shutil.copy(build.RULES_FILE, tmp_path / build.RULES_FILE.name)
    config["rule_files"] = [build.RULES_FILE.name]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = _promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load((local / "compose.yaml").read_text())
    mounts = [m for svc in compose["services"].values() for m in svc.get("volumes", [])]
    assert "../../grafana/dashboards:/var/lib/grafana/dashboards/dnsotel:ro" in mounts
    assert any(m.startswith("../../grafana/alerts/dnsotel.rules.yaml:") for m in mounts)
    collector = yaml.safe_load((local / "otel-collector.yaml").read_text())
    assert collector["exporters"]["prometheus"]["resource_to_telemetry_conversion"]["enabled"] is True
