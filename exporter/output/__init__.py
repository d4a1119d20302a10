"""Rows, columns, JSON and the filter language of ``dnsotel trace``."""

from __future__ import annotations

from exporter.output.fields import (
    DEFAULT_FIELDS,
    DEFAULT_FIELDS_NO_K8S,
    FIELDS,
    Field,
    FieldError,
    OutputError,
    Row,
    build_row,
    describe_fields,
    get_field,
    parse_fields,
)
from exporter.output.filter import Filter, FilterError, parse_filters
from exporter.output.sink import TraceSink, make_trace_sink
from exporter.output.table import ColumnsFormatter, Format, JsonFormatter, make_formatter

__all__ = [
    "DEFAULT_FIELDS",
    "DEFAULT_FIELDS_NO_K8S",
    "FIELDS",
    "ColumnsFormatter",
    "Field",
    "FieldError",
    "Filter",
    "FilterError",
    "Format",
    "JsonFormatter",
    "OutputError",
    "Row",
    "TraceSink",
    "build_row",
    "describe_fields",
    "get_field",
    "make_formatter",
    "make_trace_sink",
    "parse_fields",
    "parse_filters",
]
