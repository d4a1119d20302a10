"""Command line: ``dnsotel trace | run | replay | dashboards``.

Exit codes: 0 done, 1 a start-up problem (one line on stderr saying what to do),
2 a usage error (unknown field, bad filter, bad flag).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TextIO

from exporter import __version__
from exporter.config import ConfigError, Settings, from_env, parse_ports

log = logging.getLogger("dnsotel")

EXIT_OK = 0
EXIT_STARTUP = 1
EXIT_USAGE = 2


class UsageError(Exception):
    pass


class StartupError(Exception):
    pass


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m)?\s*$")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000}


def parse_duration_ns(text: str, default_unit: str = "ms") -> int:
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 5s, 500ms)")
    return int(float(m.group(1)) * _UNIT_NS[m.group(2) or default_unit])


def _ports(text: str) -> frozenset[int]:
    try:
        return parse_ports(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_capture_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("capture")
    g.add_argument("--ports", type=_ports, help="DNS ports to capture, comma-separated, up to 8 (default 53)")
    g.add_argument(
        "--timeout",
        type=parse_duration_ns,
        help="declare a query unanswered after this long (default 5s; plain numbers are ms)",
    )
    g.add_argument("--max-pending", type=int, help="bound on pending queries (default 65536)")
    g.add_argument("--host", action="store_true", default=None, help="also capture in the host's own netns")
    g.add_argument(
        "--netns",
        action="append",
        metavar="PATH",
        help="capture only in this network namespace (/var/run/netns/NAME or /proc/PID/ns/net); repeatable",
    )
    g.add_argument("--snaplen", type=int, help="DNS payload bytes copied per packet (64..4096, default 1232)")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("-o", "--output", choices=("columns", "json"), default="columns", help="row format")
    g.add_argument("--fields", help="comma-separated columns to show (see `dnsotel trace --list-fields`)")
    g.add_argument(
        "--filter",
        "-F",
        action="append",
        default=[],
        help="trace_dns filter, e.g. 'qr==R,rcode!=NOERROR' or 'latency_ns_raw>5ms'; repeatable (AND)",
    )
    g.add_argument("--list-fields", action="store_true", help="print the available fields and exit")


def _add_kubernetes_args(p: argparse.ArgumentParser) -> None:
    from exporter.k8s.selectors import add_selector_args

    add_selector_args(p)
    g = p.add_argument_group("kubernetes")
    g.add_argument(
        "--kubernetes", action="store_true", default=None, help="pod/service names (DNSOTEL_KUBERNETES)"
    )
    g.add_argument(
        "--cluster-names",
        action="store_true",
        default=None,
        help="index all pods and services of the cluster, not only this node's (DNSOTEL_CLUSTER_NAMES)",
    )
    g.add_argument("--kubeconfig", metavar="FILE", help="outside a pod (default $KUBECONFIG, ~/.kube/config)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnsotel",
        description="DNS observability with eBPF: every query/response pair as a row, a span and metrics.",
    )
    parser.add_argument("--version", action="version", version=f"dnsotel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    trace = sub.add_parser("trace", help="live table of DNS packets (like trace_dns), or of a capture file")
    trace.add_argument("--pcap", metavar="FILE", help="read a pcap/pcapng file instead of capturing live")
    _add_capture_args(trace)
    _add_output_args(trace)
    _add_kubernetes_args(trace)

    run = sub.add_parser("run", help="the exporter: capture, pair and export spans and metrics until SIGTERM")
    _add_capture_args(run)
    run.add_argument(
        "--pairing",
        choices=("user", "kernel"),
        help="pair UDP queries and responses in the kernel (default) or in user space (DNSOTEL_PAIRING)",
    )
    _add_output_args(run)
    _add_kubernetes_args(run)

    replay = sub.add_parser("replay", help="run a capture file through the exporter (spans/metrics or table)")
    replay.add_argument("file", metavar="FILE.pcap")
    _add_capture_args(replay)
    _add_output_args(replay)

    dash = sub.add_parser("dashboards", help="write the Grafana dashboards and alert rules to a directory")
    dash.add_argument("outdir", nargs="?", default="dnsotel-grafana")
    return parser


def settings_from(args: argparse.Namespace, env: dict[str, str] | None = None) -> Settings:
    overrides: dict[str, object] = {
        "ports": getattr(args, "ports", None),
        "timeout_ns": getattr(args, "timeout", None),
        "max_pending": getattr(args, "max_pending", None),
        "include_host": getattr(args, "host", None),
        "netns_paths": tuple(args.netns) if getattr(args, "netns", None) else None,
        "snaplen": getattr(args, "snaplen", None),
        "pairing": getattr(args, "pairing", None),
        "kubernetes": getattr(args, "kubernetes", None),
        "cluster_names": getattr(args, "cluster_names", None),
    }
    settings = from_env(env, **overrides)
    if not 64 <= settings.snaplen <= 4096:
        raise ConfigError(f"--snaplen={settings.snaplen} is out of range (expected 64..4096)")
    if settings.max_pending < 16:
        raise ConfigError(f"--max-pending={settings.max_pending} is too small (at least 16)")
    return settings


class Stopper:
    """SIGINT/SIGTERM set an event the loops check; a second signal exits at once."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():
            raise SystemExit(130)
        self.event.set()


class Context:
    """What one command builds once: the enricher (shared by table and spans) and the pod selection."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        from exporter.enrich import PlainEnricher
        from exporter.k8s.selectors import SelectorError, selector_from_args

        self.args = args
        self.settings = settings
        try:
            self.selector = selector_from_args(args) if hasattr(args, "namespace") else None
        except SelectorError as exc:
            raise UsageError(str(exc)) from None
        if self.selector is not None and self.selector.active and not settings.kubernetes:
            raise UsageError("-n/-p/-c/-l select pods: add --kubernetes (or set DNSOTEL_KUBERNETES=true)")
        self.enricher: Any = PlainEnricher(node=settings.node_name)
        if settings.kubernetes:
            from exporter.k8s import K8sConfigError, start_enricher

            try:
                self.enricher = start_enricher(
                    settings.node_name,
                    settings.cluster_names,
                    kubeconfig=getattr(args, "kubeconfig", None),
                    proc_root=settings.proc_root,
                    stale_after_s=settings.k8s_stale_after_s,
                    # retry at least twice within the staleness window (30 s cap by default)
                    backoff_max_s=min(30.0, settings.k8s_stale_after_s / 2),
                )
            except K8sConfigError as exc:
                raise StartupError(str(exc)) from None
        self.selection: Any = None
        if self.selector is not None and self.selector.active:
            from exporter.k8s.selectors import NetnsSelection

            self.selection = NetnsSelection(self.selector, self.enricher)

    def trace_sink(self, out: TextIO) -> object:
        from exporter.output import DEFAULT_FIELDS_NO_K8S, make_trace_sink

        args = self.args
        fields = args.fields
        if fields is None and args.output == "columns" and not self.settings.kubernetes:
            fields = list(DEFAULT_FIELDS_NO_K8S)
        sink = make_trace_sink(
            out, fields=fields, fmt=args.output, filters=args.filter, enricher=self.enricher
        )
        if self.selection is not None:
            from exporter.k8s.selectors import SelectingSink

            return SelectingSink(sink, self.selection)
        return sink

    def netns_filter(self) -> Callable[[dict[int, str]], dict[int, str]] | None:
        return self.selection.filter_paths if self.selection is not None else None  # type: ignore[no-any-return]

    def close(self) -> None:
        stop = getattr(self.enricher, "stop", None)
        if stop is not None:
            stop()


def _run_pcap(path: str, settings: Settings, sinks: Sequence[object], err: TextIO) -> int:
    from exporter.capture.pcap import CaptureReader, PcapError
    from exporter.live import LiveHealth, bind_health
    from exporter.pipeline import Engine, sink_hooks

    engine = Engine(sinks, timeout_ns=settings.timeout_ns, max_pending=settings.max_pending)  # type: ignore[arg-type]
    bind_health(sinks, LiveHealth(engine))
    try:
        reader = CaptureReader(path, ports=settings.ports)
        for hold in sink_hooks(sinks, "flush_pending"):  # a file is read at full speed: let the table hold
            hold()
        for seg in reader:
            engine.on_segment(seg)
    except PcapError as exc:
        raise StartupError(str(exc)) from None
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise StartupError(f"cannot read {path}: {exc.strerror or exc}") from None
    engine.finish()
    for close in sink_hooks(sinks, "close"):
        close()
    st = engine.pairer.stats
    print(
        f"dnsotel: {engine.messages} DNS messages, {st.paired} pairs, {st.unanswered} unanswered, "
        f"{st.unmatched} unmatched responses, {engine.decode_error_total} undecodable",
        file=err,
    )
    return EXIT_OK


def cmd_trace(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = settings_from(args)
    if args.list_fields:
        from exporter.output import describe_fields

        out.write(describe_fields())
        return EXIT_OK
    ctx = Context(args, settings)
    try:
        sink = ctx.trace_sink(out)
        if args.pcap:
            return _run_pcap(args.pcap, settings, [sink], err)
        from exporter.live import run_live

        return run_live(settings, [sink], err=err, netns_filter=ctx.netns_filter())
    finally:
        ctx.close()


def cmd_replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = settings_from(args)
    ctx = Context(args, settings)
    try:
        sinks, close = _exporter_sinks(ctx, out)
        try:
            return _run_pcap(args.file, settings, sinks, err)
        finally:
            close()
    finally:
        ctx.close()


NEWCOMER_PROMETHEUS_PORT = 9464


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = settings_from(args)
    if not settings.otlp_configured and settings.prometheus_port is None:
        # no collector configured: show the pairs and serve /metrics on localhost at once
        settings = dataclasses.replace(settings, prometheus_port=NEWCOMER_PROMETHEUS_PORT)
    from exporter.live import run_live

    ctx = Context(args, settings)
    try:
        sinks, close = _exporter_sinks(ctx, out)
        try:
            return run_live(
                settings, sinks, err=err, netns_filter=ctx.netns_filter(), pairing=settings.pairing
            )
        finally:
            close()
    finally:
        ctx.close()


def _exporter_sinks(ctx: Context, out: TextIO) -> tuple[list[object], Callable[[], None]]:
    """The telemetry sink, plus the table when no OTLP endpoint is configured."""
    from exporter.telemetry.otlp import ExporterConfigError
    from exporter.telemetry.runtime import build_telemetry

    settings = ctx.settings
    try:
        telemetry = build_telemetry(settings, enricher=ctx.enricher)
    except ExporterConfigError as exc:  # a bad OTEL_EXPORTER_OTLP_*PROTOCOL: one line, exit 1
        raise ConfigError(str(exc)) from None
    except OSError as exc:  # /metrics could not be served (port in use, address not local)
        if settings.prometheus_port is None:
            raise
        raise StartupError(
            f"cannot serve /metrics on {settings.prometheus_addr}:{settings.prometheus_port}: "
            f"{exc.strerror or exc} (set DNSOTEL_PROMETHEUS_PORT / DNSOTEL_PROMETHEUS_ADDR)"
        ) from None
    sinks: list[object] = [telemetry.sink]
    if not settings.otlp_configured:
        sinks.append(ctx.trace_sink(out))
    return sinks, telemetry.close


def cmd_dashboards(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pathlib import Path

    from grafana.build import write_all

    written = write_all(Path(args.outdir))
    for path in written:
        print(path, file=out)
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO, TextIO], int]] = {
    "trace": cmd_trace,
    "run": cmd_run,
    "replay": cmd_replay,
    "dashboards": cmd_dashboards,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from exporter import logs

    try:
        level = from_env().log_level
    except ConfigError as exc:
        print(f"dnsotel: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    logs.setup(level)
    t0 = time.monotonic()
    from exporter.output import OutputError

    try:
        return COMMANDS[args.command](args, sys.stdout, sys.stderr)
    except (UsageError, OutputError) as exc:
        print(f"dnsotel: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, StartupError) as exc:
        print(f"dnsotel: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, and keep Python from
        # complaining when it flushes stdout at exit
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        log.debug("exit", extra={"seconds": round(time.monotonic() - t0, 3)})


if __name__ == "__main__":
    sys.exit(main())
