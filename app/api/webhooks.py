"""PBX webhooks (SPEC §3.2): verify the signature on the raw body, inbox, apply, 2xx."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request, Response

from app.api.schemas import WebhookAck
from app.domain.events import PbxEvent
from app.errors import AppError, BadSignature, MalformedInput, ProviderNotEnabled
from app.services.container import Services
from app.telephony import asterisk, rtpengine, twilio
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


def _refuse(services: Services, provider: str, reason: str) -> BadSignature:
    services.metrics.webhook_events.inc(provider=provider, type="unknown", outcome="bad_signature")
    log.warning("%s webhook refused: %s", provider, reason)
    return BadSignature()


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
    result = await services.intake.accept(event, payload, raw)
    return "duplicate" if result.duplicate else "applied"


async def _verify_signed(request: Request, services: Services, provider: str) -> tuple[str, bytes]:
    """The webhook id and raw body of a request signed with the generic secret (Standard
    Webhooks); refused before anything is stored when the signature does not hold."""
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
        raise _refuse(services, provider, str(exc)) from exc
    return event_id, body


async def _signed_json_webhook(request: Request, services: Services, provider: str) -> Status:
    event_id, body = await _verify_signed(request, services, provider)
    try:
        event, data = parse_event(provider, event_id, body)
    except MalformedEvent as exc:
        await services.intake.reject(provider, event_id, str(exc), body)
        raise MalformedInput(str(exc)) from exc
    return await _apply(services, event, data, body)


@router.post("/generic", response_model=WebhookAck)
async def generic_webhook(request: Request) -> Response:
    return _ack(await _signed_json_webhook(request, _services(request), "generic"))


@router.post("/sim", response_model=WebhookAck)
async def sim_webhook(request: Request) -> Response:
    """The simulator speaks the generic contract, signed with the same secret."""
    return _ack(await _signed_json_webhook(request, _services(request), "sim"))


@router.post("/asterisk", response_model=WebhookAck)
async def asterisk_webhook(request: Request) -> Response:
    """One ARI event object, relayed by the call-control application and signed like generic
    webhooks. Its id is built from the ARI event itself, so an event relayed twice, or also
    consumed from the ARI WebSocket, is applied once."""
    return _ack(await _asterisk(request, _services(request)))


async def _asterisk(request: Request, services: Services) -> Status:
    event_id, body = await _verify_signed(request, services, "asterisk")
    try:
        payload = asterisk.parse_body(body)
        event = asterisk.parse_event(
            payload, now=services.clock(), ari_url=services.settings.ari_url
        )
    except asterisk.MalformedEvent as exc:
        await services.intake.reject("asterisk", event_id, str(exc), body)
        raise MalformedInput(str(exc)) from exc
    if event is None:
        # Not stored: events recgate does not map (DTMF digits among them) stay out of the inbox.
        services.metrics.webhook_events.inc(provider="asterisk", type="unmapped", outcome="ignored")
        return "ignored"
    return await _apply(services, event, payload, body)


TwilioParser = Callable[[twilio.Params, str | None, str | None, datetime], PbxEvent | None]


async def _twilio_callback(request: Request, services: Services, parse: TwilioParser) -> Status:
    settings = services.settings
    token = settings.twilio_auth_token
    if "twilio" not in settings.enabled_providers or token is None:
        raise ProviderNotEnabled("Twilio callbacks are not enabled.")
    body = await _read_body(request)
    # Twilio signs the URL it was given; behind a proxy that is the public one, not ours.
    url = settings.public_base_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    content_type = request.headers.get("content-type", "")
    is_json = content_type.startswith("application/json")
    try:
        params = twilio.parse_body(body, content_type)
    except twilio.MalformedCallback as exc:
        raise _refuse(services, "twilio", "unreadable body") from exc
    signature = request.headers.get("x-twilio-signature")
    if not twilio.verify_signature(
        token.get_secret_value(),
        url,
        {} if is_json else params,
        signature,
        body if is_json else None,
    ):
        raise _refuse(services, "twilio", "X-Twilio-Signature missing or wrong")
    idempotency = request.headers.get("i-twilio-idempotency-token")
    service_area = request.query_params.get("service_area")
    try:
        event = parse(params, idempotency, service_area, services.clock())
    except twilio.MalformedCallback as exc:
        await services.intake.reject("twilio", idempotency, str(exc), body)
        raise MalformedInput(str(exc)) from exc
    if event is None:
        services.metrics.webhook_events.inc(provider="twilio", type="child-leg", outcome="ignored")
        return "ignored"
    payload = {name: values[0] if len(values) == 1 else values for name, values in params.items()}
    return await _apply(services, event, payload, body)


@router.post("/twilio/call-status", response_model=WebhookAck)
async def twilio_call_status(request: Request) -> Response:
    """Twilio ``statusCallback`` (call progress). Add ``?service_area=…`` to the URL."""
    return _ack(await _twilio_callback(request, _services(request), twilio.parse_call_status))


@router.post("/twilio/recording-status", response_model=WebhookAck)
async def twilio_recording_status(request: Request) -> Response:
    """Twilio ``recordingStatusCallback`` (in-progress, completed, absent)."""
    return _ack(await _twilio_callback(request, _services(request), twilio.parse_recording_status))


@router.post("/rtpengine", response_model=WebhookAck)
async def rtpengine_notification(request: Request) -> Response:
    """The rtpengine recording daemon's finish notification, one per file
    (``--notify-uri https://…/v1/webhooks/rtpengine?token=… --notify-post``).

    Everything is in ``X-Recording-*`` headers; the body (the file itself, with
    ``--notify-record``) is not read.
    """
    return _ack(await _rtpengine(request, _services(request)))


async def _rtpengine(request: Request, services: Services) -> Status:
    settings = services.settings
    expected = settings.rtpengine_notify_token
    if "rtpengine" not in settings.enabled_providers or expected is None:
        raise ProviderNotEnabled("rtpengine notifications are not enabled.")
    # The daemon signs nothing: the token in its notify URI is the only proof of origin.
    token = request.query_params.get("token", "")
    if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        raise _refuse(services, "rtpengine", "notify token missing or wrong")
    try:
        notification = rtpengine.parse_notification(request.headers, services.clock())
    except rtpengine.MalformedNotification as exc:
        seen = {k: v for k, v in request.headers.items() if k.startswith("x-recording-")}
        await services.intake.reject("rtpengine", None, str(exc), json.dumps(seen).encode())
        raise MalformedInput(str(exc)) from exc
    seen = {k: v for k, v in request.headers.items() if k.startswith("x-recording-")}
    raw = json.dumps(seen).encode()
    return await _apply(services, notification.event, dict(notification.payload), raw)
