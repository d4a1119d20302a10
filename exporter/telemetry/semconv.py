"""Every telemetry name dnsotel emits, defined once (DESIGN.md §5).

The exporter, the Grafana dashboards and the alert rules import these names; nothing
else spells them. OpenTelemetry semantic-convention names are used where they exist.
"""

from __future__ import annotations

from typing import Final

# --- span attributes -------------------------------------------------------------------
DNS_QUESTION_NAME: Final = "dns.question.name"
DNS_QUESTION_TYPE: Final = "dns.question.type"
DNS_RESPONSE_CODE: Final = "dns.response_code"
ERROR_TYPE: Final = "error.type"
DNS_ID: Final = "dns.id"
DNS_ANSWERS: Final = "dns.answers"
DNS_ANSWER_COUNT: Final = "dns.answer.count"
DNS_ANSWER_CNAMES: Final = "dns.answer.cnames"
DNS_ANSWER_MIN_TTL: Final = "dns.answer.min_ttl"
DNS_FLAGS_TRUNCATED: Final = "dns.flags.truncated"
DNS_FLAGS_AUTHORITATIVE: Final = "dns.flags.authoritative"
DNS_FLAGS_RECURSION_DESIRED: Final = "dns.flags.recursion_desired"
DNS_FLAGS_RECURSION_AVAILABLE: Final = "dns.flags.recursion_available"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
CLIENT_ADDRESS: Final = "client.address"
CLIENT_PORT: Final = "client.port"
NETWORK_TRANSPORT: Final = "network.transport"
NETWORK_TYPE: Final = "network.type"
DNS_NAMESERVER: Final = "dns.nameserver"
DNS_CLIENT: Final = "dns.client"
K8S_NODE_NAME: Final = "k8s.node.name"
K8S_NAMESPACE_NAME: Final = "k8s.namespace.name"
K8S_POD_NAME: Final = "k8s.pod.name"
K8S_CONTAINER_NAME: Final = "k8s.container.name"
DNSOTEL_NETNS_ID: Final = "dnsotel.netns.id"
# one trace per resolution (issue 5)
DNS_SEARCH_EXPANSION_INDEX: Final = "dns.search_expansion.index"
DNS_SEARCH_EXPANSION_ORIGINAL_NAME: Final = "dns.search_expansion.original_name"
DNS_RETRANSMITS: Final = "dns.retransmits"

# --- metric attributes (also span attributes where named above) ------------------------
DNS_ROLE: Final = "dns.role"  # "client" | "server"
DECODE_ERROR_REASON: Final = "reason"

# error.type values that are not response codes
ERROR_TYPE_TIMEOUT: Final = "timeout"

# --- metrics ---------------------------------------------------------------------------
METRIC_LOOKUP_DURATION: Final = "dns.lookup.duration"  # histogram, s
METRIC_QUERIES_UNANSWERED: Final = "dns.queries.unanswered"  # counter
METRIC_RESPONSES_UNMATCHED: Final = "dns.responses.unmatched"  # counter
# the exporter's own health, all created at zero
METRIC_CAPTURE_PACKETS: Final = "dnsotel.capture.packets"  # counter: DNS packets received from the source
METRIC_CAPTURE_LOST: Final = "dnsotel.capture.lost"  # counter: packets the kernel could not hand over
METRIC_DECODE_ERRORS: Final = "dnsotel.decode.errors"  # counter, attribute `reason`
METRIC_PAIRS_PENDING: Final = "dnsotel.pairs.pending"  # gauge (up/down)
METRIC_PAIRS_EVICTED: Final = "dnsotel.pairs.evicted"  # counter
METRIC_SPANS_EXPORTED: Final = "dnsotel.spans.exported"  # counter
METRIC_SPANS_DROPPED: Final = "dnsotel.spans.dropped"  # counter
METRIC_NETNS_ATTACHED: Final = "dnsotel.netns.attached"  # gauge

METRIC_UNITS: Final[dict[str, str]] = {
    METRIC_LOOKUP_DURATION: "s",
    METRIC_QUERIES_UNANSWERED: "{query}",
    METRIC_RESPONSES_UNMATCHED: "{response}",
    METRIC_CAPTURE_PACKETS: "{packet}",
    METRIC_CAPTURE_LOST: "{packet}",
    METRIC_DECODE_ERRORS: "{packet}",
    METRIC_PAIRS_PENDING: "{query}",
    METRIC_PAIRS_EVICTED: "{query}",
    METRIC_SPANS_EXPORTED: "{span}",
    METRIC_SPANS_DROPPED: "{span}",
    METRIC_NETNS_ATTACHED: "{namespace}",
}

COUNTERS: Final = (
    METRIC_QUERIES_UNANSWERED,
    METRIC_RESPONSES_UNMATCHED,
    METRIC_CAPTURE_PACKETS,
    METRIC_CAPTURE_LOST,
    METRIC_DECODE_ERRORS,
    METRIC_PAIRS_EVICTED,
    METRIC_SPANS_EXPORTED,
    METRIC_SPANS_DROPPED,
)
GAUGES: Final = (METRIC_PAIRS_PENDING, METRIC_NETNS_ATTACHED)
HISTOGRAMS: Final = (METRIC_LOOKUP_DURATION,)

# Attributes of dns.lookup.duration; dns.queries.unanswered has the same minus the response code.
LOOKUP_ATTRIBUTES: Final = (
    DNS_ROLE,
    DNS_QUESTION_TYPE,
    DNS_RESPONSE_CODE,
    ERROR_TYPE,
    SERVER_ADDRESS,
    DNS_NAMESERVER,
    NETWORK_TRANSPORT,
    K8S_NAMESPACE_NAME,
    K8S_POD_NAME,
)
UNANSWERED_ATTRIBUTES: Final = tuple(a for a in LOOKUP_ATTRIBUTES if a != DNS_RESPONSE_CODE)
UNMATCHED_ATTRIBUTES: Final = (DNS_ROLE, SERVER_ADDRESS, K8S_NAMESPACE_NAME, K8S_POD_NAME)
# opt-in (DNSOTEL_METRICS_TOP_NAMES): the question name, bounded to a top-N, the rest folded
OTHER_NAME: Final = "_other"
METRIC_ATTRIBUTES: Final[dict[str, tuple[str, ...]]] = {
    METRIC_LOOKUP_DURATION: LOOKUP_ATTRIBUTES,
    METRIC_QUERIES_UNANSWERED: UNANSWERED_ATTRIBUTES,
    METRIC_RESPONSES_UNMATCHED: UNMATCHED_ATTRIBUTES,
    METRIC_DECODE_ERRORS: (DECODE_ERROR_REASON,),
}

# Bucket boundaries (seconds) of dns.lookup.duration: the semantic conventions' duration
# buckets, preceded by sub-millisecond ones, because a DNS answer from a node-local cache
# takes tens to hundreds of microseconds and the semconv list starts at 5 ms.
LOOKUP_DURATION_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

# --- span shape ------------------------------------------------------------------------
SPAN_NAME_PREFIX: Final = "DNS "  # span name = "DNS <QTYPE>"
SPAN_EVENT_RETRANSMISSION: Final = "retransmission"  # span event at each retransmitted query
# span event on a UDP exchange answered with TC=1 (at the response)
SPAN_EVENT_TRUNCATED: Final = "truncated"
# span event on the TCP exchange that retries a truncated UDP one (at the TCP query); its
# attributes dns.id / client.port / network.transport describe the UDP exchange
SPAN_EVENT_TCP_RETRY_AFTER_TRUNCATION: Final = "tcp_retry_after_truncation"
# attribute on span links: why the spans are linked
SPAN_LINK_REASON: Final = "dnsotel.link.reason"
SPAN_LINK_REASON_COALESCED: Final = "coalesced"  # upstream query -> another server query it answers
SPAN_LINK_REASON_TRUNCATED: Final = "truncated_udp"  # TCP retry -> the truncated UDP exchange
INSTRUMENTATION_SCOPE: Final = "dnsotel"

# --- resource (OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES override these) --------------
RESOURCE_SERVICE_NAME: Final = "service.name"
RESOURCE_SERVICE_NAME_DEFAULT: Final = "dnsotel"
RESOURCE_HOST_NAME: Final = "host.name"

# The OpenTelemetry metrics SDK's cardinality-overflow attribute: attribute sets beyond the
# per-metric limit are folded into one series carrying only this attribute (= true).
METRIC_OVERFLOW_ATTRIBUTE: Final = "otel.metric.overflow"

# --- OTLP -> Prometheus name translation -----------------------------------------------
# What the OpenTelemetry Collector's prometheus exporter / Prometheus' OTLP receiver and the
# SDK's Prometheus reader do to our names: dots become underscores, a unit suffix is added
# for known units, counters get `_total`. Dashboards and alert rules use these functions.
_UNIT_SUFFIX: Final = {"s": "seconds"}


def prometheus_label(attribute: str) -> str:
    """Prometheus label name of an OTLP attribute (``dns.response_code`` -> ``dns_response_code``)."""
    return "".join(c if c.isalnum() else "_" for c in attribute)


def prometheus_metric(metric: str) -> str:
    """Prometheus base name of an OTLP metric (before ``_bucket``/``_count``/``_sum``)."""
    name = prometheus_label(metric)
    suffix = _UNIT_SUFFIX.get(METRIC_UNITS.get(metric, ""))
    if suffix and not name.endswith("_" + suffix):
        name += "_" + suffix
    if metric in COUNTERS:
        name += "_total"
    return name


def span_attributes() -> frozenset[str]:
    """Every span attribute name in the contract (for checking TraceQL queries)."""
    return frozenset(
        v
        for k, v in globals().items()
        if k.isupper()
        and isinstance(v, str)
        and not k.startswith(("METRIC_", "SPAN_", "INSTRUMENTATION", "OTHER", "ERROR_TYPE_", "RESOURCE_"))
        and k != "DECODE_ERROR_REASON"
    )
