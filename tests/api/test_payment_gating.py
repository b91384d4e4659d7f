"""Payment gating over HTTP, with respx standing in for the generic PBX's control URL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx

from app.domain.roles import Role
from app.services import concurrency
from app.telephony.generic import parse_event
from app.telephony.signing import verify
from tests.conftest import CONTROL_URL, Harness, event

PAUSE = f"{CONTROL_URL}/calls/c-123/recording/pause"
RESUME = f"{CONTROL_URL}/calls/c-123/recording/resume"


@pytest.fixture
async def pbx() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=False) as router:
        yield router


async def live_call(h: Harness, recording_id: str | None = "r-1") -> None:
    for type_ in ("call.started", "call.answered"):
        assert (await h.send_event(event(type_))).status_code == 200
    if recording_id:
        assert (
            await h.send_event(event("recording.started", recording_id=recording_id))
        ).status_code == 200


async def get_call(h: Harness, call_id: str = "c-123") -> dict[str, Any]:
    response = await h.client.get(f"/v1/calls/generic/{call_id}", headers=h.auth(Role.SUPERVISOR))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_happy_path_pauses_confirms_and_resumes(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    pause = pbx.post(PAUSE).respond(200, json={"state": "paused"})
    resume = pbx.post(RESUME).respond(200, json={"state": "recording"})
    await live_call(harness)

    start = await harness.client.post(
        "/v1/calls/generic/c-123/payment/start",
        json={"reference": "PAY-1", "pause_behavior": "skip"},
        headers=harness.auth(Role.IVR),
    )
    assert start.status_code == 200, start.text
    body = start.json()
    assert body["safe_to_collect"] is True and body["state"] == "paused"
    assert [r["state"] for r in body["recordings"]] == ["paused"]

    # The control request is signed like a webhook and carries the IVR's pause behaviour.
    sent = pause.calls.last.request
    command = json.loads(sent.content)
    assert command == {
        "call_id": "c-123",
        "action": "pause",
        "command_id": sent.headers["webhook-id"],
        "behavior": "skip",
    }
    key = harness.services.settings.generic_secret_key
    assert key is not None
    from datetime import UTC, datetime

    verify(key, sent.headers, sent.content, datetime.now(UTC))

    end = await harness.client.post(
        "/v1/calls/generic/c-123/payment/end",
        json={"outcome": "authorised"},
        headers=harness.auth(Role.IVR),
    )
    assert end.status_code == 200, end.text
    assert end.json()["state"] == "closed"
    assert [r["state"] for r in end.json()["recordings"]] == ["recording"]
    assert pause.call_count == 1 and resume.call_count == 1

    call = await get_call(harness)
    assert call["segments"][0]["state"] == "closed" and call["segments"][0]["closed_by"] == "ivr"
    assert call["segments"][0]["paused_at"] is not None
    assert call["exposures"] == []


async def test_pbx_error_fails_closed_with_503(harness: Harness, pbx: respx.MockRouter) -> None:
    pause = pbx.post(PAUSE).respond(500, json={"error": "boom"})
    await live_call(harness)

    start = await harness.client.post(
        "/v1/calls/generic/c-123/payment/start", headers=harness.auth(Role.IVR)
    )

    assert start.status_code == 503
    assert start.headers["content-type"].startswith("application/problem+json")
    problem = start.json()
    assert problem["safe_to_collect"] is False and problem["state"] == "pause_failed"
    assert pause.call_count >= 2, "a 5xx is transient: it is retried within the deadline"
    await harness.services.tasks.drain()  # the failure's record may land just after the answer
    call = await get_call(harness)
    assert call["segments"][0]["state"] == "pause_failed"
    assert call["recordings"][0]["state"] == "recording"
    assert call["recordings"][0]["quarantined"] is True
    assert [e["kind"] for e in call["exposures"]] == ["pause_failed"]


async def test_slow_pbx_times_out_with_503(harness: Harness, pbx: respx.MockRouter) -> None:
    async def too_slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json={"state": "paused"})

    pbx.post(PAUSE).mock(side_effect=too_slow)
    await live_call(harness)
    loop = asyncio.get_running_loop()
    began = loop.time()

    start = await harness.client.post(
        "/v1/calls/generic/c-123/payment/start", headers=harness.auth(Role.IVR)
    )

    assert start.status_code == 503
    assert start.json()["safe_to_collect"] is False
    assert loop.time() - began < 4.0, (
        "the IVR is answered at the pause deadline, not when the PBX is"
    )
    assert (await get_call(harness))["segments"][0]["state"] == "pause_failed"


async def test_pbx_answering_200_without_pausing_is_not_confirmation(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    pbx.post(PAUSE).respond(200, json={"state": "recording"})
    await live_call(harness)
    start = await harness.client.post(
        "/v1/calls/generic/c-123/payment/start", headers=harness.auth(Role.IVR)
    )
    assert start.status_code == 503
    assert start.json()["state"] == "pause_failed"


async def test_transient_failure_then_success_is_confirmed(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    pause = pbx.post(PAUSE)
    pause.side_effect = [
        httpx.Response(503),
        httpx.ConnectError("refused"),
        httpx.Response(200, json={"state": "paused"}),
    ]
    await live_call(harness)
    start = await harness.client.post(
        "/v1/calls/generic/c-123/payment/start", headers=harness.auth(Role.IVR)
    )
    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True
    assert pause.call_count == 3


async def test_repeated_starts_send_one_pause(harness: Harness, pbx: respx.MockRouter) -> None:
    pause = pbx.post(PAUSE).respond(200, json={"state": "paused"})
    await live_call(harness)
    url = "/v1/calls/generic/c-123/payment/start"

    concurrent = await asyncio.gather(
        *(harness.client.post(url, headers=harness.auth(Role.IVR)) for _ in range(5))
    )
    again = await harness.client.post(url, headers=harness.auth(Role.IVR))

    assert {r.status_code for r in (*concurrent, again)} == {200}
    assert len({r.json()["segment_id"] for r in (*concurrent, again)}) == 1
    assert pause.call_count == 1


async def test_idempotency_key_replays_the_first_answer(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    pause = pbx.post(PAUSE).respond(200, json={"state": "paused"})
    pbx.post(RESUME).respond(200, json={"state": "recording"})
    await live_call(harness)
    headers = {**harness.auth(Role.IVR), "Idempotency-Key": "ivr-attempt-1"}
    first = await harness.client.post("/v1/calls/generic/c-123/payment/start", headers=headers)
    await harness.client.post("/v1/calls/generic/c-123/payment/end", headers=harness.auth(Role.IVR))
    # A retry of the same start arriving late must not pause the call again, nor say "safe".
    late = await harness.client.post("/v1/calls/generic/c-123/payment/start", headers=headers)
    assert late.status_code == 409
    assert late.json()["type"].endswith("/payment-ended")
    assert late.json()["safe_to_collect"] is False
    assert late.json()["segment_id"] == first.json()["segment_id"]
    assert pause.call_count == 1


async def test_ivr_before_pbx_pauses_at_call_level(harness: Harness, pbx: respx.MockRouter) -> None:
    pause = pbx.post(PAUSE).respond(200, json={"state": "paused"})
    resume = pbx.post(RESUME).respond(200, json={"state": "recording"})

    start = await harness.client.post(
        "/v1/calls/generic/c-123/payment/start", headers=harness.auth(Role.IVR)
    )

    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True and start.json()["recordings"] == []
    assert pause.call_count == 1
    # The PBX's first events arrive afterwards: the call and recording join the open payment.
    await harness.send_event(event("call.started", at="2026-01-01T00:00:00+00:00"))
    await harness.send_event(
        event("recording.started", recording_id="r-1", at="2026-01-01T00:00:00+00:00")
    )
    await harness.services.tasks.drain()
    call = await get_call(harness)
    assert call["recordings"][0]["state"] == "paused"
    assert call["exposures"] == [], "a recording live before the call-level pause was covered by it"
    assert pause.call_count == 2, "the PBX still confirms the newly known recording is paused"
    causes = [t["cause"] for t in call["timeline"] if t["entity"] == "recording"]
    assert causes[0] == "recording live during payment", "pending goes straight to pausing"

    end = await harness.client.post(
        "/v1/calls/generic/c-123/payment/end", headers=harness.auth(Role.IVR)
    )
    assert end.status_code == 200 and end.json()["state"] == "closed"
    assert resume.call_count == 1
    assert (await get_call(harness))["recordings"][0]["state"] == "recording"


async def test_pbx_with_nothing_recording_is_safe(harness: Harness, pbx: respx.MockRouter) -> None:
    pbx.post(PAUSE).respond(200, json={"state": "not_recording"})
    start = await harness.client.post(
        "/v1/calls/generic/c-9/payment/start".replace("c-9", "c-123"),
        headers=harness.auth(Role.IVR),
    )
    assert start.status_code == 200
    assert start.json()["safe_to_collect"] is True


async def test_recording_started_during_payment_is_paused_at_once(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    pause = pbx.post(PAUSE).respond(200, json={"state": "paused"})
    pbx.post(RESUME).respond(200, json={"state": "recording"})
    await live_call(harness)
    start = await harness.client.post(
        "/v1/calls/generic/c-123/payment/start", headers=harness.auth(Role.IVR)
    )
    assert start.status_code == 200

    # A second recording (e.g. a conference recording) starts while card details are taken.
    response = await harness.send_event(event("recording.started", recording_id="r-2"))
    assert response.status_code == 200
    await harness.services.tasks.drain()

    assert pause.call_count == 2
    call = await get_call(harness)
    states = {
        r["provider_recording_id"]: (r["state"], r["quarantined"]) for r in call["recordings"]
    }
    assert states == {"r-1": ("paused", False), "r-2": ("paused", True)}
    [exposure] = call["exposures"]
    assert exposure["kind"] == "late_recording" and exposure["ended_at"] is not None

    end = await harness.client.post(
        "/v1/calls/generic/c-123/payment/end", headers=harness.auth(Role.IVR)
    )
    assert end.status_code == 200
    assert {r["state"] for r in end.json()["recordings"]} == {"recording"}


async def test_unexpected_resume_during_payment_is_an_exposure(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    pause = pbx.post(PAUSE).respond(200, json={"state": "paused"})
    await live_call(harness)
    await harness.client.post(
        "/v1/calls/generic/c-123/payment/start", headers=harness.auth(Role.IVR)
    )

    await harness.send_event(event("recording.resumed", recording_id="r-1"))
    await harness.services.tasks.drain()

    call = await get_call(harness)
    assert [e["kind"] for e in call["exposures"]] == ["unexpected_resume"]
    assert call["recordings"][0]["state"] == "paused", "recgate pauses it again"
    assert call["recordings"][0]["quarantined"] is True
    assert pause.call_count == 2


async def test_end_without_start_is_409(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/calls/generic/c-404/payment/end", headers=harness.auth(Role.IVR)
    )
    assert response.status_code == 409
    assert response.json()["type"].endswith("/no-open-payment")


async def test_repeated_end_returns_the_same_body(harness: Harness, pbx: respx.MockRouter) -> None:
    pbx.post(PAUSE).respond(200, json={"state": "paused"})
    resume = pbx.post(RESUME).respond(200, json={"state": "recording"})
    await live_call(harness)
    await harness.client.post(
        "/v1/calls/generic/c-123/payment/start", headers=harness.auth(Role.IVR)
    )
    first = await harness.client.post(
        "/v1/calls/generic/c-123/payment/end", headers=harness.auth(Role.IVR)
    )
    second = await harness.client.post(
        "/v1/calls/generic/c-123/payment/end", headers=harness.auth(Role.IVR)
    )
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert resume.call_count == 1


async def test_resume_failure_is_502_and_retried_in_background(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    pbx.post(PAUSE).respond(200, json={"state": "paused"})
    resume = pbx.post(RESUME)
    resume.side_effect = [httpx.Response(500)] * 50
    await live_call(harness)
    await harness.client.post(
        "/v1/calls/generic/c-123/payment/start", headers=harness.auth(Role.IVR)
    )

    end = await harness.client.post(
        "/v1/calls/generic/c-123/payment/end", headers=harness.auth(Role.IVR)
    )
    assert end.status_code == 502
    assert end.json()["state"] == "resume_failed"
    assert (await get_call(harness))["segments"][0]["state"] == "resume_failed"

    # The PBX recovers; the background retry (due after the retry interval) confirms it.
    resume.side_effect = None
    resume.return_value = httpx.Response(200, json={"state": "recording"})
    from datetime import timedelta

    gate = harness.services.gate
    real_clock = gate.clock
    gate.clock = lambda: (
        real_clock() + timedelta(seconds=harness.services.settings.resume_retry_interval_s + 1)
    )
    assert await gate.run_due() == 1
    await harness.services.tasks.drain()
    gate.clock = real_clock
    call = await get_call(harness)
    assert call["segments"][0]["state"] == "closed"
    assert call["recordings"][0]["state"] == "recording"


async def test_pbx_rejecting_is_not_retried(harness: Harness, pbx: respx.MockRouter) -> None:
    pause = pbx.post(PAUSE).respond(403, json={"error": "forbidden"})
    await live_call(harness)
    start = await harness.client.post(
        "/v1/calls/generic/c-123/payment/start", headers=harness.auth(Role.IVR)
    )
    assert start.status_code == 503
    assert pause.call_count == 1


async def test_call_end_closes_an_open_segment(harness: Harness, pbx: respx.MockRouter) -> None:
    pbx.post(PAUSE).respond(200, json={"state": "paused"})
    await live_call(harness)
    await harness.client.post(
        "/v1/calls/generic/c-123/payment/start", headers=harness.auth(Role.IVR)
    )
    await harness.send_event(event("call.ended"))
    call = await get_call(harness)
    assert call["state"] == "ended"
    assert (
        call["segments"][0]["state"] == "closed" and call["segments"][0]["closed_by"] == "call_end"
    )
    assert call["recordings"][0]["state"] == "stopped"
    start = await harness.client.post(
        "/v1/calls/generic/c-123/payment/start", headers=harness.auth(Role.IVR)
    )
    assert start.status_code == 409


async def test_unknown_provider_is_404_problem(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/calls/nope/c-1/payment/start", headers=harness.auth(Role.IVR)
    )
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_sim_provider_gates_a_payment(harness: Harness) -> None:
    sim = harness.services.controllers["sim"]
    await harness.send_event(
        event("recording.started", call_id="s-1", recording_id="r-1"), provider="sim"
    )
    start = await harness.client.post(
        "/v1/calls/sim/s-1/payment/start", headers=harness.auth(Role.IVR)
    )
    assert start.status_code == 200 and start.json()["safe_to_collect"] is True
    sim.mode = "hang"  # type: ignore[attr-defined]
    end = await harness.client.post("/v1/calls/sim/s-1/payment/end", headers=harness.auth(Role.IVR))
    assert end.status_code == 502


async def test_overlong_pause_alerts_but_never_resumes(make_harness, pbx: respx.MockRouter) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    pbx.post(PAUSE).respond(200, json={"state": "paused"})
    resume = pbx.post(RESUME).respond(200, json={"state": "recording"})
    async with make_harness(max_pause_s=60) as h:
        await live_call(h)
        assert (
            await h.client.post("/v1/calls/generic/c-123/payment/start", headers=h.auth(Role.IVR))
        ).status_code == 200
        gate = h.services.gate
        assert await gate.alert_overlong_segments() == 0, "not overlong yet"
        real = gate.clock
        later = lambda: real() + timedelta(seconds=61)  # noqa: E731
        gate.clock = h.services.health.clock = later
        assert await gate.alert_overlong_segments() == 1
        assert await gate.alert_overlong_segments() == 0, "alerted once"
        ready = (await h.client.get("/readyz")).json()
        assert ready["checks"]["payments:overlong"][0]["status"] == "warn"
        assert resume.call_count == 0, "a long pause is never resumed by itself"
        assert (await get_call(h))["segments"][0]["state"] == "paused"


async def test_card_data_in_fields_is_never_stored(harness: Harness, pbx: respx.MockRouter) -> None:
    import sqlalchemy as sa

    pbx.post(PAUSE).respond(200, json={"state": "paused"})
    await harness.send_event(
        event("call.started", agent_id="agent 4111 1111 1111 1111", **{"from": "4111111111111111"})
    )
    await harness.client.post(
        "/v1/calls/generic/c-123/payment/start",
        json={"reference": "card 5555555555554444 cvv 123"},
        headers=harness.auth(Role.IVR),
    )
    async with harness.services.engine.connect() as conn:
        call = (await conn.execute(sa.text("SELECT from_number, agent_id FROM calls"))).one()
        reference = (
            await conn.execute(sa.text("SELECT reference FROM payment_segments"))
        ).scalar_one()
    assert call.from_number == "[REDACTED]" and "4111" not in call.agent_id
    assert "5555" not in reference and "123" not in reference


async def test_e164_numbers_are_kept_for_subject_access(harness: Harness) -> None:
    import sqlalchemy as sa

    await harness.send_event(event("call.started", **{"from": "+441632960001"}))
    async with harness.services.engine.connect() as conn:
        assert (
            await conn.execute(sa.text("SELECT from_number FROM calls"))
        ).scalar_one() == "+441632960001"


async def test_provider_without_recording_control_fails_closed(make_harness) -> None:  # type: ignore[no-untyped-def]
    async with make_harness(generic_control_url=None) as h:
        response = await h.client.post(
            "/v1/calls/generic/c-1/payment/start", headers=h.auth(Role.IVR)
        )
        assert response.status_code == 503
        assert response.json()["safe_to_collect"] is False
        unknown = await h.client.post(
            "/v1/calls/asterisk/c-1/payment/start", headers=h.auth(Role.IVR)
        )
        assert unknown.status_code == 404 and unknown.json()["safe_to_collect"] is False


async def test_recording_learned_after_a_call_level_failure_is_quarantined(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    pbx.post(PAUSE).respond(403)
    pbx.post(RESUME).respond(200, json={"state": "recording"})
    start = await harness.client.post(
        "/v1/calls/generic/c-123/payment/start", headers=harness.auth(Role.IVR)
    )
    assert start.status_code == 503
    await harness.client.post("/v1/calls/generic/c-123/payment/end", headers=harness.auth(Role.IVR))
    # The PBX's recording events only arrive now, after the call ended.
    await harness.send_event(event("recording.started", recording_id="r-1"))
    await harness.send_event(event("call.ended"))
    call = await get_call(harness)
    assert [e["recording_id"] for e in call["exposures"]] == [None]
    assert call["recordings"][0]["quarantined"] is True, "it may hold the card details"


@pytest.fixture
def held_pause(pbx: respx.MockRouter) -> tuple[asyncio.Event, asyncio.Event]:
    """The PBX's pause answer, held: (asked, answer). It answers once ``answer`` is set."""
    asked, answer = asyncio.Event(), asyncio.Event()

    async def respond(request: httpx.Request) -> httpx.Response:
        asked.set()
        await answer.wait()
        return httpx.Response(200, json={"state": "paused"})

    pbx.post(PAUSE).mock(side_effect=respond)
    return asked, answer


async def _until_one_waits(harness: Harness, task: asyncio.Task[Any]) -> None:
    """Until ``task`` waits for the payment being answered (bounded; it fails if it goes
    ahead instead)."""
    answering = harness.services.gate.answering
    for _ in range(1000):
        if answering.waiting == 1:
            return
        assert not task.done(), "it went ahead of the payment"
        await asyncio.sleep(0.01)
    raise AssertionError("it never waited for the payment")


async def _start_held(harness: Harness, asked: asyncio.Event) -> asyncio.Task[httpx.Response]:
    start = asyncio.create_task(
        harness.client.post("/v1/calls/generic/c-123/payment/start", headers=harness.auth(Role.IVR))
    )
    async with asyncio.timeout(10):
        await asked.wait()
    return start


async def test_webhooks_arriving_while_the_ivr_waits_let_its_payment_go_first(
    harness: Harness,
    held_pause: tuple[asyncio.Event, asyncio.Event],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A webhook that arrives while a payment start is being answered is read and applied
    once the start is answered: a burst of webhooks would otherwise sit ahead of each of the
    payment's steps in the event loop (and, on SQLite, hold the write lock it needs)."""
    asked, answer = held_pause
    monkeypatch.setattr(concurrency, "IVR_FIRST_S", 30.0)  # the test releases it sooner
    await live_call(harness)
    start = await _start_held(harness, asked)
    try:
        webhook = asyncio.create_task(harness.send_event(event("call.started", call_id="c-2")))
        await _until_one_waits(harness, webhook)
        assert await harness.count("calls") == 1
    finally:
        answer.set()
        assert (await start).status_code == 200
    async with asyncio.timeout(10):
        response = await webhook
    assert (response.status_code, response.json()) == (200, {"status": "applied"})
    assert await harness.count("calls") == 2


async def test_a_webhook_waits_for_the_ivr_a_bounded_time(
    harness: Harness,
    held_pause: tuple[asyncio.Event, asyncio.Event],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A payment that takes long (a PBX slow to answer) never holds webhooks up for longer
    than ``IVR_FIRST_S`` each: they are applied while it is still being answered."""
    asked, answer = held_pause
    monkeypatch.setattr(concurrency, "IVR_FIRST_S", 0.05)
    await live_call(harness)
    start = await _start_held(harness, asked)
    try:
        async with asyncio.timeout(10):
            response = await harness.send_event(event("call.started", call_id="c-2"))
        assert (response.status_code, response.json()) == (200, {"status": "applied"})
        assert not start.done(), "the payment is still being answered"
    finally:
        answer.set()
        assert (await start).status_code == 200


@pytest.mark.parametrize(
    ("webhook", "worker"),
    [(True, False), (False, False), (True, True)],
    ids=["webhook", "event-stream", "webhook-in-the-worker"],
)
async def test_a_batch_lets_the_ivr_go_first_unless_it_holds_a_streamed_event(
    make_harness: Callable[..., Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    webhook: bool,
    worker: bool,
) -> None:
    """A webhook's batch about to start lets a payment being answered go first (the webhook
    may have arrived before the payment did): in the service's process it would hold the
    event loop, and on SQLite, in the ingest worker too, the file's one write lock the
    payment's next write needs. In the worker on PostgreSQL it locks only its own calls' rows
    and goes at once. Events from the ARI and FreeSWITCH streams come one at a time, each
    awaited before the next: their batches never wait, or a stream would crawl while
    payments are answered."""
    monkeypatch.setattr(concurrency, "IVR_FIRST_S", 30.0)  # the test ends the wait sooner
    body = json.dumps(event("call.started", call_id="c-batch")).encode()
    parsed, payload = parse_event("generic", "msg-batch", body)
    waits = webhook and (not worker or database_url.startswith("sqlite"))
    async with make_harness(ingest_worker=worker) as harness:
        assert (harness.services.ingest.worker is not None) == worker
        intake = harness.services.intake
        with harness.services.gate.answering.one():
            applied = asyncio.create_task(intake.accept(parsed, payload, body, webhook=webhook))
            if waits:
                await _until_one_waits(harness, applied)
                assert await harness.count("calls") == 0
            else:  # applied while the payment is still being answered
                async with asyncio.timeout(10):
                    await asyncio.shield(applied)
                assert await harness.count("calls") == 1
        async with asyncio.timeout(10):
            result = await applied
        assert not result.duplicate
        assert await harness.count("calls") == 1


async def test_a_start_and_an_end_count_as_the_ivr_waiting_while_they_are_answered(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    """While the IVR waits, webhooks and their batches let it go first
    (app/services/concurrency.py): the gate says it is answering for as long as the PBX is
    being asked, and no longer."""
    gate = harness.services.gate
    seen: list[int] = []

    def answer(state: str) -> Any:
        def respond(request: httpx.Request) -> httpx.Response:
            seen.append(gate.answering.count)
            return httpx.Response(200, json={"state": state})

        return respond

    pbx.post(PAUSE).mock(side_effect=answer("paused"))
    pbx.post(RESUME).mock(side_effect=answer("recording"))
    await live_call(harness)
    ivr = harness.auth(Role.IVR)
    start = await harness.client.post("/v1/calls/generic/c-123/payment/start", headers=ivr)
    assert start.status_code == 200, start.text
    end = await harness.client.post("/v1/calls/generic/c-123/payment/end", headers=ivr)
    assert end.status_code == 200, end.text
    assert seen == [1, 1]
    assert gate.answering.count == 0
    assert harness.services.ingest.ivr.busy is False
