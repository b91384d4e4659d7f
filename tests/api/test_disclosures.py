"""Disclosures (SPEC §3.3): who a recording was shared with, why, and exactly which media.

The privacy notice: recordings are confidential and shared only where justified (other
council services, the police, care providers); every disclosure must be on record.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from app.domain.roles import Role
from tests.conftest import Harness, event

AUDIO = b"RIFF-disclosed-audio"
POLICE = {
    "recipient": "police",
    "recipient_name": "Thames Valley Police",
    "reference": "TVP-2026-0042",
    "lawful_basis": "UK GDPR Art 6(1)(e); DPA 2018 Sch 2 para 2 (crime)",
    "justification": "Threats made to an officer on the call; requested by DC Smith.",
}


async def recording_with_media(
    h: Harness,
    call_id: str = "c-1",
    recording_id: str = "r-1",
    caller: str = "+441632960001",
    media: bytes | None = AUDIO,
) -> str:
    """A finished call with one recording; its media written through the media store."""
    for body in (
        event("call.started", call_id, **{"from": caller}),
        event("recording.started", call_id, recording_id),
        event("recording.stopped", call_id, recording_id),
        event("call.ended", call_id, **{"from": caller}),
    ):
        assert (await h.send_event(body)).status_code == 200
    rid = await h.recording_id(call_id, recording_id)
    if media is not None:

        async def chunks() -> AsyncIterator[bytes]:
            yield media

        stored = await h.services.media.store.write(uuid.UUID(rid), "wav", chunks())
        await update_recording(
            h, rid, media_path=stored.path, media_size=stored.size, media_sha256=stored.sha256
        )
    return rid


async def update_recording(h: Harness, rid: str, **values: Any) -> None:
    # SQLAlchemy's Uuid is CHAR(32) hex on SQLite and a native uuid on PostgreSQL.
    db_id = uuid.UUID(rid).hex if h.services.engine.dialect.name == "sqlite" else rid
    sets = ", ".join(f"{k} = :{k}" for k in values)
    async with h.services.engine.begin() as conn:
        await conn.execute(
            sa.text(f"UPDATE recordings SET {sets} WHERE id = :id"), {**values, "id": db_id}
        )


async def disclose(
    h: Harness, rid: str, role: Role = Role.DPO, **body: Any
) -> dict[str, Any] | int:
    response = await h.client.post(
        f"/v1/recordings/{rid}/disclosures", json={**POLICE, **body}, headers=h.auth(role)
    )
    if response.status_code != 201:
        return response.status_code
    result: dict[str, Any] = response.json()
    return result


async def test_dpo_discloses_with_the_media_sha256_and_who_did_it(harness: Harness) -> None:
    rid = await recording_with_media(harness)
    created = await disclose(harness, rid)
    assert isinstance(created, dict), created
    assert created["recording_id"] == rid
    assert created["recipient"] == "police" and created["recipient_name"] == "Thames Valley Police"
    assert created["media_sha256"] == hashlib.sha256(AUDIO).hexdigest()
    assert created["media_size"] == len(AUDIO)
    assert (created["disclosed_by"], created["disclosed_role"]) == ("test-dpo", "dpo")

    listed = await harness.client.get(
        f"/v1/recordings/{rid}/disclosures", headers=harness.auth(Role.DPO)
    )
    assert listed.status_code == 200
    assert [d["id"] for d in listed.json()] == [created["id"]]


async def test_ivr_ops_and_supervisor_may_not_disclose_or_list(harness: Harness) -> None:
    rid = await recording_with_media(harness)
    for role in (Role.IVR, Role.OPS, Role.SUPERVISOR):
        assert await disclose(harness, rid, role) == 403, f"{role} must not disclose"
        for path in (f"/v1/recordings/{rid}/disclosures", "/v1/disclosures"):
            response = await harness.client.get(path, headers=harness.auth(role))
            assert response.status_code == 403, f"{role} must not list {path}"
    assert await harness.count("disclosures") == 0
    assert isinstance(await disclose(harness, rid, Role.ADMIN), dict), "admin may use everything"


async def test_quarantined_recording_is_disclosed_only_by_the_dpo(harness: Harness) -> None:
    rid = await recording_with_media(harness)
    await update_recording(harness, rid, quarantined=True)
    assert await disclose(harness, rid, Role.SUPERVISOR) == 403
    created = await disclose(harness, rid, Role.DPO)
    assert isinstance(created, dict), created
    audit = await harness.client.get(
        f"/v1/audit?target_id={rid}&action=recording.disclosed", headers=harness.auth(Role.DPO)
    )
    assert audit.json()["items"][0]["detail"]["quarantined"] is True


async def test_deleted_recording_is_410_and_no_media_is_409(harness: Harness) -> None:
    rid = await recording_with_media(harness)
    deleted = await harness.client.delete(
        f"/v1/recordings/{rid}?reason=manual", headers=harness.auth(Role.DPO)
    )
    assert deleted.status_code == 204
    response = await harness.client.post(
        f"/v1/recordings/{rid}/disclosures", json=POLICE, headers=harness.auth(Role.DPO)
    )
    assert response.status_code == 410
    assert response.json()["type"].endswith("/recording-deleted")

    no_media = await recording_with_media(harness, "c-2", "r-2", media=None)
    response = await harness.client.post(
        f"/v1/recordings/{no_media}/disclosures", json=POLICE, headers=harness.auth(Role.DPO)
    )
    assert response.status_code == 409, "nothing to disclose without stored media"
    unknown = await disclose(harness, str(uuid.uuid4()))
    assert unknown == 404
    assert await harness.count("disclosures") == 0


async def test_recipient_outside_the_spec_vocabulary_is_422(harness: Harness) -> None:
    rid = await recording_with_media(harness)
    assert await disclose(harness, rid, recipient="journalist") == 422
    assert await disclose(harness, rid, justification="") == 422


async def test_every_disclosure_and_listing_is_audited(harness: Harness) -> None:
    rid = await recording_with_media(harness)
    created = await disclose(harness, rid)
    assert isinstance(created, dict)
    await harness.client.get(f"/v1/recordings/{rid}/disclosures", headers=harness.auth(Role.DPO))
    await harness.client.get("/v1/disclosures?recipient=police", headers=harness.auth(Role.DPO))
    entries = (
        await harness.client.get("/v1/audit?limit=500", headers=harness.auth(Role.DPO))
    ).json()["items"]
    disclosed = [e for e in entries if e["action"] == "recording.disclosed"]
    assert len(disclosed) == 1
    assert disclosed[0]["target_id"] == rid and disclosed[0]["purpose"] == "disclosure"
    assert disclosed[0]["actor"] == "test-dpo" and disclosed[0]["role"] == "dpo"
    assert disclosed[0]["detail"]["disclosure_id"] == created["id"]
    assert disclosed[0]["detail"]["media_sha256"] == hashlib.sha256(AUDIO).hexdigest()
    listings = [e for e in entries if e["action"] == "disclosure.list"]
    assert {e["target_id"] for e in listings} == {rid, "*"}
    assert all(e["purpose"] == "disclosure" for e in listings)
    verify = await harness.client.get("/v1/audit/verify", headers=harness.auth(Role.DPO))
    assert verify.json()["ok"] is True


async def test_card_numbers_in_free_text_are_scrubbed_before_storing(harness: Harness) -> None:
    rid = await recording_with_media(harness)
    created = await disclose(
        harness,
        rid,
        recipient_name="Care Co 4111 1111 1111 1111",
        reference="REF 4111111111111111",
        justification="caller read out 4111-1111-1111-1111 by mistake",
    )
    assert isinstance(created, dict)
    async with harness.services.engine.connect() as conn:
        row = (await conn.execute(sa.text("SELECT * FROM disclosures"))).mappings().one()
    stored = " ".join(str(v) for v in row.values())
    assert "4111" not in stored, "a card number reached the disclosures table"
    assert "[REDACTED]" in row["justification"] and "[REDACTED]" in row["reference"]


async def test_listing_filters_by_recipient_name_and_period(harness: Harness) -> None:
    police = await recording_with_media(harness, "c-1", "r-1")
    care = await recording_with_media(harness, "c-2", "r-2")
    first = await disclose(harness, police)
    second = await disclose(
        harness,
        care,
        recipient="care_provider",
        recipient_name="Riverside Care Home",
        reference=None,
    )
    third = await disclose(harness, care, recipient_name="thames valley POLICE (Reading)")
    assert isinstance(first, dict) and isinstance(second, dict) and isinstance(third, dict)

    async def ids(query: str) -> list[str]:
        response = await harness.client.get(
            f"/v1/disclosures{query}", headers=harness.auth(Role.DPO)
        )
        assert response.status_code == 200, response.text
        return [d["id"] for d in response.json()["items"]]

    assert await ids("") == [third["id"], second["id"], first["id"]], "newest first"
    assert await ids("?recipient=Valley%20police") == [third["id"], first["id"]], (
        "recipient matches part of the name, ignoring case"
    )
    assert await ids("?recipient=riverside") == [second["id"]]
    assert await ids("?recipient_type=care_provider") == [second["id"]]
    assert await ids("?recipient=nobody") == []

    at = datetime.fromisoformat(second["disclosed_at"])
    after = (at - timedelta(microseconds=1)).astimezone(UTC).isoformat().replace("+00:00", "Z")
    before = (at + timedelta(microseconds=1)).astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert await ids(f"?from={after}&to={before}") == [second["id"]]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert await ids(f"?from={future}") == []

    page = await harness.client.get("/v1/disclosures?limit=2", headers=harness.auth(Role.DPO))
    body = page.json()
    assert [d["id"] for d in body["items"]] == [third["id"], second["id"]]
    rest = await ids(f"?limit=2&cursor={body['next_cursor']}")
    assert rest == [first["id"]]
