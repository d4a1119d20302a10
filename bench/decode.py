"""Print the cost of decoding one DNS message, ours against dnspython's ``from_wire``.

Run: ``.venv/bin/python bench/decode.py``. Messages are built with dnspython and look
like the traffic of a Kubernetes node (cluster names, EDNS from the client, answers
compressed against the question). Figures are the best of several repeats (µs/message).
The speed-up compares dnspython with our decode *and* reading the answer fields.
"""

from __future__ import annotations

import struct
import sys
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from exporter.dns import decode


def messages() -> dict[str, bytes]:
    name = "my-svc.my-namespace.svc.cluster.local."
    query = dns.message.make_query(name, "A", use_edns=0, payload=1232)
    query.id = 0x1234

    two_a = dns.message.make_response(query)
    two_a.flags |= dns.flags.RA | dns.flags.AA
    two_a.answer.append(dns.rrset.from_text(name, 5, "IN", "A", "10.244.1.17", "10.244.2.33"))

    q6 = dns.message.make_query("www.example.com.", "AAAA", use_edns=0, payload=1232)
    chain = dns.message.make_response(q6)
    chain.flags |= dns.flags.RA
    chain.answer.append(
        dns.rrset.from_text("www.example.com.", 300, "IN", "CNAME", "www.example.com.cdn.net.")
    )
    chain.answer.append(dns.rrset.from_text("www.example.com.cdn.net.", 60, "IN", "CNAME", "edge7.cdn.net."))
    chain.answer.append(
        dns.rrset.from_text(
            "edge7.cdn.net.", 20, "IN", "AAAA", "2606:4700::6810:84e5", "2606:4700::6810:85e5"
        )
    )

    qnx = dns.message.make_query("nope.default.svc.cluster.local.", "A", use_edns=0, payload=1232)
    nx = dns.message.make_response(qnx)
    nx.set_rcode(dns.rcode.NXDOMAIN)
    nx.flags |= dns.flags.AA | dns.flags.RA
    nx.authority.append(
        dns.rrset.from_text(
            "cluster.local.",
            30,
            "IN",
            "SOA",
            "ns.dns.cluster.local. hostmaster.cluster.local. 1700000000 7200 1800 86400 30",
        )
    )
    return {
        "A query + EDNS": query.to_wire(),
        "response, 2 A answers": two_a.to_wire(),
        "AAAA response, CNAME chain": chain.to_wire(),
        "NXDOMAIN + SOA authority": nx.to_wire(),
    }


def worst_cases() -> dict[str, bytes]:
    """Near-64 KB messages built to maximise the decoder's work (read, not asserted)."""
    long_name = b"\x01a" * 127 + b"\x00"  # 127 labels, 255 octets
    offsets = [12 + i * (len(long_name) + 4) for i in range(36)]
    questions = (long_name + b"\x00\x01\x00\x01") * len(offsets)
    null_rr = struct.pack("!HHIH", 10, 1, 0, 0)
    # Every answer's owner points at a different label inside the long names.
    suffix_rrs = b"".join(
        struct.pack("!H", 0xC000 | (o + 2 * k)) + null_rr for o in offsets for k in range(127)
    )
    suffix = struct.pack("!6H", 1, 0x8180, len(offsets), len(offsets) * 127, 0, 0) + questions + suffix_rrs
    count = (65000 - 17) // 11
    minimal = (
        struct.pack("!6H", 1, 0x8180, 1, count, 0, 0) + b"\x00\x00\x01\x00\x01" + (b"\x00" + null_rr) * count
    )
    return {"64 KB, pointers into long names": suffix, "64 KB, minimal 11-byte RRs": minimal}


def decode_with_answers(wire: bytes) -> list[str]:
    """Decode, then read the answer fields (built on that first access)."""
    m = decode(wire)
    return m.addresses + m.cnames if m.min_ttl is not None else m.addresses


def per_call_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def main() -> None:
    # "decode": what every message costs (header, question, EDNS, every RR validated);
    # "+answers": then reading addresses/cnames/min_ttl, built on that first access (what a
    # message costs when a span or a trace row is built for it).
    head = f"{'message':30} {'bytes':>5} {'decode µs':>10} {'+answers µs':>12}"
    print(f"{head} {'dnspython µs':>13} {'speed-up':>9}")
    for label, wire in messages().items():
        ours = per_call_us(partial(decode, wire), 20000)
        full = per_call_us(partial(decode_with_answers, wire), 20000)
        theirs = per_call_us(partial(dns.message.from_wire, wire), 1000)
        print(f"{label:30} {len(wire):5d} {ours:10.2f} {full:12.2f} {theirs:13.1f} {theirs / full:8.0f}x")
    print()
    print(
        f"{'worst-case shape':34} {'bytes':>6} {'RRs':>5} {'decode ms':>10} {'+answers ms':>12} {'µs/KB':>7}"
    )
    for label, wire in worst_cases().items():
        rrs = len(decode(wire).answers)
        ms = per_call_us(partial(decode, wire), 3) / 1000
        full_ms = per_call_us(partial(decode_with_answers, wire), 3) / 1000
        print(
            f"{label:34} {len(wire):6d} {rrs:5d} {ms:10.2f} {full_ms:12.2f}"
            f" {full_ms * 1000 / (len(wire) / 1024):7.0f}"
        )


if __name__ == "__main__":
    main()
