"""Payment gating and call lookup (SPEC §3.1)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Depends, Header, Path, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, ValidationError

from app.api.deps import ServicesDep, actor_of, require, services_of
from app.api.front import FrontRoute, Replay, read_body
from app.api.limits import API_BODY_LIMIT
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
from app.domain.ids import id_problem, valid_id
from app.domain.roles import Role
from app.services.gating import SegmentOutcome, outcome_body
from app.services.tokens import Principal

router = APIRouter(prefix="/v1/calls", tags=["calls"])
_Body = TypeVar("_Body", bound=BaseModel)

_ivr = require(Role.IVR, fail_closed=True)
IvrDep = Annotated[Principal, Depends(_ivr)]
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
    # The container is taken from the request, not as a dependency: one fewer to resolve.
    request: Request,
    provider: ProviderPath,
    provider_call_id: CallIdPath,
    _: IvrDep,
    body: Annotated[PaymentStart | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, object]:
    """Served by :func:`_start_now` (the hot routes' own dispatch); here when a request
    needs the framework's validation and errors."""
    return outcome_body(await _start(request, provider, provider_call_id, body, idempotency_key))


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
    """Served by :func:`_end_now`; here when a request needs the framework's validation."""
    return outcome_body(await _end(request, provider, provider_call_id, body))


async def _start(
    request: Request,
    provider: str,
    provider_call_id: str,
    body: PaymentStart | None,
    idempotency_key: str | None,
) -> SegmentOutcome:
    body = body or PaymentStart()
    return await services_of(request).gate.start(
        provider,
        provider_call_id,
        reference=body.reference,
        behavior=body.pause_behavior,
        idempotency_key=idempotency_key,
    )


async def _end(
    request: Request, provider: str, provider_call_id: str, body: PaymentEnd | None
) -> SegmentOutcome:
    body = body or PaymentEnd()
    return await services_of(request).gate.end(provider, provider_call_id, outcome=body.outcome)


# ---- the same two routes without the framework (app/api/front.py) ---------------------------
#
# The IVR waits on these. A request they take as it is (the usual one) is answered here: the
# same checks in the same order as the routes above, the same gate, the same JSON. One with
# anything to refuse (a parameter, a header, a body that is not a valid JSON object) goes to
# the routes above, so every refusal is the framework's own.

_PROVIDER = re.compile(r"[a-z_]{1,32}")


async def _as_is(request: Request, model: type[_Body]) -> _Body | Replay:
    """The body as ``model``, when the routes above would take this request as it is; what
    was read of it, to give back, when they would not."""
    raw, whole = await read_body(request, API_BODY_LIMIT)
    params = request.path_params
    if (
        not whole
        or not _PROVIDER.fullmatch(params["provider"])
        or not _usable_id(params["provider_call_id"])
    ):
        return Replay(raw, more=not whole)
    if not raw:
        return model()
    # A body is JSON when it says so (FastAPI's strict content type; others: 415 or 422).
    kind = request.headers.get("content-type")
    if kind is not None and kind.partition(";")[0].strip().lower() == "application/json":
        try:
            given = json.loads(raw)
            if isinstance(given, dict):
                return model.model_validate(given)
        except (ValueError, RecursionError, ValidationError):  # nested too deeply among them
            pass
    return Replay(raw)


def _usable_id(value: str) -> bool:
    return len(value) <= 255 and id_problem(value, "an id") is None


async def _start_now(request: Request) -> Response | Replay:
    key = request.headers.get("idempotency-key")
    if key is not None and not _usable_id(key):
        return Replay(more=True)
    body = await _as_is(request, PaymentStart)
    if isinstance(body, Replay):
        return body
    await _ivr(request)
    params = request.path_params
    outcome = await _start(request, params["provider"], params["provider_call_id"], body, key)
    return JSONResponse(outcome_body(outcome))


async def _end_now(request: Request) -> Response | Replay:
    body = await _as_is(request, PaymentEnd)
    if isinstance(body, Replay):
        return body
    await _ivr(request)
    params = request.path_params
    outcome = await _end(request, params["provider"], params["provider_call_id"], body)
    return JSONResponse(outcome_body(outcome))


def front_routes() -> list[FrontRoute]:
    """The payment routes, for the hot routes' own dispatch (:class:`app.api.front.Front`)."""
    served = {payment_start: _start_now, payment_end: _end_now}
    return [
        FrontRoute(route, served[route.endpoint])
        for route in router.routes
        if isinstance(route, APIRoute) and route.endpoint in served
    ]


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
