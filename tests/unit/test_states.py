"""The one transition table (SPEC §2): legal steps change state, repeats are no-ops, the rest
is a conflict."""

from __future__ import annotations

from enum import StrEnum
from itertools import pairwise
from typing import Any

import pytest

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

R = RecordingState
S = SegmentState

Table = dict[Any, frozenset[Any]]

TABLES: list[tuple[str, type[StrEnum], Table]] = [
    ("recording", RecordingState, ALLOWED_RECORDING_TRANSITIONS),
    ("segment", SegmentState, ALLOWED_SEGMENT_TRANSITIONS),
    ("call", CallState, ALLOWED_CALL_TRANSITIONS),
]


def walk(entity: str, table: Table, path: list[Any]) -> None:
    for current, target in pairwise(path):
        try:
            changed = check_transition(entity, table, current, target)
        except IllegalTransition as exc:
            pytest.fail(
                f"{entity} step {current} → {target} on {[str(s) for s in path]} refused: {exc}"
            )
        assert changed is True, f"{entity} step {current} → {target} should be a change"


# ---- check_transition -----------------------------------------------------------------------


def test_allowed_transition_returns_true() -> None:
    assert (
        check_transition("recording", ALLOWED_RECORDING_TRANSITIONS, R.RECORDING, R.PAUSING) is True
    )
    assert check_transition("segment", ALLOWED_SEGMENT_TRANSITIONS, S.PAUSING, S.PAUSED) is True
    assert (
        check_transition("call", ALLOWED_CALL_TRANSITIONS, CallState.IN_PROGRESS, CallState.ENDED)
        is True
    )


@pytest.mark.parametrize(("entity", "enum", "table"), TABLES, ids=[t[0] for t in TABLES])
def test_repeating_the_current_state_is_a_no_op_for_every_state(
    entity: str, enum: type[StrEnum], table: Table
) -> None:
    for state in enum:
        assert check_transition(entity, table, state, state) is False, (
            f"{entity} {state} → {state} should be a repeat (False), not a change or an error"
        )


@pytest.mark.parametrize(
    ("entity", "table", "current", "target"),
    [
        ("recording", ALLOWED_RECORDING_TRANSITIONS, R.DELETED, R.RECORDING),
        ("recording", ALLOWED_RECORDING_TRANSITIONS, R.DELETED, R.AVAILABLE),
        ("recording", ALLOWED_RECORDING_TRANSITIONS, R.AVAILABLE, R.RECORDING),
        ("recording", ALLOWED_RECORDING_TRANSITIONS, R.AVAILABLE, R.STOPPED),
        ("recording", ALLOWED_RECORDING_TRANSITIONS, R.STOPPED, R.RECORDING),
        ("recording", ALLOWED_RECORDING_TRANSITIONS, R.STOPPED, R.PAUSED),
        ("recording", ALLOWED_RECORDING_TRANSITIONS, R.FAILED, R.RECORDING),
        ("recording", ALLOWED_RECORDING_TRANSITIONS, R.RECORDING, R.PENDING),
        ("segment", ALLOWED_SEGMENT_TRANSITIONS, S.CLOSED, S.PAUSED),
        ("segment", ALLOWED_SEGMENT_TRANSITIONS, S.CLOSED, S.PAUSING),
        ("segment", ALLOWED_SEGMENT_TRANSITIONS, S.CLOSED, S.RESUMING),
        ("segment", ALLOWED_SEGMENT_TRANSITIONS, S.RESUMING, S.PAUSED),
        ("call", ALLOWED_CALL_TRANSITIONS, CallState.ENDED, CallState.IN_PROGRESS),
    ],
    ids=lambda v: str(v) if isinstance(v, StrEnum | str) else "",
)
def test_forbidden_transition_raises_illegal_transition(
    entity: str, table: Table, current: StrEnum, target: StrEnum
) -> None:
    with pytest.raises(IllegalTransition) as caught:
        check_transition(entity, table, current, target)
    error = caught.value
    assert (error.entity, error.current, error.target) == (entity, str(current), str(target)), (
        "IllegalTransition must name the entity and both states for the 409 problem"
    )
    assert str(current) in str(error) and str(target) in str(error), f"unhelpful message: {error}"


# ---- the tables themselves ------------------------------------------------------------------


@pytest.mark.parametrize(("entity", "enum", "table"), TABLES, ids=[t[0] for t in TABLES])
def test_every_state_is_a_key_of_its_table(entity: str, enum: type[StrEnum], table: Table) -> None:
    missing = set(enum) - set(table)
    assert not missing, f"{entity} states missing from the transition table: {sorted(missing)}"
    extra = set(table) - set(enum)
    assert not extra, f"{entity} table has keys that are not {enum.__name__} members: {extra}"


@pytest.mark.parametrize(("entity", "enum", "table"), TABLES, ids=[t[0] for t in TABLES])
def test_every_target_is_a_state_of_the_same_kind_and_not_itself(
    entity: str, enum: type[StrEnum], table: Table
) -> None:
    for current, targets in table.items():
        assert all(isinstance(t, enum) for t in targets), (
            f"{entity} {current} lists a foreign target"
        )
        assert current not in targets, f"{entity} {current} lists itself: a repeat is not a change"


def test_deleted_recording_has_no_exits() -> None:
    assert ALLOWED_RECORDING_TRANSITIONS[R.DELETED] == frozenset(), (
        "a deleted recording must stay deleted"
    )
    for target in R:
        if target is not R.DELETED:
            with pytest.raises(IllegalTransition):
                check_transition("recording", ALLOWED_RECORDING_TRANSITIONS, R.DELETED, target)


def test_closed_segment_and_ended_call_have_no_exits() -> None:
    assert ALLOWED_SEGMENT_TRANSITIONS[S.CLOSED] == frozenset(), "a closed segment must stay closed"
    assert ALLOWED_CALL_TRANSITIONS[CallState.ENDED] == frozenset(), "an ended call must stay ended"


def test_no_recording_state_can_return_to_pending() -> None:
    for current, targets in ALLOWED_RECORDING_TRANSITIONS.items():
        assert R.PENDING not in targets, f"{current} → pending would restart a recording's life"


def test_every_recording_state_can_reach_deleted() -> None:
    # Retention must be able to delete any recording eventually, whatever state it is stuck in.
    reachable = {R.DELETED}
    changed = True
    while changed:
        changed = False
        for current, targets in ALLOWED_RECORDING_TRANSITIONS.items():
            if current not in reachable and targets & reachable:
                reachable.add(current)
                changed = True
    assert reachable == set(R), f"states that can never be deleted: {sorted(set(R) - reachable)}"


# ---- SPEC §2 paths, step by step ------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        # pending → recording ⇄ pausing → paused → resuming → recording … → stopped → available → deleted
        [
            R.PENDING,
            R.RECORDING,
            R.PAUSING,
            R.PAUSED,
            R.RESUMING,
            R.RECORDING,
            R.STOPPED,
            R.AVAILABLE,
            R.DELETED,
        ],
        # two payments on one call
        [
            R.PENDING,
            R.RECORDING,
            R.PAUSING,
            R.PAUSED,
            R.RESUMING,
            R.RECORDING,
            R.PAUSING,
            R.PAUSED,
            R.RESUMING,
            R.RECORDING,
            R.STOPPED,
            R.AVAILABLE,
            R.DELETED,
        ],
        # the ⇄: a pause that the provider refuses returns to recording
        [R.RECORDING, R.PAUSING, R.RECORDING],
        # a recording that starts while a payment segment is open goes straight to pausing
        [R.PENDING, R.PAUSING, R.PAUSED, R.RESUMING, R.RECORDING, R.STOPPED, R.AVAILABLE],
        # the provider reports failure
        [R.PENDING, R.RECORDING, R.FAILED],
        # the call ends during a payment: stopped while paused
        [R.PENDING, R.RECORDING, R.PAUSING, R.PAUSED, R.STOPPED, R.AVAILABLE, R.DELETED],
    ],
    ids=[
        "happy",
        "two-payments",
        "pause-refused",
        "late-recording",
        "failed",
        "stopped-while-paused",
    ],
)
def test_recording_paths_from_the_spec_are_legal(path: list[RecordingState]) -> None:
    walk("recording", ALLOWED_RECORDING_TRANSITIONS, path)


@pytest.mark.parametrize(
    "path",
    [
        [S.PAUSING, S.PAUSED, S.RESUMING, S.CLOSED],
        [S.PAUSING, S.PAUSE_FAILED, S.CLOSED],  # IVR told not to collect, then ends
        [S.PAUSING, S.PAUSE_FAILED, S.RESUMING, S.CLOSED],
        [S.PAUSING, S.PAUSED, S.RESUMING, S.RESUME_FAILED, S.RESUMING, S.CLOSED],  # retries
        [
            S.PAUSING,
            S.PAUSED,
            S.RESUMING,
            S.RESUME_FAILED,
            S.CLOSED,
        ],  # call ends while still paused
        [S.PAUSING, S.PAUSED, S.CLOSED],  # closed by call_end or operator
    ],
    ids=[
        "happy",
        "pause-failed-closed",
        "pause-failed-resumed",
        "resume-retried",
        "resume-failed-call-end",
        "closed-while-paused",
    ],
)
def test_segment_paths_from_the_spec_are_legal(path: list[SegmentState]) -> None:
    walk("segment", ALLOWED_SEGMENT_TRANSITIONS, path)


def test_call_path_is_legal() -> None:
    walk("call", ALLOWED_CALL_TRANSITIONS, [CallState.IN_PROGRESS, CallState.ENDED])
