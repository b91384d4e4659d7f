"""Repositories: every query recgate makes lives here. They never commit; the caller does."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.states import LIVE_RECORDING_STATES, OPEN_SEGMENT_STATES, CallState
from app.storage.models import (
    ApiToken,
    Call,
    CallAlias,
    DeadLetter,
    Exposure,
    InboundEvent,
    PaymentSegment,
    Recording,
    SegmentRecording,
    StateTransition,
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

    async def get_or_create_locked(
        self, provider: str, provider_call_id: str, now: datetime
    ) -> tuple[Call, bool]:
        """The call row, created if it is not there yet (True), locked for the transaction."""
        result = await self.session.execute(
            _insert_ignore(
                self.session,
                Call,
                {
                    "id": uuid.uuid4(),
                    "provider": provider,
                    "provider_call_id": provider_call_id,
                    "state": CallState.IN_PROGRESS.value,
                    "created_at": now,
                    "updated_at": now,
                },
            )
        )
        call = await self.get(provider, provider_call_id, lock=True)
        assert call is not None
        return call, bool(getattr(result, "rowcount", 0))

    async def by_id(self, call_id: uuid.UUID) -> Call | None:
        return await self.session.get(Call, call_id)

    async def resolve_alias(self, provider: str, alias: str) -> str | None:
        """The provider call id ``alias`` stands for, if it is a known alias."""
        stmt = (
            sa.select(Call.provider_call_id)
            .join(CallAlias, CallAlias.call_id == Call.id)
            .where(CallAlias.provider == provider, CallAlias.alias == alias)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def add_alias(self, call: Call, alias: str, now: datetime) -> None:
        await self.session.execute(
            _insert_ignore(
                self.session,
                CallAlias,
                {"provider": call.provider, "alias": alias, "call_id": call.id, "created_at": now},
            )
        )

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

    async def live_for_call(self, call_id: uuid.UUID) -> list[Recording]:
        return [r for r in await self.for_call(call_id) if r.state in LIVE_RECORDING_STATES]

    async def by_id(self, recording_id: uuid.UUID, *, lock: bool = False) -> Recording | None:
        stmt = sa.select(Recording).where(Recording.id == recording_id)
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def media_fetch_due(
        self, providers: Sequence[str], max_attempts: int, limit: int = 50
    ) -> Sequence[uuid.UUID]:
        """Recordings whose media the provider holds but recgate has not copied yet."""
        stmt = (
            sa.select(Recording.id)
            .join(Call, Call.id == Recording.call_id)
            .where(
                Call.provider.in_(providers),
                Recording.state == "available",
                Recording.media_url.is_not(None),
                Recording.media_path.is_(None),
                Recording.media_fetch_attempts < max_attempts,
            )
            .order_by(Recording.completed_at)
            .limit(limit)
        )
        return (await self.session.execute(stmt)).scalars().all()

    async def get_or_create(
        self, call_id: uuid.UUID, provider_recording_id: str, state: str, now: datetime
    ) -> tuple[Recording, bool]:
        """The recording of ``call_id`` the provider calls ``provider_recording_id``; True if new."""
        stmt = sa.select(Recording).where(
            Recording.call_id == call_id, Recording.provider_recording_id == provider_recording_id
        )
        found = (await self.session.execute(stmt)).scalar_one_or_none()
        if found is not None:
            return found, False
        recording = Recording(
            id=uuid.uuid4(),
            call_id=call_id,
            provider_recording_id=provider_recording_id,
            state=state,
            media_files=1,
            media_fetch_attempts=0,
            quarantined=False,
            created_at=now,
            updated_at=now,
        )
        self.session.add(recording)
        await self.session.flush()
        return recording, True


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

    async def open_for_call(self, call_id: uuid.UUID) -> PaymentSegment | None:
        stmt = (
            sa.select(PaymentSegment)
            .where(
                PaymentSegment.call_id == call_id,
                PaymentSegment.state.in_([s.value for s in OPEN_SEGMENT_STATES]),
            )
            .order_by(PaymentSegment.opened_at.desc())
            .limit(1)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def latest_for_call(self, call_id: uuid.UUID) -> PaymentSegment | None:
        stmt = (
            sa.select(PaymentSegment)
            .where(PaymentSegment.call_id == call_id)
            .order_by(PaymentSegment.opened_at.desc())
            .limit(1)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def by_idempotency_key(self, call_id: uuid.UUID, key: str) -> PaymentSegment | None:
        stmt = sa.select(PaymentSegment).where(
            PaymentSegment.call_id == call_id, PaymentSegment.idempotency_key == key
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def by_id(self, segment_id: uuid.UUID) -> PaymentSegment | None:
        return await self.session.get(PaymentSegment, segment_id)

    async def resume_due(self, now: datetime, limit: int = 100) -> Sequence[tuple[str, str]]:
        """(provider, provider_call_id) of calls whose failed resume is due for another try."""
        stmt = (
            sa.select(Call.provider, Call.provider_call_id)
            .join(PaymentSegment, PaymentSegment.call_id == Call.id)
            .where(PaymentSegment.state == "resume_failed", PaymentSegment.next_resume_at <= now)
            .limit(limit)
        )
        return [(p, c) for p, c in (await self.session.execute(stmt)).all()]

    async def overlong(self, opened_before: datetime) -> Sequence[PaymentSegment]:
        stmt = sa.select(PaymentSegment).where(
            PaymentSegment.state.in_([s.value for s in OPEN_SEGMENT_STATES]),
            PaymentSegment.opened_at < opened_before,
            PaymentSegment.overlong_alerted_at.is_(None),
        )
        return (await self.session.execute(stmt)).scalars().all()

    async def count_open_since_before(self, opened_before: datetime) -> int:
        """Open segments opened before ``opened_before`` (a pause held too long)."""
        stmt = (
            sa.select(sa.func.count())
            .select_from(PaymentSegment)
            .where(
                PaymentSegment.state.in_([s.value for s in OPEN_SEGMENT_STATES]),
                PaymentSegment.opened_at < opened_before,
            )
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def count_open(self) -> int:
        stmt = (
            sa.select(sa.func.count())
            .select_from(PaymentSegment)
            .where(PaymentSegment.state.in_([s.value for s in OPEN_SEGMENT_STATES]))
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def count_pause_failures_since(self, since: datetime) -> int:
        stmt = (
            sa.select(sa.func.count())
            .select_from(StateTransition)
            .where(
                StateTransition.entity == "segment",
                StateTransition.to_state == "pause_failed",
                StateTransition.at >= since,
            )
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def link_recording(
        self, segment_id: uuid.UUID, recording_id: uuid.UUID
    ) -> SegmentRecording:
        link = await self.session.get(SegmentRecording, (segment_id, recording_id))
        if link is None:
            link = SegmentRecording(segment_id=segment_id, recording_id=recording_id)
            self.session.add(link)
        return link

    async def links_for_segment(self, segment_id: uuid.UUID) -> dict[uuid.UUID, SegmentRecording]:
        """The segment's recordings, by recording id."""
        stmt = sa.select(SegmentRecording).where(SegmentRecording.segment_id == segment_id)
        return {link.recording_id: link for link in (await self.session.execute(stmt)).scalars()}

    async def stuck(self, changed_before: datetime, limit: int = 50) -> Sequence[tuple[str, str]]:
        """(provider, provider_call_id) of calls whose segment has sat in pausing or resuming
        since before ``changed_before``: whoever was commanding it is gone."""
        stmt = (
            sa.select(Call.provider, Call.provider_call_id)
            .join(PaymentSegment, PaymentSegment.call_id == Call.id)
            .where(
                PaymentSegment.state.in_(["pausing", "resuming"]),
                PaymentSegment.state_changed_at < changed_before,
            )
            .limit(limit)
        )
        return [(p, c) for p, c in (await self.session.execute(stmt)).all()]

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

    async def open_for_call(self, call_id: uuid.UUID) -> Sequence[Exposure]:
        stmt = sa.select(Exposure).where(Exposure.call_id == call_id, Exposure.ended_at.is_(None))
        return (await self.session.execute(stmt)).scalars().all()

    async def count_since(self, since: datetime) -> int:
        stmt = sa.select(sa.func.count()).select_from(Exposure).where(Exposure.started_at >= since)
        return int((await self.session.execute(stmt)).scalar_one())


class EventRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert_inbox(
        self,
        *,
        provider: str,
        event_id: str,
        type_: str,
        provider_call_id: str,
        occurred_at: datetime,
        received_at: datetime,
        payload: dict[str, Any],
    ) -> bool:
        """Store the event in the inbox; False when it was there already (a duplicate)."""
        result = await self.session.execute(
            _insert_ignore(
                self.session,
                InboundEvent,
                {
                    "provider": provider,
                    "event_id": event_id,
                    "type": type_,
                    "provider_call_id": provider_call_id,
                    "occurred_at": occurred_at,
                    "received_at": received_at,
                    "payload": payload,
                },
            )
        )
        return bool(getattr(result, "rowcount", 0))

    async def count_inbox(self, provider: str | None = None) -> int:
        stmt = sa.select(sa.func.count()).select_from(InboundEvent)
        if provider is not None:
            stmt = stmt.where(InboundEvent.provider == provider)
        return int((await self.session.execute(stmt)).scalar_one())

    def add_dead_letter(
        self,
        *,
        provider: str,
        event_id: str | None,
        reason: str,
        payload: str,
        received_at: datetime,
    ) -> None:
        self.session.add(
            DeadLetter(
                provider=provider,
                event_id=event_id,
                reason=reason[:1000],
                payload=payload,
                received_at=received_at,
            )
        )

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

    async def by_hash(self, token_hash: str) -> ApiToken | None:
        stmt = sa.select(ApiToken).where(
            ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

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

    async def retention_overdue(self, now: datetime) -> int:
        """Recordings past their media deadline whose media is not yet deleted."""
        stmt = (
            sa.select(sa.func.count())
            .select_from(Recording)
            .where(Recording.retention_until < now, Recording.deleted_at.is_(None))
        )
        return int((await self.session.execute(stmt)).scalar_one())
