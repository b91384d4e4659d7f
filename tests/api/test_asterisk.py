"""Asterisk ARI: signed relayed events in, live-recording control out (respx as ARI).

Event bodies follow ARI's documented models (rest-api/api-docs/events.json: Event, StasisStart,
ChannelStateChange, ChannelEnteredBridge, ChannelDestroyed, Recording*; Channel, Bridge and
LiveRecording from channels.json, bridges.json, recordings.json). Control requests follow
recordings.json: ``POST|DELETE /recordings/live/{name}/pause|mute`` answered 204, 404 or 409.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
import sqlalchemy as sa

from app.domain.call_facts import KnownName, plan_calls
from app.domain.events import PbxEvent
from app.domain.roles import Role
from app.domain.states import PauseBehavior
from app.telephony.asterisk import parse_event
from app.telephony.base import (
    ConfirmedState,
    ControlOutcome,
    ControlTarget,
    ProviderUnavailable,
    RecordingRef,
)
from app.telephony.signing import sign, signed_headers
from tests.conftest import Harness

ARI = "http://127.0.0.1:9/ari"
USER, PASSWORD = "recgate", "ari-password-for-tests-0001"
CALLER = "1764322800.42"  # the caller's channel id: the IVR's provider_call_id
AGENT = "1764322805.43"
BRIDGE = "7f6a1c1e-5b0e-4c55-9d0e-3d1f2c3b4a59"
REC_BRIDGE = "call-7f6a1c1e"
REC_CHANNEL = "caller-1764322800.42"
REC_AGENT = "agent-1764322805.43"
AGENT_NUMBER = "+441632960555"
BASE_TIME = datetime.now(UTC).replace(microsecond=123000) - timedelta(minutes=5)


def ari_time(offset_s: float = 0) -> str:
    """ARI's timestamp format: milliseconds and a ``+0000`` offset without a colon."""
    moment = BASE_TIME + timedelta(seconds=offset_s)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def channel(
    channel_id: str = CALLER,
    state: str = "Up",
    number: str = "+441632960001",
    linkedid: str | None = None,
) -> dict[str, Any]:
    """A Channel as ARI sends it; with ``linkedid``, as ``ari.conf`` ``channelvars =
    CHANNEL(linkedid)`` has ARI add it."""
    extra = {"channelvars": {"CHANNEL(linkedid)": linkedid}} if linkedid else {}
    return {
        **extra,
        "id": channel_id,
        "protocol_id": f"{channel_id}@pbx.council.example",
        "name": f"PJSIP/trunk-{channel_id[-2:]:0>8}",
        "state": state,
        "caller": {"name": "", "number": number},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {
            "context": "from-trunk",
            "exten": "01632960999",
            "priority": 2,
            "app_name": "Stasis",
            "app_data": "recgate",
        },
        "creationtime": ari_time(),
        "language": "en",
    }


def bridge(channels: list[str], bridge_id: str = BRIDGE) -> dict[str, Any]:
    """A Bridge as ARI sends it."""
    return {
        "id": bridge_id,
        "technology": "simple_bridge",
        "bridge_type": "mixing",
        "bridge_class": "stasis",
        "creator": "Stasis",
        "name": "council-tax-queue",
        "channels": channels,
        "creationtime": ari_time(),
        "video_mode": "none",
    }


def live_recording(
    name: str, target_uri: str, state: str = "recording", **extra: Any
) -> dict[str, Any]:
    """A LiveRecording as ARI sends it."""
    return {"name": name, "format": "wav", "target_uri": target_uri, "state": state, **extra}


def ari_event(type_: str, offset_s: float = 0, **fields: Any) -> dict[str, Any]:
    """An ARI Event: the base fields plus the event's own."""
    return {
        "type": type_,
        "application": "recgate",
        "timestamp": ari_time(offset_s),
        "asterisk_id": "52:54:00:12:34:56",
        **fields,
    }


def stasis_start(
    channel_id: str = CALLER, offset_s: float = 0, linkedid: str | None = None
) -> dict[str, Any]:
    number = AGENT_NUMBER if channel_id == AGENT else "+441632960001"
    found = channel(channel_id, "Ring", number, linkedid)
    return ari_event("StasisStart", offset_s, args=[], channel=found)


def entered_bridge(
    channel_id: str = CALLER, offset_s: float = 2, in_bridge: list[str] | None = None
) -> dict[str, Any]:
    """``channel_id`` enters the bridge; ``in_bridge`` is every channel in it now."""
    channels = in_bridge or [channel_id]
    return ari_event(
        "ChannelEnteredBridge", offset_s, bridge=bridge(channels), channel=channel(channel_id)
    )


def recording_started(
    name: str = REC_BRIDGE, target: str = f"bridge:{BRIDGE}", offset_s: float = 3
) -> dict[str, Any]:
    return ari_event("RecordingStarted", offset_s, recording=live_recording(name, target))


def basic(user: str = USER, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def live(name: str, operation: str) -> str:
    return f"{ARI}/recordings/live/{name}/{operation}"


@pytest.fixture
async def ast(make_harness: Callable[..., Any]) -> AsyncIterator[Harness]:
    async with make_harness(ari_url=ARI, ari_user=USER, ari_password=PASSWORD) as h:
        yield h


@pytest.fixture
async def api() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=False) as router:
        yield router


async def send(h: Harness, body: dict[str, Any]) -> httpx.Response:
    return await h.send_event(body, provider="asterisk")


async def send_all(h: Harness, *bodies: dict[str, Any]) -> None:
    for body in bodies:
        response = await send(h, body)
        assert response.status_code == 200, response.text


async def bridged_call_recording(h: Harness) -> None:
    """The usual flow: the caller enters Stasis, is answered, bridged, and the bridge records."""
    await send_all(
        h,
        stasis_start(),
        ari_event("ChannelStateChange", 1, channel=channel(CALLER, "Up")),
        entered_bridge(),
        recording_started(),
    )


async def pay(h: Harness, action: str, call_id: str = CALLER, **body: Any) -> httpx.Response:
    return await h.client.post(
        f"/v1/calls/asterisk/{call_id}/payment/{action}", json=body, headers=h.auth(Role.IVR)
    )


async def get_call(h: Harness, call_id: str = CALLER) -> dict[str, Any]:
    response = await h.client.get(f"/v1/calls/asterisk/{call_id}", headers=h.auth(Role.SUPERVISOR))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# ---- events ---------------------------------------------------------------------------------


async def test_bridge_recording_lands_on_the_callers_call(ast: Harness) -> None:
    await bridged_call_recording(ast)

    call = await get_call(ast)
    assert call["state"] == "in_progress" and call["direction"] == "inbound"
    assert call["started_at"].startswith(BASE_TIME.strftime("%Y-%m-%dT%H:%M:%S.123"))
    assert call["answered_at"] is not None
    [recording] = call["recordings"]
    assert recording["provider_recording_id"] == REC_BRIDGE
    assert recording["state"] == "recording"
    async with ast.services.engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.text("SELECT provider_call_id, from_number, to_number FROM calls")
            )
        ).all()
    assert rows == [(CALLER, "+441632960001", "01632960999")], "the bridge is not a call"


async def test_channel_recording_lands_on_that_channels_call(ast: Harness) -> None:
    await send_all(ast, stasis_start(), recording_started(REC_CHANNEL, f"channel:{CALLER}"))
    assert [r["provider_recording_id"] for r in (await get_call(ast))["recordings"]] == [
        REC_CHANNEL
    ]


async def test_recording_finished_and_channel_destroyed_end_the_call(
    ast: Harness, api: respx.MockRouter
) -> None:
    audio = b"RIFF" + bytes(range(256)) * 8
    media = api.get(f"{ARI}/recordings/stored/{REC_BRIDGE}/file").respond(200, content=audio)
    await bridged_call_recording(ast)
    finished = ari_event(
        "RecordingFinished",
        95,
        recording=live_recording(REC_BRIDGE, f"bridge:{BRIDGE}", "done", duration=92),
    )
    destroyed = ari_event(
        "ChannelDestroyed", 96, cause=16, cause_txt="Normal Clearing", channel=channel()
    )
    await send_all(ast, finished, destroyed)
    await ast.services.tasks.drain()

    call = await get_call(ast)
    assert call["state"] == "ended"
    assert call["ended_at"] is not None and call["record_retention_until"] is not None
    [recording] = call["recordings"]
    assert recording["state"] == "available", "a finished ARI recording is stored and fetchable"
    assert recording["duration_s"] == 92 and recording["retention_until"] is not None
    assert media.call_count == 1
    assert media.calls.last.request.headers["authorization"] == basic()
    async with ast.services.engine.connect() as conn:
        stored = (await conn.execute(sa.text("SELECT media_size FROM recordings"))).scalar_one()
    assert stored == len(audio)


async def test_canceled_recording_is_stopped_without_media(
    ast: Harness, api: respx.MockRouter
) -> None:
    media = api.get(url__startswith=f"{ARI}/recordings/stored/").respond(200, content=b"x")
    await bridged_call_recording(ast)
    canceled = ari_event(
        "RecordingFinished",
        10,
        recording=live_recording(REC_BRIDGE, f"bridge:{BRIDGE}", "canceled"),
    )
    await send_all(ast, canceled)
    await ast.services.tasks.drain()
    assert (await get_call(ast))["recordings"][0]["state"] == "stopped"
    assert media.call_count == 0, "a canceled recording's file was discarded by Asterisk"


async def test_recording_failed(ast: Harness) -> None:
    await bridged_call_recording(ast)
    failed = ari_event(
        "RecordingFailed",
        4,
        recording=live_recording(
            REC_BRIDGE, f"bridge:{BRIDGE}", "failed", cause="Cannot record channel while in bridge"
        ),
    )
    await send_all(ast, failed)
    assert (await get_call(ast))["recordings"][0]["state"] == "failed"


async def test_duplicates_are_applied_once(ast: Harness) -> None:
    first = await send(ast, stasis_start())
    # A relay retry: same ARI event, a new webhook id.
    again = await send(ast, stasis_start())
    assert first.json() == {"status": "applied"} and again.json() == {"status": "duplicate"}
    await send_all(ast, entered_bridge(), recording_started())
    assert (await send(ast, recording_started())).json() == {"status": "duplicate"}
    # The same event re-serialised by a relay (ISO offset with a colon) is still the same event.
    reserialised = recording_started()
    reserialised["timestamp"] = reserialised["timestamp"].replace("+0000", "+00:00")
    assert (await send(ast, reserialised)).json() == {"status": "duplicate"}
    assert await ast.count("inbound_events") == 3
    assert await ast.count("recordings") == 1


async def test_events_recgate_does_not_need_are_ignored_and_not_stored(ast: Harness) -> None:
    dtmf = ari_event("ChannelDtmfReceived", 5, digit="4", duration_ms=120, channel=channel())
    ringing = ari_event("ChannelStateChange", 1, channel=channel(CALLER, "Ringing"))
    destroyed_bridge = ari_event("BridgeDestroyed", 9, bridge=bridge([]))
    for body in (dtmf, ringing, destroyed_bridge):
        response = await send(ast, body)
        assert response.status_code == 200 and response.json() == {"status": "ignored"}
    assert await ast.count("inbound_events") == 0 and await ast.count("calls") == 0


async def test_bridge_created_with_the_caller_links_the_bridge(ast: Harness) -> None:
    created = ari_event("BridgeCreated", 2, bridge=bridge([CALLER]))
    await send_all(ast, stasis_start(), created, recording_started())
    assert len((await get_call(ast))["recordings"]) == 1


async def test_malformed_event_is_422_and_dead_lettered(ast: Harness) -> None:
    no_channel = ari_event("StasisStart", args=[])
    bad_time = stasis_start()
    bad_time["timestamp"] = "yesterday"
    unknown_target = ari_event(
        "RecordingStarted", recording=live_recording("r", "endpoint:PJSIP/1000")
    )
    # Valid ISO 8601, but before the calendar's start once moved to UTC (was a 500).
    off_the_calendar = stasis_start()
    off_the_calendar["timestamp"] = "0001-01-01T00:00:00.000+0100"
    for body in (no_channel, bad_time, unknown_target, ["not", "an", "object"], off_the_calendar):
        response = await ast.client.post(
            "/v1/webhooks/asterisk", content=json.dumps(body).encode(), headers=_signed(ast, body)
        )
        assert response.status_code == 422, body
        assert response.headers["content-type"].startswith("application/problem+json")
    assert await ast.count("dead_letters") == 5 and await ast.count("inbound_events") == 0


def _signed(h: Harness, body: Any) -> dict[str, str]:
    headers = signed_headers(
        h.services.settings.webhook_key("asterisk") or b"",
        json.dumps(body).encode(),
        datetime.now(UTC),
    )
    headers["content-type"] = "application/json"
    return headers


async def test_bad_signature_is_401_and_nothing_stored(ast: Harness) -> None:
    body = json.dumps(stasis_start()).encode()
    headers = _signed(ast, stasis_start())
    headers["webhook-signature"] = sign(
        b"not-the-generic-secret-012345678",
        headers["webhook-id"],
        int(headers["webhook-timestamp"]),
        body,
    )
    response = await ast.client.post("/v1/webhooks/asterisk", content=body, headers=headers)
    assert response.status_code == 401
    for table in ("inbound_events", "calls", "dead_letters"):
        assert await ast.count(table) == 0, table


async def test_webhook_is_404_when_asterisk_is_not_configured(harness: Harness) -> None:
    response = await send(harness, stasis_start())
    assert response.status_code == 404
    assert await harness.count("inbound_events") == 0


# ---- control --------------------------------------------------------------------------------


@pytest.mark.parametrize(("behavior", "operation"), [("silence", "mute"), ("skip", "pause")])
async def test_pause_and_resume_requests_are_exactly_aris(
    ast: Harness, api: respx.MockRouter, behavior: str, operation: str
) -> None:
    pause = api.post(live(REC_BRIDGE, operation)).respond(204)
    resume = api.delete(live(REC_BRIDGE, operation)).respond(204)
    other = api.route(url__startswith=f"{ARI}/recordings/live/").respond(500)
    await bridged_call_recording(ast)

    start = await pay(ast, "start", pause_behavior=behavior)
    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True
    assert [(r["provider_recording_id"], r["state"]) for r in start.json()["recordings"]] == [
        (REC_BRIDGE, "paused")
    ]
    end = await pay(ast, "end", outcome="authorised")
    assert end.status_code == 200 and end.json()["state"] == "closed"

    assert pause.call_count == 1 and resume.call_count == 1 and other.call_count == 0
    for request in (pause.calls.last.request, resume.calls.last.request):
        assert request.headers["authorization"] == basic()
        assert request.content == b"", "ARI takes no body on these operations"
    assert (await get_call(ast))["recordings"][0]["state"] == "recording"


async def test_queued_recording_409_is_retried_until_live(
    ast: Harness, api: respx.MockRouter
) -> None:
    route = api.post(live(REC_BRIDGE, "mute"))
    not_in_session = httpx.Response(409, json={"message": "Recording not in session"})
    route.side_effect = [not_in_session, not_in_session, httpx.Response(204)]
    await bridged_call_recording(ast)

    start = await pay(ast, "start")

    assert start.status_code == 200 and start.json()["safe_to_collect"] is True
    assert route.call_count == 3


async def test_409_until_the_deadline_fails_closed(ast: Harness, api: respx.MockRouter) -> None:
    route = api.post(live(REC_BRIDGE, "mute")).respond(
        409, json={"message": "Recording not in session"}
    )
    await bridged_call_recording(ast)

    start = await pay(ast, "start")

    assert start.status_code == 503
    assert start.json()["safe_to_collect"] is False and start.json()["state"] == "pause_failed"
    assert route.call_count >= 2, "retried within the deadline"
    call = await get_call(ast)
    assert call["recordings"][0]["quarantined"] is True
    assert [e["kind"] for e in call["exposures"]] == ["pause_failed"]


async def test_404_means_the_recording_is_gone(ast: Harness, api: respx.MockRouter) -> None:
    api.post(live(REC_BRIDGE, "mute")).respond(404, json={"message": "Recording not found"})
    await bridged_call_recording(ast)

    start = await pay(ast, "start")

    assert start.status_code == 200 and start.json()["safe_to_collect"] is True
    assert (await get_call(ast))["recordings"][0]["state"] == "stopped"


async def test_other_4xx_is_refused_at_once(ast: Harness, api: respx.MockRouter) -> None:
    route = api.post(live(REC_BRIDGE, "mute")).respond(
        401, text="Authentication required", headers={"www-authenticate": "Basic"}
    )
    await bridged_call_recording(ast)
    start = await pay(ast, "start")
    assert start.status_code == 503 and start.json()["safe_to_collect"] is False
    assert route.call_count == 1, "a refusal is not retried"


async def test_ari_timeout_fails_closed(ast: Harness, api: respx.MockRouter) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(204)

    api.post(live(REC_BRIDGE, "mute")).mock(side_effect=hang)
    await bridged_call_recording(ast)
    start = await pay(ast, "start")
    assert start.status_code == 503 and start.json()["state"] == "pause_failed"


async def test_channel_and_bridge_recordings_are_both_paused(
    ast: Harness, api: respx.MockRouter
) -> None:
    bridge_pause = api.post(live(REC_BRIDGE, "pause")).respond(204)
    channel_pause = api.post(live(REC_CHANNEL, "pause")).respond(204)
    await bridged_call_recording(ast)
    await send_all(ast, recording_started(REC_CHANNEL, f"channel:{CALLER}", 4))

    start = await pay(ast, "start", pause_behavior="skip")

    assert start.status_code == 200 and start.json()["safe_to_collect"] is True
    assert bridge_pause.call_count == 1 and channel_pause.call_count == 1
    assert {r["provider_recording_id"]: r["state"] for r in start.json()["recordings"]} == {
        REC_BRIDGE: "paused",
        REC_CHANNEL: "paused",
    }


async def test_one_gone_recording_does_not_make_the_other_read_gone(
    ast: Harness, api: respx.MockRouter
) -> None:
    api.post(live(REC_BRIDGE, "mute")).respond(204)
    api.post(live(REC_CHANNEL, "mute")).respond(404, json={"message": "Recording not found"})
    resume = api.delete(live(REC_BRIDGE, "mute")).respond(204)
    await bridged_call_recording(ast)
    await send_all(ast, recording_started(REC_CHANNEL, f"channel:{CALLER}", 4))

    start = await pay(ast, "start")

    assert start.status_code == 200 and start.json()["safe_to_collect"] is True
    states = {r["provider_recording_id"]: r["state"] for r in start.json()["recordings"]}
    assert states == {REC_BRIDGE: "paused", REC_CHANNEL: "stopped"}
    assert (await pay(ast, "end")).status_code == 200
    assert resume.call_count == 1, "the paused recording is resumed"


async def test_pausing_twice_is_harmless(ast: Harness, api: respx.MockRouter) -> None:
    # ARI answers 204 to a mute of a muted recording (res_stasis_recording.c: a no-op).
    route = api.post(live(REC_BRIDGE, "mute")).respond(204)
    await bridged_call_recording(ast)
    first = await pay(ast, "start", reference="PAY-1")
    await ast.services.gate.drive(uuid.UUID(first.json()["segment_id"]))  # a background re-check
    again = await pay(ast, "start", reference="PAY-1")
    assert first.json()["segment_id"] == again.json()["segment_id"]
    assert again.json()["safe_to_collect"] is True
    assert route.call_count == 1, "an open, confirmed payment sends nothing again"

    controller = ast.services.controllers["asterisk"]
    target = ControlTarget(CALLER, (RecordingRef(None, REC_BRIDGE),))
    assert await controller.pause(target, PauseBehavior.SILENCE) == [
        ControlOutcome(REC_BRIDGE, ConfirmedState.PAUSED)
    ]
    assert route.call_count == 2


async def test_no_recording_known_yet_waits_for_recording_started(
    ast: Harness, api: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ARI cannot pause "whatever records this call": recgate waits for RecordingStarted."""
    mute = api.post(live(REC_BRIDGE, "mute")).respond(204)
    await send_all(ast, stasis_start(), entered_bridge())
    controller = ast.services.controllers["asterisk"]
    asked_for_the_call = asyncio.Event()
    pause = controller.pause

    async def spy(target: ControlTarget, behavior: PauseBehavior) -> list[ControlOutcome]:
        if target.call_level:
            asked_for_the_call.set()
        return await pause(target, behavior)

    monkeypatch.setattr(controller, "pause", spy)

    start_task = asyncio.create_task(pay(ast, "start"))
    # The IVR won the race: the payment is waiting when the recording's start arrives.
    await asyncio.wait_for(asked_for_the_call.wait(), 5)
    await send_all(ast, recording_started())
    start = await start_task

    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True
    assert mute.call_count == 1
    assert (await get_call(ast))["exposures"] == []


async def test_no_recording_ever_known_fails_closed(ast: Harness, api: respx.MockRouter) -> None:
    anything = api.route(url__startswith=ARI).respond(204)
    await send_all(ast, stasis_start())

    start = await pay(ast, "start")

    assert start.status_code == 503 and start.json()["safe_to_collect"] is False
    assert anything.call_count == 0, "there is no call-level pause on ARI to send"
    # Nothing was paused, so ending the payment has nothing to resume and closes it.
    end = await pay(ast, "end")
    assert end.status_code == 200 and end.json()["state"] == "closed"
    assert anything.call_count == 0


async def test_resume_after_a_restart_undoes_both_pause_and_mute(
    make_harness: Callable[..., Any], api: respx.MockRouter
) -> None:
    """A replica that did not send the pause does not know which one was used: undo both."""
    api.post(live(REC_BRIDGE, "pause")).respond(204)
    unmute = api.delete(live(REC_BRIDGE, "mute")).respond(204)
    unpause = api.delete(live(REC_BRIDGE, "pause")).respond(204)
    async with make_harness(ari_url=ARI, ari_user=USER, ari_password=PASSWORD) as first:
        await bridged_call_recording(first)
        assert (await pay(first, "start", pause_behavior="skip")).status_code == 200
        controller = first.services.controllers["asterisk"]
        controller._paused_with.clear()  # as after a restart
        end = await pay(first, "end")
    assert end.status_code == 200 and end.json()["state"] == "closed"
    assert unmute.call_count == 1 and unpause.call_count == 1


async def test_resume_409_then_204_is_retried(ast: Harness, api: respx.MockRouter) -> None:
    api.post(live(REC_BRIDGE, "mute")).respond(204)
    resume = api.delete(live(REC_BRIDGE, "mute"))
    resume.side_effect = [httpx.Response(409), httpx.Response(204)]
    await bridged_call_recording(ast)
    assert (await pay(ast, "start")).status_code == 200
    end = await pay(ast, "end")
    assert end.status_code == 200 and end.json()["state"] == "closed"
    assert resume.call_count == 2


async def test_readiness_names_the_ari_host_without_credentials(
    ast: Harness, api: respx.MockRouter
) -> None:
    api.get(f"{ARI}/asterisk/info").respond(200, json={"system": {"version": "20.5.0"}})
    response = await ast.client.get("/readyz", headers=ast.auth(Role.OPS))
    check = response.json()["checks"]["provider:asterisk"][0]
    assert check["status"] == "pass" and "127.0.0.1" in check["output"]
    assert PASSWORD not in response.text
    public = await ast.client.get("/readyz")
    assert "127.0.0.1" not in public.text and PASSWORD not in public.text


async def test_without_credentials_payment_fails_closed(
    make_harness: Callable[..., Any],
) -> None:
    async with make_harness(ari_url=ARI) as h:
        start = await pay(h, "start")
    assert start.status_code in (500, 503) and start.json()["safe_to_collect"] is False


async def test_deleting_asterisks_stored_copy(ast: Harness, api: respx.MockRouter) -> None:
    delete = api.delete(f"{ARI}/recordings/stored/{REC_BRIDGE}")
    delete.side_effect = [httpx.Response(204), httpx.Response(404), httpx.Response(500)]
    media = ast.services.media
    await media.delete_provider_copy("asterisk", REC_BRIDGE)
    await media.delete_provider_copy("asterisk", REC_BRIDGE)  # already gone: fine
    with pytest.raises(ProviderUnavailable):
        await media.delete_provider_copy("asterisk", REC_BRIDGE)
    assert delete.calls[0].request.headers["authorization"] == basic()


# ---- the legs of one conversation -----------------------------------------------------------
#
# An agent's channel and the caller's are one call, keyed by the caller's channel: the agent
# dialled for the caller (linkedid), or found in a mixing bridge with the caller, in whatever
# order the events arrive. Offsets are ARI's own times: the caller entered Stasis first.

OTHER_CALLER = "1764322900.51"
BRIDGE_URI = f"bridge:{BRIDGE}"
CALLER_NUMBER = "+441632960001"


def destroyed(channel_id: str, offset_s: float) -> dict[str, Any]:
    number = AGENT_NUMBER if channel_id == AGENT else CALLER_NUMBER
    return ari_event(
        "ChannelDestroyed",
        offset_s,
        cause=16,
        cause_txt="Normal Clearing",
        channel=channel(channel_id, number=number),
    )


def with_top_level_linkedid(body: dict[str, Any]) -> dict[str, Any]:
    """The same event with ``linkedid`` in the Channel object itself (a relay that adds it)."""
    found = dict(body["channel"])
    found["linkedid"] = found.pop("channelvars")["CHANNEL(linkedid)"]
    return {**body, "channel": found}


async def stored_calls(h: Harness) -> list[str]:
    async with h.services.engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT provider_call_id FROM calls ORDER BY 1"))
        return [row[0] for row in rows]


async def stored_aliases(h: Harness) -> dict[str, str]:
    async with h.services.engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT a.alias, c.provider_call_id FROM call_aliases a "
                "JOIN calls c ON c.id = a.call_id"
            )
        )
        return {row[0]: row[1] for row in rows}


async def caller_number(h: Harness, call_id: str = CALLER) -> str | None:
    async with h.services.engine.connect() as conn:
        found = await conn.execute(
            sa.text("SELECT from_number FROM calls WHERE provider_call_id = :id"), {"id": call_id}
        )
        number: str | None = found.scalar_one()
        return number


async def pay_pauses_and_resumes_all(h: Harness, api: respx.MockRouter, names: list[str]) -> None:
    """Payment start mutes every named recording, and nothing else; end unmutes them all."""
    routes = {
        name: (
            api.post(live(name, "mute")).respond(204),
            api.delete(live(name, "mute")).respond(204),
        )
        for name in names
    }
    other = api.route(url__startswith=f"{ARI}/recordings/live/").respond(500)

    start = await pay(h, "start")
    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True
    assert {r["provider_recording_id"]: r["state"] for r in start.json()["recordings"]} == {
        name: "paused" for name in names
    }
    assert {name: pause.call_count for name, (pause, _) in routes.items()} == dict.fromkeys(
        names, 1
    ), "every recording of the conversation is paused once"

    end = await pay(h, "end")
    assert end.status_code == 200 and end.json()["state"] == "closed", end.text
    assert {name: resume.call_count for name, (_, resume) in routes.items()} == dict.fromkeys(
        names, 1
    ), "every recording of the conversation is resumed once"
    assert other.call_count == 0, "no command for a recording of another call"


@pytest.mark.parametrize("linkedid_in", ["channelvars", "channel"])
@pytest.mark.parametrize("agent_first", [False, True], ids=["caller-first", "agent-first"])
async def test_an_agent_dialled_for_the_caller_is_a_leg_of_the_callers_call(
    ast: Harness, api: respx.MockRouter, agent_first: bool, linkedid_in: str
) -> None:
    agent = stasis_start(AGENT, 1, linkedid=CALLER)
    if linkedid_in == "channel":
        agent = with_top_level_linkedid(agent)
    started = [agent, stasis_start()] if agent_first else [stasis_start(), agent]
    agent_up = ari_event("ChannelStateChange", 1.5, channel=channel(AGENT, "Up", AGENT_NUMBER))
    await send_all(
        ast,
        *started,
        agent_up,
        recording_started(REC_AGENT, f"channel:{AGENT}", 3),
        recording_started(REC_CHANNEL, f"channel:{CALLER}", 4),
    )

    assert await stored_calls(ast) == [CALLER], "the agent's channel is not a call of its own"
    assert await stored_aliases(ast) == {AGENT: CALLER}
    call = await get_call(ast)
    assert sorted(r["provider_recording_id"] for r in call["recordings"]) == [
        REC_AGENT,
        REC_CHANNEL,
    ]
    assert await caller_number(ast) == CALLER_NUMBER, "the agent's number is not the caller's"
    assert call["answered_at"] is None, "the agent answering is not the caller being answered"
    assert call["started_at"].startswith(BASE_TIME.strftime("%Y-%m-%dT%H:%M:%S.123"))

    await pay_pauses_and_resumes_all(ast, api, [REC_AGENT, REC_CHANNEL])

    await send_all(ast, destroyed(AGENT, 20))
    assert (await get_call(ast))["state"] == "in_progress", "the agent hanging up ends no call"
    await send_all(ast, destroyed(CALLER, 21))
    call = await get_call(ast)
    assert call["state"] == "ended"
    assert {r["state"] for r in call["recordings"]} == {"stopped"}


def _bridge_orders() -> dict[str, list[dict[str, Any]]]:
    """One conversation, no linkedid: the agent's channel entered Stasis as a call of its own,
    and only the bridge shows it is the caller's. Several arrival orders of the same events."""
    caller, agent = stasis_start(CALLER, 0), stasis_start(AGENT, 1)
    caller_in, agent_in = entered_bridge(CALLER, 2), entered_bridge(AGENT, 2.5, [CALLER, AGENT])
    agent_in_first = entered_bridge(AGENT, 2)
    caller_in_second = entered_bridge(CALLER, 2.5, [AGENT, CALLER])
    on_bridge = recording_started(REC_BRIDGE, BRIDGE_URI, 3)
    on_agent = recording_started(REC_AGENT, f"channel:{AGENT}", 4)
    on_caller = recording_started(REC_CHANNEL, f"channel:{CALLER}", 5)
    return {
        "caller-enters-first": [caller, agent, caller_in, agent_in, on_bridge, on_agent, on_caller],
        "agent-enters-first": [
            caller,
            agent,
            agent_in_first,
            caller_in_second,
            on_bridge,
            on_agent,
            on_caller,
        ],
        "bridge-recording-before-the-link": [
            caller,
            agent,
            on_bridge,
            caller_in,
            agent_in,
            on_agent,
            on_caller,
        ],
        "recorded-before-the-caller-joins": [
            caller,
            agent,
            agent_in_first,
            recording_started(REC_AGENT, f"channel:{AGENT}", 2.1),
            recording_started(REC_BRIDGE, BRIDGE_URI, 2.2),
            recording_started(REC_CHANNEL, f"channel:{CALLER}", 2.3),
            caller_in_second,
        ],
        "agents-events-first": [
            agent,
            agent_in_first,
            on_agent,
            caller,
            on_caller,
            caller_in_second,
            on_bridge,
        ],
        "relayed-out-of-order": [
            on_bridge,
            agent,
            caller_in,
            caller,
            agent_in,
            on_caller,
            on_agent,
        ],
        # Until its StasisStart arrives the caller's call is dated by its recording, later than
        # the bridge's: a call held for a bridge's recording is still never the one kept.
        "caller-known-only-by-its-recording": [
            on_caller,
            on_bridge,
            caller_in,
            agent_in,
            agent,
            on_agent,
            caller,
        ],
        "agent-recorded-before-its-stasis-start": [
            caller,
            on_agent,
            caller_in,
            agent,
            agent_in,
            on_bridge,
            on_caller,
        ],
    }


BRIDGE_ORDERS = _bridge_orders()


@pytest.mark.parametrize("order", list(BRIDGE_ORDERS))
async def test_channels_in_one_bridge_are_one_call_in_any_arrival_order(
    ast: Harness, api: respx.MockRouter, order: str
) -> None:
    await send_all(ast, *BRIDGE_ORDERS[order])

    assert await stored_calls(ast) == [CALLER], "one conversation, one call"
    assert await stored_aliases(ast) == {AGENT: CALLER, BRIDGE_URI: CALLER}
    call = await get_call(ast)
    assert sorted(r["provider_recording_id"] for r in call["recordings"]) == sorted(
        [REC_BRIDGE, REC_AGENT, REC_CHANNEL]
    )
    assert {r["state"] for r in call["recordings"]} == {"recording"}
    assert await caller_number(ast) == CALLER_NUMBER

    await pay_pauses_and_resumes_all(ast, api, [REC_AGENT, REC_BRIDGE, REC_CHANNEL])
    await send_all(ast, destroyed(AGENT, 30))
    assert (await get_call(ast))["state"] == "in_progress", "the agent hanging up ends no call"


async def test_events_applied_in_one_batch_land_on_one_call(ast: Harness) -> None:
    """Group commit: the same events stored and applied in one transaction."""
    bodies = BRIDGE_ORDERS["relayed-out-of-order"]
    events = [parse_event(body, now=ast.services.clock(), ari_url=ARI) for body in bodies]
    results = await asyncio.gather(
        *(
            ast.services.intake.accept(event, body, json.dumps(body).encode())
            for event, body in zip(events, bodies, strict=True)
            if event is not None
        )
    )
    assert len({r.call_id for r in results}) == 1
    assert await stored_calls(ast) == [CALLER]
    assert await stored_aliases(ast) == {AGENT: CALLER, BRIDGE_URI: CALLER}
    assert len((await get_call(ast))["recordings"]) == 3


async def test_a_bridge_recording_found_during_a_payment_is_paused_once_its_bridge_is_linked(
    ast: Harness, api: respx.MockRouter
) -> None:
    mute = {n: api.post(live(n, "mute")).respond(204) for n in (REC_CHANNEL, REC_BRIDGE)}
    unmute = {n: api.delete(live(n, "mute")).respond(204) for n in (REC_CHANNEL, REC_BRIDGE)}
    await send_all(ast, stasis_start(), recording_started(REC_CHANNEL, f"channel:{CALLER}", 1))
    start = await pay(ast, "start")
    assert start.status_code == 200 and start.json()["safe_to_collect"] is True

    # The bridge's recording is reported before the event that puts the caller in the bridge.
    await send_all(ast, recording_started(REC_BRIDGE, BRIDGE_URI, 3))
    assert [r["provider_recording_id"] for r in (await get_call(ast))["recordings"]] == [
        REC_CHANNEL
    ]
    await send_all(ast, entered_bridge(CALLER, 2))
    await ast.services.tasks.drain()

    assert mute[REC_BRIDGE].call_count == 1, "paused as soon as it is known to be the caller's"
    call = await get_call(ast)
    assert {r["provider_recording_id"]: r["state"] for r in call["recordings"]} == {
        REC_CHANNEL: "paused",
        REC_BRIDGE: "paused",
    }
    ids = {r["id"]: r["provider_recording_id"] for r in call["recordings"]}
    # The IVR had been told to collect while this recording ran unpaused: that is on record.
    assert [(e["kind"], ids[e["recording_id"]]) for e in call["exposures"]] == [
        ("late_recording", REC_BRIDGE)
    ]
    assert await stored_calls(ast) == [CALLER], "no call is left for the bridge"

    end = await pay(ast, "end")
    assert end.status_code == 200 and end.json()["state"] == "closed"
    assert unmute[REC_CHANNEL].call_count == 1 and unmute[REC_BRIDGE].call_count == 1


async def test_a_waiting_payment_takes_the_bridge_recording_once_the_bridge_is_linked(
    ast: Harness, api: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    mute = api.post(live(REC_BRIDGE, "mute")).respond(204)
    await send_all(ast, stasis_start(), recording_started())  # the bridge is not linked yet
    controller = ast.services.controllers["asterisk"]
    asked_for_the_call = asyncio.Event()
    pause = controller.pause

    async def spy(target: ControlTarget, behavior: PauseBehavior) -> list[ControlOutcome]:
        if target.call_level:
            asked_for_the_call.set()
        return await pause(target, behavior)

    monkeypatch.setattr(controller, "pause", spy)
    start_task = asyncio.create_task(pay(ast, "start"))
    await asyncio.wait_for(asked_for_the_call.wait(), 5)
    await send_all(ast, entered_bridge())
    start = await start_task

    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True
    assert mute.call_count == 1
    assert (await get_call(ast))["exposures"] == [], "paused before the IVR was answered"


async def test_callers_in_a_holding_bridge_stay_apart(ast: Harness) -> None:
    def held(channel_id: str, channels: list[str], offset_s: float) -> dict[str, Any]:
        queue = {**bridge(channels, "queue-hold"), "bridge_type": "holding"}
        return ari_event(
            "ChannelEnteredBridge", offset_s, bridge=queue, channel=channel(channel_id)
        )

    await send_all(
        ast,
        stasis_start(),
        stasis_start(OTHER_CALLER, 1),
        held(CALLER, [CALLER], 2),
        held(OTHER_CALLER, [CALLER, OTHER_CALLER], 3),
    )
    assert await stored_calls(ast) == sorted([CALLER, OTHER_CALLER])
    assert await stored_aliases(ast) == {}


async def test_a_bridge_used_again_belongs_to_its_next_call(ast: Harness) -> None:
    await send_all(
        ast,
        stasis_start(),
        entered_bridge(CALLER, 2),
        destroyed(CALLER, 10),
        stasis_start(OTHER_CALLER, 20),
        entered_bridge(OTHER_CALLER, 21),
        recording_started(REC_BRIDGE, BRIDGE_URI, 22),
    )
    assert await stored_calls(ast) == sorted([CALLER, OTHER_CALLER]), "the calls stay apart"
    assert await stored_aliases(ast) == {BRIDGE_URI: OTHER_CALLER}
    assert (await get_call(ast))["recordings"] == []
    assert len((await get_call(ast, OTHER_CALLER))["recordings"]) == 1


async def test_an_agent_moved_to_another_caller_joins_that_call_and_merges_nothing(
    ast: Harness,
) -> None:
    other_bridge = bridge([OTHER_CALLER, AGENT], "0b2c6a1e-0000-4c55-9d0e-3d1f2c3b4a60")
    await send_all(
        ast,
        stasis_start(),
        stasis_start(AGENT, 1, linkedid=CALLER),
        stasis_start(OTHER_CALLER, 5),
        ari_event("ChannelEnteredBridge", 6, bridge=other_bridge, channel=channel(AGENT)),
        recording_started(REC_AGENT, f"channel:{AGENT}", 7),
    )
    assert await stored_calls(ast) == sorted([CALLER, OTHER_CALLER])
    assert (await stored_aliases(ast))[AGENT] == OTHER_CALLER
    assert [
        r["provider_recording_id"] for r in (await get_call(ast, OTHER_CALLER))["recordings"]
    ] == [REC_AGENT]


# ---- which call each event of a batch lands on (the decision alone) ----------------------


def _parsed(*bodies: dict[str, Any]) -> list[PbxEvent]:
    events = [parse_event(body, now=BASE_TIME, ari_url=ARI) for body in bodies]
    assert all(e is not None for e in events)
    return [e for e in events if e is not None]


def _key(name: str) -> tuple[str, str]:
    return ("asterisk", name)


@pytest.mark.parametrize(
    ("case", "bodies", "known", "keys", "merges"),
    [
        (
            "link then recording, one batch",
            [entered_bridge(CALLER, 2), recording_started()],
            {},
            [CALLER, CALLER],
            [],
        ),
        (
            "recording then link, one batch: nothing stored to fold",
            [recording_started(), entered_bridge(CALLER, 2)],
            {},
            [CALLER, CALLER],
            [],
        ),
        (
            "a stored call held for a bridge is folded into the caller's",
            [entered_bridge(CALLER, 2)],
            {BRIDGE_URI: (BRIDGE_URI, 3, True), CALLER: (CALLER, 0, False)},
            [CALLER],
            [(BRIDGE_URI, CALLER)],
        ),
        (
            "held for a bridge, even when dated before the caller's only recording",
            [entered_bridge(CALLER, 2)],
            {BRIDGE_URI: (BRIDGE_URI, 3, True), CALLER: (CALLER, 5, False)},
            [CALLER],
            [(BRIDGE_URI, CALLER)],
        ),
        (
            "the agent's own call entering the caller's bridge is folded into the caller's",
            [entered_bridge(AGENT, 2.5, [CALLER, AGENT])],
            {AGENT: (AGENT, 1, False), CALLER: (CALLER, 0, False)},
            [CALLER],
            [(AGENT, CALLER)],
        ),
        (
            "a leg moving to another caller takes no call with it",
            [entered_bridge(AGENT, 6, [OTHER_CALLER, AGENT])],
            {AGENT: (CALLER, 0, False), OTHER_CALLER: (OTHER_CALLER, 5, False)},
            [OTHER_CALLER],
            [],
        ),
        (
            "a call the IVR opened before any event is never folded",
            [entered_bridge(AGENT, 2.5, [CALLER, AGENT])],
            {AGENT: (AGENT, 1, False), CALLER: (CALLER, None, False)},
            [CALLER],
            [(AGENT, CALLER)],
        ),
    ],
)
def test_plan_calls(
    case: str,
    bodies: list[dict[str, Any]],
    known: dict[str, tuple[str, float | None, bool]],
    keys: list[str],
    merges: list[tuple[str, str]],
) -> None:
    stored = {
        _key(name): KnownName(
            key, None if at is None else BASE_TIME + timedelta(seconds=at), container
        )
        for name, (key, at, container) in known.items()
    }
    plan = plan_calls(_parsed(*bodies), stored)
    assert plan.keys == [_key(k) for k in keys], case
    assert [(m.source, m.target) for m in plan.merges] == [(_key(s), _key(t)) for s, t in merges], (
        case
    )
