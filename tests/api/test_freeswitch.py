"""FreeSWITCH: events over the event socket in, ``uuid_record`` out, against the loopback event
socket of tests/freeswitch_esl.py (built from FreeSWITCH's source, not from recgate's code).

The cases of the generic provider's suite (tests/api/test_payment_gating.py) that FreeSWITCH
can produce: fail closed on a refusal, a hang and a dead socket; a recording that starts during
a payment; and, since FreeSWITCH reports no mask, pause, unmask or resume at all, no
``recording.resumed`` ever comes from it: its form of a recording running again during a
payment is a new ``RECORD_START``, which is a ``late_recording``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.config import Settings, settings_problems
from app.domain.events import EventType
from app.domain.roles import Role
from app.domain.states import PauseBehavior
from app.jobs.freeswitch_events import freeswitch_events_enabled
from app.telephony.base import (
    ConfirmedState,
    ControlOutcome,
    ControlTarget,
    ProviderRejected,
    ProviderUnavailable,
    RecordingGone,
    RecordingRef,
)
from app.telephony.freeswitch import (
    KEPT_HEADERS,
    EslCommandClient,
    EslRefused,
    FreeSwitchController,
    MalformedEvent,
    esl_argument,
    parse_event,
    plain_event_headers,
)
from app.telephony.registry import enabled_providers
from tests.conftest import Harness
from tests.freeswitch_esl import (
    CORE_UUID,
    PASSWORD,
    VERSION,
    Applied,
    FakeFreeSwitch,
    esl_settings,
    event,
    record_event,
    running_fake,
    separate_blank,
    serialize,
)

CALLER = "8a1c2e4f-6b7d-4c9e-a1f3-5d7b9c2e4a6f"
AGENT = "1f3e5d7c-9b2a-4c6e-8f1a-3b5d7f9e2c4a"
RECORDINGS = "/var/lib/freeswitch/recordings/council_tax/2026-11-28"
PATH = f"{RECORDINGS}/{CALLER}.wav"
AGENT_PATH = f"{RECORDINGS}/{AGENT}.wav"
NOW_US = int(datetime.now(UTC).timestamp() * 1_000_000)


@pytest.fixture
async def fake_fs() -> AsyncIterator[FakeFreeSwitch]:
    async with running_fake() as fake:
        yield fake


@dataclass
class Pbx:
    """recgate with its event consumer subscribed to the fake, and a way to await events."""

    h: Harness
    fake: FakeFreeSwitch
    applied: Applied

    async def send(self, *events: list[tuple[str, str]], applied: int | None = None) -> None:
        """Emit events over the socket and wait until ``applied`` (default: all) reached the
        intake."""
        before = len(self.applied.types) + self.applied.rejected
        for headers in events:
            assert await self.fake.emit(headers) == 1, "the consumer is subscribed"
        wanted = before + (len(events) if applied is None else applied)
        await self.applied.until(lambda: len(self.applied.types) + self.applied.rejected >= wanted)

    async def live_call(self, channel: str = CALLER, path: str = PATH) -> None:
        """A caller answered, and recorded by record_session."""
        self.fake.add_channel(channel)
        self.fake.start_recording(channel, path)
        await self.send(
            event("CHANNEL_ANSWER", channel), record_event("RECORD_START", channel, path)
        )

    async def agent_leg(self, path: str | None = AGENT_PATH) -> None:
        """The agent's phone, bridged to the caller (a leg), recorded on its own channel."""
        self.fake.add_channel(AGENT)
        leg: dict[str, Any] = {
            "call_uuid": CALLER,
            "originator": CALLER,
            "number": "2001",
            "direction": "outbound",
        }
        events = [event("CHANNEL_ANSWER", AGENT, **leg)]
        if path is not None:
            self.fake.start_recording(AGENT, path)
            events.append(record_event("RECORD_START", AGENT, path, **leg))
        await self.send(*events)


@pytest.fixture
async def pbx(
    make_harness: Callable[..., Any], fake_fs: FakeFreeSwitch, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Pbx]:
    async with make_harness(**esl_settings(fake_fs)) as h:
        applied = Applied(h, monkeypatch)
        await fake_fs.subscribed()
        yield Pbx(h, fake_fs, applied)


async def pay(h: Harness, action: str, call_id: str = CALLER, **body: Any) -> httpx.Response:
    return await h.client.post(
        f"/v1/calls/freeswitch/{call_id}/payment/{action}", json=body, headers=h.auth(Role.IVR)
    )


async def get_call(h: Harness, call_id: str = CALLER) -> dict[str, Any]:
    response = await h.client.get(
        f"/v1/calls/freeswitch/{call_id}", headers=h.auth(Role.SUPERVISOR)
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def states(call: dict[str, Any]) -> dict[str, str]:
    return {r["provider_recording_id"]: r["state"] for r in call["recordings"]}


# ---- events over the socket ------------------------------------------------------------------


async def test_events_over_the_socket_make_the_call_and_its_recording(pbx: Pbx) -> None:
    await pbx.live_call()

    call = await get_call(pbx.h)
    assert call["state"] == "in_progress" and call["direction"] == "inbound"
    assert call["answered_at"] is not None
    assert [(r["provider_recording_id"], r["state"]) for r in call["recordings"]] == [
        (PATH, "recording")
    ], "the recording's id is Record-File-Path, exactly"
    async with pbx.h.services.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.text("SELECT from_number, to_number, provider_call_id FROM calls")
            )
        ).one()
        container = (
            await conn.execute(sa.text("SELECT provider_container_id FROM recordings"))
        ).scalar_one()
    assert tuple(row) == ("+441632960001", "01632960999", CALLER)
    assert container == f"channel:{CALLER}", "the channel the media bug is on"
    # The exact subscription FreeSWITCH was asked for.
    [subscriber] = pbx.fake.subscribers()
    assert subscriber.commands == [
        f"auth {PASSWORD}",
        "event plain CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE RECORD_START RECORD_STOP HEARTBEAT",
    ]


async def test_channel_variables_are_never_stored(pbx: Pbx) -> None:
    await pbx.live_call()
    async with pbx.h.services.engine.connect() as conn:
        payloads = (await conn.execute(sa.text("SELECT payload FROM inbound_events"))).scalars()
        stored = [json.loads(p) if isinstance(p, str) else p for p in payloads]
    assert len(stored) == 2
    for payload in stored:
        assert set(payload) <= set(KEPT_HEADERS), sorted(set(payload) - set(KEPT_HEADERS))
        assert "4111" not in json.dumps(payload) and "A. Resident" not in json.dumps(payload)


async def test_hangup_ends_the_call_and_an_agent_hanging_up_ends_nothing(pbx: Pbx) -> None:
    await pbx.live_call()
    await pbx.agent_leg()
    # call_uuid is reset once they part; originator stays.
    leg: dict[str, Any] = {"call_uuid": AGENT, "originator": CALLER}
    cause: dict[str, Any] = {"Hangup-Cause": "NORMAL_CLEARING"}
    await pbx.send(
        record_event("RECORD_STOP", AGENT, AGENT_PATH, **leg),
        event("CHANNEL_HANGUP_COMPLETE", AGENT, **leg, **cause),
        applied=1,
    )
    await pbx.send(event("CHANNEL_ANSWER", CALLER))  # arrives after the leg's hang-up: a marker
    call = await get_call(pbx.h)
    assert call["state"] == "in_progress", "the agent hanging up ends no call"
    assert states(call) == {PATH: "recording", AGENT_PATH: "stopped"}
    assert await pbx.h.count("calls") == 1, "the agent's channel is not a call of its own"

    await pbx.send(event("CHANNEL_HANGUP_COMPLETE", CALLER, **cause))
    call = await get_call(pbx.h)
    assert call["state"] == "ended" and call["ended_at"] is not None
    assert set(states(call).values()) == {"stopped"}


async def test_the_same_event_twice_is_applied_once(pbx: Pbx) -> None:
    await pbx.live_call()
    again = record_event("RECORD_START", CALLER, PATH)
    await pbx.send(again, again)
    assert await pbx.h.count("inbound_events") == 3
    assert await pbx.h.count("recordings") == 1


# ---- pause and resume --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behavior", "pause", "resume"), [("silence", "mask", "unmask"), ("skip", "pause", "resume")]
)
async def test_a_payment_is_uuid_record_on_the_exact_path(
    pbx: Pbx, behavior: str, pause: str, resume: str
) -> None:
    await pbx.live_call()

    start = await pay(pbx.h, "start", reference="PAY-1", pause_behavior=behavior)
    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True and start.json()["state"] == "paused"
    assert pbx.fake.api_lines == [f"uuid_record {CALLER} {pause} {PATH}"]
    bug = pbx.fake.channels[CALLER][PATH]
    assert (bug.masked, bug.paused) == (pause == "mask", pause == "pause")
    assert states(await get_call(pbx.h)) == {PATH: "paused"}

    end = await pay(pbx.h, "end", outcome="authorised")
    assert end.status_code == 200 and end.json()["state"] == "closed", end.text
    assert pbx.fake.api_lines[1:] == [f"uuid_record {CALLER} {resume} {PATH}"]
    assert (bug.masked, bug.paused) == (False, False)
    call = await get_call(pbx.h)
    assert states(call) == {PATH: "recording"} and call["exposures"] == []
    # Commands go over a connection of their own, never the event connection.
    [subscriber] = pbx.fake.subscribers()
    assert not any(line.startswith("api ") for line in subscriber.commands)


async def test_the_pause_mode_decides_when_the_ivr_does_not_say(
    make_harness: Callable[..., Any], fake_fs: FakeFreeSwitch, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_harness(**esl_settings(fake_fs, freeswitch_pause_mode="pause")) as h:
        pbx = Pbx(h, fake_fs, Applied(h, monkeypatch))
        await fake_fs.subscribed()
        await pbx.live_call()
        assert (await pay(h, "start")).status_code == 200
        assert (await pay(h, "end")).status_code == 200
        said = await pay(h, "start", reference="PAY-2", pause_behavior="silence")
        assert said.status_code == 200
    assert [action for _, action, _ in fake_fs.controls] == ["pause", "resume", "mask"]


async def test_a_path_with_spaces_quotes_and_non_ascii_is_sent_byte_for_byte(pbx: Pbx) -> None:
    path = f"/srv/recordings/Council Tax/Ré 'quoted' \\ {CALLER}.wav"
    await pbx.live_call(path=path)
    assert states(await get_call(pbx.h)) == {path: "recording"}

    start = await pay(pbx.h, "start")

    assert start.status_code == 200, start.text
    assert pbx.fake.controls == [(CALLER, "mask", path)], "FreeSWITCH read the same path back"
    assert pbx.fake.channels[CALLER][path].masked


async def test_a_path_one_byte_off_is_refused_and_fails_closed(pbx: Pbx) -> None:
    pbx.fake.add_channel(CALLER)
    pbx.fake.start_recording(CALLER, PATH)
    reported = PATH.removesuffix(".wav") + ".wa"  # what RECORD_START says is not the bug's key
    await pbx.send(
        event("CHANNEL_ANSWER", CALLER), record_event("RECORD_START", CALLER, reported + "V")
    )

    start = await pay(pbx.h, "start")

    assert start.status_code == 503
    problem = start.json()
    assert problem["safe_to_collect"] is False and problem["state"] == "pause_failed"
    assert pbx.fake.controls == [(CALLER, "mask", reported + "V")], "a refusal is not retried"
    await pbx.h.services.tasks.drain()
    call = await get_call(pbx.h)
    assert [e["kind"] for e in call["exposures"]] == ["pause_failed"]
    assert call["recordings"][0]["quarantined"] is True
    assert not pbx.fake.channels[CALLER][PATH].masked


async def test_a_hung_freeswitch_fails_closed_at_the_deadline(pbx: Pbx) -> None:
    await pbx.live_call()
    pbx.fake.hang = True
    loop = asyncio.get_running_loop()
    began = loop.time()

    start = await pay(pbx.h, "start")

    assert start.status_code == 503 and start.json()["safe_to_collect"] is False
    assert start.json()["state"] == "pause_failed"
    assert loop.time() - began < 4.0, "answered at the pause deadline, not when FreeSWITCH is"


async def test_a_dead_event_socket_fails_closed(
    make_harness: Callable[..., Any], fake_fs: FakeFreeSwitch
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    # Events from the live fake's channel, commands to a port where nothing listens.
    async with make_harness(**esl_settings(fake_fs, freeswitch_events=False)) as h:
        for headers in (
            event("CHANNEL_ANSWER", CALLER),
            record_event("RECORD_START", CALLER, PATH),
        ):
            parsed = parse_event(plain_event_headers(serialize(headers)), now=datetime.now(UTC))
            assert parsed is not None
            await h.services.intake.accept(parsed, {}, b"")
        controller = h.services.controllers["freeswitch"]
        assert isinstance(controller, FreeSwitchController)
        controller.client.port = port

        start = await pay(h, "start")

    assert start.status_code == 503 and start.json()["safe_to_collect"] is False


async def test_no_recording_known_fails_closed_and_sends_nothing(pbx: Pbx) -> None:
    pbx.fake.add_channel(CALLER)
    await pbx.send(event("CHANNEL_ANSWER", CALLER))

    start = await pay(pbx.h, "start")

    assert start.status_code == 503 and start.json()["safe_to_collect"] is False
    assert pbx.fake.api_lines == [], "uuid_record needs a path: there is nothing to send"
    end = await pay(pbx.h, "end")
    assert end.status_code == 200 and end.json()["state"] == "closed"
    assert pbx.fake.api_lines == []


async def test_a_recording_reported_while_the_ivr_waits_is_paused_in_time(
    pbx: Pbx, monkeypatch: pytest.MonkeyPatch
) -> None:
    pbx.fake.add_channel(CALLER)
    await pbx.send(event("CHANNEL_ANSWER", CALLER))
    controller = pbx.h.services.controllers["freeswitch"]
    asked_for_the_call = asyncio.Event()
    pause = controller.pause

    async def spy(target: ControlTarget, behavior: PauseBehavior) -> list[ControlOutcome]:
        if target.call_level:
            asked_for_the_call.set()
        return await pause(target, behavior)

    monkeypatch.setattr(controller, "pause", spy)
    start_task = asyncio.create_task(pay(pbx.h, "start"))
    await asyncio.wait_for(asked_for_the_call.wait(), 5)
    pbx.fake.start_recording(CALLER, PATH)
    await pbx.send(record_event("RECORD_START", CALLER, PATH))
    start = await start_task

    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True
    assert pbx.fake.controls == [(CALLER, "mask", PATH)]
    assert (await get_call(pbx.h))["exposures"] == [], "paused before the IVR was answered"


async def test_a_late_recording_on_the_agents_leg_is_masked_at_once(pbx: Pbx) -> None:
    await pbx.live_call()
    start = await pay(pbx.h, "start")
    assert start.status_code == 200 and start.json()["safe_to_collect"] is True

    # The agent is bridged in and recorded while the caller keys the card number.
    await pbx.agent_leg()
    await pbx.h.services.tasks.drain()

    assert pbx.fake.controls == [(CALLER, "mask", PATH), (AGENT, "mask", AGENT_PATH)], (
        "masked on the channel its media bug is on"
    )
    assert pbx.fake.channels[AGENT][AGENT_PATH].masked
    call = await get_call(pbx.h)
    assert states(call) == {PATH: "paused", AGENT_PATH: "paused"}
    ids = {r["id"]: r["provider_recording_id"] for r in call["recordings"]}
    assert [(e["kind"], ids[e["recording_id"]]) for e in call["exposures"]] == [
        ("late_recording", AGENT_PATH)
    ]
    quarantined = {r["provider_recording_id"]: r["quarantined"] for r in call["recordings"]}
    assert quarantined == {PATH: False, AGENT_PATH: True}
    assert await pbx.h.count("calls") == 1

    end = await pay(pbx.h, "end")
    assert end.status_code == 200 and end.json()["state"] == "closed"
    assert sorted(pbx.fake.controls[2:]) == sorted(
        [(CALLER, "unmask", PATH), (AGENT, "unmask", AGENT_PATH)]
    )


async def test_a_recording_restarted_in_a_new_file_during_a_payment_is_a_late_recording(
    pbx: Pbx,
) -> None:
    """FreeSWITCH sends no event when a recording is masked or unmasked, so no resume is ever
    reported; what it can report is a recording running again: a new RECORD_START."""
    await pbx.live_call()
    assert (await pay(pbx.h, "start")).status_code == 200
    second = f"{RECORDINGS}/{CALLER}-2.wav"
    pbx.fake.channels[CALLER].pop(PATH)
    pbx.fake.start_recording(CALLER, second)
    await pbx.send(
        record_event("RECORD_STOP", CALLER, PATH), record_event("RECORD_START", CALLER, second)
    )
    await pbx.h.services.tasks.drain()

    assert pbx.fake.channels[CALLER][second].masked
    call = await get_call(pbx.h)
    assert states(call) == {PATH: "stopped", second: "paused"}
    assert [e["kind"] for e in call["exposures"]] == ["late_recording"]


async def test_a_release_without_pause_refuses_skip_and_masks_for_silence(pbx: Pbx) -> None:
    pbx.fake.knows_pause = False  # before 1.10.7
    await pbx.live_call()

    skip = await pay(pbx.h, "start", reference="PAY-1", pause_behavior="skip")
    assert skip.status_code == 503 and skip.json()["safe_to_collect"] is False
    assert pbx.fake.controls == [(CALLER, "pause", PATH)], "refused at once, not retried"
    # The refused pause changed nothing; the end clears whatever might be set, and a release
    # that has no "resume" answers -USAGE to it, which cannot leave anything paused.
    end = await pay(pbx.h, "end")
    assert end.status_code == 200 and end.json()["state"] == "closed", end.text
    assert [action for _, action, _ in pbx.fake.controls] == ["pause", "unmask", "resume"]

    silence = await pay(pbx.h, "start", reference="PAY-2", pause_behavior="silence")
    assert silence.status_code == 200, silence.text
    assert pbx.fake.channels[CALLER][PATH].masked


async def test_resume_after_a_restart_clears_both_flags(pbx: Pbx) -> None:
    await pbx.live_call()
    assert (await pay(pbx.h, "start", pause_behavior="skip")).status_code == 200
    controller = pbx.h.services.controllers["freeswitch"]
    assert isinstance(controller, FreeSwitchController)
    controller._paused_with.clear()  # as after a restart, or on another replica

    end = await pay(pbx.h, "end")

    assert end.status_code == 200 and end.json()["state"] == "closed"
    assert pbx.fake.controls[1:] == [(CALLER, "unmask", PATH), (CALLER, "resume", PATH)]
    assert not pbx.fake.channels[CALLER][PATH].paused


async def test_a_channel_gone_means_nothing_is_recording(pbx: Pbx) -> None:
    await pbx.live_call()
    pbx.fake.hang_up(CALLER)  # its hang-up event has not arrived yet

    start = await pay(pbx.h, "start")

    assert start.status_code == 200 and start.json()["safe_to_collect"] is True
    assert states(await get_call(pbx.h)) == {PATH: "stopped"}


# ---- the command client ----------------------------------------------------------------------


def target(channel: str = CALLER, path: str = PATH) -> ControlTarget:
    return ControlTarget(channel, (RecordingRef(uuid.uuid4(), path, f"channel:{channel}"),))


@pytest.fixture
async def esl(fake_fs: FakeFreeSwitch) -> AsyncIterator[FreeSwitchController]:
    controller = FreeSwitchController(EslCommandClient("127.0.0.1", fake_fs.port, PASSWORD, 1.0))
    yield controller
    await controller.aclose()


async def test_commands_survive_a_dropped_connection(
    esl: FreeSwitchController, fake_fs: FakeFreeSwitch
) -> None:
    fake_fs.start_recording(CALLER, PATH)
    paused = [ControlOutcome(PATH, ConfirmedState.PAUSED)]
    assert await esl.pause(target(), PauseBehavior.SILENCE) == paused
    assert fake_fs.drop() == 1  # between commands
    assert await esl.pause(target(), PauseBehavior.SILENCE) == paused

    # Cut while a command is under way: it is sent again on a new connection (mask only sets a
    # flag, so running it twice is harmless).
    fake_fs.api_delay_s = 0.2
    pending = asyncio.create_task(esl.pause(target(), PauseBehavior.SILENCE))
    await fake_fs.until(lambda: len(fake_fs.api_lines) == 3)
    assert fake_fs.drop() == 1
    fake_fs.api_delay_s = 0
    assert await asyncio.wait_for(pending, 5) == paused
    assert len(fake_fs.api_lines) == 4 and fake_fs.channels[CALLER][PATH].masked
    assert esl.client.connections_opened == 3
    assert [c.commands[0] for c in fake_fs.connections] == [f"auth {PASSWORD}"] * 3


async def test_a_caller_that_gives_up_leaves_the_answers_in_step(
    esl: FreeSwitchController, fake_fs: FakeFreeSwitch
) -> None:
    fake_fs.start_recording(CALLER, PATH)
    fake_fs.api_delay_s = 0.3
    with pytest.raises(ProviderUnavailable):
        await esl.client.api("status", timeout_s=0.05)
    fake_fs.api_delay_s = 0
    # The status answer still comes first; it must not be taken for the mask's.
    assert (await esl.pause(target(), PauseBehavior.SILENCE))[0].provider_recording_id == PATH
    assert fake_fs.channels[CALLER][PATH].masked
    assert esl.client.connections_opened == 1, "the same connection, still in step"


async def test_answers_are_typed(esl: FreeSwitchController, fake_fs: FakeFreeSwitch) -> None:
    with pytest.raises(RecordingGone):
        await esl.pause(target(), PauseBehavior.SILENCE)  # no such channel
    fake_fs.add_channel(CALLER)
    with pytest.raises(ProviderRejected, match="Cannot mask recording session"):
        await esl.pause(target(), PauseBehavior.SILENCE)
    with pytest.raises(ProviderUnavailable, match="no recording known"):
        await esl.pause(ControlTarget(CALLER), PauseBehavior.SILENCE)
    assert await esl.resume(ControlTarget(CALLER)) == []
    fake_fs.hang = True
    with pytest.raises(ProviderUnavailable, match="no answer"):
        await esl.pause(target(), PauseBehavior.SILENCE)


async def test_a_refused_password_and_an_acl_are_refusals(fake_fs: FakeFreeSwitch) -> None:
    wrong = FreeSwitchController(EslCommandClient("127.0.0.1", fake_fs.port, "ClueCon", 1.0))
    with pytest.raises(EslRefused, match="RECGATE_FREESWITCH_ESL_PASSWORD"):
        await wrong.pause(target(), PauseBehavior.SILENCE)
    assert fake_fs.refused == 1
    assert fake_fs.connections[0].commands == ["auth ClueCon"]
    fake_fs.acl_refuses = True
    with pytest.raises(EslRefused, match="apply-inbound-acl"):
        await wrong.probe(1.0)
    await wrong.aclose()


async def test_a_recording_path_is_never_sent_as_a_module_command(
    esl: FreeSwitchController, fake_fs: FakeFreeSwitch
) -> None:
    """mod_event_socket rewrites any command line naming "unload"/"reload" and
    "mod_event_socket" into "api bgapi unload mod_event_socket"."""
    path = "/recordings/unload-mod_event_socket.wav"
    fake_fs.start_recording(CALLER, path)
    with pytest.raises(ProviderRejected):
        await esl.pause(target(path=path), PauseBehavior.SILENCE)
    assert fake_fs.api_lines == []
    # The refused line left nothing behind: the next answer still meets its own command.
    fake_fs.start_recording(CALLER, PATH)
    assert (await esl.pause(target(), PauseBehavior.SILENCE))[0].state == "paused"
    assert (await esl.client.api("status")).startswith("UP ")


# ---- readiness ---------------------------------------------------------------------------------


async def test_readiness_probes_the_socket(pbx: Pbx, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ready = await pbx.h.client.get("/readyz", headers=pbx.h.auth(Role.OPS))
    check = ready.json()["checks"]["provider:freeswitch"][0]
    assert check["status"] == "pass", check
    assert check["output"] == f"freeswitch ESL at 127.0.0.1:{pbx.fake.port}: FreeSWITCH {VERSION}"
    prober = pbx.fake.connections[-1]
    assert prober.commands == [f"auth {PASSWORD}", "api status"], "its own connection"

    pbx.h.services.health._cached = None  # readiness answers are cached for a moment
    pbx.fake.password = "changed-on-the-pbx-0001"
    response = await pbx.h.client.get("/readyz", headers=pbx.h.auth(Role.OPS))
    check = response.json()["checks"]["provider:freeswitch"][0]
    assert check["status"] == "fail" and "RECGATE_FREESWITCH_ESL_PASSWORD" in check["output"]
    assert PASSWORD not in response.text and PASSWORD not in caplog.text


async def test_readiness_fails_while_freeswitch_is_not_ready(
    esl: FreeSwitchController, fake_fs: FakeFreeSwitch
) -> None:
    assert await esl.probe(1.0) == f"FreeSWITCH {VERSION}"
    fake_fs.ready = False
    with pytest.raises(ProviderUnavailable, match="not ready"):
        await esl.probe(1.0)


# ---- parsing -----------------------------------------------------------------------------------


def parsed(headers: list[tuple[str, str]]) -> Any:
    return parse_event(plain_event_headers(serialize(headers)), now=datetime.now(UTC))


def test_events_map_to_recgates() -> None:
    answered = parsed(event("CHANNEL_ANSWER", CALLER, at_us=NOW_US))
    assert answered.type == EventType.CALL_ANSWERED
    assert answered.call.provider_call_id == CALLER and answered.call.via_alias
    assert answered.occurred_at == datetime.fromtimestamp(NOW_US / 1e6, UTC).replace(
        microsecond=NOW_US % 1_000_000
    ), "Event-Date-Timestamp, to the microsecond"
    assert answered.event_id.startswith(f"{CORE_UUID}:"), "Core-UUID and Event-Sequence"

    leg: dict[str, Any] = {"call_uuid": CALLER, "originator": CALLER}
    linked = parsed(event("CHANNEL_ANSWER", AGENT, **leg))
    assert linked.type == EventType.CALL_LINKED
    assert (linked.call.provider_call_id, linked.aliases) == (CALLER, (AGENT,))
    assert parsed(event("CHANNEL_HANGUP_COMPLETE", AGENT, **leg)) is None

    on_leg = parsed(
        record_event("RECORD_START", AGENT, AGENT_PATH, call_uuid=AGENT, originator=CALLER)
    )
    assert on_leg.type == EventType.RECORDING_STARTED
    assert on_leg.call.provider_call_id == CALLER, "after the bridge, originator still says"
    assert on_leg.recording.container_id == f"channel:{AGENT}"
    assert on_leg.recording.media_format == "wav"

    stopped = parsed(record_event("RECORD_STOP", CALLER, PATH))
    assert stopped.type == EventType.RECORDING_STOPPED
    assert stopped.extras == {"completion_cause": "success"}

    assert parsed(event("DTMF", CALLER)) is None
    assert parsed(event("HEARTBEAT", CALLER)) is None


def test_an_event_without_its_ids_derives_one_stably() -> None:
    headers = [h for h in record_event("RECORD_START", CALLER, PATH) if h[0] != "Event-Sequence"]
    first, second = parsed(headers), parsed(headers)
    assert first.event_id == second.event_id and CALLER in first.event_id
    given_id = parsed([*headers, ("Event-UUID", "0d7e0c1a-1111-4c2e-9a1b-2c3d4e5f6a7b")])
    assert given_id.event_id == "0d7e0c1a-1111-4c2e-9a1b-2c3d4e5f6a7b"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([("Event-Name", "RECORD_START"), ("Unique-ID", CALLER)], "Record-File-Path"),
        ([("Event-Name", "CHANNEL_ANSWER")], "Unique-ID"),
        (
            [
                ("Event-Name", "CHANNEL_ANSWER"),
                ("Unique-ID", CALLER),
                ("Event-Date-Timestamp", "x"),
            ],
            "Event-Date-Timestamp",
        ),
        (
            [
                ("Event-Name", "RECORD_START"),
                ("Unique-ID", CALLER),
                ("Record-File-Path", "/" * 300),
            ],
            "longer than 255",
        ),
    ],
)
def test_malformed_events(headers: list[tuple[str, str]], reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        parse_event(plain_event_headers(serialize(headers)), now=datetime.now(UTC))


_PATHS = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_PATHS)
def test_an_argument_survives_freeswitchs_splitter(path: str) -> None:
    line = f"{CALLER} mask {esl_argument(path)}"
    assert separate_blank(line, 5)[:3] == [CALLER, "mask", path]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_PATHS.filter(lambda p: "%" not in p))
def test_a_path_survives_the_plain_event_encoding(path: str) -> None:
    headers = plain_event_headers(serialize([("Record-File-Path", path)]))
    assert headers["Record-File-Path"] == path


def test_a_literal_percent_sequence_cannot_be_read_back() -> None:
    """switch_url_encode leaves "%20" in a value as it is, so a path holding it reads back as a
    space: such a path is never the bug's key, and its payment fails closed (docs say: no %)."""
    headers = plain_event_headers(serialize([("Record-File-Path", "/rec/a%20b.wav")]))
    assert headers["Record-File-Path"] == "/rec/a b.wav"


def test_a_line_break_is_never_sent() -> None:
    with pytest.raises(ProviderRejected):
        esl_argument("/rec/a\n\napi shutdown")


# ---- settings ----------------------------------------------------------------------------------

AUDIT_KEY = "an-audit-key-of-at-least-16-bytes"


def test_production_refuses_the_stock_password_and_a_line_break() -> None:
    with pytest.raises(ValidationError, match="RECGATE_FREESWITCH_ESL_PASSWORD is a placeholder"):
        Settings(
            _env_file=None,
            env="production",
            audit_key=AUDIT_KEY,
            freeswitch_esl_host="127.0.0.1",
            freeswitch_esl_password="ClueCon",
        )
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, freeswitch_esl_password="pw\n\napi shutdown")
    assert settings_problems(caught.value) == [
        "RECGATE_FREESWITCH_ESL_PASSWORD is invalid: must be printable characters on one line"
    ]
    assert "shutdown" not in str(caught.value)


def test_freeswitch_is_enabled_by_its_host() -> None:
    assert "freeswitch" not in enabled_providers(Settings(_env_file=None))
    settings = Settings(_env_file=None, freeswitch_esl_host="127.0.0.1")
    assert "freeswitch" in enabled_providers(settings)
    assert not freeswitch_events_enabled(settings), "reading events is asked for on its own"
