"""The generated Grafana dashboards as the tests read them: panels, queries, variables."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from grafana import build


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard model, by file name."""
    return {path.name: json.loads(path.read_text()) for path in sorted(build.DASHBOARD_DIR.glob("*.json"))}


def panels(model: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The panels of a dashboard, those inside rows included."""
    for panel in model.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(datasource: str) -> Iterator[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(file name, dashboard, panel, target) of every panel query to a ``datasource`` type."""
    for name, model in dashboards().items():
        for panel in panels(model):
            for target in panel.get("targets", []):
                if target.get("datasource", {}).get("type") == datasource:
                    yield name, model, panel, target


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """``expr`` with Grafana's ``variables`` replaced (the longest names first); none may be left."""
    for var in sorted(variables, key=len, reverse=True):
        expr = expr.replace(var, variables[var])
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr
