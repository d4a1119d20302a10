"""``TraceSink``: the pairing stage's events as table or JSON lines, one per packet.

Flushing. On a terminal every line is flushed as it is written (Go's unbuffered stdout
does the same for ``trace_dns``). A pipe or a file (``-o json > rows.json``, ``| jq``)
may instead *hold* rows for about ``FLUSH_HOLD_S`` (100 ms): the sink flushes on the
first row written 100 ms or more after its last flush, and when the capture loop, which
calls :meth:`TraceSink.flush_pending` after each poll, finds no new row since its last
call (idle: a poll waits at most 50 ms). A ``| jq`` reader sees every row within
~100 ms; a busy trace pays one flush (one ``write(2)``) per 8 KiB or per 100 ms instead
of one per row.
Holding starts only once ``flush_pending`` has been called: a sink that nobody flushes
when idle (a pcap replay, a test, a loop without the hook) flushes every line, as before.

A write error (``BrokenPipeError`` after ``| head``) propagates to the caller, which
stops the trace; so does one raised by a held flush in ``flush_pending``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TextIO

from exporter.enrich import Enricher, PlainEnricher
from exporter.output.fields import Field, Row, build_row, parse_fields
from exporter.output.filter import MATCH_ALL, Filter, parse_filters
from exporter.output.table import Format, make_formatter
from exporter.records import DnsPacket, Exchange

__all__ = ["FLUSH_HOLD_S", "TraceSink", "build_row", "make_trace_sink"]

FLUSH_HOLD_S = 0.1  # how long a pipe or file may wait for a row (see the module docstring)
_monotonic = time.monotonic  # the tests' clock


class TraceSink:
    """A ``records.PairSink`` that prints one line per DNS packet event.

    ``fields`` None -> the default columns (``-o columns``) or every field (``-o json``).
    ``flush``: True flushes every line; False never flushes (the stream's own buffering
    decides); a number of seconds holds rows up to that long once :meth:`flush_pending`
    has been called (every line until then).
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
        flush: bool | float = True,
    ) -> None:
        self._stream = stream
        self._formatter = make_formatter(format, fields)
        self._line = self._formatter.line
        self._filter = filter if filter is not None else MATCH_ALL
        self._match = self._filter.match if self._filter.rules else None
        self._enricher: Enricher = enricher if enricher is not None else PlainEnricher()
        self._header_pending = header
        # flush: every line / held up to _hold_s (once armed by flush_pending) / never
        self._hold_s: float | None = None if isinstance(flush, bool) else float(flush)
        self._per_line = flush is True or self._hold_s is not None
        self._held = False  # rows written since the last flush
        self._last_flush = _monotonic()
        self._rows_at_last_call = -1  # rows_written at the last flush_pending
        self.rows_written = 0
        self.rows_filtered = 0

    def write_header(self) -> None:
        """Print the column header now (the CLI calls it at start); JSON has none."""
        self._header_pending = False
        line = self._formatter.header()
        if line is not None:
            self._stream.write(line + "\n")
            self._written()

    def emit(self, row: Row) -> bool:
        """Write ``row`` if the filter lets it through; True when written."""
        if self._match is not None and not self._match(row):
            self.rows_filtered += 1
            return False
        if self._header_pending:
            self.write_header()
        self._stream.write(self._line(row))
        self.rows_written += 1
        if self._per_line:
            self._stream.flush()
        elif self._hold_s is not None:
            self._held = True
            if _monotonic() - self._last_flush >= self._hold_s:
                self._flush_now()
        return True

    def _written(self) -> None:
        if self._per_line:
            self._stream.flush()
        else:
            self._held = True

    def flush_pending(self) -> None:
        """Flush held rows if the trace went idle. The capture loop calls it after each poll.

        Idle: no row written since the previous call (the poll came back empty-handed, at
        most 50 ms later), or the last flush is ``hold`` seconds ago; under load the
        rows themselves flush every ``hold`` seconds (see ``emit``). The first call arms
        holding on a sink made with ``flush=<seconds>``.
        """
        hold = self._hold_s
        if hold is None:  # flush=True: nothing is ever held; flush=False: the stream decides
            return
        self._per_line = False
        n = self.rows_written
        if self._held and (n == self._rows_at_last_call or _monotonic() - self._last_flush >= hold):
            self._flush_now()
        self._rows_at_last_call = n

    def _flush_now(self) -> None:
        self._held = False
        self._last_flush = _monotonic()
        self._stream.flush()

    def close(self) -> None:
        """Flush what is held (the stream stays open)."""
        if self._held:
            self._flush_now()

    # --- records.PairSink -------------------------------------------------------------

    def on_query(self, pkt: DnsPacket, role: str, retransmit: bool) -> None:
        self.emit(Row(pkt.meta, pkt.msg, self._enricher))

    def on_response(self, ex: Exchange) -> None:
        pkt = ex.response
        if pkt is not None:
            self.emit(Row(pkt.meta, pkt.msg, self._enricher, ex.latency_ns))

    def on_unanswered(self, ex: Exchange) -> None:
        pkt = ex.query
        if pkt is not None:
            self.emit(Row(pkt.meta, pkt.msg, self._enricher, ex.timeout_ns, True))

    def on_unmatched(self, pkt: DnsPacket, role: str) -> None:
        self.emit(Row(pkt.meta, pkt.msg, self._enricher))


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def make_trace_sink(
    stream: TextIO,
    *,
    fields: str | Sequence[str] | None = None,
    fmt: str | Format = Format.COLUMNS,
    filters: Sequence[str] | None = None,
    enricher: Enricher | None = None,
    flush: bool | float | None = None,
) -> TraceSink:
    """The sink for ``--fields``/``-o``/``--filter`` as the user typed them.

    ``flush`` None: every line on a terminal, else rows held up to ``FLUSH_HOLD_S`` once
    the capture loop calls ``flush_pending`` (see the module docstring).

    Raises ``OutputError`` (``FieldError``/``FilterError``) naming the bad field or rule,
    before anything is written; the CLI turns it into exit code 2.
    """
    kind = Format.parse(fmt)
    chosen = None if fields is None and kind is Format.JSON else parse_fields(fields)
    flt = parse_filters(filters) if filters else MATCH_ALL
    if flush is None:
        flush = True if _is_terminal(stream) else FLUSH_HOLD_S
    return TraceSink(stream, chosen, kind, flt, enricher, flush=flush)
