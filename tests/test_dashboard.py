"""The Grafana dashboard in cluster/ queries only metrics mer publishes, and every metric mer publishes has a panel."""

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def published() -> set[str]:
    """Names given to ``ray.util.metrics`` Counter / Gauge / Histogram anywhere in mer/ (Prometheus adds ``ray_``)."""
    names = set()
    for path in (ROOT / "mer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            kind = getattr(node.func, "attr", None) or getattr(node.func, "id", None) if isinstance(node, ast.Call) else None
            if (kind in ("Counter", "Gauge", "Histogram") and node.args
                    and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("mer_")):
                names.add(node.args[0].value)
    return names


def test_dashboard_panels_match_the_published_metrics():
    dashboard = json.loads((ROOT / "cluster" / "grafana" / "mer.json").read_text())
    queried = {re.sub(r"_bucket$", "", m) for panel in dashboard["panels"] for target in panel["targets"]
               for m in re.findall(r"ray_(mer_\w+)", target["expr"])}
    assert queried == published()
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
