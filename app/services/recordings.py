"""Recordings as supervisors and DPOs see them (SPEC §3.3): metadata, media, legal holds.

Every read of metadata or media and every hold and release is written to the audit trail in
the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.clock import Clock
from app.domain.row_ids import new_id
from app.domain.scrub import scrub_fields, scrub_phone_number
from app.errors import AppError, Conflict, Forbidden, MalformedInput, NotFound
from app.services.audit import Actor, AuditService
from app.storage.media import MediaMissing, MediaStore
from app.storage.models import (
    Call,
    Exposure,
    LegalHold,
    Recording,
)
from app.storage.repositories import (
    CallRepository,
    ExposureRepository,
    HoldRepository,
    RecordingRepository,
    SegmentRepository,
)

HOLD_REASONS = ("complaint", "legal_claim", "police_investigation", "subject_access", "other")
MEDIA_PURPOSES = (
    "quality",
    "training",
    "complaint",
    "legal_claim",
    "safety",
    "subject_access",
    "disclosure",
)


class RecordingGoneForever(AppError):
    status, slug, title = 410, "recording-deleted", "The recording has been deleted"


@dataclass(frozen=True, slots=True)
class PauseSpan:
    segment_id: uuid.UUID
    paused_at: datetime | None
    resumed_at: datetime | None
    start_offset_s: float | None
    end_offset_s: float | None


@dataclass(frozen=True, slots=True)
class RecordingDetail:
    recording: Recording
    call: Call
    holds: list[LegalHold]
    pauses: list[PauseSpan]
    exposures: list[Exposure]


def _offset(moment: datetime | None, start: datetime | None) -> float | None:
    if moment is None or start is None:
        return None
    return round((moment - start).total_seconds(), 3)


class RecordingService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        store: MediaStore,
        audit: AuditService,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.store = store
        self.audit = audit

    async def detail(self, recording_id: uuid.UUID, actor: Actor) -> RecordingDetail:
        """Metadata with holds, pause spans (offsets into the recording) and exposures."""
        async with self.sessions() as session, session.begin():
            detail = await self._load(session, recording_id)
            await self.audit.record(
                session, actor, "recording.read", "recording", str(recording_id)
            )
            return detail

    async def _load(self, session: AsyncSession, recording_id: uuid.UUID) -> RecordingDetail:
        recording = await RecordingRepository(session).by_id(recording_id)
        if recording is None:
            raise NotFound("No such recording.")
        call = await CallRepository(session).by_id(recording.call_id)
        assert call is not None
        links = [
            link
            for link in await SegmentRepository(session).links_for_call(call.id)
            if link.recording_id == recording.id
        ]
        pauses = [
            PauseSpan(
                link.segment_id,
                link.paused_at,
                link.resumed_at,
                _offset(link.paused_at, recording.started_at),
                _offset(link.resumed_at, recording.started_at),
            )
            for link in sorted(
                links,
                key=lambda link: link.paused_at or datetime.max.replace(tzinfo=None).astimezone(),
            )
        ]
        exposures = [
            e
            for e in await ExposureRepository(session).for_call(call.id)
            if e.recording_id in (recording.id, None)
        ]
        holds = list(await HoldRepository(session).for_recording(recording.id, call.from_number))
        return RecordingDetail(recording, call, holds, pauses, exposures)

    async def list(
        self,
        actor: Actor,
        *,
        service_area: str | None = None,
        started_from: datetime | None = None,
        started_to: datetime | None = None,
        caller: str | None = None,
        state: str | None = None,
        on_hold: bool | None = None,
        exposure: bool | None = None,
        before: tuple[datetime, uuid.UUID] | None = None,
        limit: int = 50,
    ) -> list[tuple[Recording, Call]]:
        """Newest first, keyset-paginated. Filtering by caller serves subject access."""
        stmt = sa.select(Recording, Call).join(Call, Call.id == Recording.call_id)
        if service_area:
            stmt = stmt.where(Call.service_area == service_area)
        if caller:
            stmt = stmt.where(Call.from_number == scrub_phone_number(caller))
        if state:
            stmt = stmt.where(Recording.state == state)
        if started_from:
            stmt = stmt.where(Recording.created_at >= started_from)
        if started_to:
            stmt = stmt.where(Recording.created_at < started_to)
        held = sa.exists().where(
            sa.or_(LegalHold.recording_id == Recording.id, LegalHold.caller == Call.from_number),
            LegalHold.released_at.is_(None),
        )
        if on_hold is not None:
            stmt = stmt.where(held if on_hold else sa.not_(held))
        exposed = sa.exists().where(Exposure.recording_id == Recording.id)
        if exposure is not None:
            stmt = stmt.where(exposed if exposure else sa.not_(exposed))
        if before is not None:
            stmt = stmt.where(sa.tuple_(Recording.created_at, Recording.id) < sa.tuple_(*before))
        stmt = stmt.order_by(Recording.created_at.desc(), Recording.id.desc()).limit(limit)
        async with self.sessions() as session, session.begin():
            rows = [(r, c) for r, c in (await session.execute(stmt)).all()]
            await self.audit.record(
                session,
                actor,
                "recording.list",
                "recordings",
                "*" if not caller else "caller",
                detail={"caller": bool(caller), "count": len(rows), "service_area": service_area},
            )
            return rows

    async def open_media(
        self, recording_id: uuid.UUID, purpose: str, actor: Actor, *, may_see_quarantined: bool
    ) -> tuple[Recording, AsyncIterator[bytes]]:
        """The recording and a stream of its media; audited before the first byte is sent.

        A refusal (deleted, quarantined, no media yet) is audited too, with its reason."""
        refusal: tuple[str, AppError] | None = None
        async with self.sessions() as session, session.begin():
            recording = await RecordingRepository(session).by_id(recording_id)
            if recording is None:
                raise NotFound("No such recording.")
            if recording.deleted_at is not None:
                refusal = (
                    "deleted",
                    RecordingGoneForever(
                        "Deleted under the retention policy or by a DPO; it cannot be retrieved.",
                        deleted_at=recording.deleted_at.isoformat(),
                        deleted_reason=recording.deleted_reason,
                    ),
                )
            elif recording.quarantined and not may_see_quarantined:
                refusal = (
                    "quarantined",
                    Forbidden("The recording is quarantined (possible card data): DPO only."),
                )
            elif recording.media_path is None:
                refusal = (
                    "no_media",
                    Conflict("recgate holds no copy of this recording's media yet."),
                )
            outcome = {"outcome": "granted"}
            if refusal is not None:
                outcome = {"outcome": "refused", "reason": refusal[0]}
            await self.audit.record(
                session,
                actor,
                "recording.media",
                "recording",
                str(recording_id),
                purpose=purpose,
                detail=outcome,
            )
        if refusal is not None:
            raise refusal[1]
        assert recording.media_path is not None
        stream = self.store.read(recording.media_path)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            first = b""
        except MediaMissing as exc:
            raise Conflict("The media file is missing from the store.") from exc

        async def chained() -> AsyncIterator[bytes]:
            yield first
            async for chunk in stream:
                yield chunk

        return recording, chained()

    async def refuse_media(self, recording_id: uuid.UUID, actor: Actor, reason: str) -> None:
        """Put a media request refused before it reached :meth:`open_media` on record."""
        async with self.sessions() as session, session.begin():
            await self.audit.record(
                session,
                actor,
                "recording.media",
                "recording",
                str(recording_id),
                detail={"outcome": "refused", "reason": reason},
            )

    # ---- holds ------------------------------------------------------------------------

    async def place_hold(
        self,
        actor: Actor,
        *,
        reason: str,
        reference: str | None,
        note: str | None,
        recording_id: uuid.UUID | None = None,
        caller: str | None = None,
    ) -> LegalHold:
        """A hold on one recording, or on every recording of a caller's number."""
        if caller is not None and scrub_phone_number(caller) != caller:
            # Stored scrubbed it would hold nothing the caller made, and every call whose
            # number was redacted instead.
            raise MalformedInput("caller is not a phone number recgate can match.")
        reference, note = scrub_fields(reference, note)
        async with self.sessions() as session, session.begin():
            if recording_id is not None:
                # Locked: a deletion that passed its hold check meanwhile is seen here, and
                # one that has not yet waits for this hold and then sees it.
                recording = await RecordingRepository(session).by_id(recording_id, lock=True)
                if recording is None:
                    raise NotFound("No such recording.")
                if recording.deleted_at is not None:
                    raise RecordingGoneForever("The recording has already been deleted.")
                lease = recording.sweep_lease_until
                if (
                    lease is not None
                    and lease > self.clock()
                    and (recording.deletion_error is None or recording.deletion_started_at)
                ):
                    # The sweep has claimed it and may be deleting its media right now.
                    raise Conflict(
                        "The retention sweep is deleting this recording; check it again shortly.",
                    )
            if caller is not None:
                # The caller-hold counterpart: every recording of the number is locked, so a
                # deletion past its last hold check is visible now (and refused below), and
                # any other waits for this hold and then sees it. A 201 therefore means no
                # recording of the number can still be deleted.
                now = self.clock()
                deleting = [
                    r
                    for r in await HoldRepository(session).lock_caller_recordings(caller)
                    if r.deletion_started_at is not None
                    and r.sweep_lease_until is not None
                    and r.sweep_lease_until > now
                ]
                if deleting:
                    raise Conflict(
                        f"The retention sweep is deleting {len(deleting)} recording(s) of this "
                        "caller right now; place the hold again shortly.",
                    )
            hold = LegalHold(
                id=new_id(),
                recording_id=recording_id,
                caller=caller,
                reason=reason,
                reference=reference,
                note=note,
                placed_by=actor.name,
                placed_at=self.clock(),
            )
            HoldRepository(session).add(hold)
            await self.audit.record(
                session,
                actor,
                "hold.placed",
                "recording" if recording_id else "caller",
                str(recording_id) if recording_id else "caller",
                detail={"hold_id": str(hold.id), "reason": reason, "reference": hold.reference},
            )
            return hold

    async def release_hold(
        self, hold_id: uuid.UUID, actor: Actor, recording_id: uuid.UUID | None = None
    ) -> LegalHold:
        """Release a hold; releasing twice is a no-op. The release is recorded, not erased."""
        async with self.sessions() as session, session.begin():
            hold = await HoldRepository(session).by_id(hold_id)
            if hold is None or (recording_id is not None and hold.recording_id != recording_id):
                raise NotFound("No such hold.")
            if hold.released_at is None:
                hold.released_at, hold.released_by = self.clock(), actor.name
                await self.audit.record(
                    session,
                    actor,
                    "hold.released",
                    "recording" if hold.recording_id else "caller",
                    str(hold.recording_id) if hold.recording_id else "caller",
                    detail={"hold_id": str(hold.id)},
                )
            return hold
