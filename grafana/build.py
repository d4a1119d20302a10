"""Generate dnsotel's Grafana dashboards, Prometheus alert rules and their promtool tests.

Run from the repository root: ``python -m grafana.build`` (``make dashboards``).
``--check`` writes nothing and exits 1 when a committed file differs from a fresh generation.

Every metric, label and span attribute name comes from ``exporter.telemetry.semconv``; the
OTLP -> Prometheus translation is ``semconv.prometheus_metric`` / ``semconv.prometheus_label``.
Node (``k8s_node_name``) and cluster (``cluster``) are not metric attributes: the node is a
resource attribute that the collector turns into a label (``resource_to_telemetry_conversion``),
``cluster`` is an optional external label set by Prometheus or the collector.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, text, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, StackingConfig, VizLegendOptions
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as gcommon
from grafana_foundation_sdk.models import dashboard as gmodel
from grafana_foundation_sdk.models import prometheus as pmodel
from grafana_foundation_sdk.models import tempo as tmodel
from grafana_foundation_sdk.models import text as textmodel

from exporter.telemetry import semconv as sc

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
RULES_FILE = ROOT / "grafana" / "alerts" / "dnsotel.rules.yaml"
RULE_TESTS_FILE = ROOT / "grafana" / "alerts" / "tests" / "dnsotel.rules.test.yaml"
PROMETHEUS_RULE_FILE = ROOT / "deploy" / "kubernetes" / "monitoring" / "prometheusrule.yaml"

# Datasource uids: deploy/local/grafana/provisioning/datasources/datasources.yaml provisions these.
PROMETHEUS_UID = "dnsotel-prometheus"
TEMPO_UID = "dnsotel-tempo"

# --- Prometheus names, all derived from semconv ------------------------------------------
L = sc.prometheus_label
LOOKUP = sc.prometheus_metric(sc.METRIC_LOOKUP_DURATION)
LOOKUP_BUCKET = LOOKUP + "_bucket"
LOOKUP_COUNT = LOOKUP + "_count"
UNANSWERED = sc.prometheus_metric(sc.METRIC_QUERIES_UNANSWERED)
UNMATCHED = sc.prometheus_metric(sc.METRIC_RESPONSES_UNMATCHED)
CAPTURE_PACKETS = sc.prometheus_metric(sc.METRIC_CAPTURE_PACKETS)
CAPTURE_LOST = sc.prometheus_metric(sc.METRIC_CAPTURE_LOST)
DECODE_ERRORS = sc.prometheus_metric(sc.METRIC_DECODE_ERRORS)
PAIRS_PENDING = sc.prometheus_metric(sc.METRIC_PAIRS_PENDING)
PAIRS_EVICTED = sc.prometheus_metric(sc.METRIC_PAIRS_EVICTED)
SPANS_EXPORTED = sc.prometheus_metric(sc.METRIC_SPANS_EXPORTED)
SPANS_DROPPED = sc.prometheus_metric(sc.METRIC_SPANS_DROPPED)
NETNS_ATTACHED = sc.prometheus_metric(sc.METRIC_NETNS_ATTACHED)

CLUSTER = "cluster"  # optional external label, not an OTLP attribute
NODE = L(sc.K8S_NODE_NAME)
NAMESPACE = L(sc.K8S_NAMESPACE_NAME)
POD = L(sc.K8S_POD_NAME)
ROLE = L(sc.DNS_ROLE)
RCODE = L(sc.DNS_RESPONSE_CODE)
ERROR = L(sc.ERROR_TYPE)
NAMESERVER = L(sc.DNS_NAMESERVER)
SERVER_ADDRESS = L(sc.SERVER_ADDRESS)
QTYPE = L(sc.DNS_QUESTION_TYPE)
REASON = L(sc.DECODE_ERROR_REASON)

ROLE_CLIENT = "client"
NOERROR = "NOERROR"

# --- dashboards ----------------------------------------------------------------------------
UID_OVERVIEW = "dnsotel-overview"
UID_FAILED = "dnsotel-failed"
UID_SLOW = "dnsotel-slow"
UID_UPSTREAM = "dnsotel-upstream"
UID_LOOKUP = "dnsotel-lookup"
TAG = "dnsotel"
RATE = "$__rate_interval"

Matcher = tuple[str, str, str]


def selector(matchers: Sequence[Matcher]) -> str:
    """``[("a", "=~", "$x")]`` -> ``{a=~"$x"}``."""
    return "{" + ", ".join(f'{label}{op}"{value}"' for label, op, value in matchers) + "}"


def by(labels: Sequence[str]) -> str:
    return f"by ({', '.join(labels)}) " if labels else ""


def sum_rate(
    metric: str, matchers: Sequence[Matcher], labels: Sequence[str] = (), window: str = RATE, offset: str = ""
) -> str:
    shift = f" offset {offset}" if offset else ""
    return f"sum {by(labels)}(rate({metric}{selector(matchers)}[{window}]{shift}))"


# Matchers that pick answered lookups, failed answers, every answer. A lookup that timed out is
# counted by dns.queries.unanswered; error.type="timeout" is excluded from the histogram
# selections so that the ratios stay right whether or not the histogram also records timeouts.
ANSWERED: tuple[Matcher, ...] = ((ERROR, "!=", sc.ERROR_TYPE_TIMEOUT),)
FAILED: tuple[Matcher, ...] = ((RCODE, "!~", f"{NOERROR}|"), *ANSWERED)
SERVFAIL_REFUSED: tuple[Matcher, ...] = ((RCODE, "=~", "SERVFAIL|REFUSED"),)
NXDOMAIN: tuple[Matcher, ...] = ((RCODE, "=", "NXDOMAIN"),)

# Dashboard filters, one per variable.
F_CLUSTER: Matcher = (CLUSTER, "=~", "$cluster")
F_NODE: Matcher = (NODE, "=~", "$node")
F_NAMESPACE: Matcher = (NAMESPACE, "=~", "$namespace")
F_POD: Matcher = (POD, "=~", "$pod")
F_ROLE: Matcher = (ROLE, "=~", "$role")
F_NAMESERVER: Matcher = (NAMESERVER, "=~", "$nameserver")
F_RESOLVER_NS: Matcher = (NAMESPACE, "=~", "$resolver_namespace")
DNS_FILTER: tuple[Matcher, ...] = (F_CLUSTER, F_NODE, F_NAMESPACE, F_POD, F_ROLE, F_NAMESERVER)
HEALTH_FILTER: tuple[Matcher, ...] = (F_CLUSTER, F_NODE)
F_CLIENT: Matcher = (ROLE, "=", ROLE_CLIENT)
UPSTREAM_FILTER: tuple[Matcher, ...] = (F_CLUSTER, F_NODE, F_RESOLVER_NS, F_CLIENT, F_NAMESERVER)


def ratio(num: str, den: str) -> str:
    """``num / den`` where a missing numerator series counts as zero (no failure yet is 0 %, not gap)."""
    return f"({num} or 0 * {den})\n/\n{den}"


def unanswered_ratio(filt: Sequence[Matcher], labels: Sequence[str], window: str = RATE) -> str:
    """Unanswered / (answered + unanswered); a nameserver that answers nothing is 1, not a gap."""
    un = sum_rate(UNANSWERED, filt, labels, window)
    ans = sum_rate(LOOKUP_COUNT, [*filt, *ANSWERED], labels, window)
    return f"{un}\n/\n({un} + ({ans} or 0 * {un}))"


def quantile(q: float, filt: Sequence[Matcher], labels: Sequence[str] = (), window: str = RATE) -> str:
    inner = sum_rate(LOOKUP_BUCKET, [*filt, *ANSWERED], [*labels, "le"], window)
    return f"histogram_quantile({q}, {inner})"


# --- TraceQL -------------------------------------------------------------------------------
def span_attr(name: str) -> str:
    """Scoped reference to a span attribute; k8s.* ones are unscoped (span or resource)."""
    if name not in sc.span_attributes():
        raise ValueError(f"{name} is not a dnsotel span attribute")
    return f".{name}" if name.startswith("k8s.") else f"span.{name}"


TQ_NODE = f'{span_attr(sc.K8S_NODE_NAME)} =~ "${{node:regex}}"'
TQ_FAILED = (
    f'({span_attr(sc.DNS_RESPONSE_CODE)} != "{NOERROR}"'
    f' || {span_attr(sc.ERROR_TYPE)} = "{sc.ERROR_TYPE_TIMEOUT}")'
)
TQ_COLUMNS = (
    sc.K8S_NODE_NAME,
    sc.K8S_NAMESPACE_NAME,
    sc.K8S_POD_NAME,
    sc.DNS_CLIENT,
    sc.DNS_NAMESERVER,
    sc.DNS_QUESTION_NAME,
    sc.DNS_QUESTION_TYPE,
    sc.DNS_RESPONSE_CODE,
    sc.ERROR_TYPE,
)
TQ_LOOKUP_COLUMNS = (
    sc.DNS_ID,
    sc.DNS_QUESTION_TYPE,
    sc.DNS_RESPONSE_CODE,
    sc.ERROR_TYPE,
    sc.DNS_ANSWER_COUNT,
    sc.DNS_ANSWERS,
    sc.DNS_ANSWER_CNAMES,
    sc.DNS_ANSWER_MIN_TTL,
    sc.DNS_CLIENT,
    sc.DNS_NAMESERVER,
    sc.K8S_NODE_NAME,
    sc.K8S_POD_NAME,
)


def traceql(conditions: Iterable[str], columns: Sequence[str]) -> str:
    select = ", ".join(span_attr(c) for c in columns)
    return "{ " + " && ".join(conditions) + " } | select(" + select + ")"


class SpanSearch(tmodel.TempoQuery):
    """A TraceQL query shown as a table of spans (``tableType: spans``, Grafana >= 10.1)."""

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload["tableType"] = "spans"
        payload["spss"] = 20  # spans per span set
        return payload


class SpanSearchBuilder(cogbuilder.Builder[tmodel.TempoQuery]):
    def __init__(self, ref_id: str, query: str, limit: int = 100) -> None:
        self._q = SpanSearch(
            ref_id=ref_id,
            query_type="traceql",
            query=query,
            limit=limit,
            datasource=gmodel.DataSourceRef(type_val="tempo", uid="${tempo_datasource}"),
        )

    def build(self) -> tmodel.TempoQuery:
        return self._q


# --- panel helpers -------------------------------------------------------------------------
PROM_DS = gmodel.DataSourceRef(type_val="prometheus", uid="${datasource}")
TEMPO_DS = gmodel.DataSourceRef(type_val="tempo", uid="${tempo_datasource}")


def promq(
    ref: str, expr: str, legend: str = "", *, instant: bool = False, fmt: str = ""
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().ref_id(ref).expr(expr).datasource(PROM_DS)
    if legend:
        q = q.legend_format(legend)
    q = q.instant() if instant else q.range()
    if fmt:
        q = q.format(pmodel.PromQueryFormat(fmt))
    return q


def ts(
    title: str,
    description: str,
    queries: Sequence[prometheus.Dataquery],
    unit: str,
    *,
    width: int = 12,
    height: int = 8,
    stacked: bool = False,
) -> timeseries.Panel:
    p = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(PROM_DS)
        .unit(unit)
        .span(width)
        .height(height)
        .fill_opacity(10)
        .legend(
            VizLegendOptions()
            .display_mode(gcommon.LegendDisplayMode.TABLE)
            .placement(gcommon.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .targets(list(queries))
    )
    if stacked:
        p = p.stacking(StackingConfig().mode(gcommon.StackingMode.NORMAL))
    return p


def stat_panel(title: str, description: str, expr: str, unit: str, *, width: int = 6) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(PROM_DS)
        .unit(unit)
        .span(width)
        .height(4)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .targets([promq("A", expr)])
    )


def prom_table(
    title: str, description: str, queries: Sequence[prometheus.Dataquery], *, width: int = 12, height: int = 8
) -> table.Panel:
    p = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(PROM_DS)
        .span(width)
        .height(height)
        .show_header(True)
        .targets(list(queries))
    )
    if len(queries) > 1:
        p = p.with_transformation(gmodel.DataTransformerConfig(id_val="merge", options={}))
    return p.with_transformation(
        gmodel.DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True}})
    )


def span_table(title: str, description: str, query: str, *, width: int = 24, height: int = 10) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(
            description + " Click a trace id to open the whole resolution (pod -> resolver -> upstream) "
            "in Tempo's trace view."
        )
        .datasource(TEMPO_DS)
        .span(width)
        .height(height)
        .show_header(True)
        .targets([SpanSearchBuilder("A", query)])
    )


def markdown(title: str, content: str, *, width: int = 24, height: int = 4) -> text.Panel:
    return (
        text.Panel()
        .title(title)
        .description("How to read this dashboard.")
        .mode(textmodel.TextMode.MARKDOWN)
        .content(content)
        .span(width)
        .height(height)
    )


# --- variables -----------------------------------------------------------------------------
def all_option() -> gmodel.VariableOption:
    return gmodel.VariableOption(selected=True, text="All", value="$__all")


def prom_datasource_var() -> gdash.DatasourceVariable:
    return (
        gdash.DatasourceVariable("datasource")
        .label("Prometheus")
        .description("Prometheus that scrapes the collector's dnsotel metrics")
        .type("prometheus")
        .current(gmodel.VariableOption(selected=True, text="Prometheus", value=PROMETHEUS_UID))
    )


def tempo_datasource_var() -> gdash.DatasourceVariable:
    return (
        gdash.DatasourceVariable("tempo_datasource")
        .label("Tempo")
        .description("Tempo that receives dnsotel's spans")
        .type("tempo")
        .current(gmodel.VariableOption(selected=True, text="Tempo", value=TEMPO_UID))
    )


def label_var(
    name: str, label: str, description: str, metric: str, filt: Sequence[Matcher]
) -> gdash.QueryVariable:
    query = f"label_values({metric}{selector(filt)}, {label})" if filt else f"label_values({metric}, {label})"
    return (
        gdash.QueryVariable(name)
        .label(name.replace("_", " "))
        .description(description)
        .datasource(PROM_DS)
        .query({"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1})
        .refresh(gmodel.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(gmodel.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(all_option())
    )


def cluster_var() -> gdash.QueryVariable:
    return label_var(
        "cluster",
        CLUSTER,
        "Optional external label `cluster` (set by Prometheus or the collector); empty on a single cluster",
        LOOKUP_COUNT,
        (),
    )


def node_var() -> gdash.QueryVariable:
    return label_var(
        "node", NODE, "Kubernetes node (resource attribute k8s.node.name)", LOOKUP_COUNT, (F_CLUSTER,)
    )


def namespace_var() -> gdash.QueryVariable:
    return label_var(
        "namespace", NAMESPACE, "Namespace of the observed pod", LOOKUP_COUNT, (F_CLUSTER, F_NODE)
    )


def pod_var() -> gdash.QueryVariable:
    return label_var("pod", POD, "Observed pod", LOOKUP_COUNT, (F_CLUSTER, F_NODE, F_NAMESPACE))


def nameserver_var(filt: Sequence[Matcher] = (F_CLUSTER, F_NODE)) -> gdash.QueryVariable:
    return label_var(
        "nameserver",
        NAMESERVER,
        "Nameserver as dnsotel names it: s/ns/svc:port, p/ns/pod:port or r/ip:port",
        LOOKUP_COUNT,
        filt,
    )


def role_var() -> gdash.CustomVariable:
    return (
        gdash.CustomVariable("role")
        .label("role")
        .description(
            "client: seen in the netns of the querying socket (pods, and resolvers asking upstream); "
            "server: seen in the resolver's netns. Pick one so an exchange is not counted twice."
        )
        .values("client,server")
        .current(gmodel.VariableOption(selected=True, text=ROLE_CLIENT, value=ROLE_CLIENT))
        .options(
            [
                gmodel.VariableOption(selected=True, text="client", value="client"),
                gmodel.VariableOption(selected=False, text="server", value="server"),
            ]
        )
    )


def threshold_var() -> gdash.TextBoxVariable:
    return (
        gdash.TextBoxVariable("threshold")
        .label("latency threshold (ms)")
        .description("Lookups slower than this many milliseconds count as slow")
        .default_value("100")
        .current(gmodel.VariableOption(selected=True, text="100", value="100"))
    )


def resolver_namespace_var() -> gdash.TextBoxVariable:
    return (
        gdash.TextBoxVariable("resolver_namespace")
        .label("resolver namespace (regex)")
        .description("Namespaces (regex) of the resolvers (CoreDNS, node-local-dns) whose upstreams to show")
        .default_value("kube-system")
        .current(gmodel.VariableOption(selected=True, text="kube-system", value="kube-system"))
    )


def name_var() -> gdash.TextBoxVariable:
    default = "kubernetes.default.svc.cluster.local."
    return (
        gdash.TextBoxVariable("name")
        .label("DNS name")
        .description("Fully qualified name, lower case; the trailing dot is optional")
        .default_value(default)
        .current(gmodel.VariableOption(selected=True, text=default, value=default))
    )


def base_dashboard(uid: str, title: str, description: str, variables: Sequence[Any]) -> gdash.Dashboard:
    return (
        gdash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG, "dns"])
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .editable()
        .tooltip(gmodel.DashboardCursorSync.CROSSHAIR)
        .link(
            gdash.DashboardLink("dnsotel")
            .type(gmodel.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .variables(list(variables))
    )


def common_vars(*extra: Any) -> list[Any]:
    return [
        prom_datasource_var(),
        tempo_datasource_var(),
        cluster_var(),
        node_var(),
        namespace_var(),
        pod_var(),
        role_var(),
        nameserver_var(),
        *extra,
    ]


# --- the dashboards ------------------------------------------------------------------------
RCODE_LEGEND = "{{" + RCODE + "}}"


def failed_rate(labels: Sequence[str]) -> str:
    return sum_rate(LOOKUP_COUNT, [*DNS_FILTER, *FAILED], labels)


def overview() -> gdash.Dashboard:
    answered = sum_rate(LOOKUP_COUNT, [*DNS_FILTER, *ANSWERED])
    unanswered = sum_rate(UNANSWERED, DNS_FILTER)
    total = f"({answered} or vector(0)) + ({unanswered} or vector(0))"
    d = base_dashboard(
        UID_OVERVIEW,
        "dnsotel / DNS overview",
        "Cluster-wide DNS health from dnsotel: traffic, failures, latency, unanswered queries, and the "
        "exporter's own health. Start here, then follow the links to the step dashboards.",
        common_vars(),
    )
    d = d.with_row(gdash.Row("DNS traffic"))
    d = d.with_panel(
        stat_panel(
            "Lookups / s",
            "Query/response pairs per second (answered + unanswered) for the selection. Bad: a sudden drop "
            "to zero (capture stopped, or pods cannot reach DNS at all) or a spike (a retry storm).",
            total,
            "reqps",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Failed share",
            "Share of lookups that got a response code other than NOERROR or no answer at all. Bad: "
            "above a few percent, or rising; some NXDOMAIN is normal because of search-path expansion.",
            f"(({failed_rate(())} or vector(0)) + ({unanswered} or vector(0)))\n/\n({total})",
            "percentunit",
        )
    )
    d = d.with_panel(
        stat_panel(
            "p99 latency",
            "99th percentile of the time between a query and its response. Bad: more than tens of "
            "milliseconds inside a cluster; hundreds of ms mean a slow upstream or a dropped first packet.",
            quantile(0.99, DNS_FILTER),
            "s",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Unanswered / s",
            "Queries that got no response within the pairing timeout. Bad: anything steadily above zero — "
            "each one is a pod that waited for a retry (often 5 s).",
            f"{unanswered} or vector(0)",
            "reqps",
        )
    )
    d = d.with_panel(
        ts(
            "Responses by response code",
            "Answered lookups per second by DNS response code, plus unanswered queries. Bad: SERVFAIL or "
            "REFUSED present at all, NXDOMAIN growing faster than NOERROR, an `unanswered` line above zero.",
            [
                promq("A", sum_rate(LOOKUP_COUNT, [*DNS_FILTER, *ANSWERED], [RCODE]), RCODE_LEGEND),
                promq("B", unanswered, "unanswered"),
            ],
            "reqps",
            stacked=True,
        )
    )
    d = d.with_panel(
        ts(
            "Latency percentiles",
            "p50, p95 and p99 of lookup latency (from the dns.lookup.duration histogram). Bad: p99 far "
            "above p50 (some queries hit a slow path: upstream, retransmit, conntrack race), or any of them "
            "rising over time.",
            [
                promq("A", quantile(0.5, DNS_FILTER), "p50"),
                promq("B", quantile(0.95, DNS_FILTER), "p95"),
                promq("C", quantile(0.99, DNS_FILTER), "p99"),
            ],
            "s",
        )
    )
    d = d.with_panel(
        ts(
            "Unanswered queries by nameserver",
            "Queries without a response per second, by the nameserver they were sent to. Bad: any line "
            "steadily above zero; one nameserver alone means that server (or the path to it) is the problem.",
            [promq("A", sum_rate(UNANSWERED, DNS_FILTER, [NAMESERVER]), "{{" + NAMESERVER + "}}")],
            "reqps",
        )
    )
    d = d.with_panel(
        prom_table(
            "Top pods by failed responses",
            "The 10 pods with the most non-NOERROR responses over the dashboard's time range. Bad: one pod "
            "far ahead of the rest — usually a misconfigured name or a missing service; open "
            "'Failed responses' and the Tempo table there to see which names.",
            [
                promq(
                    "A",
                    f"topk(10, sum by ({NAMESPACE}, {POD}) "
                    f"(increase({LOOKUP_COUNT}{selector([*DNS_FILTER, *FAILED])}[$__range])))",
                    instant=True,
                    fmt="table",
                )
            ],
        )
    )
    d = d.with_row(gdash.Row("Exporter health"))
    hf = HEALTH_FILTER
    node_legend = "{{" + NODE + "}}"
    d = d.with_panel(
        ts(
            "Packets captured and lost",
            "DNS packets the eBPF program handed over per second, and packets the kernel could not hand "
            "over (ring buffer full). Bad: any `lost` above zero — the dashboards then undercount and some "
            "exchanges show up as unanswered.",
            [
                promq("A", sum_rate(CAPTURE_PACKETS, hf, [NODE]), "captured " + node_legend),
                promq("B", sum_rate(CAPTURE_LOST, hf, [NODE]), "lost " + node_legend),
            ],
            "pps",
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "Decode errors by reason",
            "Captured packets the decoder rejected, by reason. Bad: a steady rate — malformed traffic, or a "
            "DNS feature the decoder does not handle; each rejected packet is missing from the dashboards.",
            [promq("A", sum_rate(DECODE_ERRORS, hf, [REASON]), "{{" + REASON + "}}")],
            "pps",
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "Spans exported and dropped",
            "Spans sent to the collector per second, and spans dropped by the rate cap or because the "
            "collector was unreachable. Bad: dropped above zero for long — Tempo searches then miss "
            "exchanges (metrics are still complete).",
            [
                promq("A", sum_rate(SPANS_EXPORTED, hf, [NODE]), "exported " + node_legend),
                promq("B", sum_rate(SPANS_DROPPED, hf, [NODE]), "dropped " + node_legend),
            ],
            "ops",
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "Network namespaces attached",
            "Network namespaces each exporter captures in (one per pod sandbox plus the host). Bad: zero, or "
            "far fewer than the pods on the node — new pods are not being attached.",
            [promq("A", f"sum by ({NODE}) ({NETNS_ATTACHED}{selector(hf)})", node_legend)],
            "short",
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "Pairing table: pending and evicted",
            "Queries waiting for their response, and queries evicted because the bounded table was full. "
            "Bad: evictions above zero (the table is too small for the query rate), or pending growing "
            "without bound.",
            [
                promq("A", f"sum by ({NODE}) ({PAIRS_PENDING}{selector(hf)})", "pending " + node_legend),
                promq("B", sum_rate(PAIRS_EVICTED, hf, [NODE]), "evicted/s " + node_legend),
            ],
            "short",
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "Responses without a query",
            "Responses that matched no pending query. Bad: a steady rate — queries were lost in capture, or "
            "answers arrive after the pairing timeout (they are then also counted as unanswered).",
            [
                promq(
                    "A",
                    sum_rate(UNMATCHED, [F_CLUSTER, F_NODE, F_NAMESPACE, F_POD, F_ROLE], [NODE]),
                    node_legend,
                )
            ],
            "pps",
            width=8,
        )
    )
    return d


def failed() -> gdash.Dashboard:
    unanswered = sum_rate(UNANSWERED, DNS_FILTER)
    d = base_dashboard(
        UID_FAILED,
        "dnsotel / 1. Failed responses",
        "Step 1: responses other than NOERROR, and queries that got no answer, by code, node, namespace and "
        "pod, with the failing exchanges themselves from Tempo.",
        common_vars(),
    )
    d = d.with_panel(
        ts(
            "Failed responses by response code",
            "Non-NOERROR responses per second by code, plus unanswered queries. Bad: SERVFAIL (resolver or "
            "upstream broken), REFUSED (ACL/policy), NXDOMAIN jumping (a wrong name deployed).",
            [
                promq("A", failed_rate([RCODE]), RCODE_LEGEND),
                promq("B", unanswered, "unanswered"),
            ],
            "reqps",
            stacked=True,
        )
    )
    answered = sum_rate(LOOKUP_COUNT, [*DNS_FILTER, *ANSWERED], [RCODE])
    all_answered = sum_rate(LOOKUP_COUNT, [*DNS_FILTER, *ANSWERED])
    d = d.with_panel(
        ts(
            "Share of responses by code",
            "Each response code's share of all answered lookups. Bad: a non-NOERROR share that changes "
            "suddenly; compare with the same time yesterday, as NXDOMAIN from search-path expansion is "
            "normal.",
            [promq("A", f"{answered}\n/ ignoring({RCODE}) group_left\n{all_answered}", RCODE_LEGEND)],
            "percentunit",
        )
    )
    d = d.with_panel(
        ts(
            "Failed responses by node",
            "Non-NOERROR responses per second per node. Bad: one node far above the others — its node-local "
            "cache, its network path or its pods are the problem, not the cluster resolver.",
            [promq("A", failed_rate([NODE]), "{{" + NODE + "}}")],
            "reqps",
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "Failed responses by namespace",
            "Non-NOERROR responses per second per namespace of the observing pod. Bad: one namespace "
            "dominating — usually an application asking for a name that does not exist.",
            [promq("A", failed_rate([NAMESPACE]), "{{" + NAMESPACE + "}}")],
            "reqps",
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "Failed responses by nameserver",
            "Non-NOERROR responses per second by the nameserver that answered. Bad: failures concentrated on "
            "one nameserver (an upstream) — continue on 'Upstream nameservers'.",
            [promq("A", failed_rate([NAMESERVER]), "{{" + NAMESERVER + "}}")],
            "reqps",
            width=8,
        )
    )
    d = d.with_panel(
        prom_table(
            "Failed responses by pod and code",
            "Non-NOERROR responses per pod and response code over the dashboard's time range, largest first. "
            "Bad: a pod with thousands of NXDOMAIN or any SERVFAIL; find the names in the table below.",
            [
                promq(
                    "A",
                    f"sort_desc(sum by ({NAMESPACE}, {POD}, {RCODE}) "
                    f"(increase({LOOKUP_COUNT}{selector([*DNS_FILTER, *FAILED])}[$__range])) > 0)",
                    instant=True,
                    fmt="table",
                )
            ],
            width=24,
        )
    )
    d = d.with_panel(
        span_table(
            "Recent failing exchanges (Tempo)",
            "Spans whose response code is not NOERROR or that got no answer (error.type=timeout): node, pod, "
            "client, nameserver, name, type and code. Bad: the same name failing from many pods (a broken "
            "record or zone), or many names failing through one nameserver (a broken server).",
            traceql([TQ_FAILED, TQ_NODE], TQ_COLUMNS),
            height=12,
        )
    )
    return d


def slow() -> gdash.Dashboard:
    d = base_dashboard(
        UID_SLOW,
        "dnsotel / 2. Slow queries",
        "Step 2: lookup latency as a heatmap and percentiles, and the individual exchanges slower than the "
        "threshold you pick (milliseconds).",
        common_vars(threshold_var()),
    )
    d = d.with_panel(
        heatmap.Panel()
        .title("Latency heatmap")
        .description(
            "Lookups per latency bucket over time (dns.lookup.duration). Bad: a second band far above the "
            "main one (e.g. around 5 s = a lost first packet and a retry, or ~100 ms = an upstream round "
            "trip where a cache hit was expected)."
        )
        .datasource(PROM_DS)
        .span(24)
        .height(9)
        .calculate(False)
        .targets(
            [
                promq(
                    "A",
                    f"sum by (le) (increase({LOOKUP_BUCKET}{selector([*DNS_FILTER, *ANSWERED])}[{RATE}]))",
                    "{{le}}",
                    fmt="heatmap",
                )
            ]
        )
    )
    d = d.with_panel(
        ts(
            "Latency percentiles vs threshold",
            "p50, p95, p99 of lookup latency and the chosen threshold. Bad: p99 above the threshold line — "
            "the slow exchanges are listed in the Tempo table below.",
            [
                promq("A", quantile(0.5, DNS_FILTER), "p50"),
                promq("B", quantile(0.95, DNS_FILTER), "p95"),
                promq("C", quantile(0.99, DNS_FILTER), "p99"),
                promq("D", "vector($threshold / 1000)", "threshold"),
            ],
            "s",
        )
    )
    d = d.with_panel(
        ts(
            "p99 latency by nameserver",
            "99th percentile latency per nameserver. Bad: one nameserver much slower than the rest — see "
            "'Upstream nameservers'.",
            [promq("A", quantile(0.99, DNS_FILTER, [NAMESERVER]), "{{" + NAMESERVER + "}}")],
            "s",
        )
    )
    d = d.with_panel(
        ts(
            "p99 latency by namespace",
            "99th percentile latency per namespace of the observing pod. Bad: a single namespace slow while "
            "others are fast — its pods' resolv.conf (ndots, search path) or a node they share.",
            [promq("A", quantile(0.99, DNS_FILTER, [NAMESPACE]), "{{" + NAMESPACE + "}}")],
            "s",
        )
    )
    d = d.with_panel(
        ts(
            "p99 latency by query type",
            "99th percentile latency per question type. Bad: AAAA much slower than A (an upstream that "
            "drops or delays AAAA), or SRV/PTR slow.",
            [promq("A", quantile(0.99, DNS_FILTER, [QTYPE]), "{{" + QTYPE + "}}")],
            "s",
        )
    )
    d = d.with_panel(
        span_table(
            "Exchanges slower than the threshold (Tempo)",
            "Spans whose duration exceeds ${threshold} ms, with node, pod, client, nameserver, name, type "
            "and code. Bad: many rows for one nameserver or one name; unanswered queries appear here too, "
            "with the pairing timeout as duration.",
            traceql(
                ["duration > ${threshold}ms", f'name =~ "{sc.SPAN_NAME_PREFIX}.*"', TQ_NODE],
                TQ_COLUMNS,
            ),
            height=12,
        )
    )
    return d


def upstream() -> gdash.Dashboard:
    f = UPSTREAM_FILTER
    g = [NAMESERVER, SERVER_ADDRESS]
    legend = "{{" + NAMESERVER + "}}"
    answered = sum_rate(LOOKUP_COUNT, [*f, *ANSWERED], g)
    err = sum_rate(LOOKUP_COUNT, [*f, *FAILED], g)
    un = sum_rate(UNANSWERED, f, g)
    d = base_dashboard(
        UID_UPSTREAM,
        "dnsotel / 3. Upstream nameservers",
        "Step 3: health of each nameserver the cluster resolvers query (client-role lookups seen in the "
        "resolver namespaces): rate, error ratio, latency, unanswered ratio. Set the resolver namespace "
        "regex to `.*` to see every nameserver any pod talks to.",
        [
            prom_datasource_var(),
            tempo_datasource_var(),
            cluster_var(),
            node_var(),
            resolver_namespace_var(),
            nameserver_var((F_CLUSTER, F_NODE, F_RESOLVER_NS)),
        ],
    )
    d = d.with_panel(
        ts(
            "Queries per nameserver",
            "Queries sent to each upstream nameserver per second (answered + unanswered). Bad: a nameserver "
            "dropping to zero while others take over (it was removed or is unreachable), or a surge after a "
            "cache flush.",
            [
                promq("A", answered, legend + " answered"),
                promq("B", un, legend + " unanswered"),
            ],
            "reqps",
            stacked=True,
        )
    )
    d = d.with_panel(
        ts(
            "Error ratio per nameserver",
            "Share of a nameserver's responses that are not NOERROR. Bad: SERVFAIL/REFUSED from one "
            "upstream (broken recursion, rate limiting, ACL); compare nameservers — the same names failing "
            "everywhere is the zone, not the server.",
            [promq("A", ratio(err, answered), legend)],
            "percentunit",
        )
    )
    d = d.with_panel(
        ts(
            "Latency per nameserver (p50, p99)",
            "Median and 99th percentile response time of each upstream. Bad: p99 in the hundreds of ms or "
            "a step change — the upstream or the path to it is degraded.",
            [
                promq("A", quantile(0.5, f, g), legend + " p50"),
                promq("B", quantile(0.99, f, g), legend + " p99"),
            ],
            "s",
        )
    )
    d = d.with_panel(
        ts(
            "Unanswered ratio per nameserver",
            "Share of queries to each nameserver that got no response within the pairing timeout. Bad: "
            "anything above ~1 %; 100 % means the nameserver is down or unreachable (firewall, route).",
            [promq("A", unanswered_ratio(f, g), legend)],
            "percentunit",
        )
    )
    d = d.with_panel(
        prom_table(
            "Nameserver summary",
            "Per nameserver over the selected range: lookups per second, error ratio, p99 latency and "
            "unanswered ratio. Bad: a row that stands out in any column.",
            [
                promq("A", sum_rate(LOOKUP_COUNT, f, g, "$__range"), instant=True, fmt="table"),
                promq(
                    "B",
                    ratio(
                        sum_rate(LOOKUP_COUNT, [*f, *FAILED], g, "$__range"),
                        sum_rate(LOOKUP_COUNT, [*f, *ANSWERED], g, "$__range"),
                    ),
                    instant=True,
                    fmt="table",
                ),
                promq("C", quantile(0.99, f, g, "$__range"), instant=True, fmt="table"),
                promq("D", unanswered_ratio(f, g, "$__range"), instant=True, fmt="table"),
            ],
            width=24,
        )
    )
    d = d.with_panel(
        span_table(
            "Failing upstream exchanges (Tempo)",
            "Client spans from the resolver namespaces with a non-NOERROR code or no answer. Bad: one "
            "nameserver in most rows.",
            traceql(
                [
                    "kind = client",
                    f'{span_attr(sc.K8S_NAMESPACE_NAME)} =~ "${{resolver_namespace}}"',
                    TQ_FAILED,
                    TQ_NODE,
                ],
                TQ_COLUMNS,
            ),
            height=12,
        )
    )
    return d


def lookup() -> gdash.Dashboard:
    name = span_attr(sc.DNS_QUESTION_NAME)
    by_name = f'({name} = "${{name}}" || {name} = "${{name}}.")'
    d = base_dashboard(
        UID_LOOKUP,
        "dnsotel / 4-5. Name lookup",
        "Steps 4 and 5: every exchange of one DNS name, from Tempo — does each query get a timely response "
        "(query/response pairs by id, unanswered ones), and does it carry the expected addresses?",
        [tempo_datasource_var(), prom_datasource_var(), cluster_var(), node_var(), name_var()],
    )
    d = d.with_panel(
        markdown(
            "How to use",
            "Type a name in **DNS name** (e.g. `my-svc.my-ns.svc.cluster.local.`). Each row below is one "
            "query/response pair seen in one network namespace: the DNS id, type, response code, latency "
            "(duration), answer count and addresses. A headless service should list one address per ready "
            "pod; an empty `dns.answers` with NOERROR is NODATA. Click a trace id to see the client, "
            "resolver and upstream spans of the same resolution in Tempo.",
        )
    )
    d = d.with_panel(
        span_table(
            "Every exchange of ${name}",
            "All spans for the name, newest first: id, type, code, duration, answer count, addresses, "
            "CNAMEs, min TTL, client and nameserver. Bad: codes other than NOERROR, durations far above the "
            "rest, addresses that are not the expected ones (stale records, missing pods).",
            traceql([by_name, TQ_NODE], TQ_LOOKUP_COLUMNS),
            height=14,
        )
    )
    d = d.with_panel(
        span_table(
            "Unanswered queries of ${name}",
            "Queries of the name that got no response within the pairing timeout (error.type=timeout). Bad: "
            "any row; the client waited for its retry. Check the nameserver column for a pattern.",
            traceql(
                [by_name, f'{span_attr(sc.ERROR_TYPE)} = "{sc.ERROR_TYPE_TIMEOUT}"', TQ_NODE],
                TQ_LOOKUP_COLUMNS,
            ),
            width=12,
        )
    )
    d = d.with_panel(
        span_table(
            "Answers without addresses for ${name}",
            "NOERROR responses with no answer record (NODATA). Bad: for an A/AAAA query of a service that "
            "should resolve — e.g. a headless service with no ready pods.",
            traceql(
                [
                    by_name,
                    f'{span_attr(sc.DNS_RESPONSE_CODE)} = "{NOERROR}"',
                    f"{span_attr(sc.DNS_ANSWER_COUNT)} = 0",
                    TQ_NODE,
                ],
                TQ_LOOKUP_COLUMNS,
            ),
            width=12,
        )
    )
    return d


DASHBOARDS = {
    "overview": overview,
    "failed-responses": failed,
    "slow-queries": slow,
    "upstream-nameservers": upstream,
    "name-lookup": lookup,
}


def _finish(model: dict[str, Any]) -> dict[str, Any]:
    """Stable panel ids; drop the SDK's placeholder variable ids (all zeros, Grafana assigns its own)."""
    for i, panel in enumerate(model.get("panels", []), start=1):
        panel["id"] = i
    for variable in model.get("templating", {}).get("list", []):
        variable.pop("id", None)
    return model


def dashboard_json(builder: gdash.Dashboard) -> dict[str, Any]:
    encoded = JSONEncoder(sort_keys=True).encode(builder.build())
    model: dict[str, Any] = json.loads(encoded)
    return _finish(model)


# --- alert rules ---------------------------------------------------------------------------
# Thresholds (also named in the rule descriptions and docs/troubleshooting.md).
SERVFAIL_RATIO = 0.05
NXDOMAIN_JUMP = 0.10
P99_SECONDS = 0.5
UNANSWERED_RATIO = 0.05
MIN_RATE = 0.1  # lookups/s below which ratios and quantiles are too noisy to alert on

CLIENT = (F_CLIENT,)
RUNBOOK = "docs/troubleshooting.md"


@dataclass(frozen=True, slots=True)
class Series:
    series: str
    values: str


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    group: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    dashboard: str
    runbook: str
    # promtool unit test data: series in which the alert fires (and the label sets it fires with),
    # and series in which it stays silent, both evaluated at eval_time.
    failing: tuple[Series, ...]
    fires_with: tuple[dict[str, str], ...]
    healthy: tuple[Series, ...]
    eval_time: str
    interval: str = "1m"
    extra_labels: dict[str, str] = field(default_factory=dict)


def s(metric: str, labels: dict[str, str], values: str) -> Series:
    body = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return Series(f"{metric}{{{body}}}", values)


NS_BAD = "r/10.0.0.53:53"
NS_GOOD = "r/10.0.0.54:53"
NS_DEAD = "r/10.0.0.55:53"
LAB = {CLUSTER: "lab"}


def lookups(
    ns: str, rcode: str, values: str, extra: dict[str, str] | None = None, role: str = ROLE_CLIENT
) -> Series:
    labels = {**LAB, ROLE: role, NAMESERVER: ns, RCODE: rcode, NAMESPACE: "kube-system", **(extra or {})}
    return s(LOOKUP_COUNT, labels, values)


def buckets(ns: str, per_le: dict[str, str]) -> tuple[Series, ...]:
    return tuple(
        s(LOOKUP_BUCKET, {**LAB, ROLE: ROLE_CLIENT, NAMESERVER: ns, RCODE: NOERROR, "le": le}, v)
        for le, v in per_le.items()
    )


def by_ns_ratio(matchers: Sequence[Matcher], labels: Sequence[str], window: str) -> str:
    return ratio(
        sum_rate(LOOKUP_COUNT, [*CLIENT, *matchers, *ANSWERED], labels, window),
        sum_rate(LOOKUP_COUNT, [*CLIENT, *ANSWERED], labels, window),
    )


def _nx_ratio(offset: str) -> str:
    g = [CLUSTER, NAMESPACE]
    num = sum_rate(LOOKUP_COUNT, [*CLIENT, *NXDOMAIN], g, "10m", offset)
    den = sum_rate(LOOKUP_COUNT, [*CLIENT, *ANSWERED], g, "10m", offset)
    return f"(\n  ({num} or 0 * {den})\n  /\n  {den}\n)"


def alerts() -> list[Alert]:
    g_ns = [CLUSTER, NAMESERVER]
    floor_ns = f"{sum_rate(LOOKUP_COUNT, CLIENT, g_ns, '5m')} > {MIN_RATE}"
    nsq = "{{ $labels." + NAMESERVER + " }}"
    nodeq = "{{ $labels." + NODE + " }}"
    steady_ok = "0+600x40"
    return [
        Alert(
            name="DNSServfailRefusedRatioHigh",
            group="dnsotel.dns",
            expr=f"(\n{by_ns_ratio(SERVFAIL_REFUSED, g_ns, '5m')}\n) > {SERVFAIL_RATIO}\nand\n{floor_ns}",
            for_="5m",
            severity="critical",
            summary=f"More than {SERVFAIL_RATIO:.0%} of responses from {nsq} are SERVFAIL or REFUSED",
            description=(
                f"Over 5 minutes more than {SERVFAIL_RATIO:.0%} of the responses pods and resolvers received "
                f"from nameserver {nsq} were SERVFAIL or REFUSED. Open 'Failed responses' filtered to this "
                "nameserver: the by-node and by-namespace panels show whether it is one node or everyone, "
                "the Tempo table lists the failing names. If it is an upstream, check 'Upstream nameservers'."
            ),
            dashboard=f"/d/{UID_FAILED}?var-nameserver={nsq}",
            runbook=f"{RUNBOOK}#step-1-unsuccessful-responses",
            failing=(
                lookups(NS_BAD, "SERVFAIL", "0+300x40"),
                lookups(NS_BAD, NOERROR, "0+700x40"),
                lookups(NS_GOOD, NOERROR, steady_ok),
            ),
            fires_with=({CLUSTER: "lab", NAMESERVER: NS_BAD},),
            healthy=(
                lookups(NS_BAD, "SERVFAIL", "0+1x40"),
                lookups(NS_BAD, NOERROR, "0+1000x40"),
                lookups(NS_GOOD, "REFUSED", "0+1x2 3x38"),  # a brief blip that does not last
                lookups(NS_GOOD, NOERROR, steady_ok),
            ),
            eval_time="30m",
        ),
        Alert(
            name="DNSNXDomainRatioJump",
            group="dnsotel.dns",
            expr=f"{_nx_ratio('')}\n-\n{_nx_ratio('1h')}\n> {NXDOMAIN_JUMP}",
            for_="10m",
            severity="warning",
            summary=(
                "NXDOMAIN share in namespace {{ $labels." + NAMESPACE + " }} rose by more than "
                f"{NXDOMAIN_JUMP:.0%} points within an hour"
            ),
            description=(
                "The share of NXDOMAIN answers seen by pods of namespace {{ $labels."
                + NAMESPACE
                + " }} is more than "
                f"{NXDOMAIN_JUMP:.0%} points above the same share one hour earlier — usually a deployment "
                "asking for a name that does not exist (typo, removed service, wrong namespace). Open "
                "'Failed responses' for the namespace; the Tempo table shows the names and pods."
            ),
            dashboard=f"/d/{UID_FAILED}?var-namespace={{{{ $labels.{NAMESPACE} }}}}",
            runbook=f"{RUNBOOK}#step-1-unsuccessful-responses",
            failing=(
                lookups(NS_GOOD, NOERROR, "0+90x70 6300+40x60", {NAMESPACE: "shop"}),
                lookups(NS_GOOD, "NXDOMAIN", "0+10x70 760+60x60", {NAMESPACE: "shop"}),
            ),
            fires_with=({CLUSTER: "lab", NAMESPACE: "shop"},),
            healthy=(
                lookups(NS_GOOD, NOERROR, "0+90x130", {NAMESPACE: "shop"}),
                lookups(NS_GOOD, "NXDOMAIN", "0+10x130", {NAMESPACE: "shop"}),
            ),
            eval_time="125m",
        ),
        Alert(
            name="DNSLatencyP99High",
            group="dnsotel.dns",
            expr=(
                f"{quantile(0.99, CLIENT, g_ns, '5m')} > {P99_SECONDS}\n"
                f"and\n{sum_rate(LOOKUP_BUCKET, [*CLIENT, *ANSWERED, ('le', '=', '+Inf')], g_ns, '5m')}"
                f" > {MIN_RATE}"
            ),
            for_="10m",
            severity="warning",
            summary=f"p99 DNS latency to {nsq} is above {P99_SECONDS * 1000:.0f} ms",
            description=(
                f"For 10 minutes the 99th percentile of lookups answered by {nsq} took longer than "
                f"{P99_SECONDS * 1000:.0f} ms. Open 'Slow queries' with the threshold at "
                f"{P99_SECONDS * 1000:.0f} ms: the heatmap shows whether it is a whole shift or a second "
                "band (retries), the Tempo table lists the slow exchanges."
            ),
            dashboard=f"/d/{UID_SLOW}?var-nameserver={nsq}&var-threshold={P99_SECONDS * 1000:.0f}",
            runbook=f"{RUNBOOK}#step-2-slow-queries",
            failing=buckets(NS_BAD, {"0.1": "0x40", "0.5": "0x40", "1": "0+100x40", "+Inf": "0+100x40"}),
            fires_with=({CLUSTER: "lab", NAMESERVER: NS_BAD},),
            healthy=buckets(
                NS_BAD, {"0.1": "0+100x40", "0.5": "0+100x40", "1": "0+100x40", "+Inf": "0+100x40"}
            ),
            eval_time="30m",
        ),
        Alert(
            name="DNSNameserverUnansweredRatioHigh",
            group="dnsotel.dns",
            expr=f"(\n{unanswered_ratio(CLIENT, g_ns, '5m')}\n) > {UNANSWERED_RATIO}",
            for_="5m",
            severity="critical",
            summary=f"More than {UNANSWERED_RATIO:.0%} of queries to {nsq} get no answer",
            description=(
                f"Over 5 minutes more than {UNANSWERED_RATIO:.0%} of the queries sent to {nsq} got no "
                "response within the pairing timeout. Open 'Upstream nameservers': the unanswered ratio and "
                "latency panels show whether the server is down (100 %) or dropping some queries; then "
                "check the path (network policy, conntrack, firewall) from the nodes in the Tempo table."
            ),
            dashboard=f"/d/{UID_UPSTREAM}?var-nameserver={nsq}&var-resolver_namespace=.*",
            runbook=f"{RUNBOOK}#step-3-upstream-nameservers",
            failing=(
                s(UNANSWERED, {**LAB, ROLE: ROLE_CLIENT, NAMESERVER: NS_BAD}, "0+20x40"),
                lookups(NS_BAD, NOERROR, "0+80x40"),
                s(UNANSWERED, {**LAB, ROLE: ROLE_CLIENT, NAMESERVER: NS_DEAD}, "0+50x40"),
                lookups(NS_GOOD, NOERROR, steady_ok),
            ),
            fires_with=({CLUSTER: "lab", NAMESERVER: NS_BAD}, {CLUSTER: "lab", NAMESERVER: NS_DEAD}),
            healthy=(
                s(UNANSWERED, {**LAB, ROLE: ROLE_CLIENT, NAMESERVER: NS_BAD}, "0+1x40"),
                lookups(NS_BAD, NOERROR, "0+1000x40"),
                lookups(NS_GOOD, NOERROR, steady_ok),
            ),
            eval_time="30m",
        ),
        Alert(
            name="DNSOTelCaptureLosingPackets",
            group="dnsotel.exporter",
            expr=f"sum by ({CLUSTER}, {NODE}) (increase({CAPTURE_LOST}[10m])) > 0",
            for_="5m",
            severity="warning",
            summary=f"dnsotel on {nodeq} is losing captured DNS packets",
            description=(
                f"The kernel could not hand some DNS packets to the dnsotel exporter on {nodeq} (ring buffer "
                "full): the dashboards undercount there and some exchanges appear unanswered. Check the "
                "exporter's CPU (throttling) and the DNS packet rate on 'DNS overview' > Exporter health; "
                "raise the ring buffer size or the CPU limit."
            ),
            dashboard=f"/d/{UID_OVERVIEW}?var-node={nodeq}",
            runbook=f"{RUNBOOK}#exporter-health",
            failing=(s(CAPTURE_LOST, {**LAB, NODE: "node-a"}, "0+5x40"),),
            fires_with=({CLUSTER: "lab", NODE: "node-a"},),
            healthy=(s(CAPTURE_LOST, {**LAB, NODE: "node-a"}, "0x40"),),
            eval_time="30m",
        ),
        Alert(
            name="DNSOTelSpansDropped",
            group="dnsotel.exporter",
            expr=f"sum by ({CLUSTER}, {NODE}) (rate({SPANS_DROPPED}[10m])) > 0",
            for_="15m",
            severity="info",
            summary=f"dnsotel on {nodeq} keeps dropping spans",
            description=(
                f"For 15 minutes the exporter on {nodeq} dropped spans (rate cap reached or collector "
                "unreachable). Metrics and alerts are complete, but Tempo searches miss exchanges. Check the "
                "collector's health and the exporter's span rate cap; see 'DNS overview' > Exporter health."
            ),
            dashboard=f"/d/{UID_OVERVIEW}?var-node={nodeq}",
            runbook=f"{RUNBOOK}#exporter-health",
            failing=(s(SPANS_DROPPED, {**LAB, NODE: "node-a"}, "0+5x40"),),
            fires_with=({CLUSTER: "lab", NODE: "node-a"},),
            healthy=(s(SPANS_DROPPED, {**LAB, NODE: "node-a"}, "7x40"),),
            eval_time="30m",
        ),
        Alert(
            name="DNSOTelMetricsAbsent",
            group="dnsotel.exporter",
            expr=f"absent({NETNS_ATTACHED})",
            for_="10m",
            severity="critical",
            summary="No dnsotel exporter is reporting metrics",
            description=(
                f"Prometheus has no {NETNS_ATTACHED} series at all: no exporter is running, or the "
                "exporter -> collector -> Prometheus path is broken, and every DNS alert is blind. Check the "
                "DaemonSet's pods, the collector's logs and its scrape target in Prometheus."
            ),
            dashboard=f"/d/{UID_OVERVIEW}",
            runbook=f"{RUNBOOK}#exporter-health",
            failing=(lookups(NS_GOOD, NOERROR, steady_ok),),
            fires_with=({},),
            healthy=(s(NETNS_ATTACHED, {**LAB, NODE: "node-a"}, "12x40"),),
            eval_time="30m",
        ),
        Alert(
            name="DNSOTelNodeStoppedReporting",
            group="dnsotel.exporter",
            expr=(
                f"max by ({CLUSTER}, {NODE}) ({NETNS_ATTACHED} offset 1h)\n"
                f"unless\nmax by ({CLUSTER}, {NODE}) ({NETNS_ATTACHED})"
            ),
            for_="15m",
            severity="warning",
            summary=f"dnsotel on {nodeq} stopped reporting",
            description=(
                f"The exporter on {nodeq} reported an hour ago and has not reported for 15 minutes: DNS on "
                "that node is not observed. Check the DaemonSet pod on the node (crash loop, eviction, bcc "
                "compile failure in its log). Expected for up to an hour after a node is removed."
            ),
            dashboard=f"/d/{UID_OVERVIEW}",
            runbook=f"{RUNBOOK}#exporter-health",
            failing=(
                s(NETNS_ATTACHED, {**LAB, NODE: "node-a"}, "12x130"),
                s(NETNS_ATTACHED, {**LAB, NODE: "node-b"}, "9x100"),
            ),
            fires_with=({CLUSTER: "lab", NODE: "node-b"},),
            healthy=(
                s(NETNS_ATTACHED, {**LAB, NODE: "node-a"}, "12x130"),
                s(NETNS_ATTACHED, {**LAB, NODE: "node-b"}, "9x130"),
            ),
            eval_time="125m",
        ),
    ]


def _rule(a: Alert) -> dict[str, Any]:
    return {
        "alert": a.name,
        "expr": a.expr,
        "for": a.for_,
        "labels": {"severity": a.severity, **a.extra_labels},
        "annotations": {
            "summary": a.summary,
            "description": a.description,
            "dashboard": a.dashboard,
            "runbook_url": a.runbook,
        },
    }


def rule_groups() -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for a in alerts():
        groups.setdefault(a.group, []).append(_rule(a))
    return [{"name": name, "interval": "1m", "rules": rules} for name, rules in groups.items()]


def rule_file() -> dict[str, Any]:
    return {"groups": rule_groups()}


def prometheus_rule() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "dnsotel",
            "labels": {"app.kubernetes.io/name": "dnsotel", "app.kubernetes.io/component": "alert-rules"},
        },
        "spec": {"groups": rule_groups()},
    }


_LABEL_TEMPLATE = re.compile(r"\{\{ \$labels\.([a-zA-Z_][a-zA-Z0-9_]*) \}\}")


def _expand(template: str, labels: dict[str, str]) -> str:
    return _LABEL_TEMPLATE.sub(lambda m: labels.get(m.group(1), "<no value>"), template)


def rule_tests() -> dict[str, Any]:
    tests: list[dict[str, Any]] = []
    for a in alerts():
        ann = _rule(a)["annotations"]
        for case, series, fires in (("fires", a.failing, a.fires_with), ("silent", a.healthy, ())):
            tests.append(
                {
                    "name": f"{a.name} {case}",
                    "interval": a.interval,
                    "input_series": [{"series": x.series, "values": x.values} for x in series],
                    "alert_rule_test": [
                        {
                            "alertname": a.name,
                            "eval_time": a.eval_time,
                            "exp_alerts": [
                                {
                                    "exp_labels": {"severity": a.severity, **a.extra_labels, **lbl},
                                    "exp_annotations": {k: _expand(v, lbl) for k, v in ann.items()},
                                }
                                for lbl in fires
                            ],
                        }
                    ],
                }
            )
    return {"rule_files": ["../dnsotel.rules.yaml"], "evaluation_interval": "1m", "tests": tests}


# --- output --------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def to_yaml(data: Any, header: str) -> str:
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=120)
    return header + body


def to_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


HEADER = "# Generated by `make dashboards` (python -m grafana.build) from grafana/build.py. Do not edit.\n"


def render() -> dict[Path, str]:
    """Every generated file and its content."""
    out: dict[Path, str] = {}
    for stem, make in DASHBOARDS.items():
        out[DASHBOARD_DIR / f"{stem}.json"] = to_json(dashboard_json(make()))
    out[RULES_FILE] = to_yaml(rule_file(), HEADER)
    run = "# Run: cd grafana/alerts/tests && promtool test rules *.yaml\n"
    out[RULE_TESTS_FILE] = to_yaml(rule_tests(), HEADER + run)
    out[PROMETHEUS_RULE_FILE] = to_yaml(prometheus_rule(), HEADER)
    return out


def stale(files: dict[Path, str]) -> list[Path]:
    return [p for p, text_ in files.items() if not p.exists() or p.read_text() != text_]


def write(files: dict[Path, str]) -> list[Path]:
    """Write the files whose content changed; returns those written."""
    written: list[Path] = []
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != content:
            path.write_text(content)
            written.append(path)
    return written


def write_all(outdir: Path) -> list[Path]:
    """Write every generated file under ``outdir`` with the repository's layout (``dnsotel dashboards``)."""
    files = {outdir / path.relative_to(ROOT): content for path, content in render().items()}
    write(files)
    return sorted(files)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.build", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file is stale")
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        out_of_date = stale(files)
        for p in out_of_date:
            print(f"stale: {p.relative_to(ROOT)} (run `make dashboards`)", file=sys.stderr)
        return 1 if out_of_date else 0
    for path in write(files):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
