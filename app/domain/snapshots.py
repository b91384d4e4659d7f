"""Snapshots of one call's rows, and the changes a decision makes to them.

The hot paths (webhook ingest, payment start and end) read what they need of one call in a
short transaction into these plain objects, let the pure decisions in
:mod:`app.domain.gate` and :mod:`app.domain.call_facts` change them, and write back only what
:class:`Changes` says changed, with a few Core statements. Every state change goes through
the transition table and is kept with its time and cause.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from app.domain.states import (
    ALLOWED_CALL_TRANSITIONS,
    ALLOWED_RECORDING_TRANSITIONS,
    ALLOWED_SEGMENT_TRANSITIONS,
    LIVE_RECORDING_STATES,
    PROTECTED_SEGMENT_STATES,
    CallState,
    ExposureKind,
    PauseBehavior,
    RecordingState,
    SegmentState,
    check_transition,
)


@dataclass(slots=True)
class CallSnap:
    id: uuid.UUID
    provider: str
    provider_call_id: str
    state: CallState
    service_area: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    direction: str | None = None
    agent_id: str | None = None
    agent_at: datetime | None = None
    service_area_at: datetime | None = None
    started_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    record_retention_until: datetime | None = None
    # A call-wide exposure (a pause that failed before any recording was known) exists.
    has_call_exposure: bool = False
    live_version: int = 0
    created: bool = False


@dataclass(slots=True)
class LinkSnap:
    """A recording's part in one payment segment: recgate's own pause and resume of it."""

    segment_id: uuid.UUID
    pause_sent_at: datetime | None = None
    paused_at: datetime | None = None
    resumed_at: datetime | None = None


@dataclass(slots=True)
class RecordingSnap:
    id: uuid.UUID
    call_id: uuid.UUID
    provider_recording_id: str
    state: RecordingState
    container_id: str | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    ended_at: datetime | None = None
    control_confirmed_at: datetime | None = None
    pbx_pause_event_at: datetime | None = None
    pbx_paused: bool | None = None
    duration_s: float | None = None
    media_url: str | None = None
    media_format: str | None = None
    media_sha256: str | None = None
    media_path: str | None = None
    quarantined: bool = False
    retention_until: datetime | None = None
    deleted_at: datetime | None = None
    created: bool = False
    # Its link to the segment being decided on; None when it has none yet.
    link: LinkSnap | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE_RECORDING_STATES

    @property
    def confirmed_paused(self) -> bool:
        """Paused, and the provider said so to recgate's own command for this segment: a PBX
        report alone is never enough."""
        return (
            self.state == RecordingState.PAUSED
            and self.link is not None
            and self.link.paused_at is not None
        )


@dataclass(slots=True)
class SegmentSnap:
    id: uuid.UUID
    call_id: uuid.UUID
    state: SegmentState
    pause_behavior: PauseBehavior
    opened_at: datetime
    reference: str | None = None
    idempotency_key: str | None = None
    state_changed_at: datetime | None = None
    paused_at: datetime | None = None
    closed_at: datetime | None = None
    closed_by: str | None = None
    outcome: str | None = None
    last_error: str | None = None
    # A command for "whatever records the call" (no recording known): when it went out, when
    # it was answered (paused or nothing recording), whether it paused, when it was resumed.
    call_level: bool = False
    call_level_sent_at: datetime | None = None
    call_level_confirmed_at: datetime | None = None
    call_level_resumed_at: datetime | None = None
    resume_requested_at: datetime | None = None
    pause_attempts: int = 0
    resume_attempts: int = 0
    # When the upkeep should look at the segment next (a retry, or a driver's lease running out).
    due_at: datetime | None = None
    # The command in flight: who drives the segment, and until when that claim holds.
    command_id: uuid.UUID | None = None
    command_until: datetime | None = None
    created: bool = False

    @property
    def protected(self) -> bool:
        """Card details may be spoken: every recording must be paused."""
        return self.state in PROTECTED_SEGMENT_STATES and self.resume_requested_at is None

    @property
    def answered(self) -> bool:
        """The IVR has had a final answer on this payment (safe, or pause failed): a recording
        found live from now on may have heard card details."""
        return self.paused_at is not None or self.state == SegmentState.PAUSE_FAILED

    def claimed(self, now: datetime) -> bool:
        """A driver (this replica or another) has a command in flight and its claim holds."""
        return (
            self.command_id is not None
            and self.command_until is not None
            and self.command_until > now
        )


@dataclass(frozen=True, slots=True)
class Transition:
    entity: str
    entity_id: uuid.UUID
    call_id: uuid.UUID
    from_state: str | None
    to_state: str
    cause: str
    at: datetime


@dataclass(frozen=True, slots=True)
class NewExposure:
    call_id: uuid.UUID
    recording_id: uuid.UUID | None
    segment_id: uuid.UUID | None
    kind: ExposureKind
    started_at: datetime
    detail: str


@dataclass
class Changes:
    """What a decision changed, for the storage layer to write in a few statements."""

    now: datetime
    transitions: list[Transition] = field(default_factory=list)
    calls: dict[uuid.UUID, CallSnap] = field(default_factory=dict)
    recordings: dict[uuid.UUID, RecordingSnap] = field(default_factory=dict)
    segments: dict[uuid.UUID, SegmentSnap] = field(default_factory=dict)
    # Links whose columns changed, by (segment id, recording id).
    links: dict[tuple[uuid.UUID, uuid.UUID], LinkSnap] = field(default_factory=dict)
    exposures: list[NewExposure] = field(default_factory=list)
    # Recordings whose open exposures (other than pause_failed) end now: recgate's pause of
    # them was confirmed.
    exposures_end_for: set[uuid.UUID] = field(default_factory=set)
    # Segments whose open exposures all end now (the payment is over).
    segment_exposures_end: set[uuid.UUID] = field(default_factory=set)
    # Calls that ended, and when: their exposures end then at the latest.
    end_call_exposures: dict[uuid.UUID, datetime] = field(default_factory=dict)
    # Calls whose retention deadlines must be worked out again (an end time or the service
    # area changed).
    deadlines_for: set[uuid.UUID] = field(default_factory=set)

    def touch_call(self, call: CallSnap) -> None:
        self.calls[call.id] = call

    def touch_recording(self, recording: RecordingSnap) -> None:
        self.recordings[recording.id] = recording

    def touch_link(self, recording: RecordingSnap, segment: SegmentSnap) -> LinkSnap:
        """The recording's link to ``segment`` (made if it has none), marked changed."""
        if recording.link is None:
            recording.link = LinkSnap(segment.id)
        assert recording.link.segment_id == segment.id, "snapshot linked to another segment"
        self.links[(segment.id, recording.id)] = recording.link
        return recording.link

    def touch_segment(self, segment: SegmentSnap) -> None:
        self.segments[segment.id] = segment

    def call_state(self, call: CallSnap, target: CallState, cause: str) -> bool:
        if not check_transition("call", ALLOWED_CALL_TRANSITIONS, call.state, target):
            return False
        self.transitions.append(
            Transition("call", call.id, call.id, call.state.value, target.value, cause, self.now)
        )
        call.state = target
        self.touch_call(call)
        return True

    def call_created(self, call: CallSnap, cause: str) -> None:
        self.transitions.append(
            Transition("call", call.id, call.id, None, call.state.value, cause, self.now)
        )

    def recording_state(self, recording: RecordingSnap, target: RecordingState, cause: str) -> bool:
        """Move ``recording`` to ``target`` through the transition table; False if it was
        there already. :class:`~app.domain.states.IllegalTransition` when not allowed."""
        if not check_transition(
            "recording", ALLOWED_RECORDING_TRANSITIONS, recording.state, target
        ):
            return False
        self.transitions.append(
            Transition(
                "recording",
                recording.id,
                recording.call_id,
                recording.state.value,
                target.value,
                cause,
                self.now,
            )
        )
        recording.state = target
        self.touch_recording(recording)
        return True

    def segment_state(self, segment: SegmentSnap, target: SegmentState, cause: str) -> bool:
        if not check_transition("segment", ALLOWED_SEGMENT_TRANSITIONS, segment.state, target):
            return False
        self.transitions.append(
            Transition(
                "segment",
                segment.id,
                segment.call_id,
                segment.state.value,
                target.value,
                cause,
                self.now,
            )
        )
        segment.state = target
        segment.state_changed_at = self.now
        self.touch_segment(segment)
        return True

    def segment_opened(self, segment: SegmentSnap, cause: str) -> None:
        self.transitions.append(
            Transition(
                "segment", segment.id, segment.call_id, None, segment.state.value, cause, self.now
            )
        )
        self.touch_segment(segment)
