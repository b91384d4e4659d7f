"""Health, status and metrics (SPEC §3.5)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from app.api.deps import ServicesDep, authenticate, check_role, require
from app.domain.roles import Role, may_use
from app.errors import Unauthenticated
from app.services.container import Services
from app.services.tokens import Principal
from app.storage.db import DatabaseUnreachable

router = APIRouter(tags=["ops"])
OpsDep = Annotated[Principal, Depends(require(Role.OPS))]
# A load balancer polls /readyz with whatever it was given; a slow token lookup must not make
# the service look unready.
_READYZ_AUTH_TIMEOUT_S = 1.0


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "pass"}


@router.get("/readyz")
async def readyz(request: Request, services: ServicesDep) -> JSONResponse:
    """Open to all; the details of each check only for an `ops` (or `admin`) token. Any other
    token, valid or not, sees what an anonymous caller sees: no 401 for a load balancer."""
    readiness = await services.health.readiness()
    # Tokens live in the database: while it is down, nobody's can be checked.
    operator = (
        "authorization" in request.headers
        and _database_up(readiness.checks)
        and await _is_operator(request, services)
    )
    return JSONResponse(
        readiness.detailed() if operator else readiness.minimal(),
        status_code=503 if readiness.status == "fail" else 200,
        media_type="application/health+json",
    )


def _database_up(checks: dict[str, list[dict[str, Any]]]) -> bool:
    return all(e["status"] != "fail" for e in checks.get("database:connection", []))


async def _is_operator(request: Request, services: Services) -> bool:
    try:
        async with asyncio.timeout(_READYZ_AUTH_TIMEOUT_S):
            principal = await authenticate(request, services)
    except (Unauthenticated, DatabaseUnreachable, SQLAlchemyError, TimeoutError):
        return False
    return may_use(principal.role, frozenset({Role.OPS}))


@router.get("/v1/status")
async def status(services: ServicesDep, _: OpsDep) -> dict[str, Any]:
    return await services.health.summary()


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus exposition (docs/operations.md): the row-count gauges are read now, readiness
    is the cached answer (computed now when it has expired)."""
    if not services.settings.metrics_public:
        check_role(await authenticate(request, services), Role.OPS)
    _, gauges = await asyncio.gather(services.health.readiness(), services.health.database_gauges())
    services.metrics.set_database_gauges(gauges)
    body, content_type = services.metrics.render(request.headers.get("accept", ""))
    return Response(content=body, media_type=content_type)
