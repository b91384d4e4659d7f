"""Call lifecycle from a SIP proxy in front of rtpengine (issue 10): Kamailio's form POSTs to
``/v1/webhooks/sip-proxy`` make rtpengine calls recgate knows from start to end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest

from app.domain.roles import Role
from tests.api.test_rtpengine import FakeNg, ng  # noqa: F401  (the fixture)
from tests.conftest import Harness

PROXY_TOKEN = "sip-proxy-token-for-tests-000001"
CALL = "5f1c0e7a2b@127.0.0.1"


@pytest.fixture
async def proxy(make_harness: Callable[..., Any], ng: FakeNg) -> AsyncIterator[Harness]:  # noqa: F811
    ng.calls.add(CALL)
    async with make_harness(rtpengine_ng=ng.address, sip_proxy_token=PROXY_TOKEN) as h:
        yield h


async def report(
    h: Harness, event: str, call_id: str = CALL, token: str | None = PROXY_TOKEN, **fields: str
) -> httpx.Response:
    return await post_form(h, {"event": event, "call_id": call_id, **fields}, token)


async def post_form(h: Harness, fields: dict[str, str], token: str | None) -> httpx.Response:
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if token is not None:
        headers["x-recgate-token"] = token
    return await h.client.post("/v1/webhooks/sip-proxy", content=urlencode(fields), headers=headers)


async def the_call(h: Harness, call_id: str = CALL) -> dict[str, Any]:
    response = await h.client.get(
        f"/v1/calls/rtpengine/{quote(call_id, safe='')}", headers=h.auth(Role.SUPERVISOR)
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def at(seconds: float) -> str:
    return f"{datetime(2026, 12, 3, 10, 0, tzinfo=UTC).timestamp() + seconds:.6f}"


async def test_a_reported_call_is_known_from_start_to_end_with_its_deadlines(
    proxy: Harness,
) -> None:
    steps = [
        ("call.started", {"from": "+441632960001", "to": "2000", "at": at(0)}),
        ("call.answered", {"at": at(2)}),
        ("recording.started", {"at": at(2.1)}),
        ("call.ended", {"at": at(95)}),
    ]
    for event, fields in steps:
        response = await report(proxy, event, **fields)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "applied"}
    call = await the_call(proxy)
    assert call["state"] == "ended"
    assert call["started_at"].startswith("2026-12-03T10:00:00")
    assert call["ended_at"].startswith("2026-12-03T10:01:35")
    assert call["record_retention_until"] is not None
    (recording,) = call["recordings"]
    assert recording["provider_recording_id"] == CALL
    again = await report(proxy, "call.ended", at=at(95))
    assert again.json() == {"status": "duplicate"}


async def test_reports_in_any_order_end_the_same(proxy: Harness) -> None:
    for event, seconds in [("call.ended", 60), ("call.answered", 1), ("call.started", 0)]:
        assert (await report(proxy, event, at=at(seconds))).status_code == 200
    call = await the_call(proxy)
    assert call["state"] == "ended" and call["answered_at"] is not None


async def test_a_payment_on_a_reported_call_pauses_through_rtpengine(
    proxy: Harness,
    ng: FakeNg,  # noqa: F811
) -> None:
    for event in ("call.started", "call.answered", "recording.started"):
        assert (await report(proxy, event)).status_code == 200
    ivr = proxy.auth(Role.IVR)
    base = f"/v1/calls/rtpengine/{quote(CALL, safe='')}/payment"
    start = await proxy.client.post(f"{base}/start", json={}, headers=ivr)
    assert start.status_code == 200, start.text
    assert start.json()["safe_to_collect"] is True
    assert ng.commands()[:2] == ["block DTMF", "pause recording"]
    end = await proxy.client.post(f"{base}/end", json={}, headers=ivr)
    assert end.status_code == 200 and end.json()["state"] == "closed"


@pytest.mark.parametrize(
    ("token", "detail"),
    [(None, "missing header: X-Recgate-Token"), ("wrong-token", "does not match")],
)
async def test_a_report_without_the_token_is_401_and_nothing_is_stored(
    proxy: Harness, token: str | None, detail: str
) -> None:
    response = await report(proxy, "call.started", token=token)
    assert response.status_code == 401 and detail in response.json()["detail"]
    assert await proxy.count("calls") == 0 and await proxy.count("inbound_events") == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"event": "call.transferred", "call_id": CALL},
        {"event": "call.started"},
        {"event": "call.started", "call_id": CALL, "at": "yesterday"},
        {"event": "call.started", "call_id": CALL, "direction": "sideways"},
        {"event": "call.started", "call_id": "4012888888881881@127.0.0.1"},
    ],
    ids=["unknown-event", "no-call-id", "bad-time", "bad-direction", "card-in-call-id"],
)
async def test_a_malformed_report_is_422_and_dead_lettered(
    proxy: Harness, fields: dict[str, str]
) -> None:
    response = await post_form(proxy, fields, PROXY_TOKEN)
    assert response.status_code == 422, response.text
    assert await proxy.count("dead_letters") == 1 and await proxy.count("calls") == 0


async def test_the_route_is_off_without_a_token(harness: Harness) -> None:
    response = await report(harness, "call.started")
    assert response.status_code == 404
