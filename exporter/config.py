"""One frozen ``Settings`` object, from command-line flags and ``DNSOTEL_*`` variables.

``OTEL_*`` variables (endpoint, headers, TLS, protocol, resource, service name) are left
to the OpenTelemetry SDK, which reads them itself; we only look at whether an OTLP
endpoint is configured at all, to choose between exporting and the newcomer's table.
An invalid value is a ``ConfigError`` whose message names the variable and what it takes.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_PORTS = 8
MAX_SNAPLEN = 4096


class ConfigError(Exception):
    """An invalid setting; the message names it and says what is accepted."""


@dataclass(frozen=True, slots=True)
class Settings:
    ports: frozenset[int] = frozenset({53})
    timeout_ns: int = 5_000_000_000
    max_pending: int = 65_536
    snaplen: int = 1232  # the EDNS payload size resolvers cap UDP answers at (DNS Flag Day 2020)
    pairing: str = "kernel"  # `run` only ("trace" always pairs in user space): exporter/kpairing.py
    include_host: bool = False
    netns_paths: tuple[str, ...] = ()
    proc_root: str = "/proc"
    node_name: str = ""
    # telemetry
    slow_ns: int = 100_000_000
    span_sample_ratio: float = 1.0
    span_rate_limit: float = 0.0  # spans per second; 0 = no cap
    span_queue_size: int = 8192
    metrics_top_names: int = 0
    metrics_export_interval_s: float = 15.0
    prometheus_port: int | None = None
    prometheus_addr: str = "127.0.0.1"
    log_level: str = "INFO"
    otlp_configured: bool = False
    # kubernetes
    kubernetes: bool = False
    cluster_names: bool = False
    k8s_stale_after_s: float = 60.0  # API unreachable this long: drop cached names (raw r/ip:port)
    extra: Mapping[str, str] = field(default_factory=dict)


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip(), 0)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number (expected {lo}..{hi})") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range (expected {lo}..{hi})")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number (expected {lo}..{hi})") from None
    if not lo <= value <= hi or value != value:
        raise ConfigError(f"{name}={value} is out of range (expected {lo}..{hi})")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (expected true or false)")


def parse_ports(raw: str, name: str = "--ports") -> frozenset[int]:
    ports: set[int] = set()
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            port = int(part)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: {part!r} is not a port number") from None
        if not 1 <= port <= 65535:
            raise ConfigError(f"{name}={raw!r}: {port} is not a port number (1..65535)")
        ports.add(port)
    if not ports:
        raise ConfigError(f"{name}={raw!r}: give at least one port, e.g. 53")
    if len(ports) > MAX_PORTS:
        raise ConfigError(f"{name}={raw!r}: at most {MAX_PORTS} ports (the kernel filter's limit)")
    return frozenset(ports)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PAIRING_MODES = ("user", "kernel")


def from_env(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from ``DNSOTEL_*`` variables; keyword ``overrides`` (from flags) win."""
    e = os.environ if env is None else env
    ports_raw = e.get("DNSOTEL_PORTS")
    level = e.get("DNSOTEL_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"DNSOTEL_LOG_LEVEL={level!r} is not a log level (expected one of {', '.join(LOG_LEVELS)})"
        )
    prom_port_raw = e.get("DNSOTEL_PROMETHEUS_PORT", "").strip()
    prom_port = _int(e, "DNSOTEL_PROMETHEUS_PORT", 0, 1, 65535) if prom_port_raw else None
    pairing = e.get("DNSOTEL_PAIRING", "kernel").strip().lower() or "kernel"
    if pairing not in PAIRING_MODES:
        raise ConfigError(f"DNSOTEL_PAIRING={pairing!r} is not a pairing mode (expected user or kernel)")
    netns_raw = e.get("DNSOTEL_NETNS", "")
    endpoint_vars = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    values: dict[str, object] = dict(
        ports=parse_ports(ports_raw, "DNSOTEL_PORTS") if ports_raw else frozenset({53}),
        timeout_ns=_int(e, "DNSOTEL_TIMEOUT_MS", 5000, 1, 3_600_000) * 1_000_000,
        max_pending=_int(e, "DNSOTEL_MAX_PENDING", 65_536, 16, 10_000_000),
        snaplen=_int(e, "DNSOTEL_SNAPLEN", 1232, 64, MAX_SNAPLEN),
        pairing=pairing,
        include_host=_bool(e, "DNSOTEL_HOST_NETNS", False),
        netns_paths=tuple(p for p in netns_raw.split(",") if p.strip()),
        proc_root=e.get("DNSOTEL_PROC_ROOT", "/proc").strip() or "/proc",
        node_name=e.get("DNSOTEL_NODE_NAME", "").strip() or socket.gethostname(),
        slow_ns=_int(e, "DNSOTEL_SLOW_MS", 100, 0, 3_600_000) * 1_000_000,
        span_sample_ratio=_float(e, "DNSOTEL_SPAN_SAMPLE_RATIO", 1.0, 0.0, 1.0),
        span_rate_limit=_float(e, "DNSOTEL_SPAN_RATE_LIMIT", 0.0, 0.0, 1e9),
        span_queue_size=_int(e, "DNSOTEL_SPAN_QUEUE_SIZE", 8192, 1, 10_000_000),
        metrics_top_names=_int(e, "DNSOTEL_METRICS_TOP_NAMES", 0, 0, 10_000),
        metrics_export_interval_s=_int(e, "OTEL_METRIC_EXPORT_INTERVAL", 15_000, 100, 86_400_000) / 1000.0,
        prometheus_port=prom_port,
        prometheus_addr=e.get("DNSOTEL_PROMETHEUS_ADDR", "127.0.0.1").strip() or "127.0.0.1",
        log_level=level,
        otlp_configured=any(e.get(v, "").strip() for v in endpoint_vars),
        kubernetes=_bool(e, "DNSOTEL_KUBERNETES", False),
        cluster_names=_bool(e, "DNSOTEL_CLUSTER_NAMES", False),
        k8s_stale_after_s=_int(e, "DNSOTEL_K8S_STALE_AFTER_MS", 60_000, 100, 86_400_000) / 1000.0,
    )
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    return Settings(**values)  # type: ignore[arg-type]
