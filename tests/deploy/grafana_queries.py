"""Every PromQL expression of the Grafana dashboard, ready to send to Prometheus.

Shared by the static check (each expression parses, via promtool) and the live
check (each returns data from a Prometheus scraping the local cluster).
Grafana's own variables are replaced by values Prometheus accepts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "bgsvc.json"

_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<expr>.+),\s*(?P<label>\w+)\)\s*$")


@dataclass(frozen=True)
class Query:
    """One expression: where it is in the dashboard (row, panel, target) and the PromQL."""

    panel: str
    ref_id: str
    expr: str
    row: str = ""


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """All panels, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(expr: str, rate_interval: str = "1m", instance: str = ".*") -> str:
    """Replace Grafana's variables with literal values."""
    out = expr
    for name, value in (
        ("__rate_interval", rate_interval),
        ("__interval", rate_interval),
        ("__range", rate_interval),
        ("instance", instance),
    ):
        out = out.replace("${" + name + "}", value).replace("$" + name, value)
    if "$" in re.sub(r"\{\{.*?\}\}", "", out):
        raise ValueError(f"unsubstituted Grafana variable in {expr!r}")
    return out


def dashboard_queries(
    path: Path = DASHBOARD, rate_interval: str = "1m", instance: str = ".*"
) -> list[Query]:
    """Panel targets plus the series selector behind each `label_values` variable."""
    dashboard = load_dashboard(path)
    queries = []
    row = ""
    for panel in iter_panels(dashboard):
        if panel["type"] == "row":
            row = panel["title"]
        for target in panel.get("targets", []):
            queries.append(
                Query(
                    panel["title"],
                    target["refId"],
                    substitute(target["expr"], rate_interval, instance),
                    row,
                )
            )
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        raw = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = _LABEL_VALUES.match(raw)
        if not match:
            raise ValueError(f"variable {var['name']}: unsupported query {raw!r}")
        queries.append(Query(f"variable {var['name']}", "var", match["expr"]))
    return queries
