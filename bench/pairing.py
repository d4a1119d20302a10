"""Cost of the pairing stage per packet: ``Pairer.feed`` of a query, then of its response.

The pending table is kept at a steady size (default 10,000 in-flight queries): each
round feeds a new query and the response to the query sent ``--pending`` rounds
earlier, so every lookup, insertion and deletion happens against a table of that
size and the dict's arrival order churns as it does under load. Messages are real
``exporter.dns.Message`` objects from the decoder, built before timing; the sink does
nothing. A second scenario leaves a share of the queries unanswered so that expiry
runs too. Prints figures; asserts nothing.

    .venv/bin/python bench/pairing.py [--pending 10000] [--rounds 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.dns import decode
from exporter.pairing import Pairer
from exporter.records import (
    IPPROTO_UDP,
    PACKET_HOST,
    PACKET_OUTGOING,
    DnsPacket,
    Exchange,
    PacketMeta,
)

US_PER_NS = 1e-3


class NullSink:
    def on_query(self, pkt: DnsPacket, role: str, retransmit: bool) -> None:
        pass

    def on_response(self, ex: Exchange) -> None:
        pass

    def on_unanswered(self, ex: Exchange) -> None:
        pass

    def on_unmatched(self, pkt: DnsPacket, role: str) -> None:
        pass


def wire(qid: int, name: str, qtype: int, response: bool) -> bytes:
    """A minimal query, or a response with one A answer (compressed owner name)."""
    flags = 0x8180 if response else 0x0100
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\x00"
    out = (
        struct.pack("!HHHHHH", qid, flags, 1, 1 if response else 0, 0, 0)
        + qname
        + struct.pack("!HH", qtype, 1)
    )
    if response:
        out += struct.pack("!HHHIH", 0xC00C, qtype, 1, 30, 4) + bytes([10, 96, 0, 10])
    return out


def build(n: int, t0: int, gap_ns: int) -> tuple[list[DnsPacket], list[DnsPacket]]:
    """``n`` distinct client queries (ports x ids) and their responses, ``gap_ns`` apart."""
    names = [f"svc{i}.default.svc.cluster.local." for i in range(64)]
    queries: list[DnsPacket] = []
    responses: list[DnsPacket] = []
    for i in range(n):
        qid = (i * 7919) & 0xFFFF
        port = 32768 + (i // 65536) % 28000
        client = f"10.244.{(i >> 8) & 0xFF}.{i & 0xFF}"
        name = names[i % len(names)]
        ts = t0 + i * gap_ns
        qm = PacketMeta(
            ts, 4026532000 + i % 50, 2, PACKET_OUTGOING, IPPROTO_UDP, client, port, "10.96.0.10", 53, False
        )
        rm = PacketMeta(
            ts, 4026532000 + i % 50, 2, PACKET_HOST, IPPROTO_UDP, "10.96.0.10", 53, client, port, False
        )
        queries.append(DnsPacket(qm, decode(wire(qid, name, 1, False))))
        responses.append(DnsPacket(rm, decode(wire(qid, name, 1, True))))
    return queries, responses


def steady(pending: int, rounds: int, unanswered_every: int) -> tuple[float, Pairer]:
    """µs per packet over ``rounds`` x (query + response) with ``pending`` in flight."""
    gap = 10_000  # 10 µs between queries: 100k queries/s
    t0 = 1_700_000_000_000_000_000
    queries, responses = build(pending + rounds, t0, gap)
    # response i is fed in round i + pending, stamped then: latency = pending * gap
    for k, r in enumerate(responses):
        r.meta.ts_ns = t0 + (k + pending) * gap
    # timeout a little above the answered latency, so skipped responses expire in the run
    pairer = Pairer(NullSink(), timeout_ns=pending * gap + 50 * gap, max_pending=max(65_536, 2 * pending))
    feed = pairer.feed
    for q in queries[:pending]:
        feed(q)
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        if unanswered_every:
            for i in range(rounds):
                feed(queries[i + pending])
                if i % unanswered_every:
                    feed(responses[i])
        else:
            for i in range(rounds):
                feed(queries[i + pending])
                feed(responses[i])
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    packets = (
        rounds * 2
        if not unanswered_every
        else rounds + rounds - (rounds + unanswered_every - 1) // unanswered_every
    )
    return elapsed * US_PER_NS / packets, pairer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pending", type=int, default=10_000, help="queries in flight (steady table size)")
    ap.add_argument("--rounds", type=int, default=200_000, help="query+response rounds timed per repeat")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    head = f"python {sys.version.split()[0]}, pending {args.pending}, {args.rounds} rounds"
    print(f"{head}, best of {args.repeat}")
    for label, every in (("all answered", 0), ("1 in 10 unanswered (expiry runs)", 10)):
        runs = []
        for _ in range(args.repeat):
            us, pairer = steady(args.pending, args.rounds, every)
            runs.append(us)
        s = pairer.stats
        print(
            f"  {label:34s} best {min(runs):.3f} µs/packet  median {sorted(runs)[len(runs) // 2]:.3f}"
            f"  (last run: pending {s.pending}, paired {s.paired}, unanswered {s.unanswered},"
            f" unmatched {s.unmatched}, evicted {s.evicted})"
        )


if __name__ == "__main__":
    main()
