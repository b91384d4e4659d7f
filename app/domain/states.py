"""Recording, payment-segment and call states, with the one transition table (SPEC §2).

Every state change in recgate goes through :func:`check_transition`: a transition that is
not in the table is a conflict, a repeated one is a no-op.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

_E = TypeVar("_E", bound=StrEnum)


class RecordingState(StrEnum):
    PENDING = "pending"
    RECORDING = "recording"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    STOPPED = "stopped"
    AVAILABLE = "available"
    DELETED = "deleted"
    FAILED = "failed"


class SegmentState(StrEnum):
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    CLOSED = "closed"
    PAUSE_FAILED = "pause_failed"
    RESUME_FAILED = "resume_failed"


class CallState(StrEnum):
    IN_PROGRESS = "in_progress"
    ENDED = "ended"


class ClosedBy(StrEnum):
    IVR = "ivr"
    CALL_END = "call_end"
    OPERATOR = "operator"


class ExposureKind(StrEnum):
    PAUSE_FAILED = "pause_failed"
    UNEXPECTED_RESUME = "unexpected_resume"
    LATE_RECORDING = "late_recording"


class PauseBehavior(StrEnum):
    SILENCE = "silence"
    SKIP = "skip"


_R = RecordingState
_S = SegmentState

# The PBX can report a later lifecycle stage before an earlier one (events arrive late or out
# of order), so forward jumps along the lifecycle are legal; going back from a terminal state
# never is.
_TERMINAL_EXITS = frozenset({_R.STOPPED, _R.AVAILABLE, _R.FAILED})
ALLOWED_RECORDING_TRANSITIONS: dict[RecordingState, frozenset[RecordingState]] = {
    _R.PENDING: frozenset({_R.RECORDING, _R.PAUSING, _R.PAUSED, *_TERMINAL_EXITS, _R.DELETED}),
    _R.RECORDING: frozenset({_R.PAUSING, _R.PAUSED, *_TERMINAL_EXITS}),
    # A payment can end (resume) while its pause is still in flight, and a new payment can
    # start while the last resume is unconfirmed: pausing and resuming lead to each other.
    _R.PAUSING: frozenset({_R.PAUSED, _R.RECORDING, _R.RESUMING, *_TERMINAL_EXITS}),
    _R.PAUSED: frozenset({_R.RESUMING, _R.RECORDING, *_TERMINAL_EXITS}),
    _R.RESUMING: frozenset({_R.RECORDING, _R.PAUSED, _R.PAUSING, *_TERMINAL_EXITS}),
    _R.STOPPED: frozenset({_R.AVAILABLE, _R.FAILED, _R.DELETED}),
    _R.AVAILABLE: frozenset({_R.DELETED}),
    # A PBX can report media after a failure report (e.g. a retried upload).
    _R.FAILED: frozenset({_R.AVAILABLE, _R.DELETED}),
    _R.DELETED: frozenset(),
}

ALLOWED_SEGMENT_TRANSITIONS: dict[SegmentState, frozenset[SegmentState]] = {
    _S.PAUSING: frozenset({_S.PAUSED, _S.PAUSE_FAILED, _S.RESUMING, _S.CLOSED}),
    # Back to pausing when a recording goes live during the payment (a late start, a resume
    # nobody asked for) or when the IVR retries after a failed pause.
    _S.PAUSED: frozenset({_S.PAUSING, _S.RESUMING, _S.CLOSED}),
    # Straight to paused when nothing is left to pause (the recordings have stopped since).
    _S.PAUSE_FAILED: frozenset({_S.PAUSING, _S.PAUSED, _S.RESUMING, _S.CLOSED}),
    _S.RESUMING: frozenset({_S.CLOSED, _S.RESUME_FAILED}),
    _S.RESUME_FAILED: frozenset({_S.RESUMING, _S.CLOSED}),
    _S.CLOSED: frozenset(),
}

ALLOWED_CALL_TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.IN_PROGRESS: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}

LIVE_RECORDING_STATES = frozenset({_R.PENDING, _R.RECORDING, _R.PAUSING, _R.PAUSED, _R.RESUMING})
# A change here needs a migration of the partial index of open segments (alembic 0009,
# ``is_open`` in app/storage/models.py): its queries would stop using it otherwise.
OPEN_SEGMENT_STATES = frozenset(
    {_S.PAUSING, _S.PAUSED, _S.PAUSE_FAILED, _S.RESUMING, _S.RESUME_FAILED}
)
# While a segment is in one of these, card details may be spoken: every recording must be paused.
PROTECTED_SEGMENT_STATES = frozenset({_S.PAUSING, _S.PAUSED, _S.PAUSE_FAILED})


class IllegalTransition(Exception):
    """A state change the transition table does not allow."""

    def __init__(self, entity: str, current: str, target: str) -> None:
        super().__init__(f"{entity} cannot go from {current} to {target}")
        self.entity = entity
        self.current = current
        self.target = target


def check_transition(
    entity: str, table: Mapping[_E, frozenset[_E]], current: _E, target: _E
) -> bool:
    """Return True when ``current → target`` is a change, False when it is a repeat.

    Raises :class:`IllegalTransition` when the table does not allow it.
    """
    if current == target:
        return False
    if target not in table[current]:
        raise IllegalTransition(entity, str(current), str(target))
    return True
