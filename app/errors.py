"""The error tree and the RFC 9457 ``application/problem+json`` handlers.

Every error leaves the service as a problem document; nothing internal (stack traces, SQL,
provider secrets) is ever in one.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.domain.scrub import scrub
from app.storage.db import DatabaseUnreachable, database_unavailable

PROBLEM_BASE = "/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"
log = logging.getLogger("recgate.errors")


class AppError(Exception):
    """Base of every error recgate answers with a problem document."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class Unauthenticated(AppError):
    status, slug, title = 401, "unauthenticated", "Authentication required"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers = {"WWW-Authenticate": "Bearer"}


class BadSignature(AppError):
    status, slug, title = 401, "bad-signature", "Webhook signature missing or invalid"


class Forbidden(AppError):
    status, slug, title = 403, "forbidden", "Not allowed for this role"


class NotFound(AppError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(AppError):
    status, slug, title = 409, "conflict", "Conflict with the current state"


class IllegalStateTransition(Conflict):
    slug, title = "illegal-transition", "State transition not allowed"


class NoOpenPayment(Conflict):
    slug, title = "no-open-payment", "No payment segment was opened for this call"


class PaymentNotOpen(Conflict):
    slug, title = "payment-ended", "This payment has already ended"


class CallEnded(Conflict):
    slug, title = "call-ended", "The call has ended"


class MalformedInput(AppError):
    status, slug, title = 422, "malformed", "Request body is malformed"


class ProviderNotEnabled(AppError):
    status, slug, title = 404, "provider-not-enabled", "Provider is not enabled"


class ProviderControlMissing(AppError):
    """Webhooks from the provider are accepted but recgate cannot pause its recordings."""

    status, slug, title = 503, "no-recording-control", "Recording control is not configured"


class PauseNotConfirmed(AppError):
    status, slug, title = 503, "pause-not-confirmed", "Recording pause was not confirmed"


class ResumeNotConfirmed(AppError):
    status, slug, title = 502, "resume-not-confirmed", "Recording resume was not confirmed"


class CallBusy(AppError):
    """A start or end that only waited behind another command on the call, past its deadline."""

    status, slug, title = 503, "call-busy", "Another operation on this call did not finish in time"


class ServiceUnavailable(AppError):
    status, slug, title = 503, "unavailable", "Service unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """The database cannot be used: nothing was stored, so nothing is acknowledged."""

    slug, title = "database-unavailable", "Database unavailable"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        # A PBX retrying a webhook, or an IVR retrying a payment end, should wait a moment.
        self.headers = {"Retry-After": "1"}


def _problem(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=headers)


def _database_down(request: Request) -> JSONResponse:
    error = DatabaseUnavailable("The database is unavailable; nothing was stored. Try again.")
    log.warning("database unavailable on %s %s", request.method, request.url.path)
    return _problem(error.status, error.to_problem(request.url.path), error.headers)


_HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Not allowed for this role"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error, known or not, with a problem document."""

    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return _problem(exc.status, exc.to_problem(request.url.path), exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The offending input is never echoed: it may hold card data.
        errors = [
            {"loc": [str(p) for p in err.get("loc", ())], "msg": scrub(str(err.get("msg", "")))}
            for err in exc.errors()
        ]
        body = MalformedInput("The request does not match the expected shape.").to_problem(
            request.url.path
        )
        body["errors"] = errors
        return _problem(422, body)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug, title = _HTTP_SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
        body = {
            "type": PROBLEM_BASE + slug,
            "title": title,
            "status": exc.status_code,
            "instance": request.url.path,
        }
        return _problem(exc.status_code, body, dict(exc.headers) if exc.headers else None)

    @app.exception_handler(DatabaseUnreachable)
    async def _unreachable(request: Request, exc: DatabaseUnreachable) -> JSONResponse:
        return _database_down(request)

    @app.exception_handler(SQLAlchemyError)
    async def _database(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        # Answered here rather than by the catch-all below, which closes the connection.
        if database_unavailable(exc):
            return _database_down(request)
        log.exception("database error on %s %s", request.method, request.url.path)
        return _problem(500, AppError().to_problem(request.url.path))

    @app.exception_handler(Exception)
    async def _unknown(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _problem(500, AppError().to_problem(request.url.path))
