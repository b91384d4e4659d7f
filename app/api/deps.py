"""Dependencies shared by the routers: the service container and role checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from app.domain.roles import Role, may_use
from app.errors import DatabaseUnavailable, Forbidden, Unauthenticated
from app.services.audit import Actor
from app.services.container import Services
from app.services.tokens import Principal
from app.storage.db import DatabaseUnreachable


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]


async def authenticate(request: Request, services: ServicesDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("A bearer token is required.")
    principal = await services.auth.authenticate(token.strip())
    if principal is None:
        raise Unauthenticated("The bearer token is unknown or revoked.")
    return principal


def check_role(principal: Principal, *roles: Role) -> None:
    """:class:`Forbidden` unless ``principal`` may use an endpoint for ``roles``."""
    if not may_use(principal.role, frozenset(roles)):
        raise Forbidden(f"Role {principal.role.value!r} may not use this endpoint.")


def require(*roles: Role, fail_closed: bool = False) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits only ``roles`` (and ``admin``).

    With ``fail_closed`` (the payment endpoints), a database that cannot be reached to check
    the token answers ``safe_to_collect: false`` like every other refusal there.
    """

    # Only the request as parameter: FastAPI resolves no further dependency for it (this runs
    # on the payment endpoints' hot path).
    async def dependency(request: Request) -> Principal:
        try:
            principal = await authenticate(request, services_of(request))
        except DatabaseUnreachable as exc:
            if not fail_closed:
                raise
            raise DatabaseUnavailable(
                "The database is unavailable: do not take card details.", safe_to_collect=False
            ) from exc
        check_role(principal, *roles)
        return principal

    return dependency


def actor_of(principal: Principal) -> Actor:
    """The audit trail's name for the caller."""
    return Actor(principal.name, principal.role.value)
