"""Health, status and metrics (SPEC §3.5)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from app.api.deps import ServicesDep, authenticate, check_role, require
from app.domain.roles import Role
from app.services.tokens import Principal

router = APIRouter(tags=["ops"])
OpsDep = Annotated[Principal, Depends(require(Role.OPS))]


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "pass"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    readiness = await services.health.readiness()
    return JSONResponse(
        {"status": readiness.status, "checks": readiness.checks},
        status_code=503 if readiness.status == "fail" else 200,
        media_type="application/health+json",
    )


@router.get("/v1/status")
async def status(services: ServicesDep, _: OpsDep) -> dict[str, Any]:
    return await services.health.summary()


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request, services: ServicesDep) -> PlainTextResponse:
    if not services.settings.metrics_public:
        check_role(await authenticate(request, services), Role.OPS)
    summary = await services.health.summary()
    gauges = {
        "recgate_active_calls": ("Calls in progress.", float(summary["active_calls"])),
        "recgate_open_payment_segments": (
            "Payment segments not yet closed.",
            float(summary["open_segments"]),
        ),
        "recgate_retention_overdue": (
            "Recordings past their media deadline.",
            float(summary["retention_overdue"]),
        ),
    }
    return PlainTextResponse(
        services.metrics.render(gauges), media_type="text/plain; version=0.0.4"
    )
