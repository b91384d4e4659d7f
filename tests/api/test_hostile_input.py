"""Hostile input at the edges (issue 9): ids that carry card numbers or unshowable characters,
signatures used on a route or call they were not made for, and malformed bodies that must be
a 4xx problem, never a 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import respx

from app.domain.roles import Role
from app.telephony.signing import SignatureError, signed_headers, verify
from tests.api.test_payment_gating import PAUSE, RESUME, live_call
from tests.conftest import CONTROL_URL, Harness, event

CARD = "4012888888881881"


async def _nothing_but_a_dead_letter(h: Harness) -> None:
    for table in ("inbound_events", "calls", "recordings"):
        assert await h.count(table) == 0, f"{table} must stay empty"
    assert await h.count("dead_letters") == 1


async def _dead_letters(h: Harness) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    async with h.services.engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT event_id, reason, payload FROM dead_letters"))
        return [dict(row._mapping) for row in rows]


# ---- ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("call", CARD),
        ("call", f"call-{CARD[:4]} {CARD[4:8]} {CARD[8:12]} {CARD[12:]}"),
        ("recording", f"rec.{CARD}"),
        ("format", CARD),
        ("webhook-id", f"msg_{CARD}"),
    ],
)
async def test_an_id_holding_a_card_number_is_refused_and_only_dead_lettered(
    harness: Harness, where: str, value: str
) -> None:
    body = event("recording.started", recording_id="r-1")
    msg_id = None
    if where == "call":
        body["call"]["id"] = value
    elif where == "recording":
        body["recording"]["id"] = value
    elif where == "format":
        body["recording"]["format"] = value
    else:
        msg_id = value
    response = await harness.send_event(body, msg_id=msg_id)
    assert response.status_code == 422, response.text
    assert "card number" in response.json()["detail"]
    assert CARD not in response.text
    await _nothing_but_a_dead_letter(harness)
    (letter,) = await _dead_letters(harness)
    assert CARD not in json.dumps(letter, default=str)


@pytest.mark.parametrize(
    "value",
    ["c-1\x00", "c-1\r\nX-Injected: 1", "c-\u202e1-evil", "c-\u200b1", "c-1\ufffd"],
    ids=["nul", "crlf", "bidi-override", "zero-width", "invalid-utf8"],
)
async def test_an_id_with_unshowable_characters_is_refused(harness: Harness, value: str) -> None:
    response = await harness.send_event(event("call.started", call_id=value))
    assert response.status_code == 422, response.text
    await _nothing_but_a_dead_letter(harness)


async def test_invalid_utf8_ids_in_the_path_do_not_collapse_into_one(harness: Harness) -> None:
    ivr = harness.auth(Role.IVR)
    for raw in ("a%FFb", "a%FEb"):
        response = await harness.client.post(f"/v1/calls/generic/{raw}/payment/start", headers=ivr)
        assert response.status_code == 422, response.text
    assert await harness.count("calls") == 0


async def test_payment_start_refuses_a_card_number_in_the_call_id_or_key(
    harness: Harness,
) -> None:
    ivr = harness.auth(Role.IVR)
    response = await harness.client.post(
        f"/v1/calls/generic/{quote('x-' + CARD)}/payment/start", headers=ivr
    )
    assert response.status_code == 422
    assert CARD not in response.text
    keyed = await harness.client.post(
        "/v1/calls/generic/c-1/payment/start", headers={**ivr, "Idempotency-Key": CARD}
    )
    assert keyed.status_code == 422 and CARD not in keyed.text
    assert await harness.count("calls") == 0 and await harness.count("payment_segments") == 0


async def test_a_checksum_that_reads_as_a_card_number_is_dropped_not_the_event(
    harness: Harness,
) -> None:
    await harness.send_event(event("recording.started", recording_id="r-1"))
    digest = CARD + "ab" * 24
    response = await harness.send_event(_completed("r-1", sha256=digest))
    assert response.status_code == 200, response.text
    recordings = await harness.client.get("/v1/recordings", headers=harness.auth(Role.DPO))
    (summary,) = recordings.json()["items"]
    detail = await harness.client.get(
        f"/v1/recordings/{summary['id']}", headers=harness.auth(Role.DPO)
    )
    assert detail.json()["state"] in ("completed", "available")
    assert detail.json()["media_sha256"] is None
    assert CARD not in detail.text


def _completed(recording_id: str, **recording: Any) -> dict[str, Any]:
    body = event("recording.completed", recording_id=recording_id)
    body["recording"].update(recording)
    return body


# ---- signatures name their target ----------------------------------------------------------


async def test_a_body_signed_for_one_route_is_refused_on_every_other(
    make_harness: Any,
) -> None:
    async with make_harness(ari_url="http://127.0.0.1:9/ari") as h:
        body = json.dumps(event("call.started")).encode()
        for signed_for in ("generic", "sim", "asterisk"):
            key = h.services.settings.webhook_key(signed_for)
            assert key is not None
            headers = signed_headers(key, body, datetime.now(UTC))
            headers["content-type"] = "application/json"
            for route in {"generic", "sim", "asterisk"} - {signed_for}:
                response = await h.client.post(
                    f"/v1/webhooks/{route}", content=body, headers=headers
                )
                assert response.status_code == 401, (signed_for, route)
                assert "does not match" in response.json()["detail"]
        assert await h.count("inbound_events") == 0
        keys = {h.services.settings.webhook_key(r) for r in ("generic", "sim", "asterisk")}
        assert len(keys) == 3


class ReferencePbx:
    """What SPEC §4 asks of a PBX receiving recgate's control commands: a valid signature, a
    body naming the call and action of the URL, and a command id it has not seen."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.seen: set[str] = set()

    def accepts(self, url: str, headers: httpx.Headers, body: bytes) -> bool:
        try:
            verify(self.key, headers, body, datetime.now(UTC))
        except SignatureError:
            return False
        command = json.loads(body)
        call_id, action = httpx.URL(url).path.split("/calls/", 1)[1].split("/recording/")
        if command.get("call_id") != call_id or command.get("action") != action:
            return False
        if command.get("command_id") in self.seen:
            return False
        self.seen.add(command["command_id"])
        return True


@pytest.fixture
async def pbx() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=False) as router:
        router.post(PAUSE).respond(200, json={"state": "paused"})
        router.post(RESUME).respond(200, json={"state": "recording"})
        router.post(f"{CONTROL_URL}/calls/c-other/recording/pause").respond(
            200, json={"state": "paused"}
        )
        router.post(f"{CONTROL_URL}/calls/c-other/recording/resume").respond(
            200, json={"state": "recording"}
        )
        yield router


async def test_a_captured_resume_is_valid_for_no_other_call_and_only_once(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    ivr = harness.auth(Role.IVR)
    await live_call(harness)
    await live_call(harness, "c-other")
    for call in ("c-123", "c-other"):
        for action in ("start", "end"):
            response = await harness.client.post(
                f"/v1/calls/generic/{call}/payment/{action}", headers=ivr
            )
            assert response.status_code == 200, response.text
    resumes = [c.request for c in pbx.calls if c.request.url.path.endswith("/resume")]
    assert len(resumes) == 2
    key = harness.services.settings.generic_secret_key
    assert key is not None
    pbx_side = ReferencePbx(key)
    first, second = resumes
    assert first.content != second.content
    assert pbx_side.accepts(str(first.url), first.headers, first.content)
    # Call A's signed resume, replayed against call B, and replayed again against call A.
    assert not pbx_side.accepts(str(second.url), first.headers, first.content)
    assert not pbx_side.accepts(str(first.url), first.headers, first.content)
    assert pbx_side.accepts(str(second.url), second.headers, second.content)


# ---- 401s say which check failed -----------------------------------------------------------


async def test_a_refused_webhook_says_which_check_failed(harness: Harness) -> None:
    body = json.dumps(event("call.started")).encode()
    key = harness.services.settings.generic_secret_key
    assert key is not None
    good = signed_headers(key, body, datetime.now(UTC))
    stale = signed_headers(key, body, datetime.now(UTC) - timedelta(hours=1))
    cases = {
        "missing header: webhook-signature": {
            k: v for k, v in good.items() if k != "webhook-signature"
        },
        "stale or replayed": stale,
        "does not match": {**good, "webhook-id": "msg_other"},
    }
    for expected, headers in cases.items():
        response = await harness.client.post("/v1/webhooks/generic", content=body, headers=headers)
        assert response.status_code == 401
        detail = response.json()["detail"]
        assert expected in detail
        assert good["webhook-signature"].removeprefix("v1,") not in detail


# ---- malformed is a 4xx, never a 500 -------------------------------------------------------


async def test_deeply_nested_json_is_422_and_dead_lettered(harness: Harness) -> None:
    body = event("call.started")
    nested: Any = 1
    for _ in range(500):
        nested = {"a": nested}
    body["extra"] = nested
    response = await harness.send_event(body)
    assert response.status_code == 422 and "deeper" in response.json()["detail"]
    assert await harness.count("dead_letters") == 1


@pytest.mark.parametrize("type_", ["call.ended", "recording.completed"])
@pytest.mark.parametrize("at", ["9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+00:00"])
async def test_impossible_dates_are_422(harness: Harness, type_: str, at: str) -> None:
    body = event(type_, recording_id="r-1" if type_.startswith("recording") else None, at=at)
    response = await harness.send_event(body)
    assert response.status_code == 422, response.text
    assert await harness.count("calls") == 0


async def test_an_out_of_range_audit_cursor_is_422(harness: Harness) -> None:
    response = await harness.client.get(
        "/v1/audit", params={"cursor": str(2**63)}, headers=harness.auth(Role.ADMIN)
    )
    assert response.status_code == 422


async def test_a_nul_character_is_422_and_dead_lettered_not_a_500(harness: Harness) -> None:
    """PostgreSQL's text columns refuse NUL; no PBX means one. Refused before anything is
    stored, and the dead letter keeps it escaped."""
    body = event("call.started", agent_id="agent\u00007")
    response = await harness.send_event(body)
    assert response.status_code == 422 and "NUL" in response.json()["detail"]
    (letter,) = await _dead_letters(harness)
    assert "\\u0000" in letter["payload"] and "\x00" not in letter["payload"]
    assert await harness.count("calls") == 0
