"""What the deploy files are checked with: the metrics a running recgate exports, promtool."""

from __future__ import annotations

import os
import shutil

import pytest

from app.domain.roles import Role
from tests.conftest import Harness
from tests.deploy.metric_names import exported_series_names

PROMTOOL_HINT = "apt-get install -y prometheus (it provides promtool)"


def _promtool_required() -> bool:
    return os.environ.get("RECGATE_TEST_REQUIRE_PROMTOOL", "") not in ("", "0")


@pytest.fixture
def promtool() -> str:
    """promtool's path. Skips without it, unless RECGATE_TEST_REQUIRE_PROMTOOL is set (CI)."""
    found = shutil.which("promtool")
    if found is None:
        reason = f"promtool is not installed ({PROMTOOL_HINT})"
        if _promtool_required():
            pytest.fail(f"{reason}; RECGATE_TEST_REQUIRE_PROMTOOL is set")
        pytest.skip(reason)
    return found


@pytest.fixture
async def exported_metrics(harness: Harness) -> set[str]:
    """The series names the app's /metrics exports, scraped as Prometheus would (ops token),
    after the traffic any deployment sees first: probes."""
    for probe in ("/livez", "/readyz"):
        await harness.client.get(probe)
    response = await harness.client.get("/metrics", headers=harness.auth(Role.OPS))
    assert response.status_code == 200, f"/metrics answered {response.status_code}"
    names = exported_series_names(response.text)
    assert names, "/metrics exported nothing"
    return names
