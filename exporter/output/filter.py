"""The ``--filter`` language of ``dnsotel trace``, as ``trace_dns`` users write it.

One rule is ``<field><op><value>``; ``op`` is one of ``==`` (or ``=``), ``!=``, ``>``,
``>=``, ``<``, ``<=``, ``~`` (Python regular expression, searched anywhere in the text),
``!~``. A comma separates rules that must all match; ``\\,`` is a literal comma and
``\\\\`` a literal backslash (any other backslash is kept, so ``\\d`` reaches the regex).
Several ``--filter`` options AND together.

How a rule compares depends on the field (see ``fields.Kind``):

- text and list fields: ``==``/``!=`` compare the displayed text (lists comma-joined);
  ``<``/``>`` are an error, except on ``latency_ns``, which orders by its number;
- number fields (``*_raw``, ``num_answers``, ``ttl``, ``netns_id``, ports): every
  operator compares numbers; a value must be an integer (``0x`` hex accepted), and on
  ``latency_ns``/``latency_ns_raw`` it may carry a unit: ``5ms``, ``1.5s``, ``250us``,
  ``1m30s``. A row with no value (a query's ``rcode_raw`` or latency) matches no
  comparison, so it passes ``!=`` and fails ``>``. ``field==`` (empty) matches rows
  with no value;
- flags (``tc``, ``unanswered``, ``qr_raw``, ...): ``==``/``!=`` with true/false/1/0;
- ``~``/``!~`` work on the displayed text of every field.

``rcode`` also accepts ``trace_dns``'s names: ``rcode==NameError`` is ``rcode==NXDOMAIN``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from exporter.output.fields import (
    FIELDS,
    Field,
    FieldError,
    Kind,
    OutputError,
    Row,
    compile_row_function,
    get_field,
)


class FilterError(OutputError):
    """A filter that cannot be used; the message names the rule and the field or value."""


_OP_CHARS = frozenset("!~<>=")
_ORDER_OPS: dict[str, Callable[[int, int], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_OPS = frozenset(("=", "==", "!=", "~", "!~", *_ORDER_OPS))

_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9}
_DURATION_UNITS |= {"m": 60 * 10**9, "h": 3600 * 10**9}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> int:
    """Go-style duration (``5ms``, ``1.5s``, ``1m30s``) or plain integer nanoseconds -> ns."""
    s = text.strip()
    sign = 1
    if s[:1] in ("-", "+"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s.isdigit():
        return sign * int(s)
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"not a duration: {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"not a duration: {text!r}")
    return sign * round(total)


def split_escaped(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep``; ``\\<sep>`` is a literal sep, ``\\\\`` a backslash, other ``\\x`` kept."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in (sep, "\\"):
            cur.append(text[i + 1])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


@dataclass(frozen=True, slots=True)
class Rule:
    """One parsed rule, e.g. ``latency_ns>5ms``."""

    expr: str
    field: Field
    op: str
    value: str
    test: Callable[[Row], bool]

    def match(self, row: Row) -> bool:
        return self.test(row)


class Filter:
    """All rules must match. An empty filter matches every row."""

    __slots__ = ("_tests", "rules")

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._tests = tuple(rule.test for rule in self.rules)

    def match(self, row: Row) -> bool:
        for test in self._tests:  # noqa: SIM110  (all() of a generator costs twice as much)
            if not test(row):
                return False
        return True

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __repr__(self) -> str:
        return f"Filter({[r.expr for r in self.rules]!r})"


MATCH_ALL = Filter()


def parse_filters(exprs: Iterable[str]) -> Filter:
    """Parse every ``--filter`` value (each may hold comma-separated rules) into one Filter."""
    rules: list[Rule] = []
    for expr in exprs:
        if not expr.strip():
            raise FilterError("empty filter expression")
        for part in split_escaped(expr):
            if not part.strip():
                raise FilterError(f"empty rule in filter {expr!r}")
            rules.append(parse_rule(part))
    return Filter(rules)


def _split_rule(expr: str) -> tuple[str, str, str]:
    start = next((i for i, c in enumerate(expr) if c in _OP_CHARS), -1)
    if start < 0:
        raise FilterError(f"no operator in filter rule {expr!r} (use ==, !=, <, <=, >, >=, ~ or !~)")
    end = start
    while end < len(expr) and expr[end] in _OP_CHARS:
        end += 1
    name, op, value = expr[:start].strip(), expr[start:end], expr[end:]
    if not name:
        raise FilterError(f"no field name in filter rule {expr!r}")
    if op not in _OPS:
        raise FilterError(f"invalid operator {op!r} in filter rule {expr!r}")
    return name, ("==" if op == "=" else op), value


def parse_rule(expr: str) -> Rule:
    """One rule (no comma splitting)."""
    name, op, value = _split_rule(expr)
    try:
        field = get_field(name)
    except FieldError as e:
        raise FilterError(f"filter rule {expr!r}: {e}") from None

    if op in ("~", "!~"):
        try:
            rx = re.compile(value)
        except re.error as e:
            raise FilterError(
                f"filter rule {expr!r}: bad regular expression {value!r} for field {name!r}: {e}"
            ) from None
        text = field.text
        negate = op == "!~"
        test = _memoized(field, lambda row: (rx.search(text(row)) is not None) != negate)
        return Rule(expr, field, op, value, test)

    negate = op == "!="
    if field.kind is Kind.BOOL:
        return _bool_rule(expr, field, op, value, negate)
    if op in _ORDER_OPS or field.kind is Kind.INT:
        return _number_rule(expr, field, op, value, negate)

    want = field.aliases.get(value, value) if field.aliases else value
    text = field.text
    return Rule(expr, field, op, value, _memoized(field, lambda row: (text(row) == want) != negate))


def _memoized(field: Field, test: Callable[[Row], bool]) -> Callable[[Row], bool]:
    """``test`` remembered per raw value when the field's text is a function of a small one.

    ``qtype==A`` then costs a number lookup, not the type's name: the text is built once
    per distinct number (at most 65536 of them for ``id``/``qtype``, a few for the rest).
    """
    if not field.memo_code:
        return test
    key = compile_row_function("memo_key", (), field.memo_code, ())
    seen: dict[object, bool] = {}

    def memo(row: Row) -> bool:
        k = key(row)
        hit = seen.get(k)
        if hit is None:
            hit = seen[k] = test(row)
        return hit

    return memo


def _bool_rule(expr: str, field: Field, op: str, value: str, negate: bool) -> Rule:
    if op in _ORDER_OPS:
        raise FilterError(f"filter rule {expr!r}: field {field.name!r} is true/false; use == or !=")
    v = value.strip().lower()
    if v in ("true", "1"):
        want = True
    elif v in ("false", "0"):
        want = False
    else:
        raise FilterError(f"filter rule {expr!r}: field {field.name!r} takes true or false, not {value!r}")
    raw = field.raw
    return Rule(expr, field, op, value, lambda row: (raw(row) is want) != negate)


def _number_rule(expr: str, field: Field, op: str, value: str, negate: bool) -> Rule:
    if not field.orderable:
        hint = f" (try {field.name}_raw)" if f"{field.name}_raw" in FIELDS else ""
        raise FilterError(f"filter rule {expr!r}: field {field.name!r} is text and cannot be ordered{hint}")
    key = field.key_function()
    if value == "" and op in ("==", "!="):
        return Rule(expr, field, op, value, lambda row: (key(row) is None) != negate)
    try:
        ref = parse_duration(value) if field.duration else _parse_int(value)
    except ValueError:
        what = "a number or a duration like 5ms" if field.duration else "an integer"
        raise FilterError(f"filter rule {expr!r}: field {field.name!r} needs {what}, not {value!r}") from None
    if op in ("==", "!="):

        def eq(row: Row) -> bool:
            v = key(row)
            return (v is not None and v == ref) != negate

        return Rule(expr, field, op, value, eq)
    cmp = _ORDER_OPS[op]

    def order(row: Row) -> bool:
        v = key(row)
        return v is not None and cmp(v, ref)

    return Rule(expr, field, op, value, order)


def _parse_int(value: str) -> int:
    s = value.strip()
    try:
        return int(s, 10)
    except ValueError:
        return int(s, 0)
