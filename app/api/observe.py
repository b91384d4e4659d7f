"""What every HTTP request leaves behind, paid once per request on the hot path: its request
id (``X-Request-ID``), its duration in ``recgate_http_request_duration_seconds``, and one log
line (method, route template, status, duration, request id and the ids services bound).

A pure ASGI middleware, outermost, so it also sees the 500s Starlette's error middleware
answers and the 413s of the body limit: ``BaseHTTPMiddleware`` would cost the payment path a
task and a stream per request.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator

from fastapi import FastAPI
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.domain.scrub import scrub_text
from app.logging import bind_request, log_fields, unbind
from app.services.metrics import Metrics

log = logging.getLogger("recgate.http")

REQUEST_ID_HEADER = "x-request-id"
_HEADER = REQUEST_ID_HEADER.encode()
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
UNMATCHED = "unmatched"
# Any other method (a client can send anything) is "other" in metrics and logs.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Polled by load balancers and scrapers every few seconds: their successes are logged at DEBUG.
_PROBES = frozenset({"/livez", "/readyz", "/metrics"})


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's ``X-Request-ID`` when it is sane (≤ 128 of ``[A-Za-z0-9._-]``, and no card
    number: it is logged and echoed), else a new one."""
    for name, value in headers:
        if name == _HEADER:
            candidate = value.decode("latin-1")
            if _SANE_ID.fullmatch(candidate) and scrub_text(candidate) == candidate:
                return candidate
            break
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def _id_prefix() -> str:
    """64 random bits naming this process's request ids; with two hex letters at least, so
    the scrubber reads the whole id as an identifier, never as a card number."""
    while True:
        prefix = secrets.token_hex(8)
        if sum(ch in "abcdef" for ch in prefix) >= 2:
            return prefix


# A request id is unique (a random prefix per process, then a counter), not secret: one
# from the operating system's random source per request cost more than the request's log.
_ID_PREFIX = _id_prefix()
_ID_COUNTER = itertools.count(1)


def route_template(scope: Scope, status: int) -> str:
    """The template of the route that served the request (``/v1/calls/{provider}/…``), never
    the raw path; ``unmatched`` when no route matches (a 404)."""
    route = scope.get("route")
    if route is None and status != 404 and "app" in scope:
        # Answered before routing (a 413 from the body limit): match once, off the hot path.
        route = _match(scope["app"].router.routes, scope)
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    return f"{path}/{{path}}" if isinstance(route, Mount) else path


def _match(routes: Iterable[BaseRoute], scope: Scope) -> BaseRoute | None:
    partial = None
    for route in _flat(routes):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial


def _flat(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        # FastAPI keeps an included router whole (its routes resolve only when handled); the
        # routers here are included without a prefix of their own, so their paths are whole.
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat(inner.routes)
        else:
            yield route


class RequestObserver:
    """Request id, duration histogram and request log line for each HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope["headers"])
        header = (_HEADER, request_id.encode())
        status = 500  # unless a response starts: an exception no handler answered

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = bind_request(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            method = scope["method"] if scope["method"] in _METHODS else "other"
            route = route_template(scope, status)
            metrics = _metrics(scope)
            if metrics is not None:
                metrics.observe_http(method, route, status, seconds)
            _log_request(method, route, status, seconds)
            unbind(token)


def _metrics(scope: Scope) -> Metrics | None:
    # The services (and their registry) exist while the app's lifespan runs.
    services = getattr(scope["app"].state, "services", None) if "app" in scope else None
    return None if services is None else services.metrics


def _log_request(method: str, route: str, status: int, seconds: float) -> None:
    if status >= 500:
        level = logging.WARNING
    elif route in _PROBES and status < 400:
        level = logging.DEBUG
    else:
        level = logging.INFO
    if not log.isEnabledFor(level):
        return
    duration_ms = round(seconds * 1000, 1)
    log_fields(
        log,
        level,
        "%s %s %d %.1f ms",
        (method, route, status, duration_ms),
        {"method": method, "route": route, "status": status, "duration_ms": duration_ms},
    )


def observe_requests(
    app: FastAPI, front: Callable[[ASGIApp, FastAPI], ASGIApp] | None = None
) -> None:
    """Put :class:`RequestObserver` outside every other middleware of ``app``, Starlette's
    error middleware included; ``front`` (the webhooks' own dispatch) just inside it."""
    build = app.build_middleware_stack

    def build_observed() -> ASGIApp:
        stack = build()
        return RequestObserver(stack if front is None else front(stack, app))

    app.build_middleware_stack = build_observed  # type: ignore[method-assign]
