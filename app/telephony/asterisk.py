"""Asterisk ARI: events in (relayed webhook or the ARI WebSocket), live-recording control out.

Configuration: ``RECGATE_ARI_URL`` is the ARI base *including* ``/ari``, e.g.
``http://127.0.0.1:8088/ari``; ``RECGATE_ARI_USER`` / ``RECGATE_ARI_PASSWORD`` are an
``ari.conf`` user (HTTP Basic). The event WebSocket is derived from the same base:
``ws(s)://host:port/ari/events?app=RECGATE_ARI_APP``.

Events. A call is one conversation, keyed by the caller's channel id (the channel of
``StasisStart``; the IVR uses that id as ``provider_call_id``). An agent's channel is a *leg*
of the caller's call: its id becomes an alias of the call (``CALL_LINKED``), so its events and
recordings land there, and it never starts, answers or ends a call of its own. Two things make
a channel a leg:

- its ``linkedid`` at ``StasisStart`` names another channel: Asterisk gives a channel dialled
  or originated for another (``originator``) that channel's ``linkedid``. Stock ARI does not put
  ``linkedid`` in its Channel model; ``channelvars = CHANNEL(linkedid)`` in ``ari.conf``
  adds it (``channel.channelvars["CHANNEL(linkedid)"]``), and a top-level ``linkedid`` is read
  too. Only ``StasisStart``'s is used: Asterisk rewrites ``linkedid`` whenever a bridge joins
  channels of two conversations, so later values can name an earlier caller of the agent.
- it shares a mixing bridge with the caller (``ChannelEnteredBridge``, ``BridgeCreated``): the
  event names every channel in the bridge and the bridge (``bridge:<id>``); ingest makes them
  one call, kept under the oldest of their calls (the caller's, who was there first). Holding
  bridges (callers waiting apart) link nothing.

Recordings are ARI *live recordings*, named by ``LiveRecording.name``, on a channel
(``target_uri`` ``channel:<id>``) or a bridge (``bridge:<id>``): each lands on the call its
channel or bridge belongs to. ARI events carry no id of their own: recgate's event id is built
from the event type, the object it is about and ARI's timestamp, so the same event relayed
twice, or received both relayed and over the WebSocket, is stored once.

Control (ARI ``recordings.json``, ``res_stasis_recording.c``): ``POST
/recordings/live/{name}/mute`` (behaviour ``silence``: silence is written, the timeline kept) or
``/pause`` (``skip``: nothing is written), ``DELETE`` of the same path to resume. 204 confirms;
404 means the live recording no longer exists; 409 "Recording not in session" means it is
still ``queued`` (or finishing) and is retried. Pausing a paused recording and unmuting an
unmuted one are no-ops in ARI, so repeating a command is harmless.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.config import Settings
from app.domain.clock import Clock
from app.domain.events import CallInfo, EventType, PbxEvent, RecordingInfo
from app.domain.payloads import MalformedJson, load_json
from app.domain.states import PauseBehavior
from app.telephony.base import (
    ConfirmedState,
    ControlOutcome,
    ControlTarget,
    MediaSource,
    ProviderRejected,
    ProviderUnavailable,
    RecordingController,
    RecordingGone,
    RecordingRef,
    combine_outcomes,
    status_error,
    stream_http_media,
)
from app.telephony.provider import (
    Accepted,
    IncomingWebhook,
    Provider,
    WebhookMalformed,
    WebhookRoute,
    signed,
)

PROVIDER = "asterisk"
# A version string as Asterisk reports it ("20.5.0", "GIT-master-f0c1c1a7"); anything else is
# left out of the readiness output.
_VERSION = re.compile(r"[A-Za-z0-9._~+-]{1,40}")
BRIDGE_PREFIX = "bridge:"
CHANNEL_PREFIX = "channel:"
# The ari.conf ``channelvars`` entry that puts a channel's linkedid in every Channel object.
LINKEDID_VAR = "CHANNEL(linkedid)"
_MAX_ID = 255
_REMEMBERED_MAX = 10_000


class MalformedEvent(ValueError):
    """A signed payload that is not an ARI event recgate can read; the message is safe to show."""


# ---- events ---------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _CallerId(_Model):
    number: str | None = Field(default=None, max_length=64)


class _Dialplan(_Model):
    exten: str | None = Field(default=None, max_length=64)


class _Channel(_Model):
    id: str = Field(min_length=1, max_length=_MAX_ID)
    # Not in stock ARI's Channel model; read where a relay or a later release puts it.
    linkedid: str | None = Field(default=None, max_length=_MAX_ID)
    state: str | None = None
    caller: _CallerId | None = None
    dialplan: _Dialplan | None = None
    # ari.conf ``channelvars``: variables (and functions) ARI adds to every Channel object.
    channelvars: dict[str, Any] | None = None

    def conversation(self) -> str:
        """The channel's ``linkedid`` (the oldest channel of its conversation), else itself."""
        found = self.linkedid
        if not found and self.channelvars:
            var = self.channelvars.get(LINKEDID_VAR)
            found = var if isinstance(var, str) and len(var) <= _MAX_ID else None
        return found or self.id


class _Bridge(_Model):
    id: str = Field(min_length=1, max_length=_MAX_ID - len(BRIDGE_PREFIX))
    # "mixing" or "holding" (bridges.json); a holding bridge keeps its channels apart.
    bridge_type: str | None = Field(default=None, max_length=64)
    channels: list[Annotated[str, Field(min_length=1, max_length=_MAX_ID)]] = Field(
        default_factory=list
    )

    @property
    def mixing(self) -> bool:
        return self.bridge_type != "holding"


class _LiveRecording(_Model):
    name: str = Field(min_length=1, max_length=_MAX_ID)
    format: str | None = Field(default=None, max_length=16)
    target_uri: str = Field(min_length=1, max_length=_MAX_ID)
    state: str | None = None
    duration: float | None = Field(default=None, ge=0)
    cause: str | None = Field(default=None, max_length=255)


class _ChannelEvent(_Model):
    channel: _Channel


class _ChannelDestroyedEvent(_Model):
    channel: _Channel
    cause: int | None = None
    cause_txt: str | None = Field(default=None, max_length=255)


class _BridgeEvent(_Model):
    bridge: _Bridge


class _EnteredBridgeEvent(_Model):
    bridge: _Bridge
    # Optional in events.json: a bridge can be entered by something that is not a channel
    # recgate could key a call by.
    channel: _Channel | None = None


class _RecordingEvent(_Model):
    recording: _LiveRecording


# Every other ARI event (DTMF digits, playbacks, variables …) says nothing recgate needs; it is
# neither validated nor stored, which also keeps keyed digits out of the inbox. BridgeDestroyed
# is among them: a bridge recording ends with its own RecordingFinished, and every recording of
# a call is stopped when the call ends.
_HANDLED = frozenset(
    {
        "StasisStart",
        "ChannelStateChange",
        "ChannelDestroyed",
        "ChannelEnteredBridge",
        "BridgeCreated",
        "RecordingStarted",
        "RecordingFinished",
        "RecordingFailed",
    }
)


def parse_body(body: bytes) -> dict[str, Any]:
    """The raw body of a relayed event as a JSON object; :class:`MalformedEvent` otherwise."""
    try:
        data = load_json(body)
    except MalformedJson as exc:
        raise MalformedEvent(str(exc)) from exc
    if not isinstance(data, dict):
        raise MalformedEvent("body is not a JSON object")
    return data


def parse_timestamp(value: str) -> datetime:
    """ARI's event time, e.g. ``2026-11-28T10:00:00.123+0000``, as an aware UTC datetime.

    ARI writes the offset without a colon (``%z``); ISO 8601 forms with ``Z`` or ``+00:00``
    (as a relay may re-serialise it) are read too.
    """
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise MalformedEvent("timestamp is not an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        raise MalformedEvent("timestamp must carry a time zone")
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01T00:00+0100 is before the calendar's start in UTC
        raise MalformedEvent("timestamp is out of range") from exc


def parse_event(
    data: dict[str, Any], *, now: datetime, ari_url: str | None = None
) -> PbxEvent | None:
    """One ARI event object as a normalised event, or None when it says nothing recgate needs.

    ``now`` stands in for an event without a timestamp (optional in events.json); ``ari_url``
    (the ARI base, with ``/ari``) is where a finished recording's stored file is fetched from.
    Raises :class:`MalformedEvent` for an event recgate handles whose fields are missing or
    wrong.
    """
    kind = data.get("type")
    if not isinstance(kind, str):
        raise MalformedEvent("type is missing")
    if kind not in _HANDLED:
        return None
    raw_ts = data.get("timestamp")
    if raw_ts is not None and not isinstance(raw_ts, str):
        raise MalformedEvent("timestamp is not a string")
    occurred_at = parse_timestamp(raw_ts) if raw_ts else None
    asterisk_id = data.get("asterisk_id")
    origin = asterisk_id if isinstance(asterisk_id, str) and asterisk_id else None
    try:
        return _map(kind, data, _Stamp(kind, occurred_at, origin, now), ari_url)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in err["loc"]) or "body" for err in exc.errors()})
        raise MalformedEvent(f"{kind}: invalid fields: " + ", ".join(fields)) from exc


class _Stamp:
    """Builds the event id and time for one ARI event."""

    def __init__(
        self, kind: str, occurred_at: datetime | None, origin: str | None, now: datetime
    ) -> None:
        self.kind = kind
        self.occurred_at = occurred_at
        self.origin = origin
        self.now = now

    def event_id(self, *objects: str) -> str:
        # ARI times are to the millisecond; with the type and the object they identify one
        # event. Without a timestamp (optional in events.json) the type and object alone are
        # the natural key: each of the mapped events happens once per object.
        parts = [self.origin or "-", self.kind, *objects]
        if self.occurred_at is not None:
            parts.append(self.occurred_at.isoformat(timespec="microseconds"))
        event_id = "|".join(parts)
        if len(event_id) > _MAX_ID:
            event_id = "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()
        return event_id

    def at(self) -> datetime:
        return self.occurred_at if self.occurred_at is not None else self.now


def _map(kind: str, data: dict[str, Any], stamp: _Stamp, ari_url: str | None) -> PbxEvent | None:
    if kind == "StasisStart":
        channel = _ChannelEvent.model_validate(data).channel
        conversation = channel.conversation()
        if conversation != channel.id:
            # Dialled or originated for another channel: a leg of that channel's call.
            return _link(stamp, conversation, (channel.id,), channel.id)
        return _call_event(
            stamp,
            EventType.CALL_STARTED,
            channel.id,
            CallInfo(
                provider_call_id=channel.id,
                from_number=(channel.caller.number or None) if channel.caller else None,
                to_number=(channel.dialplan.exten or None) if channel.dialplan else None,
                direction="inbound",
                # A channel already found to be a leg (in a bridge with the caller) stays one.
                via_alias=True,
            ),
        )
    if kind == "ChannelStateChange":
        channel = _ChannelEvent.model_validate(data).channel
        if channel.state != "Up":
            return None
        return _call_event(
            stamp, EventType.CALL_ANSWERED, channel.id, CallInfo(channel.id, via_alias=True)
        )
    if kind == "ChannelDestroyed":
        destroyed = _ChannelDestroyedEvent.model_validate(data)
        extras = {"cause": str(destroyed.cause)} if destroyed.cause is not None else {}
        if destroyed.cause_txt:
            extras["cause_txt"] = destroyed.cause_txt
        # Resolved like every channel: an agent hanging up ends its leg, not the caller's call.
        return _call_event(
            stamp,
            EventType.CALL_ENDED,
            destroyed.channel.id,
            CallInfo(destroyed.channel.id, via_alias=True),
            extras=extras,
        )
    if kind == "ChannelEnteredBridge":
        entered = _EnteredBridgeEvent.model_validate(data)
        if entered.channel is None or not entered.bridge.mixing:
            return None
        channel, bridge = entered.channel, entered.bridge
        alias = BRIDGE_PREFIX + bridge.id
        return _link(stamp, channel.id, (alias, *bridge.channels), channel.id, alias)
    if kind == "BridgeCreated":
        bridge = _BridgeEvent.model_validate(data).bridge
        # An application creates a bridge empty and adds channels later; channels already in
        # it enter it too. Either way ChannelEnteredBridge links them, naming every channel in
        # the bridge; a bridge created around one channel is linked to it at once.
        if len(bridge.channels) != 1 or not bridge.mixing:
            return None
        alias = BRIDGE_PREFIX + bridge.id
        return _link(stamp, bridge.channels[0], (alias,), bridge.channels[0], alias)
    return _recording_event(kind, _RecordingEvent.model_validate(data).recording, stamp, ari_url)


def _call_event(
    stamp: _Stamp,
    kind: EventType,
    channel_id: str,
    call: CallInfo,
    extras: dict[str, str] | None = None,
) -> PbxEvent:
    return PbxEvent(
        provider=PROVIDER,
        event_id=stamp.event_id(channel_id),
        type=kind,
        occurred_at=stamp.at(),
        call=call,
        extras=extras or {},
    )


def _link(stamp: _Stamp, call_key: str, names: Iterable[str], *objects: str) -> PbxEvent:
    """``call_key`` and ``names`` (channels, ``bridge:<id>``) are one conversation from now on.

    Which of their calls it is kept under is for ingest to decide (see
    :func:`app.domain.call_facts.plan_calls`); every other name becomes an alias of it.
    """
    return PbxEvent(
        provider=PROVIDER,
        event_id=stamp.event_id(*objects),
        type=EventType.CALL_LINKED,
        occurred_at=stamp.at(),
        call=CallInfo(call_key, via_alias=True),
        aliases=tuple(dict.fromkeys(name for name in names if name != call_key)),
    )


def stored_media_url(ari_url: str, name: str) -> str:
    """Where ARI serves a finished recording's file (``GET /recordings/stored/{name}/file``)."""
    return f"{ari_url.rstrip('/')}/recordings/stored/{quote(name, safe='')}/file"


def _recording_event(
    kind: str, recording: _LiveRecording, stamp: _Stamp, ari_url: str | None
) -> PbxEvent:
    target = recording.target_uri
    container: str | None = None
    if target.startswith(CHANNEL_PREFIX):
        call_key = target.removeprefix(CHANNEL_PREFIX)
    elif target.startswith(BRIDGE_PREFIX):
        # Resolved by ingest to the call the bridge is linked to; until the link arrives the
        # recording is held on a call named by the bridge, which the link then joins to it.
        call_key = container = target
    else:
        # A recording recgate cannot place on a call is not something to drop quietly.
        raise MalformedEvent(f"{kind}: recording.target_uri is neither channel: nor bridge:")
    if not call_key.removeprefix(BRIDGE_PREFIX):
        raise MalformedEvent(f"{kind}: recording.target_uri names no object")
    media_url = None
    extras: dict[str, str] = {}
    if kind == "RecordingStarted":
        event_type = EventType.RECORDING_STARTED
    elif kind == "RecordingFailed":
        event_type = EventType.RECORDING_FAILED
    elif recording.state == "canceled":
        # DELETE /recordings/live/{name} stops the recording and discards the file: it ended,
        # and there is no media to keep.
        event_type = EventType.RECORDING_STOPPED
    elif ari_url:
        # "done": Asterisk has closed the file before it publishes RecordingFinished, so the
        # stored recording of the same name can be fetched now. Completed implies stopped.
        event_type = EventType.RECORDING_COMPLETED
        media_url = stored_media_url(ari_url, recording.name)
    else:
        event_type = EventType.RECORDING_STOPPED
    if recording.cause:
        extras["cause"] = recording.cause
    if recording.state:
        extras["state"] = recording.state
    return PbxEvent(
        provider=PROVIDER,
        event_id=stamp.event_id(recording.name),
        type=event_type,
        occurred_at=stamp.at(),
        # Either way a name to resolve: an agent's channel is a leg of the caller's call.
        call=CallInfo(call_key, via_alias=True),
        recording=RecordingInfo(
            provider_recording_id=recording.name,
            media_url=media_url,
            duration_s=None if event_type == EventType.RECORDING_STARTED else recording.duration,
            media_format=recording.format,
            container_id=container,
        ),
        extras=extras,
    )


# ---- control --------------------------------------------------------------------------------

_Operation = Literal["mute", "pause"]
_OPERATION: dict[PauseBehavior, _Operation] = {
    PauseBehavior.SILENCE: "mute",
    PauseBehavior.SKIP: "pause",
}


class AsteriskController(RecordingController, MediaSource):
    """Pauses and resumes ARI live recordings by name; fetches and deletes stored recordings.

    ARI has no call-level pause: it controls a *named* live recording, and recgate learns the
    names only from ``RecordingStarted``. A command for a call with no recording known is
    therefore not answered "nothing is recording" (which would read as safe): a recording can
    exist on Asterisk before recgate hears of it (still ``queued``, or its event in flight).
    It raises :class:`ProviderUnavailable` instead, so the gating loop retries until a
    ``RecordingStarted`` names a recording to pause, and fails closed at the deadline.
    """

    name = PROVIDER
    call_level_covers_all = False

    def __init__(self, client: httpx.AsyncClient, ari_url: str, user: str, password: str) -> None:
        self.client = client
        self.ari_url = ari_url.rstrip("/")
        self.auth = httpx.BasicAuth(user, password)
        # Which operations paused each recording, so its resume undoes exactly those: on
        # Asterisk releases without the fix for asterisk#322 the "muted" flag survives an
        # unmute, and a later needless unmute toggles the recording back into mute. A
        # recording recgate does not remember (after a restart, or paused by another replica)
        # gets both undone: unpausing a recording that is not paused and unmuting one that is
        # not muted are no-ops in ARI.
        self._paused_with: dict[str, set[_Operation]] = {}

    def live_url(self, name: str, operation: _Operation) -> str:
        return f"{self.ari_url}/recordings/live/{quote(name, safe='')}/{operation}"

    async def pause(self, target: ControlTarget, behavior: PauseBehavior) -> list[ControlOutcome]:
        """Mute (silence) or pause (skip) every named recording; 204 confirms each."""
        names = _names(target, "pause")
        operation = _OPERATION[behavior]
        for name in names:
            # Remembered before sending: a pause that times out may still have landed.
            self._paused_with.setdefault(name, set()).add(operation)
        while len(self._paused_with) > _REMEMBERED_MAX:
            # Recordings that ended while paused are never resumed; forget the oldest.
            del self._paused_with[next(iter(self._paused_with))]
        results = await asyncio.gather(
            *(self._command("POST", name, (operation,), ConfirmedState.PAUSED) for name in names),
            return_exceptions=True,
        )
        return combine_outcomes(names, results)

    async def resume(self, target: ControlTarget) -> list[ControlOutcome]:
        """Undo the pause of every named recording (``DELETE`` of the path that paused it)."""
        if target.call_level:
            # recgate never pauses at call level on ARI (see the class docstring), so nothing
            # was paused that a call-level resume would have to undo.
            return []
        names = _names(target, "resume")
        results = await asyncio.gather(
            *(
                self._command("DELETE", name, self._undo(name), ConfirmedState.RECORDING)
                for name in names
            ),
            return_exceptions=True,
        )
        outcomes = combine_outcomes(names, results)
        for name in names:
            self._paused_with.pop(name, None)
        return outcomes

    def _undo(self, name: str) -> tuple[_Operation, ...]:
        return tuple(sorted(self._paused_with.get(name) or ("mute", "pause")))

    async def _command(
        self,
        method: Literal["POST", "DELETE"],
        name: str,
        operations: Iterable[_Operation],
        confirms: ConfirmedState,
    ) -> ControlOutcome:
        for operation in operations:
            response = await self._request(method, self.live_url(name, operation))
            status = response.status_code
            what = f"ARI {method} {operation}"
            if status == 404:
                self._paused_with.pop(name, None)
                raise RecordingGone(f"{what}: live recording not found")
            if status == 409:
                # "Recording not in session": still queued (or just finishing). Retryable: it
                # goes live (then 204) or away (then 404) within moments.
                raise ProviderUnavailable(f"{what}: recording not in session (409)")
            if status not in (200, 204):
                raise status_error(status, what)
        return ControlOutcome(name, confirms)

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.client.request(method, url, auth=self.auth, **kwargs)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"ARI {method}: {type(exc).__name__}") from exc

    async def fetch_media(self, media_url: str) -> AsyncIterator[bytes]:
        """Stream a stored recording (``GET /recordings/stored/{name}/file``)."""
        if not media_url.startswith(self.ari_url + "/recordings/stored/"):
            raise ProviderRejected("ARI media URL is not on the configured ARI base")
        async for chunk in stream_http_media(self.client, media_url, self.auth, "ARI"):
            yield chunk

    async def delete_media(self, provider_recording_id: str) -> None:
        """Delete Asterisk's stored copy; a copy already gone is not an error."""
        url = f"{self.ari_url}/recordings/stored/{quote(provider_recording_id, safe='')}"
        response = await self._request("DELETE", url)
        if response.status_code in (200, 204, 404):
            return
        raise status_error(response.status_code, "ARI delete")

    def describe(self) -> str:
        return f"asterisk ARI at {httpx.URL(self.ari_url).host}"

    async def probe(self, timeout_s: float) -> str:
        """``GET /asterisk/info``: ARI answers, and takes recgate's user and password."""
        response = await self._request("GET", f"{self.ari_url}/asterisk/info", timeout=timeout_s)
        if response.status_code in (401, 403):
            raise ProviderRejected(
                f"ARI asterisk info: HTTP {response.status_code} (RECGATE_ARI_USER or "
                "RECGATE_ARI_PASSWORD is refused)"
            )
        if response.status_code != 200:
            raise status_error(response.status_code, "ARI asterisk info")
        try:
            system = response.json().get("system") or {}
            version = str(system.get("version") or "")
        except (ValueError, AttributeError) as exc:
            raise ProviderRejected("ARI asterisk info: the answer is not ARI's JSON") from exc
        return f"Asterisk {version}" if _VERSION.fullmatch(version) else "Asterisk"


def _names(target: ControlTarget, action: str) -> list[str]:
    if target.call_level or any(ref.provider_recording_id is None for ref in target.recordings):
        raise ProviderUnavailable(
            f"ARI {action}: no live recording known for this call yet; ARI controls "
            "recordings by name, so recgate waits for RecordingStarted"
        )
    return [_name(ref) for ref in target.recordings]


def _name(ref: RecordingRef) -> str:
    assert ref.provider_recording_id is not None
    return ref.provider_recording_id


# ---- the provider ----------------------------------------------------------------------------


def _accept_relayed(incoming: IncomingWebhook, settings: Settings) -> Accepted:
    event_id = signed(settings.webhook_key("asterisk"), incoming, settings)
    try:
        payload = parse_body(incoming.body)
        event = parse_event(payload, now=incoming.now, ari_url=settings.ari_url)
    except MalformedEvent as exc:
        raise WebhookMalformed(str(exc), event_id=event_id, stored=incoming.body) from exc
    # None: events recgate does not map (DTMF digits among them) stay out of the inbox.
    return Accepted(event, payload, incoming.body)


def _controller(
    settings: Settings, client: httpx.AsyncClient, _clock: Clock
) -> RecordingController | None:
    # Without credentials there is no controller: payments on Asterisk calls then fail closed
    # as "control not configured" rather than as a string of 401s.
    if not settings.ari_url or not settings.ari_user or settings.ari_password is None:
        return None
    return AsteriskController(
        client, settings.ari_url, settings.ari_user, settings.ari_password.get_secret_value()
    )


ADAPTER = Provider(
    name="asterisk",
    configured=lambda settings: bool(settings.ari_url),
    controller=_controller,
    webhooks=(
        WebhookRoute(
            "asterisk",
            "One ARI event object, relayed by the call-control application and signed like "
            "generic webhooks, with RECGATE_ASTERISK_WEBHOOK_SECRET. Its id is built from the "
            "ARI event itself, so an event relayed twice, or also consumed from the ARI "
            "WebSocket, is applied once.",
            _accept_relayed,
        ),
    ),
)
