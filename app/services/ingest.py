"""Webhook ingestion: the inbox, then the event applied to its call, in one short transaction.

The transaction reads only what the event needs (the call; for a recording event its
recording and the call's open payment; for a call's end all its recordings), lets
:mod:`app.domain.call_facts` decide, and writes back what changed: a handful of Core
statements. Retention policy is read only when a deadline is being worked out.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from app.config import Settings
from app.domain import call_facts
from app.domain.clock import Clock
from app.domain.events import EventType, PbxEvent
from app.domain.retention import Months
from app.domain.scrub import scrub, scrub_text
from app.domain.snapshots import Changes, RecordingSnap, SegmentSnap
from app.domain.states import IllegalTransition, RecordingState
from app.errors import IllegalStateTransition
from app.services.metrics import Metrics
from app.storage.db import Database
from app.storage.live import LiveCallRepository, insert_dead_letter

log = logging.getLogger("recgate.ingest")


@dataclass(frozen=True, slots=True)
class IngestResult:
    duplicate: bool
    # recgate's own id of the call the event was applied to (never a provider alias).
    call_id: uuid.UUID | None = None
    # A recording is live and unpaused while this payment segment is open: drive it now.
    segment_to_drive: uuid.UUID | None = None
    # A recording whose media the provider now holds complete: copy it into the media store.
    media_ready: uuid.UUID | None = None
    # Exposures the event revealed: (kind, recording id).
    exposures: tuple[tuple[str, uuid.UUID | None], ...] = ()


class IngestService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Clock,
        metrics: Metrics,
        call_level_covers_all: frozenset[str] = frozenset(),
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        # Providers whose call-level pause pauses every recording of the call (not just one).
        self.call_level_covers_all = call_level_covers_all
        self.skew = timedelta(milliseconds=settings.pbx_clock_skew_ms)
        self.months = Months(settings.retention_media_months, settings.retention_record_months)

    async def ingest(self, event: PbxEvent, payload: dict[str, Any]) -> IngestResult:
        """Store ``event`` in the inbox and apply it, in one transaction.

        ``payload`` is the provider's raw payload; it is scrubbed before it is stored.
        """
        stored = scrub(payload)
        now = self.clock()
        try:
            result = await self.db.write(lambda conn: self._apply(conn, event, stored, now))
        except IllegalTransition as exc:
            raise IllegalStateTransition(
                str(exc), entity=exc.entity, current=exc.current, target=exc.target
            ) from exc
        self.metrics.webhook_events.inc(
            provider=event.provider,
            type=event.type.value,
            outcome="duplicate" if result.duplicate else "applied",
        )
        for kind, recording_id in result.exposures:
            self.metrics.exposures.inc(kind=kind)
            log.warning(
                "exposure %s on recording %s (call %s): recording quarantined",
                kind,
                recording_id,
                result.call_id,
            )
        return result

    def _apply(
        self, conn: Connection, event: PbxEvent, payload: dict[str, Any], now: datetime
    ) -> IngestResult:
        repo = LiveCallRepository(conn)
        if not repo.insert_inbox(
            {
                "provider": event.provider,
                "event_id": event.event_id,
                "type": event.type.value,
                "provider_call_id": event.call.provider_call_id,
                "occurred_at": event.occurred_at,
                "received_at": now,
                "payload": payload,
            }
        ):
            return IngestResult(duplicate=True)
        key = event.call.provider_call_id
        if event.call.via_alias:
            key = repo.resolve_alias(event.provider, key) or key
        call = repo.upsert_call(event.provider, key, now)
        changes = Changes(now)
        cause = f"{event.provider}:{event.type.value}"
        if call.created:
            changes.call_created(call, cause)
        if event.aliases:
            repo.add_aliases(call, event.aliases, now)
        area_changed = call_facts.merge_call_facts(
            call, event, self.settings.service_areas, changes
        )
        ends_call = event.type == EventType.CALL_ENDED
        segment = repo.open_segment(call.id) if ends_call or event.recording is not None else None
        segment_id = segment.id if segment is not None else None
        recordings: list[RecordingSnap] = []
        if ends_call or area_changed:
            recordings = repo.recordings(call.id, segment_id)
        if ends_call:
            call_facts.end_call(call, recordings, segment, event, changes)
        to_drive = media_ready = None
        if event.recording is not None:
            recording = self._recording(repo, recordings, call.id, event, segment_id, now)
            if self._guard(repo, call, recording, segment, event, changes):
                to_drive = segment_id
            if (
                event.type == EventType.RECORDING_COMPLETED
                and recording.state == RecordingState.AVAILABLE
                and recording.media_url
                and recording.media_path is None
            ):
                media_ready = recording.id
        if changes.ends_changed or area_changed:
            months = repo.policy_months(call.service_area, self.months)
            call_facts.fill_deadlines(call, recordings, months, changes)
        repo.write(changes, call=call)
        return IngestResult(
            duplicate=False,
            call_id=call.id,
            segment_to_drive=to_drive,
            media_ready=media_ready,
            exposures=tuple((e.kind.value, e.recording_id) for e in changes.exposures),
        )

    @staticmethod
    def _recording(
        repo: LiveCallRepository,
        recordings: list[RecordingSnap],
        call_id: uuid.UUID,
        event: PbxEvent,
        segment_id: uuid.UUID | None,
        now: datetime,
    ) -> RecordingSnap:
        """The event's recording: already read, read now, or new."""
        assert event.recording is not None
        name = event.recording.provider_recording_id
        for recording in recordings:
            if recording.provider_recording_id == name:
                return recording
        found = repo.recording(call_id, name, segment_id)
        if found is None:
            found = RecordingSnap(
                id=uuid.uuid4(),
                call_id=call_id,
                provider_recording_id=name,
                state=RecordingState.PENDING,
                created=True,
            )
        recordings.append(found)
        return found

    def _guard(
        self,
        repo: LiveCallRepository,
        call: Any,
        recording: RecordingSnap,
        segment: SegmentSnap | None,
        event: PbxEvent,
        changes: Changes,
    ) -> bool:
        """Merge the recording's facts; True when the open payment must pause it now."""
        latest = call_facts.merge_recording(call, recording, event, changes)
        if call.has_call_exposure and not recording.quarantined:
            windows = repo.call_exposure_windows(call.id)
            if call_facts.overlaps_call_exposure(recording, windows, self.skew):
                recording.quarantined = True
                changes.touch_recording(recording)
        if not recording.live:
            return False
        if segment is None or not segment.protected:
            call_facts.follow_pbx(recording, event, changes, latest_report=latest)
            return False
        danger = call_facts.judge_report(
            recording,
            segment,
            event,
            call_level_covers_all=event.provider in self.call_level_covers_all,
            skew=self.skew,
        )
        exposed = danger is not None and repo.open_exposure(segment.id, recording.id)
        return call_facts.guard_recording(
            recording, segment, event, changes, danger=danger, already_exposed=exposed
        )

    async def dead_letter(
        self, provider: str, event_id: str | None, reason: str, body: bytes
    ) -> None:
        """Keep a signed but malformed payload, scrubbed, for operators."""
        text = body.decode("utf-8", errors="replace")
        try:
            stored = json.dumps(scrub(json.loads(text)))
        except (json.JSONDecodeError, RecursionError):
            stored = scrub_text(text)
        values = {
            "provider": provider,
            "event_id": event_id and scrub_text(event_id)[:255],
            "reason": scrub_text(reason)[:1000],
            "payload": stored,
            "received_at": self.clock(),
        }
        await self.db.write(lambda conn: insert_dead_letter(conn, values))
        self.metrics.webhook_events.inc(provider=provider, type="unknown", outcome="malformed")
        log.warning("malformed %s webhook dead-lettered: %s", provider, scrub_text(reason))
