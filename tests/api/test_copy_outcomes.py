"""Deletion, copy by copy (issue 11): every tombstone says what happened to recgate's copy and
to the provider's, and a legal hold on a caller stops every deletion that has not yet begun.

The hold/sweep races are driven deterministically: the sweep is paused at a chosen point
(after its claim, or after its last hold check) while the hold is placed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import sqlalchemy as sa

from app.domain.roles import Role
from app.services.retention import RetentionService, SweepResult
from tests.api.test_retention import (
    DEADLINE,
    ENDED,
    _db_id,
    finished_recording,
    media_file,
    recording,
    sweep,
)
from tests.api.test_rtpengine import FakeNg, ng  # noqa: F401  (the fixture)
from tests.conftest import FakeClock, Harness

AC = "AC" + "0123456789abcdef" * 2
API = "http://127.0.0.1:9/twilio-api"
RE = "RE" + "3d" * 16
CALLER = "+441632960001"
OTHER = "+441632960002"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(ENDED + timedelta(minutes=5))


async def as_provider(h: Harness, rid: str, provider: str, provider_recording_id: str) -> None:
    """Make the generic-contract recording one of ``provider``'s (same rows, other owner)."""
    async with h.services.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE calls SET provider = :p WHERE id = "
                "(SELECT call_id FROM recordings WHERE id = :id)"
            ),
            {"p": provider, "id": _db_id(h, rid)},
        )
        await conn.execute(
            sa.text("UPDATE recordings SET provider_recording_id = :r WHERE id = :id"),
            {"r": provider_recording_id, "id": _db_id(h, rid)},
        )


async def status(h: Harness) -> dict[str, Any]:
    response = await h.client.get("/v1/status", headers=h.auth(Role.OPS))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# ---- copy outcomes --------------------------------------------------------------------------


@pytest.fixture
async def api() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
async def tw(make_harness: Callable[..., Any], clock: FakeClock) -> AsyncIterator[Harness]:
    async with make_harness(
        clock=clock,
        twilio_account_sid=AC,
        twilio_auth_token="twilio-auth-token-for-tests-0001",
        twilio_api_base=API,
        public_base_url="https://recgate.council.example",
    ) as h:
        yield h


async def test_twilio_copy_is_deleted_through_its_api(
    tw: Harness, clock: FakeClock, api: respx.MockRouter
) -> None:
    delete = api.delete(f"{API}/2010-04-01/Accounts/{AC}/Recordings/{RE}.json").mock(
        return_value=httpx.Response(204)
    )
    rid = await finished_recording(tw)
    await as_provider(tw, rid, "twilio", RE)
    clock.now = DEADLINE + timedelta(days=1)
    assert (await sweep(tw))["deleted"] == 1
    assert delete.call_count == 1
    body = await recording(tw, rid)
    assert body["state"] == "deleted"
    assert body["copies"] == {
        "local": {"outcome": "deleted", "reason": None},
        "provider": {"outcome": "deleted", "reason": None},
    }
    assert (await status(tw))["provider_copies_held"] == 0


async def test_a_provider_5xx_on_delete_is_recorded_as_failed_and_retried(
    tw: Harness, clock: FakeClock, api: respx.MockRouter
) -> None:
    delete = api.delete(f"{API}/2010-04-01/Accounts/{AC}/Recordings/{RE}.json").mock(
        return_value=httpx.Response(503)
    )
    rid = await finished_recording(tw)
    await as_provider(tw, rid, "twilio", RE)
    clock.now = DEADLINE + timedelta(days=1)
    result = await sweep(tw)
    assert (result["deleted"], result["errors"]) == (0, 1)
    body = await recording(tw, rid)
    assert body["deleted_at"] is None, "a provider copy that may still exist is not tombstoned"
    assert body["copies"]["local"] == {"outcome": "deleted", "reason": None}
    assert body["copies"]["provider"]["outcome"] == "failed"
    assert "HTTP 503" in body["copies"]["provider"]["reason"]
    assert not media_file(tw, rid).exists()
    assert (await status(tw))["provider_copies_held"] == 1

    delete.mock(return_value=httpx.Response(204))
    clock.now += timedelta(minutes=11)  # the failed claim's lease has run out
    assert (await sweep(tw))["deleted"] == 1
    body = await recording(tw, rid)
    assert body["state"] == "deleted"
    assert body["copies"]["local"]["outcome"] == "gone"
    assert body["copies"]["provider"] == {"outcome": "deleted", "reason": None}
    assert (await status(tw))["provider_copies_held"] == 0


@pytest.fixture
async def h(make_harness: Callable[..., Any], clock: FakeClock) -> AsyncIterator[Harness]:
    async with make_harness(clock=clock) as harness:
        yield harness


async def test_the_generic_pbx_keeps_its_copy_and_the_tombstone_says_why(
    h: Harness, clock: FakeClock
) -> None:
    rid = await finished_recording(h)
    other = await finished_recording(h, "c-2", "r-2", media=None)
    clock.now = DEADLINE + timedelta(days=1)
    assert (await sweep(h))["deleted"] == 2
    body = await recording(h, rid)
    assert body["copies"]["local"] == {"outcome": "deleted", "reason": None}
    assert body["copies"]["provider"]["outcome"] == "not_deletable"
    assert "no delete call" in body["copies"]["provider"]["reason"]
    assert (await recording(h, other))["copies"]["local"]["outcome"] == "gone"
    assert (await status(h))["provider_copies_held"] == 2


async def test_rtpengine_without_a_recording_dir_is_not_deletable(
    make_harness: Callable[..., Any],
    ng: FakeNg,  # noqa: F811
    clock: FakeClock,
) -> None:
    async with make_harness(clock=clock, rtpengine_ng=ng.address) as h:
        rid = await finished_recording(h)
        await as_provider(h, rid, "rtpengine", "some-call.pcap")
        clock.now = DEADLINE + timedelta(days=1)
        assert (await sweep(h))["deleted"] == 1
        provider = (await recording(h, rid))["copies"]["provider"]
        assert provider["outcome"] == "not_deletable"
        assert "RECGATE_RTPENGINE_RECORDING_DIR" in provider["reason"]
        assert (await status(h))["provider_copies_held"] == 1


async def test_rtpengine_with_a_recording_dir_deletes_its_spool_file(
    make_harness: Callable[..., Any],
    ng: FakeNg,  # noqa: F811
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    for directory in ("pcaps", "metadata"):
        (spool / directory).mkdir(parents=True)
    pcap = spool / "pcaps" / "some-call.pcap"
    pcap.write_bytes(b"\xd4\xc3\xb2\xa1pcap")
    async with make_harness(
        clock=clock, rtpengine_ng=ng.address, rtpengine_recording_dir=spool
    ) as h:
        rid = await finished_recording(h)
        await as_provider(h, rid, "rtpengine", pcap.name)
        clock.now = DEADLINE + timedelta(days=1)
        assert (await sweep(h))["deleted"] == 1
        assert (await recording(h, rid))["copies"]["provider"] == {
            "outcome": "deleted",
            "reason": None,
        }
        assert not pcap.exists()
        assert (await status(h))["provider_copies_held"] == 0


# ---- a caller hold against a sweep in flight ------------------------------------------------


@contextmanager
def paused_before(
    retention: RetentionService, method: str
) -> Iterator[tuple[asyncio.Event, asyncio.Event]]:
    """Stop the sweep on entering ``method`` until the test lets it go on."""
    reached, go = asyncio.Event(), asyncio.Event()
    real = getattr(retention, method)

    async def wait_then(*args: Any) -> Any:
        reached.set()
        await go.wait()
        return await real(*args)

    setattr(retention, method, wait_then)
    try:
        yield reached, go
    finally:
        setattr(retention, method, real)


async def hold_caller(h: Harness, caller: str = CALLER) -> httpx.Response:
    return await h.client.post(
        "/v1/holds", json={"caller": caller, "reason": "legal_claim"}, headers=h.auth(Role.DPO)
    )


async def test_a_caller_hold_placed_after_the_claim_keeps_every_claimed_recording(
    h: Harness, clock: FakeClock
) -> None:
    first = await finished_recording(h, "c-1", "r-1", caller=CALLER)
    second = await finished_recording(h, "c-2", "r-2", caller=CALLER)
    stranger = await finished_recording(h, "c-3", "r-3", caller=OTHER)
    clock.now = DEADLINE + timedelta(days=1)
    with paused_before(h.services.retention, "_start_deletions") as (claimed, go):
        running = asyncio.create_task(h.services.retention.sweep())
        await claimed.wait()  # every due recording is claimed; none is deleted yet
        placed = await hold_caller(h)
        assert placed.status_code == 201, placed.text
        go.set()
        result: SweepResult = await running
    assert (result.deleted, result.errors) == (1, 0)
    assert result.skipped_held == 2
    for rid in (first, second):
        body = await recording(h, rid)
        assert body["deleted_at"] is None and media_file(h, rid).exists(), (
            "a recording of the held caller was deleted after the hold's 201"
        )
    assert (await recording(h, stranger))["state"] == "deleted"
    assert (await sweep(h))["deleted"] == 0, "the hold keeps them from later sweeps too"


async def test_a_caller_hold_is_refused_while_a_deletion_of_that_caller_is_under_way(
    h: Harness, clock: FakeClock
) -> None:
    rid = await finished_recording(h, caller=CALLER)
    clock.now = DEADLINE + timedelta(days=1)
    with paused_before(h.services.retention, "_delete_media") as (deleting, go):
        running = asyncio.create_task(h.services.retention.sweep())
        await deleting.wait()  # past the last hold check: the media is going
        refused = await hold_caller(h)
        assert refused.status_code == 409, "a 201 now would promise what cannot be kept"
        assert "deleting" in refused.json()["detail"]
        assert (await hold_caller(h, OTHER)).status_code == 201, "other callers unaffected"
        go.set()
        result: SweepResult = await running
    assert result.deleted == 1
    assert (await recording(h, rid))["state"] == "deleted"
    assert (await hold_caller(h)).status_code == 201, "once the deletion is over, holds work"
    async with h.services.engine.connect() as conn:
        holds = (await conn.execute(sa.text("SELECT count(*) FROM legal_holds"))).scalar_one()
    assert holds == 2, "the refused hold left nothing behind"


async def test_a_dpo_deletion_checks_holds_again_once_it_has_the_row(
    h: Harness, clock: FakeClock
) -> None:
    rid = await finished_recording(h, caller=CALLER)
    with paused_before(h.services.retention, "_start_deletions") as (checked, go):
        deleting = asyncio.create_task(
            h.client.delete(f"/v1/recordings/{rid}?reason=manual", headers=h.auth(Role.DPO))
        )
        await checked.wait()  # the first hold check passed
        assert (await hold_caller(h)).status_code == 201
        go.set()
        response = await deleting
    assert response.status_code == 409, response.text
    assert media_file(h, rid).exists()
