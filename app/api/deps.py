"""Dependencies shared by the routers: the service container and role checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from app.domain.roles import Role, may_use
from app.errors import Forbidden, Unauthenticated
from app.services.audit import Actor
from app.services.container import Services
from app.services.tokens import Principal


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def authenticate(request: Request, services: ServicesDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("A bearer token is required.")
    principal = await services.tokens.authenticate(token.strip())
    if principal is None:
        raise Unauthenticated("The bearer token is unknown or revoked.")
    return principal


def require(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits only ``roles`` (and ``admin``)."""
    allowed = frozenset(roles)

    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not may_use(principal.role, allowed):
            raise Forbidden(f"Role {principal.role.value!r} may not use this endpoint.")
        return principal

    return dependency


def actor_of(principal: Principal) -> Actor:
    """The audit trail's name for the caller."""
    return Actor(principal.name, principal.role.value)
