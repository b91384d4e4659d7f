"""rtpengine's recording directory (issue 10): each file rtpengine closes becomes a recording
with a deadline; its media is copied into recgate's store and both copies are deleted when the
deadline passes. The files follow the layout Debian's rtpengine 10.5 writes with
``--recording-method=pcap`` (checked against the real daemon in tests/e2e)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from app.domain.roles import Role
from app.telephony.rtpengine import RtpengineSpoolController
from app.telephony.rtpengine_spool import parse_metadata
from tests.api.test_rtpengine import FakeNg, ng  # noqa: F401  (the fixture)
from tests.conftest import FakeClock, Harness

CALL = "kam+0fa48545@127.0.0.1"
STEM = f"{quote(CALL, safe='')}-670eb5abe41fb321"
PCAP = f"{STEM}.pcap"
STARTED = datetime(2026, 12, 3, 14, 35, 13, 995_000, tzinfo=UTC)
ENDED = STARTED + timedelta(seconds=95)
TOKEN = "sip-proxy-token-for-tests-000001"
MEDIA = b"\xd4\xc3\xb2\xa1" + bytes(range(256)) * 40  # a pcap's magic, then packets


def metadata(root: Path, *, closed: bool) -> str:
    """The metadata file as rtpengine writes it (its first line names the pcap)."""
    lines = [
        str(root / "pcaps" / PCAP),
        "",
        "",
        f"Timestamp started ms: {STARTED.timestamp() * 1000:.3f}",
        "SDP mode: offer",
        "",
    ]
    if closed:
        lines += [
            f"Timestamp terminated ms(first monologue): {ENDED.timestamp() * 1000:.3f}",
            "",
            "call start time: 2026-12-03T14:35:13",
            "call end time: 2026-12-03T14:36:48",
        ]
    return "\n".join(lines) + "\n"


def write_spool(root: Path, *, closed: bool) -> Path:
    (root / "pcaps").mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    pcap = root / "pcaps" / PCAP
    pcap.write_bytes(MEDIA)
    meta = root / "metadata" / f"rtpengine-meta-{STEM}.txt"
    meta.write_text(metadata(root, closed=closed))
    return pcap


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(ENDED + timedelta(minutes=1))


@pytest.fixture
async def site(
    make_harness: Callable[..., Any],
    ng: FakeNg,  # noqa: F811
    tmp_path: Path,
    clock: FakeClock,
) -> AsyncIterator[Harness]:
    async with make_harness(
        clock=clock,
        rtpengine_ng=ng.address,
        rtpengine_recording_dir=tmp_path / "spool",
        sip_proxy_token=TOKEN,
    ) as h:
        yield h


async def proxy_reports(h: Harness) -> None:
    for event, at in [("call.started", STARTED), ("call.answered", STARTED), ("call.ended", ENDED)]:
        response = await h.client.post(
            "/v1/webhooks/sip-proxy",
            content=urlencode({"event": event, "call_id": CALL, "at": str(at.timestamp())}),
            headers={"content-type": "application/x-www-form-urlencoded", "x-recgate-token": TOKEN},
        )
        assert response.status_code == 200, response.text


def stored_copies(media_dir: Path, recording_id: str) -> list[Path]:
    return list(media_dir.rglob(f"{recording_id}*"))


async def recordings_of(h: Harness) -> list[dict[str, Any]]:
    response = await h.client.get(
        f"/v1/calls/rtpengine/{quote(CALL, safe='')}", headers=h.auth(Role.SUPERVISOR)
    )
    assert response.status_code == 200, response.text
    return list(response.json()["recordings"])


async def test_a_closed_file_becomes_a_recording_with_its_media_and_deadline(
    site: Harness, tmp_path: Path
) -> None:
    await proxy_reports(site)
    spool = site.services.spool
    assert spool is not None
    write_spool(tmp_path / "spool", closed=False)
    assert await spool.scan() == 0, "a file rtpengine is still writing is left alone"
    write_spool(tmp_path / "spool", closed=True)
    assert await spool.scan() == 1
    assert await spool.scan() == 0, "each file is taken in once"
    await site.services.tasks.drain()

    (recording,) = [r for r in await recordings_of(site) if r["provider_recording_id"] == PCAP]
    detail = await site.client.get(f"/v1/recordings/{recording['id']}", headers=site.auth(Role.DPO))
    body = detail.json()
    assert body["state"] == "available" and body["media_available"] is True
    assert body["media_size"] == len(MEDIA) and body["duration_s"] == pytest.approx(95)
    assert body["retention_until"].startswith("2028-06-03")
    media = await site.client.get(
        f"/v1/recordings/{recording['id']}/media",
        params={"purpose": "complaint"},
        headers=site.auth(Role.DPO),
    )
    assert media.status_code == 200 and media.content == MEDIA


async def test_the_sweep_deletes_the_store_copy_and_the_spool_files(
    site: Harness, tmp_path: Path, clock: FakeClock
) -> None:
    await proxy_reports(site)
    pcap = write_spool(tmp_path / "spool", closed=True)
    assert site.services.spool is not None
    await site.services.spool.scan()
    await site.services.tasks.drain()
    (recording,) = [r for r in await recordings_of(site) if r["provider_recording_id"] == PCAP]
    detail = await site.client.get(f"/v1/recordings/{recording['id']}", headers=site.auth(Role.DPO))
    clock.now = datetime.fromisoformat(detail.json()["retention_until"]) + timedelta(seconds=1)
    swept = await site.client.post("/v1/retention/sweep", headers=site.auth(Role.DPO))
    assert swept.status_code == 200 and swept.json()["deleted"] >= 1
    assert not pcap.exists()
    assert list((tmp_path / "spool" / "metadata").iterdir()) == []
    assert stored_copies(Path(site.services.settings.media_dir), recording["id"]) == []
    assert await site.services.spool.scan() == 0


def test_metadata_of_other_shapes_is_ignored(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    closed = metadata(tmp_path, closed=True)
    assert parse_metadata(f"rtpengine-meta-{STEM}.txt", closed, now) is not None
    assert (
        parse_metadata(f"rtpengine-meta-{STEM}.txt", metadata(tmp_path, closed=False), now) is None
    )
    assert parse_metadata("notes.txt", closed, now) is None
    elsewhere = closed.replace(PCAP, "other-0123456789abcdef.pcap", 1)
    assert parse_metadata(f"rtpengine-meta-{STEM}.txt", elsewhere, now) is None
    event = parse_metadata(f"rtpengine-meta-{STEM}.txt", closed, now)
    assert event is not None and event.call.provider_call_id == CALL
    assert event.event_id == f"{CALL}:{PCAP}"


async def test_a_file_name_outside_the_spool_is_refused(site: Harness) -> None:
    from app.telephony.base import ProviderRejected

    rtp = site.services.controllers["rtpengine"]
    assert isinstance(rtp, RtpengineSpoolController)
    for name in ("../secrets.pcap", "/etc/passwd", "..", ""):
        with pytest.raises(ProviderRejected):
            rtp.spool.path(name)


async def test_deleting_a_name_that_is_no_spool_file_deletes_nothing(site: Harness) -> None:
    """A SIP proxy's live recording is named by its Call-ID, which may hold a '/': at its
    deadline there is no spool file to delete, and that must not fail the deletion for ever."""
    rtp = site.services.controllers["rtpengine"]
    assert isinstance(rtp, RtpengineSpoolController)
    await rtp.delete_media("a/b@127.0.0.1")
