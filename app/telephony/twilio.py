"""Twilio Programmable Voice: status callbacks in, recording pause/resume out, media.

Inbound callbacks are form-encoded (or JSON with ``bodySHA256``) and signed with
``X-Twilio-Signature``: base64 HMAC-SHA1, keyed by the account Auth Token, over the public URL
Twilio requested followed by every parameter name and value, sorted by name.

Control uses the Recordings resource: ``POST …/Calls/{CA}/Recordings/{RE|Twilio.CURRENT}.json``
with ``Status=paused|in-progress``. A 200 is not proof of a pause: the returned ``status`` must
read ``paused`` (or, read back with a GET, become so).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

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
    MediaSource,
    ProviderRejected,
    ProviderUnavailable,
    RecordingController,
    RecordingRef,
    json_object,
    status_error,
    stream_http_media,
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

CURRENT = "Twilio.CURRENT"
NO_LIVE_RECORDING = 21220
NOT_FOUND = 20404
Params = Mapping[str, list[str]]


class MalformedCallback(ValueError):
    """A signed callback that is not one recgate understands; the message is safe to show."""


# ---- signature ------------------------------------------------------------------------------


def _url_variants(url: str) -> list[str]:
    """The URL as given, without its port and with the scheme's default port.

    Twilio's own validators accept both, because what Twilio signs depends on how the webhook
    URL was configured.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    default = 443 if parts.scheme == "https" else 80
    without = urlunsplit(parts._replace(netloc=host))
    with_port = urlunsplit(parts._replace(netloc=f"{host}:{parts.port or default}"))
    return list(dict.fromkeys([url, without, with_port]))


def compute_signature(auth_token: str, url: str, params: Params) -> str:
    """``X-Twilio-Signature`` for ``url`` and form ``params`` (each name's values sorted)."""
    data = url + "".join(
        name + value for name in sorted(params) for value in sorted(set(params[name]))
    )
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def verify_signature(
    auth_token: str, url: str, params: Params, signature: str | None, body: bytes | None = None
) -> bool:
    """True when ``signature`` is Twilio's for this request; compared in constant time.

    With ``body`` (a JSON callback) the URL must carry ``bodySHA256``, the hex SHA-256 of the
    raw body, and the signature covers the URL alone.
    """
    if not signature:
        return False
    if body is not None:
        claimed = parse_qs(urlsplit(url).query).get("bodySHA256", [""])[0]
        actual = hashlib.sha256(body).hexdigest()
        if not hmac.compare_digest(claimed.encode(), actual.encode()):
            return False
        params = {}
    matched = False
    for candidate in _url_variants(url):
        expected = compute_signature(auth_token, candidate, params)
        matched |= hmac.compare_digest(expected.encode(), signature.encode())
    return matched


# ---- callbacks ------------------------------------------------------------------------------


def _one(params: Params, name: str) -> str | None:
    values = params.get(name)
    return values[0] if values and values[0] != "" else None


def _required(params: Params, name: str) -> str:
    value = _one(params, name)
    if value is None:
        raise MalformedCallback(f"missing {name}")
    if len(value) > 255:
        raise MalformedCallback(f"{name} too long")
    return value


def _rfc2822(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError) as exc:
        raise MalformedCallback("unreadable timestamp") from exc
    if parsed.tzinfo is None:
        raise MalformedCallback("timestamp without a time zone")
    return parsed


def _direction(value: str | None) -> str | None:
    if value is None:
        return None
    return "inbound" if value == "inbound" else "outbound"


_CALL_STATUS = {
    "queued": EventType.CALL_STARTED,
    "initiated": EventType.CALL_STARTED,
    "ringing": EventType.CALL_STARTED,
    "in-progress": EventType.CALL_ANSWERED,
    "completed": EventType.CALL_ENDED,
    "busy": EventType.CALL_ENDED,
    "no-answer": EventType.CALL_ENDED,
    "canceled": EventType.CALL_ENDED,
    "failed": EventType.CALL_ENDED,
}


def parse_call_status(params: Params, service_area: str | None, now: datetime) -> PbxEvent | None:
    """A call status callback as a normalised event; None for a child leg's status, which
    says nothing about the call recgate tracks (its parent)."""
    call_sid = _required(params, "CallSid")
    status = _required(params, "CallStatus")
    if status not in _CALL_STATUS:
        raise MalformedCallback(f"unknown CallStatus {status!r}")
    parent = _one(params, "ParentCallSid")
    if parent is not None:
        # A <Dial>ed agent leg answering is a hand-over to that agent; its other statuses
        # (ringing, completed …) do not change the caller's call.
        if status != "in-progress":
            return None
        kind, call_id, agent = EventType.CALL_TRANSFERRED, parent, _one(params, "To")
    else:
        kind, call_id, agent = _CALL_STATUS[status], call_sid, None
    sequence = _one(params, "SequenceNumber") or ""
    return PbxEvent(
        provider="twilio",
        # Twilio's own signed fields, never the unsigned I-Twilio-Idempotency-Token: a captured
        # callback replayed with a new token must still be a duplicate.
        event_id=f"call-status:{call_sid}:{status}:{sequence}",
        type=kind,
        occurred_at=_rfc2822(_one(params, "Timestamp")) or now,
        call=CallInfo(
            provider_call_id=call_id,
            from_number=None if parent else _one(params, "From"),
            to_number=None if parent else _one(params, "To"),
            direction=None if parent else _direction(_one(params, "Direction")),
            service_area=service_area,
            agent_id=agent,
        ),
    )


_RECORDING_STATUS = {
    "in-progress": EventType.RECORDING_STARTED,
    "completed": EventType.RECORDING_COMPLETED,
    "absent": EventType.RECORDING_FAILED,
    "failed": EventType.RECORDING_FAILED,
    "stopped": EventType.RECORDING_STOPPED,
}


# Twilio caps a recording at 24 hours; a week is beyond any call recgate gates.
_LONGEST_RECORDING_S = 7 * 24 * 3600


def parse_recording_status(params: Params, service_area: str | None, now: datetime) -> PbxEvent:
    """A recording status callback as a normalised event. ``CallSid`` always names the
    parent leg, so every recording lands on the call the IVR knows."""
    call_sid = _required(params, "CallSid")
    recording_sid = _required(params, "RecordingSid")
    status = _required(params, "RecordingStatus")
    if status not in _RECORDING_STATUS:
        raise MalformedCallback(f"unknown RecordingStatus {status!r}")
    started = _rfc2822(_one(params, "RecordingStartTime"))
    duration: float | None = None
    if (raw := _one(params, "RecordingDuration")) is not None:
        try:
            duration = float(raw)
        except ValueError as exc:
            raise MalformedCallback("RecordingDuration is not a number") from exc
        if not math.isfinite(duration) or duration > _LONGEST_RECORDING_S:
            raise MalformedCallback("RecordingDuration is out of range")
        if duration < 0:  # -1 while a recording is live
            duration = None
    kind = _RECORDING_STATUS[status]
    occurred = now
    if kind == EventType.RECORDING_STARTED and started is not None:
        occurred = started
    elif kind == EventType.RECORDING_COMPLETED and started is not None and duration is not None:
        occurred = started + timedelta(seconds=duration)
    return PbxEvent(
        provider="twilio",
        event_id=f"recording-status:{recording_sid}:{status}",
        type=kind,
        occurred_at=occurred,
        call=CallInfo(provider_call_id=call_sid, service_area=service_area),
        recording=RecordingInfo(
            provider_recording_id=recording_sid,
            media_url=_one(params, "RecordingUrl")
            if kind == EventType.RECORDING_COMPLETED
            else None,
            duration_s=duration,
            media_format="wav",
            container_id=_one(params, "ConferenceSid"),
        ),
        extras={k: v for k in ("ErrorCode", "RecordingSource") if (v := _one(params, k) or "")},
    )


def parse_body(body: bytes, content_type: str) -> Params:
    """Form or JSON callback body as ``name → [values]``."""
    if content_type.startswith("application/json"):
        try:
            data = load_json(body)
        except MalformedJson as exc:
            raise MalformedCallback(str(exc)) from exc
        if not isinstance(data, dict):
            raise MalformedCallback("body is not a JSON object")
        return {str(k): [str(v)] for k, v in data.items() if v is not None}
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise MalformedCallback("body is not UTF-8") from exc


# ---- control --------------------------------------------------------------------------------


class TwilioController(RecordingController, MediaSource):
    """Pauses and resumes a call's recordings through Twilio's REST API."""

    name = "twilio"

    def __init__(
        self,
        client: httpx.AsyncClient,
        api_base: str,
        account_sid: str,
        auth_token: str,
        clock: Clock,
    ) -> None:
        self.client = client
        self.api_base = api_base.rstrip("/")
        self.account_sid = account_sid
        self.auth = httpx.BasicAuth(account_sid, auth_token)
        self.clock = clock

    def recording_url(self, call_sid: str, ref: RecordingRef) -> str:
        sid = quote(ref.provider_recording_id or CURRENT, safe="")
        account = f"{self.api_base}/2010-04-01/Accounts/{quote(self.account_sid, safe='')}"
        if ref.container_id:
            return f"{account}/Conferences/{quote(ref.container_id, safe='')}/Recordings/{sid}.json"
        return f"{account}/Calls/{quote(call_sid, safe='')}/Recordings/{sid}.json"

    async def pause(self, target: ControlTarget, behavior: PauseBehavior) -> list[ControlOutcome]:
        form = {"Status": "paused", "PauseBehavior": behavior.value}
        return await self._each(target, form, "paused")

    async def resume(self, target: ControlTarget) -> list[ControlOutcome]:
        return await self._each(target, {"Status": "in-progress"}, "in-progress")

    async def _each(
        self, target: ControlTarget, form: dict[str, str], wanted: str
    ) -> list[ControlOutcome]:
        # Every live recording of the call at once: a call and a conference recording can
        # both be running, and pausing one does not pause the other.
        refs = target.recordings or (RecordingRef(None, None),)
        return list(
            await asyncio.gather(
                *(self._update(target.provider_call_id, r, form, wanted) for r in refs)
            )
        )

    async def _update(
        self, call_sid: str, ref: RecordingRef, form: dict[str, str], wanted: str
    ) -> ControlOutcome:
        url = self.recording_url(call_sid, ref)
        response = await self._request("POST", url, data=form)
        if response.status_code == 200:
            body = json_object(response)
            sid = str(body.get("sid") or ref.provider_recording_id or "") or None
            status = body.get("status")
            if status != wanted:
                # 200 is not proof: read the recording back once before calling it unconfirmed.
                status = json_object(
                    await self._request(
                        "GET",
                        self.recording_url(call_sid, RecordingRef(None, sid, ref.container_id)),
                    )
                ).get("status")
            if status == wanted:
                return ControlOutcome(
                    sid, ConfirmedState.PAUSED if wanted == "paused" else ConfirmedState.RECORDING
                )
            if status in ("stopped", "completed", "absent", "processing", "deleted"):
                return ControlOutcome(sid, ConfirmedState.NOT_RECORDING)
            raise ProviderUnavailable(f"twilio recording reads {status!r}, not {wanted!r}")
        code = json_object(response).get("code")
        if code == NO_LIVE_RECORDING:
            return ControlOutcome(ref.provider_recording_id, ConfirmedState.NOT_RECORDING)
        if code == NOT_FOUND:
            # Gone for this recording only: the others in the same command keep their answers
            # (raising would mark a recording just paused as stopped, never to be resumed).
            return ControlOutcome(ref.provider_recording_id, ConfirmedState.GONE)
        raise status_error(response.status_code, "twilio", f" error {code}")

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.client.request(method, url, auth=self.auth, **kwargs)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"twilio {method}: {type(exc).__name__}") from exc

    async def fetch_media(self, media_url: str) -> AsyncIterator[bytes]:
        """Stream a completed recording's WAV from Twilio (``RecordingUrl`` + ``.wav``)."""
        if not media_url.startswith(self.api_base + "/"):
            raise ProviderRejected("twilio media URL is not on the configured API base")
        url = media_url if media_url.endswith(".wav") else media_url + ".wav"
        # Twilio redirects media to its storage; httpx drops the credentials off-origin.
        async for chunk in stream_http_media(
            self.client, url, self.auth, "twilio", follow_redirects=True
        ):
            yield chunk

    async def delete_media(self, provider_recording_id: str) -> None:
        """Delete Twilio's copy of a recording; a copy already gone is not an error."""
        url = (
            f"{self.api_base}/2010-04-01/Accounts/{quote(self.account_sid, safe='')}"
            f"/Recordings/{quote(provider_recording_id, safe='')}.json"
        )
        response = await self._request("DELETE", url)
        if response.status_code in (204, 200, 404):
            return
        raise status_error(response.status_code, "twilio delete")

    def describe(self) -> str:
        return f"twilio account {self.account_sid[:6]}… at {httpx.URL(self.api_base).host}"

    async def probe(self, timeout_s: float) -> str:
        """``GET …/Accounts/{AccountSid}.json``: the cheapest call that proves the API answers,
        accepts the credentials, and that the account can still control recordings."""
        url = f"{self.api_base}/2010-04-01/Accounts/{quote(self.account_sid, safe='')}.json"
        response = await self._request("GET", url, timeout=timeout_s)
        if response.status_code in (401, 403):
            raise ProviderRejected(
                f"twilio account: HTTP {response.status_code} (the account SID or auth token "
                "is refused)"
            )
        if response.status_code != 200:
            raise status_error(response.status_code, "twilio account")
        status = str(json_object(response).get("status"))[:32]
        if status != "active":
            raise ProviderRejected(f"twilio account is {status!r}, not 'active'")
        return "account active"


# ---- the provider ----------------------------------------------------------------------------

CallbackParser = Callable[[Params, str | None, datetime], PbxEvent | None]


def _callback_route(path: str, summary: str, parse: CallbackParser) -> WebhookRoute:
    def accept(incoming: IncomingWebhook, settings: Settings) -> Accepted:
        token = settings.twilio_auth_token
        if token is None or not settings.twilio_account_sid:
            raise WebhookNotEnabled("Twilio callbacks are not enabled")
        # Twilio signs the URL it was given; behind a proxy that is the public one, not ours.
        url = settings.public_base_url.rstrip("/") + incoming.path
        if incoming.query_string:
            url += "?" + incoming.query_string
        content_type = incoming.headers.get("content-type", "")
        is_json = content_type.startswith("application/json")
        try:
            params = parse_body(incoming.body, content_type)
        except MalformedCallback as exc:
            raise WebhookRefused("the body cannot be read to check its signature") from exc
        signature = incoming.headers.get("x-twilio-signature")
        if not signature:
            raise WebhookRefused("missing header: X-Twilio-Signature")
        body = incoming.body if is_json else None
        if not verify_signature(
            token.get_secret_value(), url, {} if is_json else params, signature, body
        ):
            raise WebhookRefused(
                "X-Twilio-Signature does not match: another auth token, or a URL (see "
                "RECGATE_PUBLIC_BASE_URL) or parameter that changed"
            )
        # I-Twilio-Idempotency-Token is not signed: duplicates are found by Twilio's own fields.
        try:
            event = parse(params, incoming.query.get("service_area"), incoming.now)
        except MalformedCallback as exc:
            raise WebhookMalformed(str(exc), stored=incoming.body) from exc
        payload = {
            name: values[0] if len(values) == 1 else values for name, values in params.items()
        }
        return Accepted(event, payload, incoming.body, ignored_as="child-leg")

    return WebhookRoute(path, summary, accept)


def _controller(
    settings: Settings, client: httpx.AsyncClient, clock: Clock
) -> RecordingController | None:
    if not settings.twilio_account_sid or settings.twilio_auth_token is None:
        return None
    return TwilioController(
        client,
        settings.twilio_api_base,
        settings.twilio_account_sid,
        settings.twilio_auth_token.get_secret_value(),
        clock,
    )


ADAPTER = Provider(
    name="twilio",
    configured=lambda s: bool(s.twilio_account_sid) and s.twilio_auth_token is not None,
    controller=_controller,
    webhooks=(
        _callback_route(
            "twilio/call-status",
            "Twilio statusCallback (call progress). Add ?service_area=… to the URL.",
            parse_call_status,
        ),
        _callback_route(
            "twilio/recording-status",
            "Twilio recordingStatusCallback (in-progress, completed, absent).",
            parse_recording_status,
        ),
    ),
)
