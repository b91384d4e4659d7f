"""FreeSWITCH over the event socket (``mod_event_socket``, inbound mode): lifecycle events in,
``uuid_record`` mask/pause out.

Configuration: ``RECGATE_FREESWITCH_ESL_HOST`` / ``_PORT`` / ``_PASSWORD`` name the event
socket (``event_socket.conf.xml``); ``RECGATE_FREESWITCH_EVENTS=true`` has recgate consume
events itself (:mod:`app.jobs.freeswitch_events`). There is no webhook route: FreeSWITCH sends
nothing over HTTP by itself.

The protocol (mod_event_socket.c, FreeSWITCH master cc93a683). The server greets with
``Content-Type: auth/request``; the client answers ``auth <password>`` and gets a
``command/reply`` whose ``Reply-Text`` is ``+OK accepted`` or ``-ERR invalid`` (then the server
hangs up). Every command is one line ended by a blank line. ``api <command>`` runs
synchronously on the connection and is answered, in order, with ``Content-Type:
api/response`` and ``Content-Length`` framing; ``event plain <names…>`` subscribes, and each
event then arrives as ``Content-Type: text/event-plain`` whose body is the event's headers, one
``Name: value`` a line, values URL-encoded. A server closing the connection says so first with
``Content-Type: text/disconnect-notice``.

Events. A call is keyed by its first channel (the A-leg: the caller's, for an inbound call);
the IVR names it by that channel's ``Unique-ID``. A channel originated for another (an agent's
phone, dialled by ``bridge``) is a *leg*: FreeSWITCH sets its ``call_uuid`` variable (event
header ``Channel-Call-UUID``) to the A-leg while they are bridged, and its ``originator``
variable for good. A leg's answer links it to the call (``CALL_LINKED``), its hang-up ends
nothing, and its recordings land on the call. ``CHANNEL_ANSWER`` → ``call.answered``,
``CHANNEL_HANGUP_COMPLETE`` → ``call.ended``, ``RECORD_START`` → ``recording.started``,
``RECORD_STOP`` → ``recording.stopped``. FreeSWITCH core events carry no ``Event-UUID``;
``Core-UUID`` (new at every start) with ``Event-Sequence`` names one event, so the same event
read twice (two replicas, two connections) is applied once. Times are
``Event-Date-Timestamp`` (microseconds since the epoch).

Recordings. A recording is a ``record_session`` media bug, known to FreeSWITCH by the file
path it writes (``switch_channel_get_private(channel, path)``): recgate's recording id is the
exact ``Record-File-Path`` of ``RECORD_START``, and its container is ``channel:<Unique-ID>``,
the channel the bug is on (the caller's, or a leg's). Control (mod_commands.c
``session_record_function``, switch_ivr_async.c): ``uuid_record <uuid> mask <path>`` writes
silence in place of the audio and keeps the timeline (behaviour ``silence``); ``pause``
writes nothing (``skip``, FreeSWITCH 1.10.7 and later); ``unmask`` / ``resume`` undo them.
Each sets or clears one flag, so repeating a command is harmless. ``+OK Success`` confirms;
``-ERR Cannot locate session!`` means the channel is gone; ``-ERR Cannot mask recording
session!`` (or pause, unmask, resume) means no recording under exactly that path on that
channel, which recgate cannot tell from a path that differs: it is a refusal, and a payment
fails closed. FreeSWITCH sends no event when a recording is masked or paused, so the reply is
the only confirmation, and a mask undone by someone else (a FusionPBX ``*6`` feature code)
is never reported.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import socket
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import unquote_to_bytes

import httpx

from app.config import Settings
from app.domain.clock import Clock
from app.domain.events import CallInfo, EventType, PbxEvent, RecordingInfo
from app.domain.states import PauseBehavior
from app.telephony.base import (
    ConfirmedState,
    ControlOutcome,
    ControlTarget,
    ProviderRejected,
    ProviderUnavailable,
    RecordingController,
    RecordingGone,
    RecordingRef,
    combine_outcomes,
)
from app.telephony.provider import Provider

log = logging.getLogger("recgate.freeswitch")

PROVIDER = "freeswitch"
CHANNEL_PREFIX = "channel:"
# The events recgate reads. HEARTBEAT (every 20 s by default, switch.conf
# ``event-heartbeat-interval``) only tells the consumer the socket is alive.
SUBSCRIBED = ("CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE", "RECORD_START", "RECORD_STOP")
HEARTBEAT = "HEARTBEAT"
_MAX_ID = 255
# One frame's header block and body, at most. An event with every channel variable is a few
# kilobytes; anything near these is not FreeSWITCH.
_LINE_LIMIT = 256 * 1024
_MAX_BODY = 4 * 1024 * 1024
_VERSION = re.compile(r"FreeSWITCH \(Version ([A-Za-z0-9._~+-]{1,60})")
_REMEMBERED_MAX = 10_000
# What of an event is stored (inbox payload, dead letters): the headers recgate reads. Channel
# variables are left out: they can hold whatever the IVR collected.
KEPT_HEADERS = (
    "Event-Name",
    "Core-UUID",
    "Event-Sequence",
    "Event-UUID",
    "Event-Date-Timestamp",
    "Unique-ID",
    "Channel-Call-UUID",
    "variable_originator",
    "Call-Direction",
    "Caller-Caller-ID-Number",
    "Caller-Destination-Number",
    "Hangup-Cause",
    "Record-File-Path",
    "Record-Completion-Cause",
)


class MalformedEvent(ValueError):
    """An event recgate reads whose headers are missing or wrong; the message is safe to show."""


class EslRefused(ProviderRejected):
    """The event socket refused recgate: a wrong password, or an ACL that rejects its address."""


# ---- the protocol ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One message from the event socket: its outer headers and its body."""

    headers: dict[str, str]
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def reply_text(self) -> str:
        return self.headers.get("Reply-Text", "")


def parse_header_block(block: bytes, *, decode_values: bool) -> dict[str, str]:
    """``Name: value`` lines; with ``decode_values`` the values are URL-decoded as FreeSWITCH
    encodes them in plain events (``switch_event_serialize``), as UTF-8 (bytes that are not
    become U+FFFD, which recgate then refuses in an id rather than guess)."""
    headers: dict[str, str] = {}
    for raw_line in block.split(b"\n"):
        line = raw_line.rstrip(b"\r")
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        raw = value.lstrip(b" ")
        data = unquote_to_bytes(raw) if decode_values else raw
        headers[name.decode("utf-8", "replace").strip()] = data.decode("utf-8", "replace")
    return headers


def plain_event_headers(body: bytes) -> dict[str, str]:
    """The headers of a ``text/event-plain`` body (the event's own body, if any, left out)."""
    block, _, _ = body.partition(b"\n\n")
    return parse_header_block(block, decode_values=True)


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """The next frame; :class:`ProviderUnavailable` when the connection ends or is not ESL."""
    try:
        block = await reader.readuntil(b"\n\n")
        headers = parse_header_block(block, decode_values=False)
        length = headers.get("Content-Length")
        if length is None:
            return Frame(headers)
        if not length.isdigit() or int(length) > _MAX_BODY:
            raise ProviderUnavailable("FreeSWITCH ESL: unreadable Content-Length")
        return Frame(headers, await reader.readexactly(int(length)))
    except asyncio.IncompleteReadError as exc:
        raise ProviderUnavailable("FreeSWITCH ESL: connection closed") from exc
    except asyncio.LimitOverrunError as exc:
        raise ProviderUnavailable("FreeSWITCH ESL: frame too large") from exc
    except OSError as exc:
        raise ProviderUnavailable(f"FreeSWITCH ESL: {type(exc).__name__}") from exc


def esl_argument(value: str) -> str:
    """``value`` as one argument of an ``api`` command line, so that FreeSWITCH's argument
    splitter (``switch_separate_string`` on blanks, then ``cleanup_separated_string``) reads
    it back byte for byte: a backslash, a single quote or a space would otherwise end it,
    open a quote or vanish. A line break would end the command itself: refused."""
    if not value or any(ch in value for ch in "\r\n\x00"):
        raise ProviderRejected("FreeSWITCH ESL: an argument is empty or holds a line break")
    return value.replace("\\", "\\\\").replace("'", "\\'").replace(" ", "\\s").replace("\t", "\\t")


def _keepalive(writer: asyncio.StreamWriter) -> None:
    """TCP keepalive, so a connection a firewall dropped in silence is noticed in about a
    minute rather than at the next command (or never, for the event connection)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        pass


class EslConnection:
    """One authenticated inbound connection to ``mod_event_socket``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        # Commands sent on this connection whose answers have not come yet, oldest first.
        self.pending: deque[asyncio.Future[Frame]] = deque()

    @classmethod
    async def open(cls, host: str, port: int, password: str) -> EslConnection:
        """Connect and authenticate. :class:`EslRefused` for a wrong password or an ACL
        refusal, :class:`ProviderUnavailable` when the socket cannot be reached or is not an
        event socket."""
        try:
            reader, writer = await asyncio.open_connection(host, port, limit=_LINE_LIMIT)
        except OSError as exc:
            raise ProviderUnavailable(f"FreeSWITCH ESL: connect: {type(exc).__name__}") from exc
        connection = cls(reader, writer)
        try:
            _keepalive(writer)
            greeting = await connection.read()
            if greeting.content_type == "text/rude-rejection":
                raise EslRefused(
                    "FreeSWITCH ESL refused recgate's address (event_socket.conf.xml "
                    "apply-inbound-acl)"
                )
            if greeting.content_type != "auth/request":
                raise ProviderUnavailable("FreeSWITCH ESL: no auth/request greeting")
            await connection.send(f"auth {password}")
            reply = await connection.read()
            if not reply.reply_text.startswith("+OK"):
                raise EslRefused(
                    "FreeSWITCH ESL refused the password (RECGATE_FREESWITCH_ESL_PASSWORD)"
                )
        except BaseException:
            connection.close()
            raise
        return connection

    async def send(self, line: str) -> None:
        """Send one command (a line, then the blank line that ends it)."""
        self.write(line)
        await self.drain()

    def write(self, line: str) -> None:
        if "\n" in line or "\r" in line:
            raise ProviderRejected("FreeSWITCH ESL: a command is one line")
        lowered = line.lower()
        if "mod_event_socket" in lowered and ("unload" in lowered or "reload" in lowered):
            # mod_event_socket turns any such line into "api bgapi unload mod_event_socket".
            raise ProviderRejected("FreeSWITCH ESL: a command naming mod_event_socket is refused")
        try:
            self.writer.write(line.encode() + b"\n\n")
        except (OSError, RuntimeError) as exc:
            raise ProviderUnavailable(f"FreeSWITCH ESL: {type(exc).__name__}") from exc

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except OSError as exc:
            raise ProviderUnavailable(f"FreeSWITCH ESL: {type(exc).__name__}") from exc

    async def read(self) -> Frame:
        return await read_frame(self.reader)

    @property
    def closed(self) -> bool:
        return self.writer.is_closing() or self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class EslCommandClient:
    """``api`` commands over one connection of their own (never the event connection),
    opened on first use and again after it drops.

    mod_event_socket runs ``api`` commands of one connection one at a time and answers them in
    order, so commands are pipelined: each waits for its own answer in a queue that a reader
    task fills. A command whose caller gives up leaves its slot in the queue, and its answer
    is read and dropped when it comes, so the answers that follow still meet their commands.
    """

    def __init__(self, host: str, port: int, password: str, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self._password = password
        self.timeout_s = timeout_s
        self._connection: EslConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()
        self.connections_opened = 0

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    async def api(self, command: str, timeout_s: float | None = None) -> str:
        """The body of FreeSWITCH's answer to ``api <command>``, within ``timeout_s``
        (default ``RECGATE_PROVIDER_REQUEST_TIMEOUT_S``). Only for commands that may run twice:
        when the connection is lost before the answer, the command is sent once more on a new
        one (it may have run before the connection died).
        """
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit):
                for attempt in range(2):
                    connection = await self._connect()
                    try:
                        frame = await self._exchange(connection, f"api {command}")
                    except ProviderUnavailable:
                        self._drop(connection)
                        if attempt:
                            raise
                        log.info(
                            "FreeSWITCH ESL connection to %s was lost; sending again on a new one",
                            self.where,
                        )
                        continue
                    if frame.content_type == "command/reply":
                        # Refused before it ran (e.g. "-ERR permission denied" for an ESL user
                        # whose esl-allowed-api leaves the command out).
                        return frame.reply_text
                    return frame.body.decode("utf-8", "replace")
        except TimeoutError as exc:
            raise ProviderUnavailable(
                f"FreeSWITCH ESL: no answer from {self.where} within {limit:.2f}s"
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(self, connection: EslConnection, line: str) -> Frame:
        answer: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        # The bytes and their slot go in together (no await between): answers come in order.
        # The slot only once the line is written: a line refused unsent must leave none.
        connection.write(line)
        connection.pending.append(answer)
        await connection.drain()
        return await answer

    async def _connect(self) -> EslConnection:
        current = self._connection
        if current is not None and not current.closed:
            return current
        async with self._opening:
            current = self._connection
            if current is not None and not current.closed:
                return current
            connection = await EslConnection.open(self.host, self.port, self._password)
            self.connections_opened += 1
            self._connection = connection
            self._reader = asyncio.create_task(
                self._read_answers(connection), name="freeswitch-esl-answers"
            )
            return connection

    async def _read_answers(self, connection: EslConnection) -> None:
        error: ProviderUnavailable = ProviderUnavailable("FreeSWITCH ESL: connection closed")
        try:
            while True:
                frame = await connection.read()
                kind = frame.content_type
                if kind in ("api/response", "command/reply"):
                    if not connection.pending:
                        log.warning("FreeSWITCH ESL sent an answer nobody asked for; reconnecting")
                        return
                    waiting = connection.pending.popleft()
                    if not waiting.done():  # a caller that gave up: its answer is dropped
                        waiting.set_result(frame)
                elif kind == "text/disconnect-notice":
                    log.info("FreeSWITCH ESL at %s is closing the command connection", self.where)
                # Anything else (log lines, events) was not asked for on this connection.
        except ProviderUnavailable as exc:
            error = exc
        finally:
            self._fail_pending(connection, error)

    def _fail_pending(self, connection: EslConnection, error: ProviderUnavailable) -> None:
        connection.close()
        if self._connection is connection:
            self._connection = None
        while connection.pending:
            waiting = connection.pending.popleft()
            if not waiting.done():
                waiting.set_exception(error)

    def _drop(self, connection: EslConnection) -> None:
        """Give up on ``connection``: its reader stops and fails what still waits on it."""
        if self._connection is connection and self._reader is not None:
            self._reader.cancel()
        self._fail_pending(connection, ProviderUnavailable("FreeSWITCH ESL: connection dropped"))

    async def aclose(self) -> None:
        """Close the connection; commands still waiting fail as unavailable."""
        reader, self._reader = self._reader, None
        connection = self._connection
        if connection is not None:
            self._fail_pending(connection, ProviderUnavailable("FreeSWITCH ESL client closed"))
        if reader is not None:
            reader.cancel()
            with suppress(asyncio.CancelledError):
                await reader


# ---- events ---------------------------------------------------------------------------------


def kept(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of an event recgate stores (never the channel variables)."""
    return {name: headers[name] for name in KEPT_HEADERS if name in headers}


def kept_bytes(headers: Mapping[str, str]) -> bytes:
    """The kept headers as a plain-event body, for a dead letter."""
    return "".join(f"{name}: {value}\n" for name, value in kept(headers).items()).encode()


def parse_timestamp(value: str) -> datetime:
    """``Event-Date-Timestamp``: microseconds since the epoch, as an aware UTC datetime."""
    if not value.isdigit() or len(value) > 18:
        raise MalformedEvent("Event-Date-Timestamp is not microseconds since the epoch")
    try:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(value))
    except OverflowError as exc:
        raise MalformedEvent("Event-Date-Timestamp is out of range") from exc


def _event_id(headers: Mapping[str, str], name: str, channel: str) -> str:
    given = headers.get("Event-UUID")
    if given:
        event_id = given
    else:
        core, sequence = headers.get("Core-UUID"), headers.get("Event-Sequence")
        if core and sequence and sequence.isdigit():
            event_id = f"{core}:{sequence}"
        else:
            # Without them: what the event says, which happens once per channel and file.
            event_id = "|".join(
                (
                    name,
                    channel,
                    headers.get("Record-File-Path", ""),
                    headers.get("Event-Date-Timestamp", ""),
                )
            )
    if len(event_id) > _MAX_ID:
        event_id = "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()
    return event_id


def _parent(headers: Mapping[str, str], channel: str) -> str | None:
    """The channel this one is a leg of, or None for a call's first channel. ``call_uuid`` is
    the A-leg while they are bridged (and reset once they part); ``originator`` stays."""
    for name in ("Channel-Call-UUID", "variable_originator"):
        value = headers.get(name)
        if value and value != channel:
            return value
    return None


def _required(headers: Mapping[str, str], name: str, event: str) -> str:
    value = headers.get(name)
    if not value:
        raise MalformedEvent(f"{event}: {name} is missing")
    if len(value) > _MAX_ID:
        raise MalformedEvent(f"{event}: {name} is longer than {_MAX_ID} characters")
    return value


def parse_event(headers: Mapping[str, str], *, now: datetime) -> PbxEvent | None:
    """One plain event's (decoded) headers as a normalised event; None for an event recgate
    does not map (another event name, a leg's hang-up). :class:`MalformedEvent` for an event
    it maps whose headers are missing or wrong. ``now`` dates an event without a timestamp.
    """
    name = headers.get("Event-Name", "")
    if name not in SUBSCRIBED:
        return None
    channel = _required(headers, "Unique-ID", name)
    stamp = headers.get("Event-Date-Timestamp")
    occurred_at = parse_timestamp(stamp) if stamp else now
    event_id = _event_id(headers, name, channel)
    parent = _parent(headers, channel)
    if parent is not None and len(parent) > _MAX_ID:
        raise MalformedEvent(f"{name}: the A-leg's id is longer than {_MAX_ID} characters")
    if name == "CHANNEL_ANSWER":
        if parent is not None:
            # An agent answering is not the caller being answered: the leg joins the call.
            return _link(event_id, occurred_at, parent, channel)
        return PbxEvent(
            provider=PROVIDER,
            event_id=event_id,
            type=EventType.CALL_ANSWERED,
            occurred_at=occurred_at,
            call=CallInfo(
                provider_call_id=channel,
                from_number=headers.get("Caller-Caller-ID-Number") or None,
                to_number=headers.get("Caller-Destination-Number") or None,
                direction=_direction(headers.get("Call-Direction")),
                # A channel already linked as a leg stays one.
                via_alias=True,
            ),
        )
    if name == "CHANNEL_HANGUP_COMPLETE":
        if parent is not None:
            return None  # an agent hanging up ends no call
        cause = headers.get("Hangup-Cause")
        return PbxEvent(
            provider=PROVIDER,
            event_id=event_id,
            type=EventType.CALL_ENDED,
            occurred_at=occurred_at,
            call=CallInfo(channel, via_alias=True),
            extras={"hangup_cause": cause[:64]} if cause else {},
        )
    path = _required(headers, "Record-File-Path", name)
    extras: dict[str, str] = {}
    if cause := headers.get("Record-Completion-Cause"):
        extras["completion_cause"] = cause[:64]
    return PbxEvent(
        provider=PROVIDER,
        event_id=event_id,
        type=EventType.RECORDING_STARTED if name == "RECORD_START" else EventType.RECORDING_STOPPED,
        occurred_at=occurred_at,
        call=CallInfo(parent or channel, via_alias=True),
        recording=RecordingInfo(
            provider_recording_id=path,
            media_format=_format(path),
            container_id=CHANNEL_PREFIX + channel,
        ),
        extras=extras,
        # A leg's recording: the leg is part of the call from now on, whatever arrives first.
        aliases=(channel,) if parent is not None else (),
    )


def _link(event_id: str, at: datetime, parent: str, channel: str) -> PbxEvent:
    return PbxEvent(
        provider=PROVIDER,
        event_id=event_id,
        type=EventType.CALL_LINKED,
        occurred_at=at,
        call=CallInfo(parent, via_alias=True),
        aliases=(channel,),
    )


def _direction(value: str | None) -> str | None:
    return value if value in ("inbound", "outbound") else None


_FORMAT = re.compile(r"\.([A-Za-z0-9]{1,8})$")


def _format(path: str) -> str | None:
    found = _FORMAT.search(path)
    return found.group(1).lower() if found else None


# ---- control --------------------------------------------------------------------------------

_Action = Literal["mask", "pause", "unmask", "resume"]
_PAUSE: dict[PauseBehavior, _Action] = {
    PauseBehavior.SILENCE: "mask",
    PauseBehavior.SKIP: "pause",
}
_UNDO: dict[_Action, _Action] = {"mask": "unmask", "pause": "resume"}


class FreeSwitchController(RecordingController):
    """Masks (or pauses) and unmasks (or resumes) ``record_session`` recordings by path.

    ``uuid_record`` needs the exact path, which recgate learns only from ``RECORD_START``: a
    command for a call with no recording known is not answered "nothing is recording" (a
    recording can run before its event arrives, or its event was lost while the event socket
    was down). It raises :class:`ProviderUnavailable`, so the gate retries until a
    ``RECORD_START`` names a recording and fails closed at the deadline, as for ARI.
    """

    name = PROVIDER
    call_level_covers_all = False

    def __init__(
        self, client: EslCommandClient, default_behavior: PauseBehavior = PauseBehavior.SILENCE
    ) -> None:
        self.client = client
        # When the IVR does not say: RECGATE_FREESWITCH_PAUSE_MODE (mask, unless set).
        self.default_behavior = default_behavior
        # How each recording was paused, so its resume undoes exactly that. One recgate does
        # not remember (a restart, another replica) gets unmask and resume both: clearing a
        # flag that is not set is harmless.
        self._paused_with: OrderedDict[tuple[str, str], _Action] = OrderedDict()

    async def pause(self, target: ControlTarget, behavior: PauseBehavior) -> list[ControlOutcome]:
        """``uuid_record <channel> mask|pause <path>`` for every recording; ``+OK`` confirms."""
        refs = _recordings(target, "pause")
        action = _PAUSE[behavior]
        for channel, path in refs:
            # Remembered before sending: a command that times out may still have landed.
            self._paused_with[(channel, path)] = action
            self._paused_with.move_to_end((channel, path))
        while len(self._paused_with) > _REMEMBERED_MAX:
            self._paused_with.popitem(last=False)
        results = await asyncio.gather(
            *(
                self._command(channel, path, (action,), ConfirmedState.PAUSED)
                for channel, path in refs
            ),
            return_exceptions=True,
        )
        for ref, result in zip(refs, results, strict=True):
            if isinstance(result, ProviderRejected | RecordingGone):
                # A definite "no": nothing was paused there (only a lost answer leaves doubt).
                self._paused_with.pop(ref, None)
        return combine_outcomes([path for _, path in refs], results)

    async def resume(self, target: ControlTarget) -> list[ControlOutcome]:
        """Undo each recording's pause (``unmask`` or ``resume``); ``+OK`` confirms."""
        if target.call_level:
            # recgate never pauses at call level on FreeSWITCH: nothing to undo.
            return []
        refs = _recordings(target, "resume")
        results = await asyncio.gather(
            *(
                self._command(channel, path, self._undo(channel, path), ConfirmedState.RECORDING)
                for channel, path in refs
            ),
            return_exceptions=True,
        )
        outcomes = combine_outcomes([path for _, path in refs], results)
        for ref in refs:
            self._paused_with.pop(ref, None)
        return outcomes

    def _undo(self, channel: str, path: str) -> tuple[_Action, ...]:
        paused = self._paused_with.get((channel, path))
        return (_UNDO[paused],) if paused is not None else ("unmask", "resume")

    async def _command(
        self,
        channel: str,
        path: str,
        actions: Sequence[_Action],
        confirms: ConfirmedState,
    ) -> ControlOutcome:
        for action in actions:
            answer = await self.client.api(
                f"uuid_record {esl_argument(channel)} {action} {esl_argument(path)}"
            )
            first = answer.strip().splitlines()[0] if answer.strip() else ""
            if first.startswith("+OK"):
                continue
            what = f"FreeSWITCH uuid_record {action}"
            if first.startswith("-ERR Cannot locate session"):
                raise RecordingGone(f"{what}: the channel is gone")
            if first.startswith("-USAGE"):
                if action == "resume" and len(actions) > 1:
                    # Undoing both on a release without pause/resume (before 1.10.7): nothing
                    # there could have been paused.
                    continue
                raise ProviderRejected(
                    f"{what}: not known to this FreeSWITCH (pause and resume need 1.10.7 or "
                    'later; ask for "pause_behavior": "silence")'
                )
            if first.startswith("-ERR Cannot"):
                raise ProviderRejected(
                    f"{what}: {first[1:80]} (no recording under that exact path on the channel)"
                )
            raise ProviderRejected(f"{what}: {first[:80] or 'empty answer'}")
        return ControlOutcome(path, confirms)

    def describe(self) -> str:
        return f"freeswitch ESL at {self.client.where}"

    async def probe(self, timeout_s: float) -> str:
        """A connection of its own: the ESL password round trip, then ``api status``, whose
        ``UP`` line and ``is ready`` say FreeSWITCH (and mod_commands, which also serves
        ``uuid_record``) answers."""
        client = self.client
        connection: EslConnection | None = None
        try:
            async with asyncio.timeout(timeout_s):
                connection = await EslConnection.open(client.host, client.port, client._password)
                await connection.send("api status")
                while True:
                    frame = await connection.read()
                    if frame.content_type in ("api/response", "command/reply"):
                        break
        except TimeoutError as exc:
            raise ProviderUnavailable(f"FreeSWITCH ESL: no answer within {timeout_s:g}s") from exc
        finally:
            if connection is not None:
                connection.close()
        status = frame.body.decode("utf-8", "replace") or frame.reply_text
        if not status.startswith("UP "):
            raise ProviderRejected(f"FreeSWITCH api status: unexpected answer {status[:40]!r}")
        if "is ready" not in status:
            raise ProviderUnavailable("FreeSWITCH api status: not ready")
        version = _VERSION.search(status)
        return f"FreeSWITCH {version.group(1)}" if version else "FreeSWITCH"

    async def aclose(self) -> None:
        await self.client.aclose()


def _recordings(target: ControlTarget, action: str) -> list[tuple[str, str]]:
    """(channel, path) of every recording in ``target``."""
    if target.call_level or any(ref.provider_recording_id is None for ref in target.recordings):
        raise ProviderUnavailable(
            f"FreeSWITCH {action}: no recording known for this call yet; uuid_record needs the "
            "path RECORD_START reports, so recgate waits for it"
        )
    return [(_channel(target, ref), _path(ref)) for ref in target.recordings]


def _channel(target: ControlTarget, ref: RecordingRef) -> str:
    container = ref.container_id or ""
    if container.startswith(CHANNEL_PREFIX) and len(container) > len(CHANNEL_PREFIX):
        return container.removeprefix(CHANNEL_PREFIX)
    return target.provider_call_id


def _path(ref: RecordingRef) -> str:
    assert ref.provider_recording_id is not None
    return ref.provider_recording_id


# ---- the provider ----------------------------------------------------------------------------


def _controller(
    settings: Settings, _client: httpx.AsyncClient, _clock: Clock
) -> RecordingController | None:
    # Without a password there is no controller: payments on FreeSWITCH calls then fail
    # closed as "control not configured" rather than as a string of refusals.
    host, password = settings.freeswitch_esl_host, settings.freeswitch_esl_password
    if not host or password is None:
        return None
    return FreeSwitchController(
        EslCommandClient(
            host,
            settings.freeswitch_esl_port,
            password.get_secret_value(),
            settings.provider_request_timeout_s,
        ),
        PauseBehavior.SKIP if settings.freeswitch_pause_mode == "pause" else PauseBehavior.SILENCE,
    )


ADAPTER = Provider(
    name=PROVIDER,
    configured=lambda settings: bool(settings.freeswitch_esl_host),
    controller=_controller,
)
