"""Retention, legal holds, deletion and the audit trail, with an injected clock.

The privacy notice: recordings kept up to 18 months, then deleted and no longer retrievable;
call records up to 6 years.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app.domain.retention import add_months
from app.domain.roles import Role
from tests.conftest import FakeClock, Harness, event

ENDED = datetime(2026, 8, 31, 14, 30, tzinfo=UTC)
DEADLINE = add_months(ENDED, 18)  # 28 Feb 2028 14:30 UTC


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(ENDED + timedelta(minutes=5))


@pytest.fixture
async def h(make_harness: Callable[..., Any], clock: FakeClock) -> AsyncIterator[Harness]:
    async with make_harness(clock=clock) as harness:
        yield harness


async def finished_recording(
    h: Harness,
    call_id: str = "c-1",
    recording_id: str = "r-1",
    caller: str = "+441632960001",
    media: bytes | None = b"RIFF-audio",
) -> str:
    """A call with one recording that ended at ENDED; its media stored locally."""
    start = (ENDED - timedelta(minutes=10)).isoformat()
    end = ENDED.isoformat()
    for body in (
        event("call.started", call_id, at=start, **{"from": caller}),
        event("recording.started", call_id, recording_id, at=start),
        event("recording.stopped", call_id, recording_id, at=end),
        event("call.ended", call_id, at=end, **{"from": caller}),
    ):
        assert (await h.send_event(body)).status_code == 200
    rid = await h.recording_id(call_id, recording_id)
    if media is not None:

        async def chunks() -> AsyncIterator[bytes]:
            yield media

        stored = await h.services.media.store.write(uuid.UUID(rid), "wav", chunks())
        async with h.services.engine.begin() as conn:
            await conn.execute(
                sa.text("UPDATE recordings SET media_path = :p, media_size = :s WHERE id = :id"),
                {"p": stored.path, "s": stored.size, "id": _db_id(h, rid)},
            )
    return rid


def _db_id(h: Harness, rid: str) -> str:
    # SQLAlchemy's Uuid is CHAR(32) hex on SQLite and a native uuid on PostgreSQL.
    return uuid.UUID(rid).hex if h.services.engine.dialect.name == "sqlite" else rid


async def recording(h: Harness, rid: str) -> dict[str, Any]:
    response = await h.client.get(f"/v1/recordings/{rid}", headers=h.auth(Role.DPO))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def media_file(h: Harness, rid: str) -> Path:
    return Path(h.services.settings.media_dir) / f"{rid}.wav"


async def sweep(h: Harness, dry_run: bool = False) -> dict[str, Any]:
    response = await h.client.post(
        f"/v1/retention/sweep?dry_run={'true' if dry_run else 'false'}", headers=h.auth(Role.DPO)
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_deadline_is_18_calendar_months_clamped_to_month_end(h: Harness) -> None:
    rid = await finished_recording(h)
    body = await recording(h, rid)
    assert body["retention_until"].startswith("2028-02-29T14:30"), (
        "31 Aug + 18 months = end of Feb (2028 is leap)"
    )


async def test_kept_one_second_before_the_deadline_deleted_one_second_after(
    h: Harness, clock: FakeClock
) -> None:
    rid = await finished_recording(h)
    deadline = datetime.fromisoformat((await recording(h, rid))["retention_until"])
    clock.now = deadline - timedelta(seconds=1)
    assert await sweep(h) == {
        "dry_run": False,
        "deleted": 0,
        "skipped_held": 0,
        "errors": 0,
        "records_erased": 0,
    }
    assert media_file(h, rid).exists()

    clock.now = deadline + timedelta(seconds=1)
    assert (await sweep(h, dry_run=True))["deleted"] == 1
    assert media_file(h, rid).exists(), "a dry run deletes nothing"
    assert (await sweep(h))["deleted"] == 1
    assert not media_file(h, rid).exists()
    body = await recording(h, rid)
    assert body["state"] == "deleted" and body["deleted_reason"] == "retention"
    assert body["deleted_at"] is not None and body["media_available"] is False


async def test_deleted_recording_media_is_410_and_gone_from_disk(
    h: Harness, clock: FakeClock
) -> None:
    rid = await finished_recording(h)
    ok = await h.client.get(
        f"/v1/recordings/{rid}/media?purpose=quality", headers=h.auth(Role.SUPERVISOR)
    )
    assert ok.status_code == 200 and ok.content == b"RIFF-audio"
    clock.now = DEADLINE + timedelta(days=1)
    await sweep(h)
    gone = await h.client.get(
        f"/v1/recordings/{rid}/media?purpose=quality", headers=h.auth(Role.SUPERVISOR)
    )
    assert gone.status_code == 410
    assert gone.headers["content-type"].startswith("application/problem+json")
    assert not media_file(h, rid).exists()


async def test_overlapping_holds(h: Harness, clock: FakeClock) -> None:
    rid = await finished_recording(h)
    holds = []
    for reference in ("COMPLAINT-1", "CLAIM-9"):
        response = await h.client.post(
            f"/v1/recordings/{rid}/holds",
            json={
                "reason": "complaint",
                "reference": reference,
                "note": "caller disputes the bill",
            },
            headers=h.auth(Role.DPO),
        )
        assert response.status_code == 201, response.text
        holds.append(response.json()["id"])
    clock.now = DEADLINE + timedelta(days=1)

    assert (await sweep(h)) | {} == {
        "dry_run": False,
        "deleted": 0,
        "skipped_held": 1,
        "errors": 0,
        "records_erased": 0,
    }
    release = await h.client.post(
        f"/v1/recordings/{rid}/holds/{holds[0]}/release", headers=h.auth(Role.DPO)
    )
    assert release.status_code == 200 and release.json()["released_at"] is not None
    assert (await sweep(h))["deleted"] == 0, "one of two holds released: still kept"
    assert media_file(h, rid).exists()

    await h.client.post(f"/v1/recordings/{rid}/holds/{holds[1]}/release", headers=h.auth(Role.DPO))
    assert (await sweep(h))["deleted"] == 1
    body = await recording(h, rid)
    assert body["state"] == "deleted"
    assert [x["released_at"] is not None for x in body["holds"]] == [True, True], (
        "releases are recorded"
    )


async def test_caller_hold_covers_every_recording_of_that_number(
    h: Harness, clock: FakeClock
) -> None:
    held_1 = await finished_recording(h, "c-1", "r-1", caller="+441632960111")
    held_2 = await finished_recording(h, "c-2", "r-2", caller="+441632960111")
    other = await finished_recording(h, "c-3", "r-3", caller="+441632960222")
    response = await h.client.post(
        "/v1/holds",
        json={"caller": "+441632960111", "reason": "police_investigation", "reference": "POL-77"},
        headers=h.auth(Role.DPO),
    )
    assert response.status_code == 201
    clock.now = DEADLINE + timedelta(days=1)
    result = await sweep(h)
    assert (result["deleted"], result["skipped_held"]) == (1, 2)
    assert (await recording(h, other))["state"] == "deleted"
    assert {(await recording(h, r))["state"] for r in (held_1, held_2)} == {"stopped"}, "held: kept"


async def test_dpo_deletion_refused_while_held_and_twice_is_fine(h: Harness) -> None:
    rid = await finished_recording(h)
    hold = (
        await h.client.post(
            f"/v1/recordings/{rid}/holds", json={"reason": "legal_claim"}, headers=h.auth(Role.DPO)
        )
    ).json()
    refused = await h.client.delete(f"/v1/recordings/{rid}?reason=manual", headers=h.auth(Role.DPO))
    assert refused.status_code == 409 and refused.json()["type"].endswith("/recording-held")
    assert media_file(h, rid).exists()
    await h.client.post(
        f"/v1/recordings/{rid}/holds/{hold['id']}/release", headers=h.auth(Role.DPO)
    )
    for _ in range(2):
        response = await h.client.delete(
            f"/v1/recordings/{rid}?reason=manual", headers=h.auth(Role.DPO)
        )
        assert response.status_code == 204
    assert not media_file(h, rid).exists()
    assert (await recording(h, rid))["deleted_reason"] == "manual"
    supervisor = await h.client.delete(f"/v1/recordings/{rid}", headers=h.auth(Role.SUPERVISOR))
    assert supervisor.status_code == 403


async def test_missing_file_is_deleted_cleanly(h: Harness, clock: FakeClock) -> None:
    rid = await finished_recording(h)
    media_file(h, rid).unlink()
    clock.now = DEADLINE + timedelta(days=1)
    result = await sweep(h)
    assert (result["deleted"], result["errors"]) == (1, 0)
    assert (await recording(h, rid))["state"] == "deleted"


async def test_storage_error_leaves_it_undeleted_and_reported(h: Harness, clock: FakeClock) -> None:
    rid = await finished_recording(h)
    # The tests run as root, where a read-only directory does not stop unlink; a directory in
    # the file's place makes the store's delete fail with a real OSError instead.
    path = media_file(h, rid)
    path.unlink()
    path.mkdir()
    (path / "keep").write_bytes(b"x")
    clock.now = DEADLINE + timedelta(days=1)
    result = await sweep(h)
    assert (result["deleted"], result["errors"]) == (0, 1)
    body = await recording(h, rid)
    assert body["state"] != "deleted" and body["deleted_at"] is None
    async with h.services.engine.connect() as conn:
        error = (await conn.execute(sa.text("SELECT deletion_error FROM recordings"))).scalar_one()
    assert error and "cannot delete media" in error
    ready = (await h.client.get("/readyz")).json()
    assert ready["checks"]["retention:overdue"][0]["status"] == "warn"


async def test_call_records_past_six_years_lose_personal_fields(
    h: Harness, clock: FakeClock
) -> None:
    await finished_recording(h)
    clock.now = add_months(ENDED, 72) + timedelta(seconds=1)
    result = await sweep(h)
    assert result["records_erased"] == 1 and result["deleted"] == 1
    async with h.services.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.text("SELECT from_number, to_number, agent_id, personal_erased_at FROM calls")
            )
        ).one()
        count = (await conn.execute(sa.text("SELECT count(*) FROM calls"))).scalar_one()
    assert row.from_number is None and row.to_number is None and row.personal_erased_at is not None
    assert count == 1, "counts survive"


async def test_due_lists_what_goes_next(h: Harness, clock: FakeClock) -> None:
    rid = await finished_recording(h)
    clock.now = DEADLINE - timedelta(days=10)
    due = await h.client.get("/v1/retention/due?within_days=30", headers=h.auth(Role.DPO))
    assert due.status_code == 200
    assert [(i["id"], i["held"]) for i in due.json()["items"]] == [(rid, False)]
    none = await h.client.get("/v1/retention/due?within_days=5", headers=h.auth(Role.DPO))
    assert none.json()["items"] == []


async def test_policy_change_recomputes_and_says_what_moved_earlier(h: Harness) -> None:
    rid = await finished_recording(h)
    response = await h.client.put(
        "/v1/retention/policy/council_tax",
        json={"media_months": 12, "record_months": 72},
        headers=h.auth(Role.DPO),
    )
    assert response.status_code == 200, response.text
    change = response.json()
    assert change["recordings_recomputed"] == 1 and change["recordings_shortened"] == 1
    assert any("moved earlier" in w for w in change["warnings"])
    assert (await recording(h, rid))["retention_until"].startswith("2027-08-31T14:30")
    longer = await h.client.put(
        "/v1/retention/policy/council_tax",
        json={"media_months": 24, "record_months": 72},
        headers=h.auth(Role.DPO),
    )
    assert any("privacy notice" in w for w in longer.json()["warnings"])
    bad = await h.client.put(
        "/v1/retention/policy/council_tax",
        json={"media_months": 24, "record_months": 12},
        headers=h.auth(Role.DPO),
    )
    assert bad.status_code == 422
    policies = {
        p["service_area"]: p
        for p in (await h.client.get("/v1/retention/policy", headers=h.auth(Role.DPO))).json()
    }
    assert (
        policies["council_tax"]["media_months"] == 24
        and policies["council_tax"]["overridden"] is True
    )
    assert (
        policies["benefits"]["media_months"] == 18 and policies["benefits"]["overridden"] is False
    )


async def test_new_recordings_follow_their_area_policy(h: Harness) -> None:
    await h.client.put(
        "/v1/retention/policy/council_tax",
        json={"media_months": 6, "record_months": 72},
        headers=h.auth(Role.DPO),
    )
    rid = await finished_recording(h)
    assert (await recording(h, rid))["retention_until"].startswith("2027-02-28T14:30")


async def test_quarantined_media_is_dpo_only(h: Harness) -> None:
    rid = await finished_recording(h)
    async with h.services.engine.begin() as conn:
        await conn.execute(sa.text("UPDATE recordings SET quarantined = :q"), {"q": True})
    supervisor = await h.client.get(
        f"/v1/recordings/{rid}/media?purpose=complaint", headers=h.auth(Role.SUPERVISOR)
    )
    assert supervisor.status_code == 403
    dpo = await h.client.get(
        f"/v1/recordings/{rid}/media?purpose=subject_access", headers=h.auth(Role.DPO)
    )
    assert dpo.status_code == 200
    missing_purpose = await h.client.get(f"/v1/recordings/{rid}/media", headers=h.auth(Role.DPO))
    assert missing_purpose.status_code == 422


async def test_every_access_is_audited_and_the_chain_verifies(h: Harness, clock: FakeClock) -> None:
    rid = await finished_recording(h)
    await h.client.get(f"/v1/recordings/{rid}", headers=h.auth(Role.SUPERVISOR))
    await h.client.get(
        f"/v1/recordings/{rid}/media?purpose=training", headers=h.auth(Role.SUPERVISOR)
    )
    hold = (
        await h.client.post(
            f"/v1/recordings/{rid}/holds", json={"reason": "complaint"}, headers=h.auth(Role.DPO)
        )
    ).json()
    await h.client.post(
        f"/v1/recordings/{rid}/holds/{hold['id']}/release", headers=h.auth(Role.DPO)
    )
    clock.now = DEADLINE + timedelta(days=1)
    await sweep(h)

    entries = (await h.client.get(f"/v1/audit?target_id={rid}", headers=h.auth(Role.DPO))).json()[
        "items"
    ]
    assert [(e["action"], e["actor"], e["purpose"]) for e in entries] == [
        ("recording.read", "test-supervisor", None),
        ("recording.media", "test-supervisor", "training"),
        ("hold.placed", "test-dpo", None),
        ("hold.released", "test-dpo", None),
        ("recording.deleted", "retention-sweep", None),
    ]
    verify = (await h.client.get("/v1/audit/verify", headers=h.auth(Role.DPO))).json()
    assert verify["ok"] is True and verify["entries"] >= 5

    async with h.services.engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # past the append-only trigger, as a superuser
            await conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        await conn.execute(
            sa.text(
                "UPDATE audit_entries SET actor = 'someone-else' WHERE action = 'recording.media'"
            )
        )
    broken = (await h.client.get("/v1/audit/verify", headers=h.auth(Role.DPO))).json()
    assert broken["ok"] is False and broken["first_bad_seq"] is not None


async def test_recordings_list_serves_subject_access(h: Harness) -> None:
    mine = await finished_recording(h, "c-1", "r-1", caller="+441632960111")
    await finished_recording(h, "c-2", "r-2", caller="+441632960222")
    response = await h.client.get("/v1/recordings?caller=%2B441632960111", headers=h.auth(Role.DPO))
    assert response.status_code == 200
    assert [i["id"] for i in response.json()["items"]] == [mine]
    page = await h.client.get("/v1/recordings?limit=1", headers=h.auth(Role.SUPERVISOR))
    assert len(page.json()["items"]) == 1 and page.json()["next_cursor"]
    rest = await h.client.get(
        f"/v1/recordings?limit=1&cursor={page.json()['next_cursor']}",
        headers=h.auth(Role.SUPERVISOR),
    )
    assert (
        len(rest.json()["items"]) == 1
        and rest.json()["items"][0]["id"] != page.json()["items"][0]["id"]
    )


async def test_supervisors_see_that_a_hold_exists_not_its_note(h: Harness) -> None:
    rid = await finished_recording(h)
    await h.client.post(
        f"/v1/recordings/{rid}/holds",
        json={
            "reason": "police_investigation",
            "reference": "POL-1",
            "note": "suspect named in call",
        },
        headers=h.auth(Role.DPO),
    )
    [seen] = (await h.client.get(f"/v1/recordings/{rid}", headers=h.auth(Role.SUPERVISOR))).json()[
        "holds"
    ]
    assert (
        seen["reason"] == "police_investigation"
        and seen["note"] is None
        and seen["placed_by"] is None
    )
    [full] = (await h.client.get(f"/v1/recordings/{rid}", headers=h.auth(Role.DPO))).json()["holds"]
    assert full["note"] == "suspect named in call" and full["placed_by"] == "test-dpo"


async def test_a_hold_cannot_slip_in_while_the_sweep_deletes(h: Harness) -> None:
    rid = await finished_recording(h)
    async with h.services.engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE recordings SET sweep_lease_until = :t"),
            {"t": h.services.clock() + timedelta(minutes=5)},
        )
    response = await h.client.post(
        f"/v1/recordings/{rid}/holds", json={"reason": "complaint"}, headers=h.auth(Role.DPO)
    )
    assert response.status_code == 409, (
        "the DPO is told to check again rather than believe it is held"
    )


async def test_media_written_while_deleting_does_not_outlive_the_tombstone(h: Harness) -> None:
    """A media copy committed between the media deletion and the tombstone is deleted too."""
    rid = await finished_recording(h)
    store = h.services.retention.store
    real_delete = store.delete
    late_copy = Path(h.services.settings.media_dir) / f"{rid}.late.wav"

    async def delete_then_race(relative: str) -> None:
        await real_delete(relative)
        if not late_copy.exists() and relative != late_copy.name:
            late_copy.write_bytes(b"RIFF-late")  # a media fetch finishing right now
            async with h.services.engine.begin() as conn:
                await conn.execute(
                    sa.text("UPDATE recordings SET media_path = :p"), {"p": late_copy.name}
                )

    store.delete = delete_then_race  # type: ignore[method-assign]
    assert (
        await h.client.delete(f"/v1/recordings/{rid}", headers=h.auth(Role.DPO))
    ).status_code == 204
    assert not media_file(h, rid).exists() and not late_copy.exists()
