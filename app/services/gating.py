"""Payment gating (SPEC §3.1): pause every live recording before card details are taken.

``safe_to_collect`` is answered only once the provider has confirmed every pause. Anything
else (a timeout, a refusal, an outage past the deadline) fails closed: the segment is
``pause_failed``, the unconfirmed recordings are quarantined with an exposure, and the IVR gets
a 503. No database transaction is held open across a provider round trip.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.clock import Clock
from app.domain.scrub import scrub_text
from app.domain.states import (
    LIVE_RECORDING_STATES,
    PROTECTED_SEGMENT_STATES,
    CallState,
    ClosedBy,
    ExposureKind,
    PauseBehavior,
    RecordingState,
    SegmentState,
)
from app.errors import (
    CallEnded,
    Conflict,
    NoOpenPayment,
    PauseNotConfirmed,
    ProviderControlMissing,
    ProviderNotEnabled,
    ResumeNotConfirmed,
)
from app.services.concurrency import BackgroundTasks, CallLocks
from app.services.metrics import Metrics
from app.services.transitions import record_call_created, set_recording_state, set_segment_state
from app.storage.models import Call, Exposure, PaymentSegment, Recording
from app.storage.repositories import (
    CallRepository,
    ExposureRepository,
    RecordingRepository,
    SegmentRepository,
    TransitionRepository,
)
from app.telephony.base import (
    ConfirmedState,
    ControlOutcome,
    ControlTarget,
    ProviderRejected,
    ProviderUnavailable,
    RecordingController,
    RecordingGone,
    RecordingRef,
)

log = logging.getLogger("recgate.gating")

_R = RecordingState
_S = SegmentState
_RETRY_BACKOFF_S = (0.05, 0.1, 0.2, 0.4)
_UNPAUSED = frozenset({_R.PENDING.value, _R.RECORDING.value, _R.PAUSING.value, _R.RESUMING.value})


@dataclass(frozen=True, slots=True)
class RecordingStatus:
    id: uuid.UUID
    provider_recording_id: str
    state: str


@dataclass(frozen=True, slots=True)
class SegmentOutcome:
    """What the IVR is told about a payment segment."""

    segment_id: uuid.UUID
    state: str
    recordings: list[RecordingStatus] = field(default_factory=list)

    @property
    def safe_to_collect(self) -> bool:
        return self.state == _S.PAUSED.value


class _CommandFailed(Exception):
    """A pause or resume that was not confirmed; the message is safe to store and show."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class PaymentGate:
    """Opens and closes payment segments and keeps every recording paused inside them."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        clock: Clock,
        metrics: Metrics,
        controllers: dict[str, RecordingController],
        locks: CallLocks,
        tasks: BackgroundTasks,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.controllers = controllers
        self.locks = locks
        self.tasks = tasks

    # ---- public use cases -------------------------------------------------------------

    async def start(
        self,
        provider: str,
        provider_call_id: str,
        *,
        reference: str | None = None,
        behavior: PauseBehavior = PauseBehavior.SILENCE,
        idempotency_key: str | None = None,
    ) -> SegmentOutcome:
        """Open a payment segment and pause every recording; return once confirmed.

        Raises :class:`PauseNotConfirmed` (503, ``safe_to_collect: false``) otherwise.
        """
        controller = self._controller(provider)
        began = asyncio.get_running_loop().time()
        async with self.locks.hold(provider, provider_call_id):
            async with self.sessions() as session, session.begin():
                now = self.clock()
                call, created = await CallRepository(session).get_or_create_locked(
                    provider, provider_call_id, now
                )
                if created:
                    record_call_created(
                        TransitionRepository(session), call, "ivr: payment start", now
                    )
                if call.state == CallState.ENDED.value:
                    raise CallEnded("The call has ended; no payment can be taken on it.")
                segments = SegmentRepository(session)
                transitions = TransitionRepository(session)
                segment = None
                if idempotency_key:
                    segment = await segments.by_idempotency_key(call.id, idempotency_key)
                segment = segment or await segments.open_for_call(call.id)
                if segment is not None and segment.state == _S.RESUME_FAILED.value:
                    # A new payment on a call whose last resume is unconfirmed: the new
                    # segment pauses everything again, so the old one is done with.
                    set_segment_state(
                        transitions, segment, _S.CLOSED, "superseded by a new payment", now
                    )
                    segment.closed_at, segment.closed_by = now, ClosedBy.IVR.value
                    segment = None
                if segment is not None and segment.state in (_S.RESUMING.value,):
                    raise Conflict("The previous payment on this call is still being ended.")
                if segment is not None and segment.state != _S.PAUSING.value:
                    outcome = await self._outcome(session, segment)
                    return self._answer_start(outcome)
                if segment is None:
                    segment = PaymentSegment(
                        id=uuid.uuid4(),
                        call_id=call.id,
                        state=_S.PAUSING.value,
                        reference=reference and scrub_text(reference),
                        idempotency_key=idempotency_key,
                        pause_behavior=behavior.value,
                        opened_at=now,
                        call_level=False,
                        resume_attempts=0,
                    )
                    session.add(segment)
                    transitions.add(
                        entity="segment",
                        entity_id=segment.id,
                        call_id=call.id,
                        from_state=None,
                        to_state=_S.PAUSING.value,
                        cause="ivr: payment start",
                        at=now,
                    )
                segment_id = segment.id
                behavior = PauseBehavior(segment.pause_behavior)
            outcome = await self._pause_until_confirmed(
                controller, provider_call_id, segment_id, behavior
            )
        if outcome.safe_to_collect:
            self.metrics.pause_confirm_seconds.observe(asyncio.get_running_loop().time() - began)
        return self._answer_start(outcome)

    async def end(
        self, provider: str, provider_call_id: str, *, outcome: str | None = None
    ) -> SegmentOutcome:
        """Close the payment segment and resume the recordings it paused.

        Raises :class:`NoOpenPayment` (409) when no segment was ever opened and
        :class:`ResumeNotConfirmed` (502) when a resume is not confirmed; retries then go on in
        the background.
        """
        controller = self._controller(provider)
        async with self.locks.hold(provider, provider_call_id):
            async with self.sessions() as session, session.begin():
                now = self.clock()
                call = await CallRepository(session).get(provider, provider_call_id, lock=True)
                segment = (
                    None
                    if call is None
                    else await SegmentRepository(session).latest_for_call(call.id)
                )
                if call is None or segment is None:
                    raise NoOpenPayment("No payment was started on this call.")
                if segment.state == _S.CLOSED.value:
                    return await self._outcome(session, segment)
                transitions = TransitionRepository(session)
                if segment.state == _S.PAUSING.value:
                    set_segment_state(
                        transitions,
                        segment,
                        _S.PAUSE_FAILED,
                        "payment ended before pause confirmed",
                        now,
                    )
                segment.outcome = outcome or segment.outcome
                segment.resume_requested_at = now
                set_segment_state(transitions, segment, _S.RESUMING, "ivr: payment end", now)
                segment_id = segment.id
            result = await self._resume_until_confirmed(
                controller, provider_call_id, segment_id, ClosedBy.IVR
            )
        if result.state != _S.CLOSED.value:
            raise ResumeNotConfirmed(
                "Recording resume was not confirmed; recgate keeps retrying.",
                **outcome_body(result),
            )
        return result

    async def retry_resume(self, provider: str, provider_call_id: str) -> None:
        """Try once more to resume the recordings of a ``resume_failed`` segment (background)."""
        controller = self.controllers.get(provider)
        if controller is None:
            return
        async with self.locks.hold(provider, provider_call_id):
            async with self.sessions() as session, session.begin():
                call = await CallRepository(session).get(provider, provider_call_id, lock=True)
                segment = (
                    None
                    if call is None
                    else await SegmentRepository(session).open_for_call(call.id)
                )
                if segment is None or segment.state != _S.RESUME_FAILED.value:
                    return
                set_segment_state(
                    TransitionRepository(session),
                    segment,
                    _S.RESUMING,
                    "background resume retry",
                    self.clock(),
                )
                segment_id = segment.id
            await self._resume_until_confirmed(
                controller, provider_call_id, segment_id, ClosedBy.IVR
            )

    async def enforce_pause(self, provider: str, provider_call_id: str) -> None:
        """Pause any recording that went live while a payment is open (late start, resume).

        Keeps trying while the segment stays open, up to ``RECGATE_MAX_PAUSE_S``.
        """
        controller = self.controllers.get(provider)
        if controller is None:
            return
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.settings.max_pause_s
        attempt = 0
        while loop.time() < give_up:
            async with self.locks.hold(provider, provider_call_id):
                done = await self._enforce_once(controller, provider, provider_call_id)
            if done:
                return
            await asyncio.sleep(_RETRY_BACKOFF_S[min(attempt, len(_RETRY_BACKOFF_S) - 1)] * 5)
            attempt += 1

    def spawn_enforce_pause(self, provider: str, provider_call_id: str) -> None:
        self.tasks.spawn(
            self.enforce_pause(provider, provider_call_id), name=f"enforce-pause:{provider}"
        )

    async def alert_overlong_segments(self) -> int:
        """Flag payment segments open longer than ``RECGATE_MAX_PAUSE_S``; never resume them."""
        now = self.clock()
        async with self.sessions() as session, session.begin():
            overlong = await SegmentRepository(session).overlong(
                now - timedelta(seconds=self.settings.max_pause_s)
            )
            for segment in overlong:
                segment.overlong_alerted_at = now
                log.warning(
                    "payment segment %s open for more than %ss (state %s): check the IVR",
                    segment.id,
                    self.settings.max_pause_s,
                    segment.state,
                )
        return len(overlong)

    async def retry_due_resumes(self) -> int:
        async with self.sessions() as session:
            due = await SegmentRepository(session).resume_due(self.clock())
        for provider, call_id in due:
            await self.retry_resume(provider, call_id)
        return len(due)

    # ---- pause ------------------------------------------------------------------------

    async def _pause_until_confirmed(
        self,
        controller: RecordingController,
        provider_call_id: str,
        segment_id: uuid.UUID,
        behavior: PauseBehavior,
    ) -> SegmentOutcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.pause_timeout_ms / 1000
        first_round, attempt = True, 0
        while True:
            async with self.sessions() as session, session.begin():
                segment, call = await self._locked_segment(session, segment_id)
                if segment.state != _S.PAUSING.value:
                    return await self._outcome(session, segment)
                live = await RecordingRepository(session).live_for_call(call.id)
                pending = [r for r in live if r.state in _UNPAUSED]
                if not pending and not (first_round and not live):
                    now = self.clock()
                    set_segment_state(
                        TransitionRepository(session),
                        segment,
                        _S.PAUSED,
                        "every recording confirmed paused",
                        now,
                    )
                    segment.paused_at = now
                    return await self._outcome(session, segment)
                target = await self._mark(session, segment, pending, _R.PAUSING, "payment start")
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise _CommandFailed("pause not confirmed within the deadline")
                outcomes = await self._send(controller, "pause", target, remaining, behavior)
            except _CommandFailed as exc:
                retry_in = _RETRY_BACKOFF_S[min(attempt, len(_RETRY_BACKOFF_S) - 1)]
                if exc.retryable and deadline - loop.time() > retry_in:
                    attempt += 1
                    await asyncio.sleep(retry_in)
                    continue
                return await self._fail_pause(segment_id, exc.message)
            first_round = False
            async with self.sessions() as session, session.begin():
                segment, call = await self._locked_segment(session, segment_id)
                await self._apply(session, call, segment, outcomes, "pause confirmed")

    async def _fail_pause(self, segment_id: uuid.UUID, reason: str) -> SegmentOutcome:
        async with self.sessions() as session, session.begin():
            segment, call = await self._locked_segment(session, segment_id)
            if segment.state != _S.PAUSING.value:
                return await self._outcome(session, segment)
            now = self.clock()
            transitions = TransitionRepository(session)
            set_segment_state(transitions, segment, _S.PAUSE_FAILED, reason, now)
            segment.last_error = reason[:500]
            exposures = ExposureRepository(session)
            unconfirmed = [
                r
                for r in await RecordingRepository(session).live_for_call(call.id)
                if r.state in _UNPAUSED
            ]
            for recording in unconfirmed:
                if recording.state == _R.PAUSING.value:
                    set_recording_state(
                        transitions, recording, _R.RECORDING, "pause not confirmed", now
                    )
                recording.quarantined = True
            recording_ids: list[uuid.UUID | None] = [r.id for r in unconfirmed] or [None]
            for recording_id in recording_ids:
                exposures.add(
                    Exposure(
                        call_id=call.id,
                        recording_id=recording_id,
                        segment_id=segment.id,
                        kind=ExposureKind.PAUSE_FAILED.value,
                        started_at=segment.opened_at,
                        detail=reason[:500],
                    )
                )
                self.metrics.exposures.inc(kind=ExposureKind.PAUSE_FAILED.value)
            log.error(
                "pause not confirmed on a %s call: %s; IVR told not to collect",
                call.provider,
                reason,
            )
            return await self._outcome(session, segment)

    async def _enforce_once(
        self, controller: RecordingController, provider: str, provider_call_id: str
    ) -> bool:
        async with self.sessions() as session, session.begin():
            call = await CallRepository(session).get(provider, provider_call_id, lock=True)
            segment = (
                None if call is None else await SegmentRepository(session).open_for_call(call.id)
            )
            if call is None or segment is None or segment.state not in PROTECTED_SEGMENT_STATES:
                return True
            if segment.state == _S.PAUSING.value:
                return True  # the payment start in progress pauses it
            # A recording left pausing here was marked by ingest (or by a crashed attempt):
            # nobody else is commanding it while this call's lock is held.
            pending = [
                r
                for r in await RecordingRepository(session).live_for_call(call.id)
                if r.state in (_R.PENDING.value, _R.RECORDING.value, _R.PAUSING.value)
            ]
            if not pending:
                return True
            target = await self._mark(
                session, segment, pending, _R.PAUSING, "recording live during payment"
            )
            segment_id, behavior = segment.id, PauseBehavior(segment.pause_behavior)
        try:
            outcomes = await self._send(
                controller, "pause", target, self.settings.pause_timeout_ms / 1000, behavior
            )
        except _CommandFailed as exc:
            async with self.sessions() as session, session.begin():
                segment, call = await self._locked_segment(session, segment_id)
                now = self.clock()
                for recording in await RecordingRepository(session).live_for_call(call.id):
                    if recording.state == _R.PAUSING.value:
                        set_recording_state(
                            TransitionRepository(session), recording, _R.RECORDING, exc.message, now
                        )
            return False
        async with self.sessions() as session, session.begin():
            segment, call = await self._locked_segment(session, segment_id)
            await self._apply(session, call, segment, outcomes, "late pause confirmed")
        return not any(o.state == ConfirmedState.RECORDING for o in outcomes)

    # ---- resume -----------------------------------------------------------------------

    async def _resume_until_confirmed(
        self,
        controller: RecordingController,
        provider_call_id: str,
        segment_id: uuid.UUID,
        closed_by: ClosedBy,
    ) -> SegmentOutcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.pause_timeout_ms / 1000
        first_round, attempt = True, 0
        while True:
            async with self.sessions() as session, session.begin():
                segment, call = await self._locked_segment(session, segment_id)
                if segment.state != _S.RESUMING.value:
                    return await self._outcome(session, segment)
                linked = {
                    link.recording_id
                    for link in await SegmentRepository(session).links_for_call(call.id)
                    if link.segment_id == segment.id
                }
                live = [
                    r
                    for r in await RecordingRepository(session).live_for_call(call.id)
                    if r.id in linked
                ]
                # A pause that timed out may still have landed: resume those too, once.
                resumable = {_R.PAUSED.value, _R.PAUSING.value, _R.RESUMING.value}
                if first_round:
                    resumable.add(_R.RECORDING.value)
                pending = [r for r in live if r.state in resumable]
                call_level = first_round and segment.call_level and not live
                if not pending and not call_level:
                    now = self.clock()
                    set_segment_state(
                        TransitionRepository(session),
                        segment,
                        _S.CLOSED,
                        f"{closed_by.value}: resumed",
                        now,
                    )
                    segment.closed_at, segment.closed_by, segment.next_resume_at = (
                        now,
                        closed_by.value,
                        None,
                    )
                    for exposure in await ExposureRepository(session).open_for_call(call.id):
                        if exposure.segment_id == segment.id:
                            exposure.ended_at = now
                    return await self._outcome(session, segment)
                target = await self._mark(
                    session,
                    segment,
                    [r for r in pending if r.state != _R.RECORDING.value],
                    _R.RESUMING,
                    "payment end",
                    extra=[r for r in pending if r.state == _R.RECORDING.value],
                )
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise _CommandFailed("resume not confirmed within the deadline")
                outcomes = await self._send(controller, "resume", target, remaining, None)
            except _CommandFailed as exc:
                retry_in = _RETRY_BACKOFF_S[min(attempt, len(_RETRY_BACKOFF_S) - 1)]
                if exc.retryable and deadline - loop.time() > retry_in:
                    attempt += 1
                    await asyncio.sleep(retry_in)
                    continue
                return await self._fail_resume(segment_id, exc.message)
            first_round = False
            async with self.sessions() as session, session.begin():
                segment, call = await self._locked_segment(session, segment_id)
                await self._apply(session, call, segment, outcomes, "resume confirmed")

    async def _fail_resume(self, segment_id: uuid.UUID, reason: str) -> SegmentOutcome:
        async with self.sessions() as session, session.begin():
            segment, call = await self._locked_segment(session, segment_id)
            if segment.state != _S.RESUMING.value:
                return await self._outcome(session, segment)
            now = self.clock()
            set_segment_state(TransitionRepository(session), segment, _S.RESUME_FAILED, reason, now)
            segment.last_error = reason[:500]
            segment.resume_attempts += 1
            segment.next_resume_at = now + timedelta(seconds=self.settings.resume_retry_interval_s)
            log.error(
                "resume not confirmed on a %s call: %s; retrying in the background",
                call.provider,
                reason,
            )
            return await self._outcome(session, segment)

    # ---- shared -----------------------------------------------------------------------

    def _controller(self, provider: str) -> RecordingController:
        controller = self.controllers.get(provider)
        if controller is not None:
            return controller
        # Fail closed either way: the IVR must read "not safe", whatever the misconfiguration.
        if provider in self.settings.enabled_providers:
            raise ProviderControlMissing(
                f"Recording control for {provider!r} is not configured: do not take card details.",
                safe_to_collect=False,
            )
        raise ProviderNotEnabled(f"Provider {provider!r} is not enabled.", safe_to_collect=False)

    def _answer_start(self, outcome: SegmentOutcome) -> SegmentOutcome:
        if outcome.state == _S.PAUSE_FAILED.value:
            raise PauseNotConfirmed(
                "Recording pause was not confirmed: do not take card details.",
                **outcome_body(outcome),
            )
        return outcome

    async def _locked_segment(
        self, session: AsyncSession, segment_id: uuid.UUID
    ) -> tuple[PaymentSegment, Call]:
        segment = await SegmentRepository(session).by_id(segment_id)
        assert segment is not None
        call = await CallRepository(session).by_id(segment.call_id)
        assert call is not None
        locked = await CallRepository(session).get(call.provider, call.provider_call_id, lock=True)
        assert locked is not None
        await session.refresh(segment)
        return segment, locked

    async def _mark(
        self,
        session: AsyncSession,
        segment: PaymentSegment,
        recordings: Sequence[Recording],
        state: RecordingState,
        cause: str,
        extra: Sequence[Recording] = (),
    ) -> ControlTarget:
        """Put ``recordings`` in the in-flight ``state`` and build the provider target."""
        now = self.clock()
        transitions = TransitionRepository(session)
        segments = SegmentRepository(session)
        for recording in recordings:
            set_recording_state(transitions, recording, state, cause, now)
        for recording in (*recordings, *extra):
            await segments.link_recording(segment.id, recording.id)
        refs = tuple(
            RecordingRef(r.id, r.provider_recording_id, r.provider_container_id)
            for r in (*recordings, *extra)
        )
        call = await CallRepository(session).by_id(segment.call_id)
        assert call is not None
        if not refs and state == _R.PAUSING:
            segment.call_level = True
        return ControlTarget(call.provider_call_id, refs)

    async def _send(
        self,
        controller: RecordingController,
        action: str,
        target: ControlTarget,
        timeout_s: float,
        behavior: PauseBehavior | None,
    ) -> list[ControlOutcome]:
        """One provider round trip, bounded by ``timeout_s``; typed failures become _CommandFailed."""
        outcome = "ok"
        try:
            if action == "pause":
                assert behavior is not None
                return await asyncio.wait_for(controller.pause(target, behavior), timeout_s)
            return await asyncio.wait_for(controller.resume(target), timeout_s)
        except RecordingGone:
            outcome = "gone"
            ids = [r.provider_recording_id for r in target.recordings] or [None]
            return [ControlOutcome(rid, ConfirmedState.GONE) for rid in ids]
        except TimeoutError as exc:
            outcome = "timeout"
            raise _CommandFailed(
                f"{action} timed out after {timeout_s:.2f}s", retryable=True
            ) from exc
        except ProviderUnavailable as exc:
            outcome = "unavailable"
            raise _CommandFailed(str(exc), retryable=True) from exc
        except ProviderRejected as exc:
            outcome = "rejected"
            raise _CommandFailed(str(exc)) from exc
        finally:
            self.metrics.pause_commands.inc(
                provider=controller.name, action=action, outcome=outcome
            )

    async def _apply(
        self,
        session: AsyncSession,
        call: Call,
        segment: PaymentSegment,
        outcomes: Sequence[ControlOutcome],
        cause: str,
    ) -> None:
        """Record what the provider confirmed."""
        now = self.clock()
        recordings = RecordingRepository(session)
        segments = SegmentRepository(session)
        transitions = TransitionRepository(session)
        by_provider_id = {r.provider_recording_id: r for r in await recordings.for_call(call.id)}
        open_exposures = await ExposureRepository(session).open_for_call(call.id)
        for outcome in outcomes:
            if outcome.provider_recording_id is None:
                continue  # a call-level answer: nothing per recording to record
            recording = by_provider_id.get(outcome.provider_recording_id)
            if recording is None:
                # The provider named a recording recgate had not heard of yet (Twilio.CURRENT).
                recording, _ = await recordings.get_or_create(
                    call.id, outcome.provider_recording_id, _R.PENDING.value, now
                )
                by_provider_id[recording.provider_recording_id] = recording
            if recording.state not in LIVE_RECORDING_STATES:
                continue
            link = await segments.link_recording(segment.id, recording.id)
            if outcome.state == ConfirmedState.PAUSED:
                set_recording_state(transitions, recording, _R.PAUSED, cause, now)
                link.paused_at = link.paused_at or now
                for exposure in open_exposures:
                    if (
                        exposure.recording_id == recording.id
                        and exposure.kind != ExposureKind.PAUSE_FAILED.value
                    ):
                        exposure.ended_at = now
            elif outcome.state == ConfirmedState.RECORDING:
                set_recording_state(transitions, recording, _R.RECORDING, cause, now)
                link.resumed_at = now
            else:
                recording.stopped_at = recording.stopped_at or now
                set_recording_state(
                    transitions, recording, _R.STOPPED, f"provider: {outcome.state.value}", now
                )

    async def _outcome(self, session: AsyncSession, segment: PaymentSegment) -> SegmentOutcome:
        recordings = await RecordingRepository(session).for_call(segment.call_id)
        return SegmentOutcome(
            segment_id=segment.id,
            state=segment.state,
            recordings=[
                RecordingStatus(r.id, r.provider_recording_id, r.state) for r in recordings
            ],
        )


def outcome_body(outcome: SegmentOutcome) -> dict[str, object]:
    """The JSON body the payment endpoints answer with."""
    return {
        "segment_id": str(outcome.segment_id),
        "state": outcome.state,
        "safe_to_collect": outcome.safe_to_collect,
        "recordings": [
            {"id": str(r.id), "provider_recording_id": r.provider_recording_id, "state": r.state}
            for r in outcome.recordings
        ],
    }
