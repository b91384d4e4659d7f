"""Recording media: copy it from the provider into the media store, delete it from both.

Twilio PCI Mode deletes its recordings after one year; the 18-month policy is kept by the
local copy, taken as soon as the provider says the media is complete.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.clock import Clock
from app.domain.scrub import scrub_text
from app.services.concurrency import BackgroundTasks
from app.storage.media import MediaStore, MediaStoreError
from app.storage.repositories import CallRepository, RecordingRepository
from app.telephony.base import MediaSource, ProviderError, RecordingController

log = logging.getLogger("recgate.media")


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
        source = self.source(call.provider)
        if source is None:
            return False
        try:
            stored = await self.store.write(
                recording.id,
                recording.media_format or "wav",
                source.fetch_media(recording.media_url),
            )
        except (ProviderError, MediaStoreError) as exc:
            async with self.sessions() as session, session.begin():
                row = await RecordingRepository(session).by_id(recording_id, lock=True)
                if row is not None:
                    row.media_fetch_attempts += 1
            log.warning(
                "media copy of a %s recording failed: %s", call.provider, scrub_text(str(exc))
            )
            return False
        async with self.sessions() as session, session.begin():
            row = await RecordingRepository(session).by_id(recording_id, lock=True)
            if row is None or row.deleted_at is not None:
                # Deleted while it was streaming: the copy must not outlive the tombstone.
                await self.store.delete(stored.path)
                return False
            row.media_path = stored.path
            row.media_size = stored.size
            row.media_sha256 = stored.sha256
            row.media_fetched_at = self.clock()
            row.media_fetch_attempts += 1
        return True

    async def fetch_due(self) -> int:
        """Copy every recording whose media is still only on the provider; returns how many."""
        providers = [name for name in self.controllers if self.source(name) is not None]
        if not providers:
            return 0
        async with self.sessions() as session:
            due = await RecordingRepository(session).media_fetch_due(
                providers, self.settings.media_fetch_attempts
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
