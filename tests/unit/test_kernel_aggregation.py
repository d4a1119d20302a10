"""In-kernel aggregation, the user-space half: when it is allowed, and how the kernel's
cumulative per-CPU histograms become metric series (the kernel half runs in
tests/lab/test_kernel_aggregation.py against the real program)."""

from __future__ import annotations

import io
import socket
from bisect import bisect_left

from exporter.capture.events import AGG_BUCKETS, AGG_KEY
from exporter.enrich import PlainEnricher
from exporter.kpairing import KernelPairedEngine, aggregation_threshold
from exporter.output.sink import TraceSink
from exporter.telemetry import semconv as sc
from exporter.telemetry.sink import TelemetrySink
from tests.unit.test_resolution import MemoryExporter

NS = 4026531840
SERVER = "198.18.1.1"
SERVER6 = "fd00:1::1"


def sink(**kw: object) -> TelemetrySink:
    return TelemetrySink(PlainEnricher("node"), metric_interval_s=3600.0, **kw)  # type: ignore[arg-type]


def test_aggregation_only_when_every_sink_just_counts_fast_answers() -> None:
    assert aggregation_threshold([sink(sample_ratio=0.0, slow_ns=50_000_000)]) == 50_000_000
    # no span exporter at all: spans are never built, the metrics are all it makes
    assert aggregation_threshold([sink(sample_ratio=1.0)]) == 100_000_000
    # a span ratio above 0 needs every exchange, and so do top-N names and the table
    assert aggregation_threshold([sink(sample_ratio=0.01, span_exporter=MemoryExporter())]) is None
    assert aggregation_threshold([sink(sample_ratio=0.0, top_names=10)]) is None
    assert aggregation_threshold([sink(sample_ratio=0.0), TraceSink(io.StringIO())]) is None
    assert aggregation_threshold([]) is None
    assert aggregation_threshold([sink(sample_ratio=0.0, slow_ns=0)]) is None  # every exchange is slow
    # two counting sinks: the lower threshold
    assert aggregation_threshold([sink(sample_ratio=0.0, slow_ns=7), sink(sample_ratio=0.0, slow_ns=5)]) == 5


class FakeAggCapture:
    """What KernelPairedEngine reads of EbpfCapture with aggregation: the agg map, summed over CPUs."""

    wall_offset_ns = 0
    aggregating = True

    def __init__(self) -> None:
        self.map: dict[bytes, tuple[int, ...]] = {}

    def aggregates(self) -> dict[bytes, tuple[int, ...]]:
        return dict(self.map)

    def pending_entries(self) -> list[tuple[bytes, bytes]]:
        return []

    def counters(self) -> dict[str, int]:
        return {}

    def count(self, key: bytes, *latencies_ns: int, retransmits: int = 0) -> None:
        """What agg_add() does for each exchange (cumulative, never reset)."""
        c, pk, s, lo, hi, *b = self.map.get(key, (0, 0, 0, 0, 0, *([0] * AGG_BUCKETS)))
        for lat in latencies_ns:
            lo = lat if c == 0 or lat < lo else lo
            hi = max(hi, lat)
            c, pk, s = c + 1, pk + 2, s + lat
            b[min(sum(1 for x in sc.LOOKUP_DURATION_BUCKETS if lat > round(x * 1e9)), AGG_BUCKETS - 1)] += 1
        self.map[key] = (c, pk + retransmits, s, lo, hi, *b)


def agg_key(server: str, port: int, qtype: int, role: int, v6: bool = False) -> bytes:
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    raw = socket.inet_pton(fam, server).ljust(16, b"\0")
    return AGG_KEY.pack(NS, raw, port, qtype, role, 6 if v6 else 4)


def test_pulls_hand_each_series_growth_to_the_metrics_once() -> None:
    s = sink(sample_ratio=0.0)
    eng = KernelPairedEngine([s])
    cap = FakeAggCapture()
    eng.capture = cap  # type: ignore[assignment]
    a = agg_key(SERVER, 53, 1, 0)
    aaaa6 = agg_key(SERVER6, 53, 28, 1, v6=True)
    cap.count(a, 80_000, 100_000, 300_000)  # 100 µs sits exactly on the first bound (le)
    cap.count(aaaa6, 2_000_000, retransmits=1)
    assert eng.pull_aggregates() == 4
    assert eng.pull_aggregates() == 0  # nothing new: nothing counted twice
    cap.count(a, 5_000_000)
    eng.advance(1)  # the live loop's tick pulls too
    snap = s.aggregates.snapshot()
    # attributes as on_response gives them: no error.type, the raw endpoint, udp, no k8s names
    ka = ("client", "A", "NOERROR", "", SERVER, f"r/{SERVER}:53", "udp", "", "")
    k6 = ("server", "AAAA", "NOERROR", "", SERVER6, f"r/[{SERVER6}]:53", "udp", "", "")
    assert set(snap.lookup) == {ka, k6}
    h = snap.lookup[ka]
    n = len(sc.LOOKUP_DURATION_BUCKETS) + 1
    lat_s = [0.00008, 0.0001, 0.0003, 0.005]
    expect = [0] * n
    for x in lat_s:
        expect[bisect_left(sc.LOOKUP_DURATION_BUCKETS, x)] += 1
    assert h[:n] == expect  # the same buckets record_lookup() would have filled
    assert h[n + 1] == 4 and abs(h[n] - sum(lat_s)) < 1e-12
    assert (h[n + 2], h[n + 3]) == (0.00008, 0.005)
    assert snap.lookup[k6][n + 1] == 1
    # packets seen: 2 per exchange plus retransmissions; pairs in the stats
    assert eng.segments == 2 * 5 + 1
    assert eng.kernel_aggregated == 5 and eng.pairing_stats().paired == 5
