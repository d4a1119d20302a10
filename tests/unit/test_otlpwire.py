"""exporter.telemetry.otlpwire: hand-written OTLP wire bytes against the SDK as the oracle.

Every request the wire encoder writes is compared with the SDK's ``encode_spans`` of the
same spans: byte for byte, and decoded with opentelemetry-proto, field by field (as dicts,
so a failure shows which field differs). The fast exporters are then run end to end
against real receivers on 127.0.0.1 (gRPC and HTTP/protobuf), including the
``OTEL_EXPORTER_OTLP_*`` settings they must keep honouring (endpoint, headers, gzip,
timeout/retries).
"""

from __future__ import annotations

import gzip
import logging
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from google.protobuf.json_format import MessageToDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as SdkGrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as SdkHttpSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

from exporter.enrich import PlainEnricher
from exporter.telemetry import otlpwire
from exporter.telemetry.otlp import make_span_exporter
from exporter.telemetry.otlpwire import FastGrpcSpanExporter, FastHttpSpanExporter, WireEncoder, varint
from exporter.telemetry.sink import build_resource
from exporter.telemetry.spans import SpanBuilder
from tests.otlp_receiver import OtlpHttpReceiver, OtlpReceiver
from tests.unit.test_telemetry import T0, make_exchange

SAMPLED = TraceFlags(TraceFlags.SAMPLED)
RESOURCE = Resource({"service.name": "dnsotel", "k8s.node.name": "node-a", "n": 3}, "https://schema/1")
SCOPE = InstrumentationScope("dnsotel", "0.1.0", "https://scope/1", {"scope.attr": "x"})


def ctx(trace_id: int, span_id: int, remote: bool = False, state: TraceState | None = None) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=remote, trace_flags=SAMPLED, trace_state=state)


def span(
    name: str = "DNS A",
    *,
    attributes: Mapping[str, Any] | None = None,
    trace_id: int = 0x0123456789ABCDEF0123456789ABCDEF,
    span_id: int = 0x1122334455667788,
    parent: SpanContext | None = None,
    kind: SpanKind = SpanKind.CLIENT,
    status: Status | None = None,
    events: Sequence[Event] = (),
    links: Sequence[Link] = (),
    resource: Resource = RESOURCE,
    scope: InstrumentationScope | None = SCOPE,
    start: int | None = T0,
    end: int | None = T0 + 1_500_000,
    state: TraceState | None = None,
) -> ReadableSpan:
    return ReadableSpan(
        name=name,
        context=ctx(trace_id, span_id, state=state),
        parent=parent,
        resource=resource,
        attributes=attributes,
        events=events,
        links=links,
        kind=kind,
        status=status or Status(StatusCode.UNSET),
        start_time=start,
        end_time=end,
        instrumentation_scope=scope,
    )


def assert_same(spans: Sequence[ReadableSpan], enc: WireEncoder | None = None) -> bytes:
    """The wire encoder's request equals the SDK's: decoded field by field, and byte for byte."""
    mine = (enc or WireEncoder()).encode(spans)
    sdk = encode_spans(spans)
    got = ExportTraceServiceRequest.FromString(mine)
    assert MessageToDict(got) == MessageToDict(sdk)
    assert got == sdk
    assert mine == sdk.SerializeToString()
    return mine


# --- the encoder against the SDK --------------------------------------------------------------


def test_varint() -> None:
    for n in (0, 1, 127, 128, 300, 16383, 16384, 2**21 - 1, 2**21, 2**32, 2**63, 2**64 - 1):
        b = varint(n)
        value = sum((x & 0x7F) << (7 * i) for i, x in enumerate(b))
        assert value == n
        assert all(x & 0x80 for x in b[:-1]) and not b[-1] & 0x80


def test_every_field_of_a_full_span() -> None:
    parent = ctx(0x0123456789ABCDEF0123456789ABCDEF, 0xAAAAAAAAAAAAAAAA, remote=True)
    attrs = BoundedAttributes(
        maxlen=12,
        attributes={
            "dns.question.name": "www.example.com.",
            "dns.id": 0x1234,
            "dns.answers": ["192.0.2.1", "2001:db8::1"],
            "dns.answer.cnames": [],
            "dns.flags.truncated": False,
            "dns.flags.recursion_desired": True,
            "negative": -5,
            "int64.min": -(2**63),
            "int64.max": 2**63 - 1,
            "ratio": 0.25,
            "blob": b"\x00\x01",
            "ints": [1, -2, 3],
            "bools": [True, False],
            "floats": [1.5, -0.0],
            "unicode": "héllo wörld ✓",
            "dropped.one": 1,
            "dropped.two": 2,
        },
    )
    assert attrs.dropped == 5
    events = BoundedList.from_seq(
        1,
        [
            Event("retransmission", {"attempt": 2, "why": "timeout"}, timestamp=T0 + 5),
            Event("dropped", timestamp=T0 + 6),
        ],
    )
    links = BoundedList.from_seq(
        3,
        [
            Link(ctx(7, 8)),  # the oldest: dropped
            Link(ctx(1, 2, remote=True), {"link.kind": "upstream", "n": [1, 2]}),
            Link(ctx(3, 4, remote=False, state=TraceState([("k", "v")]))),
            Link(ctx(5, 6), BoundedAttributes(maxlen=1, attributes={"a": 1, "b": 2})),
        ],
    )
    s = span(
        attributes=attrs,
        parent=parent,
        kind=SpanKind.SERVER,
        status=Status(StatusCode.ERROR, "NXDOMAIN"),
        events=events,
        links=links,
        state=TraceState([("vendor", "x"), ("other", "y-z")]),
    )
    assert (s.dropped_attributes, s.dropped_events, s.dropped_links) == (5, 1, 1)
    assert_same([s])
    got = ExportTraceServiceRequest.FromString(WireEncoder().encode([s]))
    (rs,) = got.resource_spans
    assert rs.schema_url == "https://schema/1"
    (ss,) = rs.scope_spans
    assert (ss.scope.name, ss.scope.version, ss.schema_url) == ("dnsotel", "0.1.0", "https://scope/1")
    (p,) = ss.spans
    assert p.trace_id == (0x0123456789ABCDEF0123456789ABCDEF).to_bytes(16, "big")
    assert p.parent_span_id == (0xAAAAAAAAAAAAAAAA).to_bytes(8, "big")
    assert p.flags == 0x300
    assert p.trace_state == "vendor=x,other=y-z"
    assert (p.dropped_attributes_count, p.dropped_events_count, p.dropped_links_count) == (5, 1, 1)
    assert [link.flags for link in p.links] == [0x300, 0x100, 0x100]
    assert [link.dropped_attributes_count for link in p.links] == [0, 0, 1]
    assert [e.name for e in p.events] == ["dropped"]


@pytest.mark.parametrize("kind", list(SpanKind))
@pytest.mark.parametrize(
    "status",
    [
        Status(StatusCode.UNSET),
        Status(StatusCode.OK),
        Status(StatusCode.ERROR),
        Status(StatusCode.ERROR, "x"),
    ],
)
def test_kinds_and_statuses(kind: SpanKind, status: Status) -> None:
    assert_same([span(kind=kind, status=status), span(kind=kind, status=status, parent=ctx(1, 9))])


def test_defaults_and_empty_fields() -> None:
    assert_same([span(name="", attributes=None, start=None, end=None)])
    assert_same([span(start=T0, end=None), span(start=None, end=T0)])
    assert_same([span(scope=None), span(resource=Resource({}))])
    assert_same([ReadableSpan(name="bare", context=ctx(1, 1))])
    assert WireEncoder().encode([]) == encode_spans([]).SerializeToString() == b""


def test_grouping_by_resource_and_scope_like_the_sdk() -> None:
    r2 = Resource({"service.name": "other"})
    r1_copy = Resource(dict(RESOURCE.attributes), RESOURCE.schema_url)  # equal, distinct object
    s2 = InstrumentationScope("other", "1")
    spans = [
        span(span_id=1),
        span(span_id=2, resource=r2),
        span(span_id=3, scope=s2),
        span(span_id=4, resource=r1_copy),
        span(span_id=5, resource=r2, scope=None),
        span(span_id=6),
    ]
    enc = WireEncoder()
    assert_same(spans, enc)
    got = ExportTraceServiceRequest.FromString(enc.encode(spans))
    layout = [
        [[int.from_bytes(p.span_id, "big") for p in ss.spans] for ss in rs.scope_spans]
        for rs in got.resource_spans
    ]
    assert layout == [[[1, 4, 6], [3]], [[2], [5]]]


def test_attribute_values_the_sdk_leaves_out(caplog: pytest.LogCaptureFixture) -> None:
    attrs = {
        "too.big": 2**63,
        "too.small": -(2**63) - 1,
        "surrogate": "\ud800",
        "bad.type": object(),
        "bad.item": [1, object()],
        "kept": "yes",
        "none": None,
        "none.item": [None, 1],
        "mapping": {"a": 1, 2: [True, "x"]},
        "nested": [[1, 2], "a"],
        "bytearray": bytearray(b"ab"),
        "set": frozenset([1]),
        "nan": math.nan,
        "inf": -math.inf,
    }
    with caplog.at_level(logging.ERROR, logger=otlpwire.__name__):
        mine = WireEncoder().encode([span(attributes=attrs)])
    assert mine == encode_spans([span(attributes=attrs)]).SerializeToString()
    kept = {
        kv.key
        for kv in ExportTraceServiceRequest.FromString(mine)
        .resource_spans[0]
        .scope_spans[0]
        .spans[0]
        .attributes
    }
    assert kept == set(attrs) - {"too.big", "too.small", "surrogate", "bad.type", "bad.item", "set"}
    assert "Failed to encode key too.big" in caplog.text


def test_long_values_and_large_batches() -> None:
    long_name = "x" * 20_000  # lengths past the precomputed varint table
    spans = [span(span_id=i + 1, attributes={"long": long_name, "i": i}) for i in range(600)]
    assert_same(spans)


def test_cache_never_confuses_types_or_values() -> None:
    enc = WireEncoder(max_keys=4, max_values=3)
    values: list[Any] = [
        True,
        1,
        1.0,
        "1",
        False,
        0,
        0.0,
        -0.0,
        "",
        [],
        ["1"],
        ("1",),
        [1],
        [True],
        None,
        2,
        "2",
    ]
    for round_ in range(3):
        for i, v in enumerate(values):
            assert_same([span(attributes={"x": v, f"k{i % 6}": v, "r": round_})], enc)
    assert len(enc._kc) <= 4
    assert all(len(c) <= 3 for c in enc._kc.values())


def test_high_cardinality_keys_stop_being_cached() -> None:
    enc = WireEncoder(max_values=16)
    for i in range(200):
        assert_same(
            [span(span_id=i + 1, attributes={"client.port": 1024 + i, "network.transport": "udp"})], enc
        )
    assert enc._kc["client.port"] is otlpwire._NEVER
    assert len(enc._kc["network.transport"]) == 1


def test_spans_of_the_span_builder() -> None:
    builder = SpanBuilder(PlainEnricher("node-a"), build_resource("node-a"), SCOPE, "node-a")
    exchanges = [
        make_exchange(),
        make_exchange(qtype="AAAA", addrs=("2001:db8::1",), cname="alias.example.com."),
        make_exchange(rcode=3),
        make_exchange(answered=False, retransmit_ts=(T0 + 1000, T0 + 2000)),
        make_exchange(role="server", client=("10.0.0.1", 5353)),
        make_exchange(client=("2001:db8::7", 40001), server=("2001:db8::53", 53)),
    ]
    spans = [s for s in (builder.build(ex) for ex in exchanges) if s is not None]
    assert len(spans) == len(exchanges)
    enc = WireEncoder()
    for _ in range(3):  # cold, then warm caches
        assert_same(spans, enc)


# --- random spans (hypothesis) -----------------------------------------------------------------

int64 = st.integers(-(2**63), 2**63 - 1)
scalars = st.one_of(
    st.text(max_size=40),
    st.booleans(),
    int64,
    st.integers(2**63, 2**70),  # out of range: left out, as the SDK does
    st.floats(allow_nan=False),
    st.binary(max_size=20),
    st.none(),
)
values = st.one_of(
    scalars,
    st.lists(st.text(max_size=10), max_size=5),
    st.lists(int64, max_size=5),
    st.lists(st.booleans(), max_size=3),
    st.lists(st.floats(allow_nan=False), max_size=3),
    st.tuples(st.text(max_size=5), st.text(max_size=5)),
    st.dictionaries(st.text(max_size=5), scalars, max_size=3),
)
attr_keys = st.sampled_from(["dns.question.name", "dns.id", "client.port", "flag", "x", "y", "ü"]) | st.text(
    max_size=12
)
attribute_sets = st.dictionaries(attr_keys, values, max_size=12)
ids128 = st.integers(1, 2**128 - 1)
ids64 = st.integers(1, 2**64 - 1)
u64 = st.integers(0, 2**64 - 1)


@st.composite
def random_spans(draw: st.DrawFn) -> ReadableSpan:
    parent = draw(st.none() | st.builds(ctx, ids128, ids64, st.booleans()))
    events = draw(
        st.lists(st.builds(Event, st.text(max_size=10), attribute_sets | st.none(), u64), max_size=3)
    )
    links = draw(
        st.lists(
            st.builds(Link, st.builds(ctx, ids128, ids64, st.booleans()), attribute_sets | st.none()),
            max_size=3,
        )
    )
    status = draw(
        st.sampled_from([Status(StatusCode.UNSET), Status(StatusCode.OK)])
        | st.builds(Status, st.just(StatusCode.ERROR), st.text(max_size=10) | st.none())
    )
    return span(
        name=draw(st.text(max_size=20)),
        attributes=draw(attribute_sets),
        trace_id=draw(ids128),
        span_id=draw(ids64),
        parent=parent,
        kind=draw(st.sampled_from(list(SpanKind))),
        status=status,
        events=events,
        links=links,
        resource=draw(
            st.sampled_from([RESOURCE, Resource({"service.name": "b", "x": [1, 2]}), Resource({})])
        ),
        scope=draw(st.sampled_from([SCOPE, None, InstrumentationScope("other")])),
        start=draw(st.none() | u64),
        end=draw(st.none() | u64),
    )


SHARED = WireEncoder(max_keys=8, max_values=4)  # small caches, reused across examples: evictions


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(random_spans(), min_size=1, max_size=6))
def test_random_spans_match_the_sdk(spans: list[ReadableSpan]) -> None:
    logging.disable(logging.ERROR)  # unencodable values are logged, as by the SDK
    try:
        assert_same(spans, SHARED)
        assert_same(spans)
    finally:
        logging.disable(logging.NOTSET)


# --- the exporters end to end -----------------------------------------------------------------


def close(exporter: SpanExporter) -> None:
    exporter.shutdown()


def received(requests: Sequence[ExportTraceServiceRequest]) -> list[dict[str, Any]]:
    return [MessageToDict(r) for r in requests]


def test_grpc_exporter_to_the_receiver() -> None:
    spans = [span(span_id=i + 1, attributes={"i": i, "s": "v"}) for i in range(50)]
    with OtlpReceiver() as r:
        exp = FastGrpcSpanExporter(endpoint=r.endpoint, insecure=True, timeout=5)
        try:
            assert exp.export(spans) is SpanExportResult.SUCCESS
            assert exp.export(spans[:1]) is SpanExportResult.SUCCESS
            assert len(r.wait_spans(51)) == 51
            assert received(r.trace_requests) == received([encode_spans(spans), encode_spans(spans[:1])])
        finally:
            exp.shutdown()


def test_grpc_exporter_retries_without_re_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = WireEncoder.encode

    def counting(self: WireEncoder, spans: Sequence[ReadableSpan]) -> bytes:
        calls.append(len(spans))
        return real(self, spans)

    monkeypatch.setattr(WireEncoder, "encode", counting)
    spans = [span(span_id=i + 1) for i in range(3)]
    with OtlpReceiver() as r:
        r.mode = "unavailable"
        exp = FastGrpcSpanExporter(endpoint=r.endpoint, insecure=True, timeout=10)
        try:
            result: list[SpanExportResult] = []
            t = threading.Thread(target=lambda: result.append(exp.export(spans)))
            t.start()
            assert r.wait(lambda: r.refused >= 1, 5)
            r.mode = "ok"
            t.join(15)
            assert result == [SpanExportResult.SUCCESS]
            assert r.refused >= 1
            assert calls == [3]  # encoded once, sent twice
            assert received(r.trace_requests) == received([encode_spans(spans)])
        finally:
            exp.shutdown()


def test_grpc_exporter_fails_when_the_collector_keeps_refusing() -> None:
    with OtlpReceiver() as r:
        r.mode = "unavailable"
        exp = FastGrpcSpanExporter(endpoint=r.endpoint, insecure=True, timeout=0.5)
        try:
            assert exp.export([span()]) is SpanExportResult.FAILURE
        finally:
            exp.shutdown()


class RecordingTraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.requests: list[ExportTraceServiceRequest] = []

    def Export(self, request: Any, context: Any) -> Any:
        self.metadata.append({m.key: m.value for m in context.invocation_metadata()})
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def recording_grpc() -> Iterator[tuple[RecordingTraceService, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service = RecordingTraceService()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield service, port
    server.stop(0).wait(5)


def test_grpc_exporter_keeps_the_environment(
    monkeypatch: pytest.MonkeyPatch, recording_grpc: tuple[RecordingTraceService, int]
) -> None:
    service, port = recording_grpc
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=acme,authorization=Bearer%20t")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "3")
    exp = make_span_exporter({})
    assert isinstance(exp, FastGrpcSpanExporter)
    assert exp._timeout == 3.0
    try:
        spans = [span(span_id=i + 1, attributes={"pad": "x" * 200}) for i in range(20)]
        assert exp.export(spans) is SpanExportResult.SUCCESS
        assert received(service.requests) == received([encode_spans(spans)])
        md = service.metadata[0]
        assert md["x-tenant"] == "acme"
        assert md["authorization"] == "Bearer t"
        assert exp._compression is grpc.Compression.Gzip  # the channel compresses the raw bytes too
    finally:
        exp.shutdown()


def test_http_exporter_to_the_receiver() -> None:
    spans = [span(span_id=i + 1, attributes={"i": i}) for i in range(30)]
    with OtlpHttpReceiver() as r:
        exp = FastHttpSpanExporter(endpoint=f"{r.endpoint}/v1/traces", timeout=5)
        try:
            assert exp.export(spans) is SpanExportResult.SUCCESS
            assert len(r.wait_spans(30)) == 30
            assert received(r.trace_requests) == received([encode_spans(spans)])
            assert r.content_types == ["application/x-protobuf"]
        finally:
            close(exp)
        assert exp.export(spans) is SpanExportResult.FAILURE  # after shutdown, like the SDK's


class _RecordingHttp:
    """OTLP/HTTP receiver that keeps headers and the gunzipped bodies of POST /v1/traces."""

    def __init__(self, status: int = 200) -> None:
        self.headers: list[dict[str, str]] = []
        self.bodies: list[bytes] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                rec.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                rec.bodies.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_http_exporter_keeps_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _RecordingHttp()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{rec.port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=acme")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
        exp = make_span_exporter({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"})
        assert isinstance(exp, FastHttpSpanExporter)
        spans = [span(span_id=i + 1, links=[Link(ctx(9, 9, remote=True), {"a": 1})]) for i in range(10)]
        assert exp.export(spans) is SpanExportResult.SUCCESS
        assert rec.bodies == [encode_spans(spans).SerializeToString()]
        h = rec.headers[0]
        assert h["x-tenant"] == "acme"
        assert h["content-encoding"] == "gzip"
        assert h["content-type"] == "application/x-protobuf"
        close(exp)
    finally:
        rec.stop()


def test_http_exporter_failures() -> None:
    rec = _RecordingHttp(status=400)  # not retryable
    try:
        exp = FastHttpSpanExporter(endpoint=f"http://127.0.0.1:{rec.port}/v1/traces", timeout=2)
        assert exp.export([span()]) is SpanExportResult.FAILURE
        assert len(rec.bodies) == 1
        small = FastHttpSpanExporter(endpoint=f"http://127.0.0.1:{rec.port}/v1/traces", max_request_size=100)
        assert small.export([span(attributes={"pad": "x" * 200})]) is SpanExportResult.FAILURE
        assert len(rec.bodies) == 1  # dropped before sending, as the SDK does
        close(exp)
        close(small)
    finally:
        rec.stop()


def test_encoder_failure_falls_back_to_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: WireEncoder, spans: Sequence[ReadableSpan]) -> bytes:
        raise RuntimeError("bug")

    monkeypatch.setattr(WireEncoder, "encode", broken)
    with OtlpHttpReceiver() as r:
        exp = FastHttpSpanExporter(endpoint=f"{r.endpoint}/v1/traces", timeout=5)
        assert exp.export([span()]) is SpanExportResult.SUCCESS
        assert received(r.trace_requests) == received([encode_spans([span()])])
        close(exp)


def test_make_span_exporter_chooses_fast_or_sdk() -> None:
    g = make_span_exporter({}, endpoint="http://127.0.0.1:1", insecure=True)
    assert isinstance(g, FastGrpcSpanExporter) and isinstance(g, SdkGrpcSpanExporter)
    h = make_span_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert isinstance(h, FastHttpSpanExporter) and isinstance(h, SdkHttpSpanExporter)
    sdk = make_span_exporter({}, fast=False, endpoint="http://127.0.0.1:1", insecure=True)
    assert type(sdk) is SdkGrpcSpanExporter
    for e in (g, h, sdk):
        e.shutdown()
