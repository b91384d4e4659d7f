"""Repositories: every query recgate makes lives here. They never commit; the caller does."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.states import CallState
from app.storage.models import (
    PAUSE_FAILED,
    ApiToken,
    Call,
    DeadLetter,
    Exposure,
    InboundEvent,
    LegalHold,
    PaymentSegment,
    Recording,
    RetentionPolicy,
    SegmentRecording,
    StateTransition,
    SweepRun,
    is_open,
)


def _insert_ignore(session: AsyncSession, model: type[Any], values: dict[str, Any]) -> Any:
    """INSERT … ON CONFLICT DO NOTHING for the session's dialect."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(model).values(**values).on_conflict_do_nothing()


class CallRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, provider: str, provider_call_id: str, *, lock: bool = False) -> Call | None:
        stmt = sa.select(Call).where(
            Call.provider == provider, Call.provider_call_id == provider_call_id
        )
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def by_id(self, call_id: uuid.UUID) -> Call | None:
        return await self.session.get(Call, call_id)

    async def count_active(self) -> int:
        stmt = (
            sa.select(sa.func.count())
            .select_from(Call)
            .where(Call.state == CallState.IN_PROGRESS.value)
        )
        return int((await self.session.execute(stmt)).scalar_one())


class RecordingRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def for_call(self, call_id: uuid.UUID) -> Sequence[Recording]:
        stmt = (
            sa.select(Recording)
            .where(Recording.call_id == call_id)
            .order_by(Recording.created_at, Recording.id)
        )
        return (await self.session.execute(stmt)).scalars().all()

    async def by_id(self, recording_id: uuid.UUID, *, lock: bool = False) -> Recording | None:
        stmt = sa.select(Recording).where(Recording.id == recording_id)
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def media_fetch_due(
        self,
        providers: Sequence[str],
        max_attempts: int,
        limit: int = 50,
        *,
        now: datetime | None = None,
    ) -> Sequence[uuid.UUID]:
        """Recordings whose media the provider holds but recgate has not copied yet (and,
        given ``now``, whose backoff after a failed copy has run out)."""
        backoff_over = (
            sa.true()
            if now is None
            else sa.or_(
                Recording.media_fetch_next_at.is_(None), Recording.media_fetch_next_at <= now
            )
        )
        stmt = (
            sa.select(Recording.id)
            .join(Call, Call.id == Recording.call_id)
            .where(
                Call.provider.in_(providers),
                Recording.state == "available",
                Recording.media_url.is_not(None),
                Recording.media_path.is_(None),
                Recording.media_fetch_attempts < max_attempts,
                backoff_over,
            )
            .order_by(Recording.completed_at)
            .limit(limit)
        )
        return (await self.session.execute(stmt)).scalars().all()


class SegmentRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def for_call(self, call_id: uuid.UUID) -> Sequence[PaymentSegment]:
        stmt = (
            sa.select(PaymentSegment)
            .where(PaymentSegment.call_id == call_id)
            .order_by(PaymentSegment.opened_at, PaymentSegment.id)
        )
        return (await self.session.execute(stmt)).scalars().all()

    async def by_id(self, segment_id: uuid.UUID) -> PaymentSegment | None:
        return await self.session.get(PaymentSegment, segment_id)

    async def count_open_since_before(self, opened_before: datetime) -> int:
        """Open segments opened before ``opened_before`` (a pause held too long)."""
        stmt = (
            sa.select(sa.func.count())
            .select_from(PaymentSegment)
            .where(
                is_open(PaymentSegment.state),
                PaymentSegment.opened_at < opened_before,
            )
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def count_open(self) -> int:
        stmt = (
            sa.select(sa.func.count())
            .select_from(PaymentSegment)
            .where(is_open(PaymentSegment.state))
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def count_resume_stuck(self, requested_before: datetime) -> int:
        """Segments whose payment end was asked before ``requested_before`` that are still not
        closed (the recording has not been confirmed resumed)."""
        stmt = (
            sa.select(sa.func.count())
            .select_from(PaymentSegment)
            .where(
                is_open(PaymentSegment.state),
                PaymentSegment.resume_requested_at < requested_before,
            )
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def count_pause_failures_since(self, since: datetime) -> int:
        stmt = (
            sa.select(sa.func.count())
            .select_from(StateTransition)
            .where(PAUSE_FAILED, StateTransition.at >= since)
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def links_for_call(self, call_id: uuid.UUID) -> Sequence[SegmentRecording]:
        stmt = (
            sa.select(SegmentRecording)
            .join(PaymentSegment, PaymentSegment.id == SegmentRecording.segment_id)
            .where(PaymentSegment.call_id == call_id)
        )
        return (await self.session.execute(stmt)).scalars().all()


class TransitionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(
        self,
        *,
        entity: str,
        entity_id: uuid.UUID,
        call_id: uuid.UUID,
        from_state: str | None,
        to_state: str,
        cause: str,
        at: datetime,
    ) -> None:
        self.session.add(
            StateTransition(
                entity=entity,
                entity_id=entity_id,
                call_id=call_id,
                from_state=from_state,
                to_state=to_state,
                cause=cause[:255],
                at=at,
            )
        )

    async def for_call(self, call_id: uuid.UUID) -> Sequence[StateTransition]:
        stmt = (
            sa.select(StateTransition)
            .where(StateTransition.call_id == call_id)
            .order_by(StateTransition.id)
        )
        return (await self.session.execute(stmt)).scalars().all()


class ExposureRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(self, exposure: Exposure) -> None:
        self.session.add(exposure)

    async def for_call(self, call_id: uuid.UUID) -> Sequence[Exposure]:
        stmt = (
            sa.select(Exposure)
            .where(Exposure.call_id == call_id)
            .order_by(Exposure.started_at, Exposure.id)
        )
        return (await self.session.execute(stmt)).scalars().all()

    async def count_since(self, since: datetime) -> int:
        stmt = sa.select(sa.func.count()).select_from(Exposure).where(Exposure.started_at >= since)
        return int((await self.session.execute(stmt)).scalar_one())


class EventRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def count_inbox(self, provider: str | None = None) -> int:
        stmt = sa.select(sa.func.count()).select_from(InboundEvent)
        if provider is not None:
            stmt = stmt.where(InboundEvent.provider == provider)
        return int((await self.session.execute(stmt)).scalar_one())

    async def dead_letters(self) -> Sequence[DeadLetter]:
        return (
            (await self.session.execute(sa.select(DeadLetter).order_by(DeadLetter.id)))
            .scalars()
            .all()
        )


class TokenRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(self, token: ApiToken) -> None:
        self.session.add(token)

    async def by_name(self, name: str) -> ApiToken | None:
        return (
            await self.session.execute(sa.select(ApiToken).where(ApiToken.name == name))
        ).scalar_one_or_none()

    async def all(self) -> Sequence[ApiToken]:
        return (
            (await self.session.execute(sa.select(ApiToken).order_by(ApiToken.created_at)))
            .scalars()
            .all()
        )


class HealthRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def ping(self) -> None:
        await self.session.execute(sa.text("SELECT 1"))

    async def autovacuum_off(self) -> bool:
        """Whether the PostgreSQL server runs without autovacuum (False on SQLite)."""
        if self.session.get_bind().dialect.name != "postgresql":
            return False
        setting = (await self.session.execute(sa.text("SHOW autovacuum"))).scalar_one()
        return bool(setting == "off")


def _active_hold_exists() -> sa.ColumnElement[bool]:
    """SQL: the recording (or its caller) is under an active legal hold."""
    on_recording = sa.exists().where(
        LegalHold.recording_id == Recording.id, LegalHold.released_at.is_(None)
    )
    on_caller = sa.exists().where(
        LegalHold.caller.is_not(None),
        LegalHold.caller == Call.from_number,
        LegalHold.released_at.is_(None),
    )
    return sa.or_(on_recording, on_caller)


class RetentionRepository:
    """The queries behind retention: deadlines, due recordings, the sweep's claims."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def policies(self) -> Sequence[RetentionPolicy]:
        stmt = sa.select(RetentionPolicy).order_by(RetentionPolicy.service_area)
        return (await self.session.execute(stmt)).scalars().all()

    async def policy(self, service_area: str) -> RetentionPolicy | None:
        return await self.session.get(RetentionPolicy, service_area)

    def add_policy(self, policy: RetentionPolicy) -> None:
        self.session.add(policy)

    async def recordings_of_area(
        self, service_area: str, default_area: bool, after: uuid.UUID | None, limit: int
    ) -> Sequence[tuple[Recording, Call]]:
        """Undeleted, ended recordings of calls in ``service_area`` (and, for the default
        area, calls with none), in id order from ``after``."""
        area = Call.service_area == service_area
        if default_area:
            area = sa.or_(area, Call.service_area.is_(None))
        stmt = (
            sa.select(Recording, Call)
            .join(Call, Call.id == Recording.call_id)
            .where(area, Recording.deleted_at.is_(None), Recording.ended_at.is_not(None))
            .order_by(Recording.id)
            .limit(limit)
        )
        if after is not None:
            stmt = stmt.where(Recording.id > after)
        return [(r, c) for r, c in (await self.session.execute(stmt)).all()]

    async def calls_of_area(
        self, service_area: str, default_area: bool, after: uuid.UUID | None, limit: int
    ) -> Sequence[Call]:
        area = Call.service_area == service_area
        if default_area:
            area = sa.or_(area, Call.service_area.is_(None))
        stmt = (
            sa.select(Call)
            .where(area, Call.ended_at.is_not(None), Call.personal_erased_at.is_(None))
            .order_by(Call.id)
            .limit(limit)
        )
        if after is not None:
            stmt = stmt.where(Call.id > after)
        return (await self.session.execute(stmt)).scalars().all()

    def _due(self, until: datetime) -> sa.Select[uuid.UUID]:
        return (
            sa.select(Recording.id)
            .join(Call, Call.id == Recording.call_id)
            .where(Recording.deleted_at.is_(None), Recording.retention_until <= until)
        )

    async def count_due(self, now: datetime) -> tuple[int, int]:
        """(due and unheld, due but held) recordings."""
        held = _active_hold_exists()
        row = (
            await self.session.execute(
                sa.select(
                    sa.func.count().filter(sa.not_(held)),
                    sa.func.count().filter(held),
                )
                .select_from(Recording)
                .join(Call, Call.id == Recording.call_id)
                .where(Recording.deleted_at.is_(None), Recording.retention_until <= now)
            )
        ).one()
        return int(row[0]), int(row[1])

    async def due_list(
        self, until: datetime, limit: int, after: tuple[datetime, uuid.UUID] | None = None
    ) -> Sequence[tuple[Recording, Call, bool]]:
        """Recordings whose deadline falls before ``until``, soonest first, with a held flag."""
        held = _active_hold_exists().label("held")
        stmt = (
            sa.select(Recording, Call, held)
            .join(Call, Call.id == Recording.call_id)
            .where(Recording.deleted_at.is_(None), Recording.retention_until <= until)
            .order_by(Recording.retention_until, Recording.id)
            .limit(limit)
        )
        if after is not None:
            stmt = stmt.where(
                sa.tuple_(Recording.retention_until, Recording.id) > sa.tuple_(*after)
            )
        return [(r, c, bool(h)) for r, c, h in (await self.session.execute(stmt)).all()]

    async def claim_due(self, now: datetime, lease_until: datetime, limit: int) -> list[uuid.UUID]:
        """Claim up to ``limit`` due, unheld recordings for deletion by this sweep.

        ``SKIP LOCKED`` lets several replicas sweep at once on PostgreSQL without waiting on
        or taking each other's rows; the lease keeps a claimed row out of other sweeps until
        this one finishes or the lease runs out (a crashed replica).
        """
        stmt = (
            self._due(now)
            .where(
                sa.not_(_active_hold_exists()),
                sa.or_(Recording.sweep_lease_until.is_(None), Recording.sweep_lease_until < now),
            )
            .order_by(Recording.retention_until)
            .limit(limit)
            .with_for_update(skip_locked=True, of=Recording)
        )
        ids = list((await self.session.execute(stmt)).scalars())
        if ids:
            await self.session.execute(
                sa.update(Recording)
                .where(Recording.id.in_(ids))
                .values(sweep_lease_until=lease_until, deletion_started_at=None)
            )
        return ids

    async def lock_for_deletion(self, recording_ids: Sequence[uuid.UUID]) -> list[Recording]:
        """Lock the recordings about to lose their media, in id order (as every other
        multi-row lock on recordings takes them, so two never wait on each other)."""
        stmt = (
            sa.select(Recording)
            .where(Recording.id.in_(recording_ids))
            .order_by(Recording.id)
            .with_for_update()
        )
        return list((await self.session.execute(stmt)).scalars())

    async def held_among(self, recording_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of the recordings are under an active hold (on them or on their caller)."""
        stmt = (
            sa.select(Recording.id)
            .join(Call, Call.id == Recording.call_id)
            .where(Recording.id.in_(recording_ids), _active_hold_exists())
        )
        return set((await self.session.execute(stmt)).scalars())

    async def count_provider_copies_held(self) -> int:
        """Recordings whose provider copy outlived recgate's deletion: not deletable by
        recgate, or its deletion failed (retried while the recording stays undeleted)."""
        stmt = (
            sa.select(sa.func.count())
            .select_from(Recording)
            .where(Recording.provider_copy.in_(("not_deletable", "failed")))
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def is_held(self, recording_id: uuid.UUID) -> bool:
        stmt = (
            sa.select(sa.literal(True))
            .select_from(Recording)
            .join(Call, Call.id == Recording.call_id)
            .where(Recording.id == recording_id, _active_hold_exists())
        )
        return (await self.session.execute(stmt)).scalar_one_or_none() is not None

    async def erase_due_call_records(self, now: datetime, limit: int) -> int:
        """Erase personal fields of calls past their record deadline; counts survive."""
        held_recording = sa.exists().where(
            Recording.call_id == Call.id,
            LegalHold.recording_id == Recording.id,
            LegalHold.released_at.is_(None),
        )
        held_caller = sa.exists().where(
            LegalHold.caller == Call.from_number, LegalHold.released_at.is_(None)
        )
        ids = list(
            (
                await self.session.execute(
                    sa.select(Call.id)
                    .where(
                        Call.record_retention_until <= now,
                        Call.personal_erased_at.is_(None),
                        sa.not_(held_recording),
                        sa.not_(held_caller),
                    )
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
        )
        if not ids:
            return 0
        await self.session.execute(
            sa.update(Call)
            .where(Call.id.in_(ids))
            .values(
                from_number=None,
                to_number=None,
                agent_id=None,
                personal_erased_at=now,
                updated_at=now,
            )
        )
        await self.session.execute(
            sa.update(PaymentSegment)
            .where(PaymentSegment.call_id.in_(ids))
            .values(reference=None, idempotency_key=None)
        )
        return len(ids)

    def add_sweep_run(self, run: SweepRun) -> None:
        self.session.add(run)

    async def last_sweep_at(self) -> datetime | None:
        stmt = sa.select(sa.func.max(SweepRun.finished_at)).where(SweepRun.dry_run.is_(False))
        return (await self.session.execute(stmt)).scalar_one_or_none()


class HoldRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(self, hold: LegalHold) -> None:
        self.session.add(hold)

    async def by_id(self, hold_id: uuid.UUID) -> LegalHold | None:
        return await self.session.get(LegalHold, hold_id)

    async def lock_caller_recordings(self, caller: str) -> list[Recording]:
        """Lock the caller's undeleted recordings, in id order, so a hold on the caller commits
        only after any deletion of them that got past its hold check is visible."""
        stmt = (
            sa.select(Recording)
            .join(Call, Call.id == Recording.call_id)
            .where(Call.from_number == caller, Recording.deleted_at.is_(None))
            .order_by(Recording.id)
            .with_for_update(of=Recording)
        )
        return list((await self.session.execute(stmt)).scalars())

    async def for_recording(
        self, recording_id: uuid.UUID, caller: str | None
    ) -> Sequence[LegalHold]:
        """Holds on the recording itself and on its caller's number, oldest first."""
        condition = LegalHold.recording_id == recording_id
        if caller:
            condition = sa.or_(condition, LegalHold.caller == caller)
        stmt = sa.select(LegalHold).where(condition).order_by(LegalHold.placed_at, LegalHold.id)
        return (await self.session.execute(stmt)).scalars().all()


class RedactionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def superseded(self, limit: int = 100) -> Sequence[tuple[uuid.UUID, str]]:
        """Unredacted originals whose deletion from the store has not been confirmed."""
        stmt = (
            sa.select(Recording.id, Recording.superseded_media_path)
            .where(Recording.superseded_media_path.is_not(None))
            .limit(limit)
        )
        return [(rid, str(path)) for rid, path in (await self.session.execute(stmt)).all()]

    async def candidates(self, limit: int = 100) -> Sequence[uuid.UUID]:
        """Quarantined recordings whose media recgate holds, none of whose exposures is open."""
        open_exposure = sa.exists().where(
            Exposure.call_id == Recording.call_id,
            sa.or_(Exposure.recording_id == Recording.id, Exposure.recording_id.is_(None)),
            Exposure.ended_at.is_(None),
        )
        stmt = (
            sa.select(Recording.id)
            .where(
                Recording.quarantined.is_(True),
                Recording.deleted_at.is_(None),
                Recording.media_path.is_not(None),
                Recording.media_format == "wav",
                Recording.started_at.is_not(None),
                Recording.ended_at.is_not(None),
                sa.not_(open_exposure),
            )
            .limit(limit)
        )
        return (await self.session.execute(stmt)).scalars().all()
