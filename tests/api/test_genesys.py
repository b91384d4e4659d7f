"""Genesys Cloud: EventBridge events in, secure pause out (respx as the Genesys Cloud APIs).

Requests and answers follow Genesys' documented shapes: the OAuth client-credentials token
(``POST /oauth/token``, Basic client id:secret → ``access_token``, ``token_type``,
``expires_in``), ``PUT /api/v2/conversations/calls/{id}/recordingstate`` with
``SetRecordingState``, the ``CallConversation`` read back by ``GET
/api/v2/conversations/calls/{id}``, the ``Organization`` of ``GET /api/v2/organizations/me``,
and EventBridge's envelope around Genesys' ``topicName`` / ``eventBody`` (detail events and the
queue's call conversation topic).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
import sqlalchemy as sa
from pydantic import ValidationError

from app.config import Settings
from app.domain.roles import Role
from app.domain.states import PauseBehavior
from app.telephony.base import ControlTarget, ProviderRejected, ProviderUnavailable, RecordingRef
from app.telephony.genesys import ClientCredentials, GenesysController, read_recording_state
from tests.conftest import CONTROL_URL, FakeClock, Harness

API = "http://127.0.0.1:9/genesys-api"
LOGIN = "http://127.0.0.1:9/genesys-login"
TOKEN_URL = f"{LOGIN}/oauth/token"
CLIENT_ID = "5f1c3b2a-8d4e-4f6a-9b7c-2e1d0a9f8b7c"
CLIENT_SECRET = "genesys-client-secret-for-tests-01"
WEBHOOK_TOKEN = "eventbridge-api-key-for-tests-0001"
ORG = "32aa07aa-db1b-4987-abd0-9483601ec29d"
SOURCE = f"aws.partner/genesys.com/cloud/{ORG}/recgate-events"
QUEUE = "b7c1a0de-5e4f-4a3b-8c2d-1f0e9d8c7b6a"
AGENT = "d3e4f5a6-b7c8-4d9e-a0f1-b2c3d4e5f6a7"
CONV = "2f7bf00a-0fc2-4d6a-9b56-92238191433e"
CONVERSATION = f"{API}/api/v2/conversations/calls/{CONV}"
RECORDING_STATE = f"{CONVERSATION}/recordingstate"
ORGANIZATION = f"{API}/api/v2/organizations/me"
REC = f"{CONV}:call"
CALLER, DIALLED = "+441632960001", "+441632960999"


# ---- Genesys' shapes -------------------------------------------------------------------------


def token_answer(value: str = "gc-token-1", expires_in: int = 86399) -> httpx.Response:
    """``POST /oauth/token`` with the client credentials grant, as Genesys answers it."""
    return httpx.Response(
        200, json={"access_token": value, "token_type": "bearer", "expires_in": expires_in}
    )


def error_body(status: int, code: str, message: str) -> httpx.Response:
    """A Platform API error (``ErrorBody``)."""
    return httpx.Response(
        status,
        json={
            "message": message,
            "code": code,
            "status": status,
            "contextId": "0c4a5b6d-7e8f-4a0b-9c1d-2e3f4a5b6c7d",
            "details": [],
            "errors": [],
        },
    )


def participant(purpose: str, state: str = "connected", **extra: Any) -> dict[str, Any]:
    """A ``CallMediaParticipant`` of the conversation."""
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "startTime": "2026-11-28T10:00:00.000Z",
        "connectedTime": "2026-11-28T10:00:01.000Z",
        "purpose": purpose,
        "state": state,
        "direction": "inbound",
        "held": False,
        "wrapupRequired": purpose == "agent",
        "queue": {"id": QUEUE, "selfUri": f"/api/v2/routing/queues/{QUEUE}"},
        "attributes": {},
        "provider": "Edge",
        "muted": False,
        "confined": False,
        "recording": purpose in ("customer", "agent"),
        **extra,
    }
    if purpose == "customer":
        body.update(
            name="Mobile Number, United Kingdom",
            address=f"tel:{CALLER}",
            ani=f"tel:{CALLER}",
            dnis=f"tel:{DIALLED}",
        )
    if purpose == "agent":
        body["user"] = {"id": AGENT, "selfUri": f"/api/v2/users/{AGENT}"}
    return body


def call_conversation(
    recording_state: str, participants: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    """``GET /api/v2/conversations/calls/{id}`` (``CallConversation``)."""
    return {
        "id": CONV,
        "participants": participants
        if participants is not None
        else [participant("customer"), participant("acd", "disconnected"), participant("agent")],
        "otherMediaUris": [],
        "recordingState": recording_state,
        "securePause": recording_state.lower() == "paused",
        "selfUri": f"/api/v2/conversations/calls/{CONV}",
        **extra,
    }


def stamp(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envelope(
    topic: str, detail_type: str, body: dict[str, Any], *, at: datetime | None = None
) -> dict[str, Any]:
    """One EventBridge event carrying a Genesys Cloud notification."""
    when = at or datetime.now(UTC)
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": SOURCE,
        "account": "123456789012",
        "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "eu-west-2",
        "resources": [],
        "detail": {
            "topicName": topic,
            "version": "2",
            "eventBody": body,
            "metadata": {"CorrelationId": str(uuid.uuid4())},
            "timestamp": stamp(when),
        },
    }


def detail_event(kind: str, *, at: datetime | None = None, **fields: Any) -> dict[str, Any]:
    """``v2.detail.events.conversation.{id}.<kind>`` (CustomerStart/End, AcdEnd …)."""
    when = at or datetime.now(UTC)
    body = {
        "eventTime": int(when.timestamp() * 1000),
        "conversationId": CONV,
        "participantId": "9fb2ca78-8389-4758-b76a-9b0300de1fce",
        "sessionId": "c03d300e-fa79-4353-9695-b97a71322785",
        "mediaType": "VOICE",
        "provider": "Edge",
        "direction": "INBOUND",
        "ani": f"tel:{CALLER}",
        "dnis": f"tel:{DIALLED}",
        **fields,
    }
    return envelope(
        f"v2.detail.events.conversation.{CONV}.{kind}",
        f"v2.detail.events.conversation.{{id}}.{kind}",
        body,
        at=when,
    )


def snapshot(
    recording_state: str,
    *,
    at: datetime | None = None,
    participants: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``v2.routing.queues.{id}.conversations.calls``: the call conversation as it is now."""
    body = call_conversation(recording_state, participants)
    body.pop("selfUri")
    return envelope(
        f"v2.routing.queues.{QUEUE}.conversations.calls",
        "v2.routing.queues.{id}.conversations.calls",
        body,
        at=at,
    )


# ---- harness ---------------------------------------------------------------------------------

GENESYS = {
    "genesys_api_base": API,
    "genesys_login_base": LOGIN,
    "genesys_client_id": CLIENT_ID,
    "genesys_client_secret": CLIENT_SECRET,
    "genesys_webhook_token": WEBHOOK_TOKEN,
}


@pytest.fixture
async def gc(make_harness: Callable[..., Any]) -> AsyncIterator[Harness]:
    async with make_harness(**GENESYS) as h:
        yield h


@pytest.fixture
async def cloud() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=False) as router:
        router.post(TOKEN_URL, name="token").mock(return_value=token_answer())
        yield router


async def send(
    h: Harness, body: dict[str, Any], *, token: str | None = WEBHOOK_TOKEN, query: str = ""
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["x-recgate-token"] = token
    path = "/v1/webhooks/genesys" + (f"?{query}" if query else "")
    return await h.client.post(path, content=json.dumps(body).encode(), headers=headers)


async def applied(h: Harness, body: dict[str, Any]) -> None:
    response = await send(h, body)
    assert response.status_code == 200 and response.json()["status"] == "applied", response.text


async def pay(h: Harness, action: str, **body: Any) -> httpx.Response:
    return await h.client.post(
        f"/v1/calls/genesys/{CONV}/payment/{action}", json=body, headers=h.auth(Role.IVR)
    )


async def get_call(h: Harness) -> dict[str, Any]:
    response = await h.client.get(f"/v1/calls/genesys/{CONV}", headers=h.auth(Role.SUPERVISOR))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def states(call: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    return {r["provider_recording_id"]: (r["state"], r["quarantined"]) for r in call["recordings"]}


async def last_error(h: Harness) -> str:
    async with h.services.engine.connect() as conn:
        return str(
            (await conn.execute(sa.text("SELECT last_error FROM payment_segments"))).scalar_one()
        )


# ---- control ---------------------------------------------------------------------------------


async def test_pause_and_resume_are_genesys_requests_with_one_token(
    gc: Harness, cloud: respx.MockRouter
) -> None:
    put = cloud.put(RECORDING_STATE).respond(202)
    read = cloud.get(CONVERSATION)
    read.side_effect = [
        httpx.Response(200, json=call_conversation("PAUSED")),
        httpx.Response(200, json=call_conversation("ACTIVE")),
    ]
    await applied(gc, snapshot("active"))

    start = await pay(gc, "start")  # no pause_behavior: Genesys' own, a secure pause
    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True
    assert [(r["provider_recording_id"], r["state"]) for r in start.json()["recordings"]] == [
        (REC, "paused")
    ]
    end = await pay(gc, "end", outcome="authorised")
    assert end.status_code == 200 and end.json()["state"] == "closed", end.text
    assert [r["state"] for r in end.json()["recordings"]] == ["recording"]

    pause_request, resume_request = (call.request for call in put.calls)
    assert json.loads(pause_request.content) == {"recordingState": "PAUSED"}
    assert json.loads(resume_request.content) == {"recordingState": "ACTIVE"}
    assert pause_request.headers["content-type"] == "application/json"
    for call in [*put.calls, *read.calls]:
        assert call.request.headers["authorization"] == "Bearer gc-token-1"
    [token_call] = cloud.routes["token"].calls
    assert token_call.request.headers["authorization"] == basic(CLIENT_ID, CLIENT_SECRET)
    assert parse_qs(token_call.request.content.decode()) == {"grant_type": ["client_credentials"]}
    assert (await get_call(gc))["exposures"] == []


async def test_silence_is_refused_without_a_request(gc: Harness, cloud: respx.MockRouter) -> None:
    put = cloud.put(RECORDING_STATE).respond(202)
    await applied(gc, snapshot("active"))

    start = await pay(gc, "start", pause_behavior="silence")

    assert start.status_code == 503
    assert start.json()["safe_to_collect"] is False and start.json()["state"] == "pause_failed"
    assert put.call_count == 0 and cloud.routes["token"].call_count == 0, "nothing was sent"
    assert "pause_behavior" in await last_error(gc) and "skip" in await last_error(gc)


async def test_put_failing_fails_closed(gc: Harness, cloud: respx.MockRouter) -> None:
    put = cloud.put(RECORDING_STATE).mock(
        return_value=error_body(503, "service.unavailable", "Service Unavailable")
    )
    await applied(gc, snapshot("active"))

    start = await pay(gc, "start", pause_behavior="skip")

    assert start.status_code == 503
    assert start.json()["safe_to_collect"] is False and start.json()["state"] == "pause_failed"
    assert put.call_count >= 2, "a 503 is transient: retried within the deadline"
    await gc.services.tasks.drain()
    call = await get_call(gc)
    assert states(call) == {REC: ("recording", True)}
    assert [e["kind"] for e in call["exposures"]] == ["pause_failed"]


async def test_read_back_still_active_fails_closed(gc: Harness, cloud: respx.MockRouter) -> None:
    put = cloud.put(RECORDING_STATE).respond(202)
    cloud.get(CONVERSATION).respond(200, json=call_conversation("ACTIVE"))
    await applied(gc, snapshot("active"))

    start = await pay(gc, "start", pause_behavior="skip")

    assert start.status_code == 503 and start.json()["safe_to_collect"] is False
    assert put.call_count >= 2, "the PUT is resent while the read-back lags, until the deadline"
    assert "still reads active" in await last_error(gc)


async def test_a_participant_still_recording_vetoes_the_pause(
    gc: Harness, cloud: respx.MockRouter
) -> None:
    cloud.put(RECORDING_STATE).respond(202)
    recording_agent = participant("agent", recordingState="active")
    cloud.get(CONVERSATION).respond(
        200, json=call_conversation("PAUSED", [participant("customer"), recording_agent])
    )
    await applied(gc, snapshot("active"))
    start = await pay(gc, "start", pause_behavior="skip")
    assert start.status_code == 503 and start.json()["safe_to_collect"] is False


async def test_read_back_catching_up_is_confirmed(gc: Harness, cloud: respx.MockRouter) -> None:
    put = cloud.put(RECORDING_STATE).respond(202)
    read = cloud.get(CONVERSATION)
    read.side_effect = [
        httpx.Response(200, json=call_conversation("active")),
        httpx.Response(200, json=call_conversation("paused")),
    ]
    await applied(gc, snapshot("active"))
    start = await pay(gc, "start", pause_behavior="skip")
    assert start.status_code == 200 and start.json()["safe_to_collect"] is True, start.text
    assert put.call_count == 2 and read.call_count == 2


async def test_ivr_before_any_event_pauses_the_conversation(
    gc: Harness, cloud: respx.MockRouter
) -> None:
    put = cloud.put(RECORDING_STATE).respond(202)
    cloud.get(CONVERSATION).respond(200, json=call_conversation("PAUSED"))

    start = await pay(gc, "start", pause_behavior="skip")

    assert start.status_code == 200 and start.json()["safe_to_collect"] is True, start.text
    assert [(r["provider_recording_id"], r["state"]) for r in start.json()["recordings"]] == [
        (REC, "paused")
    ], "the conversation's recording is named by the answer"
    assert put.call_count == 1
    # A report that the recording was live, dated well before the pause, arrives late: the
    # conversation-wide pause covered it.
    await applied(gc, snapshot("active", at=datetime.now(UTC) - timedelta(seconds=30)))
    await gc.services.tasks.drain()
    call = await get_call(gc)
    assert call["exposures"] == [] and states(call) == {REC: ("paused", False)}


async def test_unknown_conversation_fails_closed(gc: Harness, cloud: respx.MockRouter) -> None:
    cloud.put(RECORDING_STATE).mock(
        return_value=error_body(404, "not.found", "The requested resource was not found.")
    )
    start = await pay(gc, "start", pause_behavior="skip")
    assert start.status_code == 503 and start.json()["safe_to_collect"] is False
    assert "wrong conversation id" in await last_error(gc)


async def test_a_404_on_a_pause_is_never_taken_for_nothing_recording(
    gc: Harness, cloud: respx.MockRouter
) -> None:
    """Genesys keeps ended conversations readable: a 404 is a wrong id, region or organisation
    more likely than a call nothing records, so the pause fails closed."""
    cloud.put(RECORDING_STATE).mock(
        return_value=error_body(404, "not.found", "The requested resource was not found.")
    )
    await applied(gc, snapshot("active"))
    start = await pay(gc, "start", pause_behavior="skip")
    assert start.status_code == 503 and start.json()["safe_to_collect"] is False, start.text


async def test_a_bare_404_is_not_taken_for_gone(gc: Harness, cloud: respx.MockRouter) -> None:
    cloud.put(RECORDING_STATE).respond(404, text="<html>Not Found</html>")
    await applied(gc, snapshot("active"))
    start = await pay(gc, "start", pause_behavior="skip")
    assert start.status_code == 503 and start.json()["safe_to_collect"] is False


async def test_missing_role_permission_is_refused_at_once(
    gc: Harness, cloud: respx.MockRouter
) -> None:
    put = cloud.put(RECORDING_STATE).mock(
        return_value=error_body(403, "missing.permissions", "Missing permissions")
    )
    await applied(gc, snapshot("active"))
    start = await pay(gc, "start", pause_behavior="skip")
    assert start.status_code == 503 and start.json()["safe_to_collect"] is False
    assert put.call_count == 1, "a refusal is not retried"
    assert "pauseOthers" in await last_error(gc)


async def test_long_retry_after_fails_closed_without_waiting(
    gc: Harness, cloud: respx.MockRouter
) -> None:
    put = cloud.put(RECORDING_STATE).mock(
        return_value=httpx.Response(
            429,
            headers={"retry-after": "30"},
            json={"message": "Rate limit exceeded", "code": "too.many.requests", "status": 429},
        )
    )
    await applied(gc, snapshot("active"))
    loop = asyncio.get_running_loop()
    began = loop.time()
    start = await pay(gc, "start", pause_behavior="skip")
    assert start.status_code == 503 and start.json()["safe_to_collect"] is False
    assert loop.time() - began < 1.0, "no point waiting for a deadline Genesys will outlast"
    assert put.call_count == 1


async def test_short_retry_after_is_waited_out(gc: Harness, cloud: respx.MockRouter) -> None:
    put = cloud.put(RECORDING_STATE)
    put.side_effect = [
        httpx.Response(429, headers={"retry-after": "0"}, json={"status": 429}),
        httpx.Response(202),
    ]
    cloud.get(CONVERSATION).respond(200, json=call_conversation("PAUSED"))
    await applied(gc, snapshot("active"))
    start = await pay(gc, "start", pause_behavior="skip")
    assert start.status_code == 200 and start.json()["safe_to_collect"] is True, start.text
    assert put.call_count == 2


# ---- payments and PBX reports ----------------------------------------------------------------


async def test_recording_that_starts_during_a_payment_is_paused_at_once(
    gc: Harness, cloud: respx.MockRouter
) -> None:
    """The late-recording case: nothing recorded when the IVR was told safe, then a recording
    goes live. A snapshot cannot tell a start from a resume, so the gate hears a resume and
    never dismisses it: paused at once, an exposure, quarantined."""
    put = cloud.put(RECORDING_STATE).respond(202)
    read = cloud.get(CONVERSATION)
    read.side_effect = [
        httpx.Response(200, json=call_conversation("NONE")),
        httpx.Response(200, json=call_conversation("PAUSED")),
    ]
    start = await pay(gc, "start", pause_behavior="skip")
    assert start.status_code == 200 and start.json()["safe_to_collect"] is True, start.text
    assert start.json()["recordings"] == []

    await applied(gc, snapshot("active"))
    await gc.services.tasks.drain()

    assert put.call_count == 2, "paused at once"
    call = await get_call(gc)
    assert states(call) == {REC: ("paused", True)}
    [exposure] = call["exposures"]
    assert exposure["kind"] == "unexpected_resume" and exposure["ended_at"] is not None


async def test_unexpected_resume_during_a_payment_is_an_exposure(
    gc: Harness, cloud: respx.MockRouter
) -> None:
    put = cloud.put(RECORDING_STATE).respond(202)
    cloud.get(CONVERSATION).respond(200, json=call_conversation("PAUSED"))
    await applied(gc, snapshot("active", at=datetime.now(UTC) - timedelta(seconds=60)))
    assert (await pay(gc, "start", pause_behavior="skip")).json()["safe_to_collect"] is True
    # Genesys reports its own pause (no danger), then an agent resumes the recording.
    await applied(gc, snapshot("paused"))
    await applied(gc, snapshot("active"))
    await gc.services.tasks.drain()

    call = await get_call(gc)
    assert [e["kind"] for e in call["exposures"]] == ["unexpected_resume"]
    assert states(call) == {REC: ("paused", True)}, "recgate paused it again"
    assert put.call_count == 2
    assert [json.loads(c.request.content) for c in put.calls] == [{"recordingState": "PAUSED"}] * 2


async def test_call_lifecycle_from_eventbridge(gc: Harness, cloud: respx.MockRouter) -> None:
    began = datetime(2026, 11, 28, 10, 0, 0, 250_000, tzinfo=UTC)
    start = detail_event("customer.start", at=began)
    for body in [
        # The end arrives first: the final state does not depend on arrival order.
        detail_event("customer.end", at=began + timedelta(minutes=5)),
        start,
        detail_event(
            "acd.end",
            at=began + timedelta(seconds=40),
            queueId=QUEUE,
            acdOutcome="ANSWERED",
            answeredUserId=AGENT,
        ),
        snapshot("paused", at=began + timedelta(minutes=2)),
    ]:
        await applied(gc, body)
    duplicate = await send(gc, start)
    assert duplicate.status_code == 200 and duplicate.json()["status"] == "duplicate"

    call = await get_call(gc)
    assert call["state"] == "ended" and call["direction"] == "inbound"
    assert call["started_at"].startswith("2026-11-28T10:00:00.250")
    assert call["answered_at"].startswith("2026-11-28T10:00:40")
    assert call["ended_at"].startswith("2026-11-28T10:05:00")
    assert states(call) == {REC: ("stopped", False)}
    async with gc.services.engine.connect() as conn:
        row = (await conn.execute(sa.text("SELECT from_number, agent_id FROM calls"))).one()
    assert tuple(row) == (CALLER, AGENT)
    assert await gc.count("inbound_events") == 4


async def test_snapshots_report_the_recording_and_the_end(gc: Harness) -> None:
    await applied(gc, snapshot("none", participants=[participant("customer")]))
    assert (await get_call(gc))["recordings"] == [], "nothing recorded yet"
    await applied(gc, snapshot("active"))
    await applied(gc, snapshot("paused"))
    assert states(await get_call(gc)) == {REC: ("paused", False)}
    ended = [
        participant("customer", "disconnected", endTime="2026-11-28T10:09:00.000Z"),
        participant("agent", "disconnected", endTime="2026-11-28T10:09:00.000Z"),
    ]
    await applied(gc, snapshot("paused", participants=ended))
    call = await get_call(gc)
    assert call["state"] == "ended" and states(call) == {REC: ("stopped", False)}


async def test_service_area_from_the_destination_or_participant_data(gc: Harness) -> None:
    tagged = participant("customer", attributes={"recgate_service_area": "benefits"})
    await applied(gc, snapshot("none", participants=[tagged]))
    assert (await get_call(gc))["service_area"] == "benefits"
    response = await send(gc, detail_event("customer.start"), query="service_area=council_tax")
    assert response.status_code == 200
    assert (await get_call(gc))["service_area"] == "council_tax"


async def test_events_recgate_does_not_map_are_ignored(gc: Harness) -> None:
    chat = detail_event("customer.start", mediaType="CHAT")
    wrapup = detail_event("acw", wrapupCode="b1e2d3c4-a5b6-4c7d-8e9f-0a1b2c3d4e5f")
    queue_stats = envelope(
        f"v2.analytics.queues.{QUEUE}.observations",
        "v2.analytics.queues.{id}.observations",
        {"group": {"queueId": QUEUE}, "data": []},
    )
    for body in (chat, wrapup, queue_stats):
        response = await send(gc, body)
        assert response.status_code == 200 and response.json()["status"] == "ignored", body
    assert await gc.count("inbound_events") == 0 and await gc.count("calls") == 0


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        json.dumps({**snapshot("active"), "source": "aws.partner/other.example/x"}).encode(),
        json.dumps(
            detail_event("customer.start", conversationId="0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")
        ).encode(),
        json.dumps(snapshot("recording")).encode(),
        json.dumps({**snapshot("active"), "detail": {"topicName": "x"}}).encode(),
    ],
    ids=["not json", "not genesys", "conversation mismatch", "unknown state", "no eventBody"],
)
async def test_malformed_events_are_dead_lettered(gc: Harness, body: bytes) -> None:
    response = await gc.client.post(
        "/v1/webhooks/genesys",
        content=body,
        headers={"content-type": "application/json", "x-recgate-token": WEBHOOK_TOKEN},
    )
    assert response.status_code == 422, response.text
    assert await gc.count("dead_letters") == 1 and await gc.count("inbound_events") == 0


@pytest.mark.parametrize("token", [None, "", "eventbridge-api-key-for-tests-0002"])
async def test_events_without_the_api_key_are_refused(gc: Harness, token: str | None) -> None:
    response = await send(gc, snapshot("active"), token=token)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert WEBHOOK_TOKEN not in response.text
    assert await gc.count("inbound_events") == 0 and await gc.count("calls") == 0


async def test_event_route_is_off_without_its_token(make_harness: Callable[..., Any]) -> None:
    async with make_harness(**{**GENESYS, "genesys_webhook_token": None}) as h:
        response = await send(h, snapshot("active"))
    assert response.status_code == 404


# ---- the OAuth token -------------------------------------------------------------------------


@pytest.fixture
async def bare() -> AsyncIterator[tuple[respx.MockRouter, httpx.AsyncClient]]:
    async with respx.mock(assert_all_called=False) as router, httpx.AsyncClient() as client:
        yield router, client


def controller(client: httpx.AsyncClient, clock: FakeClock, wait_limit_s: float = 1.5) -> Any:
    credentials = ClientCredentials(client, LOGIN, CLIENT_ID, CLIENT_SECRET, clock)
    return GenesysController(client, API, credentials, clock, wait_limit_s=wait_limit_s)


ACTIVE_ORG = {"id": ORG, "name": "Council", "state": "active", "version": 7}


async def test_token_is_kept_until_shortly_before_it_expires(
    bare: tuple[respx.MockRouter, httpx.AsyncClient],
) -> None:
    router, client = bare
    tokens = router.post(TOKEN_URL)
    tokens.side_effect = [token_answer("gc-token-1", 3600), token_answer("gc-token-2", 3600)]
    org = router.get(ORGANIZATION).respond(200, json=ACTIVE_ORG)
    clock = FakeClock()
    gen = controller(client, clock)

    for _ in range(3):
        assert await gen.probe(1.0) == "organization active"
    assert tokens.call_count == 1
    clock.advance(seconds=3600 - 60 - 1)
    await gen.probe(1.0)
    assert tokens.call_count == 1, "still valid"
    clock.advance(seconds=2)
    await gen.probe(1.0)
    assert tokens.call_count == 2, "renewed a minute before it expires"
    assert [c.request.headers["authorization"] for c in org.calls] == ["Bearer gc-token-1"] * 4 + [
        "Bearer gc-token-2"
    ]


async def test_requests_at_once_share_one_token_fetch(
    bare: tuple[respx.MockRouter, httpx.AsyncClient],
) -> None:
    router, client = bare
    release = asyncio.Event()

    async def slow_token(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return token_answer()

    tokens = router.post(TOKEN_URL).mock(side_effect=slow_token)
    router.get(ORGANIZATION).respond(200, json=ACTIVE_ORG)
    gen = controller(client, FakeClock())
    probes = [asyncio.create_task(gen.probe(1.0)) for _ in range(5)]
    for _ in range(5):
        await asyncio.sleep(0)  # every probe is now waiting: for the token, or the lock
    release.set()
    assert await asyncio.gather(*probes) == ["organization active"] * 5
    assert tokens.call_count == 1


async def test_a_401_gets_one_new_token_and_one_retry(
    bare: tuple[respx.MockRouter, httpx.AsyncClient],
) -> None:
    router, client = bare
    tokens = router.post(TOKEN_URL)
    tokens.side_effect = [token_answer(f"gc-token-{n}") for n in (1, 2, 3)]
    put = router.put(RECORDING_STATE)
    put.side_effect = [
        error_body(401, "bad.credentials", "Invalid login credentials."),
        httpx.Response(202),
    ]
    router.get(CONVERSATION).respond(200, json=call_conversation("PAUSED"))
    gen = controller(client, FakeClock())

    outcome = await gen.pause(ControlTarget(CONV), PauseBehavior.SKIP)

    assert [(o.provider_recording_id, o.state.value) for o in outcome] == [
        (None, "paused"),
        (REC, "paused"),
    ]
    assert [c.request.headers["authorization"] for c in put.calls] == [
        "Bearer gc-token-1",
        "Bearer gc-token-2",
    ]
    # Refused again with the new token: the client itself is refused, no third token.
    put.side_effect = None
    put.return_value = error_body(401, "bad.credentials", "Invalid login credentials.")
    with pytest.raises(ProviderRejected, match="401"):
        await gen.pause(ControlTarget(CONV), PauseBehavior.SKIP)
    assert tokens.call_count == 3


async def test_token_failures_are_typed_and_never_quote_secrets(
    bare: tuple[respx.MockRouter, httpx.AsyncClient],
) -> None:
    router, client = bare
    tokens = router.post(TOKEN_URL)
    tokens.side_effect = [
        httpx.Response(400, json={"error": "invalid_client", "description": "client not found"}),
        httpx.Response(503),
        httpx.ConnectError("refused"),
    ]
    gen = controller(client, FakeClock())
    with pytest.raises(ProviderRejected, match="invalid_client") as refused:
        await gen.probe(1.0)
    for _ in range(2):
        with pytest.raises(ProviderUnavailable):
            await gen.probe(1.0)
    assert CLIENT_SECRET not in str(refused.value)


async def test_only_a_conversation_everyone_left_is_gone(
    bare: tuple[respx.MockRouter, httpx.AsyncClient],
) -> None:
    router, client = bare
    router.post(TOKEN_URL).mock(return_value=token_answer())
    router.put(RECORDING_STATE).respond(202)
    read = router.get(CONVERSATION)
    gen = controller(client, FakeClock())
    target = ControlTarget(CONV, (RecordingRef(None, REC),))
    left = {"endTime": "2026-11-28T10:09:00.000Z"}
    # The customer's leg has ended but an agent is still on a recording call: not safe.
    read.mock(
        return_value=httpx.Response(
            200,
            json=call_conversation(
                "ACTIVE", [participant("customer", "disconnected", **left), participant("agent")]
            ),
        )
    )
    with pytest.raises(ProviderUnavailable, match="still reads active"):
        await gen.pause(target, PauseBehavior.SKIP)
    everyone_left = [
        participant("customer", "disconnected", **left),
        participant("agent", "terminated", **left),
    ]
    read.mock(return_value=httpx.Response(200, json=call_conversation("ACTIVE", everyone_left)))
    [outcome] = await gen.pause(target, PauseBehavior.SKIP)
    assert (outcome.provider_recording_id, outcome.state.value) == (REC, "gone")


def test_read_back_rules() -> None:
    connected = participant("customer")
    assert read_recording_state(call_conversation("PAUSED")) == "paused"
    assert read_recording_state(call_conversation("paused")) == "paused"
    assert read_recording_state(call_conversation("NONE")) == "none"
    vetoed = participant("agent", recordingState="active")
    assert read_recording_state(call_conversation("PAUSED", [connected, vetoed])) == "active"
    # A participant who has left records nothing.
    gone = participant("agent", "disconnected", recordingState="active")
    assert read_recording_state(call_conversation("PAUSED", [connected, gone])) == "paused"
    no_state = call_conversation("PAUSED")
    del no_state["recordingState"]
    assert read_recording_state(no_state) is None
    no_state["participants"] = [participant("customer", recordingState="paused")]
    assert read_recording_state(no_state) == "paused"


# ---- readiness and settings ------------------------------------------------------------------


async def test_probe_reads_the_organization_with_a_token(
    gc: Harness, cloud: respx.MockRouter
) -> None:
    org = cloud.get(ORGANIZATION).respond(200, json=ACTIVE_ORG)
    cloud.get(f"{CONTROL_URL}/health").respond(204)
    response = await gc.client.get("/readyz", headers=gc.auth(Role.OPS))
    [entry] = response.json()["checks"]["provider:genesys"]
    assert entry["status"] == "pass", entry
    assert entry["output"] == "genesys cloud at 127.0.0.1: organization active"
    assert org.calls.last.request.headers["authorization"] == "Bearer gc-token-1"
    assert CLIENT_SECRET not in response.text and "gc-token-1" not in response.text


@pytest.mark.parametrize(
    ("token", "org", "why"),
    [
        (httpx.Response(401, json={"error": "invalid_client"}), None, "refused"),
        (token_answer(), httpx.Response(503), "HTTP 503"),
        (token_answer(), httpx.Response(200, json={**ACTIVE_ORG, "state": "inactive"}), "inactive"),
    ],
    ids=["client refused", "genesys down", "organization inactive"],
)
async def test_probe_failures_fail_readiness(
    gc: Harness,
    cloud: respx.MockRouter,
    token: httpx.Response,
    org: httpx.Response | None,
    why: str,
) -> None:
    cloud.routes["token"].mock(return_value=token)
    cloud.get(ORGANIZATION).mock(return_value=org or httpx.Response(500))
    cloud.get(f"{CONTROL_URL}/health").respond(204)
    response = await gc.client.get("/readyz", headers=gc.auth(Role.OPS))
    assert response.status_code == 503
    [entry] = response.json()["checks"]["provider:genesys"]
    assert entry["status"] == "fail" and why in entry["output"], entry


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"genesys_client_secret": "changeme"}, "GENESYS_CLIENT_SECRET is a placeholder"),
        ({"genesys_webhook_token": "secret"}, "at least 16"),
        ({"genesys_client_secret": None}, "set together"),
        ({"genesys_region": "https://api.mypurecloud.com"}, "domain"),
        ({"genesys_api_base": "https://user:pw@api.example"}, "URL"),
    ],
)
def test_settings_refuse_unsafe_genesys_configuration(
    overrides: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings(
            env="production",
            audit_key="audit-key-for-settings-tests-01",
            **{**GENESYS, **overrides},
            _env_file=None,
        )
