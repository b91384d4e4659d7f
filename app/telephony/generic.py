"""The generic provider: any PBX that speaks recgate's signed JSON contract (SPEC §3.2, §4).

Inbound: one JSON event per webhook, signed per Standard Webhooks v1.
Outbound: ``POST {control_url}/calls/{call_id}/recording/pause|resume``, signed the same way.
The signed body names the call, the action and a command id used once (also the
``webhook-id``): ``{"call_id", "action", "command_id", "behavior"?}``, so a captured command is
valid for no other call, action or moment; the PBX should check the first two against the URL
and refuse a command id it has seen. Answered ``200 {"state": "paused" | "recording" | "not_recording"}``. Any other answer, a 404
included (a wrong control path looks just like an unknown call), is not a confirmation.

Health (the readiness probe): ``GET {control_url}/health`` with the same three signature
headers over an empty body; any 2xx means the PBX can take commands.

Media: with ``RECGATE_GENERIC_MEDIA_HOSTS`` set, ``recording.media_url`` is copied with a plain
GET, only from the listed hosts (https; http only for an entry written ``http://``), never
following a redirect and never with credentials in the URL. The contract has no delete call:
the PBX expires its own copy.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.config import MediaOrigin, Settings
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
from app.telephony.signing import signed_headers

log = logging.getLogger("recgate.generic")


class MalformedEvent(ValueError):
    """A signed payload that is not a valid event; the message is safe to store and show."""


class MediaUrlRefused(ProviderRejected):
    """A media URL recgate will not fetch: not an allowed host, scheme or port, or carrying
    credentials. Permanent for the recording; no request was made."""


class _CallBody(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str = Field(min_length=1, max_length=255)
    from_: str | None = Field(default=None, alias="from", max_length=64)
    to: str | None = Field(default=None, max_length=64)
    direction: Literal["inbound", "outbound"] | None = None
    service_area: str | None = Field(default=None, max_length=64)
    agent_id: str | None = Field(default=None, max_length=128)


class _RecordingBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=255)
    media_url: str | None = Field(default=None, max_length=2048)
    duration_s: float | None = Field(default=None, ge=0)
    format: str | None = Field(default=None, max_length=16)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")


class _EventBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: EventType
    occurred_at: datetime
    call: _CallBody
    recording: _RecordingBody | None = None


def parse_event(provider: str, event_id: str, body: bytes) -> tuple[PbxEvent, dict[str, Any]]:
    """Parse a generic-contract event body into the event and the JSON it came in; raise
    :class:`MalformedEvent` when it is not one."""
    try:
        data = load_json(body)
    except MalformedJson as exc:
        raise MalformedEvent(str(exc)) from exc
    try:
        parsed = _EventBody.model_validate(data)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in err["loc"]) or "body" for err in exc.errors()})
        raise MalformedEvent("invalid fields: " + ", ".join(fields)) from exc
    if parsed.type == EventType.CALL_LINKED:
        raise MalformedEvent("type: call.linked is not part of the generic contract")
    if parsed.occurred_at.tzinfo is None:
        raise MalformedEvent("occurred_at must carry a time zone")
    if parsed.type.is_recording and parsed.recording is None:
        raise MalformedEvent(f"{parsed.type.value} needs a recording")
    recording = None
    if parsed.type.is_recording and parsed.recording is not None:
        r = parsed.recording
        recording = RecordingInfo(
            provider_recording_id=r.id,
            media_url=r.media_url,
            duration_s=r.duration_s,
            media_format=r.format,
            sha256=r.sha256.lower() if r.sha256 else None,
        )
    c = parsed.call
    event = PbxEvent(
        provider=provider,
        event_id=event_id,
        type=parsed.type,
        occurred_at=parsed.occurred_at,
        call=CallInfo(
            provider_call_id=c.id,
            from_number=c.from_,
            to_number=c.to,
            direction=c.direction,
            service_area=c.service_area,
            agent_id=c.agent_id,
        ),
        recording=recording,
    )
    return event, data


_CONFIRMING = {"pause": ConfirmedState.PAUSED, "resume": ConfirmedState.RECORDING}
_STATES = {
    "paused": ConfirmedState.PAUSED,
    "recording": ConfirmedState.RECORDING,
    "not_recording": ConfirmedState.NOT_RECORDING,
}


class GenericController(RecordingController):
    """Signed HTTP control of a generic PBX. One command covers every recording of the call."""

    name = "generic"
    call_level_covers_all = True

    def __init__(
        self, client: httpx.AsyncClient, control_url: str, key: bytes, clock: Clock
    ) -> None:
        self.client = client
        self.control_url = control_url.rstrip("/")
        self.key = key
        self.clock = clock

    async def pause(self, target: ControlTarget, behavior: PauseBehavior) -> list[ControlOutcome]:
        return await self._command(target, "pause", {"behavior": behavior.value})

    async def resume(self, target: ControlTarget) -> list[ControlOutcome]:
        return await self._command(target, "resume", {})

    async def _command(
        self, target: ControlTarget, action: Literal["pause", "resume"], payload: dict[str, Any]
    ) -> list[ControlOutcome]:
        url = (
            f"{self.control_url}/calls/{quote(target.provider_call_id, safe='')}/recording/{action}"
        )
        command_id = f"cmd_{uuid.uuid4().hex}"
        signed = {
            "call_id": target.provider_call_id,
            "action": action,
            "command_id": command_id,
            **payload,
        }
        body = json.dumps(signed, separators=(",", ":")).encode()
        headers = signed_headers(self.key, body, self.clock(), command_id)
        headers["content-type"] = "application/json"
        try:
            response = await self.client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"generic control {action}: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise status_error(response.status_code, f"generic control {action}")
        try:
            state = _STATES[str(response.json()["state"])]
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderRejected(f"generic control {action}: unexpected answer") from exc
        if state not in (_CONFIRMING[action], ConfirmedState.NOT_RECORDING):
            raise ProviderRejected(f"generic control {action}: PBX reports {state.value}")
        if target.call_level:
            return [ControlOutcome(None, state)]
        return [ControlOutcome(ref.provider_recording_id, state) for ref in target.recordings]

    def describe(self) -> str:
        return f"generic control at {httpx.URL(self.control_url).host}"

    async def probe(self, timeout_s: float) -> str:
        """``GET {control_url}/health``, signed like a command over an empty body; any 2xx
        is healthy (docs/operations.md)."""
        headers = signed_headers(self.key, b"", self.clock(), f"probe_{uuid.uuid4().hex}")
        try:
            response = await self.client.get(
                f"{self.control_url}/health", headers=headers, timeout=timeout_s
            )
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"generic health: {type(exc).__name__}") from exc
        if response.status_code == 404:
            raise ProviderRejected(
                "generic health: HTTP 404 (the PBX must answer GET {control_url}/health)"
            )
        if not 200 <= response.status_code < 300:
            raise status_error(response.status_code, "generic health")
        return ""


_DEFAULT_PORTS = {"http": 80, "https": 443}
# The generic contract names no credentials for media; a URL the PBX signs carries its own.
_NO_AUTH = httpx.Auth()


class GenericMediaController(GenericController, MediaSource):
    """Generic control plus media copies from the hosts the operator allows (no SSRF: the
    PBX's event picks the URL, so only the configured origins are ever requested)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        control_url: str,
        key: bytes,
        clock: Clock,
        media_origins: frozenset[MediaOrigin],
    ) -> None:
        super().__init__(client, control_url, key, clock)
        self.media_origins = media_origins

    def media_request_url(self, media_url: str) -> str:
        """The URL to GET for ``media_url``; :class:`MediaUrlRefused` unless its scheme, host
        and port are an allowed origin and it carries no userinfo. Hosts are compared by name
        as configured: nothing is resolved here."""
        try:
            url = httpx.URL(media_url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise MediaUrlRefused("generic media URL does not parse") from exc
        if url.userinfo:
            raise MediaUrlRefused("generic media URL carries credentials")
        if url.scheme not in _DEFAULT_PORTS:
            raise MediaUrlRefused(f"generic media URL scheme {url.scheme!r} is not http(s)")
        origin = (url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme])
        if origin not in self.media_origins:
            raise MediaUrlRefused(
                f"generic media origin {url.scheme}://{url.host!r}:{origin[2]} is not in "
                "RECGATE_GENERIC_MEDIA_HOSTS"
            )
        return str(url.copy_with(fragment=None))

    async def fetch_media(self, media_url: str) -> AsyncIterator[bytes]:
        """Stream the PBX's media; refused before any request unless the URL is allowed."""
        url = self.media_request_url(media_url)
        async for chunk in stream_http_media(
            self.client, url, _NO_AUTH, "generic", follow_redirects=False
        ):
            yield chunk

    async def delete_media(self, provider_recording_id: str) -> None:
        """Nothing to call: the generic contract has no delete. The PBX keeps its copy until
        its own expiry; recgate deletes only the copy it holds."""
        log.info(
            "generic PBX copy of recording %r left to the PBX: the contract has no delete call",
            provider_recording_id,
        )


# ---- the provider ----------------------------------------------------------------------------


def signed_event_route(provider: str, summary: str) -> WebhookRoute:
    """``/v1/webhooks/{provider}``: one generic-contract event, signed with the route's own key
    (``Settings.webhook_key``)."""

    def accept(incoming: IncomingWebhook, settings: Settings) -> Accepted:
        event_id = signed(settings.webhook_key(provider), incoming, settings)
        try:
            event, data = parse_event(provider, event_id, incoming.body)
        except MalformedEvent as exc:
            raise WebhookMalformed(str(exc), event_id=event_id, stored=incoming.body) from exc
        return Accepted(event, data, incoming.body)

    return WebhookRoute(provider, summary, accept)


def _controller(
    settings: Settings, client: httpx.AsyncClient, clock: Clock
) -> RecordingController | None:
    key = settings.generic_secret_key
    if key is None or not settings.generic_control_url:
        return None
    origins = settings.generic_media_origins
    # Without allowed media hosts generic media is not copied at all (not a MediaSource).
    if origins:
        return GenericMediaController(client, settings.generic_control_url, key, clock, origins)
    return GenericController(client, settings.generic_control_url, key, clock)


ADAPTER = Provider(
    name="generic",
    configured=lambda settings: settings.generic_webhook_secret is not None,
    controller=_controller,
    webhooks=(signed_event_route("generic", "A generic PBX's signed event (SPEC §3.2)."),),
)
