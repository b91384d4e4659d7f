"""End to end with the real programs: SIPp calls SIPp through Kamailio and rtpengine.

Kamailio runs ``deploy/kamailio/kamailio.cfg``: it anchors the call's media in rtpengine with
recording on, and reports the call to recgate's ``/v1/webhooks/sip-proxy`` route, stood in for
here by a loopback receiver. SIPp plays both ends' RTP from pcap files; every audio packet
carries its phase in its first four payload bytes (see test_rtpengine_real.py):

    PRE-  before the payment                          → must all be in the recording
    STA-  the payment is being opened (0.8 s)         → either
    PAY-  the payment, the card keyed as RFC 4733     → none may be in the recording, and
          telephone-events by the caller                no digit may reach the agent
    END-  the payment is being closed (0.8 s)         → either
    PST-  after the payment, digits keyed again        → must all be recorded and reach the agent

The payment is opened and closed the way recgate does it, through the project's own
rtpengine controller (block DTMF, then pause or stop recording; start recording, then unblock
DTMF), when the first STA packet and the last side's first END packet cross the loopback
interface. What the agent received is read off the loopback interface too: the datagrams
rtpengine sent to SIPp's media port. The recording is read from rtpengine's own pcap files.

Two things a real network does are forced: the receiver answers ``call.started`` with a 503
(a report recgate did not take must not break the call), and the agent's 200 OK reaches
Kamailio twice, as when its ACK is late (``call.answered`` is still reported once). A second
call is cancelled while it rings: it is reported ended once, and rtpengine forgets it at once.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn

from app.config import Settings
from app.domain.roles import Role
from app.domain.states import PauseBehavior
from app.main import create_app
from app.services.container import Services
from app.telephony.base import ControlTarget, RecordingGone
from app.telephony.rtpengine import NgClient, RtpengineController
from tests.e2e.kamailio_support import (
    AGENT,
    AGENT_USER,
    CALLER,
    CALLER_USER,
    END,
    EVENT_TAG,
    INSTALL_HINT,
    PAY,
    PRE,
    PST,
    STA,
    WEBHOOK_PATH,
    Datagram,
    Kamailio,
    LoopbackSniffer,
    Report,
    Sent,
    SippEndpoint,
    SipProxyReceiver,
    agent_scenario,
    caller_scenario,
    can_capture,
    cancelling_caller_scenario,
    event_tag,
    kamailio_binary,
    marker_of,
    missing_kamailio_modules,
    ringing_agent_scenario,
    running_kamailio,
    running_receiver,
    side_packets,
    sipp_binary,
    sipp_command,
    start_sipp,
    wait_bound,
    write_pcap,
)
from tests.e2e.rtpengine_support import (
    TELEPHONE_EVENT_PT,
    Daemon,
    free_port_block,
    free_udp_port,
    read_pcap,
    rtpengine_binary,
    running_rtpengine,
)

TOKEN = "kamailio-e2e-token"
# (phase, 20 ms ticks, caller keys digits): 1.2 s, 0.8 s, 16 digits, 0.8 s, 16 digits, 0.24 s.
CALLER_PHASES = [
    (PRE, 60, False),
    (STA, 40, False),
    (PAY, 48, True),
    (END, 40, False),
    (PST, 48, True),
    (PST, 12, False),  # audio last: once it is through, so is every digit before it
]
AGENT_PHASES = [(phase, ticks, False) for phase, ticks, _ in CALLER_PHASES]
TAGGED = {tag: phase for phase, tag in EVENT_TAG.items()}


@pytest.fixture
def programs() -> None:
    problems = [
        f"{name} is not installed"
        for name, found in (
            ("kamailio", kamailio_binary()),
            ("sipp", sipp_binary()),
            ("rtpengine", rtpengine_binary()),
        )
        if found is None
    ]
    if kamailio_binary() is not None:
        problems += [f"Kamailio module {m} is missing" for m in missing_kamailio_modules()]
    if not can_capture():
        problems.append("no raw sockets (root or CAP_NET_RAW: SIPp's pcap player, the sniffer)")
    if problems:
        reason = f"{'; '.join(problems)} ({INSTALL_HINT})"
        if os.environ.get("RECGATE_TEST_REQUIRE_KAMAILIO", "") not in ("", "0"):
            pytest.fail(f"{reason}; RECGATE_TEST_REQUIRE_KAMAILIO is set")
        pytest.skip(reason)


@dataclass
class PaymentWindow:
    """Opens the payment when the first STA packet leaves a phone and closes it once both
    have moved on to END (through recgate's rtpengine controller, or recgate itself); notes
    when each phase was first and last seen leaving a phone."""

    open_payment: Callable[[], Awaitable[None]]
    close_payment: Callable[[], Awaitable[None]]
    sides: dict[int, bytes]  # media port → side
    first_seen: dict[bytes, float] = field(default_factory=dict)
    last_seen: dict[bytes, float] = field(default_factory=dict)
    moved_on: set[bytes] = field(default_factory=set)
    pause_confirmed_at: float | None = None
    resume_requested_at: float | None = None
    resume_confirmed_at: float | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def on_datagram(self, datagram: Datagram) -> None:
        side = self.sides.get(datagram.source[1])
        if side is None or len(datagram.payload) < 13:
            return  # rtpengine forwarding, or not RTP
        marker = marker_of(datagram.payload[12:])
        if marker is not None:
            phase = marker[0]
        elif datagram.payload[1] & 0x7F == TELEPHONE_EVENT_PT:
            tagged = TAGGED.get(event_tag(datagram.payload[12:]))
            if tagged is None:
                return
            phase = tagged
        else:
            return
        self.first_seen.setdefault(phase, datagram.at)
        self.last_seen[phase] = datagram.at
        if phase == STA and not self.tasks:
            self.tasks.append(asyncio.create_task(self._pause()))
        if phase in (END, PST):
            self.moved_on.add(side)
            if len(self.moved_on) == len(self.sides) and len(self.tasks) == 1:
                self.tasks.append(asyncio.create_task(self._resume()))

    async def _pause(self) -> None:
        await self.open_payment()
        self.pause_confirmed_at = time.monotonic()

    async def _resume(self) -> None:
        self.resume_requested_at = time.monotonic()
        await self.close_payment()
        self.resume_confirmed_at = time.monotonic()

    async def settled(self) -> None:
        assert len(self.tasks) == 2, f"the payment was opened/closed {len(self.tasks)} times"
        await asyncio.gather(*self.tasks)


def _phones_media(workdir: Path) -> tuple[list[Sent], list[Sent], int]:
    """Write both phones' RTP (caller.pcap, agent.pcap); what each sends, and how long the
    caller holds the call (ms)."""
    caller_packets, caller_sent = side_packets(CALLER, CALLER_PHASES)
    agent_packets, agent_sent = side_packets(AGENT, AGENT_PHASES)
    write_pcap(workdir / "caller.pcap", caller_packets)
    write_pcap(workdir / "agent.pcap", agent_packets)
    return caller_sent, agent_sent, round(caller_packets[-1][0] * 1000) + 400


def _closed_recording_files(rtpengine: Daemon) -> list[Path]:
    """The pcap files rtpengine wrote, each closed (its metadata names it)."""
    files = sorted(rtpengine.pcap_dir.glob("*.pcap"))
    assert files, f"rtpengine wrote no pcap file:\n{rtpengine.log.read_text()[-2000:]}"
    named = "".join(m.read_text() for m in rtpengine.metadata_dir.glob("*"))
    for path in files:
        assert str(path) in named, f"{path.name} was never closed (no finished metadata)"
    return files


def _assert_only_the_payment_is_missing(
    files: list[Path], ours: set[tuple[str, int]], caller_sent: list[Sent], agent_sent: list[Sent]
) -> list[Sent]:
    """Nothing sent during the payment is in the recording, everything before and after is;
    the digits keyed after the payment (to check the agent got them)."""
    records = [r for path in files for r in read_pcap(path) if r.source in ours]
    recorded = {key for r in records if (key := marker_of(r.payload)) is not None}
    recorded_events = [r for r in records if r.payload_type == TELEPHONE_EVENT_PT]

    in_payment = sorted(k for k in recorded if k[0] == PAY)
    assert not in_payment, f"{len(in_payment)} packets sent during the payment were recorded"
    assert not [r for r in recorded_events if event_tag(r.payload) == EVENT_TAG[PAY]], (
        "a card digit keyed during the payment is in the recording"
    )
    for phase in (PRE, PST):
        sent = {
            (s.phase, s.side, s.seq)
            for s in caller_sent + agent_sent
            if s.phase == phase and s.payload_type == 0
        }
        missing = sorted(sent - recorded)
        assert len(sent) >= 100 and not missing, f"{phase!r} packets not recorded: {missing[:5]}"
    keyed_after = [s for s in caller_sent if s.phase == PST and s.payload_type != 0]
    assert len([r for r in recorded_events if event_tag(r.payload) == EVENT_TAG[PST]]) == len(
        keyed_after
    ), "digits keyed after the payment are not all recorded"
    return keyed_after


_INVITE_OK = re.compile(rb"\ASIP/2\.0 200 .*^CSeq:\s*\d+\s+INVITE\s*$", re.M | re.S | re.I)


@dataclass
class LateAck:
    """Sends the proxy a second copy of the agent's 200 OK, as an agent whose ACK is late does:
    the copy runs the reply route again, while the first may still be reporting."""

    agent_sip_port: int
    proxy: tuple[str, int]
    sock: socket.socket
    sent: bool = False

    def on_datagram(self, datagram: Datagram) -> None:
        own = datagram.source[1] == self.agent_sip_port
        if not self.sent and own and _INVITE_OK.match(datagram.payload):
            self.sock.sendto(datagram.payload, self.proxy)
            self.sent = True


def _reports_for(reports: list[Report], call_id: str) -> dict[str, list[Report]]:
    by_event: dict[str, list[Report]] = {}
    for report in reports:
        if report.form.get("call_id") == [call_id]:
            by_event.setdefault(report.event or "?", []).append(report)
    return by_event


@dataclass(frozen=True)
class Stack:
    rtpengine: Daemon
    recgate: SipProxyReceiver
    kamailio: Kamailio


@pytest.fixture
async def stack(tmp_path: Path, programs: None) -> AsyncIterator[Stack]:
    """rtpengine, the stand-in for recgate (answering call.started with a 503), and Kamailio
    between them, each started on loopback and stopped by PID."""
    with running_rtpengine(tmp_path / "rtpengine") as rtpengine:
        async with running_receiver(failing={"call.started"}) as recgate:
            with running_kamailio(
                tmp_path / "kamailio",
                rtpengine_ng=rtpengine.ng,
                recgate_url=recgate.url,
                token=TOKEN,
            ) as kamailio:
                yield Stack(rtpengine, recgate, kamailio)


def _endpoints() -> tuple[SippEndpoint, SippEndpoint]:
    first_media, _ = free_port_block(8)  # SIPp binds its media port and the one two up
    caller = SippEndpoint(free_udp_port(), first_media, free_udp_port())
    agent = SippEndpoint(free_udp_port(), first_media + 4, free_udp_port())
    return caller, agent


async def _call(
    stack: Stack,
    workdir: Path,
    call_id: str,
    caller: tuple[str, SippEndpoint],
    agent: tuple[str, SippEndpoint],
) -> None:
    """Start the agent (SIPp UAS), then the caller (SIPp UAC) calling it through Kamailio;
    return once both have played their scenario to the end."""
    (caller_scenario_text, uac), (agent_scenario_text, uas) = caller, agent
    caller_xml, agent_xml = workdir / "caller.xml", workdir / "agent.xml"
    caller_xml.write_text(caller_scenario_text)
    agent_xml.write_text(agent_scenario_text)
    agent_sipp = caller_sipp = None
    try:
        agent_sipp = await start_sipp(sipp_command(agent_xml, uas, timeout_s=30), workdir, "agent")
        await wait_bound([uas.sip_port, uas.media_port], agent_sipp, 5.0)
        caller_sipp = await start_sipp(
            sipp_command(
                caller_xml,
                uac,
                timeout_s=30,
                extra=[
                    f"127.0.0.1:{uas.sip_port}",  # the Request-URI: the agent
                    "-rsa",
                    f"127.0.0.1:{stack.kamailio.sip_port}",  # sent through Kamailio
                    "-cid_str",
                    call_id,  # no '%' in it: used as it is
                ],
            ),
            workdir,
            "caller",
        )
        caller_rc = await caller_sipp.finished(35.0)
        assert caller_rc == 0, f"the caller's call failed:\n{caller_sipp.output()}"
        agent_rc = await agent_sipp.finished(10.0)
        assert agent_rc == 0, f"the agent's call failed:\n{agent_sipp.output()}"
    finally:
        for sipp in (caller_sipp, agent_sipp):
            if sipp is not None:
                sipp.stop()


def _check_reports(reports: list[Report]) -> None:
    """Every POST Kamailio made keeps to the contract of /v1/webhooks/sip-proxy."""
    assert reports, "Kamailio reported nothing"
    for report in reports:
        assert report.method == "POST" and report.path == WEBHOOK_PATH, (report.method, report.path)
        assert report.headers.get("x-recgate-token") == TOKEN, "the token header is missing"
        assert report.headers.get("content-type") == "application/x-www-form-urlencoded"
        form = report.form
        assert set(form) <= {"event", "call_id", "from", "to", "at"}, sorted(form)
        assert all(len(values) == 1 for values in form.values()), form
        assert form["from"] == [CALLER_USER] and form["to"] == [AGENT_USER], report.body


async def test_kamailio_reports_the_call_and_card_digits_reach_neither_recording_nor_agent(
    tmp_path: Path, stack: Stack
) -> None:
    began = time.time()
    # A '+' and an '@' in the Call-ID: the report must URL-encode it to survive form decoding.
    call_id = f"kam+{uuid.uuid4().hex}@127.0.0.1"
    caller_sent, agent_sent, hold_ms = _phones_media(tmp_path)
    uac, uas = _endpoints()
    rtpengine, recgate = stack.rtpengine, stack.recgate

    controller = RtpengineController(NgClient(rtpengine.ng), block_dtmf=True, timeout_s=2.0)

    async def open_payment() -> None:
        await controller.pause(ControlTarget(call_id), PauseBehavior.SKIP)

    async def close_payment() -> None:
        await controller.resume(ControlTarget(call_id))

    window = PaymentWindow(
        open_payment, close_payment, {uac.media_port: CALLER, uas.media_port: AGENT}
    )
    retransmit = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    retransmit.bind(("127.0.0.1", 0))
    late_ack = LateAck(uas.sip_port, ("127.0.0.1", stack.kamailio.sip_port), retransmit)

    def observe(datagram: Datagram) -> None:
        window.on_datagram(datagram)
        late_ack.on_datagram(datagram)

    sniffer = LoopbackSniffer([uac.media_port, uas.media_port, uac.sip_port, uas.sip_port], observe)
    try:
        await _call(
            stack,
            tmp_path,
            call_id,
            (caller_scenario(tmp_path / "caller.pcap", hold_ms), uac),
            (agent_scenario(tmp_path / "agent.pcap"), uas),
        )
        await window.settled()
        # Requests are reported after they are relayed: a report may land after SIPp is done.
        for event in ("call.started", "recording.started", "call.answered", "call.ended"):
            await recgate.wait_for(event, 1, 5.0)
    finally:
        sniffer.close()
        retransmit.close()
        await controller.aclose()
        for task in window.tasks:
            task.cancel()
    finished = time.time()

    # ---- what Kamailio reported -------------------------------------------------------------
    _check_reports(recgate.reports)
    by_event = _reports_for(recgate.reports, call_id)
    events = ["call.started", "recording.started", "call.answered", "call.ended"]
    assert {e: len(by_event.get(e, [])) for e in by_event} == dict.fromkeys(events, 1), (
        f"each event once for Call-ID {call_id!r}; got "
        f"{[(r.event, r.form.get('call_id')) for r in recgate.reports]}"
    )
    at = {e: float(by_event[e][0].form["at"][0]) for e in events}
    assert all(began - 1 < t < finished + 1 for t in at.values()), at
    assert [at[e] for e in events] == sorted(at.values()), f"out of order: {at}"
    assert by_event["call.started"][0].status == 503  # and the call went on regardless
    assert "recgate did not take call.started (result 503)" in stack.kamailio.log_text()
    answers = [
        d
        for d in sniffer.datagrams
        if d.destination[1] == uac.sip_port and _INVITE_OK.match(d.payload)
    ]
    assert late_ack.sent and len(answers) == 2, "the 200 OK was not relayed twice"

    # ---- the payment window was where the phones' phases say -----------------------------
    assert sniffer.dropped() == 0, "the loopback capture dropped packets: it proves nothing"
    seen = window.first_seen
    assert window.pause_confirmed_at is not None and window.resume_requested_at is not None
    assert window.resume_confirmed_at is not None
    assert window.pause_confirmed_at < seen[PAY], "the pause was confirmed after PAY began"
    assert window.resume_requested_at > window.last_seen[PAY], "resumed before PAY was over"
    assert window.resume_confirmed_at < seen[PST], "the resume was confirmed after PST began"

    # Every packet in the pcaps left the phones: SIPp played them all.
    phones = {uac.media_port: CALLER, uas.media_port: AGENT}
    left = {
        (phones[d.source[1]], struct.unpack("!H", d.payload[2:4])[0])
        for d in sniffer.datagrams
        if d.source[1] in phones and len(d.payload) >= 12
    }
    played = {(s.side, s.seq) for s in caller_sent + agent_sent}
    assert played <= left, f"{len(played - left)} packets of the pcaps were never sent"

    # ---- the recording, as rtpengine wrote it ------------------------------------------------
    ours = {("127.0.0.1", uac.media_port), ("127.0.0.1", uas.media_port)}
    files = _closed_recording_files(rtpengine)
    keyed_after = _assert_only_the_payment_is_missing(files, ours, caller_sent, agent_sent)

    # ---- what the agent received from rtpengine -----------------------------------------------
    to_agent = [
        d.payload
        for d in sniffer.datagrams
        if d.destination[1] == uas.media_port and d.source[1] not in phones
    ]
    tags = [event_tag(p[12:]) for p in to_agent if p[1] & 0x7F == TELEPHONE_EVENT_PT]
    assert EVENT_TAG[PAY] not in tags, "a card digit reached the agent while DTMF was blocked"
    assert tags.count(EVENT_TAG[PST]) == len(keyed_after), "digits after the payment go through"
    heard = {p[12:16] for p in to_agent if p[1] & 0x7F == 0}
    assert PAY in heard, "the conversation itself must go on during the payment"

    # 10.5 has no 'pause recording': the controller stops and starts, which splits the file.
    expected_files = 2 if controller.pause_supported is False else 1
    assert len(files) == expected_files, f"{len(files)} recording files, not {expected_files}"


async def test_a_cancelled_call_is_reported_ended_and_rtpengine_forgets_it(
    tmp_path: Path, stack: Stack
) -> None:
    call_id = f"kam+{uuid.uuid4().hex}@127.0.0.1"
    uac, uas = _endpoints()
    await _call(
        stack,
        tmp_path,
        call_id,
        (cancelling_caller_scenario(), uac),
        (ringing_agent_scenario(), uas),
    )
    # Requests are reported after they are relayed: a report may land after SIPp is done.
    for event in ("call.started", "recording.started", "call.ended"):
        await stack.recgate.wait_for(event, 1, 5.0)

    _check_reports(stack.recgate.reports)
    by_event = _reports_for(stack.recgate.reports, call_id)
    counts = {e: len(reports) for e, reports in by_event.items()}
    # Once: the 487 that follows the CANCEL does not report the end again.
    assert counts == {"call.started": 1, "recording.started": 1, "call.ended": 1}, counts
    # delete-delay=0: rtpengine dropped the call (and closed its recording) at once.
    ng = NgClient(stack.rtpengine.ng)
    try:
        with pytest.raises(RecordingGone):
            await ng.command("query", {"call-id": call_id}, 2.0)
    finally:
        await ng.aclose()


# ---- with recgate itself ----------------------------------------------------------------------


class MovableClock:
    """The real time, moved forward on demand (to reach a retention deadline)."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


@dataclass(frozen=True)
class Recgate:
    url: str
    services: Services
    clock: MovableClock
    ivr: dict[str, str]
    dpo: dict[str, str]


@asynccontextmanager
async def running_recgate(settings: Settings, rtpengine: Daemon) -> AsyncIterator[Recgate]:
    """recgate on a loopback port, as Kamailio reaches it, controlling and reading the real
    rtpengine: its ng socket and its recording directory."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    clock = MovableClock()
    configured = Settings(
        **{
            **settings.model_dump(),
            "rtpengine_ng": rtpengine.ng,
            "rtpengine_recording_dir": rtpengine.recording_dir,
            "sip_proxy_token": TOKEN,
            "pause_timeout_ms": 2000,
        },
        _env_file=None,
    )
    app = create_app(configured, clock=clock)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.02)
        services: Services = app.state.services
        tokens = {role: await services.tokens.create(f"e2e-{role.value}", role) for role in Role}
        yield Recgate(
            f"http://127.0.0.1:{port}",
            services,
            clock,
            {"authorization": f"Bearer {tokens[Role.IVR]}"},
            {"authorization": f"Bearer {tokens[Role.DPO]}"},
        )
    finally:
        server.should_exit = True
        await serving
        listener.close()


@pytest.fixture
async def recgate_stack(
    tmp_path: Path, programs: None, settings: Settings
) -> AsyncIterator[tuple[Daemon, Recgate, Kamailio]]:
    with running_rtpengine(tmp_path / "rtpengine") as rtpengine:
        async with running_recgate(settings, rtpengine) as recgate:
            with running_kamailio(
                tmp_path / "kamailio",
                rtpengine_ng=rtpengine.ng,
                recgate_url=recgate.url,
                token=TOKEN,
            ) as kamailio:
                yield rtpengine, recgate, kamailio


async def test_recgate_gates_a_kamailio_call_then_keeps_and_deletes_its_files(
    tmp_path: Path, recgate_stack: tuple[Daemon, Recgate, Kamailio]
) -> None:
    """The whole deployment: Kamailio reports the call to recgate, the IVR's payment start
    and end go to recgate, which pauses rtpengine; afterwards recgate knows the call ended,
    takes in rtpengine's files with their deadlines, and its sweep deletes them."""
    rtpengine, recgate, kamailio = recgate_stack
    call_id = f"kam+{uuid.uuid4().hex}@127.0.0.1"
    path = f"/v1/calls/rtpengine/{quote(call_id, safe='')}"
    caller_sent, agent_sent, hold_ms = _phones_media(tmp_path)
    uac, uas = _endpoints()

    async with httpx.AsyncClient(base_url=recgate.url, timeout=5.0) as ivr:

        async def open_payment() -> None:
            started = await ivr.post(f"{path}/payment/start", json={}, headers=recgate.ivr)
            assert started.status_code == 200, started.text
            assert started.json()["safe_to_collect"] is True

        async def close_payment() -> None:
            ended = await ivr.post(f"{path}/payment/end", json={}, headers=recgate.ivr)
            assert ended.status_code == 200 and ended.json()["state"] == "closed", ended.text

        window = PaymentWindow(
            open_payment, close_payment, {uac.media_port: CALLER, uas.media_port: AGENT}
        )
        sniffer = LoopbackSniffer([uac.media_port, uas.media_port], window.on_datagram)
        try:
            await _call(
                Stack(rtpengine, SipProxyReceiver(), kamailio),
                tmp_path,
                call_id,
                (caller_scenario(tmp_path / "caller.pcap", hold_ms), uac),
                (agent_scenario(tmp_path / "agent.pcap"), uas),
            )
            await window.settled()
        finally:
            sniffer.close()
            for task in window.tasks:
                task.cancel()
        assert window.pause_confirmed_at is not None and window.resume_confirmed_at is not None
        assert window.pause_confirmed_at < window.first_seen[PAY], "safe only after PAY began"
        assert window.resume_confirmed_at < window.first_seen[PST]

        # ---- what rtpengine recorded ----------------------------------------------------------
        ours = {("127.0.0.1", uac.media_port), ("127.0.0.1", uas.media_port)}
        files = _closed_recording_files(rtpengine)
        _assert_only_the_payment_is_missing(files, ours, caller_sent, agent_sent)

        # ---- what recgate knows: the call ended, its files are recordings with deadlines -----
        call: dict[str, Any] = {}
        for _ in range(100):  # reports come after the SIP messages they describe
            call = (await ivr.get(path, headers=recgate.dpo)).json()
            if call.get("state") == "ended":
                break
            await asyncio.sleep(0.05)
        assert call["state"] == "ended" and call["ended_at"] is not None, call
        assert recgate.services.spool is not None
        assert await recgate.services.spool.scan() == len(files)
        await recgate.services.tasks.drain()
        call = (await ivr.get(path, headers=recgate.dpo)).json()
        kept = {r["provider_recording_id"]: r for r in call["recordings"]}
        assert {f.name for f in files} <= set(kept), sorted(kept)
        deadlines = []
        for file in files:
            detail = (
                await ivr.get(f"/v1/recordings/{kept[file.name]['id']}", headers=recgate.dpo)
            ).json()
            assert detail["media_available"] is True and detail["media_size"] == file.stat().st_size
            deadlines.append(datetime.fromisoformat(detail["retention_until"]))
        assert call["record_retention_until"] is not None

        # ---- past the deadline, the sweep deletes recgate's copy and rtpengine's files -------
        recgate.clock.ahead = max(deadlines) - datetime.now(UTC) + timedelta(minutes=1)
        swept = await ivr.post("/v1/retention/sweep", headers=recgate.dpo)
        assert swept.status_code == 200 and swept.json()["deleted"] >= len(files), swept.text
        assert [f for f in files if f.exists()] == [], "rtpengine's files outlived their deadline"
        for file in files:
            detail = (
                await ivr.get(f"/v1/recordings/{kept[file.name]['id']}", headers=recgate.dpo)
            ).json()
            assert detail["state"] == "deleted" and detail["media_available"] is False
