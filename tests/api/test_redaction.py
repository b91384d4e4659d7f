"""Redaction of an exposure in a real WAV file, end to end: failed pause → quarantine →
silenced span → out of quarantine, original gone."""

from __future__ import annotations

import io
import math
import struct
import uuid
import wave
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import respx
import sqlalchemy as sa

from app.domain.roles import Role
from tests.conftest import CONTROL_URL, FakeClock, Harness, event

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
RATE = 8000
SECONDS = 40


def tone(seconds: float, freq: float, amplitude: int) -> bytes:
    frames = int(seconds * RATE)
    return b"".join(
        struct.pack("<h", int(amplitude * math.sin(2 * math.pi * freq * i / RATE)))
        for i in range(frames)
    )


def call_audio() -> bytes:
    """Speech-like 300 Hz before and after; a loud 1 kHz 'card digits' tone from 10 s to 20 s."""
    pcm = tone(10, 300, 3000) + tone(10, 1000, 20000) + tone(20, 300, 3000)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm)
    return buffer.getvalue()


def frames_of(data: bytes) -> bytes:
    with wave.open(io.BytesIO(data), "rb") as reader:
        return reader.readframes(reader.getnframes())


@pytest.fixture
async def h(make_harness: Callable[..., Any]) -> AsyncIterator[tuple[Harness, FakeClock]]:
    clock = FakeClock(T0)
    async with make_harness(clock=clock) as harness:
        yield harness, clock


async def exposed_recording_with_media(
    harness: Harness, clock: FakeClock
) -> tuple[uuid.UUID, bytes, Path]:
    """A recording whose pause failed from 10 s to 20 s, its WAV in the media store."""
    at: Callable[[float], str] = lambda s: (T0 + timedelta(seconds=s)).isoformat()  # noqa: E731
    await harness.send_event(event("call.started", "c-1", at=at(0)))
    await harness.send_event(event("recording.started", "c-1", "r-1", at=at(0)))
    async with respx.mock:
        respx.post(f"{CONTROL_URL}/calls/c-1/recording/pause").respond(403)
        respx.post(f"{CONTROL_URL}/calls/c-1/recording/resume").respond(
            200, json={"state": "recording"}
        )
        clock.now = T0 + timedelta(seconds=10)
        start = await harness.client.post(
            "/v1/calls/generic/c-1/payment/start", headers=harness.auth(Role.IVR)
        )
        assert start.status_code == 503
        clock.now = T0 + timedelta(seconds=20)
        assert (
            await harness.client.post(
                "/v1/calls/generic/c-1/payment/end", headers=harness.auth(Role.IVR)
            )
        ).status_code == 200
    clock.now = T0 + timedelta(seconds=40)
    await harness.send_event(event("recording.stopped", "c-1", "r-1", at=at(40)))
    await harness.send_event(event("call.ended", "c-1", at=at(40)))

    audio = call_audio()
    async with harness.services.engine.connect() as conn:
        rid = uuid.UUID(
            str((await conn.execute(sa.text("SELECT id FROM recordings"))).scalar_one())
        )

    async def chunks() -> AsyncIterator[bytes]:
        yield audio

    stored = await harness.services.media.store.write(rid, "wav", chunks())
    db_id = rid.hex if harness.services.engine.dialect.name == "sqlite" else str(rid)
    async with harness.services.engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE recordings SET media_path = :p WHERE id = :id"),
            {"p": stored.path, "id": db_id},
        )
    return rid, audio, Path(harness.services.settings.media_dir) / stored.path


async def test_exposed_span_is_silenced_and_the_original_deleted(
    h: tuple[Harness, FakeClock],
) -> None:
    harness, clock = h
    rid, audio, original = await exposed_recording_with_media(harness, clock)
    quarantined = await harness.client.get(
        f"/v1/recordings/{rid}/media?purpose=quality", headers=harness.auth(Role.SUPERVISOR)
    )
    assert quarantined.status_code == 403, "quarantined until redacted"

    assert await harness.services.redaction.redact_due() == 1

    assert not original.exists(), "the unredacted original is gone"
    media = await harness.client.get(
        f"/v1/recordings/{rid}/media?purpose=quality", headers=harness.auth(Role.SUPERVISOR)
    )
    assert media.status_code == 200
    before, after = frames_of(audio), frames_of(media.content)
    margin = harness.services.settings.redaction_margin_s
    lo, hi = int((10 - margin) * RATE) * 2, int((20 + margin) * RATE) * 2
    assert after[lo:hi] == bytes(hi - lo), "the exposed span (with its margin) is digital silence"
    assert after[:lo] == before[:lo] and after[hi:] == before[hi:], "everything else is unchanged"
    body = (
        await harness.client.get(f"/v1/recordings/{rid}", headers=harness.auth(Role.DPO))
    ).json()
    assert body["quarantined"] is False and body["redacted_at"] is not None
    assert [e["kind"] for e in body["exposures"]] == ["pause_failed"], (
        "the exposure stays on record"
    )
    audit = (
        await harness.client.get(
            f"/v1/audit?target_id={rid}&action=recording.redacted", headers=harness.auth(Role.DPO)
        )
    ).json()
    assert audit["items"][0]["detail"]["spans_s"] == [[10 - margin, 20 + margin]]


async def test_non_wav_media_stays_quarantined(h: tuple[Harness, FakeClock]) -> None:
    harness, _clock = h
    async with respx.mock:
        respx.post(f"{CONTROL_URL}/calls/c-1/recording/pause").respond(403)
        respx.post(f"{CONTROL_URL}/calls/c-1/recording/resume").respond(
            200, json={"state": "recording"}
        )
        await harness.send_event(event("recording.started", "c-1", "r-1", at=T0.isoformat()))
        await harness.client.post(
            "/v1/calls/generic/c-1/payment/start", headers=harness.auth(Role.IVR)
        )
        await harness.client.post(
            "/v1/calls/generic/c-1/payment/end", headers=harness.auth(Role.IVR)
        )
    await harness.send_event(
        event("call.ended", "c-1", at=(T0 + timedelta(seconds=30)).isoformat())
    )
    async with harness.services.engine.connect() as conn:
        rid = uuid.UUID(
            str((await conn.execute(sa.text("SELECT id FROM recordings"))).scalar_one())
        )

    async def chunks() -> AsyncIterator[bytes]:
        yield b"ID3 not a wav at all"

    stored = await harness.services.media.store.write(rid, "wav", chunks())
    db_id = rid.hex if harness.services.engine.dialect.name == "sqlite" else str(rid)
    async with harness.services.engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE recordings SET media_path = :p WHERE id = :id"),
            {"p": stored.path, "id": db_id},
        )
    assert await harness.services.redaction.redact_due() == 0
    body = (
        await harness.client.get(f"/v1/recordings/{rid}", headers=harness.auth(Role.DPO))
    ).json()
    assert body["quarantined"] is True
    assert (Path(harness.services.settings.media_dir) / stored.path).exists(), "nothing deleted"


async def test_a_failed_delete_of_the_original_is_retried(h: tuple[Harness, FakeClock]) -> None:
    from app.storage.media import MediaStoreError

    harness, clock = h
    _, _, original = await exposed_recording_with_media(harness, clock)
    store = harness.services.redaction.store
    real_delete = store.delete
    failures: list[str] = []

    async def failing_once(relative: str) -> None:
        if not failures:
            failures.append(relative)
            raise MediaStoreError("cannot delete media: Input/output error")
        await real_delete(relative)

    store.delete = failing_once  # type: ignore[method-assign]
    assert await harness.services.redaction.redact_due() == 1
    assert original.exists(), "the first delete failed"
    async with harness.services.engine.connect() as conn:
        pending = (
            await conn.execute(sa.text("SELECT superseded_media_path FROM recordings"))
        ).scalar_one()
    assert pending == original.name, "the original is still on record, to be deleted"
    await harness.services.redaction.redact_due()
    assert not original.exists()
    async with harness.services.engine.connect() as conn:
        assert (
            await conn.execute(sa.text("SELECT superseded_media_path FROM recordings"))
        ).scalar_one() is None
