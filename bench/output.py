"""Cost of ``dnsotel trace`` output per row: building the row and formatting it.

Scenarios, timed on the same packets in one run:

- build+columns: ``build_row`` + ``ColumnsFormatter.format``, default and every field;
- build+json: ``build_row`` + ``JsonFormatter.format``, every field (``-o json``) and the
  default fields (``-o json --fields`` = the columns' default);
- sink: ``TraceSink.on_query``/``on_response`` writing to ``/dev/null`` (row, format,
  write), flushing every line (a terminal) or, "held", as ``-o json > file`` does once
  the capture loop calls ``flush_pending``;
- filter: ``qr==R,latency_ns>5ms`` evaluated on a row.

Packets are real decoder output (a query and its response with two addresses, half of
them AAAA over IPv6), the enricher a Kubernetes-like name table. Prints microseconds per
row (best of ``--repeat``); asserts nothing.

    .venv/bin/python bench/output.py [--rows 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import os
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
from exporter.enrich import Workload, raw_endpoint
from exporter.records import (
    PACKET_HOST,
    PACKET_OUTGOING,
    ROLE_CLIENT,
    DnsPacket,
    Exchange,
)
from tests import dnsmsg

SEC = 1_000_000_000
T0 = 1_725_030_921 * SEC + 137_120_000
KUBE_DNS = ("10.96.0.10", 53)
ADDRS = ("172.67.16.63", "104.21.11.16")


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


def packets(n: int) -> list[tuple[DnsPacket, DnsPacket]]:
    out = []
    for i in range(n):
        name = f"svc-{i % 97}.demo.svc.cluster.local."
        v6 = i % 2 == 1
        addrs = ("1:203:405:607:809:a0b:c0d:e0f", "1011:1213:1415:1617:1819:1a1b:1c1d:1e1f") if v6 else ADDRS
        q = dnsmsg.query(name, "AAAA" if v6 else "A", i & 0xFFFF)
        ts = T0 + i * 50_000
        client = (f"10.244.1.{i % 256}", 40000 + i % 20000)
        qm = dnsmsg.meta(ts, 4026532481, PACKET_OUTGOING, client, KUBE_DNS, ifindex=3)
        rm = dnsmsg.meta(ts + 1_234_567, 4026532481, PACKET_HOST, KUBE_DNS, client, ifindex=3)
        out.append((dnsmsg.packet(qm, q), dnsmsg.packet(rm, dnsmsg.response(q, addrs=addrs, ttl=300))))
    return out


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20_000, help="rows per timing (half queries)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    pkts = packets(args.rows // 2)
    runs = scenarios(new_fields, new_table, new_filter, new_sink, pkts)
    print(f"µs per row, best of {args.repeat} x {args.rows} rows (Python {sys.version.split()[0]})")
    print(f"{'scenario':<30} {'µs/row':>8}")
    for name, run in runs.items():
        (us,) = best((run,), args.rows, args.repeat)
        print(f"{name:<30} {us:8.2f}")


if __name__ == "__main__":
    main()
