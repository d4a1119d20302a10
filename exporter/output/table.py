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

Speed: both formatters compile, per field selection, one Python function that reads the
row's packet directly (the fields' ``code``) and builds the line in one f-string: JSON
keys are constants in it, strings go through ``json``'s C string encoder, numbers through
``int.__format__``; columns are padded by format specs and only a text too long or not
printable takes the ``fit()`` path. The output is byte for byte what ``fit()``/
``json.dumps`` of the field values gives (tests/fixtures/output holds the proof).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring

from exporter.output.fields import (
    FIELDS,
    Align,
    Ellipsis,
    Field,
    Kind,
    OutputError,
    Row,
    compile_row_function,
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


_ALIGN_SPEC = {Align.LEFT: "<", Align.RIGHT: ">"}


def _check_code(code: str) -> str:
    # the generated f-strings are delimited by ' and cannot hold a backslash in an expression
    if "'" in code or "\\" in code:
        raise ValueError(f"field code {code!r} cannot go into a generated f-string")
    return code


def _literal(text: str) -> str:
    """``text`` as the constant part of a generated f'...' string."""
    if "'" in text or "\\" in text:
        raise ValueError(f"{text!r} cannot go into a generated f-string")
    return text.replace("{", "{{").replace("}", "}}")


def _compile_columns(fields: Sequence[Field]) -> tuple[Callable[[Row], str], Callable[[Row], str]]:
    """``format(row)`` and ``line(row)`` (with its newline) for ``fields``, as compiled code.

    Each text is padded by a format spec; only a text that is too long or not printable
    goes through ``fit()`` (cut with ``…``, control characters escaped), as before.
    """
    body: list[str] = []
    specs: list[str] = []
    for i, f in enumerate(fields):
        t, w = f"t{i}", f.width
        specs.append(f"{{{t}:{_ALIGN_SPEC[f.align]}{w}}}")
        slow = f"_fit({t}, {w}, _{f.align.name}, _{f.ellipsis.name})"
        body.append(f"{t} = {_check_code(f.text_code)}")
        if w < 3:  # too narrow for the inline cuts below
            body.append(f"if len({t}) > {w} or not {t}.isprintable(): {t} = {slow}")
            continue
        # a printable text too long: cut it here (what shorten() does); anything else
        # that is not printable goes through fit(), which escapes before cutting
        if f.ellipsis is Ellipsis.MIDDLE:
            head = w // 2
            cut = f"{t}[:{head}] + '{ELLIPSIS}' + {t}[-{w - head - 1}:]"
        else:
            cut = f"{t}[:{w - 1}] + '{ELLIPSIS}'"
        body.append(f"if len({t}) > {w}: {t} = {cut} if {t}.isprintable() else {slow}")
        if not f.plain:
            body.append(f"elif not {t}.isprintable(): {t} = {slow}")
    text = "f'" + " ".join(specs) + "'.rstrip()"
    extra: dict[str, object] = {"_fit": fit, "_LEFT": Align.LEFT, "_RIGHT": Align.RIGHT}
    extra |= {"_END": Ellipsis.END, "_MIDDLE": Ellipsis.MIDDLE}
    fmt = compile_row_function("format_columns", body, text, (), extra)
    line = compile_row_function("line_columns", body, text + " + '\\n'", (), extra)
    return fmt, line


class ColumnsFormatter:
    """``-o columns``. ``format(row)`` is the row's line without its newline, ``line(row)``
    with it: both compiled for the fields (what ``fit()`` of every field's text, joined by
    spaces and right-stripped, gives)."""

    format: Callable[[Row], str]
    line: Callable[[Row], str]

    def __init__(self, fields: Sequence[Field]) -> None:
        if not fields:
            raise OutputError("no fields to show")
        self.fields = tuple(fields)
        self.format, self.line = _compile_columns(self.fields)

    def header(self) -> str:
        return " ".join(fit(f.header, f.width, f.align) for f in self.fields).rstrip()


def _json_fields(fields: Sequence[Field]) -> tuple[Field, ...]:
    out: list[Field] = []
    seen: set[str] = set()
    for f in fields:
        for g in (f, FIELDS.get(f.name + "_raw")):
            if g is not None and g.name not in seen:
                seen.add(g.name)
                out.append(g)
    return tuple(out)


def _json_list(items: list[str]) -> str:
    return "[" + ",".join(map(encode_basestring, items)) + "]"


def _json_value(f: Field) -> str:
    """The f-string part that writes ``f``'s JSON value (what ``json.dumps`` writes for it)."""
    if f.kind is Kind.TEXT:
        if f.plain:  # nothing to escape: a code name, a number, a time
            return '"{' + _check_code(f.text_code) + '}"'
        return "{_js(" + _check_code(f.text_code) + ")}"
    if f.kind is Kind.LIST:
        return "{_jl(" + _check_code(f.code) + ")}"
    if f.kind is Kind.BOOL:
        return "{" + _check_code(f.text_code) + "}"  # true/false
    code = _check_code(f.code)
    if f.nullable:
        return '{"null" if (' + code + ") is None else " + code + "}"
    return "{" + code + "}"


def _compile_json(fields: Sequence[Field]) -> tuple[Callable[[Row], str], Callable[[Row], str]]:
    """``format(row)`` and ``line(row)`` for ``fields``: one f-string, keys precompiled.

    Strings go through ``json``'s own C string encoder (what ``json.dumps`` calls for
    them), numbers through ``int.__format__`` (= ``int.__repr__``, what ``json`` writes),
    so the bytes are those of ``json.dumps(as_dict(row), ensure_ascii=False,
    separators=(",", ":"))``.
    """
    parts = []
    for i, f in enumerate(fields):
        key = json.dumps(f.name, ensure_ascii=False)
        parts.append(_literal(("{" if i == 0 else ",") + key + ":") + _json_value(f))
    text = "f'" + "".join(parts) + "}}'"
    codes = [f.code for f in fields] + [f.text_code for f in fields]
    extra: dict[str, object] = {"_js": encode_basestring, "_jl": _json_list}
    fmt = compile_row_function("format_json", (), text, codes, extra)
    line = compile_row_function("line_json", (), text[:-1] + "\\n'", codes, extra)
    return fmt, line


class JsonFormatter:
    """``-o json``. ``format(row)`` is the row's object without a newline, ``line(row)``
    with it: both compiled for the fields, byte for byte ``json.dumps(as_dict(row),
    ensure_ascii=False, separators=(",", ":"))``."""

    format: Callable[[Row], str]
    line: Callable[[Row], str]

    def __init__(self, fields: Sequence[Field] | None = None) -> None:
        self.fields = _json_fields(fields if fields else tuple(FIELDS.values()))
        self.format, self.line = _compile_json(self.fields)

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


Formatter = ColumnsFormatter | JsonFormatter


def make_formatter(fmt: str | Format, fields: Sequence[Field] | None) -> Formatter:
    """The writer for ``-o fmt``. JSON with no ``fields`` writes every field."""
    kind = Format.parse(fmt)
    if kind is Format.JSON:
        return JsonFormatter(fields)
    return ColumnsFormatter(fields if fields else parse_fields(None))
