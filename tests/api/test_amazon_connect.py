"""Amazon Connect over HTTP (issue 13): EventBridge contact events in, recording suspend and
resume out, against a loopback Connect built from botocore's service model
(tests/connect_fake.py; moto does not implement the recording operations).

boto3 runs for real: it signs with dummy credentials from the environment and talks HTTP to
127.0.0.1. Nothing here reaches AWS.

Connect sends no event when a recording is suspended or resumed, so the generic suite's
"unexpected resume" report has no Connect counterpart. What does apply: an agent who joins a
contact during a payment starts the agent's recording (``CONNECTED_TO_AGENT``), which is a
recording gone live during the payment.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.domain.roles import Role
from tests.conftest import Harness
from tests.connect_fake import HANG, FakeConnect, running

TOKEN = "connect-eventbridge-api-key-0001"
REGION = "eu-west-2"
INSTANCE = "3f1b9d2e-7c4a-4e8b-9a61-0d5c2b7e4f10"
INSTANCE_ARN = f"arn:aws:connect:{REGION}:111122223333:instance/{INSTANCE}"
AGENT_ARN = f"{INSTANCE_ARN}/agent/a9e0c7d1-b2f3-4a5b-8c6d-e7f8a9b0c1d2"
# Contact ids as Connect makes them (UUIDs); chosen with letters so none reads as a card number.
CONTACT = "c0ffee00-aaaa-4bbb-8ccc-deadbeefcafe"
TRANSFERRED = "b0a7f00d-eeee-4fff-9aaa-facefeedbead"
WEBHOOK = "/v1/webhooks/amazon-connect"
T0 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials for boto3's standard chain, and nothing that could reach AWS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in (
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_CONNECT",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake(aws_env: None) -> Iterator[FakeConnect]:
    with running(REGION, INSTANCE) as connect:
        yield connect
        assert connect.invalid == [], "recgate sent requests Connect's model refuses"


@pytest.fixture
def connect_settings(fake: FakeConnect) -> dict[str, Any]:
    return {
        "connect_instance_id": INSTANCE,
        "connect_region": REGION,
        "connect_endpoint_url": fake.url,
        "connect_webhook_token": TOKEN,
    }


@pytest.fixture
async def h(
    make_harness: Callable[..., Any], connect_settings: dict[str, Any]
) -> AsyncIterator[Harness]:
    async with make_harness(**connect_settings) as harness:
        yield harness


def contact_event(
    event_type: str,
    contact: str = CONTACT,
    *,
    initial: str | None = None,
    at: datetime | None = None,
    event_id: str | None = None,
    **detail: Any,
) -> dict[str, Any]:
    """An "Amazon Connect Contact Event" as EventBridge delivers it to an API destination."""
    when = at or datetime.now(UTC).replace(microsecond=0)
    body: dict[str, Any] = {
        "eventType": event_type,
        "contactId": contact,
        "initialContactId": initial or contact,
        "channel": "VOICE",
        "instanceArn": INSTANCE_ARN,
        "initiationMethod": "INBOUND" if initial is None else "TRANSFER",
        "initiationTimestamp": when.isoformat().replace("+00:00", "Z"),
    }
    if initial is not None:
        body["previousContactId"] = initial
    if event_type in ("CONNECTED_TO_AGENT", "DISCONNECTED"):
        body["agentInfo"] = {
            "agentArn": AGENT_ARN,
            "connectedToAgentTimestamp": body["initiationTimestamp"],
        }
    body.update(detail)
    return {
        "version": "0",
        "id": event_id or f"{event_type.lower()}-{contact}",
        "detail-type": "Amazon Connect Contact Event",
        "source": "aws.connect",
        "account": "111122223333",
        "time": when.isoformat().replace("+00:00", "Z"),
        "region": REGION,
        "resources": [f"{INSTANCE_ARN}/contact/{contact}", INSTANCE_ARN],
        "detail": body,
    }


async def deliver(
    h: Harness, event: dict[str, Any] | bytes, token: str | None = TOKEN, query: str = ""
) -> httpx.Response:
    headers = {"content-type": "application/json; charset=utf-8"}
    if token is not None:
        headers["x-recgate-token"] = token
    content = event if isinstance(event, bytes) else json.dumps(event).encode()
    return await h.client.post(WEBHOOK + query, content=content, headers=headers)


async def applied(h: Harness, *events: dict[str, Any]) -> None:
    for event in events:
        response = await deliver(h, event)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "applied", response.text


async def the_call(h: Harness, contact: str = CONTACT) -> dict[str, Any]:
    response = await h.client.get(
        f"/v1/calls/amazon_connect/{contact}", headers=h.auth(Role.SUPERVISOR)
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def payment(
    h: Harness, action: str, contact: str = CONTACT, body: dict[str, Any] | None = None
) -> httpx.Response:
    return await h.client.post(
        f"/v1/calls/amazon_connect/{contact}/payment/{action}",
        json=body or {},
        headers=h.auth(Role.IVR),
    )


def ids(contact: str = CONTACT, initial: str | None = None) -> dict[str, str]:
    """The body recgate must send to suspend or resume ``contact``'s recording."""
    return {"InstanceId": INSTANCE, "ContactId": contact, "InitialContactId": initial or contact}


# ---- contact events -----------------------------------------------------------------------------


async def test_contact_events_make_a_call_from_start_to_end(h: Harness) -> None:
    await applied(
        h,
        contact_event("INITIATED", at=T0),
        contact_event("QUEUED", at=T0 + timedelta(seconds=20)),
        contact_event("CONNECTED_TO_AGENT", at=T0 + timedelta(seconds=45)),
        contact_event("DISCONNECTED", at=T0 + timedelta(seconds=300)),
    )
    call = await the_call(h)
    assert call["state"] == "ended"
    assert call["started_at"].startswith("2026-12-03T10:00:00")
    assert call["ended_at"].startswith("2026-12-03T10:05:00")
    assert call["direction"] == "inbound"
    assert call["record_retention_until"] is not None
    (recording,) = call["recordings"]
    assert recording["provider_recording_id"] == CONTACT
    assert recording["state"] == "stopped" and recording["retention_until"] is not None
    again = await deliver(h, contact_event("DISCONNECTED", at=T0 + timedelta(seconds=300)))
    assert again.json() == {"status": "duplicate"}, (
        "EventBridge's id makes a redelivery a duplicate"
    )


async def test_contact_events_in_any_order_end_the_same(h: Harness) -> None:
    await applied(
        h,
        contact_event("DISCONNECTED", at=T0 + timedelta(seconds=300)),
        contact_event("CONNECTED_TO_AGENT", at=T0 + timedelta(seconds=45)),
        contact_event("INITIATED", at=T0),
    )
    call = await the_call(h)
    assert call["state"] == "ended" and call["started_at"].startswith("2026-12-03T10:00:00")
    assert [r["state"] for r in call["recordings"]] == ["stopped"]


@pytest.mark.parametrize(
    ("event", "why"),
    [
        (contact_event("INITIATED", channel="CHAT"), "a chat is not recorded audio"),
        (
            contact_event("INITIATED", instanceArn=INSTANCE_ARN.replace("3f1b", "0000")),
            "another instance's contact cannot be suspended through this one",
        ),
        (contact_event("CONTACT_DATA_UPDATED"), "attributes change nothing recgate keeps"),
        (contact_event("SOMETHING_NEW"), "new event types are ignored, as AWS asks"),
    ],
    ids=["chat", "other-instance", "data-updated", "unknown-type"],
)
async def test_events_recgate_has_no_use_for_are_acknowledged_and_ignored(
    h: Harness, event: dict[str, Any], why: str
) -> None:
    response = await deliver(h, event)
    assert response.status_code == 200 and response.json() == {"status": "ignored"}, why
    assert await h.count("calls") == 0 and await h.count("inbound_events") == 0


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        (None, "missing header: X-Recgate-Token"),
        ("connect-eventbridge-api-key-0002", "does not match"),
    ],
    ids=["missing", "wrong"],
)
async def test_an_event_without_the_api_key_is_401_and_nothing_is_stored(
    h: Harness, token: str | None, detail: str
) -> None:
    response = await deliver(h, contact_event("INITIATED"), token=token)
    assert response.status_code == 401 and detail in response.json()["detail"]
    assert await h.count("calls") == 0 and await h.count("dead_letters") == 0


def _without(event: dict[str, Any], *path: str) -> dict[str, Any]:
    target = event
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return event


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        json.dumps({**contact_event("INITIATED"), "source": "aws.s3"}).encode(),
        json.dumps(_without(contact_event("INITIATED"), "detail", "contactId")).encode(),
        json.dumps({**contact_event("INITIATED"), "time": "2026-12-03T10:00:00"}).encode(),
        json.dumps(contact_event("INITIATED", contact="4111-1111-1111-1111")).encode(),
        json.dumps(contact_event("INITIATED", at=datetime.now(UTC) + timedelta(hours=1))).encode(),
    ],
    ids=["not-json", "not-connect", "no-contact-id", "naive-time", "card-in-id", "future"],
)
async def test_a_malformed_event_is_422_and_dead_lettered(h: Harness, body: bytes) -> None:
    response = await deliver(h, body)
    assert response.status_code == 422, response.text
    assert await h.count("dead_letters") == 1 and await h.count("calls") == 0


async def test_the_route_is_off_without_a_token(
    make_harness: Callable[..., Any], connect_settings: dict[str, Any]
) -> None:
    async with make_harness(**{**connect_settings, "connect_webhook_token": None}) as h:
        response = await deliver(h, contact_event("INITIATED"))
    assert response.status_code == 404


# ---- payments ------------------------------------------------------------------------------------


async def test_a_payment_suspends_and_resumes_the_contacts_recording(
    h: Harness, fake: FakeConnect
) -> None:
    fake.add_contact(CONTACT)
    await applied(h, contact_event("INITIATED"), contact_event("CONNECTED_TO_AGENT"))

    start = await payment(h, "start", body={"reference": "PAY-1", "pause_behavior": "silence"})

    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True and start.json()["state"] == "paused"
    assert [r["state"] for r in start.json()["recordings"]] == ["paused"]
    # Exactly what the API reference documents, signed with the chain's credentials; no
    # ContactRecordingType, so Connect suspends every recording of the contact.
    assert fake.requests("SuspendContactRecording") == [ids()]
    assert {r.access_key for r in fake.received} == {"testing"}
    assert {r.content_type for r in fake.received} == {"application/json"}
    assert fake.suspended == {CONTACT}

    end = await payment(h, "end", body={"outcome": "authorised"})

    assert end.status_code == 200, end.text
    assert end.json()["state"] == "closed"
    assert [r["state"] for r in end.json()["recordings"]] == ["recording"]
    assert fake.requests("ResumeContactRecording") == [ids()]
    assert fake.suspended == set()
    assert "DescribeContact" not in fake.operations(), "the events said which contact is first"
    assert (await the_call(h))["exposures"] == []


async def test_an_ivr_ahead_of_eventbridge_learns_the_contact_from_describe_contact(
    h: Harness, fake: FakeConnect
) -> None:
    fake.add_contact(CONTACT)

    start = await payment(h, "start")

    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True and start.json()["recordings"] == []
    assert fake.operations() == ["DescribeContact", "SuspendContactRecording"]
    assert fake.requests("DescribeContact") == [{"InstanceId": INSTANCE, "ContactId": CONTACT}]
    assert fake.requests("SuspendContactRecording") == [ids()]
    end = await payment(h, "end")
    assert end.status_code == 200 and end.json()["state"] == "closed"
    assert fake.requests("ResumeContactRecording") == [ids()]
    assert fake.operations().count("DescribeContact") == 1, "a contact's first contact is kept"


@pytest.mark.parametrize("events_first", [True, False], ids=["events-first", "ivr-first"])
async def test_a_transferred_contact_is_suspended_with_its_initial_contact_id(
    h: Harness, fake: FakeConnect, events_first: bool
) -> None:
    """The transfer trap: the customer's new contact has a new ContactId; Connect wants the
    conversation's first contact as InitialContactId."""
    fake.add_contact(CONTACT, ended=True)
    fake.add_contact(TRANSFERRED, initial=CONTACT)
    if events_first:
        await applied(
            h,
            contact_event("INITIATED", TRANSFERRED, initial=CONTACT),
            contact_event("CONNECTED_TO_AGENT", TRANSFERRED, initial=CONTACT),
        )

    start = await payment(h, "start", TRANSFERRED)

    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True
    assert fake.requests("SuspendContactRecording") == [ids(TRANSFERRED, CONTACT)]
    assert fake.suspended == {TRANSFERRED}
    assert (await payment(h, "end", TRANSFERRED)).status_code == 200
    assert fake.requests("ResumeContactRecording") == [ids(TRANSFERRED, CONTACT)]


async def test_the_old_contact_after_a_transfer_is_refused(h: Harness, fake: FakeConnect) -> None:
    fake.add_contact(CONTACT, ended=True)
    fake.add_contact(TRANSFERRED, initial=CONTACT)

    start = await payment(h, "start", CONTACT)

    assert start.status_code == 503 and start.json()["safe_to_collect"] is False
    assert fake.operations() == ["DescribeContact"], "nothing is suspended on an ended contact"
    causes = [
        t["cause"] for t in (await the_call(h))["timeline"] if t["to_state"] == "pause_failed"
    ]
    assert causes and "$.ContactId" in causes[0]


async def test_not_found_to_a_suspend_fails_closed_at_once(h: Harness, fake: FakeConnect) -> None:
    await applied(h, contact_event("INITIATED"), contact_event("CONNECTED_TO_AGENT"))
    fake.fail("SuspendContactRecording", "ResourceNotFoundException")

    start = await payment(h, "start")

    assert start.status_code == 503 and start.json()["state"] == "pause_failed"
    assert start.json()["safe_to_collect"] is False
    assert len(fake.requests("SuspendContactRecording")) == 1, "a refusal is not retried"
    await h.services.tasks.drain()
    call = await the_call(h)
    assert call["recordings"][0]["quarantined"] is True
    assert [e["kind"] for e in call["exposures"]] == ["pause_failed"]


@pytest.mark.parametrize("code", ["InvalidRequestException", "AccessDeniedException"])
async def test_a_refusal_fails_closed_without_retrying(
    h: Harness, fake: FakeConnect, code: str
) -> None:
    fake.add_contact(CONTACT)
    await applied(h, contact_event("CONNECTED_TO_AGENT"))
    fake.fail("SuspendContactRecording", *[code] * 10)

    start = await payment(h, "start")

    assert start.status_code == 503 and start.json()["safe_to_collect"] is False
    assert len(fake.requests("SuspendContactRecording")) == 1


async def test_a_connect_error_fails_closed_after_retries(h: Harness, fake: FakeConnect) -> None:
    fake.add_contact(CONTACT)
    await applied(h, contact_event("CONNECTED_TO_AGENT"))
    fake.fail("SuspendContactRecording", *["InternalServiceException"] * 100)

    start = await payment(h, "start")

    assert start.status_code == 503
    assert start.headers["content-type"].startswith("application/problem+json")
    assert start.json()["safe_to_collect"] is False and start.json()["state"] == "pause_failed"
    assert len(fake.requests("SuspendContactRecording")) >= 2, "a 500 is retried in the deadline"


async def test_throttling_is_retried_within_the_deadline(h: Harness, fake: FakeConnect) -> None:
    fake.add_contact(CONTACT)
    await applied(h, contact_event("CONNECTED_TO_AGENT"))
    fake.fail("SuspendContactRecording", "ThrottlingException")

    start = await payment(h, "start")

    assert start.status_code == 200 and start.json()["safe_to_collect"] is True
    assert len(fake.requests("SuspendContactRecording")) == 2


async def test_a_hanging_connect_is_answered_at_the_deadline(h: Harness, fake: FakeConnect) -> None:
    fake.add_contact(CONTACT)
    await applied(h, contact_event("CONNECTED_TO_AGENT"))
    fake.fail("SuspendContactRecording", *[HANG] * 10)
    loop = asyncio.get_running_loop()
    began = loop.time()

    start = await payment(h, "start")

    assert start.status_code == 503 and start.json()["safe_to_collect"] is False
    assert loop.time() - began < 4.0, "the IVR is answered at the pause deadline, not Connect's"


async def test_skip_is_refused_before_anything_is_sent(h: Harness, fake: FakeConnect) -> None:
    fake.add_contact(CONTACT)
    await applied(h, contact_event("CONNECTED_TO_AGENT"))

    start = await payment(h, "start", body={"pause_behavior": "skip"})

    assert start.status_code == 503 and start.json()["safe_to_collect"] is False
    assert fake.requests("SuspendContactRecording") == []
    causes = [
        t["cause"] for t in (await the_call(h))["timeline"] if t["to_state"] == "pause_failed"
    ]
    assert causes and '"pause_behavior": "silence"' in causes[0]


async def test_an_agent_joining_during_a_payment_is_suspended_at_once(
    h: Harness, fake: FakeConnect
) -> None:
    """The late-recording case: Connect starts the agent's recording when the agent joins, and
    recgate cannot know whether the suspend it had before covers it."""
    fake.add_contact(CONTACT)
    await applied(h, contact_event("INITIATED"))
    start = await payment(h, "start")
    assert start.status_code == 200 and start.json()["safe_to_collect"] is True
    assert fake.requests("SuspendContactRecording") == [ids()]

    await applied(
        h, contact_event("CONNECTED_TO_AGENT", at=datetime.now(UTC) + timedelta(seconds=2))
    )
    await h.services.tasks.drain()

    assert fake.requests("SuspendContactRecording") == [ids(), ids()]
    call = await the_call(h)
    assert [(r["state"], r["quarantined"]) for r in call["recordings"]] == [("paused", True)]
    (exposure,) = call["exposures"]
    assert exposure["kind"] == "late_recording" and exposure["ended_at"] is not None
    end = await payment(h, "end")
    assert end.status_code == 200 and end.json()["state"] == "closed"
    assert fake.requests("ResumeContactRecording") == [ids()]


async def test_an_agent_who_joined_before_the_payment_is_no_exposure(
    h: Harness, fake: FakeConnect
) -> None:
    """EventBridge can deliver CONNECTED_TO_AGENT after the IVR's payment start: a recording
    that provably started before the contact's suspend was covered by it."""
    fake.add_contact(CONTACT)
    assert (await payment(h, "start")).status_code == 200

    await applied(
        h, contact_event("CONNECTED_TO_AGENT", at=datetime.now(UTC) - timedelta(seconds=30))
    )
    await h.services.tasks.drain()

    call = await the_call(h)
    assert call["exposures"] == []
    assert [r["state"] for r in call["recordings"]] == ["paused"]


async def test_a_contact_that_ends_during_a_payment_closes_it(
    h: Harness, fake: FakeConnect
) -> None:
    fake.add_contact(CONTACT)
    await applied(h, contact_event("CONNECTED_TO_AGENT"))
    assert (await payment(h, "start")).status_code == 200

    await applied(h, contact_event("DISCONNECTED"))

    call = await the_call(h)
    assert call["state"] == "ended"
    assert (
        call["segments"][0]["state"] == "closed" and call["segments"][0]["closed_by"] == "call_end"
    )
    assert fake.requests("ResumeContactRecording") == [], "nothing is left to resume"


@pytest.mark.parametrize("agent", [True, False], ids=["agent-recording", "contact-level"])
async def test_a_resume_on_a_contact_that_is_over_is_not_an_error(
    h: Harness, fake: FakeConnect, agent: bool
) -> None:
    fake.add_contact(CONTACT)
    if agent:
        await applied(h, contact_event("CONNECTED_TO_AGENT"))
    assert (await payment(h, "start")).status_code == 200
    fake.contacts[CONTACT].ended = True  # the caller hung up; EventBridge has not said so yet

    end = await payment(h, "end")

    assert end.status_code == 200 and end.json()["state"] == "closed"
    assert [r["state"] for r in end.json()["recordings"]] == (["stopped"] if agent else [])
    assert len(fake.requests("ResumeContactRecording")) == 1


async def test_a_narrowed_recording_type_is_sent(
    make_harness: Callable[..., Any], connect_settings: dict[str, Any], fake: FakeConnect
) -> None:
    fake.add_contact(CONTACT)
    async with make_harness(**connect_settings, connect_recording_type="AGENT") as h:
        await applied(h, contact_event("CONNECTED_TO_AGENT"))
        assert (await payment(h, "start")).status_code == 200
    assert fake.requests("SuspendContactRecording") == [{**ids(), "ContactRecordingType": "AGENT"}]


@pytest.mark.parametrize(("narrowed", "agent"), [("AGENT", False), ("IVR", True)])
async def test_a_narrowed_recording_type_that_would_miss_a_recording_fails_closed(
    make_harness: Callable[..., Any],
    connect_settings: dict[str, Any],
    fake: FakeConnect,
    narrowed: str,
    agent: bool,
) -> None:
    """AGENT before an agent joins leaves the IVR's recording running; IVR leaves the agent's:
    neither may be answered safe."""
    fake.add_contact(CONTACT)
    async with make_harness(**connect_settings, connect_recording_type=narrowed) as h:
        if agent:
            await applied(h, contact_event("CONNECTED_TO_AGENT"))
        start = await payment(h, "start")
        assert start.status_code == 503, start.text
        assert start.json()["safe_to_collect"] is False
    assert fake.requests("SuspendContactRecording") == [], "nothing was sent"


async def test_explicit_keys_sign_instead_of_the_chain(
    make_harness: Callable[..., Any], connect_settings: dict[str, Any], fake: FakeConnect
) -> None:
    fake.add_contact(CONTACT)
    keys = {
        "connect_aws_access_key_id": "AKIARECGATETEST0001",
        "connect_aws_secret_access_key": "recgate-test-secret-access-key-000000001",
    }
    async with make_harness(**connect_settings, **keys) as h:
        assert (await payment(h, "start")).status_code == 200
    assert {r.access_key for r in fake.received} == {"AKIARECGATETEST0001"}


# ---- readiness, the fake itself, settings -------------------------------------------------------


async def test_readiness_probes_the_instance_and_says_how_pauses_are_confirmed(
    h: Harness, fake: FakeConnect
) -> None:
    response = await h.client.get("/readyz", headers=h.auth(Role.OPS))
    (entry,) = response.json()["checks"]["provider:amazon_connect"]
    assert entry["status"] == "pass", entry
    assert "confirmation: API success (Connect sends no suspend event)" in entry["output"]
    assert fake.requests("DescribeInstance") == [{"InstanceId": INSTANCE}]


async def test_readiness_fails_while_the_instance_is_not_active(
    make_harness: Callable[..., Any], connect_settings: dict[str, Any], fake: FakeConnect
) -> None:
    fake.instance_status = "CREATION_FAILED"
    async with make_harness(**connect_settings) as h:
        response = await h.client.get("/readyz", headers=h.auth(Role.OPS))
    (entry,) = response.json()["checks"]["provider:amazon_connect"]
    assert entry["status"] == "fail" and "CREATION_FAILED" in entry["output"]
    assert response.status_code == 503


async def test_the_fake_refuses_what_connects_model_refuses(fake: FakeConnect) -> None:
    """The oracle is Connect's model, not recgate: a request it does not describe is caught."""
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{fake.url}/contact/suspend-recording",
            json={"InstanceId": INSTANCE, "ContactId": "x" * 300},
            headers={
                "authorization": (
                    f"AWS4-HMAC-SHA256 Credential=testing/20261203/{REGION}/connect/aws4_request, "
                    f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}"
                )
            },
        )
    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"].startswith("ValidationException")
    assert len(fake.invalid) == 1 and "InitialContactId" in fake.invalid[0]
    assert "ContactId" in fake.invalid[0]
    fake.invalid.clear()


def test_settings_refuse_a_half_key_and_a_short_token() -> None:
    with pytest.raises(ValueError, match="RECGATE_CONNECT_AWS_ACCESS_KEY_ID"):
        Settings(env="development", connect_aws_access_key_id="AKIA0001", _env_file=None)
    with pytest.raises(ValueError, match="at least 16"):
        Settings(env="development", connect_webhook_token="short", _env_file=None)


async def test_no_aws_credentials_fails_closed_and_says_why(
    make_harness: Callable[..., Any],
    connect_settings: dict[str, Any],
    fake: FakeConnect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    async with make_harness(**connect_settings) as h:
        await applied(h, contact_event("CONNECTED_TO_AGENT"))
        start = await payment(h, "start")
        causes = [
            t["cause"] for t in (await the_call(h))["timeline"] if t["to_state"] == "pause_failed"
        ]
    assert start.status_code == 503 and start.json()["safe_to_collect"] is False
    assert fake.received == [], "nothing unsigned reaches Connect"
    assert causes and "no usable AWS credentials" in causes[0]
