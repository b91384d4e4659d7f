"""The ARI event WebSocket consumer against a real WebSocket server on loopback.

The server plays Asterisk's ``/ari/events``: it checks the path, the ``app`` query and Basic
auth, sends ARI events, then drops the connection. The consumer must reconnect and feed
events from both connections through the same ingestion path as the webhook.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from app.domain.events import EventType, PbxEvent
from app.domain.roles import Role
from app.services.ingest import IngestResult
from tests.api.test_asterisk import (
    AGENT,
    AGENT_NUMBER,
    BRIDGE,
    CALLER,
    PASSWORD,
    REC_AGENT,
    REC_BRIDGE,
    USER,
    ari_event,
    channel,
    entered_bridge,
    live_recording,
    recording_started,
    stasis_start,
)
from tests.conftest import Harness

WAIT_S = 10  # an upper bound for a test that hangs, never a sleep


@dataclass
class FakeAsterisk:
    """A loopback ``/ari/events`` endpoint; a script of messages per accepted connection."""

    user: str = USER
    password: str = PASSWORD
    scripts: list[list[str]] = field(default_factory=list)
    port: int = 0
    accepted: int = 0
    refused: int = 0
    # Set when the n-th connection (1-based) is accepted, and when it may send its script.
    connected: dict[int, asyncio.Event] = field(default_factory=dict)
    go: dict[int, asyncio.Event] = field(default_factory=dict)
    drop: dict[int, asyncio.Event] = field(default_factory=dict)
    refusal: asyncio.Event = field(default_factory=asyncio.Event)

    def event(self, table: dict[int, asyncio.Event], n: int) -> asyncio.Event:
        return table.setdefault(n, asyncio.Event())

    def check(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if (
            url.path != "/ari/events"
            or query.get("app") != ["recgate"]
            or query.get("subscribeAll") != ["false"]
            or request.headers.get("Authorization") != expected
        ):
            self.refused += 1
            self.refusal.set()
            response = connection.respond(401, "Authentication required")
            response.headers = Headers({**response.headers, "WWW-Authenticate": "Basic"})
            return response
        return None

    async def handler(self, connection: ServerConnection) -> None:
        self.accepted += 1
        n = self.accepted
        self.event(self.connected, n).set()
        if not await self.until(connection, self.event(self.go, n)):
            return
        for message in self.scripts[n - 1] if n <= len(self.scripts) else []:
            await connection.send(message)
        if n < len(self.scripts):
            if await self.until(connection, self.event(self.drop, n)):
                # Dropped, not closed: no close frame, as when Asterisk restarts.
                connection.transport.abort()
            return
        await connection.wait_closed()

    @staticmethod
    async def until(connection: ServerConnection, event: asyncio.Event) -> bool:
        """Wait for ``event``; False when the client went away first."""
        signalled = asyncio.ensure_future(event.wait())
        closed = asyncio.ensure_future(connection.wait_closed())
        done, pending = await asyncio.wait({signalled, closed}, return_when="FIRST_COMPLETED")
        for task in pending:
            task.cancel()
        return signalled in done


@pytest.fixture
async def asterisk_ws() -> AsyncIterator[FakeAsterisk]:
    fake = FakeAsterisk()
    # The fake's own handshake log would show the credentials the consumer sent.
    quiet = logging.getLogger("tests.fake_asterisk")
    quiet.setLevel(logging.WARNING)
    async with serve(
        fake.handler, "127.0.0.1", 0, process_request=fake.check, logger=quiet
    ) as server:
        fake.port = server.sockets[0].getsockname()[1]
        yield fake


class Applied:
    """Records what the consumer applied; lets a test await one event instead of sleeping."""

    def __init__(self, h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
        self.types: list[EventType] = []
        self.waiting: dict[EventType, asyncio.Event] = {}
        self.rejected = asyncio.Event()
        intake = h.services.intake
        accept, reject = intake.accept, intake.reject

        async def accept_spy(event: PbxEvent, payload: dict[str, Any], raw: bytes) -> IngestResult:
            result = await accept(event, payload, raw)
            self.types.append(event.type)
            self.waiting.setdefault(event.type, asyncio.Event()).set()
            return result

        async def reject_spy(*args: Any) -> None:
            await reject(*args)
            self.rejected.set()

        monkeypatch.setattr(intake, "accept", accept_spy)
        monkeypatch.setattr(intake, "reject", reject_spy)

    async def wait_for(self, kind: EventType) -> None:
        await asyncio.wait_for(self.waiting.setdefault(kind, asyncio.Event()).wait(), WAIT_S)


def consumer_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "ari-events" and not t.done()]


async def wait(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), WAIT_S)


def consumer_settings(fake: FakeAsterisk, **overrides: Any) -> dict[str, Any]:
    return {
        "ari_url": f"http://127.0.0.1:{fake.port}/ari",
        "ari_user": USER,
        "ari_password": PASSWORD,
        "ari_app": "recgate",
        "ari_events": True,
        **overrides,
    }


async def test_consumer_applies_events_and_reconnects_after_a_drop(
    make_harness: Callable[..., Any], asterisk_ws: FakeAsterisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished = ari_event(
        "RecordingFinished",
        60,
        recording=live_recording(REC_BRIDGE, f"bridge:{BRIDGE}", "canceled"),
    )
    destroyed = ari_event(
        "ChannelDestroyed", 61, cause=16, cause_txt="Normal Clearing", channel=channel()
    )
    asterisk_ws.scripts = [
        [
            json.dumps(stasis_start()),
            json.dumps(ari_event("ChannelDtmfReceived", 1, digit="4", duration_ms=90)),
            "{not json",
            json.dumps(entered_bridge()),
            json.dumps(recording_started()),
        ],
        [
            # Asterisk replays nothing: the second connection carries only new events, and
            # a duplicate of one already applied changes nothing.
            json.dumps(recording_started()),
            json.dumps(finished),
            json.dumps(destroyed),
        ],
    ]
    async with make_harness(**consumer_settings(asterisk_ws)) as h:
        applied = Applied(h, monkeypatch)
        [consumer] = consumer_tasks()

        await wait(asterisk_ws.event(asterisk_ws.connected, 1))
        asterisk_ws.event(asterisk_ws.go, 1).set()
        await applied.wait_for(EventType.RECORDING_STARTED)
        await wait(applied.rejected)
        asterisk_ws.event(asterisk_ws.drop, 1).set()

        await wait(asterisk_ws.event(asterisk_ws.connected, 2))
        asterisk_ws.event(asterisk_ws.go, 2).set()
        await applied.wait_for(EventType.CALL_ENDED)

        response = await h.client.get(
            f"/v1/calls/asterisk/{CALLER}", headers=h.auth(Role.SUPERVISOR)
        )
        assert response.status_code == 200
        call = response.json()
        assert call["state"] == "ended", "an event from the second connection"
        assert [(r["provider_recording_id"], r["state"]) for r in call["recordings"]] == [
            (REC_BRIDGE, "stopped")
        ], "the bridge recording from the first connection landed on the caller's call"
        assert await h.count("dead_letters") == 1, "the unreadable message, kept for operators"
        # StasisStart, link, RecordingStarted, RecordingFinished, ChannelDestroyed: the
        # DTMF event is not stored, and the repeated RecordingStarted is a duplicate.
        assert await h.count("inbound_events") == 5
    assert asterisk_ws.accepted == 2 and asterisk_ws.refused == 0
    assert consumer.cancelled(), "the consumer stops with the service"


async def test_an_agents_leg_over_the_socket_lands_on_the_callers_call(
    make_harness: Callable[..., Any], asterisk_ws: FakeAsterisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's channel entered Stasis on its own (no linkedid); the bridge, reported on a
    later connection, shows it is the caller's, and its recording moves to the caller's call."""
    agent_gone = ari_event(
        "ChannelDestroyed",
        30,
        cause=16,
        cause_txt="Normal Clearing",
        channel=channel(AGENT, number=AGENT_NUMBER),
    )
    asterisk_ws.scripts = [
        [
            json.dumps(stasis_start()),
            json.dumps(stasis_start(AGENT, 1)),
            json.dumps(recording_started(REC_AGENT, f"channel:{AGENT}", 2)),
        ],
        [
            json.dumps(entered_bridge(CALLER, 3)),
            json.dumps(entered_bridge(AGENT, 3.5, [CALLER, AGENT])),
            json.dumps(recording_started(REC_BRIDGE, f"bridge:{BRIDGE}", 4)),
            json.dumps(agent_gone),
        ],
    ]
    async with make_harness(**consumer_settings(asterisk_ws)) as h:
        applied = Applied(h, monkeypatch)
        await wait(asterisk_ws.event(asterisk_ws.connected, 1))
        asterisk_ws.event(asterisk_ws.go, 1).set()
        await applied.wait_for(EventType.RECORDING_STARTED)
        asterisk_ws.event(asterisk_ws.drop, 1).set()
        await wait(asterisk_ws.event(asterisk_ws.connected, 2))
        asterisk_ws.event(asterisk_ws.go, 2).set()
        await applied.wait_for(EventType.CALL_ENDED)

        response = await h.client.get(
            f"/v1/calls/asterisk/{CALLER}", headers=h.auth(Role.SUPERVISOR)
        )
        call = response.json()
        assert call["state"] == "in_progress", "the agent hanging up ends no call"
        assert sorted(r["provider_recording_id"] for r in call["recordings"]) == sorted(
            [REC_AGENT, REC_BRIDGE]
        )
        assert await h.count("calls") == 1, "the agent's channel is not a call of its own"


async def test_refused_credentials_are_retried_without_ending_the_consumer(
    make_harness: Callable[..., Any], asterisk_ws: FakeAsterisk, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    asterisk_ws.password = "the-right-password-is-elsewhere"
    async with make_harness(**consumer_settings(asterisk_ws)) as h:
        await wait(asterisk_ws.refusal)
        asterisk_ws.refusal.clear()
        await wait(asterisk_ws.refusal)
        # Still serving, and the consumer is still trying.
        assert (await h.client.get("/livez")).status_code == 200
    assert asterisk_ws.refused >= 2 and asterisk_ws.accepted == 0
    assert "ARI event socket" in caplog.text
    sent = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert sent not in caplog.text and PASSWORD not in caplog.text, "credentials never logged"


async def test_consumer_runs_only_when_asked_for(
    make_harness: Callable[..., Any], asterisk_ws: FakeAsterisk
) -> None:
    async with make_harness(**consumer_settings(asterisk_ws, ari_events=False)):
        assert consumer_tasks() == []
