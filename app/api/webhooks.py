"""PBX webhooks (SPEC §3.2): verify the signature on the raw body, inbox, apply, 2xx."""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Request

from app.api.deps import ServicesDep
from app.api.schemas import WebhookAck
from app.errors import AppError, BadSignature, MalformedInput, ProviderNotEnabled
from app.services.container import Services
from app.telephony.generic import MalformedEvent, parse_event
from app.telephony.signing import SignatureError, verify

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
log = logging.getLogger("recgate.webhooks")
MAX_WEBHOOK_BYTES = 256 * 1024


class PayloadTooLarge(AppError):
    status, slug, title = 413, "too-large", "Request body too large"


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_WEBHOOK_BYTES:
        raise PayloadTooLarge()
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_WEBHOOK_BYTES:
            raise PayloadTooLarge()
    return body


async def _signed_json_webhook(request: Request, services: Services, provider: str) -> WebhookAck:
    settings = services.settings
    key = settings.generic_secret_key
    if provider not in settings.enabled_providers or key is None:
        raise ProviderNotEnabled(f"Webhooks for {provider!r} are not enabled.")
    body = await _read_body(request)
    try:
        event_id = verify(
            key, request.headers, body, services.clock(), settings.webhook_tolerance_s
        )
    except SignatureError as exc:
        services.metrics.webhook_events.inc(
            provider=provider, type="unknown", outcome="bad_signature"
        )
        log.warning("%s webhook refused: %s", provider, exc)
        raise BadSignature() from exc
    try:
        event = parse_event(provider, event_id, body)
    except MalformedEvent as exc:
        await services.ingest.dead_letter(provider, event_id, str(exc), body)
        raise MalformedInput(str(exc)) from exc
    result = await services.ingest.ingest(event, json.loads(body))
    if result.needs_pause:
        services.gate.spawn_enforce_pause(provider, event.call.provider_call_id)
    return WebhookAck(status="duplicate" if result.duplicate else "applied")


@router.post("/generic", response_model=WebhookAck)
async def generic_webhook(request: Request, services: ServicesDep) -> WebhookAck:
    return await _signed_json_webhook(request, services, "generic")


@router.post("/sim", response_model=WebhookAck)
async def sim_webhook(request: Request, services: ServicesDep) -> WebhookAck:
    """The simulator speaks the generic contract, signed with the same secret."""
    return await _signed_json_webhook(request, services, "sim")
