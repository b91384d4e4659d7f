"""Twilio: signed status callbacks in, recording control and media out (respx as Twilio).

Callbacks are signed with the official ``twilio`` package's RequestValidator, the code Twilio's
customers validate with; control requests and answers follow Twilio's documented shapes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
import pytest
import respx
import sqlalchemy as sa
from twilio.request_validator import RequestValidator

from app.domain.roles import Role
from tests.conftest import Harness

AC = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-auth-token-for-tests-0001"
API = "http://127.0.0.1:9/twilio-api"
PUBLIC = "https://recgate.council.example"
# Real SIDs are 32 hex digits; a run of 32 decimal digits would read as a card number.
CA = "CA" + "1b" * 16
CA_AGENT = "CA" + "2c" * 16
RE = "RE" + "3d" * 16
RE_CONF = "RE" + "4e" * 16
CF = "CF" + "5f" * 16
ACCOUNT = f"{API}/2010-04-01/Accounts/{AC}"


def recording_json(
    sid: str, status: str, call_sid: str = CA, conference_sid: str | None = None
) -> dict[str, Any]:
    """A Recording resource as Twilio returns it (fields from Twilio's API reference)."""
    return {
        "account_sid": AC,
        "api_version": "2010-04-01",
        "call_sid": call_sid,
        "conference_sid": conference_sid,
        "channels": 2,
        "date_created": "Sat, 28 Nov 2026 10:00:06 +0000",
        "date_updated": "Sat, 28 Nov 2026 10:01:40 +0000",
        "start_time": "Sat, 28 Nov 2026 10:00:06 +0000",
        "duration": "-1",
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "source": "StartCallRecordingAPI",
        "status": status,
        "error_code": None,
        "encryption_details": None,
        "track": "both",
        "uri": f"/2010-04-01/Accounts/{AC}/Calls/{call_sid}/Recordings/{sid}.json",
    }


def twilio_error(code: int, status: int, message: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
    )


@pytest.fixture
async def tw(make_harness: Callable[..., Any]) -> AsyncIterator[Harness]:
    async with make_harness(
        twilio_account_sid=AC,
        twilio_auth_token=TOKEN,
        twilio_api_base=API,
        public_base_url=PUBLIC,
    ) as h:
        yield h


@pytest.fixture
async def api() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=False) as router:
        yield router


async def callback(
    h: Harness,
    path: str,
    params: dict[str, str],
    *,
    query: str = "",
    headers: dict[str, str] | None = None,
    sign_url: str | None = None,
) -> httpx.Response:
    url = f"{PUBLIC}{path}" + (f"?{query}" if query else "")
    signature = RequestValidator(TOKEN).compute_signature(sign_url or url, params)
    return await h.client.post(
        path + (f"?{query}" if query else ""),
        content=urlencode(params),
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "x-twilio-signature": signature,
            **(headers or {}),
        },
    )


def call_status(status: str, seq: int, call_sid: str = CA, **extra: str) -> dict[str, str]:
    return {
        "AccountSid": AC,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": status,
        "Direction": "inbound",
        "From": "+441632960001",
        "To": "+441632960999",
        "SequenceNumber": str(seq),
        "Timestamp": f"Sat, 28 Nov 2026 10:0{seq}:00 +0000",
        "CallbackSource": "call-progress-events",
        **extra,
    }


def recording_status(status: str, sid: str = RE, **extra: str) -> dict[str, str]:
    params = {
        "AccountSid": AC,
        "CallSid": CA,
        "RecordingSid": sid,
        "RecordingStatus": status,
        "RecordingChannels": "2",
        "RecordingSource": "StartCallRecordingAPI",
        "RecordingTrack": "both",
        "RecordingStartTime": "Sat, 28 Nov 2026 10:00:06 +0000",
        "RecordingUrl": f"{ACCOUNT}/Recordings/{sid}",
        "RecordingDuration": "-1",
        **extra,
    }
    return params


async def start_recording(h: Harness, sid: str = RE, **extra: str) -> None:
    response = await callback(
        h, "/v1/webhooks/twilio/recording-status", recording_status("in-progress", sid, **extra)
    )
    assert response.status_code == 200, response.text


async def pay(h: Harness, action: str, **body: Any) -> httpx.Response:
    return await h.client.post(
        f"/v1/calls/twilio/{CA}/payment/{action}", json=body, headers=h.auth(Role.IVR)
    )


async def get_call(h: Harness) -> dict[str, Any]:
    response = await h.client.get(f"/v1/calls/twilio/{CA}", headers=h.auth(Role.SUPERVISOR))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# ---- signatures ----------------------------------------------------------------------------


async def test_signed_callback_is_accepted(tw: Harness) -> None:
    response = await callback(
        tw,
        "/v1/webhooks/twilio/call-status",
        call_status("ringing", 0),
        query="service_area=benefits",
    )
    assert response.status_code == 200 and response.json() == {"status": "applied"}
    call = await get_call(tw)
    assert call["service_area"] == "benefits" and call["direction"] == "inbound"


async def test_changed_param_is_refused(tw: Harness) -> None:
    params = call_status("ringing", 0)
    signature = RequestValidator(TOKEN).compute_signature(
        f"{PUBLIC}/v1/webhooks/twilio/call-status", params
    )
    params["CallStatus"] = "completed"
    response = await tw.client.post(
        "/v1/webhooks/twilio/call-status",
        content=urlencode(params),
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "x-twilio-signature": signature,
        },
    )
    assert response.status_code == 401
    assert await tw.count("inbound_events") == 0 and await tw.count("calls") == 0


async def test_changed_url_is_refused(tw: Harness) -> None:
    response = await callback(
        tw,
        "/v1/webhooks/twilio/call-status",
        call_status("ringing", 0),
        sign_url=f"{PUBLIC}/v1/webhooks/twilio/recording-status",
    )
    assert response.status_code == 401
    # The query string is part of what Twilio signs: a service area cannot be slipped in.
    params = call_status("ringing", 0)
    signature = RequestValidator(TOKEN).compute_signature(
        f"{PUBLIC}/v1/webhooks/twilio/call-status", params
    )
    response = await tw.client.post(
        "/v1/webhooks/twilio/call-status?service_area=benefits",
        content=urlencode(params),
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "x-twilio-signature": signature,
        },
    )
    assert response.status_code == 401
    assert await tw.count("calls") == 0


async def test_missing_signature_is_refused(tw: Harness) -> None:
    response = await tw.client.post(
        "/v1/webhooks/twilio/call-status",
        content=urlencode(call_status("ringing", 0)),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await tw.count("inbound_events") == 0


async def test_url_signed_with_explicit_port_is_accepted(tw: Harness) -> None:
    response = await callback(
        tw,
        "/v1/webhooks/twilio/call-status",
        call_status("ringing", 0),
        sign_url="https://recgate.council.example:443/v1/webhooks/twilio/call-status",
    )
    assert response.status_code == 200


async def test_json_callback_with_body_sha256(tw: Harness) -> None:
    body = json.dumps(call_status("ringing", 0)).encode()
    digest = hashlib.sha256(body).hexdigest()
    path = f"/v1/webhooks/twilio/call-status?bodySHA256={digest}"
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + path, {})
    assert RequestValidator(TOKEN).validate(PUBLIC + path, body.decode(), signature)
    headers = {"content-type": "application/json", "x-twilio-signature": signature}
    assert (await tw.client.post(path, content=body, headers=headers)).status_code == 200
    tampered = body.replace(b"ringing", b"completed")
    assert (await tw.client.post(path, content=tampered, headers=headers)).status_code == 401


# ---- callbacks ------------------------------------------------------------------------------


async def test_retries_are_deduplicated(tw: Harness) -> None:
    params = call_status("in-progress", 1)
    first = await callback(
        tw,
        "/v1/webhooks/twilio/call-status",
        params,
        headers={"I-Twilio-Idempotency-Token": "tok-1"},
    )
    retry = await callback(
        tw,
        "/v1/webhooks/twilio/call-status",
        params,
        headers={"I-Twilio-Idempotency-Token": "tok-1"},
    )
    assert first.json()["status"] == "applied" and retry.json()["status"] == "duplicate"
    # The header is not signed: a captured callback replayed with a new token changes nothing,
    # because the key is Twilio's own signed fields (CallSid + CallStatus + SequenceNumber).
    replay = await callback(
        tw,
        "/v1/webhooks/twilio/call-status",
        params,
        headers={"I-Twilio-Idempotency-Token": "tok-forged-2"},
    )
    assert replay.json()["status"] == "duplicate"
    # Without the header the same key holds.
    again = await callback(tw, "/v1/webhooks/twilio/call-status", call_status("completed", 2))
    again_retry = await callback(tw, "/v1/webhooks/twilio/call-status", call_status("completed", 2))
    assert again.json()["status"] == "applied" and again_retry.json()["status"] == "duplicate"
    await start_recording(tw)
    rec_retry = await callback(
        tw, "/v1/webhooks/twilio/recording-status", recording_status("in-progress")
    )
    assert rec_retry.json()["status"] == "duplicate"
    assert await tw.count("inbound_events") == 3


async def test_out_of_order_callbacks_land_on_the_parent_call(
    tw: Harness, api: respx.MockRouter
) -> None:
    api.get(f"{ACCOUNT}/Recordings/{RE}.wav").respond(200, content=b"RIFF")
    completed = recording_status("completed", RecordingDuration="95")
    # Recording completed and the call's end arrive before its start and answer.
    for path, params in [
        ("/v1/webhooks/twilio/recording-status", completed),
        ("/v1/webhooks/twilio/call-status", call_status("completed", 3, CallDuration="100")),
        ("/v1/webhooks/twilio/call-status", call_status("in-progress", 1)),
        ("/v1/webhooks/twilio/recording-status", recording_status("in-progress")),
        ("/v1/webhooks/twilio/call-status", call_status("ringing", 0)),
        # An agent leg dialled from the call: it names the caller's call as its parent.
        (
            "/v1/webhooks/twilio/call-status",
            call_status("in-progress", 0, CA_AGENT, ParentCallSid=CA, To="client:agent-7"),
        ),
        (
            "/v1/webhooks/twilio/call-status",
            call_status("completed", 1, CA_AGENT, ParentCallSid=CA),
        ),
    ]:
        response = await callback(tw, path, params)
        assert response.status_code == 200, response.text
    await tw.services.tasks.drain()
    call = await get_call(tw)
    assert call["state"] == "ended"
    assert call["started_at"].startswith("2026-11-28T10:00:00")
    assert call["answered_at"].startswith("2026-11-28T10:01:00")
    assert call["ended_at"].startswith("2026-11-28T10:03:00")
    [recording] = call["recordings"]
    assert recording["ended_at"].startswith("2026-11-28T10:01:41"), (
        "recording end = start + duration"
    )
    assert recording["provider_recording_id"] == RE and recording["state"] == "available"
    assert recording["duration_s"] == 95
    async with tw.services.engine.connect() as conn:
        calls = (await conn.execute(sa.text("SELECT provider_call_id, agent_id FROM calls"))).all()
    assert calls == [(CA, "client:agent-7")], "the agent leg is not a call of its own"


async def test_absent_recording_is_failed(tw: Harness) -> None:
    await start_recording(tw)
    response = await callback(
        tw, "/v1/webhooks/twilio/recording-status", recording_status("absent", ErrorCode="16101")
    )
    assert response.status_code == 200
    assert (await get_call(tw))["recordings"][0]["state"] == "failed"


async def test_malformed_callback_is_422_and_dead_lettered(tw: Harness) -> None:
    response = await callback(
        tw, "/v1/webhooks/twilio/call-status", {"CallSid": CA, "CallStatus": "exploded"}
    )
    assert response.status_code == 422
    assert await tw.count("dead_letters") == 1 and await tw.count("inbound_events") == 0
    # A duration no recording has (was a 500 when added to the start time).
    for duration in ("1e20", "nan", "inf"):
        response = await callback(
            tw,
            "/v1/webhooks/twilio/recording-status",
            recording_status(
                "completed",
                RecordingDuration=duration,
                RecordingStartTime="Sat, 28 Nov 2026 10:00:05 +0000",
            ),
        )
        assert response.status_code == 422, duration
    assert await tw.count("dead_letters") == 4 and await tw.count("inbound_events") == 0


# ---- control --------------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_pause_and_resume_requests_are_exactly_twilios(
    tw: Harness, api: respx.MockRouter
) -> None:
    route = api.post(f"{ACCOUNT}/Calls/{CA}/Recordings/{RE}.json")
    route.side_effect = [
        httpx.Response(200, json=recording_json(RE, "paused")),
        httpx.Response(200, json=recording_json(RE, "in-progress")),
    ]
    await start_recording(tw)

    start = await pay(tw, "start", pause_behavior="skip")
    assert start.status_code == 200 and start.json()["safe_to_collect"] is True
    end = await pay(tw, "end", outcome="authorised")
    assert end.status_code == 200 and end.json()["state"] == "closed"

    pause_request, resume_request = (call.request for call in route.calls)
    assert pause_request.headers["authorization"] == basic(AC, TOKEN)
    assert pause_request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(pause_request.content.decode()) == {
        "Status": ["paused"],
        "PauseBehavior": ["skip"],
    }
    assert parse_qs(resume_request.content.decode()) == {"Status": ["in-progress"]}
    assert resume_request.headers["authorization"] == basic(AC, TOKEN)


async def test_unknown_recording_is_paused_as_twilio_current(
    tw: Harness, api: respx.MockRouter
) -> None:
    current = api.post(f"{ACCOUNT}/Calls/{CA}/Recordings/Twilio.CURRENT.json")
    current.side_effect = [httpx.Response(200, json=recording_json(RE, "paused"))]
    resume = api.post(f"{ACCOUNT}/Calls/{CA}/Recordings/{RE}.json").respond(
        200, json=recording_json(RE, "in-progress")
    )

    start = await pay(tw, "start")

    assert start.status_code == 200 and start.json()["safe_to_collect"] is True
    assert parse_qs(current.calls.last.request.content.decode())["PauseBehavior"] == ["silence"]
    # Twilio named the recording it paused: recgate now knows it and resumes it by its sid.
    assert [(r["provider_recording_id"], r["state"]) for r in start.json()["recordings"]] == [
        (RE, "paused")
    ]
    assert (await pay(tw, "end")).status_code == 200
    assert resume.call_count == 1


async def test_200_without_paused_status_is_read_back(tw: Harness, api: respx.MockRouter) -> None:
    api.post(f"{ACCOUNT}/Calls/{CA}/Recordings/{RE}.json").respond(
        200, json=recording_json(RE, "in-progress")
    )
    check = api.get(f"{ACCOUNT}/Calls/{CA}/Recordings/{RE}.json")
    check.side_effect = [httpx.Response(200, json=recording_json(RE, "paused"))]
    await start_recording(tw)
    start = await pay(tw, "start")
    assert start.status_code == 200 and start.json()["safe_to_collect"] is True
    assert check.call_count == 1


async def test_200_that_never_pauses_fails_closed(tw: Harness, api: respx.MockRouter) -> None:
    api.post(f"{ACCOUNT}/Calls/{CA}/Recordings/{RE}.json").respond(
        200, json=recording_json(RE, "in-progress")
    )
    api.get(f"{ACCOUNT}/Calls/{CA}/Recordings/{RE}.json").respond(
        200, json=recording_json(RE, "in-progress")
    )
    await start_recording(tw)
    start = await pay(tw, "start")
    assert start.status_code == 503
    assert start.json()["safe_to_collect"] is False and start.json()["state"] == "pause_failed"


async def test_21220_means_nothing_to_pause(tw: Harness, api: respx.MockRouter) -> None:
    api.post(f"{ACCOUNT}/Calls/{CA}/Recordings/Twilio.CURRENT.json").mock(
        return_value=twilio_error(21220, 400, "Invalid update: no active recording")
    )
    start = await pay(tw, "start")
    assert start.status_code == 200 and start.json()["safe_to_collect"] is True


async def test_20404_on_a_finished_call_means_gone(tw: Harness, api: respx.MockRouter) -> None:
    api.post(f"{ACCOUNT}/Calls/{CA}/Recordings/{RE}.json").mock(
        return_value=twilio_error(20404, 404, "The requested resource was not found")
    )
    await start_recording(tw)
    start = await pay(tw, "start")
    assert start.status_code == 200 and start.json()["safe_to_collect"] is True
    assert (await get_call(tw))["recordings"][0]["state"] == "stopped"


async def test_429_then_success_is_retried_within_the_deadline(
    tw: Harness, api: respx.MockRouter
) -> None:
    route = api.post(f"{ACCOUNT}/Calls/{CA}/Recordings/{RE}.json")
    route.side_effect = [
        twilio_error(20429, 429, "Too Many Requests"),
        httpx.Response(503),
        httpx.Response(200, json=recording_json(RE, "paused")),
    ]
    await start_recording(tw)
    start = await pay(tw, "start")
    assert start.status_code == 200 and start.json()["safe_to_collect"] is True
    assert route.call_count == 3


async def test_call_and_conference_recordings_are_both_paused(
    tw: Harness, api: respx.MockRouter
) -> None:
    call_rec = api.post(f"{ACCOUNT}/Calls/{CA}/Recordings/{RE}.json").respond(
        200, json=recording_json(RE, "paused")
    )
    conf_rec = api.post(f"{ACCOUNT}/Conferences/{CF}/Recordings/{RE_CONF}.json").respond(
        200, json=recording_json(RE_CONF, "paused", conference_sid=CF)
    )
    await start_recording(tw)
    await start_recording(
        tw, RE_CONF, ConferenceSid=CF, RecordingSource="StartConferenceRecordingAPI"
    )

    start = await pay(tw, "start")

    assert start.status_code == 200 and start.json()["safe_to_collect"] is True
    assert call_rec.call_count == 1 and conf_rec.call_count == 1
    assert {r["state"] for r in start.json()["recordings"]} == {"paused"}


async def test_twilio_timeout_fails_closed(tw: Harness, api: respx.MockRouter) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=recording_json(RE, "paused"))

    api.post(f"{ACCOUNT}/Calls/{CA}/Recordings/{RE}.json").mock(side_effect=hang)
    await start_recording(tw)
    start = await pay(tw, "start")
    assert start.status_code == 503 and start.json()["safe_to_collect"] is False
    call = await get_call(tw)
    assert call["segments"][0]["state"] == "pause_failed"
    assert call["recordings"][0]["quarantined"] is True


# ---- media ----------------------------------------------------------------------------------


async def test_completed_recording_media_is_copied_with_size_and_sha256(
    tw: Harness, api: respx.MockRouter
) -> None:
    audio = b"RIFF" + bytes(range(256)) * 64
    media = api.get(f"{ACCOUNT}/Recordings/{RE}.wav").respond(
        200, content=audio, headers={"content-type": "audio/x-wav"}
    )
    await start_recording(tw)

    response = await callback(
        tw,
        "/v1/webhooks/twilio/recording-status",
        recording_status("completed", RecordingDuration="42"),
    )
    assert response.status_code == 200
    await tw.services.tasks.drain()

    assert media.call_count == 1
    assert media.calls.last.request.headers["authorization"] == basic(AC, TOKEN)
    async with tw.services.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.text("SELECT id, media_path, media_size, media_sha256 FROM recordings")
            )
        ).one()
    path = Path(tw.services.settings.media_dir) / row.media_path
    assert path.read_bytes() == audio
    assert row.media_size == len(audio) and row.media_sha256 == hashlib.sha256(audio).hexdigest()
    assert not list(path.parent.glob("*.part")), "no partial files are left behind"


async def test_failed_media_copy_is_retried_later(tw: Harness, api: respx.MockRouter) -> None:
    media = api.get(f"{ACCOUNT}/Recordings/{RE}.wav")
    media.side_effect = [httpx.Response(500), httpx.Response(200, content=b"RIFFdata")]
    await callback(
        tw,
        "/v1/webhooks/twilio/recording-status",
        recording_status("completed", RecordingDuration="42"),
    )
    await tw.services.tasks.drain()
    assert await tw.count("recordings") == 1
    async with tw.services.engine.connect() as conn:
        assert (
            await conn.execute(sa.text("SELECT media_path FROM recordings"))
        ).scalar_one() is None
    assert await tw.services.media.fetch_due() == 1
    assert media.call_count == 2


async def test_media_url_off_the_api_base_is_never_fetched(
    tw: Harness, api: respx.MockRouter
) -> None:
    elsewhere = api.get("http://127.0.0.2/evil.wav").respond(200, content=b"x")
    await callback(
        tw,
        "/v1/webhooks/twilio/recording-status",
        recording_status("completed", RecordingDuration="42", RecordingUrl="http://127.0.0.2/evil"),
    )
    await tw.services.tasks.drain()
    assert elsewhere.call_count == 0


async def test_deleting_twilios_copy(tw: Harness, api: respx.MockRouter) -> None:
    delete = api.delete(f"{ACCOUNT}/Recordings/{RE}.json")
    delete.side_effect = [
        httpx.Response(204),
        twilio_error(20404, 404, "not found"),
        httpx.Response(500),
    ]
    media = tw.services.media
    await media.delete_provider_copy("twilio", RE)
    await media.delete_provider_copy("twilio", RE)  # already gone: fine
    from app.telephony.base import ProviderUnavailable

    with pytest.raises(ProviderUnavailable):
        await media.delete_provider_copy("twilio", RE)
    assert delete.calls[0].request.headers["authorization"] == basic(AC, TOKEN)


async def test_recording_twilio_current_did_not_cover_is_an_exposure(
    tw: Harness, api: respx.MockRouter
) -> None:
    """Twilio.CURRENT pauses one recording; a second one learned of later was not paused."""
    api.post(f"{ACCOUNT}/Calls/{CA}/Recordings/Twilio.CURRENT.json").respond(
        200, json=recording_json(RE, "paused")
    )
    conf = api.post(f"{ACCOUNT}/Conferences/{CF}/Recordings/{RE_CONF}.json").respond(
        200, json=recording_json(RE_CONF, "paused", conference_sid=CF)
    )
    assert (await pay(tw, "start")).json()["safe_to_collect"] is True

    await start_recording(tw, RE_CONF, ConferenceSid=CF)
    await tw.services.tasks.drain()

    assert conf.call_count == 1, "paused at once, by its own sid"
    call = await get_call(tw)
    states = {
        r["provider_recording_id"]: (r["state"], r["quarantined"]) for r in call["recordings"]
    }
    assert states == {RE: ("paused", False), RE_CONF: ("paused", True)}
    assert [e["kind"] for e in call["exposures"]] == ["late_recording"]


async def test_one_recording_gone_does_not_unpause_the_other(
    tw: Harness, api: respx.MockRouter
) -> None:
    call_rec = api.post(f"{ACCOUNT}/Calls/{CA}/Recordings/{RE}.json")
    call_rec.side_effect = [
        httpx.Response(200, json=recording_json(RE, "paused")),
        httpx.Response(200, json=recording_json(RE, "in-progress")),
    ]
    api.post(f"{ACCOUNT}/Conferences/{CF}/Recordings/{RE_CONF}.json").mock(
        return_value=twilio_error(20404, 404, "The requested resource was not found")
    )
    await start_recording(tw)
    await start_recording(tw, RE_CONF, ConferenceSid=CF)
    start = await pay(tw, "start")
    assert start.status_code == 200, start.text
    states = {r["provider_recording_id"]: r["state"] for r in start.json()["recordings"]}
    assert states == {RE: "paused", RE_CONF: "stopped"}
    end = await pay(tw, "end")
    assert end.status_code == 200
    assert call_rec.call_count == 2, "the recording that was paused is resumed"


async def test_bare_404_is_not_taken_for_gone(tw: Harness, api: respx.MockRouter) -> None:
    api.post(f"{ACCOUNT}/Calls/{CA}/Recordings/{RE}.json").respond(
        404, text="<html>Not Found</html>"
    )
    await start_recording(tw)
    start = await pay(tw, "start")
    assert start.status_code == 503 and start.json()["safe_to_collect"] is False
