"""The real rtpengine for tests and benchmarks: the daemon, a two-party call, RTP, pcap files.

The daemon runs on loopback only, in the foreground, with its recordings in a directory the
caller owns; it is started and stopped by PID. ``--table=-1`` keeps it in userspace (no kernel
module), and ``--recording-method=pcap`` writes what it records as pcap files: one per
recording, with a metadata file naming it once the file is closed.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.telephony import bencode

INSTALL_HINT = "apt-get install -y rtpengine-daemon"


def rtpengine_binary() -> str | None:
    """The rtpengine daemon's path, or None when it is not installed."""
    return shutil.which("rtpengine") or (
        "/usr/sbin/rtpengine" if os.access("/usr/sbin/rtpengine", os.X_OK) else None
    )


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def free_port_block(size: int = 40) -> tuple[int, int]:
    """A block of UDP ports on 127.0.0.1 nobody is bound to, for one daemon's media.

    rtpengine binds its media ports so that two daemons with the same range can share a port
    and receive each other's packets; concurrent daemons (parallel test runs, a benchmark) each
    get a block of their own. A port bound by anyone, with or without SO_REUSEADDR, fails the
    plain bind used to probe it.
    """
    rng = random.SystemRandom()
    for _ in range(50):
        first = rng.randrange(20000, 60000 - size, 2)
        probes: list[socket.socket] = []
        try:
            for port in range(first, first + size):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return first, first + size - 1
    raise RuntimeError("no free block of UDP ports on 127.0.0.1")


@dataclass(frozen=True)
class Daemon:
    pid: int
    ng: str  # host:port of its ng control socket
    recording_dir: Path
    log: Path

    @property
    def pcap_dir(self) -> Path:
        return self.recording_dir / "pcaps"

    @property
    def metadata_dir(self) -> Path:
        return self.recording_dir / "metadata"

    def version(self) -> str:
        """The daemon's version line from its log (e.g. ``10.5.3.5-1+deb12u1``)."""
        found = re.search(r"[Vv]ersion (\S+)", self.log.read_text(errors="replace"))
        return found.group(1) if found else "unknown"


def _ng_once(
    port: int, message: dict[str, bencode.Encodable], timeout_s: float
) -> dict[bytes, bencode.Value] | None:
    """One ng command, answered within ``timeout_s`` (None when it is not)."""
    cookie = os.urandom(6).hex().encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.sendto(cookie + b" " + bencode.encode(message), ("127.0.0.1", port))
        try:
            reply = sock.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            return None
    head, _, body = reply.partition(b" ")
    decoded = bencode.decode(body) if head == cookie else None
    return decoded if isinstance(decoded, dict) else None


def _delete_every_call(port: int) -> None:
    # The 10.5 daemon crashes on shutdown (SIGSEGV in recording_finish) when a recorded call is
    # still up, e.g. after a failed test: end them first, so it exits cleanly.
    listed = _ng_once(port, {"command": "list", "limit": 10000}, 1.0) or {}
    calls = listed.get(b"calls")
    for call_id in calls if isinstance(calls, list) else []:
        if isinstance(call_id, bytes):
            _ng_once(port, {"command": "delete", "call-id": call_id, "delete delay": 0}, 1.0)


@contextmanager
def running_rtpengine(workdir: Path, startup_timeout_s: float = 15.0) -> Iterator[Daemon]:
    """Start rtpengine on 127.0.0.1 with its recordings under ``workdir``; stop it by PID.

    Raises when the daemon does not exit cleanly on SIGTERM.
    """
    binary = rtpengine_binary()
    if binary is None:
        raise FileNotFoundError(f"rtpengine is not installed ({INSTALL_HINT})")
    workdir.mkdir(parents=True, exist_ok=True)
    recording_dir = workdir / "recordings"
    recording_dir.mkdir(exist_ok=True)
    log = workdir / "rtpengine.log"
    port = free_udp_port()
    port_min, port_max = free_port_block()
    command = [
        binary,
        "--table=-1",
        "--interface=127.0.0.1",
        f"--listen-ng=127.0.0.1:{port}",
        f"--port-min={port_min}",
        f"--port-max={port_max}",
        "--recording-method=pcap",
        "--config-file=none",
        "--foreground",
        "--log-stderr",
        f"--recording-dir={recording_dir}",
        f"--pidfile={workdir / 'rtpengine.pid'}",
    ]
    with log.open("wb") as out:
        # cwd: a core file, should the daemon crash, lands with its logs, not in the project.
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir
        )
    try:
        deadline = time.monotonic() + startup_timeout_s
        # Each ping waits for the answer (or 0.2 s): the ng socket is up once one is answered.
        while _ng_once(port, {"command": "ping"}, 0.2) is None:
            if process.poll() is not None:
                raise RuntimeError(
                    f"rtpengine exited with {process.returncode}:\n{log.read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"rtpengine did not answer within {startup_timeout_s}s")
        yield Daemon(process.pid, f"127.0.0.1:{port}", recording_dir, log)
    finally:
        if process.poll() is None:
            _delete_every_call(port)
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
    if process.returncode not in (0, -signal.SIGTERM):
        raise RuntimeError(
            f"rtpengine exited with {process.returncode}:\n{log.read_text()[-2000:]}"
        )


# ---- SDP and RTP ------------------------------------------------------------------------------

TELEPHONE_EVENT_PT = 101


def sdp(port: int, session: int) -> str:
    """An audio offer/answer from 127.0.0.1:``port``: PCMU and RFC 4733 telephone-events."""
    return (
        "v=0\r\n"
        f"o=- {session} 1 IN IP4 127.0.0.1\r\n"
        "s=-\r\n"
        "c=IN IP4 127.0.0.1\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 {TELEPHONE_EVENT_PT}\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        f"a=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/8000\r\n"
        f"a=fmtp:{TELEPHONE_EVENT_PT} 0-16\r\n"
        "a=sendrecv\r\n"
        "a=ptime:20\r\n"
    )


@dataclass(frozen=True)
class MediaAddress:
    """Where an SDP says to send the audio, and the telephone-event payload type it uses."""

    host: str
    port: int
    telephone_event_pt: int | None


def media_address(body: str) -> MediaAddress:
    """The audio address and telephone-event payload type of an SDP body."""
    host = re.search(r"^c=IN IP4 (\S+)", body, re.M)
    port = re.search(r"^m=audio (\d+) ", body, re.M)
    event = re.search(r"^a=rtpmap:(\d+) telephone-event/8000", body, re.M)
    assert host and port, f"no audio address in SDP:\n{body}"
    return MediaAddress(host.group(1), int(port.group(1)), int(event.group(1)) if event else None)


def rtp_packet(
    payload_type: int, seq: int, timestamp: int, ssrc: int, payload: bytes, marker: bool = False
) -> bytes:
    """An RTP packet (RFC 3550): version 2, no padding, extension or CSRCs."""
    return (
        struct.pack(
            "!BBHII",
            0x80,
            (0x80 if marker else 0) | payload_type,
            seq & 0xFFFF,
            timestamp & 0xFFFFFFFF,
            ssrc,
        )
        + payload
    )


def telephone_event(digit: int, end: bool, volume: int, duration: int) -> bytes:
    """An RFC 4733 named-event payload: event, E|R|volume, duration."""
    return struct.pack("!BBH", digit, (0x80 if end else 0) | (volume & 0x3F), duration)


# ---- pcap -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RtpRecord:
    """One RTP packet as a pcap file holds it."""

    source: tuple[str, int]
    destination: tuple[str, int]
    payload_type: int
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


_LINKTYPE_ETHERNET, _LINKTYPE_RAW, _LINKTYPE_RAW_ALT = 1, 101, 12


def read_pcap(path: Path) -> list[RtpRecord]:
    """Every RTP packet of a classic pcap file (raw IP or Ethernet frames, IPv4 or IPv6).

    rtpengine writes the packets it records with made-up IP/UDP headers around the RTP it
    received; anything that is not UDP carrying RTP version 2 is skipped.
    """
    data = path.read_bytes()
    if len(data) < 24:
        raise ValueError(f"{path.name}: shorter than a pcap header")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise ValueError(f"{path.name}: not a pcap file (magic {magic.hex()})")
    (linktype,) = struct.unpack(order + "I", data[20:24])
    records: list[RtpRecord] = []
    at = 24
    while at + 16 <= len(data):
        _, _, captured, _ = struct.unpack(order + "IIII", data[at : at + 16])
        frame = data[at + 16 : at + 16 + captured]
        if len(frame) < captured:
            raise ValueError(f"{path.name}: truncated record at offset {at}")
        at += 16 + captured
        if linktype == _LINKTYPE_ETHERNET:
            frame = frame[14:]
        elif linktype not in (_LINKTYPE_RAW, _LINKTYPE_RAW_ALT):
            raise ValueError(f"{path.name}: unsupported link type {linktype}")
        record = _rtp_in_ip(frame)
        if record is not None:
            records.append(record)
    if at != len(data):
        raise ValueError(f"{path.name}: {len(data) - at} stray bytes at the end")
    return records


def _rtp_in_ip(packet: bytes) -> RtpRecord | None:
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        header = (packet[0] & 0x0F) * 4
        protocol = packet[9]
        source_ip = socket.inet_ntop(socket.AF_INET, packet[12:16])
        destination_ip = socket.inet_ntop(socket.AF_INET, packet[16:20])
    elif version == 6:
        header, protocol = 40, packet[6]
        source_ip = socket.inet_ntop(socket.AF_INET6, packet[8:24])
        destination_ip = socket.inet_ntop(socket.AF_INET6, packet[24:40])
    else:
        return None
    if protocol != 17:  # UDP
        return None
    udp = packet[header : header + 8]
    source_port, destination_port = struct.unpack("!HH", udp[:4])
    rtp = packet[header + 8 :]
    if len(rtp) < 12 or rtp[0] >> 6 != 2:
        return None
    csrcs = rtp[0] & 0x0F
    offset = 12 + 4 * csrcs
    if rtp[0] & 0x10:  # header extension
        (words,) = struct.unpack("!H", rtp[offset + 2 : offset + 4])
        offset += 4 + 4 * words
    seq, timestamp, ssrc = struct.unpack("!HII", rtp[2:12])
    return RtpRecord(
        source=(source_ip, source_port),
        destination=(destination_ip, destination_port),
        payload_type=rtp[1] & 0x7F,
        seq=seq,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=rtp[offset:],
    )
