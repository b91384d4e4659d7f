"""Genesys Cloud: conversation events from Amazon EventBridge in, secure pause out.

**Control.** Platform API with an OAuth client-credentials token (``POST {login}/oauth/token``,
Basic ``client_id:client_secret``, ``grant_type=client_credentials`` → ``access_token``,
``expires_in``). The token is kept until shortly before it expires; concurrent requests share
one fetch, and an API ``401`` fetches a new one once and retries once.

- Pause: ``PUT {api}/api/v2/conversations/calls/{conversationId}/recordingstate``
  ``{"recordingState": "PAUSED"}`` ("'paused' initiates a secure pause"); resume: ``ACTIVE``.
  The answer to the PUT is not proof: recgate reads the conversation back
  (``GET {api}/api/v2/conversations/calls/{conversationId}``) and only its ``recordingState``
  counts (``paused``/``PAUSED`` confirms a pause, ``active`` a resume, ``none`` means nothing is
  recorded), compared without regard to case, because the API's models spell it both ways. A
  participant still connected whose own ``recordingState`` reads ``active`` vetoes a pause. A
  read-back still showing the old state may be Genesys catching up: it is
  :class:`ProviderUnavailable`, so the gate resends the (idempotent) PUT and reads again within
  its pause deadline, and fails closed at the deadline. A read-back with no state at all is
  refused.
- One command covers the whole conversation, so the adapter models **one recording per
  conversation**, ``{conversationId}:call``; a call-level pause confirmed ``paused`` names it.
- ``pause_behavior``: a secure pause leaves the span out of the recording, which is ``skip``,
  and what a payment start that names no behaviour gets here. Genesys cannot record silence
  instead, so an explicit ``silence`` is refused before any request (fails closed).
- Errors: a 404 on a pause or its read-back is refused, never "nothing records" (Genesys keeps
  ended conversations readable: a wrong id, region or organisation is likelier); on a resume,
  a Genesys 404 means nothing is left to resume. 401 after a fresh token, 403 and other 4xx are
  refusals; 429, 5xx and network errors are retried by the gate. A 429's ``Retry-After`` is waited out only when it ends within the
  pause deadline; a longer one is a refusal (fail closed now rather than at the deadline).

**Events.** Genesys Cloud's EventBridge integration delivers each event to an EventBridge bus; a
rule sends it, unchanged, to an API destination: ``POST /v1/webhooks/genesys`` with the
connection's API key in ``X-Recgate-Token`` (``RECGATE_GENESYS_WEBHOOK_TOKEN``, compared in
constant time). The envelope is EventBridge's (``id``, ``detail-type``, ``source``, ``time``,
``detail``) around Genesys' ``detail`` (``topicName``, ``eventBody``, ``timestamp``). The
EventBridge ``id`` is the event id, so a redelivery is a duplicate.

- ``v2.detail.events.conversation.{id}.customer.start`` → ``call.started`` (ANI, DNIS,
  direction); ``….acd.end`` with ``acdOutcome`` ``ANSWERED`` → ``call.answered`` (the agent is
  ``answeredUserId``); ``….customer.end`` → ``call.ended``. Occurred at ``eventTime``.
- ``v2.routing.queues.{id}.conversations.calls`` and ``v2.users.{id}.conversations.calls``: the
  call conversation as it is now. A snapshot is a state, not a transition, and becomes one
  event: the conversation ended (every participant disconnected or terminated) →
  ``call.ended``; else ``recordingState`` ``active`` → ``recording.resumed`` and ``paused`` →
  ``recording.paused``; else an agent connected → ``call.answered``, the customer connected →
  ``call.started``. ``active`` is always reported as a resume, the one report the gate never
  dismisses during a payment: a snapshot cannot say whether the recording has just started or
  was paused before. Occurred at ``detail.timestamp`` (milliseconds), else ``time``.
- Any other topic, or another medium than voice, is acknowledged and ignored. A payload that is
  not such an envelope is malformed (422, dead-lettered).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Final, Literal
from urllib.parse import quote

import httpx

from app.config import Settings
from app.domain.clock import Clock
from app.domain.events import CallInfo, EventType, PbxEvent, RecordingInfo
from app.domain.payloads import MalformedJson, load_json
from app.domain.states import PauseBehavior
from app.telephony.base import (
    ConfirmedState,
    ControlOutcome,
    ControlTarget,
    ProviderRejected,
    ProviderUnavailable,
    RecordingController,
    json_object,
    status_error,
)
from app.telephony.provider import (
    Accepted,
    IncomingWebhook,
    Provider,
    WebhookMalformed,
    WebhookRoute,
    token_checked,
)

PROVIDER: Final = "genesys"
# A participant attribute (Architect "Set Participant Data") naming the call's service area.
SERVICE_AREA_ATTRIBUTE: Final = "recgate_service_area"
_MAX_ID = 255
_MAX_FIELD = 128

State = Literal["active", "paused", "none"]
_STATES: Final = frozenset({"active", "paused", "none"})
_ENDED: Final = frozenset({"disconnected", "terminated"})
_AGENTS: Final = frozenset({"agent", "user"})
_CUSTOMERS: Final = frozenset({"customer"})


def recording_id(conversation_id: str) -> str:
    """recgate's name for the one recording of a Genesys call conversation."""
    return f"{conversation_id}:call"


def api_base(settings: Settings) -> str:
    return (settings.genesys_api_base or f"https://api.{settings.genesys_region}").rstrip("/")


def login_base(settings: Settings) -> str:
    return (settings.genesys_login_base or f"https://login.{settings.genesys_region}").rstrip("/")


# ---- OAuth ----------------------------------------------------------------------------------

# Used when a token answer gives no lifetime: short, so a token is never trusted for long.
_UNSTATED_LIFETIME_S = 60.0


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    # When to fetch a new one: shortly before the token expires.
    renew_at: datetime


class ClientCredentials:
    """OAuth client-credentials tokens of one Genesys Cloud client.

    A token is kept until a tenth of its lifetime (at most a minute) before it expires. Whoever
    needs a token while none is valid fetches it under a lock, so requests that arrive together
    share one fetch. Neither the token nor the secret is ever put in a message or a log.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        login_base: str,
        client_id: str,
        client_secret: str,
        clock: Clock,
    ) -> None:
        self.client = client
        self.token_url = f"{login_base.rstrip('/')}/oauth/token"
        self.auth = httpx.BasicAuth(client_id, client_secret)
        self.clock = clock
        self._lock = asyncio.Lock()
        self._token: _Token | None = None

    def _valid(self) -> str | None:
        token = self._token
        if token is not None and self.clock() < token.renew_at:
            return token.value
        return None

    async def token(self, timeout_s: float | None = None) -> str:
        """A valid access token: the one kept, or a new one."""
        if (value := self._valid()) is not None:
            return value
        async with self._lock:
            if (value := self._valid()) is not None:
                return value
            return await self._fetch(timeout_s)

    async def refresh(self, refused: str, timeout_s: float | None = None) -> str:
        """A new token after the API refused ``refused``; when another request has already
        replaced it, that replacement."""
        async with self._lock:
            token = self._token
            if token is not None and token.value != refused and self.clock() < token.renew_at:
                return token.value
            self._token = None
            return await self._fetch(timeout_s)

    async def _fetch(self, timeout_s: float | None) -> str:
        extra: dict[str, Any] = {} if timeout_s is None else {"timeout": timeout_s}
        try:
            response = await self.client.post(
                self.token_url,
                data={"grant_type": "client_credentials"},
                auth=self.auth,
                headers={"accept": "application/json"},
                **extra,
            )
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"genesys token: {type(exc).__name__}") from exc
        if response.status_code in (400, 401, 403):
            error = str(json_object(response).get("error") or "")[:40]
            raise ProviderRejected(
                f"genesys token: HTTP {response.status_code}{' ' + error if error else ''} (the "
                "OAuth client id or secret is refused, or the client lacks the Client "
                "Credentials grant)"
            )
        if response.status_code != 200:
            raise status_error(response.status_code, "genesys token")
        body = json_object(response)
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            raise ProviderRejected("genesys token: answer without an access_token")
        kind = body.get("token_type")
        if kind is not None and str(kind).lower() != "bearer":
            raise ProviderRejected("genesys token: not a bearer token")
        lifetime = body.get("expires_in")
        seconds = (
            float(lifetime)
            if isinstance(lifetime, int | float) and not isinstance(lifetime, bool) and lifetime > 0
            else _UNSTATED_LIFETIME_S
        )
        margin = min(60.0, seconds / 10)
        self._token = _Token(value, self.clock() + timedelta(seconds=seconds - margin))
        return value


# ---- control --------------------------------------------------------------------------------


def _state(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) else None


def _live(participant: Any) -> bool:
    return isinstance(participant, dict) and _state(participant.get("state")) not in _ENDED


def read_recording_state(conversation: dict[str, Any]) -> State | None:
    """What a call conversation (``GET /api/v2/conversations/calls/{id}``) says about its
    recording: the conversation's ``recordingState``, unless a participant still on the call
    reports its own as ``active`` (then ``active``: a pause is not confirmed while any part of
    the call still records). Without a conversation-level state, the participants' decide.
    None when neither says anything recgate knows."""
    top = _state(conversation.get("recordingState"))
    participants = conversation.get("participants")
    own = {
        _state(p.get("recordingState"))
        for p in (participants if isinstance(participants, list) else [])
        if _live(p)
    }
    if "active" in own or top == "active":
        return "active"
    if top in ("paused", "none"):
        return "paused" if top == "paused" else "none"
    if "paused" in own:
        return "paused"
    if "none" in own:
        return "none"
    return None


def _ended(conversation: dict[str, Any]) -> bool:
    """Every participant has left: nothing of the call is left to record. (Not merely the
    customer: read wrongly, an end would close the payment and stop guarding it.)"""
    participants = [p for p in conversation.get("participants") or [] if isinstance(p, dict)]
    return bool(participants) and not any(_live(p) for p in participants)


def retry_after_s(response: httpx.Response, now: datetime) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date); None when absent or unreadable."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


_Wanted = Literal["PAUSED", "ACTIVE"]


class GenesysController(RecordingController):
    """Secure pause and resume of Genesys Cloud call conversations (Platform API)."""

    name = PROVIDER
    # The recording state is the conversation's: one command covers every recording of it.
    call_level_covers_all = True
    # A secure pause leaves the span out: the platform's own behaviour.
    default_behavior = PauseBehavior.SKIP

    def __init__(
        self,
        client: httpx.AsyncClient,
        api_base: str,
        credentials: ClientCredentials,
        clock: Clock,
        *,
        wait_limit_s: float,
    ) -> None:
        self.client = client
        self.api_base = api_base.rstrip("/")
        self.credentials = credentials
        self.clock = clock
        # The longest Retry-After worth waiting for: the gate's pause deadline.
        self.wait_limit_s = wait_limit_s

    def conversation_url(self, conversation_id: str) -> str:
        return f"{self.api_base}/api/v2/conversations/calls/{quote(conversation_id, safe='')}"

    async def pause(self, target: ControlTarget, behavior: PauseBehavior) -> list[ControlOutcome]:
        """Secure-pause the conversation's recording and confirm it by reading it back."""
        if behavior != PauseBehavior.SKIP:
            raise ProviderRejected(
                "genesys secure pause leaves the payment out of the recording and cannot "
                'record silence: leave "pause_behavior" out, or ask for "skip"'
            )
        return await self._set(target, "PAUSED")

    async def resume(self, target: ControlTarget) -> list[ControlOutcome]:
        """Resume the conversation's recording and confirm it by reading it back."""
        return await self._set(target, "ACTIVE")

    async def _set(self, target: ControlTarget, wanted: _Wanted) -> list[ControlOutcome]:
        url = self.conversation_url(target.provider_call_id)
        what = "genesys pause" if wanted == "PAUSED" else "genesys resume"
        response = await self._api(
            "PUT", f"{url}/recordingstate", what, json={"recordingState": wanted}
        )
        if not 200 <= response.status_code < 300:
            return self._refused(response, target, what, wanted)
        readback = await self._api("GET", url, f"{what} read-back")
        if readback.status_code != 200:
            return self._refused(readback, target, f"{what} read-back", wanted)
        conversation = json_object(readback)
        if _ended(conversation):
            return self._each(target, ConfirmedState.GONE, ConfirmedState.NOT_RECORDING)
        state = read_recording_state(conversation)
        if state is None:
            raise ProviderRejected(f"{what} read-back: the conversation has no recordingState")
        if state == "none":
            return self._each(target, ConfirmedState.NOT_RECORDING, ConfirmedState.NOT_RECORDING)
        if state != wanted.lower():
            # Plausibly Genesys catching up: the gate resends and reads again within its deadline.
            raise ProviderUnavailable(f"{what} read-back: recordingState still reads {state}")
        if wanted == "ACTIVE":
            return self._each(target, ConfirmedState.RECORDING, ConfirmedState.RECORDING)
        if target.call_level:
            # Something records this conversation and it is paused: name it, so the resume and
            # later events address the recording recgate now knows.
            return [
                ControlOutcome(None, ConfirmedState.PAUSED),
                ControlOutcome(recording_id(target.provider_call_id), ConfirmedState.PAUSED),
            ]
        return self._each(target, ConfirmedState.PAUSED, ConfirmedState.PAUSED)

    @staticmethod
    def _each(
        target: ControlTarget, each: ConfirmedState, call_level: ConfirmedState
    ) -> list[ControlOutcome]:
        if target.call_level:
            return [ControlOutcome(None, call_level)]
        return [ControlOutcome(ref.provider_recording_id, each) for ref in target.recordings]

    def _refused(
        self, response: httpx.Response, target: ControlTarget, what: str, wanted: _Wanted
    ) -> list[ControlOutcome]:
        status = response.status_code
        body = json_object(response)
        if status == 404 and body.get("status") == 404 and isinstance(body.get("code"), str):
            if wanted == "PAUSED" or target.call_level:
                # Never proof that nothing records: Genesys keeps ended conversations readable,
                # so a 404 is likelier a wrong id, region, organisation or division. A pause
                # is only confirmed by a read-back (an ended conversation reads as such).
                raise ProviderRejected(
                    f"{what}: conversation not found (HTTP 404): a wrong conversation id, "
                    "region or OAuth client's organisation or division?"
                )
            # Nothing left to resume.
            return self._each(target, ConfirmedState.GONE, ConfirmedState.GONE)
        code = str(body.get("code") or "")[:64]
        if status == 403:
            raise ProviderRejected(
                f"{what}: HTTP 403 {code} (the OAuth client's role needs "
                "conversation:recording:pauseOthers in the conversation's division)"
            )
        raise status_error(status, what, f" {code}" if code else "")

    async def _api(
        self,
        method: str,
        url: str,
        what: str,
        *,
        json: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        """One API request with a valid token: a 401 gets one new token and one retry, a 429
        whose Retry-After fits in the pause deadline one wait and one retry."""
        token = await self.credentials.token(timeout_s)
        response = await self._send(method, url, token, what, json, timeout_s)
        if response.status_code == 401:
            token = await self.credentials.refresh(token, timeout_s)
            response = await self._send(method, url, token, what, json, timeout_s)
            if response.status_code == 401:
                raise ProviderRejected(
                    f"{what}: HTTP 401 with a new token (the OAuth client is refused)"
                )
        if response.status_code == 429:
            wait = retry_after_s(response, self.clock())
            if wait is not None:
                if wait > self.wait_limit_s:
                    raise ProviderRejected(
                        f"{what}: rate limited for {wait:g} s, beyond the pause deadline"
                    )
                await asyncio.sleep(wait)
                response = await self._send(method, url, token, what, json, timeout_s)
        return response

    async def _send(
        self,
        method: str,
        url: str,
        token: str,
        what: str,
        json: dict[str, Any] | None,
        timeout_s: float | None,
    ) -> httpx.Response:
        extra: dict[str, Any] = {} if timeout_s is None else {"timeout": timeout_s}
        if json is not None:
            extra["json"] = json
        try:
            return await self.client.request(
                method,
                url,
                headers={"authorization": f"Bearer {token}", "accept": "application/json"},
                **extra,
            )
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"{what}: {type(exc).__name__}") from exc

    def describe(self) -> str:
        return f"genesys cloud at {httpx.URL(self.api_base).host}"

    async def probe(self, timeout_s: float) -> str:
        """A token (kept or new) and ``GET /api/v2/organizations/me``: proves the API answers
        and takes the OAuth client; the organization must be active."""
        response = await self._api(
            "GET",
            f"{self.api_base}/api/v2/organizations/me",
            "genesys organization",
            timeout_s=timeout_s,
        )
        if response.status_code == 403:
            raise ProviderRejected("genesys organization: HTTP 403 (the OAuth client is refused)")
        if response.status_code != 200:
            raise status_error(response.status_code, "genesys organization")
        state = str(json_object(response).get("state") or "")[:32]
        if state.lower() != "active":
            raise ProviderRejected(f"genesys organization is {state!r}, not 'active'")
        return "organization active"


# ---- events ---------------------------------------------------------------------------------


class MalformedEvent(ValueError):
    """An authenticated payload recgate cannot use; the message is safe to store and show."""


_DETAIL_TOPIC = re.compile(r"v2\.detail\.events\.conversation\.([^.]+)\.(.+)")
_CALLS_TOPIC = re.compile(r"v2\.(?:routing\.queues|users)\.[^.]+\.conversations\.calls")
_GENESYS_SOURCE = "aws.partner/genesys.com"


@dataclass(frozen=True, slots=True)
class Parsed:
    """An envelope as recgate reads it: the event (None: nothing recgate maps) and why not."""

    event_id: str
    event: PbxEvent | None
    ignored_as: str = "unmapped"


def _optional(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MalformedEvent(f"{name} is not a string")
    if len(value) > _MAX_ID:
        raise MalformedEvent(f"{name} is longer than {_MAX_ID} characters")
    return value


def _required(data: dict[str, Any], name: str) -> str:
    value = _optional(data, name)
    if value is None:
        raise MalformedEvent(f"{name} is missing")
    return value


def _object(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    if not isinstance(value, dict):
        raise MalformedEvent(f"{name} is not an object")
    return value


def _iso(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise MalformedEvent(f"{name} is not an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        raise MalformedEvent(f"{name} has no time zone")
    return parsed


def _epoch_ms(value: Any, name: str) -> datetime:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedEvent(f"{name} is not a time in milliseconds")
    try:
        return datetime.fromtimestamp(value / 1000, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise MalformedEvent(f"{name} is out of range") from exc


def _number(value: Any) -> str | None:
    """An ANI/DNIS as a number: ``tel:+441632960001`` → ``+441632960001``."""
    if not isinstance(value, str) or not value.strip():
        return None
    number = value.strip().removeprefix("tel:")
    return number[:64]


def _short(value: Any) -> str | None:
    return value[:_MAX_FIELD] if isinstance(value, str) and value else None


def _direction(value: Any) -> str | None:
    direction = _state(value)
    return direction if direction in ("inbound", "outbound") else None


def parse_envelope(data: Any, service_area: str | None) -> Parsed:
    """An EventBridge event carrying a Genesys Cloud notification, as a normalised event;
    :class:`MalformedEvent` when it is not one."""
    if not isinstance(data, dict):
        raise MalformedEvent("body is not a JSON object")
    event_id = _required(data, "id")
    source = _required(data, "source")
    if not source.startswith(_GENESYS_SOURCE):
        raise MalformedEvent("source is not a Genesys Cloud partner event source")
    detail = _object(data, "detail")
    topic = _required(detail, "topicName")
    body = _object(detail, "eventBody")
    stamp = _optional(detail, "timestamp") or _required(data, "time")
    sent_at = _iso(stamp, "detail.timestamp" if detail.get("timestamp") else "time")
    if found := _DETAIL_TOPIC.fullmatch(topic):
        return _detail_event(event_id, found.group(1), found.group(2), body, sent_at, service_area)
    if _CALLS_TOPIC.fullmatch(topic):
        return _snapshot_event(event_id, body, sent_at, service_area)
    return Parsed(event_id, None, "unmapped-topic")


def _detail_event(
    event_id: str,
    topic_conversation: str,
    kind: str,
    body: dict[str, Any],
    sent_at: datetime,
    service_area: str | None,
) -> Parsed:
    conversation = _required(body, "conversationId")
    if conversation != topic_conversation:
        raise MalformedEvent("eventBody.conversationId is not the topic's conversation")
    media = _state(body.get("mediaType"))
    if media is not None and media != "voice":
        return Parsed(event_id, None, "not-voice")
    occurred = _epoch_ms(body["eventTime"], "eventTime") if "eventTime" in body else sent_at
    agent = None
    if kind == "customer.start":
        kind_of = EventType.CALL_STARTED
    elif kind == "customer.end":
        kind_of = EventType.CALL_ENDED
    elif kind == "acd.end" and _state(body.get("acdOutcome")) == "answered":
        kind_of, agent = EventType.CALL_ANSWERED, _short(body.get("answeredUserId"))
    else:
        return Parsed(event_id, None, "unmapped-detail")
    return Parsed(
        event_id,
        PbxEvent(
            provider=PROVIDER,
            event_id=event_id,
            type=kind_of,
            occurred_at=occurred,
            call=CallInfo(
                provider_call_id=conversation,
                from_number=_number(body.get("ani")),
                to_number=_number(body.get("dnis")),
                direction=_direction(body.get("direction")),
                service_area=service_area,
                agent_id=agent,
            ),
        ),
    )


def _snapshot_event(
    event_id: str, body: dict[str, Any], sent_at: datetime, service_area: str | None
) -> Parsed:
    conversation = _required(body, "id")
    raw_participants = body.get("participants", [])
    if not isinstance(raw_participants, list) or not all(
        isinstance(p, dict) for p in raw_participants
    ):
        raise MalformedEvent("participants is not a list of objects")
    participants: Sequence[dict[str, Any]] = raw_participants
    state = _state(body.get("recordingState"))
    if body.get("recordingState") is not None and state not in _STATES:
        raise MalformedEvent("recordingState is not one of active, paused, none")
    customer = next((p for p in participants if _state(p.get("purpose")) in _CUSTOMERS), None)
    agent = next(
        (p for p in participants if _state(p.get("purpose")) in _AGENTS and _connected(p)), None
    )
    if customer is not None and service_area is None:
        attributes = customer.get("attributes")
        if isinstance(attributes, dict):
            service_area = _short(attributes.get(SERVICE_AREA_ATTRIBUTE))
    recording = None
    if _ended(body):
        kind = EventType.CALL_ENDED
    elif state == "active":
        kind, recording = EventType.RECORDING_RESUMED, RecordingInfo(recording_id(conversation))
    elif state == "paused":
        kind, recording = EventType.RECORDING_PAUSED, RecordingInfo(recording_id(conversation))
    elif agent is not None:
        kind = EventType.CALL_ANSWERED
    elif customer is not None and _connected(customer):
        kind = EventType.CALL_STARTED
    else:
        return Parsed(event_id, None, "unmapped-snapshot")
    user = agent.get("user") if agent is not None else None
    return Parsed(
        event_id,
        PbxEvent(
            provider=PROVIDER,
            event_id=event_id,
            type=kind,
            occurred_at=sent_at,
            call=CallInfo(
                provider_call_id=conversation,
                from_number=_number(customer.get("ani")) if customer else None,
                to_number=_number(customer.get("dnis")) if customer else None,
                direction=_direction(customer.get("direction")) if customer else None,
                service_area=service_area,
                agent_id=_short(user.get("id")) if isinstance(user, dict) else None,
            ),
            recording=recording,
        ),
    )


def _connected(participant: dict[str, Any]) -> bool:
    return _state(participant.get("state")) == "connected"


def _accept(incoming: IncomingWebhook, settings: Settings) -> Accepted:
    # EventBridge API destinations authenticate with a fixed header; they cannot sign a body.
    token_checked(
        incoming,
        settings.genesys_webhook_token,
        "Genesys Cloud events are not enabled (RECGATE_GENESYS_WEBHOOK_TOKEN)",
    )
    event_id = None
    try:
        data = load_json(incoming.body)
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            event_id = data["id"][:_MAX_ID]
        parsed = parse_envelope(data, incoming.query.get("service_area") or None)
    except (MalformedJson, MalformedEvent) as exc:
        raise WebhookMalformed(str(exc), event_id=event_id, stored=incoming.body) from exc
    return Accepted(parsed.event, data, incoming.body, ignored_as=parsed.ignored_as)


def _controller(
    settings: Settings, client: httpx.AsyncClient, clock: Clock
) -> RecordingController | None:
    if not settings.genesys_client_id or settings.genesys_client_secret is None:
        return None
    credentials = ClientCredentials(
        client,
        login_base(settings),
        settings.genesys_client_id,
        settings.genesys_client_secret.get_secret_value(),
        clock,
    )
    return GenesysController(
        client,
        api_base(settings),
        credentials,
        clock,
        wait_limit_s=settings.pause_timeout_ms / 1000,
    )


ADAPTER = Provider(
    name=PROVIDER,
    configured=lambda s: (
        s.genesys_webhook_token is not None
        or (bool(s.genesys_client_id) and s.genesys_client_secret is not None)
    ),
    controller=_controller,
    webhooks=(
        WebhookRoute(
            "genesys",
            "Genesys Cloud conversation events relayed by an Amazon EventBridge API destination "
            "with X-Recgate-Token. The call id is the Genesys conversation id.",
            _accept,
        ),
    ),
)
