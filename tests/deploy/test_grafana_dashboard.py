"""deploy/grafana/recgate-dashboard.json: importable, and every query reads a metric recgate
exports (a renamed metric would otherwise leave a panel silently empty)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.metric_names import base_name, names_in_expression

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "recgate-dashboard.json"
DATASOURCE = "${DS_PROMETHEUS}"
# Grafana's range variables, as Grafana would fill them in, so Prometheus can parse a query.
GRAFANA_RANGES = {"$__rate_interval": "5m", "$__range": "6h", "$__interval": "1m"}


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def _queries() -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in _panels(_dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{x="y_z"}[$__rate_interval])))',
            {"a_bucket"},
        ),
        ("sum(increase(b_total[5m])) or vector(0)", {"b_total"}),
        (
            'max by (check) (c) == 1 and on (instance) d offset 10m unless e{f!~"g|h"}',
            {"c", "d", "e"},
        ),
        ("count by (version) (info_metric) > bool 1e3", {"info_metric"}),
        ("sum without (pod) (rate(x:rate5m[1h:5m]))", {"x:rate5m"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert names_in_expression(expr) == names


def test_dashboard_is_importable_with_a_prometheus_datasource_variable() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    # No fixed id (Grafana assigns one on import) and a stable uid for links.
    assert dashboard["id"] is None
    assert dashboard["uid"]
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]


def test_every_query_reads_at_least_one_metric() -> None:
    queries = _queries()
    assert len(queries) >= 12
    for title, expr in queries:
        assert names_in_expression(expr), f"panel {title!r}: no metric in {expr!r}"


def test_every_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    # promtool parses each query as the expression of a recording rule.
    rules = []
    for number, (title, expr) in enumerate(_queries()):
        for variable, value in GRAFANA_RANGES.items():
            expr = expr.replace(variable, value)
        rules.append(
            {"record": f"dashboard:query_{number}", "expr": expr, "labels": {"panel": title}}
        )
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_every_metric_on_the_dashboard_is_exported(exported_metrics: set[str]) -> None:
    missing: dict[str, list[str]] = {}
    for title, expr in _queries():
        for name in names_in_expression(expr) - exported_metrics:
            missing.setdefault(base_name(name), []).append(title)
    assert not missing, "not exported by /metrics: " + "; ".join(
        f"{name} (panels: {', '.join(sorted(set(titles)))})"
        for name, titles in sorted(missing.items())
    )
