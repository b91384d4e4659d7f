"""Subject access (SPEC §3.3): everything held for a caller's number, whatever formatting the
provider stored it in, over HTTP and as one archive from ``recgate subject-access export``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from app.domain.roles import Role
from tests.api.test_disclosures import POLICE, recording_with_media, update_recording
from tests.conftest import Harness

RECGATE = str(Path(sys.executable).with_name("recgate"))
FORMATS = {"c-e164": "+442079460000", "c-spaced": "020 7946 0000", "c-plain": "02079460000"}


async def subject_access(h: Harness, caller: str, role: Role = Role.DPO) -> Any:
    response = await h.client.get(
        "/v1/subject-access", params={"caller": caller}, headers=h.auth(role)
    )
    assert response.status_code == 200, response.text
    return response.json()


async def one_caller_three_formats(h: Harness) -> dict[str, str]:
    """The same caller stored three ways, plus a stranger; recording ids by call id."""
    rids = {
        call_id: await recording_with_media(h, call_id, "r-1", caller, media=call_id.encode())
        for call_id, caller in FORMATS.items()
    }
    await recording_with_media(h, "c-other", "r-1", "+442079460001")
    return rids


async def test_calls_stored_in_any_format_are_all_found(harness: Harness) -> None:
    rids = await one_caller_three_formats(harness)
    for query in ("+442079460000", "020 7946 0000", "02079460000", "+44 (0)20 7946 0000"):
        body = await subject_access(harness, query)
        assert body["caller"] == "+442079460000"
        assert {c["provider_call_id"] for c in body["calls"]} == set(FORMATS), query
        assert {r["id"] for r in body["recordings"]} == set(rids.values()), query
    stranger = await subject_access(harness, "07700 900123")
    assert stranger["calls"] == [] and stranger["recordings"] == []


async def test_holds_disclosures_and_tombstones_are_included(harness: Harness) -> None:
    rids = await one_caller_three_formats(harness)
    held = await harness.client.post(
        "/v1/holds",
        json={"caller": "+442079460000", "reason": "subject_access", "reference": "SAR-1"},
        headers=harness.auth(Role.DPO),
    )
    assert held.status_code == 201, held.text
    disclosed = await harness.client.post(
        f"/v1/recordings/{rids['c-plain']}/disclosures", json=POLICE, headers=harness.auth(Role.DPO)
    )
    assert disclosed.status_code == 201
    # Released, so the caller hold no longer blocks the deletion.
    released = await harness.client.post(
        f"/v1/holds/{held.json()['id']}/release", headers=harness.auth(Role.DPO)
    )
    assert released.status_code == 200
    deleted = await harness.client.delete(
        f"/v1/recordings/{rids['c-spaced']}?reason=manual", headers=harness.auth(Role.DPO)
    )
    assert deleted.status_code == 204

    body = await subject_access(harness, "020 7946 0000")
    assert [h["id"] for h in body["holds"]] == [held.json()["id"]]
    assert [d["id"] for d in body["disclosures"]] == [disclosed.json()["id"]]
    assert [t["id"] for t in body["tombstones"]] == [rids["c-spaced"]]
    tombstone = body["tombstones"][0]
    assert tombstone["deleted_reason"] == "manual" and tombstone["deleted_at"]
    assert set(tombstone) == {"id", "call_id", "deleted_at", "deleted_reason"}, "no media"
    assert rids["c-spaced"] not in {r["id"] for r in body["recordings"]}


async def test_only_the_dpo_and_admin_may_ask_and_each_request_is_audited(
    harness: Harness,
) -> None:
    await one_caller_three_formats(harness)
    for role in (Role.IVR, Role.OPS, Role.SUPERVISOR):
        response = await harness.client.get(
            "/v1/subject-access?caller=02079460000", headers=harness.auth(role)
        )
        assert response.status_code == 403, role
    await subject_access(harness, "02079460000", Role.ADMIN)
    audit = await harness.client.get(
        "/v1/audit?action=subject_access.read", headers=harness.auth(Role.DPO)
    )
    entries = audit.json()["items"]
    assert len(entries) == 1 and entries[0]["purpose"] == "subject_access"
    assert entries[0]["detail"]["calls"] == 3
    assert "2079460000" not in json.dumps(entries[0]), "the number stays out of the audit chain"


async def test_a_number_that_cannot_be_a_phone_number_is_422(harness: Harness) -> None:
    response = await harness.client.get(
        "/v1/subject-access?caller=not-a-number", headers=harness.auth(Role.DPO)
    )
    assert response.status_code == 422


def run_export(h: Harness, caller: str, out: Path) -> subprocess.CompletedProcess[str]:
    settings = h.services.settings
    env = {
        **os.environ,
        "RECGATE_DATABASE_URL": settings.database_url,
        "RECGATE_MEDIA_DIR": str(settings.media_dir),
        "RECGATE_ENV": "development",
        "RECGATE_BACKGROUND_JOBS": "false",
    }
    return subprocess.run(
        [RECGATE, "subject-access", "export", "--caller", caller, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_export_archive_checksums_match_the_media(harness: Harness, tmp_path: Path) -> None:
    rids = await one_caller_three_formats(harness)
    await update_recording(harness, rids["c-e164"], quarantined=True)
    deleted = await harness.client.delete(
        f"/v1/recordings/{rids['c-spaced']}?reason=manual", headers=harness.auth(Role.DPO)
    )
    assert deleted.status_code == 204
    out = tmp_path / "sar.zip"

    result = await asyncio.to_thread(run_export, harness, "020 7946 0000", out)
    assert result.returncode == 0, result.stderr

    with zipfile.ZipFile(out) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("manifest.json"))
        metadata = json.loads(archive.read("metadata.json"))
        contents = {name: archive.read(name) for name in names}
    listed = {f["name"]: f for f in manifest["files"]}
    media = f"media/{rids['c-plain']}.wav"
    assert set(listed) == {"metadata.json", media}, "only media still held and not quarantined"
    assert names == set(listed) | {"manifest.json"}
    assert contents[media] == b"c-plain", "the archive holds the stored bytes"
    for name, entry in listed.items():
        assert entry["sha256"] == hashlib.sha256(contents[name]).hexdigest(), name
        assert entry["size"] == len(contents[name]), name
    assert manifest["withheld"] == [{"recording_id": rids["c-e164"], "reason": "quarantined"}]

    assert {c["provider_call_id"] for c in metadata["calls"]} == set(FORMATS)
    assert [t["id"] for t in metadata["tombstones"]] == [rids["c-spaced"]]
    assert not any(n.startswith(f"media/{rids['c-spaced']}") for n in names), "deleted: no media"
    api = await subject_access(harness, "+442079460000")
    for key in ("calls", "recordings", "holds", "disclosures", "tombstones"):
        assert metadata[key] == api[key], f"metadata.json {key} differs from the API's answer"

    audit = await harness.client.get(
        "/v1/audit?action=subject_access.export", headers=harness.auth(Role.DPO)
    )
    entries = audit.json()["items"]
    assert len(entries) == 1 and entries[0]["purpose"] == "subject_access"
    assert entries[0]["role"] == "cli"


async def test_export_of_an_unusable_number_fails_and_writes_nothing(
    harness: Harness, tmp_path: Path
) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    out = exports / "sar.zip"
    result = await asyncio.to_thread(run_export, harness, "nonsense", out)
    assert result.returncode == 1 and "phone number" in result.stderr
    assert list(exports.iterdir()) == [], "no archive, not even a partial one"
