"""deploy/prometheus: the alert rules load in Prometheus, pass their promtool unit tests, cover
every alert both firing and silent, and read only metrics recgate exports."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.metric_names import base_name, names_in_expression

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "recgate-alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "recgate-alerts.test.yml"
# Metrics Prometheus itself makes for every target, not recgate's /metrics.
PROMETHEUS_OWN = frozenset({"up"})
SEVERITIES = frozenset({"critical", "warning"})


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120, check=False
    )


def _alert_rules() -> list[dict[str, Any]]:
    document: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = _run([promtool, "check", "rules", RULES.name])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_pass_their_promtool_unit_tests(promtool: str) -> None:
    result = _run([promtool, "test", "rules", RULE_TESTS.name])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_see_every_alert_fire_and_stay_silent() -> None:
    tests: dict[str, Any] = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in _alert_rules()}
    assert alerts - firing == set(), "never seen firing"
    assert alerts - silent == set(), "never seen silent"
    assert (firing | silent) - alerts == set(), "tests for alerts that do not exist"


def test_every_alert_tells_on_call_what_it_means_and_what_to_do() -> None:
    rules = _alert_rules()
    expected = {
        "RecgatePauseNotConfirmed",
        "RecgateExposureRecorded",
        "RecgatePaymentPauseOverlong",
        "RecgateRetentionOverdue",
        "RecgateUnavailable",
        "RecgateInstanceDown",
        "RecgateNotReady",
        "RecgateResumeStuck",
    }
    assert expected <= {rule["alert"] for rule in rules}
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        assert "What to do" in rule["annotations"]["description"], name


def test_the_availability_alerts_cover_up_and_readiness() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in _alert_rules()}
    assert "up" in names_in_expression(exprs["RecgateInstanceDown"])
    assert "recgate_ready" in names_in_expression(exprs["RecgateNotReady"])


async def test_the_rules_read_only_metrics_recgate_exports(exported_metrics: set[str]) -> None:
    missing: dict[str, list[str]] = {}
    for rule in _alert_rules():
        for name in names_in_expression(rule["expr"]) - exported_metrics - PROMETHEUS_OWN:
            missing.setdefault(base_name(name), []).append(rule["alert"])
    assert not missing, "not exported by /metrics: " + "; ".join(
        f"{name} (alerts: {', '.join(sorted(alerts))})" for name, alerts in sorted(missing.items())
    )
