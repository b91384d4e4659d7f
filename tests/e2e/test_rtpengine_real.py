"""End to end with the real rtpengine: card digits never reach the recording or the agent.

A call between two loopback endpoints is set up through the ng protocol (offer with
``record call``, answer), both ends stream RTP, and the IVR drives recgate's payment start and
end over HTTP. Every audio packet carries its phase in its first four payload bytes:

    PRE-  sent before payment start was requested        → must all be in the recording
    STA-  sent while payment start was in flight          → either
    PAY-  sent after recgate said safe_to_collect, before  → none may be in the recording
          payment end was requested
    END-  sent while payment end was in flight            → either
    PST-  sent after recgate confirmed the resume         → must all be in the recording

During PAY the caller keys a card number as RFC 4733 telephone-events; they must reach neither
the recording nor the agent. After PST the caller keys digits again, and those must get
through: blocking is lifted, and the check above is not passing because events never flow.
The recording is read from rtpengine's own pcap files.
"""

from __future__ import annotations

import asyncio
import os
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from app.domain.roles import Role
from app.telephony.rtpengine import NgClient, RtpengineController, text
from tests.e2e.rtpengine_support import (
    INSTALL_HINT,
    Daemon,
    MediaAddress,
    RtpRecord,
    media_address,
    read_pcap,
    rtp_packet,
    rtpengine_binary,
    running_rtpengine,
    sdp,
    telephone_event,
)

PRE, STA, PAY, END, PST = b"PRE-", b"STA-", b"PAY-", b"END-", b"PST-"
CALLER, AGENT = b"A", b"B"
SSRC = {CALLER: 0x0A0A0A0A, AGENT: 0x0B0B0B0B}
# The phase of a telephone-event travels in its volume field (6 bits), the only free one.
EVENT_TAG = {PAY: 10, PST: 20}
CARD = "4111111111111111"
PACKET_INTERVAL_S = 0.02


def _required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get(
        "RECGATE_TEST_REQUIRE_RTPENGINE", ""
    ) not in ("", "0")


@pytest.fixture
def rtpengine(tmp_path: Path) -> Iterator[Daemon]:
    if rtpengine_binary() is None:
        reason = f"rtpengine is not installed ({INSTALL_HINT})"
        if _required():
            pytest.fail(f"{reason}; CI must run the real-daemon test")
        pytest.skip(reason)
    with running_rtpengine(tmp_path / "rtpengine") as daemon:
        yield daemon


@dataclass
class Sent:
    phase: bytes
    side: bytes
    seq: int
    payload_type: int


@dataclass
class Endpoint(asyncio.DatagramProtocol):
    """One end of the call: sends RTP to rtpengine, keeps what rtpengine forwards to it."""

    side: bytes
    telephone_event_pt: int = 101
    transport: asyncio.DatagramTransport | None = None
    remote: tuple[str, int] | None = None
    seq: int = 0
    clock: int = 0  # RTP timestamp of the next audio packet (8 kHz, 160 samples a packet)
    event_start: int = 0
    sent: list[Sent] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    _waiting: dict[int, asyncio.Future[None]] = field(default_factory=dict)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)
        (seq,) = struct.unpack("!H", data[2:4])
        waiter = self._waiting.pop(seq, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def received_seq(self, seq: int, timeout_s: float) -> None:
        """Wait until rtpengine has forwarded the other side's packet ``seq`` to us."""
        if any(struct.unpack("!H", d[2:4])[0] == seq for d in self.received):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[seq] = waiter
        await asyncio.wait_for(waiter, timeout_s)

    @property
    def last_audio_seq(self) -> int:
        return max(s.seq for s in self.sent if s.payload_type == 0)

    def _send(
        self, phase: bytes, payload_type: int, payload: bytes, timestamp: int, marker: bool = False
    ) -> None:
        assert self.transport is not None and self.remote is not None
        self.seq += 1
        packet = rtp_packet(payload_type, self.seq, timestamp, SSRC[self.side], payload, marker)
        self.transport.sendto(packet, self.remote)
        self.sent.append(Sent(phase, self.side, self.seq, payload_type))

    def send_audio(self, phase: bytes) -> None:
        # 160 bytes of PCMU: phase, side, our sequence number, then silence (0xff in µ-law).
        body = phase + self.side + struct.pack("!I", self.seq + 1)
        self._send(phase, 0, body + b"\xff" * (160 - len(body)), self.clock)
        self.clock += 160

    def send_key(self, phase: bytes, tick: int) -> None:
        # One digit per three ticks (RFC 4733): every packet of an event carries the event's
        # start timestamp; the first has the marker bit, the last the end bit.
        digit, step = int(CARD[(tick // 3) % len(CARD)]), tick % 3
        if step == 0:
            self.event_start = self.clock - 160  # the audio packet sent with it
        payload = telephone_event(digit, step == 2, EVENT_TAG[phase], 160 * (step + 1))
        self._send(phase, self.telephone_event_pt, payload, self.event_start, marker=step == 0)


@dataclass
class Streamer:
    """Both ends send a packet every 20 ms; the caller keys digits while ``keys`` is set."""

    caller: Endpoint
    agent: Endpoint
    phase: bytes = PRE
    keys: bool = False
    ticks: dict[bytes, int] = field(default_factory=dict)
    _goal: tuple[bytes, int, asyncio.Future[None]] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self._stop.is_set():
            phase = self.phase
            tick = self.ticks.get(phase, 0)
            self.caller.send_audio(phase)
            self.agent.send_audio(phase)
            if self.keys:
                self.caller.send_key(phase, tick)
            self.ticks[phase] = tick + 1
            if self._goal is not None and self._goal[0] == phase and tick + 1 >= self._goal[1]:
                self._goal[2].set_result(None)
                self._goal = None
            await asyncio.sleep(PACKET_INTERVAL_S)  # pacing, as a phone would

    async def send(self, phase: bytes, packets: int, keys: bool = False) -> None:
        """Switch to ``phase`` and return once ``packets`` ticks of it have been sent."""
        self.phase, self.keys = phase, keys
        done = asyncio.get_running_loop().create_future()
        self._goal = (phase, packets, done)
        await asyncio.wait_for(done, packets * PACKET_INTERVAL_S + 5)

    def switch(self, phase: bytes) -> None:
        self.phase, self.keys = phase, False

    def stop(self) -> None:
        self._stop.set()


async def _endpoint(side: bytes) -> Endpoint:
    loop = asyncio.get_running_loop()
    _, endpoint = await loop.create_datagram_endpoint(
        lambda: Endpoint(side), local_addr=("127.0.0.1", 0)
    )
    return endpoint


async def _call(ng: NgClient, call_id: str, caller: Endpoint, agent: Endpoint) -> None:
    """Offer from the caller (recording the call from the start, as a SIP proxy would ask),
    answer from the agent; point each end at the rtpengine port the other side's SDP names."""
    offer = await ng.command(
        "offer",
        {
            "call-id": call_id,
            "from-tag": "caller-tag",
            "sdp": sdp(caller.port, 1),
            "record call": "yes",
        },
        2.0,
    )
    answer = await ng.command(
        "answer",
        {
            "call-id": call_id,
            "from-tag": "caller-tag",
            "to-tag": "agent-tag",
            "sdp": sdp(agent.port, 2),
        },
        2.0,
    )
    to_agent: MediaAddress = media_address(text(offer["sdp"]))  # what the agent is told
    to_caller: MediaAddress = media_address(text(answer["sdp"]))  # what the caller is told
    agent.remote = (to_agent.host, to_agent.port)
    caller.remote = (to_caller.host, to_caller.port)
    assert to_caller.telephone_event_pt is not None, "telephone-event was not negotiated"
    caller.telephone_event_pt = to_caller.telephone_event_pt


def _phase_of(record: RtpRecord, ours: set[tuple[str, int]]) -> tuple[bytes, bytes, int] | None:
    """(phase, side, seq) of one of our audio packets, None for anything else."""
    if record.source not in ours or record.payload_type != 0 or len(record.payload) < 9:
        return None
    side = record.payload[4:5]
    (seq,) = struct.unpack("!I", record.payload[5:9])
    return record.payload[:4], side, seq


def _event_tag(payload: bytes) -> int:
    return payload[1] & 0x3F


async def test_card_digits_stay_out_of_the_recording_and_away_from_the_agent(
    rtpengine: Daemon, make_harness: Callable[..., Any]
) -> None:
    call_id = f"{uuid.uuid4().hex}@127.0.0.1"
    ng = NgClient(rtpengine.ng)
    caller, agent = await _endpoint(CALLER), await _endpoint(AGENT)
    ours = {("127.0.0.1", caller.port), ("127.0.0.1", agent.port)}
    try:
        await _call(ng, call_id, caller, agent)
        async with make_harness(rtpengine_ng=rtpengine.ng, pause_timeout_ms=2000) as h:
            stream = Streamer(caller, agent)
            streaming = asyncio.create_task(stream.run())
            try:
                await stream.send(PRE, 25)

                stream.switch(STA)
                start = await h.client.post(
                    f"/v1/calls/rtpengine/{call_id}/payment/start",
                    json={"reference": "e2e"},
                    headers=h.auth(Role.IVR),
                )
                assert start.status_code == 200, start.text
                assert start.json()["safe_to_collect"] is True

                await stream.send(PAY, 30, keys=True)  # ten card digits

                stream.switch(END)
                end = await h.client.post(
                    f"/v1/calls/rtpengine/{call_id}/payment/end",
                    json={"outcome": "authorised"},
                    headers=h.auth(Role.IVR),
                )
                assert end.status_code == 200, end.text
                assert end.json()["state"] == "closed"

                await stream.send(PST, 30, keys=True)
                # Audio last: once it is forwarded, so is every digit sent before it.
                await stream.send(PST, 35)
            finally:
                stream.stop()
                await streaming
            rtp = h.services.controllers["rtpengine"]
            assert isinstance(rtp, RtpengineController)
            pause_supported, split = rtp.pause_supported, rtp.split_files(call_id)

        # rtpengine has handled every packet once it has forwarded each side's last audio one.
        await agent.received_seq(caller.last_audio_seq, 5.0)
        await caller.received_seq(agent.last_audio_seq, 5.0)
        await ng.command("delete", {"call-id": call_id, "delete delay": 0}, 2.0)
    finally:
        for endpoint in (caller, agent):
            assert endpoint.transport is not None
            endpoint.transport.close()
        await ng.aclose()

    # ---- the recording, as rtpengine wrote it --------------------------------------------
    files = sorted(rtpengine.pcap_dir.glob("*.pcap"))
    assert files, f"rtpengine wrote no pcap file:\n{rtpengine.log.read_text()[-2000:]}"
    named = "".join(m.read_text() for m in rtpengine.metadata_dir.glob("*"))
    for path in files:
        assert str(path) in named, f"{path.name} was never closed (no finished metadata)"
    records = [r for path in files for r in read_pcap(path) if r.source in ours]
    recorded = {key for r in records if (key := _phase_of(r, ours)) is not None}
    recorded_events = [r for r in records if r.payload_type == caller.telephone_event_pt]

    in_payment = sorted(k for k in recorded if k[0] == PAY)
    assert not in_payment, f"{len(in_payment)} packets sent during the payment were recorded"
    assert not [r for r in recorded_events if _event_tag(r.payload) == EVENT_TAG[PAY]], (
        "a card digit keyed during the payment is in the recording"
    )
    for phase in (PRE, PST):
        sent = {
            (s.phase, s.side, s.seq)
            for ep in (caller, agent)
            for s in ep.sent
            if s.phase == phase and s.payload_type == 0
        }
        missing = sorted(sent - recorded)
        assert len(sent) >= 50 and not missing, f"{phase!r} packets not recorded: {missing[:5]}"
    keyed_after = [s for s in caller.sent if s.phase == PST and s.payload_type != 0]
    assert len([r for r in recorded_events if _event_tag(r.payload) == EVENT_TAG[PST]]) == len(
        keyed_after
    ), "digits keyed after the payment are recorded again"

    # ---- what the agent heard --------------------------------------------------------------
    events_at_agent = [d for d in agent.received if d[1] & 0x7F == caller.telephone_event_pt]
    tags = [_event_tag(d[12:]) for d in events_at_agent]
    assert EVENT_TAG[PAY] not in tags, "a card digit reached the agent while DTMF was blocked"
    assert tags.count(EVENT_TAG[PST]) == len(keyed_after), "digits after the payment go through"
    heard = {d[12:16] for d in agent.received if d[1] & 0x7F == 0}
    assert PAY in heard, "the conversation itself must go on during the payment"

    # ---- stop/start fallback on daemons without "pause recording" --------------------------
    if pause_supported is False:
        assert len(files) == 2, f"stop/start must split the media in two, got {len(files)}"
        assert split == 2
    else:
        assert len(files) == 1 and split is None
