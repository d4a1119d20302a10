"""``-o columns`` and ``-o json`` for ``dnsotel trace``.

Columns: an upper-case header, then one line per row; every column is padded to its
width and cut with ``…`` when longer (at the end, or in the middle for names and
endpoints), columns separated by one space, as ``trace_dns`` prints them. Control
characters are escaped so that a hostile DNS name cannot drive the terminal.

JSON: one object per line. Keys are the field names (``"k8s.podname"``, flat); numbers
are JSON numbers, flags JSON booleans, ``addresses``/``cnames`` JSON lists, and a value
that is absent (a query's ``rcode_raw``, an unmatched response's latency) is ``null``.
A display field that has a ``_raw`` twin brings the twin along (``latency_ns`` ->
``latency_ns_raw``), so JSON always carries the number.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence

from exporter.output.fields import (
    FIELDS,
    Align,
    Ellipsis,
    Field,
    Kind,
    OutputError,
    Row,
    parse_fields,
)

ELLIPSIS = "…"


class Format(enum.Enum):
    COLUMNS = "columns"
    JSON = "json"

    @classmethod
    def parse(cls, text: str | Format) -> Format:
        if isinstance(text, Format):
            return text
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise OutputError(f"unknown output format {text!r} (use columns or json)") from None


def shorten(text: str, width: int, ellipsis: Ellipsis = Ellipsis.END) -> str:
    """Cut ``text`` to ``width`` characters, marking the cut with ``…``."""
    if len(text) <= width:
        return text
    if width <= 0:
        return ""
    if width == 1:
        return ELLIPSIS
    if ellipsis is Ellipsis.MIDDLE:
        head = width // 2
        tail = width - head - 1
        return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")
    return text[: width - 1] + ELLIPSIS


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def fit(text: str, width: int, align: Align, ellipsis: Ellipsis = Ellipsis.END) -> str:
    """``text`` made exactly ``width`` characters wide."""
    cut = shorten(_printable(text), width, ellipsis)
    if align is Align.RIGHT:
        return cut.rjust(width)
    return cut.ljust(width)


class ColumnsFormatter:
    def __init__(self, fields: Sequence[Field]) -> None:
        if not fields:
            raise OutputError("no fields to show")
        self.fields = tuple(fields)

    def header(self) -> str:
        return " ".join(fit(f.header, f.width, f.align) for f in self.fields).rstrip()

    def format(self, row: Row) -> str:
        return " ".join(fit(f.text(row), f.width, f.align, f.ellipsis) for f in self.fields).rstrip()


def _json_fields(fields: Sequence[Field]) -> tuple[Field, ...]:
    out: list[Field] = []
    seen: set[str] = set()
    for f in fields:
        for g in (f, FIELDS.get(f.name + "_raw")):
            if g is not None and g.name not in seen:
                seen.add(g.name)
                out.append(g)
    return tuple(out)


class JsonFormatter:
    def __init__(self, fields: Sequence[Field] | None = None) -> None:
        self.fields = _json_fields(fields if fields else tuple(FIELDS.values()))

    def header(self) -> str | None:
        return None

    def as_dict(self, row: Row) -> dict[str, object]:
        out: dict[str, object] = {}
        for f in self.fields:
            if f.kind is Kind.TEXT:
                out[f.name] = f.text(row)
            elif f.kind is Kind.LIST:
                v = f.raw(row)
                out[f.name] = list(v) if isinstance(v, list) else []
            else:
                out[f.name] = f.raw(row)
        return out

    def format(self, row: Row) -> str:
        return json.dumps(self.as_dict(row), ensure_ascii=False, separators=(",", ":"))


Formatter = ColumnsFormatter | JsonFormatter


def make_formatter(fmt: str | Format, fields: Sequence[Field] | None) -> Formatter:
    """The writer for ``-o fmt``. JSON with no ``fields`` writes every field."""
    kind = Format.parse(fmt)
    if kind is Format.JSON:
        return JsonFormatter(fields)
    return ColumnsFormatter(fields if fields else parse_fields(None))
