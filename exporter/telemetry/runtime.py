"""Wire a :class:`~exporter.telemetry.sink.TelemetrySink` from ``Settings`` (used by the CLI).

OTLP exporters are created only when an OTLP endpoint is configured
(``settings.otlp_configured``); the SDK exporters read the rest of ``OTEL_EXPORTER_OTLP_*``
themselves. ``/metrics`` is served when ``settings.prometheus_port`` is set. A bad
``OTEL_EXPORTER_OTLP_*PROTOCOL`` raises :class:`~exporter.telemetry.otlp.ExporterConfigError`
with a one-line reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from exporter.config import Settings
from exporter.enrich import Enricher, PlainEnricher
from exporter.telemetry.otlp import make_metric_exporter, make_span_exporter
from exporter.telemetry.sink import TelemetrySink


@dataclass(frozen=True, slots=True)
class Telemetry:
    sink: TelemetrySink
    shutdown_timeout_s: float = 5.0

    def close(self) -> None:
        """Flush spans and export metrics one last time (bounded even when the collector is down)."""
        self.sink.shutdown(self.shutdown_timeout_s)


def build_telemetry(
    settings: Settings, enricher: Enricher | None = None, env: Mapping[str, str] | None = None
) -> Telemetry:
    otlp = settings.otlp_configured
    sink = TelemetrySink(
        enricher if enricher is not None else PlainEnricher(settings.node_name),
        node=settings.node_name,
        slow_ns=settings.slow_ns,
        sample_ratio=settings.span_sample_ratio,
        span_rate_limit=settings.span_rate_limit,
        top_names=settings.metrics_top_names,
        max_queue=settings.span_queue_size,
        span_exporter=make_span_exporter(env) if otlp else None,
        metric_exporter=make_metric_exporter(env) if otlp else None,
        metric_interval_s=settings.metrics_export_interval_s,
        prometheus_port=settings.prometheus_port,
        prometheus_addr=settings.prometheus_addr,
        timeout_ns=settings.timeout_ns,
        proc_root=settings.proc_root,
    )
    return Telemetry(sink)
