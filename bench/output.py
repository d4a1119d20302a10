"""Cost of ``dnsotel trace`` output per row: building the row and formatting it.

Scenarios, each timed for the pre-optimisation code (``tests/fixtures/output/legacy``,
"before") and for ``exporter.output`` ("after") in the same run, on the same packets:

- build+columns: ``build_row`` + ``ColumnsFormatter.format``, default and every field;
- build+json: ``build_row`` + ``JsonFormatter.format``, every field (``-o json``) and the
  default fields (``-o json --fields`` = the columns' default);
- sink: ``TraceSink.on_query``/``on_response`` writing to ``/dev/null`` (row, format,
  write), flushing every line (a terminal) or, "held", as ``-o json > file`` does once
  the capture loop calls ``flush_pending`` (before: the old sink, which flushes per line);
- filter: ``qr==R,latency_ns>5ms`` evaluated on a row.

Packets are real decoder output (a query and its response with two addresses, half of
them AAAA over IPv6), the enricher a Kubernetes-like name table. Prints microseconds per
row (best of ``--repeat``); asserts nothing.

    .venv/bin/python bench/output.py [--rows 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import exporter.output.fields as new_fields
import exporter.output.filter as new_filter
import exporter.output.sink as new_sink
import exporter.output.table as new_table
import tests.fixtures.output.legacy.fields as old_fields
import tests.fixtures.output.legacy.filter as old_filter
import tests.fixtures.output.legacy.sink as old_sink
import tests.fixtures.output.legacy.table as old_table
from exporter.dns import decode
from exporter.enrich import Workload, raw_endpoint
from exporter.records import (
    IPPROTO_UDP,
    PACKET_HOST,
    PACKET_OUTGOING,
    ROLE_CLIENT,
    DnsPacket,
    Exchange,
    PacketMeta,
)

SEC = 1_000_000_000
T0 = 1_725_030_921 * SEC + 137_120_000


class K8sEnricher:
    def __init__(self) -> None:
        self.names = {f"10.244.1.{i}": f"p/demo/app-{i}-7db6d8ff4d-r7hwl" for i in range(256)}
        self.names["10.96.0.10"] = "s/kube-system/kube-dns"
        self.wl = Workload(node="node-1", namespace="demo", pod="app-7db6d8ff4d-r7hwl", container="app")

    def endpoint(self, addr: str, port: int) -> str:
        base = self.names.get(addr)
        return f"{base}:{port}" if base else raw_endpoint(addr, port)

    def workload(self, netns: int) -> Workload:
        return self.wl


def _wire(qid: int, name: str, qtype: int, answers: list[bytes]) -> bytes:
    flags = 0x8180 if answers else 0x0100
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\x00"
    out = struct.pack("!HHHHHH", qid, flags, 1, len(answers), 0, 0) + qname + struct.pack("!HH", qtype, 1)
    for rdata in answers:
        out += b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 300, len(rdata)) + rdata
    return out


def packets(n: int) -> list[tuple[DnsPacket, DnsPacket]]:
    out = []
    for i in range(n):
        name = f"svc-{i % 97}.demo.svc.cluster.local."
        v6 = i % 2 == 1
        qtype = 28 if v6 else 1
        rdata = [bytes(range(16)), bytes(range(16, 32))] if v6 else [b"\xac\x43\x10\x3f", b"\x68\x15\x0b\x10"]
        ts = T0 + i * 50_000
        pod = f"10.244.1.{i % 256}"
        qm = PacketMeta(
            ts, 4026532481, 3, PACKET_OUTGOING, IPPROTO_UDP, pod, 40000 + i % 20000, "10.96.0.10", 53, False
        )
        rm = PacketMeta(
            ts + 1_234_567, 4026532481, 3, PACKET_HOST, IPPROTO_UDP, "10.96.0.10", 53, qm.src, qm.sport, False
        )
        out.append(
            (
                DnsPacket(qm, decode(_wire(i & 0xFFFF, name, qtype, []))),
                DnsPacket(rm, decode(_wire(i & 0xFFFF, name, qtype, rdata))),
            )
        )
    return out  # fmt: skip


def best(fns: tuple[Callable[[], None], ...], n_rows: int, repeat: int) -> list[float]:
    """Best time of each of ``fns``, run in turn (so that a noisy moment hits both alike)."""
    times: list[list[int]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, acc in zip(fns, times, strict=True):
            gc.collect()
            t = time.perf_counter_ns()
            fn()
            acc.append(time.perf_counter_ns() - t)
    return [min(t) / n_rows / 1_000 for t in times]


def scenarios(
    fields: ModuleType, table: ModuleType, filt: ModuleType, sink: ModuleType, pkts: list[Any]
) -> dict[str, Callable[[], None]]:
    enr = K8sEnricher()
    build = fields.build_row
    flat = [p for pair in pkts for p in pair]
    lat = 1_234_567

    def formatter_run(fmt: Any) -> Callable[[], None]:
        format_ = fmt.format

        def run() -> None:
            for q, r in pkts:
                format_(build(q, enr))
                format_(build(r, enr, latency_ns=lat))

        return run

    default = fields.parse_fields(None)
    every = fields.parse_fields(",".join(fields.FIELDS))
    flt = filt.parse_filters(["qr==R,latency_ns>5ms"])
    rows = [build(p, enr, latency_ns=lat if p.msg.qr else None) for p in flat]

    def build_run() -> None:
        for p in flat:
            build(p, enr)

    def filter_run() -> None:
        match = flt.match
        for row in rows:
            match(row)

    def sink_run(fmt: str, chosen: Any, held: bool = False) -> Callable[[], None]:
        def run() -> None:
            with open(os.devnull, "w", encoding="utf-8") as devnull:
                s = sink.TraceSink(devnull, chosen, fmt, None, enr, header=False)
                if held and hasattr(sink, "FLUSH_HOLD_S"):  # as `-o json > file` with the idle hook
                    s = sink.TraceSink(devnull, chosen, fmt, None, enr, header=False, flush=sink.FLUSH_HOLD_S)
                    s.flush_pending()
                for q, r in pkts:
                    s.on_query(q, ROLE_CLIENT, False)
                    s.on_response(Exchange(q, r, ROLE_CLIENT))
                close = getattr(s, "close", None)
                if close is not None:
                    close()

        return run

    return {
        "build_row": build_run,
        "build+columns default": formatter_run(table.ColumnsFormatter(default)),
        "build+columns all": formatter_run(table.ColumnsFormatter(every)),
        "build+json all": formatter_run(table.JsonFormatter(None)),
        "build+json default": formatter_run(table.JsonFormatter(default)),
        "filter qr==R,latency_ns>5ms": filter_run,
        "sink json all, flush/line": sink_run("json", None),
        "sink json all, held": sink_run("json", None, held=True),
        "sink columns, flush/line": sink_run("columns", default),
        "sink columns, held": sink_run("columns", default, held=True),
    }


def check_same(pkts: list[Any]) -> None:
    """Both implementations print the same bytes for the bench's rows."""
    enr = K8sEnricher()
    for sel in (None, new_fields.DEFAULT_FIELDS):
        for fmt in ("json", "columns"):
            outs = []
            for sink in (old_sink, new_sink):
                buf = io.StringIO()
                s = sink.TraceSink(buf, sink.parse_fields(sel) if sel else None, fmt, None, enr)
                for q, r in pkts[:500]:
                    s.on_query(q, ROLE_CLIENT, False)
                    s.on_response(Exchange(q, r, ROLE_CLIENT))
                getattr(s, "close", lambda: None)()
                outs.append(buf.getvalue())
            assert outs[0] == outs[1], (sel, fmt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20_000, help="rows per timing (half queries)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    pkts = packets(args.rows // 2)
    check_same(pkts)
    before = scenarios(old_fields, old_table, old_filter, old_sink, pkts)
    after = scenarios(new_fields, new_table, new_filter, new_sink, pkts)
    print(f"µs per row, best of {args.repeat} x {args.rows} rows (Python {sys.version.split()[0]})")
    print(f"{'scenario':<30} {'before':>8} {'after':>8} {'speed-up':>9}")
    for name in before:
        b, a = best((before[name], after[name]), args.rows, args.repeat)
        print(f"{name:<30} {b:8.2f} {a:8.2f} {b / a:8.1f}x")


if __name__ == "__main__":
    main()
