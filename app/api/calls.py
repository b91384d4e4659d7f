"""Payment gating and call lookup (SPEC §3.1)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Request
from pydantic import AfterValidator

from app.api.deps import ServicesDep, actor_of, require, services_of
from app.api.schemas import (
    CallRead,
    CallRecordingRead,
    ExposureRead,
    PaymentEnd,
    PaymentResult,
    PaymentStart,
    SegmentRead,
    TimelineEntry,
)
from app.domain.ids import valid_id
from app.domain.roles import Role
from app.services.gating import outcome_body
from app.services.tokens import Principal

router = APIRouter(prefix="/v1/calls", tags=["calls"])

IvrDep = Annotated[Principal, Depends(require(Role.IVR, fail_closed=True))]
ProviderPath = Annotated[str, Path(max_length=32, pattern=r"^[a-z_]+$")]
# Ids are stored and echoed verbatim: one holding a card number, or characters that cannot be
# shown faithfully, is refused (422) before anything is stored.
CallIdPath = Annotated[
    str,
    Path(min_length=1, max_length=255),
    AfterValidator(lambda value: valid_id(value, "the call id")),
]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255),
    AfterValidator(lambda value: None if value is None else valid_id(value, "Idempotency-Key")),
]
CallReaderDep = Annotated[Principal, Depends(require(Role.IVR, Role.SUPERVISOR, Role.DPO))]
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


@router.post(
    "/{provider}/{provider_call_id}/payment/start",
    response_model=PaymentResult,
    responses={503: {"description": "Pause not confirmed: do not collect", **_PROBLEM}},
)
async def payment_start(
    # The container is taken from the request, not as a dependency: one fewer to resolve on
    # the hot path.
    request: Request,
    provider: ProviderPath,
    provider_call_id: CallIdPath,
    _: IvrDep,
    body: Annotated[PaymentStart | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, object]:
    body = body or PaymentStart()
    outcome = await services_of(request).gate.start(
        provider,
        provider_call_id,
        reference=body.reference,
        behavior=body.pause_behavior,
        idempotency_key=idempotency_key,
    )
    return outcome_body(outcome)


@router.post(
    "/{provider}/{provider_call_id}/payment/end",
    response_model=PaymentResult,
    responses={
        409: {"description": "No payment opened", **_PROBLEM},
        502: {"description": "Resume not confirmed", **_PROBLEM},
    },
)
async def payment_end(
    request: Request,
    provider: ProviderPath,
    provider_call_id: CallIdPath,
    _: IvrDep,
    body: Annotated[PaymentEnd | None, Body()] = None,
) -> dict[str, object]:
    body = body or PaymentEnd()
    outcome = await services_of(request).gate.end(provider, provider_call_id, outcome=body.outcome)
    return outcome_body(outcome)


@router.get("/{provider}/{provider_call_id}", response_model=CallRead)
async def get_call(
    provider: ProviderPath,
    provider_call_id: CallIdPath,
    services: ServicesDep,
    principal: CallReaderDep,
) -> CallRead:
    detail = await services.calls.detail(provider, provider_call_id, actor_of(principal))
    call = detail.call
    return CallRead(
        provider=call.provider,
        provider_call_id=call.provider_call_id,
        state=call.state,
        service_area=call.service_area,
        direction=call.direction,
        started_at=call.started_at,
        answered_at=call.answered_at,
        ended_at=call.ended_at,
        record_retention_until=call.record_retention_until,
        recordings=[
            CallRecordingRead.model_validate(r, from_attributes=True) for r in detail.recordings
        ],
        segments=[SegmentRead.model_validate(x, from_attributes=True) for x in detail.segments],
        exposures=[ExposureRead.model_validate(e, from_attributes=True) for e in detail.exposures],
        timeline=[
            TimelineEntry(
                at=t.at,
                entity=t.entity,
                entity_id=t.entity_id,
                from_state=t.from_state,
                to_state=t.to_state,
                cause=t.cause,
            )
            for t in detail.transitions
        ],
    )
