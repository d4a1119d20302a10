"""CPU cost of the telemetry sink per DNS exchange (DESIGN §4 "Export", §7).

Prints, for each mode, the CPU µs per pair spent

* on the capture thread (``TelemetrySink.on_response``: local metric aggregates, the
  span decision, the queue append), measured with ``time.thread_time()``; and
* in total, including the background thread that builds the ``ReadableSpan``s and the
  SDK exporter's OTLP encoding/sending (and gRPC's own threads), measured with
  ``time.process_time()`` from the first pair until every queued span is exported;

and the pairs/s one core sustains at that total cost (1e6 / total µs).

Modes: spans for every pair (``sample_ratio=1``) and spans for anomalies only
(``sample_ratio=0``; 1 % of the pairs are NXDOMAIN). Exporters:

* ``encode``: a no-op ``SpanExporter`` that still runs the SDK's OTLP protobuf encoding
  and serialisation (what the OTLP exporter does before the network), and
* ``grpc``: the SDK's ``OTLPSpanExporter`` sending to ``tests/otlp_receiver.py`` run in a
  *separate process* on 127.0.0.1 (so its CPU is not counted here).

Usage: ``.venv/bin/python -m bench.export [--pairs N]`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import dns.rcode
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from exporter.enrich import PlainEnricher
from exporter.records import Exchange
from exporter.telemetry.sink import TelemetrySink
from tests.unit.test_telemetry import POD_IP, make_exchange

RECEIVER = (
    "import sys; from tests.otlp_receiver import OtlpReceiver; r = OtlpReceiver(); "
    "print(r.port, flush=True); sys.stdin.read(); r.stop()"
)


class EncodeOnly(SpanExporter):
    """Encodes and serialises like the OTLP exporter, then discards."""

    def __init__(self) -> None:
        self.bytes = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.bytes += len(encode_spans(spans).SerializeToString())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def exchanges(n_distinct: int = 1000) -> list[Exchange]:
    out = []
    for i in range(n_distinct):
        rcode = dns.rcode.NXDOMAIN if i % 100 == 0 else dns.rcode.NOERROR
        out.append(
            make_exchange(
                name=f"svc{i % 50}.default.svc.cluster.local.",
                qid=i,
                client=(POD_IP, 20000 + i),
                rcode=rcode,
                latency_ns=300_000 + (i % 17) * 50_000,
            )
        )
    return out


def run(mode: str, exporter_name: str, pairs: int, exs: list[Exchange], port: int) -> None:
    exporter: SpanExporter
    if exporter_name == "grpc":
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True, timeout=30)
    else:
        exporter = EncodeOnly()
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
    expected = pairs if ratio else sum(1 for i in range(pairs) if exs[i % n].response.msg.rcode)  # type: ignore[union-attr]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--pairs", type=int, default=200_000, help="pairs in anomalies-only mode")
    ap.add_argument("--span-pairs", type=int, default=10_000, help="pairs in spans-for-all mode")
    args = ap.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    recv = subprocess.Popen(
        [sys.executable, "-c", RECEIVER], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert recv.stdout is not None
        port = int(recv.stdout.readline())
        exs = exchanges()
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; receiver pid {recv.pid} port {port}")
        for exporter_name in ("encode", "grpc"):
            run("anomalies", exporter_name, args.pairs, exs, port)
            run("all", exporter_name, args.span_pairs, exs, port)
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
