"""The live capture loop shared by ``dnsotel trace`` and ``dnsotel run``.

One thread does everything per packet: poll the ring buffer, reassemble, decode, pair,
hand to the sinks; a few times a second it expires pending queries by wall time, and
once a second it rescans network namespaces. Sinks that export (spans, metrics) do
their slow work on their own threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from exporter.config import Settings
from exporter.pipeline import Engine, sink_hooks

if TYPE_CHECKING:
    from exporter.capture.ebpf import EbpfCapture

log = logging.getLogger(__name__)

ADVANCE_EVERY_NS = 100_000_000  # expire pending queries at least 10 times a second


@dataclass(slots=True)
class LiveHealth:
    """What the exporter knows about its own health, read by the metrics at collection time."""

    engine: Engine
    capture: EbpfCapture | None = None
    # the capture's last values, kept when it closes: the final metric export (at shutdown)
    # runs after the capture is closed, when its kernel counters can no longer be read
    lost_at_close: int | None = None
    attached_at_close: int | None = None

    def packets(self) -> int:
        return self.engine.segments

    def lost(self) -> int:
        if self.lost_at_close is not None:
            return self.lost_at_close
        return self.capture.lost() if self.capture is not None else 0

    def decode_errors(self) -> dict[str, int]:
        return dict(self.engine.decode_errors)

    def pending(self) -> int:
        return self.engine.pairing_stats().pending

    def evicted(self) -> int:
        return self.engine.pairing_stats().evicted

    def netns_attached(self) -> int:
        if self.attached_at_close is not None:
            return self.attached_at_close
        return len(self.capture.attached) if self.capture is not None else 0


def bind_health(sinks: Sequence[object], health: LiveHealth) -> None:
    """Give sinks that report the exporter's own health (the telemetry sink) its sources."""
    from exporter.telemetry import semconv as sc

    sources: dict[str, Callable[[], object]] = {
        sc.METRIC_CAPTURE_PACKETS: health.packets,
        sc.METRIC_CAPTURE_LOST: health.lost,
        sc.METRIC_DECODE_ERRORS: health.decode_errors,
        sc.METRIC_PAIRS_PENDING: health.pending,
        sc.METRIC_PAIRS_EVICTED: health.evicted,
        sc.METRIC_NETNS_ATTACHED: health.netns_attached,
    }
    for sink in sinks:
        registry = getattr(sink, "health", None)
        register = getattr(registry, "register", None)
        if register is None:
            continue
        for name, fn in sources.items():
            register(name, fn)


def run_live(
    settings: Settings,
    sinks: Sequence[object],
    *,
    err: TextIO,
    stop: threading.Event | None = None,
    on_ready: Callable[[LiveHealth], None] | None = None,
    netns_filter: Callable[[dict[int, str]], dict[int, str]] | None = None,
    pairing: str = "user",
) -> int:
    """``pairing="kernel"`` pairs UDP in the kernel (exporter/kpairing.py); ``trace`` keeps
    ``"user"``: it shows a row per query packet, which kernel pairing never sees."""
    from exporter.capture.ebpf import Aggregation, CaptureError, EbpfCapture
    from exporter.cli import StartupError, Stopper
    from exporter.kpairing import KernelPairedEngine, aggregation_threshold
    from exporter.netns import NetnsWatcher
    from exporter.telemetry import semconv as sc

    kengine: KernelPairedEngine | None = None
    engine: Engine
    aggregate: Aggregation | None = None
    if pairing == "kernel" and (slow_ns := aggregation_threshold(sinks)) is not None:
        # every sink only counts fast NOERROR answers: the kernel counts them itself
        aggregate = Aggregation(slow_ns, tuple(round(b * 1e9) for b in sc.LOOKUP_DURATION_BUCKETS))
    if pairing == "kernel":
        kengine = KernelPairedEngine(
            list(sinks),  # type: ignore[arg-type]
            timeout_ns=settings.timeout_ns,
            max_pending=settings.max_pending,
        )
        engine = kengine
    else:
        engine = Engine(
            list(sinks),  # type: ignore[arg-type]
            timeout_ns=settings.timeout_ns,
            max_pending=settings.max_pending,
        )
    health = LiveHealth(engine)
    if stop is None:
        stopper = Stopper()
        stopper.install()
        stop = stopper.event
    try:
        capture = EbpfCapture(
            engine.on_segment,
            dns_ports=sorted(settings.ports),
            max_payload=settings.snaplen,
            on_paired=kengine.on_paired if kengine is not None else None,
            max_pending=settings.max_pending,
            aggregate=aggregate,
        )
    except CaptureError as exc:
        raise StartupError(str(exc)) from None
    if kengine is not None:
        kengine.bind(capture)
    health.capture = capture
    watcher = NetnsWatcher(
        capture.attach,
        capture.detach,
        proc_root=settings.proc_root,
        include_host=settings.include_host,
        only=list(settings.netns_paths) or None,
    )
    discover_all = watcher.wanted
    if netns_filter is not None:
        # capture only in the namespaces the pod selectors keep (re-decided at every rescan)
        watcher.wanted = lambda: netns_filter(discover_all())  # type: ignore[method-assign]
    bind_health(sinks, health)
    try:
        attached = watcher.scan()
        log.info(
            "capturing",
            extra={
                "netns_attached": attached,
                "ports": ",".join(map(str, sorted(settings.ports))),
                "compile_seconds": round(capture.compile_seconds, 3),
                "pairing": pairing,
                "kernel_aggregation": aggregate is not None,
            },
        )
        # with pod selectors, paths that exist but are not selected yet (names load in the
        # background) are no start-up error: the rescan attaches them once they are selected
        selecting = netns_filter is not None and bool(discover_all())
        if settings.netns_paths and attached == 0 and not selecting:
            raise StartupError(
                "none of the --netns paths could be attached: "
                + ", ".join(settings.netns_paths)
                + " (check they exist, e.g. ip netns list)"
            )
        for write_header in sink_hooks(sinks, "write_header"):
            write_header()
        # sinks that may hold output (the table on a pipe or file) flush it when capture is idle
        idle_flushes = sink_hooks(sinks, "flush_pending")
        if on_ready is not None:
            on_ready(health)
        next_advance = 0
        while not stop.is_set():
            capture.poll(50)
            for flush_pending in idle_flushes:
                flush_pending()
            now = time.time_ns()
            if now >= next_advance:
                engine.advance(now)
                next_advance = now + ADVANCE_EVERY_NS
                watcher.tick()
        # drain what the kernel already handed over before stopping
        capture.poll(0)
        if kengine is not None:
            kengine.pull_aggregates()
        for close in sink_hooks(sinks, "close"):
            close()
    finally:
        health.lost_at_close = capture.lost()
        health.attached_at_close = len(capture.attached)
        stats = engine.pairing_stats()
        summary = (
            f"dnsotel: {engine.segments} packets seen, {health.lost_at_close} lost in the kernel, "
            f"{engine.decode_error_total} undecodable, {stats.paired} pairs, "
            f"{stats.unanswered} unanswered, "
            f"{stats.pending} still pending (not reported: their timeout had not passed)"
        )
        if kengine is not None and aggregate is not None:
            summary += f"; {kengine.kernel_aggregated} of the pairs counted in the kernel"
        try:
            log.info("kernel counters", extra=capture.counters())
        except Exception:  # the summary below matters more than these
            log.debug("reading the kernel counters failed", exc_info=True)
        capture.close()
        print(summary, file=err, flush=True)
    return 0
