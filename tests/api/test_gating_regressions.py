"""Regression tests for payment-gating defects found in review (SPEC §2, §3.1).

Each test replays one scenario that once let the IVR take card details while a recording
could be live, or wedged a payment, and asserts the correct outcome directly. respx stands in
for the generic PBX's control URL, as in test_payment_gating.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
import sqlalchemy as sa

from app.domain.roles import Role
from tests.api.test_payment_gating import PAUSE, RESUME, get_call, live_call
from tests.conftest import Harness, event

START = "/v1/calls/generic/c-123/payment/start"
END = "/v1/calls/generic/c-123/payment/end"


@pytest.fixture
async def pbx() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=False) as router:
        yield router


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def recording_states(body: dict[str, Any]) -> dict[str, str]:
    return {r["provider_recording_id"]: r["state"] for r in body["recordings"]}


def pause_once_then_control_down(pbx: respx.MockRouter) -> respx.Route:
    """The PBX confirms the first pause, then its control URL fails with 500s."""
    route = pbx.post(PAUSE)
    route.side_effect = [httpx.Response(200, json={"state": "paused"})] + [
        httpx.Response(500)
    ] * 500
    return route


def exposures(call: dict[str, Any]) -> list[tuple[str, bool]]:
    """(kind, closed?) per exposure of the call."""
    return [(e["kind"], e["ended_at"] is not None) for e in call["exposures"]]


# ---- PBX reports racing recgate's own commands -------------------------------------------


async def test_stale_paused_report_does_not_skip_the_next_pause(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """A PBX pause report older than the confirmed resume cannot make the next payment 'safe'."""
    pause = pbx.post(PAUSE).respond(200, json={"state": "paused"})
    pbx.post(RESUME).respond(200, json={"state": "recording"})
    ivr = harness.auth(Role.IVR)
    await live_call(harness)
    paused_at_pbx = datetime.now(UTC).isoformat()
    first = await harness.client.post(START, headers=ivr)
    assert first.status_code == 200, first.text
    end = await harness.client.post(END, headers=ivr)
    assert end.status_code == 200, end.text
    assert recording_states(end.json()) == {"r-1": "recording"}

    # The PBX's own report of the first pause arrives after the resume was confirmed.
    late = await harness.send_event(event("recording.paused", recording_id="r-1", at=paused_at_pbx))
    assert late.status_code == 200, late.text
    assert recording_states(await get_call(harness)) == {"r-1": "recording"}, (
        "a pause report older than recgate's confirmed resume moved the recording to paused"
    )

    second = await harness.client.post(START, headers=ivr)
    assert second.status_code == 200, second.text
    assert second.json()["safe_to_collect"] is True
    assert second.json()["segment_id"] != first.json()["segment_id"]
    assert pause.call_count == 2, "the second payment was answered without sending its own pause"
    assert recording_states(second.json()) == {"r-1": "paused"}


async def test_not_recording_answer_does_not_cover_a_recording_that_starts_after_it(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """A call-level 'not_recording' covers nothing: a recording starting later is paused and exposed."""
    pause = pbx.post(PAUSE)
    pause.side_effect = [
        httpx.Response(200, json={"state": "not_recording"}),
        httpx.Response(200, json={"state": "paused"}),
    ]
    start = await harness.client.post(START, headers=harness.auth(Role.IVR))
    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True and start.json()["recordings"] == []

    # r-1 starts just after the PBX answered; by the PBX's clock a little before recgate
    # stamped the pause, which must not read as "live before a confirmed call-level pause".
    started = await harness.send_event(event("recording.started", recording_id="r-1", at=ago(0.2)))
    assert started.status_code == 200, started.text
    await harness.services.tasks.drain()

    assert pause.call_count == 2, "the recording that started mid-payment was never paused"
    call = await get_call(harness)
    [recording] = call["recordings"]
    assert recording["state"] == "paused"
    assert recording["quarantined"] is True, "a recording live unpaused mid-payment is quarantined"
    assert exposures(call) == [("late_recording", True)], (
        "the unpaused span must be an exposure, closed once the pause was confirmed"
    )
    assert call["segments"][0]["state"] == "paused"


async def test_resume_reported_while_the_pause_is_in_flight_is_paused_again_before_safe(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """A PBX resume report landing during the pause round trip forces a second pause."""
    reports: list[int] = []

    async def pause_then_pbx_resumes(request: httpx.Request) -> httpx.Response:
        if not reports:
            # The PBX paused, then resumed on its own; its webhook lands before our answer.
            resumed = await harness.send_event(event("recording.resumed", recording_id="r-1"))
            reports.append(resumed.status_code)
        return httpx.Response(200, json={"state": "paused"})

    pause = pbx.post(PAUSE).mock(side_effect=pause_then_pbx_resumes)
    await live_call(harness)

    start = await harness.client.post(START, headers=harness.auth(Role.IVR))
    await harness.services.tasks.drain()

    assert reports == [200]
    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True
    assert pause.call_count == 2, (
        "the confirmation of a pause sent before the PBX's resume was taken as a pause after it"
    )
    call = await get_call(harness)
    [recording] = call["recordings"]
    assert (recording["state"], recording["quarantined"]) == ("paused", True)
    assert exposures(call) == [("unexpected_resume", True)]


async def test_unexpected_resume_during_payment_is_exposed_and_paused_again(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """A recording.resumed report during a payment is an unexpected_resume; recgate re-pauses."""
    pause = pbx.post(PAUSE).respond(200, json={"state": "paused"})
    await live_call(harness)
    start = await harness.client.post(START, headers=harness.auth(Role.IVR))
    assert start.status_code == 200, start.text

    resumed = await harness.send_event(event("recording.resumed", recording_id="r-1"))
    assert resumed.status_code == 200, resumed.text
    await harness.services.tasks.drain()

    assert pause.call_count == 2, "the resumed recording was not paused again"
    call = await get_call(harness)
    [recording] = call["recordings"]
    assert (recording["state"], recording["quarantined"]) == ("paused", True)
    assert exposures(call) == [("unexpected_resume", True)]
    assert call["segments"][0]["state"] == "paused"


async def test_recording_reported_paused_by_the_pbx_is_paused_by_recgate_and_resumed_at_end(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """A recording first seen as 'paused' by PBX report is paused by command and resumed at end."""
    pause = pbx.post(PAUSE).respond(200, json={"state": "paused"})
    resume = pbx.post(RESUME).respond(200, json={"state": "recording"})
    ivr = harness.auth(Role.IVR)
    began = ago(5)
    start = await harness.client.post(START, headers=ivr)
    assert start.status_code == 200, start.text  # call-level pause: no recording known yet

    # Out of order: the PBX's "paused" report for r-1 lands before its "started".
    await harness.send_event(event("recording.paused", recording_id="r-1"))
    await harness.send_event(event("recording.started", recording_id="r-1", at=began))
    await harness.services.tasks.drain()
    assert pause.call_count == 2, "a PBX pause report alone is not recgate's confirmation"

    end = await harness.client.post(END, headers=ivr)
    assert end.status_code == 200, end.text
    assert end.json()["state"] == "closed"
    assert recording_states(end.json()) == {"r-1": "recording"}, (
        "a recording paused during the payment was left paused after it"
    )
    assert resume.call_count == 1

    second = await harness.client.post(START, headers=ivr)
    assert second.status_code == 200, second.text
    assert second.json()["safe_to_collect"] is True
    assert pause.call_count == 3, "the next payment did not send its own pause"
    assert (await get_call(harness))["exposures"] == []


async def test_sim_resume_includes_a_recording_the_pbx_reported_paused(harness: Harness) -> None:
    """The per-recording resume at payment end also targets a recording paused by PBX report."""
    sim = harness.services.controllers["sim"]
    ivr = harness.auth(Role.IVR)
    await harness.send_event(
        event("recording.started", call_id="s-1", recording_id="r-1"), provider="sim"
    )
    start = await harness.client.post("/v1/calls/sim/s-1/payment/start", headers=ivr)
    assert start.status_code == 200, start.text

    # A second recording (a conference leg) appears, already paused by the PBX.
    await harness.send_event(
        event("recording.paused", call_id="s-1", recording_id="r-2"), provider="sim"
    )
    await harness.services.tasks.drain()
    end = await harness.client.post("/v1/calls/sim/s-1/payment/end", headers=ivr)

    assert end.status_code == 200, end.text
    assert recording_states(end.json()) == {"r-1": "recording", "r-2": "recording"}
    resumed = [sorted(c.recording_ids) for c in sim.commands if c.action == "resume"]  # type: ignore[attr-defined]
    assert resumed == [["r-1", "r-2"]], "the resume must name every recording paused in the payment"


@pytest.mark.parametrize("later", ["resumed", "paused"])
async def test_pbx_pause_reports_are_merged_by_time_not_arrival_order(
    harness: Harness, later: str
) -> None:
    """Outside a payment, the latest pause/resume report (by occurred_at) decides the state."""
    earlier = "paused" if later == "resumed" else "resumed"
    times = {earlier: ago(10), later: ago(5)}
    for call_id, order in (("in-order", (earlier, later)), ("reversed", (later, earlier))):
        for kind in order:
            response = await harness.send_event(
                event(f"recording.{kind}", call_id=call_id, recording_id="r", at=times[kind])
            )
            assert response.status_code == 200, response.text

    expected = {"resumed": "recording", "paused": "paused"}[later]
    in_order = recording_states(await get_call(harness, "in-order"))
    reversed_ = recording_states(await get_call(harness, "reversed"))
    assert in_order == reversed_ == {"r": expected}, "the state depends on arrival order"


# ---- control answers --------------------------------------------------------------------


async def test_control_url_404_is_not_a_pause_confirmation(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """A bare 404 from the control URL (e.g. a wrong path) fails closed with 503."""
    pbx.post(PAUSE).respond(404, text="<html>Not Found</html>")
    await live_call(harness)

    start = await harness.client.post(START, headers=harness.auth(Role.IVR))

    assert start.status_code == 503, f"a 404 was taken as 'nothing recording': {start.text}"
    assert start.headers["content-type"].startswith("application/problem+json")
    assert start.json()["safe_to_collect"] is False
    assert start.json()["state"] == "pause_failed"
    call = await get_call(harness)
    assert call["segments"][0]["state"] == "pause_failed"
    [recording] = call["recordings"]
    assert (recording["state"], recording["quarantined"]) == ("recording", True)
    assert exposures(call) == [("pause_failed", False)]


# ---- a new payment after an unfinished one -----------------------------------------------


async def test_new_payment_after_a_failed_resume_supersedes_it_and_pauses_again(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """A start after a 502 end opens a new segment and pauses again (no illegal transition)."""
    pause = pbx.post(PAUSE).respond(200, json={"state": "paused"})
    pbx.post(RESUME).respond(500)
    ivr = harness.auth(Role.IVR)
    await live_call(harness)
    first = await harness.client.post(START, headers=ivr)
    assert first.status_code == 200, first.text
    end = await harness.client.post(END, headers=ivr)
    assert end.status_code == 502, end.text

    again = await harness.client.post(START, headers=ivr)

    assert again.status_code == 200, f"a new payment after a failed resume: {again.text}"
    assert again.json()["safe_to_collect"] is True
    assert again.json()["segment_id"] != first.json()["segment_id"]
    assert pause.call_count == 2, "the new payment must confirm its own pause"
    call = await get_call(harness)
    assert [(s["id"], s["state"]) for s in call["segments"]] == [
        (first.json()["segment_id"], "closed"),
        (again.json()["segment_id"], "paused"),
    ]
    assert recording_states(call) == {"r-1": "paused"}


async def test_idempotency_key_replayed_after_a_failed_resume_is_payment_ended(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """Replaying a start key whose payment ended (resume unconfirmed) is a 409, never a 500."""
    pause = pbx.post(PAUSE).respond(200, json={"state": "paused"})
    pbx.post(RESUME).respond(500)
    keyed = {**harness.auth(Role.IVR), "Idempotency-Key": "K"}
    first = await harness.client.post(START, headers=keyed)  # call-level: no recording known
    assert first.status_code == 200, first.text
    end = await harness.client.post(END, headers=harness.auth(Role.IVR))
    assert end.status_code == 502, end.text

    replays = [await harness.client.post(START, headers=keyed) for _ in range(2)]
    # A new payment (another key) supersedes the unfinished one; the old key still means it.
    fresh = await harness.client.post(
        START, headers={**harness.auth(Role.IVR), "Idempotency-Key": "K2"}
    )
    replays.append(await harness.client.post(START, headers=keyed))

    for replay in replays:
        assert replay.status_code == 409, f"replay of an ended payment: {replay.text}"
        body = replay.json()
        assert body["type"].endswith("/payment-ended")
        assert body["safe_to_collect"] is False
        assert body["segment_id"] == first.json()["segment_id"]
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["segment_id"] != first.json()["segment_id"]
    assert pause.call_count == 2, "a replay sent a pause; only the new payment may"


async def test_idempotency_key_replay_after_payment_end_is_payment_ended(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """A late replay of a start whose payment closed answers 409 payment-ended, never 'safe'."""
    pause = pbx.post(PAUSE).respond(200, json={"state": "paused"})
    resume = pbx.post(RESUME).respond(200, json={"state": "recording"})
    keyed = {**harness.auth(Role.IVR), "Idempotency-Key": "K"}
    await live_call(harness)
    first = await harness.client.post(START, headers=keyed)
    assert first.status_code == 200, first.text
    end = await harness.client.post(END, headers=harness.auth(Role.IVR))
    assert end.status_code == 200, end.text

    late = await harness.client.post(START, headers=keyed)

    assert late.status_code == 409, f"a replay of a closed payment was answered: {late.text}"
    body = late.json()
    assert body["type"].endswith("/payment-ended")
    assert body["safe_to_collect"] is False
    assert (body["segment_id"], body["state"]) == (first.json()["segment_id"], "closed")
    assert (pause.call_count, resume.call_count) == (1, 1), "a replay reached the PBX"
    assert recording_states(await get_call(harness)) == {"r-1": "recording"}


async def test_end_after_the_worker_died_mid_pause_resumes_once_its_claim_runs_out(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """A worker that dies mid round trip leaves its claim on the segment. The IVR's end is on
    record at once (502, not safe); when the claim runs out the upkeep resumes what may have
    paused, once, and the payment closes."""
    sent: list[int] = []
    first_sent = asyncio.Event()

    async def hang_once(request: httpx.Request) -> httpx.Response:
        sent.append(1)
        first_sent.set()
        if len(sent) == 1:
            await asyncio.sleep(30)
        return httpx.Response(200, json={"state": "paused"})

    pbx.post(PAUSE).mock(side_effect=hang_once)
    resume = pbx.post(RESUME).respond(200, json={"state": "recording"})
    ivr = harness.auth(Role.IVR)
    await live_call(harness)
    interrupted = asyncio.create_task(harness.client.post(START, headers=ivr))
    await asyncio.wait_for(first_sent.wait(), 5)
    # The worker dies: its request and its command go, its claim on the segment stays.
    await harness.services.tasks.close()
    interrupted.cancel()
    await asyncio.gather(interrupted, return_exceptions=True)

    first_end = await harness.client.post(END, headers=ivr)

    assert first_end.status_code == 502, first_end.text
    assert first_end.json()["safe_to_collect"] is False
    assert resume.call_count == 0, "resumed while the dead worker's pause could still land"

    gate = harness.services.gate
    real_clock = gate.clock
    gate.clock = lambda: real_clock() + timedelta(seconds=10)  # the claim has run out
    assert await gate.run_due() == 1
    await harness.services.tasks.drain()
    gate.clock = real_clock

    ends = [await harness.client.post(END, headers=ivr) for _ in range(2)]
    assert [e.status_code for e in ends] == [200, 200], [e.text for e in ends]
    assert ends[0].json() == ends[1].json(), "a repeated end answers the same body"
    assert ends[0].json()["state"] == "closed"
    assert recording_states(ends[0].json()) == {"r-1": "recording"}
    assert resume.call_count == 1, "the pause that may have landed must be resumed, once"

    again = await harness.client.post(START, headers=ivr)
    assert again.status_code == 200, again.text
    assert again.json()["safe_to_collect"] is True
    assert len(sent) == 2, "the new payment did not send its own pause"
    call = await get_call(harness)
    assert [s["state"] for s in call["segments"]] == ["closed", "paused"]
    assert recording_states(call) == {"r-1": "paused"}


async def test_end_during_a_pause_in_flight_waits_for_its_answer_then_resumes(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """An end while the pause is still out waits for the PBX's answer, then resumes at once:
    never a resume that could overtake the pause. The start it raced hears the payment ended."""
    answer_pause = asyncio.Event()
    pause_sent = asyncio.Event()

    async def slow_pause(request: httpx.Request) -> httpx.Response:
        pause_sent.set()
        await answer_pause.wait()
        return httpx.Response(200, json={"state": "paused"})

    pbx.post(PAUSE).mock(side_effect=slow_pause)
    resume = pbx.post(RESUME).respond(200, json={"state": "recording"})
    ivr = harness.auth(Role.IVR)
    await live_call(harness)
    start = asyncio.create_task(harness.client.post(START, headers=ivr))
    await asyncio.wait_for(pause_sent.wait(), 5)
    end = asyncio.create_task(harness.client.post(END, headers=ivr))
    await until_end_requested(harness)
    assert resume.call_count == 0, "a resume went out while the pause was unanswered"

    answer_pause.set()
    started, ended = await start, await end

    assert ended.status_code == 200, ended.text
    assert ended.json()["state"] == "closed"
    assert recording_states(ended.json()) == {"r-1": "recording"}
    assert started.status_code == 409, started.text
    assert started.json()["safe_to_collect"] is False
    assert started.json()["type"].endswith("/payment-ended")
    assert resume.call_count == 1
    call = await get_call(harness)
    segment_steps = [t["to_state"] for t in call["timeline"] if t["entity"] == "segment"]
    assert segment_steps == ["pausing", "resuming", "closed"]


async def until_end_requested(h: Harness) -> None:
    """Wait (bounded) until the IVR's end is on record on the open segment."""
    query = sa.text("SELECT count(*) FROM payment_segments WHERE resume_requested_at IS NOT NULL")
    for _ in range(200):
        async with h.services.engine.connect() as conn:
            if (await conn.execute(query)).scalar_one():
                return
        await asyncio.sleep(0.01)
    raise AssertionError("the end was never recorded")


# ---- call end ----------------------------------------------------------------------------


async def test_call_end_and_exposure_end_do_not_depend_on_report_order(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """With two call.ended reports, the earliest wins for the call and its exposures alike."""
    for call_id in ("in-order", "reversed"):
        pbx.post(PAUSE.replace("c-123", call_id)).respond(500)
    early = datetime.now(UTC) + timedelta(seconds=10)
    late = datetime.now(UTC) + timedelta(seconds=60)
    ivr = harness.auth(Role.IVR)

    for call_id, order in (("in-order", (early, late)), ("reversed", (late, early))):
        await harness.send_event(event("recording.started", call_id=call_id, recording_id="r-1"))
        start = await harness.client.post(f"/v1/calls/generic/{call_id}/payment/start", headers=ivr)
        assert start.status_code == 503, start.text
        for ended in order:
            response = await harness.send_event(
                event("call.ended", call_id=call_id, at=ended.isoformat())
            )
            assert response.status_code == 200, response.text

    for call_id in ("in-order", "reversed"):
        call = await get_call(harness, call_id)
        assert at(call["ended_at"]) == early, (
            f"{call_id}: the call's end is not the earliest report"
        )
        assert [(e["kind"], at(e["ended_at"])) for e in call["exposures"]] == [
            ("pause_failed", early)
        ], f"{call_id}: an exposure outlasts the call or ends at the later report"


# ---- repeated start while a recording is live --------------------------------------------


async def test_repeated_start_is_not_safe_while_a_recording_is_live(
    make_harness: Any, pbx: respx.MockRouter
) -> None:
    """A repeated start is refused while recgate cannot re-pause recordings that went live."""
    pause = pause_once_then_control_down(pbx)
    async with make_harness(max_pause_s=1) as h:
        await live_call(h)
        first = await h.client.post(START, headers=h.auth(Role.IVR))
        assert first.status_code == 200, first.text
        # The PBX resumes r-1 on its own and starts r-2; re-pausing fails (control down).
        await h.send_event(event("recording.resumed", recording_id="r-1"))
        await h.send_event(event("recording.started", recording_id="r-2"))
        await asyncio.sleep(0.3)

        again = await h.client.post(START, headers=h.auth(Role.IVR))

        assert again.status_code == 503, f"repeat start while recordings are live: {again.text}"
        assert again.json()["safe_to_collect"] is False
        assert pause.call_count > 1, "recgate never tried to pause the live recordings again"


async def test_repeated_start_after_pause_failed_retries_the_pause_on_the_same_segment(
    make_harness: Any, pbx: respx.MockRouter
) -> None:
    """Once background re-pausing gave up, a repeated start retries it on the same segment."""
    pause = pause_once_then_control_down(pbx)
    async with make_harness(max_pause_s=1) as h:
        await live_call(h)
        first = await h.client.post(START, headers=h.auth(Role.IVR))
        assert first.status_code == 200, first.text
        await h.send_event(event("recording.resumed", recording_id="r-1"))
        await h.send_event(event("recording.started", recording_id="r-2"))
        await h.services.tasks.drain()  # background re-pausing gives up after max_pause_s
        call = await get_call(h)
        assert call["segments"][0]["state"] == "pause_failed"
        sent_before = pause.call_count

        again = await h.client.post(START, headers=h.auth(Role.IVR))

        assert again.status_code == 503, again.text
        body = again.json()
        assert (body["state"], body["safe_to_collect"]) == ("pause_failed", False)
        assert body["segment_id"] == first.json()["segment_id"], "a new segment was opened"
        assert pause.call_count > sent_before, "the repeated start did not retry the pause"
        call = await get_call(h)
        assert [s["state"] for s in call["segments"]] == ["pause_failed"]
        assert {
            r["provider_recording_id"]: (r["state"], r["quarantined"]) for r in call["recordings"]
        } == {
            "r-1": ("recording", True),
            "r-2": ("recording", True),
        }
        names = {r["id"]: r["provider_recording_id"] for r in call["recordings"]}
        open_kinds: dict[str, set[str]] = {"r-1": set(), "r-2": set()}
        for exposure in call["exposures"]:
            assert exposure["ended_at"] is None, f"exposure closed while still unpaused: {exposure}"
            open_kinds[names[exposure["recording_id"]]].add(exposure["kind"])
        assert "unexpected_resume" in open_kinds["r-1"], open_kinds
        # r-2 is late_recording or pause_failed, depending on whether it started before or
        # during the background re-pause; either way it is on record.
        assert open_kinds["r-2"] & {"late_recording", "pause_failed"}, open_kinds


# ---- a failed pause whose record lands after the deadline ----------------------------------


async def test_a_failed_pause_recorded_after_the_deadline_is_still_answered_pause_failed(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """Found by CI on a cold PostgreSQL: the PBX refused, the flight was writing
    ``pause_failed`` when the IVR's deadline passed, and the 503 said ``pausing``."""
    pbx.post(PAUSE).respond(400, json={"error": "refused"})
    await live_call(harness)
    gate = harness.services.gate
    write = gate._write

    async def slow_record(work: Any, deadline: float | None = None, **options: Any) -> Any:
        if getattr(getattr(work, "func", None), "__name__", "") == "_record_txn":
            await asyncio.sleep(2.0)  # past the 1.5 s pause deadline
        return await write(work, deadline, **options)

    gate._write = slow_record  # type: ignore[method-assign]
    start = await harness.client.post(START, headers=harness.auth(Role.IVR))
    assert start.status_code == 503
    assert start.json()["safe_to_collect"] is False
    assert start.json()["state"] == "pause_failed"
    await harness.services.tasks.drain()
    call = await get_call(harness)
    assert call["segments"][0]["state"] == "pause_failed"
    assert [e["kind"] for e in call["exposures"]] == ["pause_failed"]
