"""Webhook ingestion: the inbox, then each event applied to its call, with group commit.

Webhooks that arrive together are stored and applied together, in arrival order, in one
short transaction: the inbox rows, the calls, their open payments and recordings are read
and written a whole batch at a time, so a busy contact centre costs a few statements per
batch rather than per event. Each webhook is answered only once its batch has committed:
2xx still means "durably stored and applied". An event that cannot be applied does not take
its batch down with it: the batch is then applied one event at a time.

Where a provider names parts of one conversation apart (an Asterisk agent's channel, a
bridge), the names are resolved in one statement per batch, and a call found to be part of
another is folded into it before any event is applied (``call_facts.plan_calls``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy.engine import Connection

from app.config import Settings
from app.domain import call_facts
from app.domain.clock import Clock
from app.domain.events import EventType, PbxEvent
from app.domain.retention import Months
from app.domain.scrub import scrub, scrub_text
from app.domain.snapshots import CallSnap, Changes, RecordingSnap, SegmentSnap
from app.domain.states import IllegalTransition, RecordingState
from app.errors import IllegalStateTransition
from app.logging import clear_context
from app.services.concurrency import BackgroundTasks
from app.services.metrics import Metrics
from app.storage.db import Database, DatabaseUnreachable
from app.storage.live import LiveCallRepository, insert_dead_letter

log = logging.getLogger("recgate.ingest")

# Events applied in one transaction at most: enough to pay for the statements many times
# over, few enough that a payment's transaction never queues long behind a batch (SQLite).
MAX_BATCH = 32


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


@dataclass(slots=True)
class _Pending:
    event: PbxEvent
    payload: dict[str, Any]
    future: asyncio.Future[IngestResult]


@dataclass
class _Batch:
    """One transaction's worth of events, and the rows they share."""

    repo: LiveCallRepository
    changes: Changes
    segments: dict[uuid.UUID, SegmentSnap] = field(default_factory=dict)
    recordings: dict[uuid.UUID, list[RecordingSnap]] = field(default_factory=dict)
    created_noted: set[uuid.UUID] = field(default_factory=set)
    # By event: recordings that joined its call when another call was folded into it.
    joined: dict[int, set[uuid.UUID]] = field(default_factory=dict)


class IngestService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Clock,
        metrics: Metrics,
        tasks: BackgroundTasks,
        call_level_covers_all: frozenset[str] = frozenset(),
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.tasks = tasks
        # Providers whose call-level pause pauses every recording of the call (not just one).
        self.call_level_covers_all = call_level_covers_all
        self.skew = timedelta(milliseconds=settings.pbx_clock_skew_ms)
        self.months = Months(settings.retention_media_months, settings.retention_record_months)
        self._pending: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None

    async def ingest(self, event: PbxEvent, payload: dict[str, Any]) -> IngestResult:
        """Store ``event`` in the inbox and apply it; return once that is committed.

        ``payload`` is the provider's raw payload; it is scrubbed before it is stored.
        """
        pending = _Pending(event, scrub(payload), asyncio.get_running_loop().create_future())
        self._pending.append(pending)
        if self._committer is None or self._committer.done():
            self._committer = self.tasks.spawn(self._commit_pending(), name="ingest-commit")
        # Shielded: a webhook whose sender hung up is still applied with its batch.
        return await asyncio.shield(pending.future)

    async def _commit_pending(self) -> None:
        # A batch holds many webhooks: its lines carry their own ids, not the first request's.
        clear_context()
        batch: list[_Pending] = []
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                await self._commit(batch)
        except asyncio.CancelledError:
            # Shutting down: nothing more is applied, and nobody is left waiting.
            for pending in (*batch, *self._pending):
                if not pending.future.done():
                    pending.future.cancel()
            self._pending = []
            raise

    async def _commit(self, batch: list[_Pending]) -> None:
        items = [(p.event, p.payload) for p in batch]
        try:
            results = await self.db.write(partial(self._apply_batch, items=items))
        except Exception as exc:
            if len(batch) > 1 and not isinstance(exc, DatabaseUnreachable):
                # One event spoiled the batch: the others must not be refused with it.
                for pending in batch:
                    await self._commit([pending])
                return
            error: Exception = exc
            if isinstance(exc, IllegalTransition):
                error = IllegalStateTransition(
                    str(exc), entity=exc.entity, current=exc.current, target=exc.target
                )
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        for pending, result in zip(batch, results, strict=True):
            self._count(pending.event, result)
            if not pending.future.done():
                pending.future.set_result(result)

    def _count(self, event: PbxEvent, result: IngestResult) -> None:
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

    # ---- one transaction (runs on one connection, in the database's thread) -------------

    def _apply_batch(
        self, conn: Connection, *, items: list[tuple[PbxEvent, dict[str, Any]]]
    ) -> list[IngestResult]:
        now = self.clock()
        repo = LiveCallRepository(conn)
        fresh = repo.insert_inbox_many(
            [
                {
                    "provider": event.provider,
                    "event_id": event.event_id,
                    "type": event.type.value,
                    "provider_call_id": event.call.provider_call_id,
                    "occurred_at": event.occurred_at,
                    "received_at": now,
                    "payload": payload,
                }
                for event, payload in items
            ]
        )
        results: list[IngestResult] = [IngestResult(duplicate=True)] * len(items)
        todo: list[int] = []
        for index, (event, _) in enumerate(items):
            key = (event.provider, event.event_id)
            if key in fresh:
                fresh.discard(key)  # the same id twice in one batch: the second is a duplicate
                todo.append(index)
        if not todo:
            return results
        events = [items[index][0] for index in todo]
        plan = call_facts.plan_calls(events, self._known_names(repo, events))
        keys = dict(zip(todo, plan.keys, strict=True))
        # Calls folded into others are locked with the rest (keys in order), then folded
        # before any event is applied: every event lands on the call it ends up on.
        calls = repo.upsert_calls(sorted(set(plan.keys) | {m.source for m in plan.merges}), now)
        batch = _Batch(repo, Changes(now))
        for merge in plan.merges:
            source, target = calls.pop(merge.source), calls[merge.target]
            moved = repo.merge_call(source, target, now)
            log.info("%s call %s folded into call %s", source.provider, source.id, target.id)
            batch.joined.setdefault(todo[merge.index], set()).update(moved)
            if moved:
                batch.changes.deadlines_for.add(target.id)  # its retention rules now
            if source.has_call_exposure and not target.has_call_exposure:
                target.has_call_exposure = True
                batch.changes.touch_call(target)
        wanted = {
            calls[keys[i]].id
            for i in todo
            if not calls[keys[i]].created
            and (items[i][0].recording is not None or items[i][0].type == EventType.CALL_ENDED)
        } | {calls[keys[i]].id for i in batch.joined}
        batch.segments = repo.open_segments(wanted)
        batch.recordings = repo.recordings_of(wanted, batch.segments)
        for call in calls.values():
            if call.created:
                batch.recordings.setdefault(call.id, [])  # nothing to read for a new call
        for index in todo:
            event, call = items[index][0], calls[keys[index]]
            # An event that names a part of the call (an agent's leg) says nothing of the
            # call's start, answer or end.
            whole = not event.call.via_alias or call.provider_call_id == event.call.provider_call_id
            results[index] = self._apply(batch, call, event, whole, batch.joined.get(index))
        if batch.changes.deadlines_for:
            self._fill_deadlines(batch, calls)
        repo.write(batch.changes)
        return results

    @staticmethod
    def _known_names(
        repo: LiveCallRepository, events: list[PbxEvent]
    ) -> dict[tuple[str, str], call_facts.KnownName]:
        """What is stored of the names the events give calls by through aliases: one
        statement per provider that uses aliases, none for the others."""
        names: dict[str, set[str]] = {}
        for event in events:
            if event.call.via_alias or event.aliases:
                wanted = names.setdefault(event.provider, set())
                wanted.add(event.call.provider_call_id)
                wanted.update(event.aliases)
        return {
            (provider, name): call_facts.KnownName(*found)
            for provider in sorted(names)
            for name, found in repo.resolve_names(provider, names[provider]).items()
        }

    def _apply(
        self,
        batch: _Batch,
        call: CallSnap,
        event: PbxEvent,
        whole: bool = True,
        joined: set[uuid.UUID] | None = None,
    ) -> IngestResult:
        changes, repo = batch.changes, batch.repo
        exposures_before = len(changes.exposures)
        if call.created and call.id not in batch.created_noted:
            batch.created_noted.add(call.id)
            changes.call_created(call, f"{event.provider}:{event.type.value}")
        if event.aliases:
            repo.add_aliases(call, (event.call.provider_call_id, *event.aliases), changes.now)
        call_facts.merge_call_facts(
            call, event, self.settings.service_areas, changes, whole_call=whole
        )
        segment = batch.segments.get(call.id)
        if event.type == EventType.CALL_ENDED and whole:
            call_facts.end_call(call, self._recordings(batch, call), segment, event, changes)
        to_drive = media_ready = None
        if joined and self._guard_joined(batch, call, joined, segment, event):
            assert segment is not None
            to_drive = segment.id
        if event.recording is not None:
            recording = self._recording(batch, call, event)
            if self._guard(repo, call, recording, segment, event, changes):
                assert segment is not None
                to_drive = segment.id
            if (
                event.type == EventType.RECORDING_COMPLETED
                and recording.state == RecordingState.AVAILABLE
                and recording.media_url
                and recording.media_path is None
            ):
                media_ready = recording.id
        return IngestResult(
            duplicate=False,
            call_id=call.id,
            segment_to_drive=to_drive,
            media_ready=media_ready,
            exposures=tuple(
                (e.kind.value, e.recording_id) for e in changes.exposures[exposures_before:]
            ),
        )

    @staticmethod
    def _recordings(batch: _Batch, call: CallSnap) -> list[RecordingSnap]:
        found = batch.recordings.get(call.id)
        if found is None:
            found = batch.repo.recordings_of([call.id], batch.segments)[call.id]
            batch.recordings[call.id] = found
        return found

    def _recording(self, batch: _Batch, call: CallSnap, event: PbxEvent) -> RecordingSnap:
        """The event's recording: already read, or new."""
        assert event.recording is not None
        name = event.recording.provider_recording_id
        recordings = self._recordings(batch, call)
        for recording in recordings:
            if recording.provider_recording_id == name:
                return recording
        recording = RecordingSnap(
            id=uuid.uuid4(),
            call_id=call.id,
            provider_recording_id=name,
            state=RecordingState.PENDING,
            created=True,
        )
        recordings.append(recording)
        return recording

    def _guard(
        self,
        repo: LiveCallRepository,
        call: CallSnap,
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

    def _guard_joined(
        self,
        batch: _Batch,
        call: CallSnap,
        joined: set[uuid.UUID],
        segment: SegmentSnap | None,
        event: PbxEvent,
    ) -> bool:
        """Recordings that joined the call from a call folded into it are the call's like any
        other: during its payment they are paused at once. True when the segment must be
        driven now."""
        if segment is None or not segment.protected:
            return False
        cause = f"{event.provider}:{event.type.value}"
        drive = False
        for recording in self._recordings(batch, call):
            if recording.id not in joined or not recording.live:
                continue
            if call.has_call_exposure and not recording.quarantined:
                windows = batch.repo.call_exposure_windows(call.id)
                if call_facts.overlaps_call_exposure(recording, windows, self.skew):
                    recording.quarantined = True
                    batch.changes.touch_recording(recording)
            danger = call_facts.judge_joined(recording, segment)
            exposed = danger is not None and batch.repo.open_exposure(segment.id, recording.id)
            drive |= call_facts.guard_joined_recording(
                recording,
                segment,
                batch.changes,
                cause=cause,
                danger=danger,
                already_exposed=exposed,
            )
        return drive

    def _fill_deadlines(self, batch: _Batch, calls: dict[tuple[str, str], CallSnap]) -> None:
        by_id = {call.id: call for call in calls.values()}
        due = [
            (call, recordings)
            for call_id in sorted(batch.changes.deadlines_for)
            for call in (by_id[call_id],)
            for recordings in (self._recordings(batch, call),)
            # Nothing has ended yet (a call that just learned its area): no deadline to set.
            if call.ended_at is not None or any(r.ended_at is not None for r in recordings)
        ]
        if not due:
            return
        policies = batch.repo.policies()
        for call, recordings in due:
            months = policies.get(call.service_area or "", self.months)
            call_facts.fill_deadlines(call, recordings, months, batch.changes)

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
            # An id refused for its characters is kept escaped, so an operator sees what came.
            "event_id": event_id
            and scrub_text(event_id if event_id.isprintable() else ascii(event_id)[1:-1])[:255],
            "reason": scrub_text(reason)[:1000],
            # Text columns cannot hold NUL (PostgreSQL refuses it): kept as its JSON escape.
            "payload": stored.replace("\x00", "\\u0000"),
            "received_at": self.clock(),
        }
        await self.db.write(lambda conn: insert_dead_letter(conn, values))
        self.metrics.webhook_events.inc(provider=provider, type="unknown", outcome="malformed")
        log.warning("malformed %s webhook dead-lettered: %s", provider, scrub_text(reason))
