"""Recording media: copy it from the provider into the media store, delete it from both.

Twilio PCI Mode deletes its recordings after one year; the 18-month policy is kept by the
local copy, taken as soon as the provider says the media is complete. A generic PBX's media
is copied the same way, from the hosts the operator allows, and checked against the sha256
the PBX reported. A failed copy is retried by :meth:`MediaService.fetch_due` with a growing
delay, up to ``RECGATE_MEDIA_FETCH_ATTEMPTS`` attempts; a URL refused outright is not retried.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.clock import Clock
from app.domain.scrub import scrub_text
from app.services.concurrency import BackgroundTasks
from app.storage.media import MediaStore, MediaStoreError, StoredMedia
from app.storage.models import Recording
from app.storage.repositories import CallRepository, RecordingRepository
from app.telephony.base import MediaSource, ProviderError, RecordingController
from app.telephony.generic import MediaUrlRefused

log = logging.getLogger("recgate.media")

_FIRST_BACKOFF = timedelta(minutes=1)
_MAX_BACKOFF = timedelta(hours=1)


def retry_delay(failures: int) -> timedelta:
    """How long after its ``failures``-th failed copy a recording's media waits before the
    next attempt: the first retry waits only for the media job's next turn (a minute), later
    ones 1, 2, 4 … minutes more, at most an hour, so a PBX that is down is not hammered."""
    if failures <= 1:
        return timedelta(0)
    return min(_FIRST_BACKOFF * (1 << min(failures - 2, 16)), _MAX_BACKOFF)


class MediaService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        clock: Clock,
        store: MediaStore,
        controllers: dict[str, RecordingController],
        tasks: BackgroundTasks,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.store = store
        self.controllers = controllers
        self.tasks = tasks

    def source(self, provider: str) -> MediaSource | None:
        controller = self.controllers.get(provider)
        return controller if isinstance(controller, MediaSource) else None

    def spawn_fetch(self, recording_id: uuid.UUID) -> None:
        self.tasks.spawn(self.fetch(recording_id), name="media-fetch")

    async def fetch(self, recording_id: uuid.UUID) -> bool:
        """Copy one recording's media into the store; True when the copy is there.

        No transaction is open while the media streams. A failure is counted on the
        recording and retried later by :meth:`fetch_due`.
        """
        async with self.sessions() as session:
            recording = await RecordingRepository(session).by_id(recording_id)
            call = (
                None
                if recording is None
                else await CallRepository(session).by_id(recording.call_id)
            )
        if recording is None or call is None or recording.media_url is None:
            return False
        if recording.media_path is not None or recording.deleted_at is not None:
            return recording.media_path is not None
        if recording.media_fetch_attempts >= self.settings.media_fetch_attempts:
            return False  # given up on, or refused: a repeated completion report changes nothing
        source = self.source(call.provider)
        if source is None:
            return False
        try:
            stored = await self.store.write(
                recording.id,
                recording.media_format or "wav",
                source.fetch_media(recording.media_url),
            )
        except MediaUrlRefused as exc:
            # Logged once: the recording is marked as out of attempts, so nothing retries it.
            await self._count_failure(recording_id, permanent=True)
            log.warning(
                "media of recording %s (%s) will not be copied: %s",
                recording_id,
                call.provider,
                scrub_text(str(exc)),
            )
            return False
        except (ProviderError, MediaStoreError) as exc:
            attempts = await self._count_failure(recording_id)
            log.warning(
                "media copy of recording %s (%s) failed (attempt %d of %d): %s",
                recording_id,
                call.provider,
                attempts,
                self.settings.media_fetch_attempts,
                scrub_text(str(exc)),
            )
            return False
        async with self.sessions() as session, session.begin():
            row = await RecordingRepository(session).by_id(recording_id, lock=True)
            if row is None or row.deleted_at is not None:
                # Deleted while it was streaming: the copy must not outlive the tombstone.
                await self.store.delete(stored.path)
                return False
            # Until a copy is committed, media_sha256 can only be what the provider reported
            # (read now, under the lock, so a report that came in meanwhile counts too).
            reported = row.media_sha256 if row.media_path is None else None
            if reported is not None and reported != stored.sha256:
                self._note_failure(row)
                attempts = row.media_fetch_attempts
            else:
                row.media_path = stored.path
                row.media_size = stored.size
                row.media_sha256 = stored.sha256
                row.media_fetched_at = self.clock()
                row.media_fetch_attempts += 1
                row.media_fetch_next_at = None
                if row.superseded_media_path == stored.path:
                    row.superseded_media_path = None  # this copy replaced a discarded one
                return True
        # The PBX may still be writing the file: discard the copy, keep its report, retry later.
        log.warning(
            "media copy of recording %s (%s) does not match the sha256 the PBX reported; "
            "discarded (attempt %d of %d)",
            recording_id,
            call.provider,
            attempts,
            self.settings.media_fetch_attempts,
        )
        await self._discard(recording_id, stored)
        return False

    async def _count_failure(self, recording_id: uuid.UUID, *, permanent: bool = False) -> int:
        """Record a failed copy on the recording; return how many attempts it has had."""
        async with self.sessions() as session, session.begin():
            row = await RecordingRepository(session).by_id(recording_id, lock=True)
            if row is None:
                return 0
            self._note_failure(row, permanent=permanent)
            return row.media_fetch_attempts

    def _note_failure(self, row: Recording, *, permanent: bool = False) -> None:
        attempts = row.media_fetch_attempts + 1
        if permanent:
            attempts = max(attempts, self.settings.media_fetch_attempts)
        row.media_fetch_attempts = attempts
        row.media_fetch_next_at = self.clock() + retry_delay(attempts)

    async def _discard(self, recording_id: uuid.UUID, stored: StoredMedia) -> None:
        """Delete a copy that must not be kept; one that cannot be deleted now is put on
        record as superseded, and the redaction job deletes it later."""
        try:
            await self.store.delete(stored.path)
        except MediaStoreError as exc:
            log.error("discarded media copy not deleted yet: %s", scrub_text(str(exc)))
            async with self.sessions() as session, session.begin():
                row = await RecordingRepository(session).by_id(recording_id, lock=True)
                if row is not None and row.media_path != stored.path:
                    row.superseded_media_path = stored.path

    async def fetch_due(self) -> int:
        """Copy every recording whose media is still only on the provider and whose backoff
        has run out; returns how many were copied."""
        providers = [name for name in self.controllers if self.source(name) is not None]
        if not providers:
            return 0
        async with self.sessions() as session:
            due = await RecordingRepository(session).media_fetch_due(
                providers, self.settings.media_fetch_attempts, now=self.clock()
            )
        copied = 0
        for recording_id in due:
            copied += await self.fetch(recording_id)
        return copied

    async def delete_provider_copy(self, provider: str, provider_recording_id: str) -> None:
        """Delete the provider's copy of a recording (retention, DPO deletion)."""
        source = self.source(provider)
        if source is not None:
            await source.delete_media(provider_recording_id)
