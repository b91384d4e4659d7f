"""Payment-gate decisions (SPEC §2, §3.1): what to send, what to answer, when to try again.

Pure functions over a snapshot of one call (:mod:`app.domain.snapshots`). The services layer
reads the snapshot in a short transaction, calls these, writes back the :class:`Changes` and
sends the :class:`Command` they return with no transaction open; then it records the
provider's answer with :func:`apply_pause` / :func:`apply_resume` (or :func:`fail_pause` /
:func:`fail_resume`) and asks :func:`plan` again, until the segment is where it should be.

One command per segment is in flight at a time. Whoever sends it holds the segment's claim
(``command_id``, until ``command_until``); anyone else waits for it or leaves it. A claim
whose holder died runs out, and the segment is then due (``due_at``) for the upkeep.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from app.domain.row_ids import new_id
from app.domain.snapshots import Changes, NewExposure, RecordingSnap, SegmentSnap
from app.domain.states import (
    PROTECTED_SEGMENT_STATES,
    ClosedBy,
    ExposureKind,
    PauseBehavior,
    RecordingState,
    SegmentState,
)

_R = RecordingState
_S = SegmentState

# Transient provider failures are retried within the one deadline after these pauses.
RETRY_BACKOFF_S = (0.05, 0.1, 0.2, 0.4)
# A recording found live during a payment the IVR was answered on is paused again in the
# background: after a failed attempt, the next one comes after these pauses.
ENFORCE_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
# How long a claim outlives its holder's deadline before someone else may take the segment.
LEASE_GRACE = timedelta(seconds=2)
_ERROR_MAX = 500


class ConfirmedState(StrEnum):
    """What a provider confirmed for one recording (or the whole call)."""

    PAUSED = "paused"
    RECORDING = "recording"
    # The provider says nothing is being recorded on the call (e.g. Twilio error 21220).
    NOT_RECORDING = "not_recording"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class ControlOutcome:
    """The provider's confirmed answer for one recording (or the call, when the id is None)."""

    provider_recording_id: str | None
    state: ConfirmedState


@dataclass(frozen=True, slots=True)
class Target:
    """A recording a command is for: recgate's id and the provider's."""

    recording_id: uuid.UUID
    provider_recording_id: str
    container_id: str | None


@dataclass(frozen=True, slots=True)
class Command:
    """One pause or resume to send for a segment; with no recordings, for the whole call."""

    action: Literal["pause", "resume"]
    segment_id: uuid.UUID
    command_id: uuid.UUID
    behavior: PauseBehavior
    recordings: tuple[Target, ...]

    @property
    def call_level(self) -> bool:
        return not self.recordings


def retry_backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (0-based) of a transient failure."""
    return RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]


def enforce_backoff(failures: int) -> timedelta:
    """How long after ``failures`` failed background pauses the next one is due."""
    return timedelta(seconds=ENFORCE_BACKOFF_S[min(max(failures, 1), len(ENFORCE_BACKOFF_S)) - 1])


def open_segment(
    call_id: uuid.UUID,
    behavior: PauseBehavior,
    reference: str | None,
    idempotency_key: str | None,
    changes: Changes,
) -> SegmentSnap:
    """A new payment segment, pausing."""
    segment = SegmentSnap(
        id=new_id(),
        call_id=call_id,
        state=_S.PAUSING,
        pause_behavior=behavior,
        opened_at=changes.now,
        reference=reference,
        idempotency_key=idempotency_key,
        state_changed_at=changes.now,
        created=True,
    )
    changes.segment_opened(segment, "ivr: payment start")
    return segment


def supersede(segment: SegmentSnap, changes: Changes) -> None:
    """Close a payment that is being ended (or whose resume failed) because a new one starts:
    the new segment pauses every recording again, so nothing of the old one is left to do."""
    changes.segment_state(segment, _S.CLOSED, "superseded by a new payment")
    segment.closed_at, segment.closed_by = changes.now, ClosedBy.IVR.value
    segment.due_at = segment.command_id = segment.command_until = None


def ending(segment: SegmentSnap) -> bool:
    """The IVR has ended this payment (its recordings are being, or failed to be, resumed)."""
    return segment.state in (_S.RESUMING, _S.RESUME_FAILED) or (
        segment.state in PROTECTED_SEGMENT_STATES and segment.resume_requested_at is not None
    )


def request_end(segment: SegmentSnap, outcome: str | None, changes: Changes) -> None:
    """Record that the IVR ended the payment; :func:`plan` then resumes the recordings."""
    if outcome:
        segment.outcome = outcome
    if segment.resume_requested_at is None:
        segment.resume_requested_at = changes.now
    changes.touch_segment(segment)


Phase = Literal["pause", "resume"]


def phase(segment: SegmentSnap) -> Phase | None:
    """What the segment needs next: its recordings paused (the payment is open), resumed
    (the IVR has ended it), or nothing (closed)."""
    if segment.state in PROTECTED_SEGMENT_STATES:
        return "resume" if segment.resume_requested_at is not None else "pause"
    if segment.state in (_S.RESUMING, _S.RESUME_FAILED):
        return "resume"
    return None


def _to_pause(
    segment: SegmentSnap, recordings: Sequence[RecordingSnap]
) -> tuple[list[RecordingSnap], bool]:
    """Live recordings not confirmed paused for this segment; and whether to ask the
    provider to pause whatever it records on the call. That is asked when no recording is
    live and this payment has commanded nothing yet (a recording may exist that recgate has
    not heard of), and asked again until it is answered (paused, or nothing recording)."""
    live = [r for r in recordings if r.live]
    pending = [r for r in live if not r.confirmed_paused]
    commanded = segment.call_level_sent_at is not None or any(
        r.link is not None and r.link.pause_sent_at is not None for r in recordings
    )
    unanswered = segment.call_level_sent_at is not None and segment.call_level_confirmed_at is None
    return pending, not live and (not commanded or unanswered)


def _to_resume(
    segment: SegmentSnap, recordings: Sequence[RecordingSnap]
) -> tuple[list[RecordingSnap], bool]:
    """Every live recording the segment touched, until the provider confirms it recording
    again (a pause that timed out may still have landed; resuming an unpaused recording is
    harmless); and whether a call-level pause that may have paused something needs undoing."""
    linked = [r for r in recordings if r.live and r.link is not None]
    targets = [r for r in linked if r.link is not None and r.link.resumed_at is None]
    call_level = (
        not linked
        and segment.call_level_sent_at is not None
        and segment.call_level_resumed_at is None
        and (segment.call_level or segment.call_level_confirmed_at is None)
    )
    return targets, call_level


def needs_command(segment: SegmentSnap, recordings: Sequence[RecordingSnap]) -> bool:
    """Whether :func:`plan` would send anything."""
    next_phase = phase(segment)
    if next_phase is None:
        return False
    targets, call_level = (_to_pause if next_phase == "pause" else _to_resume)(segment, recordings)
    return bool(targets) or call_level


def plan(
    segment: SegmentSnap,
    recordings: list[RecordingSnap],
    changes: Changes,
    *,
    lease_until: datetime,
) -> Command | None:
    """The next command that brings ``segment`` where it should be, or None when it is there.

    Moves states as the command goes out (recordings to pausing or resuming) and claims the
    segment until ``lease_until`` for whoever sends it; with nothing to send it settles the
    segment (paused, or closed) and releases the claim. While the payment is open every live
    recording must be confirmed paused for this segment; once the IVR has ended it, every
    recording the segment touched is resumed.
    """
    next_phase = phase(segment)
    if next_phase == "resume" and segment.state != _S.RESUMING:
        cause = "ivr: payment end" if segment.state != _S.RESUME_FAILED else "resume retry"
        changes.segment_state(segment, _S.RESUMING, cause)
    if next_phase == "pause":
        command = _plan_pause(segment, recordings, changes)
    elif next_phase == "resume":
        command = _plan_resume(segment, recordings, changes)
    else:
        command = None
    if command is None:
        release(segment, changes, due_at=None)
    else:
        segment.command_id, segment.command_until = command.command_id, lease_until
        # Should the sender die, the segment is due when its claim runs out.
        segment.due_at = lease_until
        changes.touch_segment(segment)
    return command


def release(segment: SegmentSnap, changes: Changes, *, due_at: datetime | None) -> None:
    """Give up the claim on the segment; the upkeep looks at it again at ``due_at``."""
    segment.command_id = segment.command_until = None
    segment.due_at = due_at
    changes.touch_segment(segment)


def _plan_pause(
    segment: SegmentSnap, recordings: Sequence[RecordingSnap], changes: Changes
) -> Command | None:
    pending, call_level = _to_pause(segment, recordings)
    if not pending and not call_level:
        changes.segment_state(segment, _S.PAUSED, "every recording confirmed paused")
        if segment.paused_at is None:
            segment.paused_at = changes.now
        segment.pause_attempts = 0
        changes.touch_segment(segment)
        return None
    if segment.state == _S.PAUSE_FAILED:
        changes.segment_state(segment, _S.PAUSING, "pause retry")
    elif segment.state == _S.PAUSED:
        changes.segment_state(segment, _S.PAUSING, "a recording is live during payment")
    for recording in pending:
        if recording.state != _R.PAUSED:
            changes.recording_state(recording, _R.PAUSING, "payment start")
        link = changes.touch_link(recording, segment)
        link.pause_sent_at, link.paused_at = changes.now, None
    if call_level:
        segment.call_level_sent_at = changes.now
    return Command(
        "pause",
        segment.id,
        uuid.uuid4(),
        segment.pause_behavior,
        () if call_level else _targets(pending),
    )


def _plan_resume(
    segment: SegmentSnap, recordings: Sequence[RecordingSnap], changes: Changes
) -> Command | None:
    targets, call_level = _to_resume(segment, recordings)
    if not targets and not call_level:
        changes.segment_state(segment, _S.CLOSED, f"{ClosedBy.IVR.value}: resumed")
        segment.closed_at, segment.closed_by = changes.now, ClosedBy.IVR.value
        # Every exposure quarantines its recording, or follows a failure on the segment.
        if segment.last_error is not None or any(r.quarantined for r in recordings):
            changes.segment_exposures_end.add(segment.id)
        changes.touch_segment(segment)
        return None
    for recording in targets:
        if recording.state in (_R.PAUSED, _R.PAUSING):
            changes.recording_state(recording, _R.RESUMING, "payment end")
    return Command(
        "resume",
        segment.id,
        uuid.uuid4(),
        segment.pause_behavior,
        () if call_level else _targets(targets),
    )


def _targets(recordings: Sequence[RecordingSnap]) -> tuple[Target, ...]:
    return tuple(Target(r.id, r.provider_recording_id, r.container_id) for r in recordings)


def apply_pause(
    segment: SegmentSnap,
    recordings: list[RecordingSnap],
    outcomes: Sequence[ControlOutcome],
    changes: Changes,
) -> None:
    """Record what the provider confirmed for a pause. A recording the provider names that
    recgate had not heard of (Twilio's current recording) is added, paused."""
    now = changes.now
    by_provider_id = {r.provider_recording_id: r for r in recordings}
    for outcome in outcomes:
        if outcome.provider_recording_id is None:
            if outcome.state in (ConfirmedState.PAUSED, ConfirmedState.NOT_RECORDING):
                segment.call_level_confirmed_at = now
                segment.call_level = segment.call_level or outcome.state == ConfirmedState.PAUSED
                changes.touch_segment(segment)
            continue
        recording = by_provider_id.get(outcome.provider_recording_id)
        if recording is None:
            recording = RecordingSnap(
                id=new_id(),
                call_id=segment.call_id,
                provider_recording_id=outcome.provider_recording_id,
                state=_R.PENDING,
                created=True,
            )
            recordings.append(recording)
            by_provider_id[recording.provider_recording_id] = recording
            changes.recording_state(recording, _R.PAUSING, "named by provider")
            changes.touch_link(recording, segment).pause_sent_at = segment.call_level_sent_at or now
        if not recording.live:
            continue
        if outcome.state == ConfirmedState.PAUSED:
            if recording.state not in (_R.PAUSING, _R.PAUSED):
                # A PBX report moved it while the command was in flight (a resume): this
                # confirmation may predate it, so it is paused again.
                continue
            changes.recording_state(recording, _R.PAUSED, "pause confirmed")
            recording.control_confirmed_at = now
            changes.touch_recording(recording)
            changes.touch_link(recording, segment).paused_at = now
            if recording.quarantined:
                changes.exposures_end_for.add(recording.id)
        elif outcome.state in (ConfirmedState.NOT_RECORDING, ConfirmedState.GONE):
            _stopped_by_provider(recording, outcome.state, changes)


def apply_resume(
    segment: SegmentSnap,
    recordings: Sequence[RecordingSnap],
    outcomes: Sequence[ControlOutcome],
    changes: Changes,
    *,
    call_level: bool = False,
) -> None:
    """Record what the provider confirmed for a resume. A call-level resume answered with
    nothing is the provider saying it had nothing paused to undo (ARI has no call level)."""
    now = changes.now
    if call_level and not outcomes:
        segment.call_level_resumed_at = now
        changes.touch_segment(segment)
    by_provider_id = {r.provider_recording_id: r for r in recordings}
    for outcome in outcomes:
        if outcome.provider_recording_id is None:
            if outcome.state in (ConfirmedState.RECORDING, ConfirmedState.NOT_RECORDING):
                segment.call_level_resumed_at = now
                changes.touch_segment(segment)
            continue
        recording = by_provider_id.get(outcome.provider_recording_id)
        if recording is None or not recording.live:
            continue
        if outcome.state == ConfirmedState.RECORDING:
            changes.recording_state(recording, _R.RECORDING, "resume confirmed")
            recording.control_confirmed_at = now
            changes.touch_recording(recording)
            changes.touch_link(recording, segment).resumed_at = now
        elif outcome.state in (ConfirmedState.NOT_RECORDING, ConfirmedState.GONE):
            _stopped_by_provider(recording, outcome.state, changes)
            changes.touch_link(recording, segment).resumed_at = now


def _stopped_by_provider(recording: RecordingSnap, state: ConfirmedState, changes: Changes) -> None:
    recording.stopped_at = recording.stopped_at or changes.now
    changes.recording_state(recording, _R.STOPPED, f"provider: {state.value}")
    changes.touch_recording(recording)


def fail_pause(
    segment: SegmentSnap,
    recordings: Sequence[RecordingSnap],
    reason: str,
    changes: Changes,
    *,
    already_exposed: set[uuid.UUID | None],
    keep_trying: bool,
) -> bool:
    """A pause not confirmed in time, or refused: fail closed.

    The segment is ``pause_failed``; every live recording not confirmed paused is quarantined
    with a ``pause_failed`` exposure (or the call, when none is known). With ``keep_trying``
    (a background re-pause), or when the IVR had been told safe before, another attempt is
    due after a backoff. Returns True when a call-wide exposure was added.
    """
    changes.segment_state(segment, _S.PAUSE_FAILED, reason[:255])
    segment.last_error = reason[:_ERROR_MAX]
    segment.pause_attempts += 1
    if segment.resume_requested_at is not None:
        due: datetime | None = changes.now  # the IVR has ended it: resume at once
    elif keep_trying or segment.paused_at is not None:
        due = changes.now + enforce_backoff(segment.pause_attempts)
    else:
        due = None
    release(segment, changes, due_at=due)
    unconfirmed = [r for r in recordings if r.live and not r.confirmed_paused]
    for recording in unconfirmed:
        if recording.state == _R.PAUSING:
            changes.recording_state(recording, _R.RECORDING, "pause not confirmed")
        recording.quarantined = True
        changes.touch_recording(recording)
    exposed: list[uuid.UUID | None] = [r.id for r in unconfirmed] or [None]
    for recording_id in exposed:
        if recording_id in already_exposed:
            continue
        changes.exposures.append(
            NewExposure(
                call_id=segment.call_id,
                recording_id=recording_id,
                segment_id=segment.id,
                kind=ExposureKind.PAUSE_FAILED,
                started_at=segment.opened_at,
                detail=reason[:_ERROR_MAX],
            )
        )
    return None in exposed and None not in already_exposed


def fail_resume(
    segment: SegmentSnap, reason: str, changes: Changes, *, retry_in: timedelta
) -> None:
    """A resume not confirmed: still paused, retried in the background after ``retry_in``."""
    changes.segment_state(segment, _S.RESUME_FAILED, reason[:255])
    segment.last_error = reason[:_ERROR_MAX]
    segment.resume_attempts += 1
    release(segment, changes, due_at=changes.now + retry_in)


# ---- PBX reports against recgate's own commands -------------------------------------------


def timestamp_precision(at: datetime) -> timedelta:
    """How exact a PBX's time is: one with no fraction of a second is taken as whole
    seconds (and may have been truncated)."""
    return timedelta(seconds=1) if at.microsecond == 0 else timedelta(milliseconds=1)


def provably_before(pbx_time: datetime, ours: datetime, skew: timedelta) -> bool:
    """True only when ``pbx_time`` (the PBX's clock) is before ``ours`` (recgate's) whatever
    the PBX clock's error: earlier by more than its precision plus the allowed ``skew``."""
    return pbx_time + timestamp_precision(pbx_time) + skew < ours
