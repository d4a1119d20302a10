"""Command line: ``dnsotel trace|run|replay|dashboards``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("dnsotel: not wired yet", file=sys.stderr)
    return 2
