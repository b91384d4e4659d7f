"""The generic provider: any PBX that speaks recgate's signed JSON contract (SPEC §3.2, §4).

Inbound: one JSON event per webhook, signed per Standard Webhooks v1.
Outbound: ``POST {control_url}/calls/{call_id}/recording/pause|resume``, signed the same way,
answered ``200 {"state": "paused" | "recording" | "not_recording"}``. Any other answer, a 404
included (a wrong control path looks just like an unknown call), is not a confirmation.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
)
from app.telephony.signing import signed_headers


class MalformedEvent(ValueError):
    """A signed payload that is not a valid event; the message is safe to store and show."""


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
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedEvent("body is not JSON") from exc
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
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = signed_headers(self.key, body, self.clock())
        headers["content-type"] = "application/json"
        try:
            response = await self.client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"generic control {action}: {type(exc).__name__}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise ProviderUnavailable(f"generic control {action}: HTTP {response.status_code}")
        if response.status_code != 200:
            raise ProviderRejected(f"generic control {action}: HTTP {response.status_code}")
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
