"""Capture path figures: program load, attach cost per namespace, ring buffer drain rate.

Run as root: ``.venv/bin/python bench/ringbuf.py [--events N] [--netns N]``. Creates
network namespaces named ``dnsotel-bench-<pid>-*`` and removes them by name. Traffic
stays on one namespace's loopback. Prints figures; asserts nothing.

Each drain figure: fill the ring with a burst of events while nobody reads, then time
one consumer draining it on one core (so the figure is the consumer's cost alone).
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.capture.ebpf import EbpfCapture
from exporter.capture.events import DnsEventHeader, decode_event
from exporter.records import Segment

SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
q = bytes.fromhex("123401000001000000000000076578616d706c65036c61620000010001")
for i in range(int(sys.argv[1])):
    s.sendto(q, ("127.0.0.1", 53))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000, help="events per drain run (2 per packet on lo)")
    ap.add_argument("--netns", type=int, default=50, help="namespaces for the attach figure")
    args = ap.parse_args()
    prefix = f"dnsotel-bench-{os.getpid()}"
    names = [f"{prefix}-{i}" for i in range(args.netns)]
    made: list[str] = []
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True)
            made.append(n)
        subprocess.run(["ip", "-n", names[0], "link", "set", "lo", "up"], check=True)

        t = time.monotonic()
        cap = EbpfCapture(lambda s: None, ringbuf_pages=16384)  # 64 MiB: holds a whole burst
        print(f"compile + load (bcc, once per process): {time.monotonic() - t:.2f} s")

        inodes = [os.stat(f"/var/run/netns/{n}").st_ino for n in names]
        t = time.perf_counter()
        for n, ino in zip(names, inodes, strict=True):
            cap.attach(f"/var/run/netns/{n}", ino)
        dt = time.perf_counter() - t
        print(f"attach: {len(names)} namespaces in {dt * 1e3:.1f} ms = {dt / len(names) * 1e3:.3f} ms each")
        t = time.perf_counter()
        for ino in inodes[1:]:
            cap.detach(ino)
        print(f"detach: {(time.perf_counter() - t) / max(1, len(names) - 1) * 1e3:.3f} ms each")

        bpf = cap._bpf

        def run(label: str, drain: Callable[[], int]) -> None:
            lost0 = cap.lost()
            subprocess.run(
                ["ip", "netns", "exec", names[0], sys.executable, "-c", SENDER, str(args.events // 2)],
                check=True,
            )
            t0 = time.perf_counter()
            n = drain()
            dt = time.perf_counter() - t0
            lost = cap.lost() - lost0
            print(
                f"  {label:56s} {n:7d} ev {dt / n * 1e6:6.2f} µs/ev {n / dt / 1e3:6.0f} k ev/s  lost {lost}"
            )

        print("drain, one core:")
        # 1. bcc: libbpf's consumer calling a Python ctypes callback per event
        count = [0]
        impl: list[Callable[[int, int], None]] = [lambda data, size: None]

        def cb(ctx: object, data: int, size: int) -> int:
            count[0] += 1
            impl[0](data, size)
            return 0

        bpf["events"].open_ring_buffer(cb)

        def via_bcc(fn: Callable[[int, int], None]) -> int:
            impl[0] = fn
            count[0] = 0
            bpf.ring_buffer_consume()
            return count[0]

        run("bcc callback, doing nothing", lambda: via_bcc(lambda d, s: None))
        run(
            "bcc callback + string_at + struct decode -> Segment",
            lambda: via_bcc(lambda d, s: (decode_event(ctypes.string_at(d, s), 0, 0), None)[1]),
        )
        ptr = ctypes.POINTER(DnsEventHeader)

        def fields(d: int, s: int) -> None:
            ev = ctypes.cast(d, ptr).contents
            _ = (ev.ts_ns, ev.netns, ev.ifindex, ev.sport, ev.dport, ev.cap_len, bytes(ev.saddr))

        run("bcc callback + ctypes mirror, 7 fields (no Segment)", lambda: via_bcc(fields))

        # 2. libbpf's consumer, our ctypes callback registered directly (what EbpfCapture uses)
        run("EbpfCapture.poll: direct callback + string_at + decode", lambda: cap.poll(0))

        # 3. for comparison: the ring mmap-ed and walked in Python (rejected: slower)
        walker = MmapWalker(bpf["events"].map_fd, 16384 * mmap.PAGESIZE)
        run("mmap walk in Python, no decode", lambda: walker.drain(None, 0))
        run("mmap walk in Python + decode -> Segment", lambda: walker.drain(decode_event, cap.wall_offset_ns))
        walker.close()
        print(f"kernel counters: {cap.counters()}")
        cap.close()
    finally:
        for n in made:
            subprocess.run(["ip", "netns", "del", n], check=False)


class MmapWalker:
    """A BPF ring buffer consumer in pure Python over mmap (x86 ordering assumed: bench only)."""

    def __init__(self, fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        self.mask = size - 1
        self.cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self.prod = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self.view = memoryview(self.prod)

    def drain(self, decode: Callable[[memoryview, int, int], Segment] | None, wall: int) -> int:
        u64, u32, page, data = struct.Struct("<Q"), struct.Struct("<I"), mmap.PAGESIZE, self.view
        cons = u64.unpack_from(self.cons, 0)[0]
        prod = u64.unpack_from(data, 0)[0]
        n = 0
        while cons < prod:
            off = page + (cons & self.mask)
            hdr = u32.unpack_from(data, off)[0]
            if hdr & (1 << 31):
                break
            cons += ((hdr & 0x3FFFFFFF) + 8 + 7) & ~7
            if not hdr & (1 << 30):
                if decode is not None:
                    decode(data, off + 8, wall)
                n += 1
            if not n & 63:
                u64.pack_into(self.cons, 0, cons)
        u64.pack_into(self.cons, 0, cons)
        return n

    def close(self) -> None:
        self.view.release()
        self.prod.close()
        self.cons.close()


if __name__ == "__main__":
    main()
