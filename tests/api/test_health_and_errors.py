"""Health probes, status, metrics and the problem+json error contract."""

from __future__ import annotations

from typing import Any

import respx

from app.domain.roles import Role
from tests.conftest import CONTROL_URL, Harness, event


async def test_livez_and_readyz(harness: Harness) -> None:
    live = await harness.client.get("/livez")
    assert live.status_code == 200 and live.json() == {"status": "pass"}
    ready = await harness.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.headers["content-type"].startswith("application/health+json")
    body = ready.json()
    assert body["status"] == "pass"
    assert body["checks"]["database:connection"][0]["status"] == "pass"
    assert {"provider:generic", "provider:sim", "retention:overdue"} <= set(body["checks"])


async def test_readyz_fails_when_the_database_is_down(settings: Any) -> None:
    import httpx

    from app.main import create_app

    # Nothing listens on loopback port 1: the database is down from the service's view.
    app = create_app(
        settings.model_copy(
            update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/none"}
        )
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://recgate.test") as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["status"] == "fail"
            assert ready.json()["checks"]["database:connection"][0]["status"] == "fail"
            live = await client.get("/livez")
            assert live.status_code == 200, "livez passes while the process runs, database or not"


async def test_readyz_warns_for_generic_without_control_url(make_harness: Any) -> None:
    async with make_harness(generic_control_url=None) as h:
        body = (await h.client.get("/readyz")).json()
        assert body["status"] == "warn"
        assert body["checks"]["provider:generic"][0]["status"] == "warn"


async def test_status_and_metrics_reflect_activity(harness: Harness) -> None:
    async with respx.mock:
        respx.post(f"{CONTROL_URL}/calls/c-123/recording/pause").respond(500)
        await harness.send_event(event("recording.started", recording_id="r-1"))
        await harness.client.post(
            "/v1/calls/generic/c-123/payment/start", headers=harness.auth(Role.IVR)
        )
    status = (await harness.client.get("/v1/status", headers=harness.auth(Role.OPS))).json()
    assert status["active_calls"] == 1
    assert status["open_segments"] == 1
    assert status["pause_failures_24h"] == 1
    assert status["exposures_24h"] == 1
    assert set(status) >= {"retention_overdue", "last_sweep_at"}

    metrics = await harness.client.get("/metrics", headers=harness.auth(Role.OPS))
    text = metrics.text
    assert (
        'recgate_webhook_events_total{outcome="applied",provider="generic",type="recording.started"} 1'
        in text
    )
    assert (
        'recgate_pause_commands_total{action="pause",outcome="unavailable",provider="generic"}'
        in text
    )
    assert 'recgate_exposures_total{kind="pause_failed"} 1' in text
    assert "recgate_active_calls 1" in text and "recgate_open_payment_segments 1" in text
    assert "c-123" not in text, "call ids are never metric labels"


async def test_validation_error_is_problem_json_without_echoing_input(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/calls/generic/c-1/payment/start",
        json={"reference": "x", "pause_behavior": "4111111111111111"},
        headers=harness.auth(Role.IVR),
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "4111111111111111" not in response.text
    assert response.json()["errors"][0]["loc"][-1] == "pause_behavior"


async def test_unknown_route_and_call_are_404_problems(harness: Harness) -> None:
    assert (
        (await harness.client.get("/nope"))
        .headers["content-type"]
        .startswith("application/problem+json")
    )
    missing = await harness.client.get(
        "/v1/calls/generic/unknown", headers=harness.auth(Role.SUPERVISOR)
    )
    assert missing.status_code == 404
    assert missing.json()["type"].endswith("/not-found")


async def test_unhandled_error_is_500_problem_without_internals(harness: Harness) -> None:
    async def explode(*_: Any, **__: Any) -> None:
        raise RuntimeError("SELECT secret FROM internals")

    harness.services.calls.detail = explode  # type: ignore[method-assign]
    response = await harness.client.get(
        "/v1/calls/generic/c-1", headers=harness.auth(Role.SUPERVISOR)
    )
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "SELECT" not in response.text and "internals" not in response.text


async def test_oversized_api_body_is_refused_before_it_is_parsed(harness: Harness) -> None:
    big = b'{"reference": "' + b"x" * (70 * 1024) + b'"}'
    response = await harness.client.post(
        "/v1/calls/generic/c-1/payment/start",
        content=big,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413, (
        "no token, but the body is refused before anything parses it"
    )
    assert response.headers["content-type"].startswith("application/problem+json")
