# SPDX-License-Identifier: Apache-2.0
"""What the dashboard and alert-rule tests share: the generator module (deploy/grafana/
generate.py, loaded from its path since deploy/ is no package), every panel's queries as
committed, and the metric names a PromQL expression uses."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GRAFANA_DIR = ROOT / "deploy" / "grafana"
GENERATOR = GRAFANA_DIR / "generate.py"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"

# Metric names in PromQL: the identifiers left once strings, label matchers, grouping label
# lists, template variables and function calls are taken out.
_STRING = re.compile(r'"[^"]*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLE = re.compile(r"\$\w+")
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


@cache
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("predis_dashboards_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} ({self.ref_id})"


def committed_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(GRAFANA_DIR.glob("*.json"))}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel of a dashboard, those inside collapsed rows included (rows themselves not)."""
    out: list[dict[str, Any]] = []
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            out.extend(panel.get("panels") or [])
        else:
            out.append(panel)
    return out


def panel_queries() -> list[PanelQuery]:
    return [
        PanelQuery(board["title"], panel["title"], target["refId"], target["expr"])
        for board in committed_dashboards().values()
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label values and strings left out)."""
    bare = _VARIABLE.sub("", _GROUPING.sub("", _MATCHERS.sub("", _STRING.sub("", expr))))
    return {name for name in _IDENTIFIER.findall(bare) if name.lower() not in _KEYWORDS}


def family_of(name: str, histograms: set[str]) -> str:
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name
