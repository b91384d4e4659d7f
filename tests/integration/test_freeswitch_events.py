"""The FreeSWITCH event-socket consumer against the loopback event socket of
tests/freeswitch_esl.py: it authenticates, subscribes, feeds events through the one intake,
and reconnects and subscribes again after a dropped connection, a disconnect notice, a
refused password or a silent socket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from app.domain.events import EventType
from app.domain.roles import Role
from app.jobs.freeswitch_events import FreeSwitchEventConsumer
from tests.conftest import Harness
from tests.freeswitch_esl import (
    PASSWORD,
    Applied,
    FakeFreeSwitch,
    esl_settings,
    event,
    new_uuid,
    record_event,
    running_fake,
)

SUBSCRIPTION = (
    "event plain CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE RECORD_START RECORD_STOP HEARTBEAT"
)


@pytest.fixture
async def fake_fs() -> AsyncIterator[FakeFreeSwitch]:
    async with running_fake() as fake:
        yield fake


def consumer_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "freeswitch-events" and not t.done()]


@asynccontextmanager
async def consuming(h: Harness, **options: Any) -> AsyncIterator[FreeSwitchEventConsumer]:
    """A consumer of the harness's intake with quick backoff, running until the block ends."""
    consumer = FreeSwitchEventConsumer(
        h.services.settings,
        h.services.intake,
        h.services.clock,
        h.services.metrics,
        **{"initial_backoff_s": 0.05, "max_backoff_s": 0.2, **options},
    )
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.fixture
async def quiet_harness(
    make_harness: Callable[..., Any], fake_fs: FakeFreeSwitch
) -> AsyncIterator[Harness]:
    """recgate configured for the fake, without the service's own consumer."""
    async with make_harness(**esl_settings(fake_fs, freeswitch_events=False)) as h:
        yield h


async def call_state(h: Harness, call_id: str) -> dict[str, Any]:
    response = await h.client.get(
        f"/v1/calls/freeswitch/{call_id}", headers=h.auth(Role.SUPERVISOR)
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_dropped_socket_is_reconnected_and_subscribed_again(
    quiet_harness: Harness, fake_fs: FakeFreeSwitch, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, caller = quiet_harness, new_uuid()
    path = f"/var/lib/freeswitch/recordings/{caller}.wav"
    applied = Applied(h, monkeypatch)
    async with consuming(h) as consumer:
        await fake_fs.subscribed(1)
        assert await fake_fs.emit(event("CHANNEL_ANSWER", caller)) == 1
        await applied.count(EventType.CALL_ANSWERED)

        assert fake_fs.drop(commands=False) == 1  # FreeSWITCH restarts, or the network fails
        await fake_fs.subscribed(2)
        assert await fake_fs.emit(record_event("RECORD_START", caller, path)) == 1
        assert await fake_fs.emit(record_event("RECORD_STOP", caller, path)) == 1
        assert await fake_fs.emit(event("CHANNEL_HANGUP_COMPLETE", caller)) == 1
        await applied.count(EventType.CALL_ENDED)

        call = await call_state(h, caller)
        assert call["state"] == "ended", "events of the second connection are applied"
        assert [(r["provider_recording_id"], r["state"]) for r in call["recordings"]] == [
            (path, "stopped")
        ]
        assert consumer.subscriptions == 2
    subscribed = [c for c in fake_fs.connections if c.subscribed]
    assert [c.commands for c in subscribed] == [[f"auth {PASSWORD}", SUBSCRIPTION]] * 2


async def test_a_disconnect_notice_is_followed_by_a_new_connection(
    quiet_harness: Harness, fake_fs: FakeFreeSwitch, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, caller = quiet_harness, new_uuid()
    applied = Applied(h, monkeypatch)
    async with consuming(h):
        await fake_fs.subscribed(1)
        await fake_fs.disconnect_subscribers()
        await fake_fs.subscribed(2)
        assert await fake_fs.emit(event("CHANNEL_ANSWER", caller)) == 1
        await applied.count(EventType.CALL_ANSWERED)
    assert (await call_state(h, caller))["answered_at"] is not None


async def test_a_silent_socket_is_replaced(
    quiet_harness: Harness, fake_fs: FakeFreeSwitch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="recgate.freeswitch_events")
    async with consuming(quiet_harness, idle_timeout_s=0.2):
        # No event and no HEARTBEAT: the connection is taken for dead, and replaced.
        await fake_fs.subscribed(2)
    assert "no HEARTBEAT" in caplog.text


async def test_a_heartbeat_keeps_the_socket(
    quiet_harness: Harness, fake_fs: FakeFreeSwitch
) -> None:
    async with consuming(quiet_harness, idle_timeout_s=0.5) as consumer:
        await fake_fs.subscribed(1)
        for _ in range(6):
            assert await fake_fs.emit(event("HEARTBEAT", new_uuid())) == 1
            await asyncio.sleep(0.15)  # the heartbeat's own interval, shortened
        assert consumer.subscriptions == 1
    assert await quiet_harness.count("inbound_events") == 0, "heartbeats are not stored"


async def test_a_refused_password_is_retried_and_never_logged(
    quiet_harness: Harness, fake_fs: FakeFreeSwitch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_fs.password = "the-right-one-is-elsewhere"
    async with consuming(quiet_harness):
        await fake_fs.until(lambda: fake_fs.refused >= 2)
        assert (await quiet_harness.client.get("/livez")).status_code == 200
        fake_fs.password = PASSWORD  # fixed on the PBX: the consumer gets in by itself
        await fake_fs.subscribed(1)
    assert "refused" in caplog.text
    assert PASSWORD not in caplog.text


async def test_an_unreadable_event_is_dead_lettered_without_channel_variables(
    quiet_harness: Harness, fake_fs: FakeFreeSwitch, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, caller = quiet_harness, new_uuid()
    applied = Applied(h, monkeypatch)
    async with consuming(h):
        await fake_fs.subscribed(1)
        broken = [
            (name, value)
            for name, value in record_event("RECORD_START", caller, "/r.wav")
            if name != "Record-File-Path"
        ]
        assert await fake_fs.emit(broken) == 1
        assert await fake_fs.emit(event("CHANNEL_ANSWER", caller)) == 1
        await applied.count(EventType.CALL_ANSWERED)
    assert applied.rejected == 1
    assert await h.count("dead_letters") == 1
    async with h.services.engine.connect() as conn:
        reason, payload = (
            await conn.execute(sa.text("SELECT reason, payload FROM dead_letters"))
        ).one()
    assert "Record-File-Path is missing" in reason
    assert caller in payload and "4111" not in payload and "payment_card" not in payload


async def test_the_service_runs_the_consumer_and_stops_it(
    make_harness: Callable[..., Any], fake_fs: FakeFreeSwitch
) -> None:
    async with make_harness(**esl_settings(fake_fs)):
        [task] = consumer_tasks()
        await fake_fs.subscribed(1)
    assert task.cancelled(), "the consumer stops with the service"


async def test_the_consumer_runs_only_when_asked(
    quiet_harness: Harness, fake_fs: FakeFreeSwitch
) -> None:
    assert consumer_tasks() == []
    assert fake_fs.connections == [], "not even connected"


async def test_backoff_is_jittered_within_bounds(quiet_harness: Harness) -> None:
    h = quiet_harness
    low = FreeSwitchEventConsumer(
        h.services.settings,
        h.services.intake,
        h.services.clock,
        h.services.metrics,
        jitter=lambda: 0.0,
    )
    high = FreeSwitchEventConsumer(
        h.services.settings,
        h.services.intake,
        h.services.clock,
        h.services.metrics,
        jitter=lambda: 1.0,
    )
    assert (low.backoff(30.0), high.backoff(30.0)) == (15.0, 30.0)
