"""rtpengine (sipwise): ng control over UDP out, the recording daemon's notification in.

Control (SPEC §4) speaks the ng protocol: each datagram is ``<cookie> <bencoded dict>``, the
reply echoes the cookie. UDP loses datagrams, so a command is re-sent with the *same* cookie
until a reply arrives: rtpengine caches its reply per cookie and answers a retransmission
without running the command twice. Commands are keyed by ``call-id`` and cover the whole call.

Pausing uses ``pause recording`` (mr11.3+), which keeps the recording's file open so a later
``start recording`` continues it. Older daemons (Debian 12 ships 10.5) answer ``Unrecognized
command``; then the recording is stopped instead, and ``start recording`` on resume opens a
*new* file: the call's media is split into one file per stretch of recording, and the
recording daemon reports each file on its own. While a payment is open keypad events are
blocked too (``block DTMF``) so they reach neither the agent nor the recording.

Inbound, ``rtpengine-recording --notify-uri … --notify-post`` reports each finished file in
``X-Recording-*`` headers (no body, no signature: the URI carries ``?token=``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from app.config import Settings
from app.domain.clock import Clock
from app.domain.events import CallInfo, EventType, PbxEvent, RecordingInfo
from app.domain.states import PauseBehavior
from app.telephony import bencode, sipproxy
from app.telephony.base import (
    ConfirmedState,
    ControlOutcome,
    ControlTarget,
    MediaSource,
    ProviderRejected,
    ProviderUnavailable,
    RecordingController,
    RecordingGone,
)
from app.telephony.provider import (
    Accepted,
    IncomingWebhook,
    Provider,
    WebhookMalformed,
    WebhookNotEnabled,
    WebhookRefused,
    WebhookRoute,
)
from app.telephony.rtpengine_spool import RecordingSpool

log = logging.getLogger("recgate.rtpengine")

# rtpengine spells it both ways depending on the command ("Unknown call-ID" from block DTMF).
_UNKNOWN_CALL = "unknown call-id"
_UNRECOGNIZED = "unrecognized command"
# How many calls' fallback bookkeeping the controller remembers (oldest forgotten first).
_MAX_REMEMBERED_CALLS = 10_000

NgReply = dict[str, bencode.Value]


class UnrecognizedCommand(ProviderRejected):
    """The daemon does not know the command (an older rtpengine)."""


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) of an ng control socket."""
    host, sep, port = address.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"rtpengine ng address must be host:port, not {address!r}")
    return host, int(port)


def text(value: bencode.Value | None) -> str:
    """A bencoded string as text (rtpengine speaks UTF-8); '' for anything else."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


# ---- ng client ------------------------------------------------------------------------------


class _NgProtocol(asyncio.DatagramProtocol):
    def __init__(self, client: NgClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.client._on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error (nothing listens there yet, or any more): keep retransmitting until the
        # caller's timeout, a daemon that is restarting may answer in time.
        self.client._last_error = exc

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._on_connection_lost()


class NgClient:
    """An asyncio client for rtpengine's ng protocol over UDP.

    One datagram endpoint, created on first use inside the running loop. Every command gets a
    cookie unique to this client (a random prefix, so other processes' cookies never collide
    with ours in the daemon's reply cache) and is retransmitted with that same cookie every
    ``retransmit_s`` until its reply arrives or the caller's timeout passes. Replies are matched
    to commands by cookie; a datagram nobody waits for is dropped.
    """

    def __init__(self, address: str, *, retransmit_s: float = 0.2) -> None:
        self.host, self.port = parse_address(address)
        self.retransmit_s = retransmit_s
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)
        self._pending: dict[bytes, asyncio.Future[NgReply]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._opening = asyncio.Lock()
        self._last_error: Exception | None = None
        self.sent_datagrams = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def next_cookie(self) -> bytes:
        """A cookie no other command of this client (or, with overwhelming odds, any other
        client of the daemon) has used."""
        return f"{self._prefix}_{next(self._counter)}".encode()

    async def command(
        self, command: str, params: Mapping[str, bencode.Encodable], timeout_s: float
    ) -> NgReply:
        """Send one ng command; return the daemon's reply dictionary (keys as text).

        Raises :class:`ProviderUnavailable` when no reply arrives within ``timeout_s``,
        :class:`RecordingGone` when the daemon does not know the call, and
        :class:`ProviderRejected` (:class:`UnrecognizedCommand` for an unknown command) for
        any other ``result: error``.
        """
        transport = await self._endpoint()
        loop = asyncio.get_running_loop()
        cookie = self.next_cookie()
        datagram = cookie + b" " + bencode.encode({**params, "command": command})
        reply: asyncio.Future[NgReply] = loop.create_future()
        self._pending[cookie] = reply
        deadline = loop.time() + timeout_s
        try:
            while True:
                transport.sendto(datagram)
                self.sent_datagrams += 1
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                done, _ = await asyncio.wait({reply}, timeout=min(self.retransmit_s, remaining))
                if done:
                    return _checked(command, reply.result())
        finally:
            self._pending.pop(cookie, None)
            reply.cancel()
        why = f" (last error: {type(self._last_error).__name__})" if self._last_error else ""
        raise ProviderUnavailable(
            f"rtpengine: no answer to {command!r} from {self.address} within {timeout_s:.2f}s{why}"
        )

    async def ping(self, timeout_s: float) -> bool:
        """True when the daemon answers ``pong``."""
        return text((await self.command("ping", {}, timeout_s)).get("result")) == "pong"

    async def aclose(self) -> None:
        """Close the socket; commands still waiting fail as unavailable."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        for waiting in self._pending.values():
            if not waiting.done():
                waiting.set_exception(ProviderUnavailable("rtpengine client closed"))
        self._pending.clear()

    async def _endpoint(self) -> asyncio.DatagramTransport:
        # Created lazily: the settings are read at import/build time, outside any event loop.
        if self._transport is not None and not self._transport.is_closing():
            return self._transport
        async with self._opening:
            if self._transport is None or self._transport.is_closing():
                loop = asyncio.get_running_loop()
                # A connected socket: the kernel drops datagrams from any other address.
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _NgProtocol(self), remote_addr=(self.host, self.port)
                )
                self._transport = transport
            return self._transport

    def _on_datagram(self, data: bytes) -> None:
        cookie, sep, body = data.partition(b" ")
        waiting = self._pending.get(cookie)
        if not sep or waiting is None or waiting.done():
            return  # a late duplicate reply, or nothing we sent
        try:
            decoded = bencode.decode(body)
        except bencode.BencodeError:
            log.warning("rtpengine sent an unreadable reply; waiting for a retransmission")
            return
        if not isinstance(decoded, dict):
            log.warning("rtpengine reply is not a dictionary; waiting for a retransmission")
            return
        waiting.set_result({key.decode("utf-8", "replace"): v for key, v in decoded.items()})

    def _on_connection_lost(self) -> None:
        self._transport = None


def _checked(command: str, reply: NgReply) -> NgReply:
    if text(reply.get("result")) != "error":
        if warning := text(reply.get("warning")):
            log.warning("rtpengine %s: %s", command, warning)
        return reply
    reason = text(reply.get("error-reason")) or "no reason given"
    if reason.lower() == _UNKNOWN_CALL:
        raise RecordingGone(f"rtpengine {command}: {reason}")
    if reason.lower() == _UNRECOGNIZED:
        raise UnrecognizedCommand(f"rtpengine {command}: {reason}")
    raise ProviderRejected(f"rtpengine {command}: {reason}")


# ---- control --------------------------------------------------------------------------------


class RtpengineController(RecordingController):
    """Pauses and resumes the recording of a call that rtpengine relays.

    ``pause``: ``block DTMF`` (when configured), then ``pause recording``, or on a daemon that
    does not know it, ``stop recording``. ``resume``: ``start recording`` (which continues a
    paused file, or opens a new one after a stop), then ``unblock DTMF``. Every command is
    idempotent on the daemon, so the gating service can retry any of them.

    The controller trusts nothing it remembers for correctness: every pause tries
    ``pause recording`` first (the daemon may have been upgraded, or another replica may have
    paused this call), and resume always sends ``start recording``. What it remembers — which
    calls fell back to stop/start, and into how many files their media was split — is only
    reported (logs, the readiness check).

    rtpengine drops the paused media rather than writing silence, whatever ``pause_behavior``
    the IVR asks for: the recording skips the payment.
    """

    name = "rtpengine"
    # ng commands are keyed by call-id and act on everything recorded for the call.
    call_level_covers_all = True

    def __init__(self, client: NgClient, *, block_dtmf: bool, timeout_s: float) -> None:
        self.client = client
        self.block_dtmf = block_dtmf
        self.timeout_s = timeout_s
        # None until the daemon has answered a pause: does it know "pause recording"?
        self.pause_supported: bool | None = None
        # call-id → how the stop/start fallback has split its media so far (bounded, LRU).
        self._splits: OrderedDict[str, _Split] = OrderedDict()

    async def pause(self, target: ControlTarget, behavior: PauseBehavior) -> list[ControlOutcome]:
        """Block keypad events, then pause (or stop) recording the whole call."""
        call_id = target.provider_call_id
        try:
            return await self._pause(target, call_id)
        except RecordingGone as exc:
            # The IVR names the call; a call-id rtpengine does not know is more likely a
            # mismatch (topology hiding, another leg's id) than a call nothing records.
            # Refuse rather than answer "safe".
            raise ProviderRejected(f"rtpengine does not know this call-id: {exc}") from exc

    async def _pause(self, target: ControlTarget, call_id: str) -> list[ControlOutcome]:
        if self.block_dtmf:
            # First, so that once the pause is confirmed the agent cannot hear digits either;
            # a block that fails fails the pause, and the IVR is told not to collect.
            await self._ok("block DTMF", call_id)
        try:
            await self._ok("pause recording", call_id)
            self.pause_supported = True
        except UnrecognizedCommand:
            if self.pause_supported is not False:
                log.warning(
                    "rtpengine at %s does not know 'pause recording': stopping and restarting "
                    "recordings instead, so each payment splits a call's media into files",
                    self.client.address,
                )
            self.pause_supported = False
            await self._ok("stop recording", call_id)
            self._remember_stop(call_id)
        return _outcomes(target, ConfirmedState.PAUSED)

    async def resume(self, target: ControlTarget) -> list[ControlOutcome]:
        """Start recording again (continuing the file, or a new one after a stop), then let
        keypad events through."""
        call_id = target.provider_call_id
        # Recording first: while it is unconfirmed, digits stay blocked (fail closed).
        await self._ok("start recording", call_id)
        split = self._splits.get(call_id)
        if split is not None and split.stopped:
            # Only a start after our stop opens a file; a retried resume does not.
            split.files, split.stopped = split.files + 1, False
            log.info("rtpengine recording resumed in a new file (file %d of the call)", split.files)
        if self.block_dtmf:
            await self._ok("unblock DTMF", call_id)
        return _outcomes(target, ConfirmedState.RECORDING)

    def split_files(self, provider_call_id: str) -> int | None:
        """How many files this process knows the call's media was split into by the stop/start
        fallback (None: not split, or not by this process)."""
        split = self._splits.get(provider_call_id)
        return None if split is None else split.files

    async def aclose(self) -> None:
        """Close the ng socket."""
        await self.client.aclose()

    async def probe(self, timeout_s: float) -> str:
        """ng ``ping``, answered ``pong`` by a live daemon (no call is touched)."""
        if not await self.client.ping(timeout_s):
            raise ProviderRejected("rtpengine answered ping without 'pong'")
        return "pong"

    def describe(self) -> str:
        summary = f"rtpengine ng at {self.client.address}"
        if self.pause_supported is False:
            summary += " (no 'pause recording': stop/start fallback splits media into files)"
        return summary

    async def _ok(self, command: str, call_id: str) -> None:
        reply = await self.client.command(command, {"call-id": call_id}, self.timeout_s)
        result = text(reply.get("result"))
        if result != "ok":
            raise ProviderRejected(f"rtpengine {command}: unexpected result {result!r}")

    def _remember_stop(self, call_id: str) -> None:
        # A call's first fallback stop ends its first file; the resume will open the second.
        split = self._splits.setdefault(call_id, _Split())
        split.stopped = True
        self._splits.move_to_end(call_id)
        while len(self._splits) > _MAX_REMEMBERED_CALLS:
            self._splits.popitem(last=False)


@dataclass(slots=True)
class _Split:
    files: int = 1  # files the call's media is in so far
    stopped: bool = False  # stopped by our fallback, not yet started again


def _outcomes(target: ControlTarget, state: ConfirmedState) -> list[ControlOutcome]:
    if target.call_level:
        return [ControlOutcome(None, state)]
    return [ControlOutcome(ref.provider_recording_id, state) for ref in target.recordings]


# ---- recording daemon notification ----------------------------------------------------------


class MalformedNotification(ValueError):
    """An authenticated notification recgate cannot use; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class Notification:
    """A parsed finish notification: the event, and the headers to keep with it."""

    event: PbxEvent
    payload: dict[str, str]


_HEADER_PREFIX = "x-recording-"
_MAX_ID = 255


def _epoch(headers: Mapping[str, str], name: str) -> datetime | None:
    raw = headers.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return datetime.fromtimestamp(float(raw), UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise MalformedNotification(f"{name} is not a Unix time") from exc


def parse_notification(headers: Mapping[str, str], now: datetime) -> Notification:
    """The recording daemon's finish notification as a ``recording.completed`` event.

    The recording id is the file's name (``X-Recording-File-Name``): after a stop/start
    fallback every file of the call is its own recording. The full path on the recording host
    is kept in the stored payload, not as a media URL: recgate cannot fetch it from there.
    """
    lowered = {k.lower(): v for k, v in headers.items() if k.lower().startswith(_HEADER_PREFIX)}
    call_id = lowered.get("x-recording-call-id", "").strip()
    if not call_id:
        raise MalformedNotification("missing X-Recording-Call-ID")
    file_name = lowered.get("x-recording-file-name", "").strip()
    if not file_name:
        full = lowered.get("x-recording-full-file-name", "").strip()
        file_name = full.rsplit("/", 1)[-1]
    if not file_name:
        raise MalformedNotification("missing X-Recording-File-Name")
    if len(call_id) > _MAX_ID or len(file_name) > _MAX_ID:
        raise MalformedNotification("call id or file name longer than 255 characters")
    started = _epoch(lowered, "x-recording-stream-start-time") or _epoch(
        lowered, "x-recording-call-start-time"
    )
    ended = _epoch(lowered, "x-recording-stream-end-time") or _epoch(
        lowered, "x-recording-call-end-time"
    )
    duration = None
    if started is not None and ended is not None:
        if ended < started:
            raise MalformedNotification("recording ends before it starts")
        duration = (ended - started).total_seconds()
    media_format = lowered.get("x-recording-file-format", "").strip().lower() or None
    if media_format is not None and len(media_format) > 16:
        raise MalformedNotification("X-Recording-File-Format too long")
    key = f"{call_id}:{file_name}"
    # One notification per file; the daemon's retries repeat it exactly.
    event_id = key if len(key) <= _MAX_ID else "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    extras = {
        name: value
        for name, header in (("kind", "x-recording-kind"), ("tag", "x-recording-tag"))
        if (value := lowered.get(header, "").strip())
    }
    event = PbxEvent(
        provider="rtpengine",
        event_id=event_id,
        type=EventType.RECORDING_COMPLETED,
        occurred_at=ended or now,
        call=CallInfo(provider_call_id=call_id),
        recording=RecordingInfo(
            provider_recording_id=file_name, duration_s=duration, media_format=media_format
        ),
        extras=extras,
    )
    return Notification(event=event, payload=lowered)


class RtpengineSpoolController(RtpengineController, MediaSource):
    """rtpengine control, plus the media of the files in its recording directory."""

    def __init__(
        self, client: NgClient, spool: RecordingSpool, *, block_dtmf: bool, timeout_s: float
    ) -> None:
        super().__init__(client, block_dtmf=block_dtmf, timeout_s=timeout_s)
        self.spool = spool

    def fetch_media(self, media_url: str) -> AsyncIterator[bytes]:
        return self.spool.read(media_url)

    async def delete_media(self, provider_recording_id: str) -> None:
        await self.spool.delete(provider_recording_id)


# ---- the provider ----------------------------------------------------------------------------


def _accept_notification(incoming: IncomingWebhook, settings: Settings) -> Accepted:
    expected = settings.rtpengine_notify_token
    if expected is None:
        raise WebhookNotEnabled("rtpengine notifications are not enabled")
    # The daemon signs nothing: the token in its notify URI is the only proof of origin.
    token = incoming.query.get("token", "")
    if not token:
        raise WebhookRefused("missing query parameter: token")
    if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        raise WebhookRefused("the notify token does not match")
    # The daemon writes file names and call ids as UTF-8 bytes; HTTP headers arrive decoded as
    # Latin-1. Read them as the daemon meant them, so the checks and the scrubber see the real
    # characters (bytes that are not UTF-8 become U+FFFD, which no id may hold).
    seen = {
        name: value.encode("latin-1").decode("utf-8", errors="replace")
        for name, value in incoming.headers.items()
        if name.lower().startswith(_HEADER_PREFIX)
    }
    raw = json.dumps(seen).encode()
    try:
        notification = parse_notification(seen, incoming.now)
    except MalformedNotification as exc:
        raise WebhookMalformed(str(exc), stored=raw) from exc
    return Accepted(notification.event, dict(notification.payload), raw)


def _controller(
    settings: Settings, _client: httpx.AsyncClient, _clock: Clock
) -> RecordingController | None:
    if not settings.rtpengine_ng:
        return None
    # The UDP socket opens on first use, inside the running loop; Services.close closes it.
    ng = NgClient(settings.rtpengine_ng)
    block, timeout_s = settings.rtpengine_block_dtmf, settings.provider_request_timeout_s
    if settings.rtpengine_recording_dir is None:
        return RtpengineController(ng, block_dtmf=block, timeout_s=timeout_s)
    spool = RecordingSpool(settings.rtpengine_recording_dir)
    return RtpengineSpoolController(ng, spool, block_dtmf=block, timeout_s=timeout_s)


ADAPTER = Provider(
    name="rtpengine",
    # Calls reach recgate from a SIP proxy's reports, the recording daemon, or the spool.
    configured=lambda s: bool(s.rtpengine_ng) or s.sip_proxy_token is not None,
    controller=_controller,
    webhooks=(
        WebhookRoute(
            "rtpengine",
            "The rtpengine recording daemon's finish notification, one per file "
            "(--notify-uri https://…/v1/webhooks/rtpengine?token=… --notify-post). Everything "
            "is in X-Recording-* headers; the body (the file itself) is not read.",
            _accept_notification,
        ),
        sipproxy.ROUTE,
    ),
)
