"""Retention policy, what is due, the sweep, and the audit trail (SPEC §3.3, §3.4)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.api import cursors
from app.api.deps import ServicesDep, actor_of, require
from app.api.schemas import (
    AuditEntryRead,
    AuditPage,
    AuditVerifyRead,
    DueItem,
    DuePage,
    PolicyChangeRead,
    PolicyRead,
    PolicyUpdate,
    SweepRead,
)
from app.domain.roles import Role
from app.services.tokens import Principal

router = APIRouter(tags=["retention"])
DpoDep = Annotated[Principal, Depends(require(Role.DPO))]


@router.get("/v1/retention/policy", response_model=list[PolicyRead])
async def get_policy(services: ServicesDep, _: DpoDep) -> list[PolicyRead]:
    return [
        PolicyRead(service_area=area, media_months=m.media, record_months=m.record, overridden=o)
        for area, m, o in await services.retention.policies()
    ]


@router.put("/v1/retention/policy/{service_area}", response_model=PolicyChangeRead)
async def put_policy(
    service_area: str, body: PolicyUpdate, services: ServicesDep, principal: DpoDep
) -> PolicyChangeRead:
    change = await services.retention.set_policy(
        service_area, body.media_months, body.record_months, actor_of(principal)
    )
    return PolicyChangeRead(
        service_area=change.service_area,
        media_months=change.media_months,
        record_months=change.record_months,
        overridden=True,
        recordings_recomputed=change.recordings_recomputed,
        recordings_shortened=change.recordings_shortened,
        calls_recomputed=change.calls_recomputed,
        calls_shortened=change.calls_shortened,
        warnings=change.warnings,
    )


@router.get("/v1/retention/due", response_model=DuePage)
async def get_due(
    services: ServicesDep,
    _: DpoDep,
    within_days: Annotated[int, Query(ge=0, le=3650)] = 30,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DuePage:
    rows = await services.retention.due(within_days, limit, cursors.decode(cursor))
    items = [
        DueItem(
            id=r.id,
            provider=c.provider,
            provider_call_id=c.provider_call_id,
            service_area=c.service_area,
            retention_until=r.retention_until,
            held=held,
        )
        for r, c, held in rows
        if r.retention_until is not None
    ]
    next_cursor = None
    if len(rows) == limit and rows[-1][0].retention_until is not None:
        next_cursor = cursors.encode(rows[-1][0].retention_until, rows[-1][0].id)
    return DuePage(items=items, next_cursor=next_cursor)


@router.post("/v1/retention/sweep", response_model=SweepRead)
async def post_sweep(services: ServicesDep, _: DpoDep, dry_run: bool = False) -> SweepRead:
    result = await services.retention.sweep(dry_run=dry_run)
    return SweepRead(
        dry_run=result.dry_run,
        deleted=result.deleted,
        skipped_held=result.skipped_held,
        errors=result.errors,
        records_erased=result.records_erased,
    )


@router.get("/v1/audit", response_model=AuditPage)
async def get_audit(
    services: ServicesDep,
    _: DpoDep,
    target_id: str | None = None,
    action: str | None = None,
    cursor: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    entries = await services.audit.list(
        target_id=target_id, action=action, after_seq=cursor, limit=limit
    )
    items = [
        AuditEntryRead(
            seq=e.seq,
            at=e.at,
            actor=e.actor,
            role=e.role,
            action=e.action,
            target_type=e.target_type,
            target_id=e.target_id,
            purpose=e.purpose,
            detail=e.detail,
            hash=e.hash,
        )
        for e in entries
    ]
    return AuditPage(
        items=items, next_cursor=str(entries[-1].seq) if len(entries) == limit else None
    )


@router.get("/v1/audit/verify", response_model=AuditVerifyRead)
async def verify_audit(services: ServicesDep, _: DpoDep) -> AuditVerifyRead:
    check = await services.audit.verify()
    return AuditVerifyRead(
        ok=check.ok,
        entries=check.entries,
        head=check.head,
        first_bad_seq=check.first_bad_seq,
        reason=check.reason,
        unkeyed=check.unkeyed,
        checkpoint=check.checkpoint,
    )
