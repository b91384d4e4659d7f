"""Payment gating across two replicas of the app on one PostgreSQL database (SPEC §3.1).

A second app instance (a replica) shares the first one's settings and database; the call's
lock must then hold across processes, not only within one. Two processes on one SQLite file
are not a supported deployment, so these tests run on PostgreSQL only.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import respx

from app.domain.roles import Role
from app.main import create_app
from tests.api.test_payment_gating import PAUSE, RESUME, get_call, live_call
from tests.conftest import Harness, event

START = "/v1/calls/generic/c-123/payment/start"
END = "/v1/calls/generic/c-123/payment/end"


@pytest.fixture(autouse=True)
def postgres_only(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("replicas share a database only on PostgreSQL; SQLite serves one process")


@pytest.fixture
async def pbx() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=False) as router:
        yield router


@asynccontextmanager
async def collector_paused() -> AsyncIterator[None]:
    """No full garbage collection during a timed section: late in the whole suite, this test
    process holds enough objects for one to stall the event loop past a deadline (the
    service itself freezes what it loads at start-up, app/main.py)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@asynccontextmanager
async def replica(h: Harness) -> AsyncIterator[Harness]:
    """A second app instance on the same database, settings and tokens."""
    app = create_app(h.services.settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://replica-b.test"
        ) as client:
            yield Harness(client, app.state.services, h.tokens)
        await app.state.services.tasks.drain()


async def test_end_on_one_replica_waits_for_a_pause_in_flight_on_the_other(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """An end on B during A's unanswered pause runs after it and resumes what may have paused."""
    answer = asyncio.Event()
    sent: list[int] = []
    first_sent = asyncio.Event()

    async def first_pause_unanswered(request: httpx.Request) -> httpx.Response:
        sent.append(1)
        first_sent.set()
        if len(sent) == 1:
            await answer.wait()  # the PBX got the command; its answer never comes in time
        return httpx.Response(200, json={"state": "paused"})

    pbx.post(PAUSE).mock(side_effect=first_pause_unanswered)
    resume = pbx.post(RESUME).respond(200, json={"state": "recording"})
    await live_call(harness)
    async with replica(harness) as b:
        a_start = asyncio.create_task(harness.client.post(START, headers=harness.auth(Role.IVR)))
        await asyncio.wait_for(first_sent.wait(), 5)
        # Halfway to A's deadline: B's end waits for the call lock and, started this much
        # after A, still has time to resume once A gives up.
        await asyncio.sleep(harness.services.settings.pause_timeout_ms / 2000)
        b_end = await b.client.post(END, headers=b.auth(Role.IVR))
        answer.set()
        a = await a_start

        assert a.status_code == 503, a.text
        assert (a.json()["state"], a.json()["safe_to_collect"]) == ("pause_failed", False)
        assert b_end.status_code == 200, b_end.text
        assert b_end.json()["state"] == "closed"
        assert resume.call_count == 1, "the pause that may have landed at the PBX was not undone"
        call = await get_call(harness)
        segment_steps = [t["to_state"] for t in call["timeline"] if t["entity"] == "segment"]
        assert segment_steps == ["pausing", "pause_failed", "resuming", "closed"], (
            "B's end interleaved with A's pause instead of waiting for the call lock"
        )
        assert [r["state"] for r in call["recordings"]] == ["recording"], (
            "a pause confirmation was applied after the payment closed"
        )

        again = await b.client.post(START, headers=b.auth(Role.IVR))
        assert again.status_code == 200, again.text
        assert again.json()["safe_to_collect"] is True
        assert len(sent) == 2, "the next payment must send its own pause"


async def test_concurrent_starts_on_two_replicas_send_exactly_one_pause(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """Two replicas starting the same payment at once share one segment and one pause command."""

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.15)
        return httpx.Response(200, json={"state": "paused"})

    pause = pbx.post(PAUSE).mock(side_effect=slow)
    await live_call(harness)
    async with replica(harness) as b:
        answers = await asyncio.gather(
            harness.client.post(START, headers=harness.auth(Role.IVR)),
            b.client.post(START, headers=b.auth(Role.IVR)),
        )

    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert [r.json()["safe_to_collect"] for r in answers] == [True, True]
    assert answers[0].json()["segment_id"] == answers[1].json()["segment_id"]
    assert pause.call_count == 1, "a pause was sent twice to the provider (SPEC §3.1)"
    call = await get_call(harness)
    assert [s["state"] for s in call["segments"]] == ["paused"]


async def test_more_concurrent_payments_than_pool_connections_all_answer_in_time(
    make_harness: Callable[..., Any], pbx: respx.MockRouter
) -> None:
    """Pool starvation (issue 8): 40 calls start payments at once on each of two replicas
    (80 requests, each replica with a pool of 20) while the PBX takes 300 ms per pause. No
    connection is held across a PBX call, so every start is answered, safe, in time, and
    every call gets exactly one pause. The deadline is doubled: a starved pool would make
    them wait the pool's 5 s, and a CI machine under load must not fail the test by itself."""
    async with make_harness(pause_timeout_ms=3000) as harness:
        calls = [f"crowd-{n}" for n in range(40)]

        async def slow_pause(request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(0.3)
            return httpx.Response(200, json={"state": "paused"})

        pause = pbx.post(url__regex=r"/calls/crowd-\d+/recording/pause").mock(
            side_effect=slow_pause
        )
        for call_id in calls:
            for type_, rid in (("call.started", None), ("recording.started", "r-1")):
                sent = await harness.send_event(event(type_, call_id=call_id, recording_id=rid))
                assert sent.status_code == 200, sent.text
        loop = asyncio.get_running_loop()
        async with replica(harness) as b, collector_paused():
            began = loop.time()
            answers = await asyncio.gather(
                *(
                    h.client.post(
                        f"/v1/calls/generic/{call_id}/payment/start", headers=h.auth(Role.IVR)
                    )
                    for call_id in calls
                    for h in (harness, b)
                )
            )
            took = loop.time() - began

        assert [r.status_code for r in answers] == [200] * len(answers), [
            r.text for r in answers if r.status_code != 200
        ][:3]
        assert all(r.json()["safe_to_collect"] for r in answers)
        pairs = zip(answers[::2], answers[1::2], strict=True)
        assert all(a.json()["segment_id"] == b.json()["segment_id"] for a, b in pairs), (
            "identical starts on two replicas opened two payments"
        )
        assert pause.call_count == len(calls), "a pause was sent twice, or not at all"
        assert took < harness.services.settings.pause_timeout_ms / 1000 + 1.0
