"""The FastAPI application: create_app() and its lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.api import calls, disclosures, ops, recordings, retention, webhooks
from app.api.front import Front
from app.api.limits import BodySizeLimit
from app.api.observe import observe_requests
from app.config import Settings, get_settings
from app.domain.clock import Clock, utcnow
from app.errors import PROBLEM_CONTENT_TYPE, install_error_handlers, problem_schemas
from app.jobs.ari_events import AriEventConsumer, ari_events_enabled
from app.jobs.freeswitch_events import FreeSwitchEventConsumer, freeswitch_events_enabled
from app.jobs.watchdog import run_jobs, service_jobs
from app.services.container import Services

log = logging.getLogger("recgate")
_gc_settled = False


def _settle_garbage_collector() -> None:
    """Keep the collector's full passes off the payment path.

    Everything loaded by now (modules, models, compiled statements) lives as long as the
    process; a full collection walking it all took about 55 ms each time, stalling every
    request in flight. Frozen objects are left out of those passes, and young garbage is
    collected less eagerly.
    """
    global _gc_settled
    if _gc_settled:  # once per process (tests start many apps; freezing each would leak)
        return
    _gc_settled = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(2_000, 10, 100)


def create_app(settings: Settings | None = None, clock: Clock = utcnow) -> FastAPI:
    """Build the app. Services are created when it starts and closed when it stops."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.build(settings, clock)
        app.state.services = services
        try:
            await services.start()
        except BaseException:
            await services.close()
            raise
        _settle_garbage_collector()
        watchdog = None
        if settings.background_jobs:
            watchdog = asyncio.create_task(run_jobs(service_jobs(services)), name="jobs")
        # Opt-in (RECGATE_ARI_EVENTS), so not tied to background_jobs.
        ari_events = None
        if ari_events_enabled(settings):
            consumer = AriEventConsumer(settings, services.intake, clock, services.metrics)
            ari_events = asyncio.create_task(consumer.run(), name="ari-events")
        freeswitch_events = None  # opt-in too (RECGATE_FREESWITCH_EVENTS)
        if freeswitch_events_enabled(settings):
            esl = FreeSwitchEventConsumer(settings, services.intake, clock, services.metrics)
            freeswitch_events = asyncio.create_task(esl.run(), name="freeswitch-events")
        try:
            yield
        finally:
            # Event intake stops first, so nothing is applied while services close.
            if ari_events is not None:
                ari_events.cancel()
                with suppress(asyncio.CancelledError):
                    await ari_events
            if freeswitch_events is not None:
                freeswitch_events.cancel()
                with suppress(asyncio.CancelledError):
                    await freeswitch_events
            if watchdog is not None:
                watchdog.cancel()
                with suppress(asyncio.CancelledError):
                    await watchdog
                try:  # the last head, so entries since the last interval are covered too
                    await services.audit.checkpoint()
                except Exception:
                    log.exception("audit checkpoint at shutdown failed")
            await services.close()

    app = FastAPI(
        title="recgate",
        version="0.1.0",
        summary="Keeps card details out of call recordings; keeps recordings only as long as allowed.",
        lifespan=lifespan,
        # Starlette builds a slash redirect's Location from the Host header, which the client
        # chose; an API whose paths are documented has no need to guess.
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
        # recgate's metrics and request log are its own (app/api/observe.py); FastAPI's
        # OpenTelemetry hooks would only ask, on every request, whether anyone listens.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit)
    hot = [*webhooks.front_routes(), *calls.front_routes()]
    observe_requests(app, front=lambda inner, app: Front(inner, app, hot))
    # Webhooks first: they are most of the traffic, and routes are matched in order.
    app.include_router(webhooks.router)
    app.include_router(ops.router)
    app.include_router(calls.router)
    app.include_router(recordings.router)
    app.include_router(retention.router)
    app.include_router(disclosures.router)
    _serve_docs(app)
    _document_contract(app, metrics_public=settings.metrics_public)
    return app


# ---- /docs and /redoc, served without a CDN -----------------------------------------------

DOCS_ASSETS = "/docs/assets"
# Swagger UI 5 and ReDoc 2, as shipped by the fastapi-offline package.
_DOCS_FILES = Path(fastapi_offline.__file__).parent / "static"


def _serve_docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, their scripts served from this process: the
    service runs on networks that reach no CDN, and a page loading third-party script next to
    a token field is a risk of its own.

    The pages are module functions that read the app from the request, never closures over
    ``app``: FastAPI keeps each endpoint it has classified in a process-wide cache (4,096 per
    kind), so a closure there would keep its whole app, services and clients alive after the
    app has stopped."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=_DOCS_FILES), name="docs-assets")
    app.add_api_route("/docs", _swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        _oauth2_redirect_url(app), _swagger_ui_redirect, methods=["GET"], include_in_schema=False
    )
    app.add_api_route("/redoc", _redoc, methods=["GET"], include_in_schema=False)


def _openapi_url(app: FastAPI) -> str:
    return app.openapi_url or "/openapi.json"


def _oauth2_redirect_url(app: FastAPI) -> str:
    return app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"


async def _swagger_ui(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    return get_swagger_ui_html(
        openapi_url=_openapi_url(app),
        title=f"{app.title} - Swagger UI",
        oauth2_redirect_url=_oauth2_redirect_url(app),
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
    )


async def _swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


async def _redoc(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    return get_redoc_html(
        openapi_url=_openapi_url(app),
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        with_google_fonts=False,
    )


# ---- the OpenAPI document: who needs a token, and the problems each operation answers -----

_OPEN_PATHS = frozenset({"/livez", "/readyz"})
_WEBHOOKS = "/v1/webhooks/"
_PAYMENT_START = "/v1/calls/{provider}/{provider_call_id}/payment/start"
_PAYMENT_END = "/v1/calls/{provider}/{provider_call_id}/payment/end"
_MEDIA = "/v1/recordings/{recording_id}/media"
# What the routes' services can answer beyond the rules in _problem_statuses (SPEC §3.1, §3.3).
_CONFLICTS = frozenset(
    {
        ("post", _PAYMENT_START),  # the payment or the call has ended; an illegal transition
        ("post", _PAYMENT_END),  # no payment was opened
        ("get", _MEDIA),  # no copy of the media yet
        ("delete", "/v1/recordings/{recording_id}"),  # held, or still live
        ("post", "/v1/recordings/{recording_id}/holds"),  # the sweep is deleting it
    }
)
_GONE = frozenset({("get", _MEDIA), ("post", "/v1/recordings/{recording_id}/holds")})
_BAD_GATEWAY = frozenset({("post", _PAYMENT_END)})  # resume not confirmed
_MEDIA_TYPES = (
    "audio/wav",
    "audio/mpeg",
    "application/vnd.tcpdump.pcap",
    "application/octet-stream",
)
_STATUS_DESCRIPTIONS = {
    400: "The body could not be parsed (JSON nested too deeply, not UTF-8)",
    401: "No valid bearer token (webhooks: no valid signature)",
    403: "The token's role may not use this endpoint",
    404: "Not found (or the provider is not enabled)",
    409: "Conflicts with the current state",
    410: "The recording has been deleted",
    413: "Request body too large",
    415: "The body is not JSON",
    422: "The request does not match its schema",
    502: "A provider did not confirm",
    503: "Unavailable (database, or a provider that did not confirm); retry",
}
_WEBHOOK_AUTH = (
    "Authenticated by the sender's signature or shared secret, not by a bearer token: "
    "Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`) for "
    "generic, sim and asterisk; `X-Twilio-Signature` for Twilio; the `token` query parameter "
    "of the notify URI for rtpengine; `X-Recgate-Token` for a SIP proxy. A provider that is "
    "not enabled answers 404."
)
_HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Health",
    "description": (
        "draft-inadarei-api-health-check. Without an `ops` token, each check has its `status` only."
    ),
    "required": ["status", "checks"],
    "properties": {
        "status": {"type": "string", "enum": ["pass", "warn", "fail"]},
        "checks": {
            "type": "object",
            "additionalProperties": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string", "enum": ["pass", "warn", "fail"]}},
                },
            },
        },
    },
}


def _document_contract(app: FastAPI, *, metrics_public: bool) -> None:
    """Generate the OpenAPI document once, then add what FastAPI cannot see from the routes:
    the bearer scheme and which operations need it, and every problem they can answer."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            _add_contract(schema, metrics_public=metrics_public)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_contract(schema: dict[str, Any], *, metrics_public: bool) -> None:
    components = schema.setdefault("components", {})
    components["securitySchemes"] = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from `recgate tokens create`; its role decides what it may use.",
        }
    }
    schemas = components.setdefault("schemas", {})
    # FastAPI's own 422 shape is never sent: the handler answers a problem instead.
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas.update(problem_schemas())
    schemas["Health"] = _HEALTH_SCHEMA
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            _document_operation(path, method, operation, metrics_public=metrics_public)


def _document_operation(
    path: str, method: str, operation: dict[str, Any], *, metrics_public: bool
) -> None:
    webhook = path.startswith(_WEBHOOKS)
    needs_token = not (webhook or path in _OPEN_PATHS or (path == "/metrics" and metrics_public))
    if needs_token:
        operation["security"] = [{"bearerAuth": []}]
    elif path == "/readyz":
        operation["security"] = [{}, {"bearerAuth": []}]  # optional: an ops token sees details
    else:
        operation["security"] = []
    if webhook:
        description = operation.get("description", "")
        operation["description"] = f"{description}\n\n{_WEBHOOK_AUTH}".strip()
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if path == "/readyz":
        health = {
            "content": {
                "application/health+json": {"schema": {"$ref": "#/components/schemas/Health"}}
            }
        }
        responses["200"] = {"description": "Ready (pass or warn)", **health}
        responses["503"] = {"description": "Not ready (fail)", **health}
        return
    if path == _MEDIA:
        binary = {"schema": {"type": "string", "format": "binary"}}
        responses["200"] = {
            "description": "The recording's audio",
            "content": {media_type: binary for media_type in _MEDIA_TYPES},
        }
    problem = "PaymentProblem" if path in (_PAYMENT_START, _PAYMENT_END) else "Problem"
    content = {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": f"#/components/schemas/{problem}"}}}
    for status in _problem_statuses(path, method, operation, needs_token, webhook):
        entry = responses.setdefault(str(status), {})
        entry.setdefault("description", _STATUS_DESCRIPTIONS[status])
        entry["content"] = content
        if status == 401 and needs_token:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        if status == 503:
            entry["headers"] = {
                "Retry-After": {
                    "description": "When the database was unavailable",
                    "schema": {"type": "string"},
                }
            }
    operation["responses"] = dict(sorted(responses.items()))


def _problem_statuses(
    path: str, method: str, operation: dict[str, Any], needs_token: bool, webhook: bool
) -> list[int]:
    has_body = "requestBody" in operation
    has_input = has_body or bool(operation.get("parameters"))
    rules = {
        400: has_body,
        401: needs_token or webhook,
        403: needs_token,
        404: "{" in path or webhook,
        409: (method, path) in _CONFLICTS,
        410: (method, path) in _GONE,
        413: has_body or webhook,
        415: has_body,
        422: has_input or webhook,
        502: (method, path) in _BAD_GATEWAY,
        503: path not in _OPEN_PATHS,
    }
    return [status for status, applies in rules.items() if applies]
