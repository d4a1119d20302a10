"""CPU cost of the telemetry sink per DNS exchange (DESIGN §4 "Export", §7).

Prints, for each mode, the CPU µs per pair spent

* on the capture thread (``TelemetrySink.on_response``: local metric aggregates, the
  span decision, the queue append), measured with ``time.thread_time()``; and
* in total, including the background thread that builds the ``ReadableSpan``s and the
  SDK exporter's OTLP encoding/sending (and gRPC's own threads), measured with
  ``time.process_time()`` from the first pair until every queued span is exported;

and the pairs/s one core sustains at that total cost (1e6 / total µs).

Modes: spans for every pair (``sample_ratio=1``) and spans for anomalies only
(``sample_ratio=0``; 1 % of the pairs are NXDOMAIN). Exporters, each in two encodings —
``sdk`` (the SDK's ``encode_spans`` → protobuf objects → serialise) and ``wire``
(:mod:`exporter.telemetry.otlpwire`, what ``make_span_exporter`` returns):

* ``encode``: a no-op ``SpanExporter`` that still encodes and serialises the request (what
  the OTLP exporter does before the network), and
* ``grpc``: the OTLP gRPC exporter sending to ``tests/otlp_receiver.py`` run in a
  *separate process* on 127.0.0.1 (so its CPU is not counted here).

First, the encoding alone: CPU µs per span of the SDK's encoding and of the wire encoder on
the same batches of 512 built spans, with the ratio measured in the same run.

The exchanges: ``--distinct`` pairs (default 4096) cycled, 50 distinct names, every pair
with its own client port and DNS id (so the encoder's caches see high-cardinality values
as in production).

Usage: ``.venv/bin/python -m bench.export [--pairs N]`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find tests/

import dns.rcode
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from exporter.enrich import PlainEnricher
from exporter.records import Exchange
from exporter.telemetry.otlpwire import FastGrpcSpanExporter, WireEncoder
from exporter.telemetry.sink import TelemetrySink, build_resource
from exporter.telemetry.spans import SpanBuilder
from tests.unit.test_telemetry import POD_IP, make_exchange

SCOPE = InstrumentationScope("dnsotel", "bench")

RECEIVER = (
    "import sys; from tests.otlp_receiver import OtlpReceiver; r = OtlpReceiver(); "
    "print(r.port, flush=True); sys.stdin.read(); r.stop()"
)


class EncodeOnly(SpanExporter):
    """Encodes and serialises like the OTLP exporter (SDK or wire encoding), then discards."""

    def __init__(self, wire: bool = False) -> None:
        self.bytes = 0
        self._wire = WireEncoder() if wire else None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._wire is not None:
            self.bytes += len(self._wire.encode(spans))
        else:
            self.bytes += len(encode_spans(spans).SerializeToString())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def exchanges(n_distinct: int = 4096) -> list[Exchange]:
    out = []
    for i in range(n_distinct):
        rcode = dns.rcode.NXDOMAIN if i % 100 == 0 else dns.rcode.NOERROR
        out.append(
            make_exchange(
                name=f"svc{i % 50}.default.svc.cluster.local.",
                qid=(i * 7919) % 65536,
                client=(POD_IP, 1024 + (i * 104729) % 64000),
                rcode=rcode,
                latency_ns=300_000 + (i % 17) * 50_000,
            )
        )
    return out


def encode_cost(exs: list[Exchange], rounds: int = 3) -> None:
    """CPU µs per span of the SDK's encoding and of the wire encoder, on the same batches."""
    builder = SpanBuilder(PlainEnricher("bench-node"), build_resource("bench-node"), SCOPE, "bench-node")
    spans = [s for s in (builder.build(ex) for ex in exs) if s is not None]
    batches = [spans[i : i + 512] for i in range(0, len(spans), 512)]
    wire = WireEncoder()
    for b in batches:  # warm-up; and the same request, byte for byte
        assert wire.encode(b) == encode_spans(b).SerializeToString()
    sdk_s = wire_s = 0.0
    for _ in range(rounds):  # alternated, so that the machine's noise hits both alike
        t0 = time.process_time()
        for b in batches:
            encode_spans(b).SerializeToString()
        t1 = time.process_time()
        for b in batches:
            wire.encode(b)
        t2 = time.process_time()
        sdk_s += t1 - t0
        wire_s += t2 - t1
    sdk_us = sdk_s / (rounds * len(spans)) * 1e6
    wire_us = wire_s / (rounds * len(spans)) * 1e6
    t0 = time.process_time()
    for _ in range(rounds):
        for ex in exs:
            builder.build(ex)
    build_us = (time.process_time() - t0) / (rounds * len(exs)) * 1e6
    print(
        f"encode only ({len(spans)} spans, batches of 512): sdk {sdk_us:6.2f} µs/span  "
        f"wire {wire_us:6.2f} µs/span -> {sdk_us / wire_us:4.1f}x less CPU  "
        f"(building the ReadableSpan: {build_us:5.2f} µs/span)",
        flush=True,
    )


def run(mode: str, exporter_name: str, pairs: int, exs: list[Exchange], port: int) -> float:
    exporter: SpanExporter
    if exporter_name == "grpc":
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True, timeout=30)
    elif exporter_name == "grpc-w":
        exporter = FastGrpcSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True, timeout=30)
    else:
        exporter = EncodeOnly(wire=exporter_name == "enc-w")
    ratio = 1.0 if mode == "all" else 0.0
    sink = TelemetrySink(
        PlainEnricher("bench-node"),
        node="bench-node",
        sample_ratio=ratio,
        span_exporter=exporter,
        max_queue=pairs + 1,
        metric_interval_s=3600,
        span_delay_s=0.2,
    )
    for ex in exs[:200]:  # warm-up (not counted)
        sink.on_response(ex)
    while sink.spans_queued:
        time.sleep(0.05)
    base_exported, base_dropped = sink.spans_exported, sink.spans_dropped
    n = len(exs)
    p0 = time.process_time()
    w0 = time.perf_counter()
    t0 = time.thread_time()
    for i in range(pairs):
        sink.on_response(exs[i % n])
    capture_cpu = time.thread_time() - t0
    errors = [ex.response is not None and ex.response.msg.rcode != 0 for ex in exs]
    expected = pairs if ratio else sum(1 for i in range(pairs) if errors[i % n])
    while sink.spans_exported + sink.spans_dropped - base_exported - base_dropped < expected:
        time.sleep(0.01)
    total_cpu = time.process_time() - p0
    wall = time.perf_counter() - w0
    dropped = sink.spans_dropped - base_dropped
    sink.shutdown(10)
    cap_us = capture_cpu / pairs * 1e6
    tot_us = total_cpu / pairs * 1e6
    print(
        f"{mode:>9} {exporter_name:>6} pairs={pairs:>7} spans={expected:>7} dropped={dropped:>3} "
        f"capture={cap_us:6.2f} µs/pair total={tot_us:7.2f} µs/pair "
        f"-> {1e6 / tot_us:>9,.0f} pairs/s/core (wall {wall:5.2f} s)",
        flush=True,
    )
    return tot_us


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--pairs", type=int, default=200_000, help="pairs in anomalies-only mode")
    ap.add_argument("--span-pairs", type=int, default=10_000, help="pairs in spans-for-all mode")
    ap.add_argument("--distinct", type=int, default=4096, help="distinct exchanges cycled")
    args = ap.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    recv = subprocess.Popen(
        [sys.executable, "-c", RECEIVER], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert recv.stdout is not None
        port = int(recv.stdout.readline())
        exs = exchanges(args.distinct)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; receiver pid {recv.pid} port {port}")
        encode_cost(exs)
        for sdk_name, wire_name in (("encode", "enc-w"), ("grpc", "grpc-w")):
            run("anomalies", sdk_name, args.pairs, exs, port)
            run("anomalies", wire_name, args.pairs, exs, port)
            sdk_us = run("all", sdk_name, args.span_pairs, exs, port)
            wire_us = run("all", wire_name, args.span_pairs, exs, port)
            print(
                f"      all {sdk_name}: sdk {sdk_us:.2f} vs wire {wire_us:.2f} µs/pair -> "
                f"{1e6 / sdk_us:,.0f} vs {1e6 / wire_us:,.0f} pairs/s/core with a span for every pair "
                f"({sdk_us / wire_us:.1f}x)",
                flush=True,
            )
    finally:
        if recv.stdin is not None:
            recv.stdin.close()
        try:
            recv.wait(10)
        except subprocess.TimeoutExpired:
            recv.kill()
            recv.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
