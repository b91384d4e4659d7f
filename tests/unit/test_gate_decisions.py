"""The gate's pure decisions (app.domain.gate, app.domain.call_facts), on tables of cases."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.domain import call_facts, gate
from app.domain.events import CallInfo, EventType, PbxEvent, RecordingInfo
from app.domain.gate import ConfirmedState, ControlOutcome
from app.domain.snapshots import Changes, LinkSnap, RecordingSnap, SegmentSnap
from app.domain.states import ExposureKind, PauseBehavior, RecordingState, SegmentState

NOW = datetime(2026, 12, 3, 10, 0, 0, 500_000, tzinfo=UTC)
LEASE = NOW + timedelta(seconds=4)
SKEW = timedelta(seconds=1)
_R, _S = RecordingState, SegmentState


def segment(state: SegmentState = _S.PAUSING, **fields: object) -> SegmentSnap:
    return SegmentSnap(
        id=uuid.uuid4(),
        call_id=CALL,
        state=state,
        pause_behavior=PauseBehavior.SILENCE,
        opened_at=NOW - timedelta(seconds=5),
        **fields,  # type: ignore[arg-type]
    )


CALL = uuid.uuid4()


def recording(
    state: RecordingState = _R.RECORDING, link: LinkSnap | None = None, name: str = "r-1"
) -> RecordingSnap:
    return RecordingSnap(
        id=uuid.uuid4(), call_id=CALL, provider_recording_id=name, state=state, link=link
    )


def linked(seg: SegmentSnap, **fields: datetime | None) -> LinkSnap:
    return LinkSnap(seg.id, **fields)


# ---- PBX clocks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pbx", "ours", "expected"),
    [
        # whole seconds: +1 s precision, +1 s skew
        (
            datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC),
            datetime(2026, 1, 1, 10, 0, 1, 900_000, tzinfo=UTC),
            False,
        ),
        (
            datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC),
            datetime(2026, 1, 1, 10, 0, 2, 1, tzinfo=UTC),
            True,
        ),
        # milliseconds: +1 ms precision, +1 s skew
        (
            datetime(2026, 1, 1, 10, 0, 0, 500_000, tzinfo=UTC),
            datetime(2026, 1, 1, 10, 0, 1, 400_000, tzinfo=UTC),
            False,
        ),
        (
            datetime(2026, 1, 1, 10, 0, 0, 500_000, tzinfo=UTC),
            datetime(2026, 1, 1, 10, 0, 1, 502_000, tzinfo=UTC),
            True,
        ),
        # after ours: never
        (
            datetime(2026, 1, 1, 10, 0, 5, tzinfo=UTC),
            datetime(2026, 1, 1, 10, 0, 1, tzinfo=UTC),
            False,
        ),
    ],
)
def test_provably_before_allows_precision_and_skew(
    pbx: datetime, ours: datetime, expected: bool
) -> None:
    assert gate.provably_before(pbx, ours, SKEW) is expected


@pytest.mark.parametrize(
    ("failures", "seconds"), [(0, 1), (1, 1), (2, 2), (3, 5), (4, 10), (5, 30), (50, 30)]
)
def test_background_pause_backoff(failures: int, seconds: float) -> None:
    assert gate.enforce_backoff(failures) == timedelta(seconds=seconds)


# ---- planning a pause ------------------------------------------------------------------------


def test_no_recording_known_asks_the_provider_for_the_whole_call() -> None:
    seg, changes = segment(), Changes(NOW)
    command = gate.plan(seg, [], changes, lease_until=LEASE)
    assert command is not None and command.action == "pause" and command.call_level
    assert (seg.call_level_sent_at, seg.command_id, seg.command_until, seg.due_at) == (
        NOW,
        command.command_id,
        LEASE,
        LEASE,
    ), "the segment is claimed, and due when the claim runs out"


@pytest.mark.parametrize(
    ("confirmed", "paused"),
    [("paused", True), ("not_recording", False)],
)
def test_an_answered_call_level_pause_settles_the_segment(confirmed: str, paused: bool) -> None:
    seg, changes = segment(call_level_sent_at=NOW), Changes(NOW)
    gate.apply_pause(seg, [], [ControlOutcome(None, ConfirmedState(confirmed))], changes)
    assert gate.plan(seg, [], changes, lease_until=LEASE) is None
    assert (seg.state, seg.paused_at, seg.call_level, seg.command_id) == (
        _S.PAUSED,
        NOW,
        paused,
        None,
    )


def test_an_unanswered_call_level_pause_is_asked_again() -> None:
    seg = segment(call_level_sent_at=NOW - timedelta(seconds=1))
    command = gate.plan(seg, [], Changes(NOW), lease_until=LEASE)
    assert command is not None and command.call_level


def test_live_recordings_are_paused_by_name_and_marked_pausing() -> None:
    seg, changes = segment(), Changes(NOW)
    live, stopped = recording(), recording(_R.STOPPED, name="r-0")
    command = gate.plan(seg, [live, stopped], changes, lease_until=LEASE)
    assert command is not None and [t.provider_recording_id for t in command.recordings] == ["r-1"]
    assert live.state == _R.PAUSING and live.link is not None and live.link.pause_sent_at == NOW
    assert [(t.entity, t.to_state) for t in changes.transitions] == [("recording", "pausing")]


def test_a_recording_paused_only_by_the_pbx_is_still_paused_by_recgate() -> None:
    seg = segment()
    reported = recording(_R.PAUSED)
    command = gate.plan(seg, [reported], Changes(NOW), lease_until=LEASE)
    assert command is not None and reported.state == _R.PAUSED, "no pausing detour"


def test_everything_confirmed_settles_paused_without_a_command() -> None:
    seg = segment()
    done = recording(_R.PAUSED, linked(seg, pause_sent_at=NOW, paused_at=NOW))
    assert gate.plan(seg, [done], Changes(NOW), lease_until=LEASE) is None
    assert seg.state == _S.PAUSED


def test_recordings_gone_after_recgate_commanded_them_need_no_call_level_pause() -> None:
    seg = segment()
    gone = recording(_R.STOPPED, linked(seg, pause_sent_at=NOW))
    assert gate.plan(seg, [gone], Changes(NOW), lease_until=LEASE) is None
    assert seg.state == _S.PAUSED


def test_a_recording_live_while_paused_reopens_the_segment() -> None:
    seg = segment(_S.PAUSED, paused_at=NOW)
    late = recording()
    changes = Changes(NOW)
    assert gate.plan(seg, [late], changes, lease_until=LEASE) is not None
    assert seg.state == _S.PAUSING and seg.paused_at == NOW


# ---- answers from the provider ---------------------------------------------------------------


def test_a_confirmation_is_not_applied_to_a_recording_reported_resumed_meanwhile() -> None:
    seg = segment()
    resumed = recording(_R.RECORDING, linked(seg, pause_sent_at=NOW))
    gate.apply_pause(seg, [resumed], [ControlOutcome("r-1", ConfirmedState.PAUSED)], Changes(NOW))
    assert resumed.state == _R.RECORDING and not resumed.confirmed_paused
    assert gate.needs_command(seg, [resumed])


def test_a_recording_the_provider_names_is_added_paused() -> None:
    seg = segment(call_level_sent_at=NOW)
    recordings: list[RecordingSnap] = []
    changes = Changes(NOW)
    gate.apply_pause(
        seg, recordings, [ControlOutcome("RE-current", ConfirmedState.PAUSED)], changes
    )
    [named] = recordings
    assert named.created and named.confirmed_paused and named.link is not None
    assert named.link.pause_sent_at == NOW


@pytest.mark.parametrize("answer", [ConfirmedState.NOT_RECORDING, ConfirmedState.GONE])
def test_a_recording_the_provider_says_is_gone_stops(answer: ConfirmedState) -> None:
    seg = segment()
    rec = recording(_R.PAUSING, linked(seg, pause_sent_at=NOW))
    gate.apply_pause(seg, [rec], [ControlOutcome("r-1", answer)], Changes(NOW))
    assert rec.state == _R.STOPPED and rec.stopped_at == NOW


# ---- failing closed --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep_trying", "told_safe", "ended", "due"),
    [
        (False, False, False, None),  # a start the IVR was refused: the IVR decides
        (True, False, False, NOW + timedelta(seconds=1)),  # a background re-pause: back off
        (False, True, False, NOW + timedelta(seconds=1)),  # the IVR had been told safe
        (False, False, True, NOW),  # the IVR ended it: resume at once
    ],
)
def test_a_failed_pause_is_exposed_quarantined_and_scheduled(
    keep_trying: bool, told_safe: bool, ended: bool, due: datetime | None
) -> None:
    seg = segment(paused_at=NOW if told_safe else None, resume_requested_at=NOW if ended else None)
    live, confirmed = recording(_R.PAUSING), recording(_R.PAUSED, name="r-2")
    confirmed.link = linked(seg, pause_sent_at=NOW, paused_at=NOW)
    changes = Changes(NOW)
    call_wide = gate.fail_pause(
        seg, [live, confirmed], "timed out", changes, already_exposed=set(), keep_trying=keep_trying
    )
    assert not call_wide
    assert seg.state == _S.PAUSE_FAILED and seg.due_at == due and seg.command_id is None
    assert (live.state, live.quarantined, confirmed.quarantined) == (_R.RECORDING, True, False)
    assert [(e.kind, e.recording_id) for e in changes.exposures] == [
        (ExposureKind.PAUSE_FAILED, live.id)
    ]


def test_a_failed_call_level_pause_is_a_call_wide_exposure_once() -> None:
    seg = segment(call_level_sent_at=NOW)
    changes = Changes(NOW)
    assert gate.fail_pause(seg, [], "refused", changes, already_exposed=set(), keep_trying=False)
    assert [e.recording_id for e in changes.exposures] == [None]
    again = Changes(NOW)
    assert not gate.fail_pause(
        segment(call_level_sent_at=NOW),
        [],
        "refused",
        again,
        already_exposed={None},
        keep_trying=False,
    )
    assert again.exposures == []


# ---- resuming --------------------------------------------------------------------------------


def test_an_ended_payment_resumes_everything_it_touched_until_confirmed() -> None:
    seg = segment(_S.PAUSED, paused_at=NOW, resume_requested_at=NOW)
    paused = recording(_R.PAUSED, linked(seg, pause_sent_at=NOW, paused_at=NOW))
    maybe = recording(_R.RECORDING, linked(seg, pause_sent_at=NOW), name="r-2")  # pause timed out
    untouched = recording(_R.RECORDING, name="r-3")
    changes = Changes(NOW)
    command = gate.plan(seg, [paused, maybe, untouched], changes, lease_until=LEASE)
    assert command is not None and command.action == "resume"
    assert sorted(t.provider_recording_id for t in command.recordings) == ["r-1", "r-2"]
    assert seg.state == _S.RESUMING and paused.state == _R.RESUMING

    gate.apply_resume(
        seg,
        [paused, maybe, untouched],
        [
            ControlOutcome("r-1", ConfirmedState.RECORDING),
            ControlOutcome("r-2", ConfirmedState.RECORDING),
        ],
        changes,
    )
    assert gate.plan(seg, [paused, maybe, untouched], changes, lease_until=LEASE) is None
    assert (seg.state, seg.closed_by) == (_S.CLOSED, "ivr")
    assert changes.segment_exposures_end == set(), "no exposure can be open: none is ended"


def test_closing_a_payment_ends_its_exposures_when_it_has_any() -> None:
    seg = segment(_S.RESUMING)
    exposed = recording(_R.RECORDING, linked(seg, resumed_at=NOW))
    exposed.quarantined = True
    changes = Changes(NOW)
    assert gate.plan(seg, [exposed], changes, lease_until=LEASE) is None
    assert changes.segment_exposures_end == {seg.id}


@pytest.mark.parametrize(
    ("call_level", "answered", "resumes_call"),
    [(True, True, True), (False, False, True), (False, True, False)],
)
def test_a_call_level_pause_is_undone_unless_it_paused_nothing(
    call_level: bool, answered: bool, resumes_call: bool
) -> None:
    seg = segment(
        _S.RESUMING,
        call_level=call_level,
        call_level_sent_at=NOW,
        call_level_confirmed_at=NOW if answered else None,
    )
    command = gate.plan(seg, [], Changes(NOW), lease_until=LEASE)
    assert (command is not None and command.call_level) is resumes_call


def test_a_call_level_resume_answered_with_nothing_closes() -> None:
    seg = segment(_S.RESUMING, call_level_sent_at=NOW)
    changes = Changes(NOW)
    gate.apply_resume(seg, [], [], changes, call_level=True)
    assert gate.plan(seg, [], changes, lease_until=LEASE) is None and seg.state == _S.CLOSED


def test_a_failed_resume_is_retried_after_the_interval() -> None:
    seg = segment(_S.RESUMING)
    gate.fail_resume(seg, "HTTP 500", Changes(NOW), retry_in=timedelta(seconds=5))
    assert (seg.state, seg.due_at, seg.resume_attempts) == (
        _S.RESUME_FAILED,
        NOW + timedelta(seconds=5),
        1,
    )
    assert gate.plan(seg, [], Changes(NOW), lease_until=LEASE) is None
    assert seg.state == _S.CLOSED, "nothing left to resume"


def test_claims_run_out() -> None:
    seg = segment(command_id=uuid.uuid4(), command_until=NOW)
    assert seg.claimed(NOW - timedelta(microseconds=1)) and not seg.claimed(NOW)


# ---- judging PBX reports during a payment ----------------------------------------------------


def report(kind: EventType, at: datetime) -> PbxEvent:
    return PbxEvent(
        provider="generic",
        event_id="e",
        type=kind,
        occurred_at=at,
        call=CallInfo("c"),
        recording=RecordingInfo("r-1"),
    )


@pytest.mark.parametrize(
    ("offset_s", "whole_second", "danger"),
    [
        (-10, True, None),
        (-1.5, False, None),
        (-0.5, False, ExposureKind.UNEXPECTED_RESUME),
        (-1.2, True, ExposureKind.UNEXPECTED_RESUME),
        (0.2, False, ExposureKind.UNEXPECTED_RESUME),
    ],
)
def test_a_resume_is_danger_unless_it_provably_predates_the_pause(
    offset_s: float, whole_second: bool, danger: ExposureKind | None
) -> None:
    sent = datetime(2026, 12, 3, 10, 0, 5, 0, tzinfo=UTC)
    seg = segment(_S.PAUSED, paused_at=sent)
    rec = recording(_R.PAUSED, linked(seg, pause_sent_at=sent, paused_at=sent))
    at = sent + timedelta(seconds=offset_s)
    if whole_second:
        at = at.replace(microsecond=0)
    verdict = call_facts.judge_report(
        rec, seg, report(EventType.RECORDING_RESUMED, at), call_level_covers_all=True, skew=SKEW
    )
    assert verdict == danger


@pytest.mark.parametrize(
    ("covers_all", "call_level", "started_offset_s", "danger"),
    [
        (True, True, -10, None),  # live before a confirmed pause of everything: covered
        (True, True, -0.5, ExposureKind.LATE_RECORDING),  # within the skew: not provably
        (False, True, -10, ExposureKind.LATE_RECORDING),  # Twilio.CURRENT covers one only
        (True, False, -10, ExposureKind.LATE_RECORDING),  # "nothing recording" covers nothing
    ],
)
def test_a_recording_first_seen_during_an_answered_payment(
    covers_all: bool, call_level: bool, started_offset_s: float, danger: ExposureKind | None
) -> None:
    sent = NOW - timedelta(seconds=30)
    seg = segment(
        _S.PAUSED,
        paused_at=sent,
        call_level=call_level,
        call_level_sent_at=sent,
        call_level_confirmed_at=sent,
    )
    rec = recording(_R.PENDING)
    rec.started_at = sent + timedelta(seconds=started_offset_s)
    verdict = call_facts.judge_report(
        rec,
        seg,
        report(EventType.RECORDING_STARTED, rec.started_at),
        call_level_covers_all=covers_all,
        skew=SKEW,
    )
    assert verdict == danger


def test_a_recording_seen_before_the_ivr_was_answered_is_no_exposure() -> None:
    seg = segment(_S.PAUSING)
    rec = recording(_R.PENDING)
    rec.started_at = NOW
    assert (
        call_facts.judge_report(
            rec,
            seg,
            report(EventType.RECORDING_STARTED, NOW),
            call_level_covers_all=True,
            skew=SKEW,
        )
        is None
    ), "the pause under way covers it before anything is said"


def test_an_event_minutes_ahead_is_from_the_future() -> None:
    assert call_facts.from_the_future(report(EventType.CALL_ENDED, NOW + timedelta(minutes=6)), NOW)
    assert not call_facts.from_the_future(
        report(EventType.CALL_ENDED, NOW + timedelta(minutes=4)), NOW
    )
