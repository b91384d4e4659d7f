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


class HoldCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Literal["complaint", "legal_claim", "police_investigation", "subject_access", "other"]
    reference: str | None = Field(default=None, max_length=255)
    note: str | None = Field(default=None, max_length=2000)


class CallerHoldCreate(HoldCreate):
    caller: str = Field(min_length=3, max_length=64)


class HoldRead(BaseModel):
    id: uuid.UUID
    recording_id: uuid.UUID | None
    caller: str | None
    reason: str
    reference: str | None
    note: str | None
    placed_by: str | None
    placed_at: datetime
    released_by: str | None
    released_at: datetime | None


class PauseSpanRead(BaseModel):
    segment_id: uuid.UUID
    paused_at: datetime | None
    resumed_at: datetime | None
    start_offset_s: float | None
    end_offset_s: float | None


class CopyOutcomeRead(BaseModel):
    outcome: str = Field(description="deleted | gone | not_deletable | failed")
    reason: str | None


class CopyOutcomesRead(BaseModel):
    """What the deletion did to recgate's copy (``local``) and the provider's (``provider``)."""

    local: CopyOutcomeRead | None
    provider: CopyOutcomeRead | None


class RecordingRead(BaseModel):
    id: uuid.UUID
    provider: str
    provider_call_id: str
    provider_recording_id: str
    state: str
    service_area: str | None
    started_at: datetime | None
    ended_at: datetime | None
    duration_s: float | None
    quarantined: bool
    retention_until: datetime | None
    media_available: bool
    media_sha256: str | None
    media_size: int | None
    holds: list[HoldRead]
    segments: list[PauseSpanRead]
    exposures: list[ExposureRead]
    redacted_at: datetime | None
    deleted_at: datetime | None
    deleted_reason: str | None
    copies: CopyOutcomesRead | None = None


class RecordingSummary(BaseModel):
    id: uuid.UUID
    provider: str
    provider_call_id: str
    provider_recording_id: str
    state: str
    service_area: str | None
    started_at: datetime | None
    ended_at: datetime | None
    quarantined: bool
    retention_until: datetime | None
    deleted_at: datetime | None


class RecordingPage(BaseModel):
    items: list[RecordingSummary]
    next_cursor: str | None


class PolicyRead(BaseModel):
    service_area: str
    media_months: int
    record_months: int
    overridden: bool


class PolicyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    media_months: int = Field(ge=1, le=1200)
    record_months: int = Field(ge=1, le=1200)


class PolicyChangeRead(PolicyRead):
    recordings_recomputed: int
    recordings_shortened: int
    calls_recomputed: int
    calls_shortened: int
    warnings: list[str]


class DueItem(BaseModel):
    id: uuid.UUID
    provider: str
    provider_call_id: str
    service_area: str | None
    retention_until: datetime
    held: bool


class DuePage(BaseModel):
    items: list[DueItem]
    next_cursor: str | None


class SweepRead(BaseModel):
    dry_run: bool
    deleted: int
    skipped_held: int
    errors: int
    records_erased: int


class AuditEntryRead(BaseModel):
    seq: int
    at: datetime
    actor: str
    role: str
    action: str
    target_type: str
    target_id: str
    purpose: str | None
    detail: dict[str, object]
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEntryRead]
    next_cursor: str | None


class AuditVerifyRead(BaseModel):
    ok: bool
    entries: int
    head: str
    first_bad_seq: int | None = None
    # Why the first bad entry is bad; when ok, how many entries predate the HMAC chain.
    reason: str | None = None
    unkeyed: int = 0
    # The last checkpoint the chain was held against (last_seq, hash, count, at, key_id).
    checkpoint: dict[str, object] | None = None


# ---- disclosures and subject access -------------------------------------------------------

Recipient = Literal["police", "council_service", "care_provider", "data_subject", "other"]


class DisclosureCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipient: Recipient
    recipient_name: str = Field(min_length=1, max_length=255)
    reference: str | None = Field(default=None, max_length=255)
    lawful_basis: str = Field(min_length=1, max_length=500)
    justification: str = Field(min_length=1, max_length=2000)


class DisclosureRead(BaseModel):
    id: uuid.UUID
    recording_id: uuid.UUID
    recipient: str
    recipient_name: str
    reference: str | None
    lawful_basis: str
    justification: str
    media_sha256: str
    media_size: int | None
    disclosed_by: str
    disclosed_role: str
    disclosed_at: datetime


class DisclosurePage(BaseModel):
    items: list[DisclosureRead]
    next_cursor: str | None


class SubjectCallRead(BaseModel):
    id: uuid.UUID
    provider: str
    provider_call_id: str
    state: str
    service_area: str | None
    from_number: str | None
    to_number: str | None
    direction: str | None
    started_at: datetime | None
    answered_at: datetime | None
    ended_at: datetime | None


class SubjectRecordingRead(BaseModel):
    id: uuid.UUID
    call_id: uuid.UUID
    provider_recording_id: str
    state: str
    started_at: datetime | None
    ended_at: datetime | None
    duration_s: float | None
    quarantined: bool
    retention_until: datetime | None
    media_available: bool
    media_sha256: str | None
    media_size: int | None


class TombstoneRead(BaseModel):
    """A deleted recording: what it was and when and why it went; no media."""

    id: uuid.UUID
    call_id: uuid.UUID
    deleted_at: datetime
    deleted_reason: str | None


class SubjectAccessRead(BaseModel):
    caller: str
    generated_at: datetime
    calls: list[SubjectCallRead]
    recordings: list[SubjectRecordingRead]
    holds: list[HoldRead]
    disclosures: list[DisclosureRead]
    tombstones: list[TombstoneRead]
