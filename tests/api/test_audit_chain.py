"""The audit trail as a keyed chain nobody can quietly rewrite (issue 11).

Tampering is done the way someone with write access to the database would: plain SQL. On
PostgreSQL that first has to get past the append-only trigger, as a superuser can.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from app.config import Settings
from app.domain.roles import Role
from app.services.audit import (
    CHECKPOINT_OBJECT,
    GENESIS,
    Actor,
    AuditKeys,
    AuditService,
    _content,
    entry_hash,
    key_id,
    legacy_hash,
)
from app.storage.models import AuditEntry
from tests.conftest import Harness, event

CLERK = Actor("test-clerk", "dpo")
KEY_A = b"audit key A thirty-two bytes ok"
KEY_B = b"audit key B thirty-two bytes ok"
KEY_C = b"audit key C thirty-two bytes ok"


def service(h: Harness, keys: AuditKeys) -> AuditService:
    """An audit service on the harness's database and media store, with other keys."""
    return AuditService(h.services.sessions, h.services.clock, keys, h.services.media.store)


async def append(audit: AuditService, n: int, start: int = 1) -> list[int]:
    async with audit.sessions() as session, session.begin():
        entries = [
            await audit.record(session, CLERK, "test.action", "thing", f"t-{i}")
            for i in range(start, start + n)
        ]
        return [e.seq for e in entries]


async def tamper(h: Harness, statement: str, **params: Any) -> None:
    async with h.services.engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # past the append-only trigger, as a superuser
            await conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        await conn.execute(sa.text(statement), params)


async def verify(h: Harness) -> dict[str, Any]:
    response = await h.client.get("/v1/audit/verify", headers=h.auth(Role.DPO))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_an_untouched_chain_verifies_against_its_checkpoint(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    seqs = await append(harness.services.audit, 5)
    with caplog.at_level(logging.INFO, logger="recgate.audit"):
        checkpoint = await harness.services.audit.checkpoint()
    assert checkpoint is not None and (checkpoint.last_seq, checkpoint.count) == (seqs[-1], 5)
    stored = json.loads(await harness.services.media.store.get_small(CHECKPOINT_OBJECT) or b"")
    assert (
        stored["last_seq"] == seqs[-1]
        and stored["key_id"] == harness.services.audit.keys.current_id
    )
    assert stored["mac"] and any(stored["mac"] in r.getMessage() for r in caplog.records), (
        "the checkpoint is logged too, with the same data"
    )
    body = await verify(harness)
    assert body["ok"] is True and body["entries"] == 5 and body["first_bad_seq"] is None
    assert body["checkpoint"]["last_seq"] == seqs[-1] and body["head"] == stored["hash"]


async def test_a_changed_row_is_named(harness: Harness) -> None:
    seqs = await append(harness.services.audit, 5)
    await harness.services.audit.checkpoint()
    await tamper(harness, "UPDATE audit_entries SET target_id = 'other' WHERE seq = :s", s=seqs[2])
    body = await verify(harness)
    assert body["ok"] is False and body["first_bad_seq"] == seqs[2], body


async def test_a_deleted_middle_row_names_the_entry_after_it(harness: Harness) -> None:
    seqs = await append(harness.services.audit, 5)
    await tamper(harness, "DELETE FROM audit_entries WHERE seq = :s", s=seqs[2])
    body = await verify(harness)
    assert body["ok"] is False and body["first_bad_seq"] == seqs[3], body


async def test_deleting_the_newest_rows_after_a_checkpoint_is_found(harness: Harness) -> None:
    audit = harness.services.audit
    seqs = await append(audit, 5)
    await audit.checkpoint()
    stored = await audit.store.get_small(CHECKPOINT_OBJECT)
    await tamper(harness, "DELETE FROM audit_entries WHERE seq >= :s", s=seqs[3])
    body = await verify(harness)
    assert body["ok"] is False and body["first_bad_seq"] == seqs[4], body
    assert "truncated" in body["reason"]
    # The truncated head is not checkpointed over the evidence, even once new entries come.
    await append(audit, 3, start=10)
    assert await audit.checkpoint() is None
    assert await audit.store.get_small(CHECKPOINT_OBJECT) == stored
    assert (await verify(harness))["ok"] is False


async def test_reordered_rows_are_found(harness: Harness) -> None:
    seqs = await append(harness.services.audit, 5)
    await tamper(harness, "UPDATE audit_entries SET seq = -1 WHERE seq = :s", s=seqs[1])
    await tamper(harness, "UPDATE audit_entries SET seq = :a WHERE seq = :b", a=seqs[1], b=seqs[2])
    await tamper(harness, "UPDATE audit_entries SET seq = :s WHERE seq = -1", s=seqs[2])
    body = await verify(harness)
    assert body["ok"] is False and body["first_bad_seq"] == seqs[1], body


@pytest.mark.parametrize("label", ["own key id", "current key id"])
async def test_a_chain_rewritten_with_another_key_fails_at_its_first_entry(
    harness: Harness, label: str
) -> None:
    real = harness.services.audit
    await append(real, 5)
    await real.checkpoint()
    forger = AuditKeys.of(KEY_C)
    if label == "current key id":  # claiming the real key's id does not help without it
        forger = AuditKeys(real.keys.current_id, {real.keys.current_id: KEY_C})
    await tamper(harness, "DELETE FROM audit_entries")
    forged = await append(service(harness, forger), 5)
    body = await verify(harness)
    assert body["ok"] is False and body["first_bad_seq"] == forged[0], body
    # Even signed with the right key, a rewrite shorter than the checkpoint is found.
    await tamper(harness, "DELETE FROM audit_entries")
    rewritten = await append(real, 3)
    body = await verify(harness)
    assert body["ok"] is False and body["first_bad_seq"] == body["checkpoint"]["last_seq"], body
    assert body["first_bad_seq"] not in rewritten


async def test_key_rotation_keeps_old_entries_verifiable(harness: Harness) -> None:
    first = Settings(audit_key=KEY_A.decode(), _env_file=None)
    rotated = Settings(
        audit_key=KEY_B.decode(),
        audit_previous_keys=KEY_A.decode(),
        _env_file=None,
    )
    before = service(harness, AuditKeys.of(*first.audit_signing_keys()))
    old = await append(before, 3)
    await before.checkpoint()
    after = service(harness, AuditKeys.of(*rotated.audit_signing_keys()))
    new = await append(after, 3, start=4)
    await after.checkpoint()

    check = await after.verify()
    assert check.ok and check.entries == 6, check
    assert check.checkpoint is not None and check.checkpoint["key_id"] == key_id(KEY_B)
    async with harness.services.engine.connect() as conn:
        ids: dict[int, str] = dict(
            (await conn.execute(sa.text("SELECT seq, key_id FROM audit_entries"))).all()
        )
    assert {ids[s] for s in old} == {key_id(KEY_A)} and {ids[s] for s in new} == {key_id(KEY_B)}

    # Without the retired key, its entries (and the checkpoint it signed) no longer verify.
    forgot = await service(harness, AuditKeys.of(KEY_B)).verify()
    assert not forgot.ok and forgot.first_bad_seq == old[0]

    # An entry re-signed with a key recgate does not know fails, and is named.
    async with harness.services.sessions() as session:
        row = (
            await session.execute(sa.select(AuditEntry).where(AuditEntry.seq == new[1]))
        ).scalar_one()
        forged = entry_hash(KEY_C, key_id(KEY_C), row.prev_hash, _content(row))
    await tamper(
        harness,
        "UPDATE audit_entries SET key_id = :k, hash = :forged WHERE seq = :s",
        k=key_id(KEY_C),
        forged=forged,
        s=new[1],
    )
    broken = await after.verify()
    assert not broken.ok and broken.first_bad_seq == new[1]
    assert broken.reason is not None and "unknown key" in broken.reason


async def test_entries_from_before_the_hmac_chain_are_reported_unkeyed(harness: Harness) -> None:
    async with harness.services.sessions() as session, session.begin():
        prev = GENESIS
        for i in range(2):  # as the SHA-256 chain before migration 0007 wrote them
            at = harness.services.clock()
            fields: dict[str, Any] = {
                "at": at,
                "actor": "old",
                "role": "dpo",
                "action": "recording.read",
                "target_type": "recording",
                "target_id": f"r-{i}",
                "purpose": None,
                "detail": {},
            }
            digest = legacy_hash(prev, _content(**fields))
            session.add(AuditEntry(**fields, prev_hash=prev, hash=digest, key_id=None))
            await session.flush()
            prev = digest
    keyed = await append(harness.services.audit, 2)
    # Without a checkpoint nothing outside the database vouches for unkeyed entries: a chain
    # rewritten as unkeyed entries would look the same.
    body = await verify(harness)
    assert body["ok"] is False and "no checkpoint to vouch" in body["reason"], body
    assert await harness.services.audit.checkpoint() is not None
    body = await verify(harness)
    assert body["ok"] is True and body["entries"] == 4 and body["unkeyed"] == 2, body
    assert "unkeyed (before the HMAC chain)" in body["reason"]

    # An unkeyed entry cannot be slipped in after the keyed chain has begun.
    await tamper(harness, "UPDATE audit_entries SET key_id = NULL WHERE seq = :s", s=keyed[1])
    body = await verify(harness)
    assert body["ok"] is False and body["first_bad_seq"] == keyed[1], body


async def test_refused_media_requests_are_audited_with_their_reason(harness: Harness) -> None:
    h = harness
    for body in (
        event("call.started", "c-1"),
        event("recording.started", "c-1", "r-1"),
        event("recording.stopped", "c-1", "r-1"),
        event("call.ended", "c-1"),
    ):
        assert (await h.send_event(body)).status_code == 200
    rid = await h.recording_id("c-1", "r-1")
    url = f"/v1/recordings/{rid}/media?purpose=quality"

    assert (await h.client.get(url, headers=h.auth(Role.SUPERVISOR))).status_code == 409
    assert (await h.client.get(url, headers=h.auth(Role.IVR))).status_code == 403
    async with h.services.engine.begin() as conn:
        await conn.execute(sa.text("UPDATE recordings SET quarantined = true"))
    assert (await h.client.get(url, headers=h.auth(Role.SUPERVISOR))).status_code == 403
    deleted = await h.client.delete(f"/v1/recordings/{rid}", headers=h.auth(Role.DPO))
    assert deleted.status_code == 204, deleted.text
    assert (await h.client.get(url, headers=h.auth(Role.DPO))).status_code == 410

    page = await h.client.get(
        f"/v1/audit?target_id={rid}&action=recording.media", headers=h.auth(Role.DPO)
    )
    assert [(e["actor"], e["detail"]) for e in page.json()["items"]] == [
        ("test-supervisor", {"outcome": "refused", "reason": "no_media"}),
        ("test-ivr", {"outcome": "refused", "reason": "role"}),
        ("test-supervisor", {"outcome": "refused", "reason": "quarantined"}),
        ("test-dpo", {"outcome": "refused", "reason": "deleted"}),
    ]
    assert (await verify(h))["ok"] is True


async def test_the_service_checkpoints_on_shutdown(make_harness: Callable[..., Any]) -> None:
    async with make_harness(background_jobs=True) as h:
        store = h.services.media.store
        seqs = await append(h.services.audit, 3)
    stored = json.loads(await store.get_small(CHECKPOINT_OBJECT) or b"")
    assert stored["last_seq"] >= seqs[-1]


async def test_postgres_refuses_update_and_delete_of_audit_entries(harness: Harness) -> None:
    if harness.services.engine.dialect.name != "postgresql":
        pytest.skip("the append-only trigger is PostgreSQL's")
    seqs = await append(harness.services.audit, 2)
    for statement in (
        "UPDATE audit_entries SET actor = 'someone-else' WHERE seq = :s",
        "DELETE FROM audit_entries WHERE seq = :s",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            async with harness.services.engine.begin() as conn:
                await conn.execute(sa.text(statement), {"s": seqs[0]})
    assert (await verify(harness))["entries"] == 2
