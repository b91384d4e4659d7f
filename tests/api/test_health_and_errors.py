"""Health probes, status, metrics and the problem+json error contract."""

from __future__ import annotations

import gc
import re
import weakref
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import pytest
import respx
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from app.domain.roles import Role
from app.main import _settle_garbage_collector, create_app
from app.storage.repositories import HealthRepository
from tests.api.test_auth import OPEN, PROTECTED
from tests.conftest import CONTROL_URL, Harness, event

CARD = "4111111111111111"


@pytest.fixture
async def pbx_up() -> AsyncIterator[respx.MockRouter]:
    """The generic PBX answers its health path (docs/operations.md), as a live one would."""
    async with respx.mock(assert_all_called=False) as router:
        router.get(f"{CONTROL_URL}/health").respond(204)
        yield router


async def test_livez_and_readyz(harness: Harness, pbx_up: respx.MockRouter) -> None:
    live = await harness.client.get("/livez")
    assert live.status_code == 200 and live.json() == {"status": "pass"}
    ready = await harness.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.headers["content-type"].startswith("application/health+json")
    body = ready.json()
    # A PostgreSQL server without autovacuum (this project's test server) is warned of.
    off = await autovacuum_off(harness)
    assert body["status"] == ("warn" if off else "pass")
    assert body["checks"]["database:connection"][0]["status"] == "pass"
    assert {"provider:generic", "provider:sim", "retention:overdue"} <= set(body["checks"])
    assert ("database:maintenance" in body["checks"]) == off


async def autovacuum_off(h: Harness) -> bool:
    """What the test database's server says, read apart from the service."""
    if h.services.db.is_sqlite:
        return False
    async with h.services.engine.connect() as conn:
        return bool((await conn.execute(sa.text("SHOW autovacuum"))).scalar_one() == "off")


async def test_a_postgresql_server_without_autovacuum_is_warned_of(
    harness: Harness, pbx_up: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read at each readiness computation, so turning autovacuum on clears the warning; a
    warning, never a failure, even when the setting cannot be read."""
    setting: list[bool | Exception] = [True]

    async def autovacuum_off(self: HealthRepository) -> bool:
        value = setting[0]
        if isinstance(value, Exception):
            raise value
        return value

    monkeypatch.setattr(HealthRepository, "autovacuum_off", autovacuum_off)
    health = harness.services.health
    health.cache_s = 0.0
    ready = await harness.client.get("/readyz", headers=harness.auth(Role.OPS))
    assert ready.status_code == 200 and ready.json()["status"] == "warn", "a warning"
    [entry] = ready.json()["checks"]["database:maintenance"]
    assert entry["status"] == "warn" and "autovacuum is off" in entry["output"]
    anonymous = (await harness.client.get("/readyz")).json()
    assert anonymous["checks"]["database:maintenance"] == [{"status": "warn"}]

    setting[0] = False
    ready = await harness.client.get("/readyz", headers=harness.auth(Role.OPS))
    assert "database:maintenance" not in ready.json()["checks"]
    assert ready.json()["status"] == "pass"
    setting[0] = RuntimeError("permission denied to read the setting")
    ready = await harness.client.get("/readyz", headers=harness.auth(Role.OPS))
    assert ready.status_code == 200 and ready.json()["status"] == "pass", ready.json()


def _only_names_and_statuses(body: dict[str, Any]) -> bool:
    return set(body) == {"status", "checks"} and all(
        entry.keys() == {"status"} for entries in body["checks"].values() for entry in entries
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer rg_not-a-real-token"},
        {"authorization": "Basic b3BzOm9wcw=="},
        {"authorization": "Bearer"},
    ],
    ids=["no token", "unknown token", "not bearer", "empty bearer"],
)
async def test_readyz_without_an_ops_token_shows_names_and_statuses_only(
    harness: Harness, headers: dict[str, str], pbx_up: respx.MockRouter
) -> None:
    ready = await harness.client.get("/readyz", headers=headers)
    assert ready.status_code == 200, "a load balancer's token is never refused"
    assert ready.headers["content-type"].startswith("application/health+json")
    body = ready.json()
    assert _only_names_and_statuses(body), body
    assert {"database:connection", "provider:generic", "retention:overdue"} <= set(body["checks"])
    assert "127.0.0.1" not in ready.text


async def test_readyz_for_a_role_other_than_ops_is_minimal(harness: Harness) -> None:
    for role in (Role.IVR, Role.SUPERVISOR, Role.DPO):
        body = (await harness.client.get("/readyz", headers=harness.auth(role))).json()
        assert _only_names_and_statuses(body), f"{role} sees readiness details"


async def test_readyz_details_for_ops_and_admin(harness: Harness, pbx_up: respx.MockRouter) -> None:
    for role in (Role.OPS, Role.ADMIN):
        body = (await harness.client.get("/readyz", headers=harness.auth(role))).json()
        generic = body["checks"]["provider:generic"][0]
        assert generic["output"] == "generic control at 127.0.0.1"
        assert generic["observedUnit"] == "ms" and generic["observedValue"] >= 0
        assert body["checks"]["retention:overdue"][0]["observedValue"] == 0
        assert "time" in body["checks"]["database:connection"][0]


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
            assert _only_names_and_statuses(ready.json()), "no error message for anonymous callers"
            with_token = await client.get("/readyz", headers={"authorization": "Bearer rg_x"})
            assert with_token.status_code == 503, "a token that cannot be checked is anonymous"
            assert _only_names_and_statuses(with_token.json())
            live = await client.get("/livez")
            assert live.status_code == 200, "livez passes while the process runs, database or not"


async def test_readyz_fails_when_the_pbx_does_not_answer_its_health_path(
    harness: Harness,
) -> None:
    # Nothing listens at CONTROL_URL (the discard port): commands could not be sent either.
    ready = await harness.client.get("/readyz", headers=harness.auth(Role.OPS))
    assert ready.status_code == 503
    check = ready.json()["checks"]["provider:generic"][0]
    assert check["status"] == "fail" and "ConnectError" in check["output"]


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
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.text)
        for sample in family.samples
    }
    applied = (("outcome", "applied"), ("provider", "generic"), ("type", "recording.started"))
    assert samples[("recgate_webhook_events_total", applied)] == 1
    unavailable = (("action", "pause"), ("outcome", "unavailable"), ("provider", "generic"))
    assert samples[("recgate_pause_commands_total", unavailable)] >= 1
    assert samples[("recgate_exposures_total", (("kind", "pause_failed"),))] == 1
    assert samples[("recgate_active_calls", ())] == 1
    assert samples[("recgate_open_payment_segments", ())] == 1
    assert "c-123" not in metrics.text, "call ids are never metric labels"


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


async def test_validation_error_scrubs_a_card_number_sent_as_a_json_key(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/calls/generic/c-1/payment/start",
        json={CARD: {"cvv": "123"}},
        headers=harness.auth(Role.IVR),
    )
    assert response.status_code == 422
    assert CARD not in response.text and "123" not in response.text
    (issue,) = response.json()["errors"]
    assert issue["loc"] == ["body", "[REDACTED]"]
    assert set(issue) == {"loc", "msg", "type"}, "no raw input or context is echoed"


async def test_validation_error_with_a_card_number_in_nested_keys_and_values(
    harness: Harness,
) -> None:
    response = await harness.client.post(
        "/v1/holds",
        json={"reason": CARD, "caller": [CARD], "note": {CARD: CARD}},
        headers=harness.auth(Role.DPO),
    )
    assert response.status_code == 422
    assert CARD not in response.text
    assert len(response.json()["errors"]) == 3


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("GET", f"/v1/recordings/{CARD}", Role.DPO),
        ("GET", f"/v1/calls/generic/{CARD}", Role.IVR),
        ("PUT", f"/v1/retention/policy/{CARD}", Role.DPO),
        ("GET", f"/v1/{CARD}", Role.DPO),
        ("POST", "/v1/calls/generic/4111-1111-1111-1111/payment/end", Role.IVR),
    ],
)
async def test_a_card_number_in_the_path_is_not_echoed(
    harness: Harness, method: str, path: str, role: Role
) -> None:
    json = {"media_months": 18, "record_months": 72} if method == "PUT" else None
    response = await harness.client.request(method, path, json=json, headers=harness.auth(role))
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert CARD not in response.text.replace("-", ""), response.text
    assert "[REDACTED]" in response.json()["instance"]


async def test_slash_redirects_never_echo_the_host_header(harness: Harness) -> None:
    for method, path in (
        ("GET", "/v1/recordings/"),
        ("GET", "/livez/"),
        ("POST", "/v1/calls/generic/c-1/payment/start/"),
    ):
        response = await harness.client.request(
            method,
            path,
            headers={**harness.auth(Role.ADMIN), "host": "evil.example"},
            follow_redirects=False,
        )
        assert response.status_code == 404, f"{method} {path} is not redirected"
        assert "location" not in response.headers
        assert "evil.example" not in response.text
        assert response.headers["content-type"].startswith("application/problem+json")


def _json_body_routes() -> list[tuple[str, str]]:
    schema = create_app().openapi()
    return sorted(
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation and not path.startswith("/v1/webhooks/")
    )


@pytest.mark.parametrize(("method", "path"), _json_body_routes())
async def test_deeply_nested_json_is_a_4xx_problem(
    harness: Harness, method: str, path: str
) -> None:
    concrete = (
        path.replace("{provider}", "sim")
        .replace("{provider_call_id}", "c-deep")
        .replace("{recording_id}", "00000000-0000-0000-0000-000000000001")
        .replace("{service_area}", "council_tax")
    )
    bodies = {
        "500-deep array": "[" * 500 + "]" * 500,
        "500-deep object": '{"a":' * 500 + "1" + "}" * 500,
        "500-deep field": '{"reference":' + "[" * 500 + "]" * 500 + "}",
        "20,000-deep array": "[" * 20_000 + "]" * 20_000,
    }
    headers = {**harness.auth(Role.ADMIN), "content-type": "application/json"}
    for name, body in bodies.items():
        response = await harness.client.request(method, concrete, content=body, headers=headers)
        assert 400 <= response.status_code < 500, f"{name} to {method} {path}: {response.text}"
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_a_body_that_is_not_json_is_415(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/holds",
        content=b'{"reason": "other", "caller": "+441632960001"}',
        headers={**harness.auth(Role.DPO), "content-type": "text/plain"},
    )
    assert response.status_code == 415
    assert response.json()["type"].endswith("/unsupported-media-type")
    empty = await harness.client.post(
        "/v1/calls/sim/c-415/payment/start",
        headers={**harness.auth(Role.IVR), "content-type": "text/plain"},
    )
    assert empty.status_code == 200, "no body, nothing to refuse"


async def test_a_nul_character_is_refused_not_a_server_error(harness: Harness) -> None:
    # PostgreSQL cannot store NUL; SQLite can. Either way the client is not told 500.
    listed = await harness.client.get(
        "/v1/audit", params={"target_id": "\x00x"}, headers=harness.auth(Role.DPO)
    )
    assert listed.status_code in (200, 422), listed.text
    held = await harness.client.post(
        "/v1/holds",
        json={"reason": "other", "caller": "+44\u0000123"},
        headers=harness.auth(Role.DPO),
    )
    assert held.status_code in (201, 422), held.text


def _asset_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_load_nothing_from_another_host(harness: Harness, page: str) -> None:
    html = await harness.client.get(page)
    assert html.status_code == 200
    assets = _asset_urls(html.text)
    assert any(url.endswith(".js") for url in assets), assets
    assert not re.search(r"https?://|//[a-z]", " ".join(assets)), assets
    assert not re.search(r"""["'(]\s*(?:https?:)?//""", html.text), "no URL to another host"
    for url in [*assets, "/openapi.json"]:
        asset = await harness.client.get(url)
        assert asset.status_code == 200 and asset.content, url


async def test_a_stopped_app_leaves_nothing_alive(make_harness: Any) -> None:
    """A stopped app, its services and its provider clients are freed: nothing process-wide
    (FastAPI's endpoint caches, module routers) keeps a reference. The test process starts an
    app per test; when each one stayed, a full collection walked millions of objects and
    paused the end-to-end tests' requests for seconds."""
    _settle_garbage_collector()  # once per process: it would freeze this app if it came first
    async with make_harness() as h:
        for page in ("/docs", "/redoc", "/docs/oauth2-redirect", "/livez", "/openapi.json"):
            assert (await h.client.get(page)).status_code == 200, page
        services = weakref.ref(h.services)
        del h
    gc.collect()
    assert services() is None, [type(r).__name__ for r in gc.get_referrers(services())]


def test_openapi_declares_bearer_auth_where_a_token_is_needed() -> None:
    schema = create_app().openapi()
    scheme = schema["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for (method, path), _roles in PROTECTED.items():
        operation = schema["paths"][path][method.lower()]
        assert operation["security"] == [{"bearerAuth": []}], f"{method} {path}"
        assert {"401", "403"} <= set(operation["responses"]), f"{method} {path}"
    for method, path in OPEN:
        operation = schema["paths"][path][method.lower()]
        assert {"bearerAuth": []} not in operation["security"] or {} in operation["security"]
        if path.startswith("/v1/webhooks/"):
            assert "not by a bearer token" in operation["description"]


def test_public_metrics_need_no_bearer_in_openapi(settings: Any) -> None:
    schema = create_app(settings.model_copy(update={"metrics_public": True})).openapi()
    assert schema["paths"]["/metrics"]["get"]["security"] == []


def test_openapi_documents_problems_as_problem_json() -> None:
    schema = create_app().openapi()
    problem = schema["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "instance"} <= set(problem["properties"])
    assert problem["additionalProperties"] is True
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            label = f"{method.upper()} {path}"
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path != "/readyz":
                    assert list(response["content"]) == ["application/problem+json"], label
            if "{" in path:
                assert "404" in operation["responses"], label
            if operation.get("parameters") or "requestBody" in operation:
                assert "422" in operation["responses"], label
            if "requestBody" in operation:
                assert {"413", "415"} <= set(operation["responses"]), label
            if path != "/livez":
                assert "503" in operation["responses"], label
    payment = schema["paths"]["/v1/calls/{provider}/{provider_call_id}/payment/start"]["post"]
    refused = payment["responses"]["503"]["content"]["application/problem+json"]["schema"]
    assert refused == {"$ref": "#/components/schemas/PaymentProblem"}
    assert "safe_to_collect" in schema["components"]["schemas"]["PaymentProblem"]["properties"]


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
    async def explode(*_: Any, **__: Any) -> NoReturn:
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
    on_a_card = await harness.client.post(
        f"/v1/calls/generic/{CARD}/payment/start",
        content=big,
        headers={"content-type": "application/json"},
    )
    assert on_a_card.status_code == 413 and CARD not in on_a_card.text
