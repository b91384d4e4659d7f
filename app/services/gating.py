"""Payment gating (SPEC §3.1): pause every live recording before card details are taken.

``safe_to_collect`` is answered only while every live recording of the call has been
confirmed paused by the provider *for this payment segment*. Anything else (a timeout, a
refusal, an outage past the deadline, a recording that goes live mid-payment and cannot be
paused) fails closed: the segment is ``pause_failed``, the unconfirmed recordings are
quarantined with an exposure, and the IVR gets a 503. No database transaction is held open
across a provider round trip; the call's lock (across replicas on PostgreSQL) is.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
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
    PaymentNotOpen,
    ProviderControlMissing,
    ProviderNotEnabled,
    ResumeNotConfirmed,
)
from app.services.concurrency import BackgroundTasks, CallBusy, CallLocks
from app.services.metrics import Metrics
from app.services.transitions import (
    record_call_created,
    set_recording_state,
    set_segment_state,
)
from app.storage.models import Call, Exposure, PaymentSegment, Recording, SegmentRecording
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
_ENFORCE_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
# A segment left pausing or resuming this long past the deadline has nobody working on it.
_STUCK_GRACE_S = 5.0


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
        # A segment is only ever left in "paused" when every live recording was confirmed.
        return self.state == _S.PAUSED.value


class _CommandFailed(Exception):
    """A pause or resume that was not confirmed; the message is safe to store and show."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


def _confirmed(recording: Recording, link: SegmentRecording | None) -> bool:
    """Paused, and the provider said so for this segment (a PBX report alone is not enough)."""
    return recording.state == _R.PAUSED.value and link is not None and link.paused_at is not None


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

    @property
    def _timeout_s(self) -> float:
        return self.settings.pause_timeout_ms / 1000

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
        """Open a payment segment and pause every recording; return once all are confirmed.

        Raises :class:`PauseNotConfirmed` (503, ``safe_to_collect: false``) when they are not
        within ``RECGATE_PAUSE_TIMEOUT_MS`` of the request, and :class:`PaymentNotOpen` (409)
        when an idempotency key replays a payment that has ended.
        """
        controller = self._controller(provider)
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + self._timeout_s
        try:
            async with self.locks.hold(provider, provider_call_id, self._timeout_s):
                segment_id, behavior, answer = await self._open_segment(
                    provider, provider_call_id, reference, behavior, idempotency_key
                )
                # Only a start that commanded the provider measures the pause latency; a
                # repeated (idempotent) start is answered from the stored segment.
                commanded = answer is None
                if answer is None:
                    answer = await self._pause_until_confirmed(
                        controller, segment_id, behavior, deadline
                    )
        except CallBusy as exc:
            raise PauseNotConfirmed(
                "Another operation on this call did not finish in time: do not take card details.",
                state=_S.PAUSE_FAILED.value,
                safe_to_collect=False,
            ) from exc
        if answer.safe_to_collect and commanded:
            self.metrics.pause_confirm_seconds.observe(loop.time() - began)
        return self._answer_start(answer)

    async def end(
        self, provider: str, provider_call_id: str, *, outcome: str | None = None
    ) -> SegmentOutcome:
        """Close the payment segment and resume the recordings it paused.

        Raises :class:`NoOpenPayment` (409) when no segment was ever opened and
        :class:`ResumeNotConfirmed` (502) when a resume is not confirmed; retries then go on in
        the background.
        """
        controller = self._controller(provider)
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        try:
            async with self.locks.hold(provider, provider_call_id, self._timeout_s):
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
                    segment.outcome = outcome or segment.outcome
                    segment.resume_requested_at = segment.resume_requested_at or now
                    # A segment already resuming under this lock was left by a crashed attempt.
                    set_segment_state(
                        TransitionRepository(session), segment, _S.RESUMING, "ivr: payment end", now
                    )
                    segment_id = segment.id
                result = await self._resume_until_confirmed(
                    controller, segment_id, ClosedBy.IVR, deadline
                )
        except CallBusy as exc:
            raise ResumeNotConfirmed(
                "Another operation on this call did not finish in time; try again.",
                safe_to_collect=False,
            ) from exc
        if result.state != _S.CLOSED.value:
            raise ResumeNotConfirmed(
                "Recording resume was not confirmed; recgate keeps retrying.",
                **outcome_body(result),
            )
        return result

    async def enforce_pause(self, provider: str, provider_call_id: str) -> None:
        """Keep every recording paused while a payment is open (background).

        Runs after a recording goes live mid-payment (a late start, a resume nobody asked
        for). Retries with backoff while the segment stays open, up to ``RECGATE_MAX_PAUSE_S``.
        """
        controller = self.controllers.get(provider)
        if controller is None:
            return
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.settings.max_pause_s
        attempt = 0
        while loop.time() < give_up:
            try:
                async with self.locks.hold(provider, provider_call_id, self.settings.max_pause_s):
                    segment_id, behavior = await self._segment_needing_pause(
                        provider, provider_call_id, retry=attempt > 0
                    )
                    if segment_id is None:
                        return
                    deadline = loop.time() + self._timeout_s
                    result = await self._pause_until_confirmed(
                        controller, segment_id, behavior, deadline
                    )
            except CallBusy:
                result = None
            if result is not None and result.state != _S.PAUSE_FAILED.value:
                return
            await asyncio.sleep(_ENFORCE_BACKOFF_S[min(attempt, len(_ENFORCE_BACKOFF_S) - 1)])
            attempt += 1

    def spawn_enforce_pause(self, provider: str, provider_call_id: str) -> None:
        self.tasks.spawn(
            self.enforce_pause(provider, provider_call_id), name=f"enforce-pause:{provider}"
        )

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
                if segment is None or segment.state not in (
                    _S.RESUME_FAILED.value,
                    _S.RESUMING.value,
                ):
                    return
                set_segment_state(
                    TransitionRepository(session),
                    segment,
                    _S.RESUMING,
                    "background resume retry",
                    self.clock(),
                )
                segment_id = segment.id
            deadline = asyncio.get_running_loop().time() + self._timeout_s
            await self._resume_until_confirmed(controller, segment_id, ClosedBy.IVR, deadline)

    async def retry_due_resumes(self) -> int:
        async with self.sessions() as session:
            due = await SegmentRepository(session).resume_due(self.clock())
        for provider, call_id in due:
            await self.retry_resume(provider, call_id)
        return len(due)

    async def recover_stuck_segments(self) -> int:
        """Finish segments left pausing or resuming by a crashed or cancelled attempt."""
        grace = timedelta(seconds=2 * self._timeout_s + _STUCK_GRACE_S)
        async with self.sessions() as session:
            stuck = await SegmentRepository(session).stuck(self.clock() - grace)
        for provider, call_id in stuck:
            await self.enforce_pause(provider, call_id)
            await self.retry_resume(provider, call_id)
        return len(stuck)

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

    # ---- opening ----------------------------------------------------------------------

    async def _open_segment(
        self,
        provider: str,
        provider_call_id: str,
        reference: str | None,
        behavior: PauseBehavior,
        idempotency_key: str | None,
    ) -> tuple[uuid.UUID, PauseBehavior, SegmentOutcome | None]:
        """The segment to pause for this start, and the answer when nothing is to be sent."""
        async with self.sessions() as session, session.begin():
            now = self.clock()
            transitions = TransitionRepository(session)
            call, created = await CallRepository(session).get_or_create_locked(
                provider, provider_call_id, now
            )
            if created:
                record_call_created(transitions, call, "ivr: payment start", now)
            segments = SegmentRepository(session)
            key = idempotency_key and scrub_text(idempotency_key)
            replayed = key and await segments.by_idempotency_key(call.id, key)
            if replayed and replayed.state not in PROTECTED_SEGMENT_STATES:
                # The same request again after its payment ended: say so, never "safe".
                return replayed.id, behavior, await self._outcome(session, replayed)
            if call.state == CallState.ENDED.value:
                raise CallEnded("The call has ended; no payment can be taken on it.")
            segment = replayed or await segments.open_for_call(call.id)
            if segment is not None and segment.state == _S.RESUME_FAILED.value:
                # A new payment on a call whose last resume is unconfirmed: the new segment
                # pauses everything again, so the old one is done with.
                set_segment_state(
                    transitions, segment, _S.CLOSED, "superseded by a new payment", now
                )
                segment.closed_at, segment.closed_by = now, ClosedBy.IVR.value
                segment.next_resume_at = None
                segment = None
            if segment is not None and segment.state == _S.RESUMING.value:
                raise Conflict("The previous payment on this call is still being ended.")
            if segment is None:
                segment = PaymentSegment(
                    id=uuid.uuid4(),
                    call_id=call.id,
                    state=_S.PAUSING.value,
                    reference=reference and scrub_text(reference),
                    idempotency_key=key or None,
                    pause_behavior=behavior.value,
                    opened_at=now,
                    state_changed_at=now,
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
            elif segment.state == _S.PAUSED.value:
                if await self._all_confirmed(session, call, segment):
                    return segment.id, behavior, await self._outcome(session, segment)
                set_segment_state(
                    transitions, segment, _S.PAUSING, "a recording is live during payment", now
                )
            elif segment.state == _S.PAUSE_FAILED.value:
                set_segment_state(transitions, segment, _S.PAUSING, "ivr: payment start again", now)
            return segment.id, PauseBehavior(segment.pause_behavior), None

    async def _segment_needing_pause(
        self, provider: str, provider_call_id: str, *, retry: bool
    ) -> tuple[uuid.UUID | None, PauseBehavior]:
        async with self.sessions() as session, session.begin():
            call = await CallRepository(session).get(provider, provider_call_id, lock=True)
            segment = (
                None if call is None else await SegmentRepository(session).open_for_call(call.id)
            )
            if call is None or segment is None or segment.state not in PROTECTED_SEGMENT_STATES:
                return None, PauseBehavior.SILENCE
            behavior = PauseBehavior(segment.pause_behavior)
            if (
                await self._all_confirmed(session, call, segment)
                and segment.state != _S.PAUSING.value
            ):
                return None, behavior
            if segment.state != _S.PAUSING.value:
                cause = "background pause retry" if retry else "a recording is live during payment"
                set_segment_state(
                    TransitionRepository(session), segment, _S.PAUSING, cause, self.clock()
                )
            return segment.id, behavior

    async def _all_confirmed(
        self, session: AsyncSession, call: Call, segment: PaymentSegment
    ) -> bool:
        links = await SegmentRepository(session).links_for_segment(segment.id)
        live = await RecordingRepository(session).live_for_call(call.id)
        return all(_confirmed(r, links.get(r.id)) for r in live)

    # ---- pause ------------------------------------------------------------------------

    async def _pause_until_confirmed(
        self,
        controller: RecordingController,
        segment_id: uuid.UUID,
        behavior: PauseBehavior,
        deadline: float,
    ) -> SegmentOutcome:
        async def step(
            session: AsyncSession, segment: PaymentSegment, call: Call, first_round: bool
        ) -> ControlTarget | SegmentOutcome:
            if segment.state != _S.PAUSING.value:
                return await self._outcome(session, segment)
            links = await SegmentRepository(session).links_for_segment(segment.id)
            live = await RecordingRepository(session).live_for_call(call.id)
            pending = [r for r in live if not _confirmed(r, links.get(r.id))]
            if not pending and not (first_round and not live):
                now = self.clock()
                set_segment_state(
                    TransitionRepository(session),
                    segment,
                    _S.PAUSED,
                    "every recording confirmed paused",
                    now,
                )
                segment.paused_at = segment.paused_at or now
                return await self._outcome(session, segment)
            return await self._mark_pausing(session, call, segment, pending)

        return await self._until_confirmed(
            controller,
            "pause",
            segment_id,
            deadline,
            behavior,
            step,
            self._apply_pause,
            self._fail_pause,
        )

    async def _until_confirmed(
        self,
        controller: RecordingController,
        action: str,
        segment_id: uuid.UUID,
        deadline: float,
        behavior: PauseBehavior | None,
        step: Callable[
            [AsyncSession, PaymentSegment, Call, bool], Awaitable[ControlTarget | SegmentOutcome]
        ],
        apply: Callable[
            [AsyncSession, Call, PaymentSegment, Sequence[ControlOutcome]], Awaitable[None]
        ],
        fail: Callable[[uuid.UUID, str], Awaitable[SegmentOutcome]],
    ) -> SegmentOutcome:
        """Command, apply what was confirmed, repeat until ``step`` has an answer.

        Each round: ``step`` (in a transaction) returns the answer or what to command; the
        command goes out with no transaction open; transient failures are retried with backoff
        while the deadline allows; ``fail`` records a command that was not confirmed in time.
        """
        loop = asyncio.get_running_loop()
        first_round, attempt = True, 0
        while True:
            async with self.sessions() as session, session.begin():
                segment, call = await self._locked_segment(session, segment_id)
                decision = await step(session, segment, call, first_round)
            if isinstance(decision, SegmentOutcome):
                return decision
            try:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _CommandFailed(f"{action} not confirmed within the deadline")
                outcomes = await self._send(controller, action, decision, remaining, behavior)
            except _CommandFailed as exc:
                retry_in = _RETRY_BACKOFF_S[min(attempt, len(_RETRY_BACKOFF_S) - 1)]
                if exc.retryable and deadline - loop.time() > retry_in:
                    attempt += 1
                    await asyncio.sleep(retry_in)
                    continue
                return await fail(segment_id, exc.message)
            first_round = False
            async with self.sessions() as session, session.begin():
                segment, call = await self._locked_segment(session, segment_id)
                await apply(session, call, segment, outcomes)

    async def _mark_pausing(
        self,
        session: AsyncSession,
        call: Call,
        segment: PaymentSegment,
        pending: Sequence[Recording],
    ) -> ControlTarget:
        """Put ``pending`` in ``pausing``, link them to the segment, build the provider target."""
        now = self.clock()
        transitions = TransitionRepository(session)
        segments = SegmentRepository(session)
        for recording in pending:
            if recording.state != _R.PAUSED.value:
                set_recording_state(transitions, recording, _R.PAUSING, "payment start", now)
            link = await segments.link_recording(segment.id, recording.id)
            link.paused_at = None
        if not pending:
            segment.call_level_sent_at = segment.call_level_sent_at or now
        return ControlTarget(
            call.provider_call_id,
            tuple(
                RecordingRef(r.id, r.provider_recording_id, r.provider_container_id)
                for r in pending
            ),
        )

    async def _apply_pause(
        self,
        session: AsyncSession,
        call: Call,
        segment: PaymentSegment,
        outcomes: Sequence[ControlOutcome],
    ) -> None:
        """Record what the provider confirmed for a pause."""
        now = self.clock()
        recordings = RecordingRepository(session)
        segments = SegmentRepository(session)
        transitions = TransitionRepository(session)
        by_provider_id = {r.provider_recording_id: r for r in await recordings.for_call(call.id)}
        open_exposures = await ExposureRepository(session).open_for_call(call.id)
        for outcome in outcomes:
            if outcome.provider_recording_id is None:
                if outcome.state == ConfirmedState.PAUSED:
                    segment.call_level = True
                continue
            recording = by_provider_id.get(outcome.provider_recording_id)
            if recording is None:
                # The provider named a recording recgate had not heard of (Twilio.CURRENT).
                recording, _ = await recordings.get_or_create(
                    call.id, outcome.provider_recording_id, _R.PENDING.value, now
                )
                by_provider_id[recording.provider_recording_id] = recording
                set_recording_state(transitions, recording, _R.PAUSING, "named by provider", now)
            if recording.state not in LIVE_RECORDING_STATES:
                continue
            link = await segments.link_recording(segment.id, recording.id)
            if outcome.state == ConfirmedState.PAUSED:
                if recording.state not in (_R.PAUSING.value, _R.PAUSED.value):
                    # A PBX report moved it while the command was in flight (e.g. a resume):
                    # this confirmation may predate it, so the next round pauses it again.
                    continue
                set_recording_state(transitions, recording, _R.PAUSED, "pause confirmed", now)
                recording.control_confirmed_at = now
                link.paused_at = now
                for exposure in open_exposures:
                    if (
                        exposure.recording_id == recording.id
                        and exposure.kind != ExposureKind.PAUSE_FAILED.value
                    ):
                        exposure.ended_at = now
            elif outcome.state in (ConfirmedState.NOT_RECORDING, ConfirmedState.GONE):
                recording.stopped_at = recording.stopped_at or now
                set_recording_state(
                    transitions, recording, _R.STOPPED, f"provider: {outcome.state.value}", now
                )

    async def _fail_pause(self, segment_id: uuid.UUID, reason: str) -> SegmentOutcome:
        async with self.sessions() as session, session.begin():
            segment, call = await self._locked_segment(session, segment_id)
            if segment.state != _S.PAUSING.value:
                return await self._outcome(session, segment)
            now = self.clock()
            transitions = TransitionRepository(session)
            set_segment_state(transitions, segment, _S.PAUSE_FAILED, reason, now)
            segment.last_error = reason[:500]
            links = await SegmentRepository(session).links_for_segment(segment.id)
            live = await RecordingRepository(session).live_for_call(call.id)
            unconfirmed = [r for r in live if not _confirmed(r, links.get(r.id))]
            for recording in unconfirmed:
                if recording.state == _R.PAUSING.value:
                    set_recording_state(
                        transitions, recording, _R.RECORDING, "pause not confirmed", now
                    )
                recording.quarantined = True
            already = {
                e.recording_id
                for e in await ExposureRepository(session).open_for_call(call.id)
                if e.segment_id == segment.id and e.kind == ExposureKind.PAUSE_FAILED.value
            }
            recording_ids: list[uuid.UUID | None] = [r.id for r in unconfirmed] or [None]
            for recording_id in recording_ids:
                if recording_id in already:
                    continue
                ExposureRepository(session).add(
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

    # ---- resume -----------------------------------------------------------------------

    async def _resume_until_confirmed(
        self,
        controller: RecordingController,
        segment_id: uuid.UUID,
        closed_by: ClosedBy,
        deadline: float,
    ) -> SegmentOutcome:
        async def step(
            session: AsyncSession, segment: PaymentSegment, call: Call, first_round: bool
        ) -> ControlTarget | SegmentOutcome:
            if segment.state != _S.RESUMING.value:
                return await self._outcome(session, segment)
            links = await SegmentRepository(session).links_for_segment(segment.id)
            linked = [
                r
                for r in await RecordingRepository(session).live_for_call(call.id)
                if r.id in links
            ]
            # A pause that timed out may still have landed: resume those too, once.
            resumable = {_R.PAUSED.value, _R.PAUSING.value, _R.RESUMING.value}
            if first_round:
                resumable.add(_R.RECORDING.value)
            pending = [r for r in linked if r.state in resumable]
            call_level = first_round and segment.call_level_sent_at is not None and not linked
            now = self.clock()
            if not pending and not call_level:
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
            transitions = TransitionRepository(session)
            for recording in pending:
                if recording.state != _R.RECORDING.value:
                    set_recording_state(transitions, recording, _R.RESUMING, "payment end", now)
            return ControlTarget(
                call.provider_call_id,
                tuple(
                    RecordingRef(r.id, r.provider_recording_id, r.provider_container_id)
                    for r in pending
                ),
            )

        return await self._until_confirmed(
            controller,
            "resume",
            segment_id,
            deadline,
            None,
            step,
            self._apply_resume,
            self._fail_resume,
        )

    async def _apply_resume(
        self,
        session: AsyncSession,
        call: Call,
        segment: PaymentSegment,
        outcomes: Sequence[ControlOutcome],
    ) -> None:
        now = self.clock()
        transitions = TransitionRepository(session)
        segments = SegmentRepository(session)
        by_provider_id = {
            r.provider_recording_id: r for r in await RecordingRepository(session).for_call(call.id)
        }
        for outcome in outcomes:
            recording = by_provider_id.get(outcome.provider_recording_id or "")
            if recording is None or recording.state not in LIVE_RECORDING_STATES:
                continue
            if outcome.state == ConfirmedState.RECORDING:
                set_recording_state(transitions, recording, _R.RECORDING, "resume confirmed", now)
                recording.control_confirmed_at = now
                link = await segments.link_recording(segment.id, recording.id)
                link.resumed_at = now
            elif outcome.state in (ConfirmedState.NOT_RECORDING, ConfirmedState.GONE):
                recording.stopped_at = recording.stopped_at or now
                set_recording_state(
                    transitions, recording, _R.STOPPED, f"provider: {outcome.state.value}", now
                )

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
        if outcome.state == _S.PAUSED.value:
            return outcome
        if outcome.state in (_S.PAUSE_FAILED.value, _S.PAUSING.value):
            raise PauseNotConfirmed(
                "Recording pause was not confirmed: do not take card details.",
                **outcome_body(outcome),
            )
        raise PaymentNotOpen(
            "This payment has already ended: do not take card details.", **outcome_body(outcome)
        )

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
