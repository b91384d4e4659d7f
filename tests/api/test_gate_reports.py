"""PBX reports during a payment, judged against recgate's own commands (SPEC §3.2, issue 8).

PBX clocks are never trusted to dismiss danger: a resume reported while a payment is open is
an exposure and is paused again unless it provably predates recgate's pause command (earlier
by more than the timestamp's precision plus RECGATE_PBX_CLOCK_SKEW_MS). A report dated in the
future is refused. Background work follows recgate's own ids, never a provider's alias.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import respx
import sqlalchemy as sa

from app.domain.roles import Role
from tests.api import test_asterisk as ari
from tests.api.test_payment_gating import PAUSE, RESUME, get_call, live_call
from tests.conftest import Harness, event

START = "/v1/calls/generic/c-123/payment/start"


@pytest.fixture
async def pbx() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=False) as router:
        yield router


def whole_second(moment: datetime) -> str:
    """The way many PBXs stamp their events: truncated to the second."""
    return moment.replace(microsecond=0).isoformat()


def exposures(call: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in call["exposures"]]


async def paid(h: Harness) -> datetime:
    """A live call whose payment start was answered safe; the moment before it was sent."""
    await live_call(h)
    before = datetime.now(UTC)
    start = await h.client.post(START, headers=h.auth(Role.IVR))
    assert start.status_code == 200, start.text
    return before


async def test_a_resume_in_the_same_whole_second_as_the_pause_is_an_exposure(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """Stamped to the whole second, the resume may have come just after recgate's pause: it
    is not dismissed as older, but paused again and put on record."""
    pause = pbx.post(PAUSE).respond(200, json={"state": "paused"})
    sent = await paid(harness)

    resumed = await harness.send_event(
        event("recording.resumed", recording_id="r-1", at=whole_second(sent))
    )
    assert resumed.status_code == 200, resumed.text
    await harness.services.tasks.drain()

    call = await get_call(harness)
    assert exposures(call) == ["unexpected_resume"]
    assert call["recordings"][0]["quarantined"] is True
    assert pause.call_count == 2, "the resumed recording was not paused again"
    assert call["recordings"][0]["state"] == "paused"


async def test_a_resume_within_the_clock_skew_allowance_is_an_exposure(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """A millisecond-stamped resume 0.5 s before the pause, inside the 1 s skew allowance."""
    pbx.post(PAUSE).respond(200, json={"state": "paused"})
    sent = await paid(harness)

    at = (sent - timedelta(milliseconds=500)).isoformat(timespec="milliseconds")
    await harness.send_event(event("recording.resumed", recording_id="r-1", at=at))
    await harness.services.tasks.drain()

    assert exposures(await get_call(harness)) == ["unexpected_resume"]


async def test_a_resume_that_provably_predates_the_pause_changes_nothing(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """Ten seconds before recgate's pause, whole-second stamp and skew included: that pause
    came after it, and the recording stays confirmed paused."""
    pause = pbx.post(PAUSE).respond(200, json={"state": "paused"})
    sent = await paid(harness)

    late_news = whole_second(sent - timedelta(seconds=10))
    await harness.send_event(event("recording.resumed", recording_id="r-1", at=late_news))
    await harness.services.tasks.drain()

    call = await get_call(harness)
    assert exposures(call) == []
    assert (call["recordings"][0]["state"], call["recordings"][0]["quarantined"]) == (
        "paused",
        False,
    )
    assert pause.call_count == 1
    again = await harness.client.post(START, headers=harness.auth(Role.IVR))
    assert again.status_code == 200 and again.json()["safe_to_collect"] is True


async def test_a_future_dated_report_is_refused_and_cannot_mask_a_later_resume(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    pause = pbx.post(PAUSE).respond(200, json={"state": "paused"})
    sent = await paid(harness)

    future = await harness.send_event(
        event("recording.paused", recording_id="r-1", at="2099-01-01T00:00:00+00:00")
    )
    assert future.status_code == 422, future.text
    assert future.headers["content-type"].startswith("application/problem+json")
    assert "ahead" in future.json()["detail"]
    async with harness.services.engine.connect() as conn:
        dead = (await conn.execute(sa.text("SELECT reason FROM dead_letters"))).scalars().all()
        inbox = (
            await conn.execute(
                sa.text("SELECT count(*) FROM inbound_events WHERE type = 'recording.paused'")
            )
        ).scalar_one()
    assert len(dead) == 1 and "ahead" in dead[0]
    assert inbox == 0, "a refused event was stored as if applied"

    # A true resume after it still counts.
    at = (sent + timedelta(seconds=2)).isoformat()
    assert (
        await harness.send_event(event("recording.resumed", recording_id="r-1", at=at))
    ).status_code == 200
    await harness.services.tasks.drain()
    assert exposures(await get_call(harness)) == ["unexpected_resume"]
    assert pause.call_count == 2


async def test_a_report_a_minute_ahead_is_accepted(harness: Harness, pbx: respx.MockRouter) -> None:
    """A PBX clock a little fast is not malformed; only minutes ahead is."""
    pbx.post(PAUSE).respond(200, json={"state": "paused"})
    pbx.post(RESUME).respond(200, json={"state": "recording"})
    ahead = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    response = await harness.send_event(event("call.started", call_id="fast-clock", at=ahead))
    assert response.status_code == 200, response.text


# ---- the Asterisk bridge: background work by recgate's id, not the alias ---------------------


async def test_a_bridge_recording_that_starts_during_a_payment_is_paused_at_once(
    ari_harness: Harness, ari_api: respx.MockRouter
) -> None:
    """The event names the bridge (an alias of the caller's call); the re-pause must still
    reach the caller's payment."""
    mute_channel = ari_api.post(ari.live(ari.REC_CHANNEL, "mute")).respond(204)
    mute_bridge = ari_api.post(ari.live(ari.REC_BRIDGE, "mute")).respond(204)
    h = ari_harness
    await ari.send_all(
        h,
        ari.stasis_start(),
        ari.entered_bridge(),
        ari.recording_started(ari.REC_CHANNEL, f"channel:{ari.CALLER}", 3),
    )
    start = await ari.pay(h, "start")
    assert start.status_code == 200, start.text
    assert mute_channel.call_count == 1

    # The agent answers; the bridge starts recording now, mid-payment (ARI's clock: now).
    offset = (datetime.now(UTC) - ari.BASE_TIME).total_seconds()
    await ari.send_all(h, ari.recording_started(ari.REC_BRIDGE, f"bridge:{ari.BRIDGE}", offset))
    await h.services.tasks.drain()

    assert mute_bridge.call_count == 1, "the bridge recording was never paused"
    call = await ari.get_call(h)
    states = {
        r["provider_recording_id"]: (r["state"], r["quarantined"]) for r in call["recordings"]
    }
    assert states == {ari.REC_CHANNEL: ("paused", False), ari.REC_BRIDGE: ("paused", True)}
    assert exposures(call) == ["late_recording"]
    again = await ari.pay(h, "start")
    assert again.status_code == 200 and again.json()["safe_to_collect"] is True


@pytest.fixture
async def ari_harness(make_harness: Any) -> AsyncIterator[Harness]:
    async with make_harness(ari_url=ari.ARI, ari_user=ari.USER, ari_password=ari.PASSWORD) as h:
        yield h


@pytest.fixture
async def ari_api() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=False) as router:
        yield router
