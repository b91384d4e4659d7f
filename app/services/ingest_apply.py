"""One batch of webhook events, applied in one transaction (see :mod:`app.services.ingest`).

The inbox rows, the calls, their open payments and recordings are read and written a whole
batch at a time, so a busy contact centre costs a few statements per batch rather than per
event. Where a provider names parts of one conversation apart (an Asterisk agent's channel, a
bridge), the names are resolved in one statement per batch, and a call found to be part of
another is folded into it before any event is applied (``call_facts.plan_calls``).

:class:`BatchApply` is a plain function of a Core ``Connection``, the events and the time:
it runs in the service's own process or in the ingest worker
(:mod:`app.services.ingest_worker`), with the same result.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy.engine import Connection

from app.config import Settings
from app.domain import call_facts
from app.domain.events import EventType, PbxEvent
from app.domain.retention import Months
from app.domain.row_ids import new_id
from app.domain.scrub import scrub
from app.domain.snapshots import CallSnap, Changes, RecordingSnap, SegmentSnap
from app.domain.states import CallState, RecordingState
from app.storage.db import Database, DatabaseUnreachable, server_of
from app.storage.live import LiveCallRepository
from app.storage.models import EncodedJson

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
    # A recording started on a call with no payment open: the call's live rows as its batch
    # wrote them (the call, every recording), and the server it wrote them through
    # (``server_of``), for the payment gate to take as read (``IngestRules.hand_back_rows``;
    # :meth:`PaymentGate.learn`).
    rows: tuple[CallSnap, tuple[RecordingSnap, ...], object] | None = None


@dataclass(frozen=True, slots=True)
class IngestRules:
    """What applying an event depends on besides the database: plain values, so the ingest
    worker gets them over its pipe."""

    service_areas: tuple[str, ...]
    skew: timedelta
    months: Months
    # Providers whose call-level pause pauses every recording of the call (not just one).
    call_level_covers_all: frozenset[str] = frozenset()
    # PostgreSQL: hand back a call's rows when a recording starts on it (IngestResult.rows),
    # so its first payment start need not read them (a round trip on the IVR's path).
    hand_back_rows: bool = False

    @classmethod
    def of(cls, settings: Settings, call_level_covers_all: frozenset[str]) -> IngestRules:
        return cls(
            service_areas=tuple(settings.service_areas),
            skew=timedelta(milliseconds=settings.pbx_clock_skew_ms),
            months=Months(settings.retention_media_months, settings.retention_record_months),
            call_level_covers_all=call_level_covers_all,
            hand_back_rows=not settings.database_url.startswith("sqlite"),
        )


# Each event with its provider payload, scrubbed and encoded (:func:`stored_payload`).
Items = list[tuple[PbxEvent, EncodedJson]]
# An event's outcome: its result, or what applying it raised.
Outcome = IngestResult | Exception


def stored_payload(payload: dict[str, Any]) -> EncodedJson:
    """A provider's payload as the inbox stores it: scrubbed, then encoded as ``sa.JSON``
    encodes it. Done as each webhook arrives, in the service's process: measured on
    PostgreSQL, with both done in the ingest worker instead (which applies every batch, in
    one interpreter), the worker was what held ingest back."""
    return EncodedJson(json.dumps(scrub(payload)))


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


class BatchApply:
    """Store events in the inbox and apply the new ones to their calls, in arrival order."""

    def __init__(self, rules: IngestRules) -> None:
        self.rules = rules
        self.skew = rules.skew

    def __call__(
        self,
        conn: Connection,
        items: Items,
        now: datetime,
        locked: Callable[[], None] | None = None,
    ) -> list[IngestResult]:
        """One transaction's work (``conn`` is in it): a result for each of ``items``.
        ``locked`` is called once the batch holds every call it applies events to (see
        :class:`Turn`)."""
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
            return results  # the caller's turn ends with the transaction
        events = [items[index][0] for index in todo]
        plan = call_facts.plan_calls(events, self._known_names(repo, events))
        keys = dict(zip(todo, plan.keys, strict=True))
        # Calls folded into others are locked with the rest (keys in order), then folded
        # before any event is applied: every event lands on the call it ends up on.
        calls = repo.upsert_calls(sorted(set(plan.keys) | {m.source for m in plan.merges}), now)
        if locked is not None:
            locked()
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
        batch.segments, batch.recordings = repo.live_rows(wanted)
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
        if self.rules.hand_back_rows:
            merged = {m.source for m in plan.merges} | {m.target for m in plan.merges}
            applied = [(i, keys[i], items[i][0]) for i in todo]
            self._hand_back_rows(batch, calls, merged, applied, results, server_of(conn))
        return results

    @staticmethod
    def _hand_back_rows(
        batch: _Batch,
        calls: dict[tuple[str, str], CallSnap],
        merged: set[tuple[str, str]],
        applied: list[tuple[int, tuple[str, str], PbxEvent]],
        results: list[IngestResult],
        server: object,
    ) -> None:
        """Give the result of the last event that started a recording on a call the call's
        live rows as written, when they are all of them (read, or the call new in this
        batch), no payment is open on it and the call goes on. Each row as the batch left it
        is what the database holds at the call's version (nothing else writes them in the
        transaction), which the gate's write is guarded by."""
        last: dict[uuid.UUID, tuple[int, CallSnap]] = {}
        for index, key, event in applied:
            call = calls.get(key)
            if (
                event.type != EventType.RECORDING_STARTED
                or key in merged
                or call is None
                or call.state == CallState.ENDED
                or call.id in batch.segments
                or call.id not in batch.recordings
            ):
                continue
            last[call.id] = (index, call)
        for index, call in last.values():
            rows = (call, tuple(batch.recordings[call.id]), server)
            results[index] = replace(results[index], rows=rows)

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
            call, event, self.rules.service_areas, changes, whole_call=whole
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
            segments, recordings = batch.repo.live_rows([call.id])
            found = batch.recordings[call.id] = recordings[call.id]
            if call.id in segments:
                batch.segments.setdefault(call.id, segments[call.id])
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
            id=new_id(),
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
            call_level_covers_all=event.provider in self.rules.call_level_covers_all,
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
        for call, recordings in due:
            override = batch.repo.area_override(call)
            months = self.rules.months if override is None else override
            call_facts.fill_deadlines(call, recordings, months, batch.changes)


class Redo(Exception):
    """The batch before this one did not commit whole: undo this one and apply it again."""


@dataclass(eq=False)
class Turn:
    """A batch's place among batches applied at the same time on connections of their own,
    in the order they were handed over (the ingest worker, PostgreSQL).

    While one batch waits for the database, the next one's Python runs. The order stays the
    one they were handed over in:

    - a batch starts once the batch before it holds its calls' rows (``upsert_calls`` locks
      them in key order); an event for one of those calls then waits in the database for
      that batch's commit, and reads what it left;
    - a batch that names calls through aliases starts only once the batch before it is
      done: resolving a name reads aliases that batch may add, and no row lock covers them;
    - a batch commits only once the batch before it has committed. When that one's first
      transaction did not commit whole (an event it could not apply, the database), this
      one is undone (:class:`Redo`): it may have read calls that batch then applies events
      to one at a time. The failed batch waits for this one to let go of its rows, applies
      its events again, and this one is applied after it.
    """

    ordered: bool
    before: Turn | None = None
    after: Turn | None = None
    started: bool = False
    # Set once the batch holds its calls (and once it is done, whatever became of it).
    locked: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once its first transaction is over, committed or rolled back: it holds no rows.
    released: asyncio.Event = field(default_factory=asyncio.Event)
    # Whether its first transaction committed it whole.
    whole: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # Set once it is done, however.
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def following(cls, before: Turn | None, items: Items) -> Turn:
        aliased = any(event.call.via_alias or event.aliases for event, _ in items)
        turn = cls(ordered=aliased, before=before)
        if before is not None:
            before.after = turn
        return turn

    async def begin(self) -> None:
        before = self.before
        if before is not None:
            await (before.done if self.ordered else before.locked).wait()
            if before.whole.done() and not before.whole.result():
                await before.done.wait()  # it is applying its events again, one at a time
        self.started = True

    async def before_commit(self) -> None:
        before = self.before
        if before is not None and not await asyncio.shield(before.whole):
            raise Redo()

    def first_over(self, whole: bool) -> None:
        """Its first transaction committed (``whole``) or was rolled back."""
        self.released.set()
        if not self.whole.done():
            self.whole.set_result(whole)

    async def clear_to_redo(self) -> None:
        """Until the batches beside this one let go of their rows (they are undone in
        turn), and the one before it is done: its events then go one at a time."""
        after = self.after
        if after is not None and after.started:
            await after.released.wait()
        if self.before is not None:
            await self.before.done.wait()

    def end(self) -> None:
        self.first_over(False)
        self.locked.set()
        self.done.set()
        self.before = None  # the chain of turns does not grow


async def apply_in_order(
    db: Database,
    apply: BatchApply,
    items: Items,
    now: datetime,
    *,
    inline: bool = False,
    turn: Turn | None = None,
) -> list[Outcome]:
    """Apply ``items`` in one transaction, each event's outcome in order. An event that
    cannot be applied does not take its batch down with it: the batch is then applied one
    event at a time, before anything after it. When the database cannot be reached, every
    event's outcome is :class:`DatabaseUnreachable`.

    With ``turn``, the batch runs beside the batches before and after it (:class:`Turn`)."""
    if turn is None:
        return await _in_order(db, apply, items, now, inline=inline)
    try:
        await turn.begin()
        work = partial(apply, items=items, now=now, locked=turn.locked.set)
        try:
            outcomes: list[Outcome] = list(await db.write(work, before_commit=turn.before_commit))
        except DatabaseUnreachable as exc:
            turn.first_over(False)
            return [exc] * len(items)
        except Exception:  # Redo, or an event that cannot be applied: nothing was written
            turn.first_over(False)
            await turn.clear_to_redo()
            return await _in_order(db, apply, items, now)
        turn.first_over(True)
        return outcomes
    finally:
        turn.end()


async def _in_order(
    db: Database, apply: BatchApply, items: Items, now: datetime, *, inline: bool = False
) -> list[Outcome]:
    try:
        return list(await db.write(partial(apply, items=items, now=now), inline=inline))
    except DatabaseUnreachable as exc:
        return [exc] * len(items)
    except Exception as exc:
        if len(items) == 1:
            return [exc]
    outcomes: list[Outcome] = []
    for item in items:
        outcomes += await _in_order(db, apply, [item], now, inline=inline)
    return outcomes
