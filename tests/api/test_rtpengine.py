"""rtpengine: the ng client against a scripted daemon, payment gating over HTTP, notifications.

The fake daemon below speaks the ng protocol as rtpengine does (``<cookie> <bencode>`` over
UDP, one cached reply per cookie so a retransmission is answered without running the command
again) and can play either the Debian 10.5 daemon (no ``pause recording``) or a current one.
The real daemon runs in tests/e2e/test_rtpengine_real.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import pytest

from app.domain.roles import Role
from app.domain.states import PauseBehavior
from app.telephony import bencode
from app.telephony.base import (
    ConfirmedState,
    ControlOutcome,
    ControlTarget,
    ProviderRejected,
    ProviderUnavailable,
    RecordingGone,
    RecordingRef,
)
from app.telephony.rtpengine import NgClient, RtpengineController, parse_address, text
from tests.conftest import Harness

CALL = "a84b4c76e66710@pbx.example"
TOKEN = "rtpengine-notify-token-for-tests"


@dataclass
class Datagram:
    cookie: bytes
    message: dict[bytes, bencode.Value]

    @property
    def command(self) -> str:
        return text(self.message.get(b"command"))


@dataclass
class FakeNg(asyncio.DatagramProtocol):
    """A scripted rtpengine ng endpoint on 127.0.0.1."""

    # False plays Debian's 10.5, which answers "Unrecognized command" to "pause recording".
    knows_pause: bool = True
    calls: set[str] = field(default_factory=lambda: {CALL})
    # Datagrams of these commands are dropped this many times before one is answered.
    drop: dict[str, int] = field(default_factory=dict)
    # Commands never answered, and commands answered with an error reason.
    silent: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    received: list[Datagram] = field(default_factory=list)
    # Commands run (a retransmission answered from the cache is not run again).
    executed: list[tuple[str, str]] = field(default_factory=list)
    arrived: asyncio.Queue[Datagram] = field(default_factory=asyncio.Queue)
    # Replies held back instead of sent (for out-of-order answers).
    hold: bool = False
    held: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    _cache: dict[bytes, bytes] = field(default_factory=dict)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    @property
    def address(self) -> str:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        cookie, _, body = data.partition(b" ")
        message = bencode.decode(body)
        assert isinstance(message, dict), "the client must send a dictionary"
        datagram = Datagram(cookie, message)
        self.received.append(datagram)
        self.arrived.put_nowait(datagram)
        command = datagram.command
        if self.drop.get(command, 0) > 0:
            self.drop[command] -= 1
            return
        if command in self.silent:
            return
        if cookie not in self._cache:
            self._cache[cookie] = cookie + b" " + bencode.encode(self._run(datagram))
        if self.hold:
            self.held.append((self._cache[cookie], addr))
            return
        self.send(self._cache[cookie], addr)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    def _run(self, datagram: Datagram) -> dict[str, bencode.Encodable]:
        command, call_id = datagram.command, text(datagram.message.get(b"call-id"))
        self.executed.append((command, call_id))
        if command in self.errors:
            return {"result": "error", "error-reason": self.errors[command]}
        if command == "ping":
            return {"result": "pong"}
        if command == "pause recording" and not self.knows_pause:
            return {"result": "error", "error-reason": "Unrecognized command"}
        if command != "list" and call_id not in self.calls:
            # rtpengine's own spellings differ by command.
            reason = "Unknown call-ID" if "DTMF" in command else "Unknown call-id"
            return {"result": "error", "error-reason": reason}
        return {"result": "ok", "echo": datagram.cookie}

    def commands(self) -> list[str]:
        return [command for command, _ in self.executed]


@pytest.fixture
async def ng() -> AsyncIterator[FakeNg]:
    loop = asyncio.get_running_loop()
    _, fake = await loop.create_datagram_endpoint(FakeNg, local_addr=("127.0.0.1", 0))
    yield fake
    assert fake.transport is not None
    fake.transport.close()


@pytest.fixture
async def client(ng: FakeNg) -> AsyncIterator[NgClient]:
    client = NgClient(ng.address)
    yield client
    await client.aclose()


def controller(client: NgClient, block_dtmf: bool = True) -> RtpengineController:
    return RtpengineController(client, block_dtmf=block_dtmf, timeout_s=1.0)


# ---- ng client ------------------------------------------------------------------------------


async def test_every_command_gets_its_own_cookie(ng: FakeNg, client: NgClient) -> None:
    other = NgClient(ng.address)
    try:
        await asyncio.gather(*(client.command("ping", {}, 1.0) for _ in range(50)))
        for _ in range(25):
            await client.command("ping", {}, 1.0)
        await asyncio.gather(*(other.command("ping", {}, 1.0) for _ in range(25)))
    finally:
        await other.aclose()
    cookies = [d.cookie for d in ng.received]
    assert len(cookies) == 100 and len(set(cookies)) == 100, "a cookie was reused"
    # Another client (another replica) never shares a cookie prefix with this one.
    prefixes = {c.rsplit(b"_", 1)[0] for c in cookies}
    assert len(prefixes) == 2


async def test_a_dropped_datagram_is_resent_with_the_same_cookie(
    ng: FakeNg, client: NgClient
) -> None:
    ng.drop["start recording"] = 1
    began = time.monotonic()
    reply = await client.command("start recording", {"call-id": CALL}, 2.0)
    elapsed = time.monotonic() - began
    assert text(reply["result"]) == "ok"
    sent = [d for d in ng.received if d.command == "start recording"]
    assert len(sent) == 2, "one lost datagram, one retransmission"
    assert sent[0].cookie == sent[1].cookie, "a retransmission must reuse the cookie"
    assert sent[0].message == sent[1].message
    assert ng.executed == [("start recording", CALL)], "the daemon ran the command once"
    assert 0.15 < elapsed < 1.0, f"retransmitted after {elapsed:.3f}s, expected ~0.2s"


async def test_retransmission_of_an_answered_cookie_gets_the_cached_reply(
    ng: FakeNg, client: NgClient
) -> None:
    # The reply is lost instead: the daemon ran the command, the resend must not run it again.
    ng.hold = True
    pending = asyncio.create_task(client.command("stop recording", {"call-id": CALL}, 2.0))
    first = await ng.arrived.get()
    ng.held.clear()  # the reply to the first datagram is lost on the way back
    ng.hold = False
    second = await ng.arrived.get()
    assert second.cookie == first.cookie
    assert text((await pending)["result"]) == "ok"
    assert ng.executed == [("stop recording", CALL)]


async def test_replies_are_matched_by_cookie_and_strays_ignored(
    ng: FakeNg, client: NgClient
) -> None:
    ng.hold = True
    first = asyncio.create_task(client.command("query", {"call-id": CALL}, 2.0))
    second = asyncio.create_task(client.command("list", {}, 2.0))
    sent = [await ng.arrived.get(), await ng.arrived.get()]
    by_command = {d.command: d.cookie for d in sent}
    (first_reply, addr), (second_reply, _) = ng.held
    # Noise first: an unknown cookie, a datagram without a cookie, junk after a known one.
    ng.send(b"nobody-asked " + bencode.encode({"result": "ok"}), addr)
    ng.send(b"no-space-at-all", addr)
    ng.send(by_command["query"] + b" not-bencode", addr)
    ng.send(by_command["query"] + b" " + bencode.encode([b"not", b"a", b"dict"]), addr)
    # Then the real answers, in the opposite order, the first one twice.
    ng.send(second_reply, addr)
    ng.send(first_reply, addr)
    ng.send(first_reply, addr)
    assert (await first)["echo"] == by_command["query"]
    assert (await second)["echo"] == by_command["list"]


async def test_no_reply_is_unavailable_after_the_timeout(ng: FakeNg, client: NgClient) -> None:
    ng.silent.add("pause recording")
    began = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="no answer"):
        await client.command("pause recording", {"call-id": CALL}, 0.7)
    elapsed = time.monotonic() - began
    assert 0.65 < elapsed < 1.2
    sent = [d for d in ng.received if d.command == "pause recording"]
    assert 3 <= len(sent) <= 5 and len({d.cookie for d in sent}) == 1


async def test_nothing_listening_is_unavailable() -> None:
    # A port just closed: ICMP port unreachable must not be mistaken for an answer.
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    transport.close()
    client = NgClient(f"127.0.0.1:{port}")
    try:
        with pytest.raises(ProviderUnavailable):
            await client.command("ping", {}, 0.5)
    finally:
        await client.aclose()


async def test_errors_are_typed(ng: FakeNg, client: NgClient) -> None:
    with pytest.raises(RecordingGone):
        await client.command("start recording", {"call-id": "nobody"}, 1.0)
    with pytest.raises(RecordingGone):
        await client.command("block DTMF", {"call-id": "nobody"}, 1.0)
    ng.errors["block DTMF"] = "From-tag given, but no such tag exists"
    with pytest.raises(ProviderRejected, match="From-tag"):
        await client.command("block DTMF", {"call-id": CALL, "from-tag": "x"}, 1.0)


async def test_a_cancelled_command_leaves_nothing_pending(ng: FakeNg, client: NgClient) -> None:
    ng.silent.add("pause recording")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.command("pause recording", {"call-id": CALL}, 5.0), 0.3)
    assert client._pending == {}


def test_ng_addresses() -> None:
    assert parse_address("127.0.0.1:2223") == ("127.0.0.1", 2223)
    assert parse_address("[::1]:2223") == ("::1", 2223)
    assert parse_address("rtpengine.internal:22222") == ("rtpengine.internal", 22222)
    for wrong in ("127.0.0.1", ":2223", "host:0", "host:70000", "host:port"):
        with pytest.raises(ValueError, match="host:port"):
            parse_address(wrong)


# ---- controller -----------------------------------------------------------------------------


async def test_pause_blocks_dtmf_before_pausing_and_resume_unblocks_after(
    ng: FakeNg, client: NgClient
) -> None:
    rtp = controller(client)
    paused = await rtp.pause(ControlTarget(CALL), PauseBehavior.SILENCE)
    assert paused == [ControlOutcome(None, ConfirmedState.PAUSED)]
    assert ng.commands() == ["block DTMF", "pause recording"]
    resumed = await rtp.resume(ControlTarget(CALL))
    assert resumed == [ControlOutcome(None, ConfirmedState.RECORDING)]
    assert ng.commands()[2:] == ["start recording", "unblock DTMF"]
    assert {call for _, call in ng.executed} == {CALL}
    assert rtp.split_files(CALL) is None and "fallback" not in rtp.describe()


async def test_without_dtmf_blocking_only_recording_is_touched(
    ng: FakeNg, client: NgClient
) -> None:
    rtp = controller(client, block_dtmf=False)
    await rtp.pause(ControlTarget(CALL), PauseBehavior.SKIP)
    await rtp.resume(ControlTarget(CALL))
    assert ng.commands() == ["pause recording", "start recording"]


async def test_unrecognized_pause_falls_back_to_stop_and_start(
    ng: FakeNg, client: NgClient
) -> None:
    ng.knows_pause = False
    rtp = controller(client)
    for _ in range(2):
        await rtp.pause(ControlTarget(CALL), PauseBehavior.SILENCE)
        await rtp.resume(ControlTarget(CALL))
    one_payment = [
        "block DTMF",
        "pause recording",  # tried every time: the daemon may have been upgraded
        "stop recording",
        "start recording",
        "unblock DTMF",
    ]
    assert ng.commands() == one_payment * 2
    assert rtp.split_files(CALL) == 3, "two stop/start payments split the media into 3 files"
    await rtp.resume(ControlTarget(CALL))  # a retried resume: recording already runs
    assert rtp.split_files(CALL) == 3, "a start while recording opens no new file"
    assert "stop/start fallback" in rtp.describe()


async def test_named_recordings_get_one_outcome_each(ng: FakeNg, client: NgClient) -> None:
    refs = (RecordingRef(None, "file-1.wav"), RecordingRef(None, "file-2.wav"))
    outcomes = await controller(client).pause(ControlTarget(CALL, refs), PauseBehavior.SILENCE)
    assert outcomes == [
        ControlOutcome("file-1.wav", ConfirmedState.PAUSED),
        ControlOutcome("file-2.wav", ConfirmedState.PAUSED),
    ]
    assert ng.commands() == ["block DTMF", "pause recording"], "one call-wide command, not two"


async def test_unknown_call_id_is_refused_on_pause_and_gone_on_resume(
    ng: FakeNg, client: NgClient
) -> None:
    """A call-id rtpengine does not know may be the wrong id: never "safe" on a pause."""
    with pytest.raises(ProviderRejected, match="does not know this call-id"):
        await controller(client).pause(ControlTarget("nobody"), PauseBehavior.SILENCE)
    with pytest.raises(ProviderRejected, match="does not know this call-id"):
        await controller(client, block_dtmf=False).pause(
            ControlTarget("nobody"), PauseBehavior.SILENCE
        )
    with pytest.raises(RecordingGone):
        await controller(client).resume(ControlTarget("nobody"))


async def test_a_failed_dtmf_block_fails_the_pause(ng: FakeNg, client: NgClient) -> None:
    ng.errors["block DTMF"] = "Unrecognized command"
    with pytest.raises(ProviderRejected):
        await controller(client).pause(ControlTarget(CALL), PauseBehavior.SILENCE)
    assert "pause recording" not in ng.commands()


async def test_a_failed_unblock_fails_the_resume_after_recording_restarted(
    ng: FakeNg, client: NgClient
) -> None:
    ng.silent.add("unblock DTMF")
    rtp = RtpengineController(client, block_dtmf=True, timeout_s=0.3)
    with pytest.raises(ProviderUnavailable):
        await rtp.resume(ControlTarget(CALL))
    assert ng.commands() == ["start recording"]
    assert {d.command for d in ng.received} == {"start recording", "unblock DTMF"}


# ---- through the service --------------------------------------------------------------------


@pytest.fixture
async def rtp_harness(make_harness: Callable[..., Any], ng: FakeNg) -> AsyncIterator[Harness]:
    async with make_harness(rtpengine_ng=ng.address, rtpengine_notify_token=TOKEN) as h:
        yield h


async def pay(h: Harness, action: str, call_id: str = CALL) -> httpx.Response:
    return await h.client.post(
        f"/v1/calls/rtpengine/{call_id}/payment/{action}", json={}, headers=h.auth(Role.IVR)
    )


async def test_payment_on_a_10_5_daemon_is_safe_only_after_the_stop(
    rtp_harness: Harness, ng: FakeNg
) -> None:
    ng.knows_pause = False
    ng.drop["stop recording"] = 1  # and the network loses a datagram on the way
    start = await pay(rtp_harness, "start")
    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True
    assert ng.commands() == ["block DTMF", "pause recording", "stop recording"]
    end = await pay(rtp_harness, "end")
    assert end.status_code == 200, end.text
    assert end.json()["state"] == "closed"
    assert ng.commands()[3:] == ["start recording", "unblock DTMF"]
    ready = await rtp_harness.client.get("/readyz", headers=rtp_harness.auth(Role.OPS))
    check = ready.json()["checks"]["provider:rtpengine"][0]
    assert "stop/start fallback" in check["output"]


async def test_silent_daemon_fails_closed(rtp_harness: Harness, ng: FakeNg) -> None:
    ng.silent.add("pause recording")
    start = await pay(rtp_harness, "start")
    assert start.status_code == 503
    assert start.json()["safe_to_collect"] is False
    assert start.json()["state"] == "pause_failed"


async def test_refused_pause_fails_closed(rtp_harness: Harness, ng: FakeNg) -> None:
    ng.errors["pause recording"] = "Internal error"
    start = await pay(rtp_harness, "start")
    assert start.status_code == 503 and start.json()["safe_to_collect"] is False


async def test_the_socket_closes_with_the_service(
    make_harness: Callable[..., Any], ng: FakeNg
) -> None:
    async with make_harness(rtpengine_ng=ng.address) as h:
        rtp = h.services.controllers["rtpengine"]
        assert isinstance(rtp, RtpengineController)
        assert rtp.client._transport is None, "no socket before the first command"
        assert (await pay(h, "start")).status_code == 200
        transport = rtp.client._transport
        assert transport is not None
    assert transport.is_closing()


# ---- finish notification --------------------------------------------------------------------


def notify_headers(file_name: str = f"{CALL}-3f9a1c-mix.wav", **extra: str) -> dict[str, str]:
    """The headers rtpengine-recording's notify.c sends for one finished file."""
    return {
        "X-Recording-Call-ID": CALL,
        "X-Recording-File-Name": file_name,
        "X-Recording-Full-File-Name": f"/var/spool/rtpengine/{file_name}",
        "X-Recording-File-Format": "wav",
        "X-Recording-Kind": "mixed",
        "X-Recording-Call-Start-Time": "1795867200.125000",
        "X-Recording-Stream-Start-Time": "1795867200.250000",
        "X-Recording-Call-End-Time": "1795867512.250000",
        "X-Recording-Stream-End-Time": "1795867512.250000",
        **extra,
    }


async def notify(h: Harness, headers: dict[str, str], query: str = f"?token={TOKEN}") -> Any:
    return await h.client.post(f"/v1/webhooks/rtpengine{query}", headers=headers)


async def test_notification_records_a_completed_file(rtp_harness: Harness) -> None:
    response = await notify(rtp_harness, notify_headers())
    assert response.status_code == 200 and response.json() == {"status": "applied"}
    again = await notify(rtp_harness, notify_headers())
    assert again.json() == {"status": "duplicate"}
    call = (
        await rtp_harness.client.get(
            f"/v1/calls/rtpengine/{CALL}", headers=rtp_harness.auth(Role.SUPERVISOR)
        )
    ).json()
    [recording] = call["recordings"]
    assert recording["provider_recording_id"] == f"{CALL}-3f9a1c-mix.wav"
    assert recording["state"] == "available"
    detail = (
        await rtp_harness.client.get(
            f"/v1/recordings/{recording['id']}", headers=rtp_harness.auth(Role.SUPERVISOR)
        )
    ).json()
    assert detail["duration_s"] == 312.0
    assert detail["ended_at"].startswith("2026-11-28T")


async def test_every_file_of_a_split_call_is_its_own_recording(rtp_harness: Harness) -> None:
    for name in ("before-payment.wav", "after-payment.wav"):
        assert (await notify(rtp_harness, notify_headers(name))).status_code == 200
    assert await rtp_harness.count("recordings") == 2


@pytest.mark.parametrize("query", ["", "?token=", "?token=wrong-token", f"?tok={TOKEN}"])
async def test_notification_without_the_token_is_401_and_nothing_stored(
    rtp_harness: Harness, query: str
) -> None:
    response = await notify(rtp_harness, notify_headers(), query)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    for table in ("inbound_events", "calls", "recordings", "dead_letters"):
        assert await rtp_harness.count(table) == 0, f"{table} must stay empty"


async def test_notification_without_call_id_is_dead_lettered(rtp_harness: Harness) -> None:
    headers = notify_headers()
    del headers["X-Recording-Call-ID"]
    response = await notify(rtp_harness, headers)
    assert response.status_code == 422
    assert await rtp_harness.count("dead_letters") == 1
    assert await rtp_harness.count("recordings") == 0


async def test_notifications_are_off_without_a_token(
    make_harness: Callable[..., Any], ng: FakeNg
) -> None:
    async with make_harness(rtpengine_ng=ng.address) as h:
        response = await notify(h, notify_headers(), "?token=")
        assert response.status_code == 404
        assert await h.count("inbound_events") == 0
