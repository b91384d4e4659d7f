"""Kamailio and SIPp for end-to-end tests: the proxy, the caller and agent, what they send.

Everything runs on 127.0.0.1 and is started and stopped by PID:

- Kamailio with ``deploy/kamailio/kamailio.cfg`` (copied into the test's directory, so a
  ``kamailio-local.cfg`` left beside the real one is not imported), in the foreground, its
  settings given as ``-A`` defines and the webhook token in its environment;
- SIPp as the caller (UAC) and as the agent (UAS), each playing RTP from a pcap file written
  here with a phase marker in every packet;
- a stand-in for recgate's ``/v1/webhooks/sip-proxy`` route that keeps every POST;
- a packet sniffer on the loopback interface (``AF_PACKET``, root only, as SIPp's pcap player
  is) that sees what SIPp sends and what rtpengine forwards to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

from tests.e2e.rtpengine_support import (
    TELEPHONE_EVENT_PT,
    free_udp_port,
    rtp_packet,
    telephone_event,
)

INSTALL_HINT = "apt-get install -y kamailio kamailio-utils-modules sip-tester rtpengine-daemon"
CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "kamailio" / "kamailio.cfg"
WEBHOOK_PATH = "/v1/webhooks/sip-proxy"


def kamailio_binary() -> str | None:
    """Kamailio's path, or None when it is not installed."""
    return shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if os.access("/usr/sbin/kamailio", os.X_OK) else None
    )


def sipp_binary() -> str | None:
    """SIPp's path (Debian's sip-tester), or None when it is not installed."""
    return shutil.which("sipp")


def missing_kamailio_modules() -> list[str]:
    """The Kamailio modules the deploy config loads that are not installed (http_client comes
    with kamailio-utils-modules, the rest with kamailio)."""
    wanted = ("http_client.so", "rtpengine.so", "htable.so", "tm.so", "tmx.so")
    directories = [*Path("/usr/lib").glob("*/kamailio/modules"), Path("/usr/lib/kamailio/modules")]
    return [m for m in wanted if not any((d / m).exists() for d in directories)]


def can_capture() -> bool:
    """True when this process may open raw sockets: SIPp's pcap player and the sniffer must."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except (PermissionError, OSError):
        return False
    return True


def udp_port_bound(port: int) -> bool:
    """True when a socket is bound to UDP ``port`` on 127.0.0.1 or any address (IPv4)."""
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    with open("/proc/net/udp") as table:
        return any(line.split()[1] in wanted for line in list(table)[1:])


# ---- Kamailio ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kamailio:
    pid: int
    sip_port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _options_answered(port: int, timeout_s: float) -> bool:
    """Send an OPTIONS to the proxy itself; True when it answers 200 within ``timeout_s``."""
    tag = os.urandom(6).hex()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout_s)
        local = sock.getsockname()[1]
        probe = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{tag};rport\r\n"
            f"From: <sip:probe@127.0.0.1>;tag={tag}\r\n"
            f"To: <sip:127.0.0.1:{port}>\r\n"
            f"Call-ID: probe-{tag}@127.0.0.1\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Max-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.sendto(probe.encode(), ("127.0.0.1", port))
        try:
            reply = sock.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            return False
    return reply.startswith(b"SIP/2.0 200 ")


@contextmanager
def running_kamailio(
    workdir: Path,
    *,
    rtpengine_ng: str,
    recgate_url: str,
    token: str,
    startup_timeout_s: float = 15.0,
) -> Iterator[Kamailio]:
    """Start Kamailio with the deploy config on a free UDP port of 127.0.0.1; stop it by PID.

    Raises when it does not answer an OPTIONS in time, or does not exit cleanly on SIGTERM.
    """
    binary = kamailio_binary()
    if binary is None:
        raise FileNotFoundError(f"kamailio is not installed ({INSTALL_HINT})")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "kamailio.cfg"
    shutil.copyfile(CONFIG, config)
    log = workdir / "kamailio.log"
    port = free_udp_port()
    command = [
        binary,
        "-f",
        str(config),
        "-DD",  # foreground: its PID is ours to stop
        "-E",
        "-m",
        "64",
        "-M",
        "8",
        "-Y",
        str(workdir),
        "-w",
        str(workdir),
        "-A",
        "SIP_ADDR=127.0.0.1",
        "-A",
        f"SIP_PORT={port}",
        "-A",
        "CHILDREN=2",
        "-A",
        f'RTPENGINE_SOCK="udp:{rtpengine_ng}"',
        "-A",
        f'RECGATE_URL="{recgate_url}"',
    ]
    # The token travels in the environment, as the deploy README advises: not on `ps`.
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "RECGATE_SIP_PROXY_TOKEN": token,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=environment,
            start_new_session=True,  # its own process group: its workers go with it
        )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _options_answered(port, 0.2):
            if process.poll() is not None:
                raise RuntimeError(
                    f"kamailio exited with {process.returncode}:\n{log.read_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"kamailio did not answer OPTIONS within {startup_timeout_s}s")
        yield Kamailio(process.pid, port, log)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    if process.returncode not in (0, -signal.SIGTERM):
        raise RuntimeError(f"kamailio exited with {process.returncode}:\n{log.read_text()[-3000:]}")


# ---- recgate's sip-proxy route, stood in for ---------------------------------------------------


@dataclass(frozen=True)
class Report:
    """One POST Kamailio made."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    status: int  # what we answered
    received_at: float  # time.time()

    @property
    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode("ascii"), keep_blank_values=True, strict_parsing=True)

    @property
    def event(self) -> str | None:
        values = self.form.get("event", [])
        return values[0] if len(values) == 1 else None


@dataclass
class SipProxyReceiver:
    """Keeps every request; answers 200 with a small JSON body, or ``failing`` events 503."""

    failing: frozenset[str] = frozenset()
    reports: list[Report] = field(default_factory=list)
    url: str = ""
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            event = parse_qs(body.decode("ascii", "replace")).get("event", [""])[0]
            status = 503 if event in self.failing else 200
            answer = b'{"status":"accepted"}' if status == 200 else b'{"status":"unavailable"}'
            reason = "OK" if status == 200 else "Service Unavailable"
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(answer)}\r\nConnection: close\r\n\r\n".encode()
                + answer
            )
            await writer.drain()
            async with self._arrived:
                self.reports.append(
                    Report(method, path, headers, body, status, received_at=time.time())
                )
                self._arrived.notify_all()
        finally:
            writer.close()

    async def wait_for(self, event: str, count: int, timeout_s: float) -> list[Report]:
        """The reports of ``event`` once there are ``count`` of them (AssertionError when they
        do not come in time)."""

        def matching() -> list[Report]:
            return [r for r in self.reports if r.event == event]

        try:
            async with self._arrived:
                await asyncio.wait_for(
                    self._arrived.wait_for(lambda: len(matching()) >= count), timeout_s
                )
        except TimeoutError:
            got = [r.event for r in self.reports]
            raise AssertionError(
                f"no {count} {event} report(s) in {timeout_s}s; got {got}"
            ) from None
        return matching()


@asynccontextmanager
async def running_receiver(failing: Iterable[str] = ()) -> AsyncIterator[SipProxyReceiver]:
    """A :class:`SipProxyReceiver` listening on a free TCP port of 127.0.0.1."""
    receiver = SipProxyReceiver(failing=frozenset(failing))
    server = await asyncio.start_server(receiver._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    receiver.url = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        server.close()
        await server.wait_closed()


# ---- RTP with phase markers, as pcap files SIPp plays -----------------------------------------

PRE, STA, PAY, END, PST = b"PRE-", b"STA-", b"PAY-", b"END-", b"PST-"
CALLER, AGENT = b"A", b"B"
SSRC = {CALLER: 0x0A0A0A0A, AGENT: 0x0B0B0B0B}
# The phase of a telephone-event travels in its volume field (6 bits), the only free one.
EVENT_TAG = {PAY: 10, PST: 20}
CARD = "4111111111111111"
TICK_S = 0.02


@dataclass(frozen=True)
class Sent:
    """One packet a side's pcap holds: its phase, RTP sequence number and payload type."""

    phase: bytes
    side: bytes
    seq: int
    payload_type: int
    offset_s: float  # from the first packet of the file


def audio_payload(phase: bytes, side: bytes, seq: int) -> bytes:
    """160 bytes of PCMU: phase, side, RTP sequence number, then silence (0xff in µ-law)."""
    body = phase + side + struct.pack("!I", seq)
    return body + b"\xff" * (160 - len(body))


def marker_of(payload: bytes) -> tuple[bytes, bytes, int] | None:
    """(phase, side, seq) of one of our audio payloads, None for anything else."""
    if len(payload) < 9 or payload[:4] not in (PRE, STA, PAY, END, PST):
        return None
    (seq,) = struct.unpack("!I", payload[5:9])
    return payload[:4], payload[4:5], seq


def event_tag(payload: bytes) -> int:
    """The phase tag in an RFC 4733 event's volume field."""
    return payload[1] & 0x3F


def side_packets(
    side: bytes, phases: list[tuple[bytes, int, bool]]
) -> tuple[list[tuple[float, bytes]], list[Sent]]:
    """A side's RTP, a packet every 20 ms: ``(phase, ticks, keys)`` in order. While ``keys``
    is set the card is keyed as RFC 4733 events, one digit per three ticks (every packet of an
    event carries its start timestamp; the first has the marker bit, the last the end bit)."""
    packets: list[tuple[float, bytes]] = []
    sent: list[Sent] = []
    seq, clock, tick_no = 0, 0, 0
    for phase, ticks, keys in phases:
        event_start = 0
        for tick in range(ticks):
            at = tick_no * TICK_S
            seq += 1
            packets.append(
                (at, rtp_packet(0, seq, clock, SSRC[side], audio_payload(phase, side, seq)))
            )
            sent.append(Sent(phase, side, seq, 0, at))
            if keys:
                digit, step = int(CARD[(tick // 3) % len(CARD)]), tick % 3
                if step == 0:
                    event_start = clock
                seq += 1
                payload = telephone_event(digit, step == 2, EVENT_TAG[phase], 160 * (step + 1))
                packets.append(
                    (
                        at,
                        rtp_packet(
                            TELEPHONE_EVENT_PT,
                            seq,
                            event_start,
                            SSRC[side],
                            payload,
                            marker=step == 0,
                        ),
                    )
                )
                sent.append(Sent(phase, side, seq, TELEPHONE_EVENT_PT, at))
            clock += 160
            tick_no += 1
    return packets, sent


def _ip_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def write_pcap(path: Path, packets: list[tuple[float, bytes]]) -> None:
    """A classic Ethernet pcap of UDP datagrams from 127.0.0.1:4000 to 127.0.0.1:5000.

    SIPp replays the UDP payloads at the recorded times, from its media port to the address
    the far end's SDP names (the ports here only need to be the same throughout)."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    epoch = 1_700_000_000.0
    for ident, (offset, payload) in enumerate(packets):
        udp = struct.pack("!HHHH", 4000, 5000, 8 + len(payload), 0) + payload
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(udp),
            ident & 0xFFFF,
            0,
            64,
            17,
            0,
            socket.inet_aton("127.0.0.1"),
            socket.inet_aton("127.0.0.1"),
        )
        ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
        frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
        at = epoch + offset
        seconds = int(at)
        micros = round((at - seconds) * 1_000_000)
        out += struct.pack("<IIII", seconds, micros, len(frame), len(frame)) + frame
    path.write_bytes(bytes(out))


# ---- SIPp -------------------------------------------------------------------------------------

CALLER_USER = "+4930555000"  # a '+' to prove the reports URL-encode the user parts
AGENT_USER = "agent"

_SDP = f"""v=0
      o=- 1 1 IN IP[media_ip_type] [media_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 {TELEPHONE_EVENT_PT}
      a=rtpmap:0 PCMU/8000
      a=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/8000
      a=fmtp:{TELEPHONE_EVENT_PT} 0-16
      a=sendrecv
      a=ptime:20"""


def caller_scenario(pcap: Path, hold_ms: int) -> str:
    """SIPp UAC: INVITE through the proxy, ACK, play ``pcap``, hang up after ``hold_ms``."""
    from_ = f"From: <sip:{CALLER_USER}@[local_ip]:[local_port]>;tag=[pid]caller[call_number]"
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="recgate caller">
  <send retrans="500">
    <![CDATA[

      INVITE sip:{AGENT_USER}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      {from_}
      To: <sip:{AGENT_USER}@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:{CALLER_USER}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      {_SDP}

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      {from_}
      To: <sip:{AGENT_USER}@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>
  <pause milliseconds="{hold_ms}"/>
  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      {from_}
      To: <sip:{AGENT_USER}@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
"""


def agent_scenario(pcap: Path) -> str:
    """SIPp UAS: answer one INVITE, play ``pcap`` once the ACK is in, answer the BYE."""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="recgate agent">
  <recv request="INVITE" crlf="true"/>
  <send>
    <![CDATA[

      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]agent[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      Contact: <sip:{AGENT_USER}@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>
  <send retrans="500">
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]agent[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      Contact: <sip:{AGENT_USER}@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      {_SDP}

    ]]>
  </send>
  <recv request="ACK" crlf="true"/>
  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>
  <recv request="BYE"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


def cancelling_caller_scenario() -> str:
    """SIPp UAC: INVITE through the proxy, hang up (CANCEL) once it rings, ACK the 487."""
    from_ = f"From: <sip:{CALLER_USER}@[local_ip]:[local_port]>;tag=[pid]caller[call_number]"
    to = f"To: <sip:{AGENT_USER}@[remote_ip]:[remote_port]>"
    # A CANCEL, and the ACK of a failed INVITE, carry the INVITE's branch: [branch-N] is the
    # branch of the message N steps back (INVITE is step 0, the CANCEL 3, the ACK 6).
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="recgate caller who hangs up while it rings">
  <send retrans="500">
    <![CDATA[

      INVITE sip:{AGENT_USER}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      {from_}
      {to}
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:{CALLER_USER}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      {_SDP}

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180"/>
  <send retrans="500">
    <![CDATA[

      CANCEL sip:{AGENT_USER}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3]
      {from_}
      {to}
      Call-ID: [call_id]
      CSeq: 1 CANCEL
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
  <recv response="487"/>
  <send>
    <![CDATA[

      ACK sip:{AGENT_USER}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-6]
      {from_}
      {to}[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


def ringing_agent_scenario() -> str:
    """SIPp UAS: ring on the INVITE until it is cancelled; 200 the CANCEL, 487 the INVITE."""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="recgate agent who never answers">
  <recv request="INVITE" crlf="true">
    <action>
      <!-- The 487 must carry the INVITE's Via headers, not the CANCEL's. -->
      <ereg regexp=".*" search_in="hdr" header="Via:" assign_to="invite_via"/>
    </action>
  </recv>
  <send>
    <![CDATA[

      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]agent[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      Contact: <sip:{AGENT_USER}@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>
  <recv request="CANCEL"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]agent[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <send>
    <![CDATA[

      SIP/2.0 487 Request Terminated
      Via: [$invite_via]
      [last_From:]
      [last_To:];tag=[pid]agent[call_number]
      [last_Call-ID:]
      CSeq: 1 INVITE
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>
</scenario>
"""


@dataclass(frozen=True)
class SippEndpoint:
    """Where one SIPp instance listens: SIP, media (it binds this port and the one two up),
    and its control socket."""

    sip_port: int
    media_port: int
    control_port: int


def sipp_command(
    scenario: Path, endpoint: SippEndpoint, *, timeout_s: int, extra: Iterable[str] = ()
) -> list[str]:
    """SIPp bound to 127.0.0.1 only (SIP, media, control), one call, a global timeout."""
    binary = sipp_binary()
    if binary is None:
        raise FileNotFoundError(f"sipp is not installed ({INSTALL_HINT})")
    return [
        binary,
        *extra,
        "-sf",
        str(scenario),
        "-i",
        "127.0.0.1",
        "-bind_local",
        "-p",
        str(endpoint.sip_port),
        "-mi",
        "127.0.0.1",
        "-mp",
        str(endpoint.media_port),
        "-ci",
        "127.0.0.1",
        "-cp",
        str(endpoint.control_port),
        "-m",
        "1",
        "-nostdin",
        "-timeout",
        f"{timeout_s}s",
        "-timeout_error",
        "-trace_msg",
        "-message_file",
        str(scenario.with_suffix(".messages.log")),
        "-trace_err",
        "-error_file",
        str(scenario.with_suffix(".errors.log")),
    ]


@dataclass
class Sipp:
    """A SIPp process started by :func:`start_sipp`."""

    process: asyncio.subprocess.Process
    log: Path
    scenario: Path

    async def finished(self, timeout_s: float) -> int:
        """Its exit code (0: every call succeeded); killed by PID when it overruns."""
        try:
            return await asyncio.wait_for(self.process.wait(), timeout_s)
        except TimeoutError:
            self.stop()
            await self.process.wait()
            raise

    def stop(self) -> None:
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGKILL)

    def output(self) -> str:
        parts = [self.log, self.scenario.with_suffix(".errors.log")]
        parts.append(self.scenario.with_suffix(".messages.log"))
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in parts if p.exists())


async def start_sipp(command: list[str], workdir: Path, name: str) -> Sipp:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir
        )
    scenario = Path(command[command.index("-sf") + 1])
    return Sipp(process, log, scenario)


async def wait_bound(ports: Iterable[int], sipp: Sipp, timeout_s: float) -> None:
    """Wait until SIPp has bound every port (it binds them before taking calls)."""
    deadline = time.monotonic() + timeout_s
    wanted = list(ports)
    while not all(udp_port_bound(port) for port in wanted):
        if sipp.process.returncode is not None:
            raise RuntimeError(f"sipp exited with {sipp.process.returncode}:\n{sipp.output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"sipp did not bind {wanted} within {timeout_s}s")
        await asyncio.sleep(0.02)  # no event to await: the kernel's socket table is polled


# ---- what crosses the loopback interface ------------------------------------------------------

_ETH_P_ALL = 0x0003
_SOL_PACKET = 263
_PACKET_STATISTICS = 6
_PACKET_IGNORE_OUTGOING = 23
_SO_ATTACH_FILTER = 26
_SO_RCVBUFFORCE = 33
_PACKET_HOST = 0


@dataclass(frozen=True)
class Datagram:
    """One UDP datagram seen on the loopback interface."""

    at: float  # time.monotonic() when the sniffer read it
    source: tuple[str, int]
    destination: tuple[str, int]
    payload: bytes


def _port_filter(ports: list[int]) -> bytes:
    """A classic BPF program: IPv4 UDP, unfragmented, from or to one of ``ports``."""
    n = len(ports)
    program: list[tuple[int, int, int, int]] = []
    # The offsets of the last two instructions: drop, then accept.
    drop = 8 + 1 + 2 * n
    accept = drop + 1

    def jump(at: int, target: int) -> int:
        return target - at - 1

    program.append((0x28, 0, 0, 12))  # ldh [12]: ethertype
    program.append((0x15, 0, jump(1, drop), 0x0800))  # IPv4
    program.append((0x30, 0, 0, 23))  # ldb [23]: protocol
    program.append((0x15, 0, jump(3, drop), 17))  # UDP
    program.append((0x28, 0, 0, 20))  # ldh [20]: fragment offset
    program.append((0x45, jump(5, drop), 0, 0x1FFF))  # no fragments
    program.append((0xB1, 0, 0, 14))  # ldxb 4*([14]&0xf): IP header length
    program.append((0x48, 0, 0, 14))  # ldh [x+14]: source port
    for i, port in enumerate(ports):
        at = 8 + i
        program.append((0x15, jump(at, accept), 0, port))
    program.append((0x48, 0, 0, 16))  # ldh [x+16]: destination port
    for i, port in enumerate(ports):
        at = 9 + n + i
        program.append((0x15, jump(at, accept), 0, port))
    program.append((0x06, 0, 0, 0))  # drop
    program.append((0x06, 0, 0, 0x40000))  # accept
    assert len(program) == accept + 1
    return b"".join(struct.pack("HBBI", *instruction) for instruction in program)


class LoopbackSniffer:
    """Every UDP datagram from or to ``ports`` that crosses ``lo``, read in the event loop.

    The kernel filters (BPF) so that other tests' loopback traffic costs nothing, and counts
    what it had to drop for want of buffer: :meth:`dropped` must be 0 for a capture to prove
    that something was *not* sent.
    """

    def __init__(self, ports: Iterable[int], on_datagram: Callable[[Datagram], None]) -> None:
        self.datagrams: list[Datagram] = []
        self._on_datagram = on_datagram
        self._drops = 0
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 16 * 1024 * 1024)
            code = _port_filter(sorted(set(ports)))
            buffer = ctypes.create_string_buffer(code)
            program = struct.pack("HL", len(code) // 8, ctypes.addressof(buffer))
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)
            # Each datagram crosses lo twice (out, then in): keep the incoming copy. Kernels
            # before 4.20 lack the option; the packet type in _read tells the copies apart.
            with contextlib.suppress(OSError):
                self._sock.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
            self._sock.bind(("lo", 0))
            self._sock.setblocking(False)
            self._stats()  # reading the statistics resets them: count from here
        except BaseException:
            self._sock.close()
            raise
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._read)

    def _stats(self) -> None:
        _, drops = struct.unpack("II", self._sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8))
        self._drops += drops

    def _read(self) -> None:
        while True:
            try:
                frame, address = self._sock.recvfrom(65535)
            except BlockingIOError:
                return
            if address[2] != _PACKET_HOST:
                continue
            datagram = _udp_in_frame(frame)
            if datagram is not None:
                self.datagrams.append(datagram)
                self._on_datagram(datagram)

    def dropped(self) -> int:
        """Datagrams the kernel could not queue for us since the start (until closed)."""
        if self._sock.fileno() != -1:
            self._stats()
        return self._drops

    def close(self) -> None:
        self._read()
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._stats()
        self._sock.close()


def _udp_in_frame(frame: bytes) -> Datagram | None:
    ip = frame[14:]
    if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
        return None
    header = (ip[0] & 0x0F) * 4
    source_port, destination_port, length = struct.unpack("!HHH", ip[header : header + 6])
    return Datagram(
        at=time.monotonic(),
        source=(socket.inet_ntoa(ip[12:16]), source_port),
        destination=(socket.inet_ntoa(ip[16:20]), destination_port),
        payload=ip[header + 8 : header + length],
    )
