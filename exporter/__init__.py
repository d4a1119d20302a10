"""dnsotel: eBPF DNS observability, one OpenTelemetry span per query/response pair."""

__version__ = "0.1.0"
