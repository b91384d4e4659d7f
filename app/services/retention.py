"""Retention (SPEC §3.4): deadlines, policies, the sweep, early deletion.

The privacy notice promises that recordings are kept up to 18 months and then deleted and no
longer retrievable, and call records up to 6 years. Deadlines are stored on every recording
and call; the sweep deletes what is due and not held, from the media store and from the
provider's copy, and leaves a tombstone and an audit entry for each.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.clock import Clock
from app.domain.retention import Months, add_months
from app.domain.scrub import scrub_text
from app.domain.states import LIVE_RECORDING_STATES, RecordingState
from app.errors import AppError, Conflict, MalformedInput, NotFound
from app.services.audit import SYSTEM_SWEEP, Actor, AuditService
from app.services.metrics import Metrics
from app.services.transitions import set_recording_state
from app.storage.media import MediaStore, MediaStoreError
from app.storage.models import Call, Recording, RetentionPolicy, SweepRun
from app.storage.repositories import (
    RecordingRepository,
    RetentionRepository,
    TransitionRepository,
)
from app.telephony.base import MediaSource, ProviderError, RecordingController, RecordingGone
from app.telephony.generic import GenericController
from app.telephony.rtpengine import RtpengineController
from app.telephony.sim import SimPbx

log = logging.getLogger("recgate.retention")

SWEEP_BATCH = 500
# Tombstones and audit entries committed per transaction: short enough that the write lock
# (SQLite) and the audit chain's advisory lock (PostgreSQL) are not held long.
FINALIZE_BATCH = 100
# Media deletions (store and provider) in flight at once.
SWEEP_CONCURRENCY = 8
RECOMPUTE_BATCH = 1000
_LEASE = timedelta(minutes=10)
# What the council's privacy notice promises; a policy beyond it is allowed but called out.
NOTICE_MEDIA_MONTHS = 18
NOTICE_RECORD_MONTHS = 72


class HeldRecording(Conflict):
    slug, title = "recording-held", "The recording is under a legal hold"


@dataclass(frozen=True, slots=True)
class CopyOutcome:
    """What a deletion did to one copy of a recording's media."""

    outcome: str  # deleted | gone | not_deletable | failed
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class MediaDeletion:
    local: CopyOutcome  # recgate's media store
    provider: CopyOutcome  # the PBX's own copy

    @property
    def error(self) -> str | None:
        """What failed, or None when no copy recgate can delete is left."""
        failed = [
            f"{name}: {copy.reason}"
            for name, copy in (("local", self.local), ("provider", self.provider))
            if copy.outcome == "failed"
        ]
        return "; ".join(failed)[:500] if failed else None


def provider_copy_deleter(
    provider: str, controller: RecordingController | None
) -> MediaSource | CopyOutcome:
    """The provider's delete call, or the outcome recgate records without calling anything:
    why the provider's copy outlives the deletion (or that there is none)."""
    if isinstance(controller, SimPbx):
        return CopyOutcome("gone", "the simulated PBX keeps no copy")
    if isinstance(controller, GenericController):
        # Also GenericMediaController: recgate copies its media but cannot delete the original.
        return CopyOutcome(
            "not_deletable",
            "the generic PBX contract has no delete call; the PBX keeps its copy until its own "
            "expiry",
        )
    if isinstance(controller, MediaSource):
        return controller
    if isinstance(controller, RtpengineController):
        return CopyOutcome(
            "not_deletable",
            "rtpengine without RECGATE_RTPENGINE_RECORDING_DIR: recgate cannot reach the "
            "recording daemon's files",
        )
    if controller is None:
        return CopyOutcome(
            "not_deletable", f"no recording control configured for {provider}; its copy stays"
        )
    return CopyOutcome("not_deletable", f"{provider} offers recgate no way to delete its copy")


@dataclass
class SweepResult:
    dry_run: bool
    deleted: int = 0
    skipped_held: int = 0
    errors: int = 0
    records_erased: int = 0
    error_details: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PolicyChange:
    service_area: str
    media_months: int
    record_months: int
    recordings_recomputed: int
    recordings_shortened: int
    calls_recomputed: int
    calls_shortened: int
    warnings: list[str]


async def policy_months(
    session: AsyncSession, settings: Settings, service_area: str | None
) -> Months:
    """The retention that applies to a call in ``service_area`` (settings unless overridden)."""
    policy = (
        None if service_area is None else await RetentionRepository(session).policy(service_area)
    )
    if policy is None:
        return Months(settings.retention_media_months, settings.retention_record_months)
    return Months(policy.media_months, policy.record_months)


class RetentionService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        clock: Clock,
        store: MediaStore,
        controllers: dict[str, RecordingController],
        audit: AuditService,
        metrics: Metrics,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.store = store
        self.controllers = controllers
        self.audit = audit
        self.metrics = metrics

    # ---- policy -----------------------------------------------------------------------

    async def policies(self) -> list[tuple[str, Months, bool]]:
        """Every service area with its retention and whether it is overridden."""
        async with self.sessions() as session:
            overrides = {p.service_area: p for p in await RetentionRepository(session).policies()}
        default = Months(
            self.settings.retention_media_months, self.settings.retention_record_months
        )
        areas = list(dict.fromkeys([*self.settings.service_areas, *overrides]))
        return [
            (
                area,
                Months(overrides[area].media_months, overrides[area].record_months)
                if area in overrides
                else default,
                area in overrides,
            )
            for area in areas
        ]

    async def set_policy(
        self, service_area: str, media_months: int, record_months: int, actor: Actor
    ) -> PolicyChange:
        """Set a service area's retention and recompute every stored deadline it governs.

        A deadline moved earlier than what callers were told is applied, and the answer says
        how many moved, so the DPO sees what the change did.
        """
        if service_area not in self.settings.service_areas:
            raise NotFound(f"Unknown service area {service_area!r}.")
        if media_months < 1 or record_months < 1 or record_months < media_months:
            raise MalformedInput("Need media_months >= 1 and record_months >= media_months.")
        warnings = []
        if media_months > NOTICE_MEDIA_MONTHS:
            warnings.append(
                f"media kept {media_months} months: longer than the {NOTICE_MEDIA_MONTHS} months "
                "the privacy notice promises"
            )
        if record_months > NOTICE_RECORD_MONTHS:
            warnings.append(
                f"call records kept {record_months} months: longer than the "
                f"{NOTICE_RECORD_MONTHS} months the privacy notice promises"
            )
        now = self.clock()
        async with self.sessions() as session, session.begin():
            repo = RetentionRepository(session)
            policy = await repo.policy(service_area)
            before = await policy_months(session, self.settings, service_area)
            if policy is None:
                repo.add_policy(
                    RetentionPolicy(
                        service_area=service_area,
                        media_months=media_months,
                        record_months=record_months,
                        updated_by=actor.name,
                        updated_at=now,
                    )
                )
            else:
                policy.media_months, policy.record_months = media_months, record_months
                policy.updated_by, policy.updated_at = actor.name, now
            await self.audit.record(
                session,
                actor,
                "retention.policy_set",
                "service_area",
                service_area,
                detail={
                    "media_months": [before.media, media_months],
                    "record_months": [before.record, record_months],
                },
            )
        rec_total, rec_short = await self._recompute_recordings(service_area, media_months)
        call_total, call_short = await self._recompute_calls(service_area, record_months)
        if rec_short or call_short:
            warnings.append(
                f"{rec_short} recording and {call_short} call-record deadlines moved earlier"
            )
        return PolicyChange(
            service_area,
            media_months,
            record_months,
            rec_total,
            rec_short,
            call_total,
            call_short,
            warnings,
        )

    async def _recompute_recordings(self, service_area: str, months: int) -> tuple[int, int]:
        total = shortened = 0
        after: uuid.UUID | None = None
        default_area = service_area == "other"
        while True:
            async with self.sessions() as session, session.begin():
                rows = await RetentionRepository(session).recordings_of_area(
                    service_area, default_area, after, RECOMPUTE_BATCH
                )
                for recording, _ in rows:
                    assert recording.ended_at is not None
                    deadline = add_months(recording.ended_at, months)
                    if (
                        recording.retention_until is not None
                        and deadline < recording.retention_until
                    ):
                        shortened += 1
                    recording.retention_until = deadline
                total += len(rows)
            if len(rows) < RECOMPUTE_BATCH:
                return total, shortened
            after = rows[-1][0].id

    async def _recompute_calls(self, service_area: str, months: int) -> tuple[int, int]:
        total = shortened = 0
        after: uuid.UUID | None = None
        default_area = service_area == "other"
        while True:
            async with self.sessions() as session, session.begin():
                calls = await RetentionRepository(session).calls_of_area(
                    service_area, default_area, after, RECOMPUTE_BATCH
                )
                for call in calls:
                    assert call.ended_at is not None
                    deadline = add_months(call.ended_at, months)
                    if (
                        call.record_retention_until is not None
                        and deadline < call.record_retention_until
                    ):
                        shortened += 1
                    call.record_retention_until = deadline
                total += len(calls)
            if len(calls) < RECOMPUTE_BATCH:
                return total, shortened
            after = calls[-1].id

    # ---- what is due ------------------------------------------------------------------

    async def due(
        self, within_days: int, limit: int = 100, after: tuple[datetime, uuid.UUID] | None = None
    ) -> list[tuple[Recording, Call, bool]]:
        until = self.clock() + timedelta(days=within_days)
        async with self.sessions() as session:
            return list(await RetentionRepository(session).due_list(until, limit, after))

    # ---- the sweep --------------------------------------------------------------------

    async def sweep(self, *, dry_run: bool = False) -> SweepResult:
        """Delete every due, unheld recording's media; erase call records past their deadline.

        Safe to run from several replicas at once. A storage or provider error leaves that
        recording undeleted (its error is kept on it) and is reported; the next sweep retries
        it once its lease has run out.
        """
        now = self.clock()
        result = SweepResult(dry_run=dry_run)
        async with self.sessions() as session, session.begin():
            unheld, held = await RetentionRepository(session).count_due(now)
            result.skipped_held = held
            run = SweepRun(
                started_at=now,
                dry_run=dry_run,
                deleted=0,
                skipped_held=held,
                errors=0,
                records_erased=0,
            )
            RetentionRepository(session).add_sweep_run(run)
        if dry_run:
            result.deleted = unheld
            await self._finish_run(run.id, result)
            return result
        while True:
            async with self.sessions() as session, session.begin():
                now = self.clock()
                claimed = await RetentionRepository(session).claim_due(
                    now, now + _LEASE, SWEEP_BATCH
                )
            if not claimed:
                break
            errors, kept = await self._delete_batch(claimed, "retention", SYSTEM_SWEEP)
            # Held since the claim: the last hold check before deletion kept them.
            result.skipped_held += len(kept)
            for recording_id, error in zip(claimed, errors, strict=True):
                if recording_id in kept:
                    continue
                if error is None:
                    result.deleted += 1
                else:
                    result.errors += 1
                    if len(result.error_details) < 20:
                        result.error_details.append(error)
        while True:
            async with self.sessions() as session, session.begin():
                erased = await RetentionRepository(session).erase_due_call_records(
                    self.clock(), SWEEP_BATCH
                )
            result.records_erased += erased
            if erased < SWEEP_BATCH:
                break
        self.metrics.retention_deleted.inc(result.deleted)
        await self._finish_run(run.id, result)
        if result.errors:
            log.error("retention sweep: %s recordings could not be deleted", result.errors)
        return result

    async def _finish_run(self, run_id: int, result: SweepResult) -> None:
        async with self.sessions() as session, session.begin():
            run = await session.get(SweepRun, run_id)
            assert run is not None
            run.finished_at = self.clock()
            run.deleted, run.errors, run.records_erased = (
                result.deleted,
                result.errors,
                result.records_erased,
            )
            run.skipped_held = result.skipped_held

    async def last_sweep_at(self) -> datetime | None:
        async with self.sessions() as session:
            return await RetentionRepository(session).last_sweep_at()

    # ---- deleting one recording -------------------------------------------------------

    async def delete_recording(
        self, recording_id: uuid.UUID, reason: str, actor: Actor
    ) -> Recording:
        """Early deletion by a DPO. Refused while held; deleting twice succeeds."""
        async with self.sessions() as session:
            recording = await RecordingRepository(session).by_id(recording_id)
            if recording is None:
                raise NotFound("No such recording.")
            if recording.deleted_at is not None:
                return recording
            if recording.state in LIVE_RECORDING_STATES:
                raise Conflict("The recording is still live; delete it once it has stopped.")
            if await RetentionRepository(session).is_held(recording_id):
                raise HeldRecording("Release every legal hold on the recording first.")
        error = await self._delete_one(recording_id, reason, actor)
        if error is not None:
            raise MediaDeletionFailed(error)
        async with self.sessions() as session:
            deleted = await RecordingRepository(session).by_id(recording_id)
            assert deleted is not None
            return deleted

    async def _delete_one(self, recording_id: uuid.UUID, reason: str, actor: Actor) -> str | None:
        """Delete one recording's media everywhere, then tombstone it. None on success, else
        a description of what failed (and the recording stays undeleted)."""
        errors, held = await self._delete_batch([recording_id], reason, actor)
        if held:
            raise HeldRecording("Release every legal hold on the recording first.")
        return errors[0]

    async def _start_deletions(
        self, recording_ids: list[uuid.UUID]
    ) -> tuple[list[uuid.UUID], set[uuid.UUID]]:
        """The last hold check before media goes: (recordings to delete now, recordings held).

        The rows are locked first and the holds read by a later statement, so on PostgreSQL
        that read sees every hold committed while the lock was awaited; a hold transaction
        locks the same rows (one recording, or every recording of a caller) and so either
        commits before this check or waits for it and sees ``deletion_started_at``. On SQLite
        every writing transaction is ``BEGIN IMMEDIATE``, so the two are serialised anyway.
        """
        async with self.sessions() as session, session.begin():
            repo = RetentionRepository(session)
            rows = await repo.lock_for_deletion(recording_ids)
            held = await repo.held_among(recording_ids)
            now = self.clock()
            started = []
            for row in rows:
                if row.deleted_at is not None:
                    continue
                if row.id in held:
                    row.sweep_lease_until, row.deletion_started_at = None, None
                    continue
                row.deletion_started_at, row.sweep_lease_until = now, now + _LEASE
                started.append(row.id)
        return started, held

    async def _delete_batch(
        self, recording_ids: list[uuid.UUID], reason: str, actor: Actor
    ) -> tuple[list[str | None], set[uuid.UUID]]:
        """Delete the media of a batch and tombstone it: the last hold check, one read, the
        media deletions ``SWEEP_CONCURRENCY`` at a time, then one transaction per
        ``FINALIZE_BATCH`` for the tombstones, copy outcomes, transitions and audit entries
        (and the errors of those that failed). Returns each recording's error (None when
        deleted) in order, and the recordings a hold kept."""
        started, held = await self._start_deletions(recording_ids)
        async with self.sessions() as session:
            # The batch counterpart of RecordingRepository.by_id + CallRepository.by_id.
            loaded = {
                recording.id: (recording, provider)
                for recording, provider in (
                    await session.execute(
                        sa.select(Recording, Call.provider)
                        .join(Call, Call.id == Recording.call_id)
                        .where(Recording.id.in_(started))
                    )
                ).all()
            }
        slots = asyncio.Semaphore(SWEEP_CONCURRENCY)

        async def delete_media(recording: Recording, provider: str) -> MediaDeletion:
            async with slots:
                return await self._delete_media(recording, provider)

        pending: dict[uuid.UUID, asyncio.Task[MediaDeletion]] = {}
        try:
            async with asyncio.TaskGroup() as group:
                for recording_id in started:
                    found = loaded.get(recording_id)
                    if found is not None:
                        pending[recording_id] = group.create_task(delete_media(*found))
        except ExceptionGroup as failed:
            # Whatever a single deletion would have let through, as itself.
            raise failed.exceptions[0] from None
        results = {recording_id: task.result() for recording_id, task in pending.items()}
        finalize = list(results)
        for start in range(0, len(finalize), FINALIZE_BATCH):
            chunk = finalize[start : start + FINALIZE_BATCH]
            async with self.sessions() as session, session.begin():
                # The batch counterpart of RecordingRepository.by_id(lock=True).
                rows = {
                    row.id: row
                    for row in await RetentionRepository(session).lock_for_deletion(chunk)
                }
                now = self.clock()
                deleted: list[Recording] = []
                leftovers: list[tuple[uuid.UUID, str]] = []
                for recording_id in chunk:
                    row = rows.get(recording_id)
                    if row is None:
                        continue
                    deletion = results[recording_id]
                    row.deletion_started_at = None
                    row.local_copy, row.local_copy_reason = (
                        deletion.local.outcome,
                        deletion.local.reason,
                    )
                    row.provider_copy, row.provider_copy_reason = (
                        deletion.provider.outcome,
                        deletion.provider.reason,
                    )
                    if deletion.error is not None:
                        row.deletion_error = deletion.error
                    elif row.deleted_at is None:
                        leftovers += self._tombstone(
                            session, row, reason, now, loaded[recording_id][0].media_path
                        )
                        deleted.append(row)
                # Every tombstone first, so the first entry's flush writes them all at once.
                for row in deleted:
                    await self._audit_deletion(session, row, reason, actor)
            await self._delete_leftovers(leftovers)
        errors = [
            None if recording_id not in results else results[recording_id].error
            for recording_id in recording_ids
        ]
        return errors, held

    async def _delete_media(self, recording: Recording, provider: str) -> MediaDeletion:
        """Delete the recording's media from the store and the provider's copy, each on its
        own: a failure of one does not keep the other (due and unheld) from going."""
        local = await self._delete_local(recording)
        remote = await self._delete_provider_copy(recording, provider)
        deletion = MediaDeletion(local, remote)
        if deletion.error is not None:
            log.error("recording %s not deleted: %s", recording.id, deletion.error)
        return deletion

    async def _delete_local(self, recording: Recording) -> CopyOutcome:
        if not recording.media_path:
            return CopyOutcome("gone", "recgate held no copy")
        try:
            present = await self.store.exists(recording.media_path)
            # Deleted either way: whatever is at that name must not survive the tombstone.
            await self.store.delete(recording.media_path)
        except MediaStoreError as exc:
            return CopyOutcome("failed", _failure(exc))
        if not present:
            return CopyOutcome("gone", "already missing from the media store")
        return CopyOutcome("deleted")

    async def _delete_provider_copy(self, recording: Recording, provider: str) -> CopyOutcome:
        if recording.state == RecordingState.PENDING.value:
            return CopyOutcome("gone", "the provider never started this recording")
        deleter = provider_copy_deleter(provider, self.controllers.get(provider))
        if isinstance(deleter, CopyOutcome):
            return deleter
        try:
            await deleter.delete_media(recording.provider_recording_id)
        except RecordingGone:
            return CopyOutcome("gone", "the provider no longer has it")
        except ProviderError as exc:
            return CopyOutcome("failed", _failure(exc))
        return CopyOutcome("deleted")

    def _tombstone(
        self,
        session: AsyncSession,
        row: Recording,
        reason: str,
        now: datetime,
        deleted_path: str | None,
    ) -> list[tuple[uuid.UUID, str]]:
        """Mark ``row`` deleted; return media it still names beyond ``deleted_path`` (a copy a
        media fetch committed meanwhile, an unredacted original) for the caller to delete."""
        leftovers = [
            (row.id, path)
            for path in (row.media_path, row.superseded_media_path)
            if path and path != deleted_path
        ]
        set_recording_state(
            TransitionRepository(session),
            row,
            RecordingState.DELETED,
            f"deleted: {reason}",
            now,
        )
        row.deleted_at, row.deleted_reason = now, reason
        row.media_path, row.media_url, row.media_size = None, None, None
        row.sweep_lease_until, row.deletion_error = None, None
        row.superseded_media_path = None
        return leftovers

    async def _delete_leftovers(self, leftovers: list[tuple[uuid.UUID, str]]) -> None:
        """Delete media a tombstoned recording still named; what cannot be deleted now stays
        on record as superseded and is retried (by the redaction job) until it is gone."""
        for recording_id, path in leftovers:
            try:
                await self.store.delete(path)
            except MediaStoreError as exc:
                log.error("media of deleted recording %s not deleted yet: %s", recording_id, exc)
                async with self.sessions() as session, session.begin():
                    row = await RecordingRepository(session).by_id(recording_id, lock=True)
                    if row is not None:
                        row.superseded_media_path = path

    async def _audit_deletion(
        self, session: AsyncSession, row: Recording, reason: str, actor: Actor
    ) -> None:
        await self.audit.record(
            session,
            actor,
            "recording.deleted",
            "recording",
            str(row.id),
            detail={
                "reason": reason,
                "retention_until": row.retention_until.isoformat() if row.retention_until else None,
            },
        )


def _failure(exc: Exception) -> str:
    return scrub_text(f"{type(exc).__name__}: {exc}")[:480]


class MediaDeletionFailed(AppError):
    status, slug, title = 503, "deletion-failed", "The media could not be deleted"
