"""Generic webhooks: signatures, idempotency, malformed payloads, order independence."""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.telephony.signing import sign, signed_headers
from tests.conftest import Harness, assert_failure_observed, event


def _signed(h: Harness, body: bytes, **overrides: str) -> dict[str, str]:
    headers = signed_headers(h.services.settings.generic_secret_key or b"", body, datetime.now(UTC))
    headers["content-type"] = "application/json"
    headers.update(overrides)
    return headers


async def _nothing_stored(h: Harness) -> None:
    for table in ("inbound_events", "calls", "recordings", "dead_letters"):
        assert await h.count(table) == 0, f"{table} must stay empty after a refused webhook"


async def test_signed_event_is_stored_and_applied(harness: Harness) -> None:
    response = await harness.send_event(event("call.started", agent_id="a-7"))
    assert response.status_code == 200
    assert response.json() == {"status": "applied"}
    assert await harness.count("inbound_events") == 1
    assert await harness.count("calls") == 1


async def test_missing_signature_is_401_and_nothing_stored(harness: Harness) -> None:
    body = json.dumps(event("call.started")).encode()
    response = await harness.client.post(
        "/v1/webhooks/generic", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    await _nothing_stored(harness)


async def test_bad_signature_is_401_and_nothing_stored(harness: Harness) -> None:
    body = json.dumps(event("call.started")).encode()
    wrong_key = base64.b64decode(base64.b64encode(b"another-secret-0123456789abcdef!"))
    headers = _signed(harness, body)
    headers["webhook-signature"] = sign(
        wrong_key, headers["webhook-id"], int(headers["webhook-timestamp"]), body
    )
    assert (
        await harness.client.post("/v1/webhooks/generic", content=body, headers=headers)
    ).status_code == 401
    await _nothing_stored(harness)


async def test_body_changed_after_signing_is_401(harness: Harness) -> None:
    body = json.dumps(event("call.started")).encode()
    headers = _signed(harness, body)
    tampered = body.replace(b"council_tax", b"benefits")
    assert (
        await harness.client.post("/v1/webhooks/generic", content=tampered, headers=headers)
    ).status_code == 401
    await _nothing_stored(harness)


async def test_stale_and_future_signatures_are_401(harness: Harness) -> None:
    body = json.dumps(event("call.started")).encode()
    key = harness.services.settings.generic_secret_key or b""
    for skew in (timedelta(minutes=-6), timedelta(minutes=6)):
        headers = signed_headers(key, body, datetime.now(UTC) + skew)
        headers["content-type"] = "application/json"
        response = await harness.client.post("/v1/webhooks/generic", content=body, headers=headers)
        assert response.status_code == 401, f"a signature {skew} away must be refused"
    await _nothing_stored(harness)


async def test_a_webhook_that_fails_unexpectedly_gets_a_problem_and_is_observed(
    harness: Harness, monkeypatch: Any
) -> None:
    """Webhooks skip the framework's routing and error layers (``Front``): what those
    give a request is given to them all the same."""

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(harness.services.intake, "accept", broken)
    response = await harness.send_event(event("call.started"))
    await assert_failure_observed(harness, response, "/v1/webhooks/generic")


async def test_webhook_batches_leave_the_event_loop_while_the_ivr_waits(
    harness: Harness,
) -> None:
    """On SQLite a batch runs in the event loop, unless a payment start or end is still
    being answered once the batch has given it its turn: the payment's steps would then
    queue behind it (docs/gate.md)."""
    if not harness.services.db.is_sqlite:
        pytest.skip("PostgreSQL batches never run in the event loop")
    where: list[str] = []

    def inbox_insert(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().startswith("INSERT INTO inbound_events"):
            where.append(threading.current_thread().name)

    engines = harness.services.db.sync_engines
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", inbox_insert)
    gate = harness.services.gate
    try:
        assert (await harness.send_event(event("call.started", call_id="c-1"))).status_code == 200
        with gate.answering.one():  # as PaymentGate.start does while it answers
            response = await harness.send_event(event("call.started", call_id="c-2"))
            assert response.status_code == 200
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", inbox_insert)
    assert where == [threading.current_thread().name, "recgate-db-writer_0"]
    assert await harness.count("calls") == 2


async def test_duplicate_event_id_is_200_and_changes_nothing(harness: Harness) -> None:
    first = await harness.send_event(event("call.started"), msg_id="msg_same")
    # Same id, different content: the first one stands.
    second = await harness.send_event(event("call.ended"), msg_id="msg_same")
    assert first.json() == {"status": "applied"}
    assert second.status_code == 200 and second.json() == {"status": "duplicate"}
    assert await harness.count("inbound_events") == 1
    async with harness.services.engine.connect() as conn:
        state = (await conn.execute(sa.text("SELECT state FROM calls"))).scalar_one()
    assert state == "in_progress"


async def test_signed_but_malformed_is_422_and_dead_lettered_scrubbed(harness: Harness) -> None:
    bad = {
        "type": "call.exploded",
        "occurred_at": "yesterday",
        "call": {"id": "c-1"},
        "note": "card 4111 1111 1111 1111 cvv 123",
    }
    body = json.dumps(bad).encode()
    response = await harness.client.post(
        "/v1/webhooks/generic", content=body, headers=_signed(harness, body)
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await harness.count("inbound_events") == 0
    async with harness.services.engine.connect() as conn:
        stored = (await conn.execute(sa.text("SELECT payload FROM dead_letters"))).scalar_one()
    assert "4111" not in stored and "cvv 123" not in stored
    assert "[REDACTED]" in stored


async def test_recording_event_without_recording_is_422(harness: Harness) -> None:
    body = json.dumps(event("recording.started")).encode()
    response = await harness.client.post(
        "/v1/webhooks/generic", content=body, headers=_signed(harness, body)
    )
    assert response.status_code == 422
    assert await harness.count("dead_letters") == 1


async def test_unknown_fields_are_ignored_and_scrubbed(harness: Harness) -> None:
    body = event("call.started")
    body["extra"] = {"caller_said": "my card is 5555-5555-5555-4444", "nested": [378282246310005]}
    response = await harness.send_event(body)
    assert response.status_code == 200
    async with harness.services.engine.connect() as conn:
        stored = (await conn.execute(sa.text("SELECT payload FROM inbound_events"))).scalar_one()
    text = stored if isinstance(stored, str) else json.dumps(stored)
    assert "5555" not in text and "378282246310005" not in text


async def test_webhook_for_disabled_provider_is_404(make_harness: Any) -> None:
    async with make_harness(sim_enabled=False) as h:
        response = await h.send_event(event("call.started"), provider="sim")
        assert response.status_code == 404


# ---- order independence -------------------------------------------------------------------

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def _at(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def _call_events(call_id: str) -> list[dict[str, Any]]:
    completed = event("recording.completed", call_id, "r-1", _at(320))
    completed["recording"].update(
        {"duration_s": 312, "media_url": "https://pbx.invalid/r-1.wav", "sha256": "ab" * 32}
    )
    return [
        event("call.started", call_id, at=_at(0), agent_id="a-7"),
        event("call.answered", call_id, at=_at(5)),
        event("recording.started", call_id, "r-1", _at(6)),
        event("recording.started", call_id, "r-2", _at(8)),
        event("recording.paused", call_id, "r-1", _at(100)),
        event("recording.resumed", call_id, "r-1", _at(160)),
        event("call.transferred", call_id, at=_at(200), agent_id="a-9"),
        event("recording.stopped", call_id, "r-1", _at(318)),
        event("call.ended", call_id, at=_at(318)),
        completed,
        event("recording.failed", call_id, "r-2", _at(319)),
    ]


async def _final_state(h: Harness, call_id: str) -> dict[str, Any]:
    async with h.services.engine.connect() as conn:
        call = (
            (
                await conn.execute(
                    sa.text(
                        "SELECT id, state, started_at, answered_at, ended_at, agent_id, service_area, from_number,"
                        " record_retention_until FROM calls WHERE provider_call_id = :c"
                    ),
                    {"c": call_id},
                )
            )
            .mappings()
            .one()
        )
        recordings = (
            (
                await conn.execute(
                    sa.text(
                        "SELECT provider_recording_id, state, started_at, ended_at, duration_s, media_sha256,"
                        " retention_until, quarantined FROM recordings WHERE call_id = :id ORDER BY provider_recording_id"
                    ),
                    {"id": call["id"]},
                )
            )
            .mappings()
            .all()
        )
    return {
        "call": {k: v for k, v in call.items() if k != "id"},
        "recordings": [dict(r) for r in recordings],
    }


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
async def test_final_state_does_not_depend_on_order_or_duplicates(
    harness: Harness, data: st.DataObject
) -> None:
    reference_id = "ref-" + "x" * 4
    if await harness.count("calls") == 0:
        for i, body in enumerate(_call_events(reference_id)):
            assert (await harness.send_event(body, msg_id=f"{reference_id}-{i}")).status_code == 200
    expected = await _final_state(harness, reference_id)

    call_id = f"perm-{await harness.count('calls')}"
    bodies = list(enumerate(_call_events(call_id)))
    order = data.draw(st.permutations(bodies), label="arrival order")
    repeats = data.draw(st.lists(st.sampled_from(bodies), max_size=4), label="redelivered")
    for i, body in [*order, *repeats]:
        response = await harness.send_event(body, msg_id=f"{call_id}-{i}")
        assert response.status_code == 200, response.text

    assert await _final_state(harness, call_id) == expected


async def test_generic_contract_has_no_internal_event_types(harness: Harness) -> None:
    response = await harness.send_event(event("call.linked"))
    assert response.status_code == 422


def test_every_webhook_route_is_documented() -> None:
    """The webhook routes skip FastAPI's parameter handling (they read the raw, signed body);
    they are still in the OpenAPI document, with the acknowledgement they answer."""
    from app.config import Settings
    from app.main import create_app
    from app.telephony.registry import PROVIDERS

    paths = create_app(Settings(_env_file=None)).openapi()["paths"]
    for provider in PROVIDERS:
        for route in provider.webhooks:
            operation = paths[f"/v1/webhooks/{route.path}"]["post"]
            ack = operation["responses"]["200"]["content"]["application/json"]["schema"]
            assert ack == {"$ref": "#/components/schemas/WebhookAck"}
