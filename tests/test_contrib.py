"""Deployment files stay consistent with the code: the dashboard queries only metrics the
service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from isocache.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent


def test_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "contrib" / "grafana-dashboard.json").read_text())
    exported = {
        sample.name for family in Metrics().registry.collect() for sample in family.samples
    } | {family.name for family in Metrics().registry.collect()}
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"isocache_[a-z_]+", expr)}
    names = {n.removesuffix("_bucket") for n in used}
    assert used and all(
        n in exported
        or n.removesuffix("_total") in exported
        or n + "_bucket" in exported
        or n in {f.name + "_bucket" for f in Metrics().registry.collect()}
        for n in names
    ), sorted(names)


def test_systemd_unit_runs_serve() -> None:
    unit = (ROOT / "contrib" / "isocache.service").read_text()
    assert "ExecStart=/opt/isocache/bin/isocache serve --config" in unit
    assert "CacheDirectory=isocache" in unit and "NoNewPrivileges=yes" in unit
