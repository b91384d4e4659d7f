"""Webhook ingestion: inbox, then apply the normalised event to the call and its recordings.

Every event is merged as a set of facts (earliest start, earliest end, latest pause report …)
so the final state does not depend on arrival order, and a duplicate changes nothing.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.clock import Clock
from app.domain.events import EventType, PbxEvent
from app.domain.retention import add_months
from app.domain.scrub import scrub, scrub_phone_number, scrub_text
from app.domain.states import (
    LIVE_RECORDING_STATES,
    PROTECTED_SEGMENT_STATES,
    CallState,
    ClosedBy,
    ExposureKind,
    RecordingState,
    SegmentState,
)
from app.services.metrics import Metrics
from app.services.retention import Months, policy_months
from app.services.transitions import (
    record_call_created,
    set_call_state,
    set_recording_state,
    set_segment_state,
)
from app.storage.models import Call, Exposure, PaymentSegment, Recording
from app.storage.repositories import (
    CallRepository,
    EventRepository,
    ExposureRepository,
    RecordingRepository,
    SegmentRepository,
    TransitionRepository,
)

log = logging.getLogger("recgate.ingest")

_R = RecordingState
# How far the PBX's clock may be from ours when comparing its event times with our commands.
_CLOCK_SKEW = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class IngestResult:
    duplicate: bool
    # A recording of this call is live and unpaused while a payment is open: pause it now.
    needs_pause: bool = False
    # A recording whose media the provider now holds complete: copy it into the media store.
    media_ready: uuid.UUID | None = None


def _earliest(current: datetime | None, candidate: datetime | None) -> datetime | None:
    if candidate is None:
        return current
    return candidate if current is None or candidate < current else current


class IngestService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        clock: Clock,
        metrics: Metrics,
        call_level_covers_all: frozenset[str] = frozenset(),
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        # Providers whose call-level pause pauses every recording of the call (not just one).
        self.call_level_covers_all = call_level_covers_all

    async def ingest(self, event: PbxEvent, payload: dict[str, Any]) -> IngestResult:
        """Store ``event`` in the inbox and apply it, in one transaction.

        ``payload`` is the provider's raw payload; it is scrubbed before it is stored.
        """
        now = self.clock()
        async with self.sessions() as session, session.begin():
            inserted = await EventRepository(session).insert_inbox(
                provider=event.provider,
                event_id=event.event_id,
                type_=event.type.value,
                provider_call_id=event.call.provider_call_id,
                occurred_at=event.occurred_at,
                received_at=now,
                payload=scrub(payload),
            )
            if not inserted:
                self.metrics.webhook_events.inc(
                    provider=event.provider, type=event.type.value, outcome="duplicate"
                )
                return IngestResult(duplicate=True)
            calls = CallRepository(session)
            call_key = event.call.provider_call_id
            call_key = await calls.resolve_alias(event.provider, call_key) or call_key
            call, created = await calls.get_or_create_locked(event.provider, call_key, now)
            for alias in event.aliases:
                if alias != call.provider_call_id:
                    await calls.add_alias(call, alias, now)
            if created:
                record_call_created(
                    TransitionRepository(session), call, f"{event.provider}:{event.type.value}", now
                )
            applier = _Applier(
                session, self.settings, self.metrics, call, event, now, self.call_level_covers_all
            )
            needs_pause = await applier.apply()
        self.metrics.webhook_events.inc(
            provider=event.provider, type=event.type.value, outcome="applied"
        )
        return IngestResult(
            duplicate=False, needs_pause=needs_pause, media_ready=applier.media_ready
        )

    async def dead_letter(
        self, provider: str, event_id: str | None, reason: str, body: bytes
    ) -> None:
        """Keep a signed but malformed payload, scrubbed, for operators."""
        text = body.decode("utf-8", errors="replace")
        try:
            stored = json.dumps(scrub(json.loads(text)))
        except json.JSONDecodeError:
            stored = scrub_text(text)
        async with self.sessions() as session, session.begin():
            EventRepository(session).add_dead_letter(
                provider=provider,
                event_id=event_id,
                reason=scrub_text(reason),
                payload=stored,
                received_at=self.clock(),
            )
        self.metrics.webhook_events.inc(provider=provider, type="unknown", outcome="malformed")
        log.warning("malformed %s webhook dead-lettered: %s", provider, scrub_text(reason))


class _Applier:
    """Applies one event to one locked call inside the ingest transaction."""

    def __init__(
        self,
        session: AsyncSession,
        settings: Settings,
        metrics: Metrics,
        call: Call,
        event: PbxEvent,
        now: datetime,
        call_level_covers_all: frozenset[str] = frozenset(),
    ) -> None:
        self.call_level_covers_all = call_level_covers_all
        self.session = session
        self.settings = settings
        self.metrics = metrics
        self.call = call
        self.event = event
        self.now = now
        self.transitions = TransitionRepository(session)
        self.cause = f"{event.provider}:{event.type.value}"
        self.media_ready: uuid.UUID | None = None
        self.months = Months(settings.retention_media_months, settings.retention_record_months)

    async def apply(self) -> bool:
        area_before = self.call.service_area
        self._merge_call_facts()
        self.months = await policy_months(self.session, self.settings, self.call.service_area)
        if self.call.service_area != area_before:
            await self._recompute_deadlines()
        needs_pause = False
        if self.event.type == EventType.CALL_ENDED:
            await self._end_call()
        if self.event.recording is not None:
            needs_pause = await self._merge_recording()
        return needs_pause

    def _merge_call_facts(self) -> None:
        call, event, at = self.call, self.event, self.event.occurred_at
        call.started_at = _earliest(call.started_at, at)
        if event.type == EventType.CALL_ANSWERED:
            call.answered_at = _earliest(call.answered_at, at)
        info = event.call
        area = info.service_area
        if area is not None and area not in self.settings.service_areas:
            area = "other"
        for column, value in (
            ("from_number", info.from_number and scrub_phone_number(info.from_number)),
            ("to_number", info.to_number and scrub_phone_number(info.to_number)),
            ("direction", info.direction),
        ):
            if value is not None and getattr(call, column) is None:
                setattr(call, column, value)
        # A transfer changes the agent and maybe the service area: the latest report wins.
        agent = info.agent_id and scrub_text(info.agent_id)
        for column, value in (("agent_id", agent), ("service_area", area)):
            reported_at = getattr(call, f"{column.removesuffix('_id')}_at")
            if value is not None and (reported_at is None or at >= reported_at):
                setattr(call, column, value)
                setattr(call, f"{column.removesuffix('_id')}_at", at)
        call.updated_at = self.now

    async def _recompute_deadlines(self) -> None:
        """The service area decides the retention: learning it late moves the deadlines."""
        if self.call.ended_at is not None:
            self.call.record_retention_until = add_months(self.call.ended_at, self.months.record)
        for recording in await RecordingRepository(self.session).for_call(self.call.id):
            if recording.ended_at is not None and recording.deleted_at is None:
                recording.retention_until = add_months(recording.ended_at, self.months.media)

    async def _end_call(self) -> None:
        call, at = self.call, self.event.occurred_at
        call.ended_at = _earliest(call.ended_at, at)
        assert call.ended_at is not None
        call.record_retention_until = add_months(call.ended_at, self.months.record)
        set_call_state(self.transitions, call, CallState.ENDED, self.cause, self.now)
        segments = SegmentRepository(self.session)
        segment = await segments.open_for_call(call.id)
        if segment is not None:
            set_segment_state(self.transitions, segment, SegmentState.CLOSED, self.cause, self.now)
            segment.closed_at = self.now
            segment.closed_by = ClosedBy.CALL_END.value
            segment.next_resume_at = None
        # Nothing is recorded after the call ends: no exposure outlasts it, whichever of two
        # end reports arrived first.
        for exposure in await ExposureRepository(self.session).for_call(call.id):
            if exposure.ended_at is None or exposure.ended_at > call.ended_at:
                exposure.ended_at = max(exposure.started_at, call.ended_at)
        # The PBX stops every recording with the call, whether or not it says so. Finished
        # recordings get the fact too, so their end time does not depend on arrival order.
        for recording in await RecordingRepository(self.session).for_call(call.id):
            self._merge_recording_end(recording)

    async def _merge_recording(self) -> bool:
        info = self.event.recording
        assert info is not None
        recording, _ = await RecordingRepository(self.session).get_or_create(
            self.call.id, info.provider_recording_id, _R.PENDING.value, self.now
        )
        at, kind = self.event.occurred_at, self.event.type
        if info.media_url:
            recording.media_url = scrub_text(info.media_url)
        if info.duration_s is not None:
            recording.duration_s = info.duration_s
        if info.media_format:
            recording.media_format = info.media_format.lower()
        if info.sha256:
            recording.media_sha256 = info.sha256
        if info.container_id:
            recording.provider_container_id = info.container_id
        if kind == EventType.RECORDING_STARTED:
            recording.started_at = _earliest(recording.started_at, at)
        elif kind == EventType.RECORDING_STOPPED:
            recording.stopped_at = _earliest(recording.stopped_at, at)
        elif kind == EventType.RECORDING_COMPLETED:
            recording.completed_at = _earliest(recording.completed_at, at)
        elif kind == EventType.RECORDING_FAILED:
            recording.failed_at = _earliest(recording.failed_at, at)
        latest_pause_report = False
        if kind in (EventType.RECORDING_PAUSED, EventType.RECORDING_RESUMED) and (
            recording.pbx_pause_event_at is None or at >= recording.pbx_pause_event_at
        ):
            recording.pbx_pause_event_at = at
            recording.pbx_paused = kind == EventType.RECORDING_PAUSED
            latest_pause_report = True
        self._merge_recording_end(recording)
        await self._quarantine_if_exposed(recording)
        if (
            kind == EventType.RECORDING_COMPLETED
            and recording.state == _R.AVAILABLE.value
            and recording.media_url
            and recording.media_path is None
        ):
            self.media_ready = recording.id
        if recording.state not in LIVE_RECORDING_STATES:
            return False
        return await self._guard_live_recording(recording, latest_pause_report)

    async def _quarantine_if_exposed(self, recording: Recording) -> None:
        """A pause that failed before any recording was known left a call-wide exposure: any
        recording of the call that may overlap it may hold card data."""
        if recording.quarantined:
            return
        for exposure in await ExposureRepository(self.session).for_call(self.call.id):
            if exposure.recording_id is not None:
                continue
            starts_in_time = (
                recording.started_at is None
                or exposure.ended_at is None
                or recording.started_at <= exposure.ended_at + _CLOCK_SKEW
            )
            ends_in_time = (
                recording.ended_at is None
                or recording.ended_at >= exposure.started_at - _CLOCK_SKEW
            )
            if starts_in_time and ends_in_time:
                recording.quarantined = True
                return

    def _merge_recording_end(self, recording: Recording) -> None:
        if self.call.ended_at is not None:
            recording.stopped_at = _earliest(recording.stopped_at, self.call.ended_at)
        ended = None
        for moment in (recording.stopped_at, recording.completed_at, recording.failed_at):
            ended = _earliest(ended, moment)
        if ended is not None and ended != recording.ended_at:
            recording.ended_at = ended
            recording.retention_until = add_months(ended, self.months.media)
        if recording.completed_at is not None:
            target = _R.AVAILABLE
        elif recording.failed_at is not None:
            target = _R.FAILED
        elif recording.stopped_at is not None:
            target = _R.STOPPED
        else:
            return
        if recording.state != _R.DELETED.value:
            set_recording_state(self.transitions, recording, target, self.cause, self.now)

    async def _guard_live_recording(self, recording: Recording, latest_pause_report: bool) -> bool:
        """Keep a live recording's state in step with what the PBX says and any open payment.

        Returns True when the recording must be paused now.
        """
        segments = SegmentRepository(self.session)
        segment = await segments.open_for_call(self.call.id)
        protected = segment is not None and segment.state in PROTECTED_SEGMENT_STATES
        state = _R(recording.state)
        kind = self.event.type
        # A PBX report older than a pause or resume recgate had confirmed says nothing new.
        report_counts = latest_pause_report and (
            recording.control_confirmed_at is None
            or self.event.occurred_at > recording.control_confirmed_at
        )
        if report_counts and kind == EventType.RECORDING_RESUMED and state != _R.RECORDING:
            set_recording_state(self.transitions, recording, _R.RECORDING, self.cause, self.now)
            if protected and state in (_R.PAUSED, _R.PAUSING):
                assert segment is not None
                self._expose(
                    ExposureKind.UNEXPECTED_RESUME, recording, segment, self.event.occurred_at
                )
        elif (
            report_counts
            and kind == EventType.RECORDING_PAUSED
            and state
            in (
                _R.PENDING,
                _R.RECORDING,
            )
        ):
            set_recording_state(self.transitions, recording, _R.PAUSED, self.cause, self.now)
        elif state == _R.PENDING and recording.started_at is not None and not protected:
            set_recording_state(self.transitions, recording, _R.RECORDING, self.cause, self.now)
        if not protected:
            return False
        assert segment is not None
        link = await segments.link_recording(segment.id, recording.id)
        if recording.state == _R.PAUSED.value and link.paused_at is not None:
            return False
        # Whatever the PBX reports, only the provider's answer to recgate's own command
        # counts as paused for this payment (and a paused recording is resumed at its end).
        link.paused_at = None
        if recording.state == _R.PAUSED.value:
            return True
        if recording.state not in (_R.PENDING.value, _R.RECORDING.value):
            return recording.state == _R.PAUSING.value
        if self._covered(recording, segment):
            pass
        elif (
            segment.state in (SegmentState.PAUSED.value, SegmentState.PAUSE_FAILED.value)
            and kind != EventType.RECORDING_RESUMED
        ):
            since = max(filter(None, (recording.started_at, segment.paused_at, segment.opened_at)))
            self._expose(ExposureKind.LATE_RECORDING, recording, segment, since)
        if kind != EventType.RECORDING_RESUMED:
            # SPEC §2: a recording that starts during a payment goes from pending to pausing.
            # A resumed one stays "recording", so a pause confirmation already in flight
            # (sent before the resume) is not taken for a pause after it.
            set_recording_state(
                self.transitions, recording, _R.PAUSING, "recording live during payment", self.now
            )
        return True

    def _covered(self, recording: Recording, segment: PaymentSegment) -> bool:
        """Was this recording live when a pause of everything on the call was confirmed?

        Only for providers whose call-level pause covers every recording, only when that pause
        was confirmed (not "nothing recording"), and with a margin for the PBX's clock.
        """
        return (
            self.event.provider in self.call_level_covers_all
            and segment.call_level
            and segment.call_level_sent_at is not None
            and recording.started_at is not None
            and recording.started_at < segment.call_level_sent_at - _CLOCK_SKEW
        )

    def _expose(
        self, kind: ExposureKind, recording: Recording, segment: PaymentSegment, since: datetime
    ) -> None:
        recording.quarantined = True
        ExposureRepository(self.session).add(
            Exposure(
                call_id=self.call.id,
                recording_id=recording.id,
                segment_id=segment.id,
                kind=kind.value,
                started_at=since,
                detail=f"reported by {self.cause}",
            )
        )
        self.metrics.exposures.inc(kind=kind.value)
        log.warning(
            "exposure %s on a %s call recording; recording quarantined",
            kind.value,
            self.event.provider,
        )
