"""PBX webhooks (SPEC §3.2): verify the signature on the raw body, inbox, apply, 2xx.

Every provider's routes come from its adapter (``app/telephony/registry.py``): each is a
plain function of the request's parts that authenticates and parses it. What every route does
around that is here, once: the body limit, 404 when the provider is off, 401 with the failed
check, 422 with a dead letter, and the acknowledgement.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from app.api.front import FrontRoute, read_body
from app.api.schemas import WebhookAck
from app.domain.events import PbxEvent
from app.errors import AppError, BadSignature, MalformedInput, ProviderNotEnabled
from app.logging import bind
from app.services.container import Services
from app.telephony.provider import (
    IncomingWebhook,
    Provider,
    WebhookMalformed,
    WebhookNotEnabled,
    WebhookRefused,
    WebhookRoute,
)
from app.telephony.registry import PROVIDERS

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
log = logging.getLogger("recgate.webhooks")
MAX_WEBHOOK_BYTES = 256 * 1024


class PayloadTooLarge(AppError):
    status, slug, title = 413, "too-large", "Request body too large"


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_WEBHOOK_BYTES:
        raise PayloadTooLarge()
    body, whole = await read_body(request, MAX_WEBHOOK_BYTES)
    if not whole:
        raise PayloadTooLarge()
    return body


def _refuse(services: Services, provider: str, reason: str) -> BadSignature:
    """A 401 that says which check failed (never the value it expected)."""
    services.metrics.webhook_events.inc(provider=provider, type="unknown", outcome="bad_signature")
    log.warning("%s webhook refused: %s", provider, reason)
    return BadSignature(reason)


Status = Literal["applied", "duplicate", "ignored"]
# Prebuilt answers: webhooks are the busiest route, and these never change.
_ACKS = {
    status: Response(
        content=WebhookAck(status=status).model_dump_json().encode(),
        media_type="application/json",
    ).body
    for status in ("applied", "duplicate", "ignored")
}


def _ack(status: Status) -> Response:
    return Response(content=_ACKS[status], media_type="application/json")


def _services(request: Request) -> Services:
    # Not a dependency: resolving one costs each webhook more than the lookup itself.
    services: Services = request.app.state.services
    return services


async def _apply(
    services: Services, event: PbxEvent, payload: dict[str, Any], raw: bytes
) -> Status:
    result = await services.intake.accept(event, payload, raw, webhook=True)
    # recgate's own ids on the request's log line (never the provider's call id).
    bind(call_id=result.call_id, segment_id=result.segment_to_drive)
    return "duplicate" if result.duplicate else "applied"


async def _handle(
    request: Request, services: Services, provider: Provider, route: WebhookRoute
) -> Status:
    settings = services.settings
    if not provider.configured(settings):
        raise ProviderNotEnabled(f"Webhooks for {provider.name!r} are not enabled.")
    # The IVR's payment requests first: a burst of webhooks read, verified and parsed now
    # would sit ahead of each of the payment's steps in the event loop (Answering).
    await services.gate.answering.done()
    body = await _read_body(request)
    scope = request.scope
    incoming = IncomingWebhook(
        # Webhook paths are fixed: the matched path is the one the PBX signed.
        path=scope["path"],
        query_string=scope["query_string"].decode("utf-8", "replace"),
        headers=request.headers,
        body=body,
        now=services.clock(),
    )
    try:
        accepted = route.accept(incoming, settings)
    except WebhookNotEnabled as exc:
        raise ProviderNotEnabled(f"{exc}.") from exc
    except WebhookRefused as exc:
        raise _refuse(services, provider.name, str(exc)) from exc
    except WebhookMalformed as exc:
        await services.intake.reject(provider.name, exc.event_id, str(exc), exc.stored)
        raise MalformedInput(str(exc)) from exc
    if accepted.event is None:
        # Authentic, but nothing recgate maps: not stored (DTMF digits among them).
        services.metrics.webhook_events.inc(
            provider=provider.name, type=accepted.ignored_as, outcome="ignored"
        )
        return "ignored"
    return await _apply(services, accepted.event, accepted.payload, accepted.raw)


def _endpoint(provider: Provider, route: WebhookRoute) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return _ack(await _handle(request, _services(request), provider, route))

    return endpoint


class _RawRoute(APIRoute):
    """A webhook endpoint reads the raw request itself (its signature covers the exact bytes):
    it has no parameters to resolve, so FastAPI's dependency and body handling is skipped on
    the busiest route. The route is still documented in the OpenAPI schema."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint


for _provider in PROVIDERS:
    for _route in _provider.webhooks:
        router.add_api_route(
            f"/{_route.path}",
            _endpoint(_provider, _route),
            methods=["POST"],
            response_model=WebhookAck,
            name=f"{_provider.name}_{_route.path.replace('/', '_').replace('-', '_')}_webhook",
            summary=_route.summary.split(". ")[0].rstrip("."),
            description=_route.summary,
            route_class_override=_RawRoute,
        )


def front_routes() -> list[FrontRoute]:
    """Every webhook route, for the hot routes' own dispatch (:class:`app.api.front.Front`)."""
    return [
        FrontRoute(route, route.endpoint) for route in router.routes if isinstance(route, _RawRoute)
    ]
