"""Generic-PBX media: ``recording.completed`` carries ``media_url`` (and maybe ``sha256``); recgate
copies it from the hosts the operator allows and from then on treats it like any other copy.

respx plays the PBX's media server. Every respx router here records *any* request that leaves
(a catch-all route), so "nothing was fetched" is checked against the wire, not the code.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import sqlalchemy as sa
from pydantic import ValidationError

from app.config import Settings
from app.domain.retention import add_months
from app.domain.roles import Role
from app.services.media import retry_delay
from tests.conftest import CONTROL_URL, FakeClock, Harness, event

# https for the PBX's host; plain HTTP only for the one entry written with http://.
HOSTS = "pbx.example, http://media.pbx.test:8080"
MEDIA_URL = "https://pbx.example/rec/r-1.wav"
AUDIO = b"RIFF" + bytes(range(256)) * 64
AUDIO_SHA = hashlib.sha256(AUDIO).hexdigest()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def h(make_harness: Callable[..., Any], clock: FakeClock) -> AsyncIterator[Harness]:
    async with make_harness(clock=clock, generic_media_hosts=HOSTS) as harness:
        yield harness


@pytest.fixture
async def pbx() -> AsyncIterator[respx.MockRouter]:
    """The PBX's servers. Routes a test adds match first; the catch-all after them records any
    other request that leaves, so ``pbx.calls`` is everything recgate sent."""
    async with respx.mock(assert_all_called=False, assert_all_mocked=False) as router:
        yield router


def catch_all(router: respx.MockRouter) -> respx.Route:
    return router.route().respond(200, content=b"not for recgate")


async def complete(
    h: Harness,
    media_url: str = MEDIA_URL,
    sha256: str | None = None,
    call_id: str = "c-1",
    recording_id: str = "r-1",
) -> str:
    """A call whose recording completed with ``media_url``; recgate's id of the recording."""
    when = h.services.clock().isoformat()
    completed = event("recording.completed", call_id, recording_id, at=when)
    completed["recording"].update({"media_url": media_url, "duration_s": 42})
    if sha256 is not None:
        completed["recording"]["sha256"] = sha256
    for body in (
        event("call.started", call_id, at=when),
        event("recording.started", call_id, recording_id, at=when),
        completed,
    ):
        response = await h.send_event(body)
        assert response.status_code == 200, response.text
    await h.services.tasks.drain()
    return await h.recording_id(call_id, recording_id)


async def metadata(h: Harness, rid: str) -> dict[str, Any]:
    response = await h.client.get(f"/v1/recordings/{rid}", headers=h.auth(Role.DPO))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def media(h: Harness, rid: str, role: Role = Role.SUPERVISOR) -> httpx.Response:
    return await h.client.get(f"/v1/recordings/{rid}/media?purpose=quality", headers=h.auth(role))


async def attempts(h: Harness) -> int:
    async with h.services.engine.connect() as conn:
        return int(
            (
                await conn.execute(sa.text("SELECT media_fetch_attempts FROM recordings"))
            ).scalar_one()
        )


def stored_files(h: Harness) -> list[Path]:
    root = Path(h.services.settings.media_dir)
    return sorted(root.rglob("*")) if root.exists() else []


# ---- copied, served, described ------------------------------------------------------------


async def test_completed_media_is_copied_served_and_described(
    h: Harness, pbx: respx.MockRouter
) -> None:
    served = pbx.get(MEDIA_URL).respond(200, content=AUDIO, headers={"content-type": "audio/wav"})
    other = catch_all(pbx)

    rid = await complete(h, sha256=AUDIO_SHA.upper())

    assert served.call_count == 1 and other.call_count == 0
    assert "authorization" not in served.calls.last.request.headers
    body = await metadata(h, rid)
    assert body["media_available"] is True
    assert body["media_size"] == len(AUDIO) and body["media_sha256"] == AUDIO_SHA
    response = await media(h, rid)
    assert response.status_code == 200 and response.content == AUDIO


async def test_plain_http_only_for_a_host_listed_with_http(
    h: Harness, pbx: respx.MockRouter
) -> None:
    url = "http://media.pbx.test:8080/rec/r-1.wav"
    served = pbx.get(url).respond(200, content=AUDIO)
    catch_all(pbx)
    rid = await complete(h, media_url=url)
    assert served.call_count == 1 and len(pbx.calls) == 1
    assert (await metadata(h, rid))["media_sha256"] == AUDIO_SHA


# ---- refused without a request ------------------------------------------------------------


@pytest.mark.parametrize(
    "media_url",
    [
        pytest.param("https://pbx.evil.example/rec/r-1.wav", id="host-not-listed"),
        pytest.param("http://pbx.evil.example/rec/r-1.wav", id="http-to-unlisted-host"),
        pytest.param("http://pbx.example/rec/r-1.wav", id="http-to-https-only-host"),
        pytest.param("https://media.pbx.test:8080/rec/r-1.wav", id="https-to-http-only-host"),
        pytest.param("https://pbx.example:8443/rec/r-1.wav", id="port-not-listed"),
        pytest.param("https://user:pw@pbx.example/rec/r-1.wav", id="userinfo"),
        pytest.param("https://pbx.example@169.254.169.254/latest", id="userinfo-trick"),
        pytest.param("https://pbx.example.evil.example/rec/r-1.wav", id="suffix-trick"),
        pytest.param("file:///etc/passwd", id="file-scheme"),
        pytest.param("/rec/r-1.wav", id="relative"),
    ],
)
async def test_url_off_the_allowed_hosts_is_refused_for_good_without_a_request(
    h: Harness, pbx: respx.MockRouter, caplog: pytest.LogCaptureFixture, media_url: str
) -> None:
    caplog.set_level(logging.WARNING, logger="recgate.media")
    catch_all(pbx)
    rid = await complete(h, media_url=media_url)

    assert len(pbx.calls) == 0, "no request may leave for a refused URL"
    assert (await metadata(h, rid))["media_available"] is False
    assert (await media(h, rid)).status_code == 409
    assert stored_files(h) == []
    # Permanent: marked as out of attempts, so the retry job leaves it alone.
    assert await attempts(h) == h.services.settings.media_fetch_attempts
    assert await h.services.media.fetch_due() == 0
    assert len(pbx.calls) == 0
    refusals = [r for r in caplog.records if "will not be copied" in r.getMessage()]
    assert len(refusals) == 1, "a refusal is logged once"
    assert "user:pw" not in caplog.text, "credentials in a URL are never logged"


async def test_a_redirect_is_not_followed(h: Harness, pbx: respx.MockRouter) -> None:
    elsewhere = "https://pbx.evil.example/steal.wav"
    redirect = pbx.get(MEDIA_URL).respond(302, headers={"location": elsewhere})
    target = pbx.get(elsewhere).respond(200, content=AUDIO)
    catch_all(pbx)

    rid = await complete(h)

    assert redirect.call_count == 1 and target.call_count == 0 and len(pbx.calls) == 1
    assert (await metadata(h, rid))["media_available"] is False
    assert stored_files(h) == []
    assert await attempts(h) == 1, "a failed attempt, retried later like any other"


async def test_media_hosts_unset_means_no_copy_and_no_attempt(
    make_harness: Callable[..., Any], pbx: respx.MockRouter
) -> None:
    catch_all(pbx)
    async with make_harness() as h:
        rid = await complete(h)
        assert await h.services.media.fetch_due() == 0
        assert len(pbx.calls) == 0
        assert (await media(h, rid)).status_code == 409
        # Untouched: once hosts are configured, the backlog is copied.
        assert await attempts(h) == 0


@pytest.mark.parametrize(
    "hosts",
    ["https://user:s3cret@pbx.example", "pbx.example/rec", "ftp://pbx.example", "pbx.example?x=1"],
)
def test_malformed_media_hosts_are_refused_at_startup_without_echo(hosts: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(generic_media_hosts=hosts, _env_file=None)
    assert "s3cret" not in str(refused.value), "a setting's value is never echoed"
    assert "generic media host #1" in str(refused.value)


# ---- retried with backoff -----------------------------------------------------------------


async def test_unavailable_pbx_is_retried_with_growing_delays_then_stored(
    h: Harness, pbx: respx.MockRouter, clock: FakeClock
) -> None:
    served = pbx.get(MEDIA_URL)
    served.side_effect = [
        httpx.Response(503),
        httpx.Response(503),
        httpx.Response(200, content=AUDIO),
    ]
    catch_all(pbx)
    rid = await complete(h)
    assert served.call_count == 1 and await attempts(h) == 1

    # The first retry waits only for the job's next turn.
    assert await h.services.media.fetch_due() == 0
    assert served.call_count == 2 and await attempts(h) == 2

    # After a second failure the PBX is left alone for a while.
    assert await h.services.media.fetch_due() == 0
    clock.advance(seconds=retry_delay(2).total_seconds() - 1)
    assert await h.services.media.fetch_due() == 0
    assert served.call_count == 2, "not asked again before its backoff ran out"

    clock.advance(seconds=1)
    assert await h.services.media.fetch_due() == 1
    assert served.call_count == 3 and len(pbx.calls) == 3
    body = await metadata(h, rid)
    assert body["media_available"] is True and body["media_sha256"] == AUDIO_SHA
    assert (await media(h, rid)).content == AUDIO


def test_retry_delays_grow_and_are_capped() -> None:
    delays = [retry_delay(n) for n in range(1, 12)]
    assert delays[0] == timedelta(0)
    assert delays[1:4] == [timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4)]
    assert max(delays) == timedelta(hours=1) and delays == sorted(delays)


async def test_copies_stop_after_the_configured_attempts(
    make_harness: Callable[..., Any], pbx: respx.MockRouter, clock: FakeClock
) -> None:
    served = pbx.get(MEDIA_URL).respond(503)
    async with make_harness(clock=clock, generic_media_hosts=HOSTS, media_fetch_attempts=3) as h:
        await complete(h)
        for _ in range(5):
            clock.advance(hours=2)
            await h.services.media.fetch_due()
        assert served.call_count == 3 and await attempts(h) == 3


# ---- checked against the reported sha256 --------------------------------------------------


async def test_sha256_mismatch_is_discarded_and_the_report_kept(
    h: Harness, pbx: respx.MockRouter, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="recgate.media")
    partial = AUDIO[: len(AUDIO) // 2]  # the PBX is still writing the file
    served = pbx.get(MEDIA_URL)
    served.side_effect = [
        httpx.Response(200, content=partial),
        httpx.Response(200, content=AUDIO),
    ]

    rid = await complete(h, sha256=AUDIO_SHA)

    assert served.call_count == 1
    body = await metadata(h, rid)
    assert body["media_available"] is False and body["media_size"] is None
    assert body["media_sha256"] == AUDIO_SHA, "the PBX's report is not overwritten"
    assert stored_files(h) == [], "the mismatching copy is deleted"
    assert (await media(h, rid)).status_code == 409
    assert await attempts(h) == 1
    assert any("does not match the sha256" in r.getMessage() for r in caplog.records)

    # Retried like any failed copy; the complete file matches and is kept.
    assert await h.services.media.fetch_due() == 1
    body = await metadata(h, rid)
    assert body["media_available"] is True and body["media_size"] == len(AUDIO)
    assert (await media(h, rid)).content == AUDIO


async def test_sha256_that_never_matches_is_never_stored(
    h: Harness, pbx: respx.MockRouter, clock: FakeClock
) -> None:
    served = pbx.get(MEDIA_URL).respond(200, content=AUDIO)
    reported = hashlib.sha256(b"another recording").hexdigest()
    rid = await complete(h, sha256=reported)
    for _ in range(h.services.settings.media_fetch_attempts + 2):
        clock.advance(hours=2)
        await h.services.media.fetch_due()
    assert served.call_count == h.services.settings.media_fetch_attempts
    body = await metadata(h, rid)
    assert body["media_available"] is False and body["media_sha256"] == reported
    assert stored_files(h) == []


# ---- then like any other copy: quarantine, deletion ---------------------------------------


async def test_dpo_deletion_removes_the_local_copy_and_asks_the_pbx_nothing(
    h: Harness, pbx: respx.MockRouter
) -> None:
    pbx.get(MEDIA_URL).respond(200, content=AUDIO)
    catch_all(pbx)
    rid = await complete(h, sha256=AUDIO_SHA)
    assert len(stored_files(h)) == 1

    deleted = await h.client.delete(f"/v1/recordings/{rid}?reason=manual", headers=h.auth(Role.DPO))
    assert deleted.status_code == 204, deleted.text
    assert stored_files(h) == []
    assert (await media(h, rid, Role.DPO)).status_code == 410
    assert (await metadata(h, rid))["deleted_reason"] == "manual"
    assert [c.request.method for c in pbx.calls] == ["GET"], "no invented DELETE to the PBX"


async def test_retention_sweep_deletes_the_copy_after_18_months(
    h: Harness, pbx: respx.MockRouter, clock: FakeClock
) -> None:
    pbx.get(MEDIA_URL).respond(200, content=AUDIO)
    catch_all(pbx)
    ended = clock.now
    rid = await complete(h)
    body = await metadata(h, rid)
    assert body["media_available"] is True
    assert datetime.fromisoformat(body["retention_until"]) == add_months(ended, 18)

    clock.now = add_months(ended, 18) - timedelta(seconds=1)
    sweep = await h.client.post("/v1/retention/sweep", headers=h.auth(Role.DPO))
    assert sweep.json()["deleted"] == 0 and len(stored_files(h)) == 1

    clock.now = add_months(ended, 18) + timedelta(seconds=1)
    sweep = await h.client.post("/v1/retention/sweep", headers=h.auth(Role.DPO))
    assert sweep.status_code == 200 and sweep.json()["deleted"] == 1, sweep.text
    assert stored_files(h) == []
    assert (await metadata(h, rid))["deleted_reason"] == "retention"
    assert [c.request.method for c in pbx.calls] == ["GET"]


async def test_copy_of_an_exposed_recording_is_quarantined(
    h: Harness, pbx: respx.MockRouter
) -> None:
    pbx.get(MEDIA_URL).respond(200, content=AUDIO)
    pbx.post(f"{CONTROL_URL}/calls/c-1/recording/pause").respond(403)
    pbx.post(f"{CONTROL_URL}/calls/c-1/recording/resume").respond(200, json={"state": "recording"})
    now = h.services.clock().isoformat()
    await h.send_event(event("call.started", "c-1", at=now))
    await h.send_event(event("recording.started", "c-1", "r-1", at=now))
    start = await h.client.post("/v1/calls/generic/c-1/payment/start", headers=h.auth(Role.IVR))
    assert start.status_code == 503, "the pause was refused: an exposure"
    await h.client.post("/v1/calls/generic/c-1/payment/end", headers=h.auth(Role.IVR))

    rid = await complete(h)

    assert (await metadata(h, rid))["media_available"] is True
    assert (await media(h, rid)).status_code == 403, "quarantined: supervisors may not fetch it"
    dpo = await media(h, rid, Role.DPO)
    assert dpo.status_code == 200 and dpo.content == AUDIO
