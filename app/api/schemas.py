"""Request and response shapes of the HTTP API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.domain.states import PauseBehavior


class PaymentStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reference: str | None = Field(default=None, max_length=255)
    pause_behavior: PauseBehavior | None = None


class PaymentEnd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: Literal["authorised", "declined", "abandoned", "error"] | None = None


class RecordingStatusRead(BaseModel):
    id: uuid.UUID
    provider_recording_id: str
    state: str


class PaymentResult(BaseModel):
    segment_id: uuid.UUID
    state: str
    safe_to_collect: bool
    recordings: list[RecordingStatusRead]


class CallRecordingRead(BaseModel):
    id: uuid.UUID
    provider_recording_id: str
    state: str
    started_at: datetime | None
    ended_at: datetime | None
    duration_s: float | None
    quarantined: bool
    retention_until: datetime | None


class SegmentRead(BaseModel):
    id: uuid.UUID
    state: str
    reference: str | None
    pause_behavior: str
    opened_at: datetime
    paused_at: datetime | None
    closed_at: datetime | None
    closed_by: str | None
    outcome: str | None


class ExposureRead(BaseModel):
    kind: str
    recording_id: uuid.UUID | None
    segment_id: uuid.UUID | None
    started_at: datetime
    ended_at: datetime | None


class TimelineEntry(BaseModel):
    at: datetime
    entity: str
    entity_id: uuid.UUID
    from_state: str | None
    to_state: str
    cause: str


class CallRead(BaseModel):
    provider: str
    provider_call_id: str
    state: str
    service_area: str | None
    direction: str | None
    started_at: datetime | None
    answered_at: datetime | None
    ended_at: datetime | None
    record_retention_until: datetime | None
    recordings: list[CallRecordingRead]
    segments: list[SegmentRead]
    exposures: list[ExposureRead]
    timeline: list[TimelineEntry]


class WebhookAck(BaseModel):
    status: Literal["applied", "duplicate", "ignored"]
