"""Spans and metrics for paired DNS exchanges (DESIGN §4 "Export", §5 telemetry contract).

``semconv`` names everything; ``ids`` derives trace/span ids; ``sampling`` decides which
exchanges become spans; ``spans`` builds and exports them off the capture thread;
``metrics`` aggregates locally and hands the result to OTLP and Prometheus; ``otlp``
picks the SDK exporter class; ``sink.TelemetrySink`` is what the pairing stage calls.
"""
