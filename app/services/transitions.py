"""The one guarded way to change a call's, recording's or segment's state.

Each change is checked against the domain transition table and stored with its time and cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from app.domain.states import (
    ALLOWED_CALL_TRANSITIONS,
    ALLOWED_RECORDING_TRANSITIONS,
    ALLOWED_SEGMENT_TRANSITIONS,
    CallState,
    IllegalTransition,
    RecordingState,
    SegmentState,
    check_transition,
)
from app.errors import IllegalStateTransition
from app.storage.models import Call, PaymentSegment, Recording
from app.storage.repositories import TransitionRepository

_E = TypeVar("_E", bound=StrEnum)


def _guard(entity: str, table: Mapping[_E, frozenset[_E]], current: _E, target: _E) -> bool:
    try:
        return check_transition(entity, table, current, target)
    except IllegalTransition as exc:
        raise IllegalStateTransition(
            str(exc), entity=entity, current=exc.current, target=exc.target
        ) from exc


def set_recording_state(
    transitions: TransitionRepository,
    recording: Recording,
    target: RecordingState,
    cause: str,
    now: datetime,
) -> bool:
    """Move ``recording`` to ``target``; False when it already was there."""
    if not _guard(
        "recording", ALLOWED_RECORDING_TRANSITIONS, RecordingState(recording.state), target
    ):
        return False
    transitions.add(
        entity="recording",
        entity_id=recording.id,
        call_id=recording.call_id,
        from_state=recording.state,
        to_state=target.value,
        cause=cause,
        at=now,
    )
    recording.state = target.value
    recording.updated_at = now
    return True


def set_segment_state(
    transitions: TransitionRepository,
    segment: PaymentSegment,
    target: SegmentState,
    cause: str,
    now: datetime,
) -> bool:
    """Move ``segment`` to ``target``; False when it already was there."""
    if not _guard("segment", ALLOWED_SEGMENT_TRANSITIONS, SegmentState(segment.state), target):
        return False
    transitions.add(
        entity="segment",
        entity_id=segment.id,
        call_id=segment.call_id,
        from_state=segment.state,
        to_state=target.value,
        cause=cause,
        at=now,
    )
    segment.state = target.value
    segment.state_changed_at = now
    return True


def set_call_state(
    transitions: TransitionRepository, call: Call, target: CallState, cause: str, now: datetime
) -> bool:
    """Move ``call`` to ``target``; False when it already was there."""
    if not _guard("call", ALLOWED_CALL_TRANSITIONS, CallState(call.state), target):
        return False
    transitions.add(
        entity="call",
        entity_id=call.id,
        call_id=call.id,
        from_state=call.state,
        to_state=target.value,
        cause=cause,
        at=now,
    )
    call.state = target.value
    call.updated_at = now
    return True


def record_call_created(
    transitions: TransitionRepository, call: Call, cause: str, now: datetime
) -> None:
    """Store the first transition of a call recgate has just learned of."""
    transitions.add(
        entity="call",
        entity_id=call.id,
        call_id=call.id,
        from_state=None,
        to_state=call.state,
        cause=cause,
        at=now,
    )
