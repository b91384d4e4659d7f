"""The error tree and the RFC 9457 ``application/problem+json`` handlers.

Every error leaves the service as a problem document; nothing internal (stack traces, SQL,
provider secrets) is ever in one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.domain.scrub import scrub_text
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
        # The detail can quote the request (an unknown service area, a malformed event) and
        # the instance is the request's path: either may hold a card number.
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            body["detail"] = scrub_text(self.detail)
        if instance:
            body["instance"] = scrub_text(instance)
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


class UnsupportedMediaType(AppError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


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


def _path(request: Request) -> str:
    """The request's path as problems and log lines may show it: a path can hold a card number
    (``/v1/calls/generic/4111…``), and never the Host header, which the client chose."""
    return scrub_text(request.url.path)


def _database_down(request: Request) -> JSONResponse:
    error = DatabaseUnavailable("The database is unavailable; nothing was stored. Try again.")
    log.warning("database unavailable on %s %s", request.method, _path(request))
    return _problem(error.status, error.to_problem(request.url.path), error.headers)


# PostgreSQL's "character not in repertoire" and "untranslatable character": text it cannot
# hold, such as NUL (\u0000, valid JSON and a valid query string), which only a request brings.
_UNSTORABLE_TEXT_SQLSTATES = frozenset({"22021", "22P05"})


UNSTORABLE_TEXT = "The request holds a character that cannot be stored."


def unstorable_text(exc: BaseException) -> bool:
    """Whether ``exc`` is the database refusing text it cannot hold (the request's fault)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "sqlstate", None) in _UNSTORABLE_TEXT_SQLSTATES:
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


def _validation_issue(error: Mapping[str, Any]) -> dict[str, Any]:
    """One validation error as a problem shows it. ``loc`` names JSON keys the client sent and
    ``msg`` can quote its value, so both are scrubbed; ``input`` and ``ctx`` hold raw values and
    are left out."""
    return {
        "loc": [scrub_text(str(part)) for part in error.get("loc", ())],
        "msg": scrub_text(str(error.get("msg", ""))),
        "type": str(error.get("type", "")),
    }


def _is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _body_not_json(request: Request, exc: RequestValidationError) -> bool:
    """True when a JSON body was sent as something else: FastAPI hands the raw bytes to the
    model, and the client is better told 415 than that its bytes are not an object."""
    if _is_json(request.headers.get("content-type", "")):
        return False
    return any(
        tuple(err.get("loc", ())) == ("body",) and err.get("type") != "missing"
        for err in exc.errors()
    )


_HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Not allowed for this role"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


def problem_schemas() -> dict[str, dict[str, Any]]:
    """OpenAPI components for the problem documents the handlers here emit."""
    problem: dict[str, Any] = {
        "type": "object",
        "title": "Problem",
        "description": "RFC 9457 problem details. Extension members may follow.",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {
                "type": "string",
                "description": f"A stable slug under `{PROBLEM_BASE}`, e.g. `{PROBLEM_BASE}not-found`.",
            },
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string", "description": "The request's path."},
            "errors": {
                "type": "array",
                "description": "On 422 for a request that does not match its schema.",
                "items": {"$ref": "#/components/schemas/ValidationIssue"},
            },
        },
        "additionalProperties": True,
    }
    payment = {
        "title": "PaymentProblem",
        "description": (
            "A problem from a payment endpoint. Every refusal that means *do not take card "
            "details* carries `safe_to_collect: false`; the segment's `state` and id are given "
            "where one exists."
        ),
        "allOf": [{"$ref": "#/components/schemas/Problem"}],
        "properties": {
            "safe_to_collect": {"type": "boolean", "enum": [False]},
            "state": {"type": "string"},
            "segment_id": {"type": "string", "format": "uuid"},
            "recordings": {"type": "array", "items": {"type": "object"}},
        },
    }
    issue = {
        "type": "object",
        "title": "ValidationIssue",
        "required": ["loc", "msg", "type"],
        "properties": {
            "loc": {"type": "array", "items": {"type": "string"}},
            "msg": {"type": "string"},
            "type": {"type": "string"},
        },
    }
    return {"Problem": problem, "PaymentProblem": payment, "ValidationIssue": issue}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error, known or not, with a problem document."""

    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return _problem(exc.status, exc.to_problem(request.url.path), exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if _body_not_json(request, exc):
            unsupported = UnsupportedMediaType("Request bodies are JSON (application/json).")
            return _problem(415, unsupported.to_problem(request.url.path))
        # The offending input is never echoed: it may hold card data.
        body = MalformedInput("The request does not match the expected shape.").to_problem(
            request.url.path
        )
        body["errors"] = [_validation_issue(err) for err in exc.errors()]
        return _problem(422, body)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug, title = _HTTP_SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
        body = {
            "type": PROBLEM_BASE + slug,
            "title": title,
            "status": exc.status_code,
            "instance": _path(request),
        }
        if exc.status_code == 400:
            # FastAPI's 400: a body it could not parse (JSON nested too deeply, not UTF-8).
            body["detail"] = "The request body could not be parsed."
        return _problem(exc.status_code, body, dict(exc.headers) if exc.headers else None)

    @app.exception_handler(DatabaseUnreachable)
    async def _unreachable(request: Request, exc: DatabaseUnreachable) -> JSONResponse:
        return _database_down(request)

    @app.exception_handler(SQLAlchemyError)
    async def _database(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        # Answered here rather than by the catch-all below, which closes the connection.
        if database_unavailable(exc):
            return _database_down(request)
        if unstorable_text(exc):
            unstorable = MalformedInput(UNSTORABLE_TEXT)
            return _problem(422, unstorable.to_problem(request.url.path))
        log.exception("database error on %s %s", request.method, _path(request))
        return _problem(500, AppError().to_problem(request.url.path))

    @app.exception_handler(Exception)
    async def _unknown(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, _path(request))
        return _problem(500, AppError().to_problem(request.url.path))
