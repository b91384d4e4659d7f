"""Disclosures and subject access (SPEC §3.3); role ``dpo`` (and ``admin``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from app.api import cursors
from app.api.deps import ServicesDep, actor_of, require
from app.api.recordings import _hold
from app.api.schemas import (
    DisclosureCreate,
    DisclosurePage,
    DisclosureRead,
    Recipient,
    SubjectAccessRead,
    SubjectCallRead,
    SubjectRecordingRead,
    TombstoneRead,
)
from app.domain.roles import Role
from app.errors import PROBLEM_CONTENT_TYPE
from app.services.disclosures import DisclosureRequest, DisclosureService, SubjectAccessReport
from app.services.tokens import Principal
from app.storage.models import Disclosure

router = APIRouter(tags=["disclosures"])

DpoDep = Annotated[Principal, Depends(require(Role.DPO))]


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


async def _disclosure_service(services: ServicesDep) -> DisclosureService:
    return services.disclosures


DisclosuresDep = Annotated[DisclosureService, Depends(_disclosure_service)]


def disclosure_read(d: Disclosure) -> DisclosureRead:
    return DisclosureRead.model_validate(d, from_attributes=True)


def subject_access_read(report: SubjectAccessReport) -> SubjectAccessRead:
    """The subject access answer; the CLI export writes it as ``metadata.json``."""
    return SubjectAccessRead(
        caller=report.caller,
        generated_at=report.generated_at,
        calls=[SubjectCallRead.model_validate(c, from_attributes=True) for c in report.calls],
        recordings=[
            SubjectRecordingRead(
                id=r.id,
                call_id=r.call_id,
                provider_recording_id=r.provider_recording_id,
                state=r.state,
                started_at=r.started_at,
                ended_at=r.ended_at,
                duration_s=r.duration_s,
                quarantined=r.quarantined,
                retention_until=r.retention_until,
                media_available=r.media_path is not None,
                media_sha256=r.media_sha256,
                media_size=r.media_size,
            )
            for r in report.recordings
        ],
        holds=[_hold(h) for h in report.holds],
        disclosures=[disclosure_read(d) for d in report.disclosures],
        tombstones=[
            TombstoneRead(
                id=r.id, call_id=r.call_id, deleted_at=r.deleted_at, deleted_reason=r.deleted_reason
            )
            for r in report.tombstones
            if r.deleted_at is not None
        ],
    )


@router.post(
    "/v1/recordings/{recording_id}/disclosures",
    response_model=DisclosureRead,
    status_code=201,
    responses={
        409: _problem("recgate holds no copy of the recording's media"),
        410: _problem("The recording has been deleted"),
    },
)
async def disclose(
    recording_id: uuid.UUID, body: DisclosureCreate, service: DisclosuresDep, principal: DpoDep
) -> DisclosureRead:
    """Record that the recording's media was shared, with its sha256 at the time."""
    disclosure = await service.disclose(
        recording_id,
        DisclosureRequest(
            recipient=body.recipient,
            recipient_name=body.recipient_name,
            reference=body.reference,
            lawful_basis=body.lawful_basis,
            justification=body.justification,
        ),
        actor_of(principal),
        may_see_quarantined=principal.role in (Role.DPO, Role.ADMIN),
    )
    return disclosure_read(disclosure)


@router.get("/v1/recordings/{recording_id}/disclosures", response_model=list[DisclosureRead])
async def list_recording_disclosures(
    recording_id: uuid.UUID, service: DisclosuresDep, principal: DpoDep
) -> list[DisclosureRead]:
    rows = await service.for_recording(recording_id, actor_of(principal))
    return [disclosure_read(d) for d in rows]


@router.get("/v1/disclosures", response_model=DisclosurePage)
async def list_disclosures(
    service: DisclosuresDep,
    principal: DpoDep,
    recipient: Annotated[str | None, Query(max_length=255)] = None,
    recipient_type: Recipient | None = None,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DisclosurePage:
    """Every disclosure, newest first; ``recipient`` matches part of the name, any case."""
    rows = await service.search(
        actor_of(principal),
        recipient=recipient,
        recipient_type=recipient_type,
        disclosed_from=from_,
        disclosed_to=to,
        before=cursors.decode(cursor),
        limit=limit,
    )
    next_cursor = cursors.next_page(rows, limit, lambda d: (d.disclosed_at, d.id))
    return DisclosurePage(items=[disclosure_read(d) for d in rows], next_cursor=next_cursor)


@router.get("/v1/subject-access", response_model=SubjectAccessRead)
async def subject_access(
    caller: Annotated[str, Query(min_length=1, max_length=64)],
    service: DisclosuresDep,
    principal: DpoDep,
) -> SubjectAccessRead:
    """Every call, recording, hold, disclosure and tombstone for a caller's number, matched
    on E.164 whatever formatting was stored (national numbers are read as UK numbers)."""
    return subject_access_read(await service.subject_access(caller, actor_of(principal)))
