"""The exporter under real DNS load: loss and CPU next to the DNS server it watches (DESIGN §7).

Run as root: ``.venv/bin/python bench/capture.py [--rates 5000,20000,50000] [--seconds 8]
[--resolvers dnsmasq,unbound] [--modes trace,run] [--pairing user,kernel] [--profile]``.
Prints figures; asserts nothing.

Set-up: the test lab (tests/lab/lab.py: client, resolver and upstream namespaces, no routes
out); the resolver with its cache on, warmed with a fixed set of names in ``ok.lab.``, so
under load it answers from cache and the upstream sees nothing. dnsperf runs inside the
client namespace against the resolver's lab address, at a fixed rate (``-Q``) for a fixed
time (``-l``). The exporter captures in the client's and the resolver's namespace:

* ``trace``: ``dnsotel trace -o json`` to /dev/null (capture, pairing, one JSON row per packet);
* ``run``: ``dnsotel run`` exporting to a closed localhost OTLP port with
  ``DNSOTEL_SPAN_SAMPLE_RATIO=0`` (capture, pairing, local metrics; spans only for anomalies),
  once per ``--pairing`` mode (``user``: pairing.py; ``kernel``: ``DNSOTEL_PAIRING=kernel``,
  one ring record per answered exchange).

Per run: dnsperf's own counts; packets on the wire the exporter should see (each query and
each response crosses both observed namespaces: 2 x sent + 2 x completed); packets it saw and
the kernel's lost count (its summary line); CPU as a share of one core from /proc/PID/stat
(utime+stime, all threads) over the dnsperf window, for the exporter and the DNS server.
``--profile`` samples the exporter with py-spy at the 20k rate and prints where time goes.

The socket filter runs in the kernel in the context of whoever sends or receives the packet,
so its cost is billed to dnsperf and the DNS server, not to the exporter. The bench turns on
the kernel's BPF run-time statistics (``kernel.bpf_stats_enabled``) for its duration and
reads the run time of the exporter's programs (the per-namespace dispatchers, which include
the tail-called filter) over the window: the "BPF" column. "(exporter + BPF) / server" charges
all of it to the exporter and still leaves it in the server's figure: the conservative ratio.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.capture.ebpf import _bpf
from tests.lab.lab import Lab, Resolver

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
NAMES = 100
SUMMARY = re.compile(
    r"dnsotel: (\d+) packets seen, (\d+) lost in the kernel, (\d+) undecodable, (\d+) pairs, (\d+) unanswered"
)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (every thread), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


_BPF_PROG_GET_NEXT_ID, _BPF_PROG_GET_FD_BY_ID, _BPF_OBJ_GET_INFO_BY_FD = 11, 13, 15
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def bpf_run_time_ns(name: bytes = b"dnsotel_disp") -> int:
    """Summed run_time_ns of the loaded BPF programs called ``name`` (bpf_prog_info: name at
    64, run_time_ns at 192); zero unless kernel.bpf_stats_enabled is on."""
    total, prog_id = 0, 0
    while True:
        attr = ctypes.create_string_buffer(struct.pack("<II", prog_id, 0), 16)
        try:
            _bpf(_BPF_PROG_GET_NEXT_ID, attr)
        except OSError:  # ENOENT: no program after prog_id
            return total
        prog_id = struct.unpack_from("<I", attr, 4)[0]
        try:
            fd = _bpf(_BPF_PROG_GET_FD_BY_ID, ctypes.create_string_buffer(struct.pack("<I", prog_id), 16))
        except OSError:  # unloaded meanwhile
            continue
        try:
            info = ctypes.create_string_buffer(232)
            attr = ctypes.create_string_buffer(struct.pack("<IIQ", fd, len(info), ctypes.addressof(info)), 16)
            _bpf(_BPF_OBJ_GET_INFO_BY_FD, attr)
            if info.raw[64:80].rstrip(b"\0") == name:
                total += struct.unpack_from("<Q", info, 192)[0]
        finally:
            os.close(fd)


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    return (sum(vals) - idle) / TICK, sum(vals) / TICK


def dnsotel() -> list[str]:
    script = Path(sys.executable).parent / "dnsotel"
    return [str(script)] if script.exists() else [sys.executable, "-m", "exporter.cli"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Result:
    resolver: str
    mode: str
    rate: int
    sent: int = 0
    completed: int = 0
    qps: float = 0.0
    expected: int = 0
    seen: int = 0
    lost: int = 0
    undecodable: int = 0
    pairs: int = 0
    unanswered: int = 0
    exporter_cpu: float = 0.0
    bpf_cpu: float = 0.0  # the socket filter's run time, in cores (billed to senders/receivers)
    server_cpu: float = 0.0
    wall: float = 0.0
    others_cpu: float = 0.0  # every other process on the machine, in cores (it is shared)
    profile: str = ""


def start_exporter(mode: str, lab: Lab, tmp: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """``mode``: trace, or run-user / run-kernel (the pairing)."""
    netns = ["--netns", lab.client.ns.path, "--netns", lab.resolver.path]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DNSOTEL_", "OTEL_"))}
    if mode == "trace":
        argv = [*dnsotel(), "trace", "-o", "json", *netns]
    else:
        argv = [*dnsotel(), "run", *netns]
        env["DNSOTEL_PAIRING"] = mode.partition("-")[2] or "user"
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
        env["DNSOTEL_SPAN_SAMPLE_RATIO"] = "0"
    err = tmp / f"exporter-{mode}-{time.monotonic_ns()}.err"
    with open(err, "wb") as errf, open(os.devnull, "wb") as null:
        proc = subprocess.Popen(argv, stdout=null, stderr=errf, stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while '"msg": "capturing"' not in err.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"exporter did not start:\n{err.read_text(errors='replace')}")
        time.sleep(0.05)
    return proc, err


def dnsperf(lab: Lab, server: str, queryfile: Path, rate: int, seconds: int) -> dict[str, float]:
    argv = ["dnsperf", "-s", server, "-d", str(queryfile), "-l", str(seconds), "-Q", str(rate)]
    argv += ["-q", "2000", "-c", "4", "-t", "2"]
    out = lab.exec("client", argv, timeout=seconds + 30).stdout
    stats: dict[str, float] = {}
    for key, pat in (
        ("sent", r"Queries sent:\s+(\d+)"),
        ("completed", r"Queries completed:\s+(\d+)"),
        ("lost", r"Queries lost:\s+(\d+)"),
        ("qps", r"Queries per second:\s+([\d.]+)"),
    ):
        m = re.search(pat, out)
        if not m:
            raise RuntimeError(f"unexpected dnsperf output:\n{out}")
        stats[key] = float(m.group(1))
    return stats


def profile_start(pid: int, seconds: int, tmp: Path) -> tuple[subprocess.Popen[bytes], Path] | None:
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        print("py-spy not installed (.venv/bin/pip install py-spy): no profile", file=sys.stderr)
        return None
    out = tmp / f"profile-{pid}.txt"
    argv = [str(spy), "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "-f", "raw", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out


def summarize_profile(path: Path, top: int = 14) -> str:
    """Share of samples per function: self time, and inclusive time of the pipeline stages."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        own[_short(frames[-1])] += count
        for f in set(map(_short, frames)):
            incl[f] += count
    if not total:
        return "(no samples)"
    lines = [f"  {total} samples; self time (top {top}):"]
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    stages = ("on_event", "decode_event", "on_segment", "decode ", "feed ", "on_query", "on_response")
    lines.append("  inclusive, by stage:")
    for f, c in incl.most_common():
        if any(s in f + " " for s in stages):
            lines.append(f"    {100 * c / total:5.1f}%  {f}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    # py-spy raw frames: "function (path/file.py:line)"
    m = re.match(r"(.*?) \((.*?):\d+\)", frame)
    if not m:
        return frame
    return f"{m.group(1)} ({Path(m.group(2)).name})"


def one_run(
    lab: Lab, res: Resolver, kind: str, mode: str, rate: int, seconds: int, queryfile: Path, profile: bool
) -> Result:
    r = Result(kind, mode, rate)
    proc, err = start_exporter(mode, lab, lab.tmp)
    spy = None
    try:
        time.sleep(0.5)
        m0 = machine_busy()
        b0, e0, s0, t0 = bpf_run_time_ns(), cpu_seconds(proc.pid), cpu_seconds(res.pid), time.monotonic()
        if profile:
            spy = profile_start(proc.pid, seconds, lab.tmp)
        stats = dnsperf(lab, res.v4, queryfile, rate, seconds)
        b1, e1, s1, t1 = bpf_run_time_ns(), cpu_seconds(proc.pid), cpu_seconds(res.pid), time.monotonic()
        m1 = machine_busy()
        time.sleep(0.5)  # let the exporter drain the ring before it is stopped
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if spy is not None:
            spy[0].wait(60)
    wall = r.wall = t1 - t0
    r.sent, r.completed, r.qps = int(stats["sent"]), int(stats["completed"]), stats["qps"]
    r.expected = 2 * r.sent + 2 * r.completed
    m = SUMMARY.search(err.read_text(errors="replace"))
    if m is None:
        raise RuntimeError(f"no summary from the exporter:\n{err.read_text(errors='replace')}")
    r.seen, r.lost, r.undecodable, r.pairs, r.unanswered = (int(m.group(i)) for i in (1, 2, 3, 4, 5))
    r.exporter_cpu = (e1 - e0) / wall
    r.server_cpu = (s1 - s0) / wall
    r.bpf_cpu = (b1 - b0) / 1e9 / wall
    r.others_cpu = (m1[0] - m0[0]) / wall - r.exporter_cpu - r.server_cpu  # includes dnsperf
    if spy is not None and spy[1].exists():
        r.profile = summarize_profile(spy[1])
    return r


def table(results: list[Result]) -> str:
    head = (
        "| resolver | exporter | rate q/s | sent (dnsperf) | answered | packets on the wire | "
        "packets seen | lost in kernel | pairs | unanswered | exporter CPU | CPU µs / packet seen | "
        "CPU µs / exchange | BPF | DNS server CPU | exporter / server | (exporter + BPF) / server | "
        "dnsperf + other processes |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        ratio = r.exporter_cpu / r.server_cpu if r.server_cpu > 0 else float("inf")
        ratio_bpf = (r.exporter_cpu + r.bpf_cpu) / r.server_cpu if r.server_cpu > 0 else float("inf")
        per_pkt = 1e6 * r.exporter_cpu * r.wall / r.seen if r.seen else 0.0
        # each answered query is two exchanges (client side and resolver side)
        per_ex = 1e6 * r.exporter_cpu * r.wall / (2 * r.completed) if r.completed else 0.0
        lines.append(
            f"| {r.resolver} | {r.mode} | {r.rate:,} | {r.sent:,} | {r.completed:,} | {r.expected:,} | "
            f"{r.seen:,} | {r.lost:,} | {r.pairs:,} | {r.unanswered:,} | {100 * r.exporter_cpu:.0f} % | "
            f"{per_pkt:.1f} | {per_ex:.1f} | {100 * r.bpf_cpu:.1f} % | "
            f"{100 * r.server_cpu:.0f} % | {ratio:.2f} | {ratio_bpf:.2f} | {100 * r.others_cpu:.0f} % |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="5000,20000,50000")
    ap.add_argument("--seconds", type=int, default=8, help="dnsperf -l per run")
    ap.add_argument("--resolvers", default="dnsmasq,unbound")
    ap.add_argument("--modes", default="trace,run")
    ap.add_argument("--pairing", default="user,kernel", help="pairing modes of `run`: user, kernel or both")
    ap.add_argument("--profile", action="store_true", help="py-spy the exporter in the 20k runs")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/capture.py needs root (namespaces, eBPF)", file=sys.stderr)
        return 1
    rates = [int(x) for x in args.rates.split(",")]
    results: list[Result] = []
    stats_before = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        run_all(args, rates, results)
    finally:
        STATS.write_text(stats_before)
    print()
    print(table(results))
    return 0


def run_all(args: argparse.Namespace, rates: list[int], results: list[Result]) -> None:
    with Lab() as lab:
        lab.start_upstream()
        queryfile = Path(tempfile.mkstemp(prefix="queries-", dir=lab.tmp)[1])
        names = [f"n{i}.ok.lab." for i in range(NAMES)]
        queryfile.write_text("".join(f"{n} A\n" for n in names))
        for kind in args.resolvers.split(","):
            res: Resolver = (
                lab.start_dnsmasq(cache=True) if kind == "dnsmasq" else lab.start_unbound(cache=True)
            )
            lab.query("client", *names, server=res.v4, timeout=120)  # warm the cache
            before = len(lab.upstream_queries())
            modes = [
                m2
                for m in args.modes.split(",")
                for m2 in ([m] if m != "run" else [f"run-{p}" for p in args.pairing.split(",")])
            ]
            for mode in modes:
                for rate in rates:
                    r = one_run(
                        lab, res, kind, mode, rate, args.seconds, queryfile, args.profile and rate == 20000
                    )
                    results.append(r)
                    print(table([r]).splitlines()[-1], flush=True)
                    if r.profile:
                        print(r.profile, flush=True)
            print(f"# {kind}: upstream queries during the runs: {len(lab.upstream_queries()) - before}")
            res.stop()


if __name__ == "__main__":
    sys.exit(main())
