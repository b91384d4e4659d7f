"""Recordings, media and legal holds (SPEC §3.3)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.api import cursors
from app.api.deps import ServicesDep, actor_of, authenticate, check_role, require
from app.api.schemas import (
    CallerHoldCreate,
    CopyOutcomeRead,
    CopyOutcomesRead,
    ExposureRead,
    HoldCreate,
    HoldRead,
    PauseSpanRead,
    RecordingPage,
    RecordingRead,
    RecordingSummary,
)
from app.domain.roles import Role, may_use
from app.services.recordings import MEDIA_PURPOSES, RecordingDetail
from app.services.tokens import Principal
from app.storage.models import Call, LegalHold, Recording

router = APIRouter(tags=["recordings"])

ReaderDep = Annotated[Principal, Depends(require(Role.SUPERVISOR, Role.DPO))]
DpoDep = Annotated[Principal, Depends(require(Role.DPO))]
Purpose = Literal[
    "quality", "training", "complaint", "legal_claim", "safety", "subject_access", "disclosure"
]
assert set(Purpose.__args__) == set(MEDIA_PURPOSES)  # type: ignore[attr-defined]

_MEDIA_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "pcap": "application/vnd.tcpdump.pcap"}


def _hold(hold: LegalHold, full: bool = True) -> HoldRead:
    """A hold; without ``full`` (a supervisor), not who placed it, its note or the caller it
    covers: those can say more than a quality review needs (a police investigation)."""
    return HoldRead(
        id=hold.id,
        recording_id=hold.recording_id,
        caller=hold.caller if full else None,
        reason=hold.reason,
        reference=hold.reference,
        note=hold.note if full else None,
        placed_by=hold.placed_by if full else None,
        placed_at=hold.placed_at,
        released_by=hold.released_by if full else None,
        released_at=hold.released_at,
    )


def _summary(recording: Recording, call: Call) -> RecordingSummary:
    return RecordingSummary(
        id=recording.id,
        provider=call.provider,
        provider_call_id=call.provider_call_id,
        provider_recording_id=recording.provider_recording_id,
        state=recording.state,
        service_area=call.service_area,
        started_at=recording.started_at,
        ended_at=recording.ended_at,
        quarantined=recording.quarantined,
        retention_until=recording.retention_until,
        deleted_at=recording.deleted_at,
    )


def _read(detail: RecordingDetail, full: bool) -> RecordingRead:
    r, call = detail.recording, detail.call
    return RecordingRead(
        id=r.id,
        provider=call.provider,
        provider_call_id=call.provider_call_id,
        provider_recording_id=r.provider_recording_id,
        state=r.state,
        service_area=call.service_area,
        started_at=r.started_at,
        ended_at=r.ended_at,
        duration_s=r.duration_s,
        quarantined=r.quarantined,
        retention_until=r.retention_until,
        media_available=r.media_path is not None,
        media_sha256=r.media_sha256,
        media_size=r.media_size,
        holds=[_hold(h, full) for h in detail.holds],
        segments=[
            PauseSpanRead(
                segment_id=p.segment_id,
                paused_at=p.paused_at,
                resumed_at=p.resumed_at,
                start_offset_s=p.start_offset_s,
                end_offset_s=p.end_offset_s,
            )
            for p in detail.pauses
        ],
        exposures=[ExposureRead.model_validate(e, from_attributes=True) for e in detail.exposures],
        redacted_at=r.redacted_at,
        deleted_at=r.deleted_at,
        deleted_reason=r.deleted_reason,
        copies=_copies(r),
    )


def _copies(r: Recording) -> CopyOutcomesRead | None:
    """Each copy's deletion outcome, once a deletion has been tried."""
    if r.local_copy is None and r.provider_copy is None:
        return None
    return CopyOutcomesRead(
        local=None
        if r.local_copy is None
        else CopyOutcomeRead(outcome=r.local_copy, reason=r.local_copy_reason),
        provider=None
        if r.provider_copy is None
        else CopyOutcomeRead(outcome=r.provider_copy, reason=r.provider_copy_reason),
    )


@router.get("/v1/recordings", response_model=RecordingPage)
async def list_recordings(
    services: ServicesDep,
    principal: ReaderDep,
    service_area: str | None = None,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
    caller: Annotated[str | None, Query(max_length=64)] = None,
    state: str | None = None,
    on_hold: bool | None = None,
    exposure: bool | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RecordingPage:
    rows = await services.recordings.list(
        actor_of(principal),
        service_area=service_area,
        started_from=from_,
        started_to=to,
        caller=caller,
        state=state,
        on_hold=on_hold,
        exposure=exposure,
        before=cursors.decode(cursor),
        limit=limit,
    )
    next_cursor = cursors.next_page(rows, limit, lambda row: (row[0].created_at, row[0].id))
    return RecordingPage(items=[_summary(r, c) for r, c in rows], next_cursor=next_cursor)


@router.get("/v1/recordings/{recording_id}", response_model=RecordingRead)
async def get_recording(
    recording_id: uuid.UUID, services: ServicesDep, principal: ReaderDep
) -> RecordingRead:
    detail = await services.recordings.detail(recording_id, actor_of(principal))
    return _read(detail, full=principal.role in (Role.DPO, Role.ADMIN))


async def _media_reader(
    recording_id: uuid.UUID, request: Request, services: ServicesDep
) -> Principal:
    """Like ``ReaderDep``, but a token whose role may not have media is refused on record."""
    principal = await authenticate(request, services)
    if not may_use(principal.role, frozenset({Role.SUPERVISOR, Role.DPO})):
        await services.recordings.refuse_media(recording_id, actor_of(principal), "role")
        check_role(principal, Role.SUPERVISOR, Role.DPO)
    return principal


@router.get(
    "/v1/recordings/{recording_id}/media",
    response_class=StreamingResponse,
    responses={200: {"content": {"audio/wav": {}}}, 410: {"description": "Deleted"}},
)
async def get_media(
    recording_id: uuid.UUID,
    purpose: Purpose,
    services: ServicesDep,
    principal: Annotated[Principal, Depends(_media_reader)],
) -> StreamingResponse:
    recording, stream = await services.recordings.open_media(
        recording_id,
        purpose,
        actor_of(principal),
        may_see_quarantined=principal.role in (Role.DPO, Role.ADMIN),
    )
    media_type = _MEDIA_TYPES.get(recording.media_format or "", "application/octet-stream")
    headers = {"cache-control": "no-store"}
    if recording.media_size is not None:
        headers["content-length"] = str(recording.media_size)
    return StreamingResponse(stream, media_type=media_type, headers=headers)


@router.delete("/v1/recordings/{recording_id}", status_code=204)
async def delete_recording(
    recording_id: uuid.UUID,
    services: ServicesDep,
    principal: DpoDep,
    reason: Annotated[Literal["manual", "pci_exposure"], Query()] = "manual",
) -> Response:
    await services.retention.delete_recording(recording_id, reason, actor_of(principal))
    return Response(status_code=204)


@router.post("/v1/recordings/{recording_id}/holds", response_model=HoldRead, status_code=201)
async def place_hold(
    recording_id: uuid.UUID, body: HoldCreate, services: ServicesDep, principal: DpoDep
) -> HoldRead:
    hold = await services.recordings.place_hold(
        actor_of(principal),
        reason=body.reason,
        reference=body.reference,
        note=body.note,
        recording_id=recording_id,
    )
    return _hold(hold)


@router.post("/v1/recordings/{recording_id}/holds/{hold_id}/release", response_model=HoldRead)
async def release_hold(
    recording_id: uuid.UUID, hold_id: uuid.UUID, services: ServicesDep, principal: DpoDep
) -> HoldRead:
    return _hold(await services.recordings.release_hold(hold_id, actor_of(principal), recording_id))


@router.post("/v1/holds", response_model=HoldRead, status_code=201)
async def place_caller_hold(
    body: CallerHoldCreate, services: ServicesDep, principal: DpoDep
) -> HoldRead:
    """Hold every recording of calls from ``caller``, present and future (complaint, police)."""
    hold = await services.recordings.place_hold(
        actor_of(principal),
        reason=body.reason,
        reference=body.reference,
        note=body.note,
        caller=body.caller,
    )
    return _hold(hold)


@router.post("/v1/holds/{hold_id}/release", response_model=HoldRead)
async def release_caller_hold(
    hold_id: uuid.UUID, services: ServicesDep, principal: DpoDep
) -> HoldRead:
    return _hold(await services.recordings.release_hold(hold_id, actor_of(principal)))
