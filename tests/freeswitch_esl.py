"""A FreeSWITCH event socket on loopback (mod_event_socket, inbound mode), for the tests.

It follows FreeSWITCH master cc93a683 as read in its source, not recgate's code:

- mod_event_socket.c: the ``Content-Type: auth/request`` greeting; ``auth <password>``
  answered ``command/reply`` with ``Reply-Text: +OK accepted``, or ``-ERR invalid`` followed by
  a ``text/disconnect-notice`` and the end of the connection; ``api <cmd> <arg>`` run in turn
  and answered ``api/response`` with ``Content-Length``; ``event plain <names…>`` answered
  ``+OK event listener enabled plain``; each event sent as ``Content-Length`` +
  ``Content-Type: text/event-plain``; ``exit`` answered ``+OK bye``; an address refused by the
  ACL greeted with ``text/rude-rejection``.
- switch_event.c ``switch_event_serialize``: one ``Name: value`` line per header, the value
  URL-encoded by ``switch_url_encode`` (which leaves a ``%XX`` already in the value alone),
  ``_undef_`` for an empty one, a blank line at the end.
- switch_utils.c ``switch_separate_string`` (blank delimiter) and
  ``cleanup_separated_string``: how ``uuid_record`` splits its arguments (quotes, backslash
  escapes, ``\\s`` for a space).
- mod_commands.c ``session_record_function`` and switch_ivr_async.c: ``uuid_record <uuid>
  mask|unmask|pause|resume <path>`` finds the media bug by the exact path and answers ``+OK
  Success``, ``-ERR Cannot locate session!``, ``-ERR Cannot mask recording session!`` (and the
  unmask, pause, resume variants) or ``-USAGE: …``; releases before 1.10.7 know no
  pause/resume.
- switch_channel.c: ``Channel-Call-UUID`` and the ``variable_*`` headers of channel events.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.domain.events import EventType, PbxEvent
from app.services.ingest import IngestResult
from tests.conftest import Harness

PASSWORD = "esl-password-for-tests-0001"
CORE_UUID = "5e3f1a2b-9c4d-4e6f-8a1b-2c3d4e5f6a7b"
VERSION = "1.10.12-release+git~20240802T210227Z~a88d069d6f~64bit"
WAIT_S = 10.0  # an upper bound for a test that hangs, never a sleep
_UNSAFE = '\r\n #%&+:;<=>?@[\\]^`{|}"'
_HEX = "0123456789ABCDEF"
_ESCAPE = "\\"
_DISCONNECT = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
_SYNTAX = "<uuid> [start|stop|mask|unmask|pause|resume] <path> [<limit>] [<recording_vars>]"
_OLD_SYNTAX = "<uuid> [start|stop|mask|unmask] <path> [<limit>]"


# ---- FreeSWITCH's string handling, ported ---------------------------------------------------


def url_encode(value: str) -> str:
    """``switch_url_encode``: unsafe, control and non-ASCII bytes as ``%XX``, except a ``%``
    already followed by two upper-case hex digits, which is left as it is."""
    data = value.encode()
    out: list[str] = []
    for i, byte in enumerate(data):
        if (
            byte == ord("%")
            and len(data) - 1 - i > 1
            and chr(data[i + 1]) in _HEX
            and chr(data[i + 2]) in _HEX
        ):
            out.append("%")
            continue
        if byte < 0x20 or byte > 0x7E or chr(byte) in _UNSAFE:
            out.append(f"%{byte:02X}")
        else:
            out.append(chr(byte))
    return "".join(out)


def _unescape(char: str) -> str:
    return {"n": "\n", "r": "\r", "t": "\t", "s": " "}.get(char, char)


def _cleanup(token: str) -> str:
    """``cleanup_separated_string`` with no delimiter (the blank-delimited case)."""
    i = 0
    while i < len(token) and token[i] == " ":
        i += 1
    out: list[str] = []
    end: int | None = None
    inside = False
    while i < len(token):
        char = token[i]
        escaped = False
        if char == _ESCAPE:
            nxt = token[i + 1] if i + 1 < len(token) else "\0"
            if nxt in ("'", '"', _ESCAPE) or _unescape(nxt) != nxt:
                i += 1
                out.append(nxt if nxt in ("'", '"', _ESCAPE) else _unescape(nxt))
                end = len(out)
                escaped = True
        if not escaped:
            if char == "'" and (inside or "'" in token[i + 1 :]):
                inside = not inside
                if inside:
                    end = len(out)
            else:
                out.append(char)
                if char != " " or inside:
                    end = len(out)
        i += 1
    return "".join(out[:end] if end is not None else out)


def separate_blank(text: str, limit: int) -> list[str]:
    """``switch_separate_string(buf, ' ', argv, limit)``: at most ``limit`` arguments, the last
    taking the rest of the line."""
    buf = [*text, "\0"]
    starts: list[int] = []
    state, p, inside = "start", 0, False
    while p < len(buf) and buf[p] != "\0" and len(starts) < limit:
        char = buf[p]
        if state == "start":
            starts.append(p)
            state = "skip-initial"
        elif state == "skip-initial":
            if char == " ":
                p += 1
            else:
                state = "find"
        elif state == "find":
            if char == _ESCAPE:
                p += 1
            elif char == "'":
                inside = not inside
            elif char == " " and not inside:
                buf[p] = "\0"
                state = "skip-ending"
            p += 1
        else:
            if char == " ":
                p += 1
            else:
                state = "start"
    tokens = []
    for start in starts:
        end = buf.index("\0", start)
        tokens.append(_cleanup("".join(buf[start:end])))
    return tokens


# ---- events ---------------------------------------------------------------------------------

_sequence = itertools.count(4_000_000)


def event(
    name: str,
    channel: str,
    *,
    call_uuid: str | None = None,
    originator: str | None = None,
    number: str = "+441632960001",
    destination: str = "01632960999",
    direction: str = "inbound",
    at_us: int | None = None,
    **extra: str,
) -> list[tuple[str, str]]:
    """The headers of a channel event as FreeSWITCH fires it: the core's, the channel's basic
    data, the caller profile, then channel variables (verbose for these event types)."""
    stamp = at_us if at_us is not None else time.time_ns() // 1000
    headers = [
        ("Event-Name", name),
        ("Core-UUID", CORE_UUID),
        ("FreeSWITCH-Hostname", "pbx1.council.example"),
        ("FreeSWITCH-Switchname", "pbx1"),
        ("FreeSWITCH-IPv4", "10.20.0.5"),
        ("FreeSWITCH-IPv6", "::1"),
        ("Event-Date-Local", time.strftime("%Y-%m-%d %H:%M:%S")),
        ("Event-Date-GMT", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())),
        ("Event-Date-Timestamp", str(stamp)),
        ("Event-Calling-File", "switch_ivr_async.c"),
        ("Event-Calling-Function", "record_callback"),
        ("Event-Calling-Line-Number", "1484"),
        ("Event-Sequence", str(next(_sequence))),
        ("Channel-State", "CS_EXECUTE"),
        ("Channel-Call-State", "ACTIVE"),
        ("Channel-State-Number", "4"),
        ("Channel-Name", f"sofia/external/{number}@trunk.example"),
        ("Unique-ID", channel),
        ("Call-Direction", direction),
        ("Presence-Call-Direction", direction),
        ("Channel-HIT-Dialplan", "true"),
        ("Channel-Call-UUID", call_uuid or channel),
        ("Answer-State", "answered"),
        ("Caller-Direction", direction),
        ("Caller-Caller-ID-Name", "Caller"),
        ("Caller-Caller-ID-Number", number),
        ("Caller-Destination-Number", destination),
        ("Caller-Unique-ID", channel),
        ("Caller-Context", "public"),
        ("variable_direction", direction),
        ("variable_uuid", channel),
        ("variable_call_uuid", call_uuid or channel),
        # What an IVR may leave in a channel variable: never to be stored.
        ("variable_payment_card", "4111 1111 1111 1111"),
        ("variable_sip_from_display", "A. Resident"),
    ]
    if originator is not None:
        headers.append(("variable_originator", originator))
    headers.extend(extra.items())
    return headers


def record_event(name: str, channel: str, path: str, **kwargs: Any) -> list[tuple[str, str]]:
    """RECORD_START / RECORD_STOP: a channel event with ``Record-File-Path`` (and, on stop, the
    channel's record_* variables and ``Record-Completion-Cause``)."""
    headers = event(name, channel, **kwargs)
    headers.append(("Record-File-Path", path))
    if name == "RECORD_STOP":
        headers += [("variable_record_seconds", "42"), ("Record-Completion-Cause", "success")]
    return headers


def serialize(headers: list[tuple[str, str]]) -> bytes:
    """``switch_event_serialize(event, &buf, SWITCH_TRUE)`` of an event without a body."""
    lines = "".join(f"{name}: {url_encode(value) or '_undef_'}\n" for name, value in headers)
    return (lines + "\n").encode()


# ---- the server -----------------------------------------------------------------------------


@dataclass
class Bug:
    """A record_session media bug: its flags."""

    masked: bool = False
    paused: bool = False


@dataclass
class Connection:
    number: int
    writer: asyncio.StreamWriter
    authed: bool = False
    events: set[str] = field(default_factory=set)
    commands: list[str] = field(default_factory=list)

    @property
    def subscribed(self) -> bool:
        return bool(self.events)


@dataclass
class FakeFreeSwitch:
    """A scripted mod_event_socket on 127.0.0.1 with the channels and media bugs it serves."""

    password: str = PASSWORD
    knows_pause: bool = True  # False plays a release before 1.10.7
    ready: bool = True
    acl_refuses: bool = False
    # api commands are read but never answered (a hung FreeSWITCH).
    hang: bool = False
    # Seconds before each api answer.
    api_delay_s: float = 0.0
    channels: dict[str, dict[str, Bug]] = field(default_factory=dict)
    connections: list[Connection] = field(default_factory=list)
    # Every uuid_record as FreeSWITCH's splitter reads it: (uuid, action, path).
    controls: list[tuple[str, str, str]] = field(default_factory=list)
    api_lines: list[str] = field(default_factory=list)
    refused: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[Any]] = field(default_factory=set)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for connection in self.connections:
            connection.writer.transport.abort()
        for handler in list(self._handlers):  # a hung api answer never ends by itself
            handler.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- what tests wait for --

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def until(self, predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout_s)

    def subscribers(self) -> list[Connection]:
        return [c for c in self.connections if c.subscribed and not c.writer.is_closing()]

    async def subscribed(self, count: int = 1) -> None:
        """Until ``count`` event subscriptions have been made (over the fake's life)."""
        await self.until(lambda: sum(1 for c in self.connections if c.subscribed) >= count)

    # -- what the PBX does --

    def add_channel(self, channel: str) -> None:
        self.channels.setdefault(channel, {})

    def start_recording(self, channel: str, path: str) -> None:
        """``record_session``: a media bug under ``path`` on ``channel``."""
        self.channels.setdefault(channel, {})[path] = Bug()

    def hang_up(self, channel: str) -> None:
        self.channels.pop(channel, None)

    async def emit(self, headers: list[tuple[str, str]]) -> int:
        """Send an event to every connection subscribed to it; how many got it."""
        body = serialize(headers)
        name = dict(headers)["Event-Name"]
        frame = f"Content-Length: {len(body)}\nContent-Type: text/event-plain\n\n".encode() + body
        sent = 0
        for connection in self.subscribers():
            if name in connection.events or "ALL" in connection.events:
                connection.writer.write(frame)
                await connection.writer.drain()
                sent += 1
        return sent

    def drop(self, *, events: bool = True, commands: bool = True) -> int:
        """Cut connections without a word (a restart, a network fault); how many."""
        cut = 0
        for connection in self.connections:
            if connection.writer.is_closing():
                continue
            if (connection.subscribed and events) or (not connection.subscribed and commands):
                connection.writer.transport.abort()
                cut += 1
        return cut

    async def disconnect_subscribers(self) -> None:
        """Close event connections the way FreeSWITCH does when it shuts a listener down."""
        for connection in self.subscribers():
            await self._goodbye(connection)

    # -- the protocol --

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(len(self.connections) + 1, writer)
        self.connections.append(connection)
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        await self._notify()
        try:
            if self.acl_refuses:
                message = b"Access Denied, go away.\n"
                writer.write(
                    b"Content-Type: text/rude-rejection\nContent-Length: %d\n\n" % len(message)
                    + message
                )
                await writer.drain()
                writer.close()
                return
            writer.write(b"Content-Type: auth/request\n\n")
            await writer.drain()
            while True:
                try:
                    packet = await reader.readuntil(b"\n\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line = packet.decode().split("\n", 1)[0].rstrip("\r")
                connection.commands.append(line)
                if not await self._command(connection, line):
                    return
        except asyncio.CancelledError:
            return  # the fake closing: nothing to report
        finally:
            self._handlers.discard(handler)
            writer.close()
            await self._notify()

    async def _reply(self, connection: Connection, text: str) -> None:
        connection.writer.write(f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode())
        await connection.writer.drain()

    async def _goodbye(self, connection: Connection) -> None:
        writer = connection.writer
        writer.write(
            b"Content-Type: text/disconnect-notice\nContent-Length: %d\n\n" % len(_DISCONNECT)
            + _DISCONNECT
        )
        await writer.drain()
        writer.close()

    async def _command(self, connection: Connection, line: str) -> bool:
        """Handle one command; False when the connection is over."""
        if line.lower().startswith("exit"):
            await self._reply(connection, "+OK bye")
            await self._goodbye(connection)
            return False
        if not connection.authed:
            if not line.startswith("auth "):
                return True  # ignored until authenticated
            if line[5:] != self.password:
                self.refused += 1
                await self._reply(connection, "-ERR invalid")
                await self._goodbye(connection)
                await self._notify()
                return False
            connection.authed = True
            await self._reply(connection, "+OK accepted")
            return True
        if line.startswith("api "):
            self.api_lines.append(line[4:])
            await self._notify()
            if self.hang:
                await asyncio.Event().wait()  # until the client goes away (cancelled then)
            if self.api_delay_s:
                await asyncio.sleep(self.api_delay_s)
            body = self._api(line[4:]).encode()
            connection.writer.write(
                f"Content-Type: api/response\nContent-Length: {len(body)}\n\n".encode() + body
            )
            await connection.writer.drain()
            await self._notify()
            return True
        if line.startswith("event "):
            words = line.split()[1:]
            names = [w for w in words if w not in ("plain", "json", "xml")]
            if not names:
                await self._reply(connection, "-ERR no keywords supplied")
                return True
            connection.events.update(names)
            await self._reply(connection, "+OK event listener enabled plain")
            await self._notify()
            return True
        await self._reply(connection, "-ERR command not found")
        return True

    def _api(self, text: str) -> str:
        command, _, arg = text.partition(" ")
        if command == "status":
            return (
                "UP 0 years, 12 days, 3 hours, 4 minutes, 5 seconds, 6 milliseconds, "
                "7 microseconds\n"
                f"FreeSWITCH (Version {VERSION}) is {'ready' if self.ready else 'not ready'}\n"
                "1234 session(s) since startup\n"
                "3 session(s) - peak 12, last 5min 4 \n"
                "0 session(s) per Sec out of max 30, peak 5, last 5min 1 \n"
                "1000 session(s) max\n"
                "min idle cpu 0.00/98.10\n"
                "Current Stack Size/Max 240K/8192K\n"
            )
        if command != "uuid_record":
            return f"-ERR {command} Command not found!\n"
        argv = separate_blank(arg.strip(), 5)
        syntax = _SYNTAX if self.knows_pause else _OLD_SYNTAX
        if len(argv) < 3 or not all(argv[:3]):
            return f"-USAGE: {syntax}\n"
        channel, action, path = argv[0], argv[1], argv[2]
        self.controls.append((channel, action, path))
        bugs = self.channels.get(channel)
        if bugs is None:
            return "-ERR Cannot locate session!\n"
        known = (
            "start",
            "stop",
            "mask",
            "unmask",
            *(("pause", "resume") if self.knows_pause else ()),
        )
        action = action.lower()
        if action not in known:
            return f"-USAGE: {syntax}\n"
        if action == "start":
            bugs[path] = Bug()
            return "+OK Success\n"
        bug = bugs.get(path)
        if action == "stop":
            if bugs.pop(path, None) is None:
                return "-ERR Cannot stop record session!\n"
            return "+OK Success\n"
        if bug is None:
            noun = {"mask": "mask", "unmask": "unmask", "pause": "pause", "resume": "resume"}
            return f"-ERR Cannot {noun[action]} recording session!\n"
        if action in ("mask", "unmask"):
            bug.masked = action == "mask"
        else:
            bug.paused = action == "pause"
        return "+OK Success\n"


@asynccontextmanager
async def running_fake() -> AsyncIterator[FakeFreeSwitch]:
    """A started fake, closed afterwards (each test module makes its fixture of it)."""
    fake = FakeFreeSwitch()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


def esl_settings(fake: FakeFreeSwitch, **overrides: Any) -> dict[str, Any]:
    """Harness settings for a recgate that uses ``fake`` for events and control."""
    return {
        "freeswitch_esl_host": "127.0.0.1",
        "freeswitch_esl_port": fake.port,
        "freeswitch_esl_password": PASSWORD,
        "freeswitch_events": True,
        **overrides,
    }


class Applied:
    """Counts the events the intake applied (by type); lets a test await them, never sleep."""

    def __init__(self, h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
        self.types: list[EventType] = []
        self.rejected = 0
        self._changed = asyncio.Condition()
        intake = h.services.intake
        accept, reject = intake.accept, intake.reject

        async def accept_spy(event: PbxEvent, payload: dict[str, Any], raw: bytes) -> IngestResult:
            try:
                return await accept(event, payload, raw)
            finally:
                self.types.append(event.type)
                async with self._changed:
                    self._changed.notify_all()

        async def reject_spy(*args: Any) -> None:
            try:
                await reject(*args)
            finally:
                self.rejected += 1
                async with self._changed:
                    self._changed.notify_all()

        monkeypatch.setattr(intake, "accept", accept_spy)
        monkeypatch.setattr(intake, "reject", reject_spy)

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), WAIT_S)

    async def count(self, kind: EventType, at_least: int = 1) -> None:
        await self.until(lambda: self.types.count(kind) >= at_least)

    async def total(self, at_least: int) -> None:
        await self.until(lambda: len(self.types) >= at_least)


def new_uuid() -> str:
    return str(uuid.uuid4())
