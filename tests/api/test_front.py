"""The hot routes' own dispatch (``app/api/front.py``) answers as the framework would.

Payment starts and ends, like webhooks, skip the framework's routing, middleware and
dependency resolution. Every request here is sent twice: to recgate as it runs, and to the
same app with that dispatch switched off, so the framework answers it. Both must give the
same status, content type and body, refusals included (which the dispatch hands to the
framework), and tell the PBX the same.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import respx

from app.api.front import Front
from app.domain.roles import Role
from tests.conftest import Harness, assert_failure_observed

CARD = "4012888888881881"
JSON = {"content-type": "application/json"}

# (what, call id, token's role, headers, body)
REQUESTS: list[tuple[str, str, Role | None, dict[str, str], bytes]] = [
    ("start", "c-plain", Role.IVR, {}, b""),
    (
        "start",
        "c-body",
        Role.IVR,
        {"content-type": "application/json"},
        b'{"reference":"PAY-1","pause_behavior":"skip"}',
    ),
    ("start", "c-key", Role.IVR, {"idempotency-key": "k-1", **JSON}, b"{}"),
    ("start", "c-key", Role.IVR, {"idempotency-key": "k-1", **JSON}, b"{}"),
    ("start", "c-charset", Role.IVR, {"content-type": "application/json; charset=utf-8"}, b"{}"),
    ("end", "c-plain", Role.IVR, JSON, b'{"outcome":"authorised"}'),
    ("end", "c-plain", Role.IVR, {}, b""),
    ("end", "c-never", Role.IVR, {}, b""),
    ("start", "c-admin", Role.ADMIN, {}, b""),
    # Refused by the framework, wherever they arrive.
    ("start", "c-bad", None, {}, b""),
    ("start", "c-bad", Role.SUPERVISOR, {}, b""),
    ("start", "c-bad", Role.IVR, {"content-type": "application/json"}, b'{"nope":1}'),
    ("start", "c-bad", Role.IVR, {"content-type": "application/json"}, b"[]"),
    ("start", "c-bad", Role.IVR, {"content-type": "application/json"}, b"null"),
    ("start", "c-bad", Role.IVR, {"content-type": "application/json"}, b"{"),
    ("start", "c-bad", Role.IVR, {"content-type": "application/json"}, b"[" * 20_000),
    ("start", "c-bad", Role.IVR, {"content-type": "text/plain"}, b"{}"),
    ("start", "c-bad", Role.IVR, {}, b"{}"),  # JSON only when it says so
    ("start", "c-bad", Role.IVR, {"content-type": "application/merge-patch+json"}, b"{}"),
    ("start", "c-bad", Role.IVR, {"content-type": "application/json"}, b" " * 70_000),
    ("start", "c-bad", Role.IVR, {"idempotency-key": f"k-{CARD}"}, b""),
    ("start", "c-bad", Role.IVR, {"idempotency-key": "k" * 256}, b""),
    ("start", f"c-{CARD}", Role.IVR, {}, b""),
    ("start", "c-" + "x" * 260, Role.IVR, {}, b""),
    ("end", "c-bad", Role.IVR, {"content-type": "application/json"}, b'{"outcome":"maybe"}'),
    ("end", "c-bad", None, {}, b""),
]


async def _answers(h: Harness, prefix: str) -> list[tuple[int, str, Any]]:
    answers = []
    for what, call_id, role, headers, body in REQUESTS:
        sent = {**headers, **(h.auth(role) if role else {})}
        response = await h.client.post(
            f"/v1/calls/generic/{prefix}{call_id}/payment/{what}", content=body, headers=sent
        )
        # Each app makes its own ids; everything else must be the same.
        text = re.sub(
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "ID", response.text
        )
        answers.append(
            (response.status_code, response.headers["content-type"], text.replace(prefix, ""))
        )
    return answers


def _commands(pbx: respx.MockRouter, prefix: str) -> list[tuple[str, bytes]]:
    """The commands the PBX got for the calls named with ``prefix``."""
    return [
        (call.request.url.path.replace(prefix, ""), call.request.content)
        for call in pbx.calls
        if prefix in call.request.url.path
    ]


async def test_payment_routes_answer_as_the_framework_does(
    harness: Harness, answering_pbx: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = await _answers(harness, "front-")
    commands_fast = _commands(answering_pbx, "front-")
    served: list[str] = []

    def framework_only(self: Front, path: str) -> None:
        served.append(path)

    monkeypatch.setattr(Front, "_find", framework_only)
    framework = await _answers(harness, "inner-")
    assert len(served) == len(REQUESTS), "the framework answered these"
    commands_framework = _commands(answering_pbx, "inner-")

    for request, a, b in zip(REQUESTS, fast, framework, strict=True):
        assert a == b, f"{request[0]} {request[1]} {request[3]} {request[4][:40]!r}"
    # What the framework makes of each (a JSON null is no body; "+json" is JSON).
    assert [status for status, _, _ in fast] == [
        *(200, 200, 200, 200, 200, 200, 200, 409, 200),
        *(401, 403, 422, 422, 200, 422, 400, 415, 415, 200, 413, 422, 422, 422, 422, 422, 401),
    ]
    # The same commands to the PBX, in the same order (their signed bodies differ by ids).
    assert [path for path, _ in commands_fast] == [path for path, _ in commands_framework]
    assert all(json.loads(body)["action"] in ("pause", "resume") for _, body in commands_fast)


async def test_a_failure_on_the_fast_path_is_a_problem_and_observed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the skipped layers give a request is given on the fast path too: the app's own
    problem document for an unexpected error (``safe_to_collect`` never true), the request
    id, and the route template in the metrics."""

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(harness.services.gate, "start", broken)
    response = await harness.client.post(
        "/v1/calls/generic/c-9/payment/start", headers=harness.auth(Role.IVR)
    )
    await assert_failure_observed(
        harness, response, "/v1/calls/{provider}/{provider_call_id}/payment/start"
    )


async def test_a_body_sent_in_pieces_is_read_whole(
    harness: Harness, answering_pbx: respx.MockRouter
) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b'{"reference":', b'"PAY-2",', b'"pause_behavior":"skip"}'):
            yield piece

    response = await harness.client.post(
        "/v1/calls/generic/c-10/payment/start",
        content=pieces(),
        headers={**harness.auth(Role.IVR), "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["safe_to_collect"] is True
    sent = json.loads(answering_pbx.calls.last.request.content)
    assert sent["behavior"] == "skip"
