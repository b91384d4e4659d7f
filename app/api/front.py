"""The hot routes' own dispatch, ahead of the framework's middleware and routing.

Webhooks are nearly all of recgate's requests, and the IVR's payment starts and ends are the
ones a caller waits on. Matching them among every route, passing them through the error,
exception and body-limit layers and resolving their parameters as dependencies cost more CPU
than verifying a webhook, and on a busy 2-core machine a payment's latency follows its CPU.
Their endpoints read the request themselves. What the skipped layers give a request is given
here the same way: ``scope["app"]`` and ``scope["route"]`` (the request log and metrics name
the route) and an exception answered by the app's own handler for its class (a problem
document; the connection is kept). An endpoint that meets a request it does not take as it
is (a body or a parameter to refuse) gives it back with :class:`Replay`, and the framework
answers it as it answers every other request: its validation, its errors. Anything else goes
to ``inner``, the app's usual stack.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True, slots=True)
class Replay:
    """The framework is to answer this request after all; ``body``, as far as the endpoint
    read it, is given to it again (``more`` when the endpoint stopped before its end)."""

    body: bytes = b""
    more: bool = False


Endpoint = Callable[[Request], Awaitable[Response | Replay]]


@dataclass(frozen=True, slots=True)
class FrontRoute:
    """A documented ``POST`` route whose requests ``endpoint`` answers without the framework."""

    route: APIRoute
    endpoint: Endpoint


async def read_body(request: Request, limit: int) -> tuple[bytes, bool]:
    """The request's body from its ASGI messages (Starlette's body stream costs a hot route
    more), and whether that is all of it: reading stops once it is over ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            return b"".join(chunks), False
        if not message.get("more_body", False):
            return b"".join(chunks), True


class Front:
    """``POST`` to a :class:`FrontRoute`'s path straight to its endpoint; the rest to
    ``inner``. Fixed paths are looked up; templated ones (``/v1/calls/{provider}/…``) are
    matched by the route's own pattern, after a check of their fixed beginning."""

    def __init__(self, inner: ASGIApp, app: FastAPI, routes: Iterable[FrontRoute]) -> None:
        self.inner = inner
        self.app = app
        self.fixed: dict[str, FrontRoute] = {}
        self.templated: list[tuple[str, re.Pattern[str], FrontRoute]] = []
        for front in routes:
            path = front.route.path
            if "{" not in path:
                self.fixed[path] = front
            else:
                head = path[: path.index("{")]
                self.templated.append((head, front.route.path_regex, front))

    def _find(self, path: str) -> tuple[FrontRoute, dict[str, str]] | None:
        fixed = self.fixed.get(path)
        if fixed is not None:
            return fixed, {}
        for head, pattern, front in self.templated:
            if path.startswith(head) and (found := pattern.match(path)) is not None:
                return front, found.groupdict()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self._find(scope["path"]) if scope["type"] == "http" else None
        if found is None or scope["method"] != "POST":
            await self.inner(scope, receive, send)
            return
        front, params = found
        scope["app"] = self.app
        scope["route"] = front.route
        scope["path_params"] = params
        request = Request(scope, receive)
        try:
            answer = await front.endpoint(request)
        except Exception as exc:
            answer = await self._answer(request, exc)
        if isinstance(answer, Replay):
            await self.inner(scope, _replaying(answer, receive), send)
            return
        await answer(scope, receive, send)

    async def _answer(self, request: Request, exc: Exception) -> Response:
        handlers = self.app.exception_handlers
        for kind in type(exc).__mro__:
            handler = handlers.get(kind)
            if handler is not None:
                answered = handler(request, exc)
                return answered if isinstance(answered, Response) else await answered
        raise exc  # the app has a handler for Exception: not reached


def _replaying(replay: Replay, receive: Receive) -> Receive:
    """``receive`` with what the endpoint read of the body given first."""
    given = False

    async def again() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": replay.body, "more_body": replay.more}

    return again
