"""``TraceSink``: the pairing stage's events as table or JSON lines, one per packet.

Every line is flushed as it is written (Go's unbuffered stdout does the same for
``trace_dns``), so a terminal or a ``| grep`` sees rows live. A write error
(``BrokenPipeError`` after ``| head``) propagates to the caller, which stops the trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from exporter.enrich import Enricher, PlainEnricher
from exporter.output.fields import Field, Row, build_row, parse_fields
from exporter.output.filter import MATCH_ALL, Filter, parse_filters
from exporter.output.table import Format, make_formatter
from exporter.records import DnsPacket, Exchange

__all__ = ["TraceSink", "build_row", "make_trace_sink"]


class TraceSink:
    """A ``records.PairSink`` that prints one line per DNS packet event.

    ``fields`` None -> the default columns (``-o columns``) or every field (``-o json``).
    """

    def __init__(
        self,
        stream: TextIO,
        fields: Sequence[Field] | None = None,
        format: str | Format = Format.COLUMNS,
        filter: Filter | None = None,
        enricher: Enricher | None = None,
        *,
        header: bool = True,
        flush: bool = True,
    ) -> None:
        self._stream = stream
        self._formatter = make_formatter(format, fields)
        self._filter = filter if filter is not None else MATCH_ALL
        self._enricher: Enricher = enricher if enricher is not None else PlainEnricher()
        self._flush = flush
        self._header_pending = header
        self.rows_written = 0
        self.rows_filtered = 0

    def write_header(self) -> None:
        """Print the column header now (the CLI calls it at start); JSON has none."""
        self._header_pending = False
        line = self._formatter.header()
        if line is not None:
            self._write(line)

    def emit(self, row: Row) -> bool:
        """Write ``row`` if the filter lets it through; True when written."""
        if self._filter.rules and not self._filter.match(row):
            self.rows_filtered += 1
            return False
        if self._header_pending:
            self.write_header()
        self._write(self._formatter.format(row))
        self.rows_written += 1
        return True

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        if self._flush:
            self._stream.flush()

    # --- records.PairSink -------------------------------------------------------------

    def on_query(self, pkt: DnsPacket, role: str, retransmit: bool) -> None:
        self.emit(build_row(pkt, self._enricher))

    def on_response(self, ex: Exchange) -> None:
        if ex.response is not None:
            self.emit(build_row(ex.response, self._enricher, latency_ns=ex.latency_ns))

    def on_unanswered(self, ex: Exchange) -> None:
        if ex.query is not None:
            self.emit(build_row(ex.query, self._enricher, latency_ns=ex.timeout_ns, unanswered=True))

    def on_unmatched(self, pkt: DnsPacket, role: str) -> None:
        self.emit(build_row(pkt, self._enricher))


def make_trace_sink(
    stream: TextIO,
    *,
    fields: str | Sequence[str] | None = None,
    fmt: str | Format = Format.COLUMNS,
    filters: Sequence[str] | None = None,
    enricher: Enricher | None = None,
) -> TraceSink:
    """The sink for ``--fields``/``-o``/``--filter`` as the user typed them.

    Raises ``OutputError`` (``FieldError``/``FilterError``) naming the bad field or rule,
    before anything is written; the CLI turns it into exit code 2.
    """
    kind = Format.parse(fmt)
    chosen = None if fields is None and kind is Format.JSON else parse_fields(fields)
    flt = parse_filters(filters) if filters else MATCH_ALL
    return TraceSink(stream, chosen, kind, flt, enricher)
