"""Read model of one call: its recordings, payment segments and exposures."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import NotFound
from app.services.audit import Actor, AuditService
from app.storage.models import Call, Exposure, PaymentSegment, Recording, StateTransition
from app.storage.repositories import (
    CallRepository,
    ExposureRepository,
    RecordingRepository,
    SegmentRepository,
    TransitionRepository,
)


@dataclass(frozen=True, slots=True)
class CallDetail:
    call: Call
    recordings: list[Recording]
    segments: list[PaymentSegment]
    exposures: list[Exposure]
    transitions: list[StateTransition]


class CallQueries:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], audit: AuditService) -> None:
        self.sessions = sessions
        self.audit = audit

    async def detail(self, provider: str, provider_call_id: str, actor: Actor) -> CallDetail:
        """The call with everything recgate knows of it; :class:`NotFound` when unknown.

        The read is audited: call metadata is personal data too.
        """
        async with self.sessions() as session, session.begin():
            call = await CallRepository(session).get(provider, provider_call_id)
            if call is None:
                raise NotFound("No such call.")
            await self.audit.record(session, actor, "call.read", "call", str(call.id))
            return CallDetail(
                call=call,
                recordings=list(await RecordingRepository(session).for_call(call.id)),
                segments=list(await SegmentRepository(session).for_call(call.id)),
                exposures=list(await ExposureRepository(session).for_call(call.id)),
                transitions=list(await TransitionRepository(session).for_call(call.id)),
            )
