"""Redaction of exposures: silence the span of a quarantined recording that may hold card data.

A recording with an exposure is quarantined. Once its exposures are closed and recgate holds
its media as PCM WAV, the exposed spans (plus a margin either side) are silenced in a new
file, the new file is verified frame by frame against the original, the original is deleted,
and the recording leaves quarantine. Anything else (not WAV, no start time, media only on the
provider) stays quarantined until a DPO deletes it.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.clock import Clock
from app.services.audit import SYSTEM_REDACTION, AuditService
from app.services.redaction_audio import RedactionError, exposure_spans, redact_wav
from app.storage.media import MediaStore, MediaStoreError
from app.storage.repositories import ExposureRepository, RecordingRepository, RedactionRepository

log = logging.getLogger("recgate.redaction")
_CHUNK = 256 * 1024


class RedactionService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        clock: Clock,
        store: MediaStore,
        audit: AuditService,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.store = store
        self.audit = audit

    async def redact_due(self) -> int:
        """Redact every quarantined recording that can be; returns how many left quarantine.

        First finishes deleting originals whose deletion failed last time.
        """
        async with self.sessions() as session:
            superseded = await RedactionRepository(session).superseded()
        for recording_id, path in superseded:
            await self._delete_original(recording_id, path)
        async with self.sessions() as session:
            candidates = await RedactionRepository(session).candidates()
        done = 0
        for recording_id in candidates:
            done += await self.redact(recording_id)
        return done

    async def redact(self, recording_id: uuid.UUID) -> bool:
        """Silence one recording's exposed spans; True when it left quarantine."""
        async with self.sessions() as session:
            recording = await RecordingRepository(session).by_id(recording_id)
            if recording is None or not recording.quarantined or recording.deleted_at is not None:
                return False
            exposures = [
                e
                for e in await ExposureRepository(session).for_call(recording.call_id)
                if e.recording_id in (recording.id, None)
            ]
        if (
            recording.media_path is None
            or (recording.media_format or "").lower() != "wav"
            or recording.started_at is None
            or recording.ended_at is None
            or any(e.ended_at is None for e in exposures)
        ):
            return False
        spans = exposure_spans(
            recording.started_at,
            [(e.started_at, e.ended_at) for e in exposures],
            recording.ended_at,
            self.settings.redaction_margin_s,
        )
        original = recording.media_path
        with tempfile.TemporaryDirectory(prefix="recgate-redact-") as work:
            src, dst = Path(work) / "original.wav", Path(work) / "redacted.wav"
            try:
                await _download(self.store, original, src)
                report = await redact_wav(src, dst, spans)
                stored = await self.store.write(recording.id, "redacted.wav", _file_chunks(dst))
            except RedactionError as exc:
                log.warning("recording %s stays quarantined: %s", recording_id, exc.reason)
                return False
            except (MediaStoreError, OSError) as exc:
                log.error("redaction of recording %s failed: %s", recording_id, exc)
                return False
        if stored.sha256 != report.sha256:
            await self.store.delete(stored.path)
            log.error("redacted copy of %s changed on its way into the store", recording_id)
            return False
        async with self.sessions() as session, session.begin():
            row = await RecordingRepository(session).by_id(recording_id, lock=True)
            if row is None or row.deleted_at is not None or row.media_path != original:
                await self.store.delete(stored.path)
                return False
            row.media_path, row.media_sha256, row.media_size = (
                stored.path,
                stored.sha256,
                stored.size,
            )
            row.quarantined, row.redacted_at = False, self.clock()
            # Recorded before the delete, so a failed or interrupted delete is retried.
            row.superseded_media_path = original
            await self.audit.record(
                session,
                SYSTEM_REDACTION,
                "recording.redacted",
                "recording",
                str(recording_id),
                detail={
                    "spans_s": [list(span) for span in report.spans_s],
                    "frames_silenced": report.frames_silenced,
                    "sha256": report.sha256,
                },
            )
        # Only once the redacted copy is recorded does the original go.
        await self._delete_original(recording_id, original)
        return True

    async def _delete_original(self, recording_id: uuid.UUID, path: str) -> None:
        try:
            await self.store.delete(path)
        except MediaStoreError as exc:
            log.error(
                "unredacted original of %s not deleted yet (will retry): %s", recording_id, exc
            )
            return
        async with self.sessions() as session, session.begin():
            row = await RecordingRepository(session).by_id(recording_id, lock=True)
            if row is not None and row.superseded_media_path == path:
                row.superseded_media_path = None


async def _download(store: MediaStore, relative: str, target: Path) -> None:
    handle = await asyncio.to_thread(open, target, "wb")
    try:
        async for chunk in store.read(relative):
            await asyncio.to_thread(handle.write, chunk)
    finally:
        await asyncio.to_thread(handle.close)


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, _CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)
