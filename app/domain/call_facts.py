"""One normalised PBX event applied to a call's snapshot (SPEC §2, §3.2).

Every event is merged as a set of facts (earliest start, earliest end, latest pause report …)
so the final state does not depend on arrival order, and a duplicate changes nothing.

While a payment is open, PBX clocks are never trusted to dismiss danger. A ``recording
.resumed`` report re-pauses the recording and is an ``unexpected_resume`` exposure unless it
*provably* predates recgate's pause command (earlier by more than the timestamp's precision
plus the allowed clock skew). A recording first seen live during a payment the IVR has been
answered on is a ``late_recording`` exposure unless it provably started before a call-level
pause that covers every recording of the call.

Before any of that, :func:`plan_calls` decides which call each event of a batch lands on when
a provider names parts of one conversation apart (an Asterisk agent's channel, a bridge).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.domain.events import EventType, PbxEvent
from app.domain.gate import provably_before
from app.domain.retention import Months, add_months
from app.domain.scrub import scrub_phone_number, scrub_text
from app.domain.snapshots import (
    CallSnap,
    Changes,
    NewExposure,
    RecordingSnap,
    SegmentSnap,
)
from app.domain.states import (
    CallState,
    ClosedBy,
    ExposureKind,
    RecordingState,
    SegmentState,
)

_R = RecordingState
# An event dated further ahead of recgate's clock than this is refused as malformed: a PBX
# clock that far off cannot be reasoned with, and the date would outrank every real report.
MAX_FUTURE = timedelta(minutes=5)


def from_the_future(event: PbxEvent, now: datetime) -> bool:
    return event.occurred_at > now + MAX_FUTURE


def _earliest(current: datetime | None, candidate: datetime | None) -> datetime | None:
    if candidate is None:
        return current
    return candidate if current is None or candidate < current else current


def _facts(call: CallSnap) -> tuple[object, ...]:
    return (
        call.started_at,
        call.answered_at,
        call.from_number,
        call.to_number,
        call.direction,
        call.agent_id,
        call.service_area,
    )


def merge_call_facts(
    call: CallSnap,
    event: PbxEvent,
    service_areas: Sequence[str],
    changes: Changes,
    *,
    whole_call: bool = True,
) -> bool:
    """What the event says about the call; True when its service area changed.

    ``whole_call`` False: the event is about a part of the call (an agent's leg, found through
    an alias); it dates the call's start at the latest, and says nothing else about it.
    """
    info, at = event.call, event.occurred_at
    before = _facts(call)
    area_before = call.service_area
    call.started_at = _earliest(call.started_at, at)
    if not whole_call:
        if _facts(call) != before:
            changes.touch_call(call)
        return False
    if event.type == EventType.CALL_ANSWERED:
        call.answered_at = _earliest(call.answered_at, at)
    if call.from_number is None and info.from_number:
        call.from_number = scrub_phone_number(info.from_number)
    if call.to_number is None and info.to_number:
        call.to_number = scrub_phone_number(info.to_number)
    if call.direction is None and info.direction:
        call.direction = info.direction
    # A transfer changes the agent and maybe the service area: the latest report wins.
    if info.agent_id is not None and (call.agent_at is None or at >= call.agent_at):
        call.agent_id, call.agent_at = scrub_text(info.agent_id), at
    area = info.service_area
    if area is not None and area not in service_areas:
        area = "other"
    if area is not None and (call.service_area_at is None or at >= call.service_area_at):
        call.service_area, call.service_area_at = area, at
    if _facts(call) != before or info.agent_id is not None or area is not None:
        changes.touch_call(call)
    if call.service_area != area_before:
        # The service area decides the retention: learning it late moves the deadlines.
        changes.deadlines_for.add(call.id)
        return True
    return False


def end_call(
    call: CallSnap,
    recordings: Sequence[RecordingSnap],
    segment: SegmentSnap | None,
    event: PbxEvent,
    changes: Changes,
) -> None:
    """The call ended: its payment closes, its recordings stop, no exposure outlasts it."""
    cause = f"{event.provider}:{event.type.value}"
    ended = _earliest(call.ended_at, event.occurred_at)
    if ended != call.ended_at:
        call.ended_at = ended
        changes.deadlines_for.add(call.id)
    changes.touch_call(call)
    changes.call_state(call, CallState.ENDED, cause)
    if segment is not None and segment.state != SegmentState.CLOSED:
        changes.segment_state(segment, SegmentState.CLOSED, cause)
        segment.closed_at, segment.closed_by = changes.now, ClosedBy.CALL_END.value
        segment.due_at = segment.command_id = segment.command_until = None
    # Whichever of two end reports arrives first, exposures end at the earliest.
    assert call.ended_at is not None
    changes.end_call_exposures[call.id] = call.ended_at
    # The PBX stops every recording with the call, whether or not it says so.
    for recording in recordings:
        merge_recording_end(call, recording, cause, changes)


def merge_recording(
    call: CallSnap, recording: RecordingSnap, event: PbxEvent, changes: Changes
) -> bool:
    """What the event says about one recording; True when it is the latest pause/resume
    report the PBX has made about it (by the PBX's clock)."""
    info = event.recording
    assert info is not None
    at, kind = event.occurred_at, event.type
    if info.media_url:
        recording.media_url = scrub_text(info.media_url)
    if info.duration_s is not None:
        recording.duration_s = info.duration_s
    if info.media_format:
        recording.media_format = info.media_format.lower()
    if info.sha256:
        recording.media_sha256 = info.sha256
    if info.container_id:
        recording.container_id = info.container_id
    if kind == EventType.RECORDING_STARTED:
        recording.started_at = _earliest(recording.started_at, at)
    elif kind == EventType.RECORDING_STOPPED:
        recording.stopped_at = _earliest(recording.stopped_at, at)
    elif kind == EventType.RECORDING_COMPLETED:
        recording.completed_at = _earliest(recording.completed_at, at)
    elif kind == EventType.RECORDING_FAILED:
        recording.failed_at = _earliest(recording.failed_at, at)
    latest = kind in (EventType.RECORDING_PAUSED, EventType.RECORDING_RESUMED) and (
        recording.pbx_pause_event_at is None or at >= recording.pbx_pause_event_at
    )
    if latest:
        recording.pbx_pause_event_at = at
        recording.pbx_paused = kind == EventType.RECORDING_PAUSED
    changes.touch_recording(recording)
    merge_recording_end(call, recording, f"{event.provider}:{kind.value}", changes)
    return latest


def merge_recording_end(
    call: CallSnap, recording: RecordingSnap, cause: str, changes: Changes
) -> None:
    """A recording's end is its earliest stop, completion or failure, or the call's end."""
    if call.ended_at is not None:
        recording.stopped_at = _earliest(recording.stopped_at, call.ended_at)
    ended = None
    for moment in (recording.stopped_at, recording.completed_at, recording.failed_at):
        ended = _earliest(ended, moment)
    if ended is not None and ended != recording.ended_at:
        recording.ended_at = ended
        changes.deadlines_for.add(recording.call_id)
        changes.touch_recording(recording)
    if recording.completed_at is not None:
        target = _R.AVAILABLE
    elif recording.failed_at is not None:
        target = _R.FAILED
    elif recording.stopped_at is not None:
        target = _R.STOPPED
    else:
        return
    if recording.state != _R.DELETED:
        changes.recording_state(recording, target, cause)


def fill_deadlines(
    call: CallSnap, recordings: Sequence[RecordingSnap], months: Months, changes: Changes
) -> None:
    """Retention deadlines from end times: media from each recording's end, the call
    record from the call's end (SPEC §3.4)."""
    if call.ended_at is not None:
        deadline = add_months(call.ended_at, months.record)
        if deadline != call.record_retention_until:
            call.record_retention_until = deadline
            changes.touch_call(call)
    for recording in recordings:
        if recording.ended_at is None or recording.deleted_at is not None:
            continue
        deadline = add_months(recording.ended_at, months.media)
        if deadline != recording.retention_until:
            recording.retention_until = deadline
            changes.touch_recording(recording)


def overlaps_call_exposure(
    recording: RecordingSnap,
    windows: Sequence[tuple[datetime, datetime | None]],
    skew: timedelta,
) -> bool:
    """A pause that failed before any recording was known left a call-wide exposure: a
    recording of the call that may overlap it may hold card data."""
    for started, ended in windows:
        starts_in_time = (
            recording.started_at is None or ended is None or recording.started_at <= ended + skew
        )
        ends_in_time = recording.ended_at is None or recording.ended_at >= started - skew
        if starts_in_time and ends_in_time:
            return True
    return False


def follow_pbx(
    recording: RecordingSnap, event: PbxEvent, changes: Changes, *, latest_report: bool
) -> None:
    """Outside a payment, a live recording's state follows the PBX: the latest pause/resume
    report wins, unless recgate has since had a command of its own confirmed."""
    cause = f"{event.provider}:{event.type.value}"
    counts = latest_report and (
        recording.control_confirmed_at is None or event.occurred_at > recording.control_confirmed_at
    )
    state = recording.state
    if counts and event.type == EventType.RECORDING_RESUMED and state != _R.RECORDING:
        changes.recording_state(recording, _R.RECORDING, cause)
    elif (
        counts and event.type == EventType.RECORDING_PAUSED and state in (_R.PENDING, _R.RECORDING)
    ):
        changes.recording_state(recording, _R.PAUSED, cause)
    elif state == _R.PENDING and recording.started_at is not None:
        changes.recording_state(recording, _R.RECORDING, cause)


def judge_report(
    recording: RecordingSnap,
    segment: SegmentSnap,
    event: PbxEvent,
    *,
    call_level_covers_all: bool,
    skew: timedelta,
) -> ExposureKind | None:
    """Whether this report, during an open payment, shows a span in which the recording may
    have heard card details; None when it provably shows none."""
    covering = (
        segment.call_level_sent_at
        if call_level_covers_all
        and segment.call_level_sent_at is not None
        # A call-level "nothing is recording" answer covers nothing that started after it.
        and (segment.call_level or segment.call_level_confirmed_at is None)
        else None
    )
    if event.type == EventType.RECORDING_RESUMED:
        link = recording.link
        sent = link.pause_sent_at if link is not None and link.pause_sent_at else None
        ours = sent or covering
        if ours is not None and provably_before(event.occurred_at, ours, skew):
            return None
        return ExposureKind.UNEXPECTED_RESUME
    if event.type != EventType.RECORDING_STARTED or recording.confirmed_paused:
        return None
    if not segment.answered:
        # The IVR has not been told anything yet: the pause under way covers it first.
        return None
    seen = recording.link is not None and recording.link.pause_sent_at is not None
    started = recording.started_at
    if seen or (
        covering is not None and started is not None and provably_before(started, covering, skew)
    ):
        return None
    return ExposureKind.LATE_RECORDING


def guard_recording(
    recording: RecordingSnap,
    segment: SegmentSnap,
    event: PbxEvent,
    changes: Changes,
    *,
    danger: ExposureKind | None,
    already_exposed: bool,
) -> bool:
    """Keep a live recording paused while the payment is open; True when it must be paused
    now. ``danger`` is :func:`judge_report`'s verdict; ``already_exposed`` says whether an
    exposure of this recording in this segment is open already."""
    return _keep_paused(
        recording,
        segment,
        changes,
        cause=f"{event.provider}:{event.type.value}",
        reported=event.type,
        at=event.occurred_at,
        danger=danger,
        already_exposed=already_exposed,
    )


def judge_joined(recording: RecordingSnap, segment: SegmentSnap) -> ExposureKind | None:
    """Whether a live recording that has just been found to belong to the call (it was held
    on a bridge or a channel not yet linked to the call) may have heard card details: it
    may, once the IVR has been answered, unless recgate's pause of this segment covered it."""
    if recording.confirmed_paused or not segment.answered:
        return None
    if recording.link is not None and recording.link.pause_sent_at is not None:
        return None
    return ExposureKind.LATE_RECORDING


def guard_joined_recording(
    recording: RecordingSnap,
    segment: SegmentSnap,
    changes: Changes,
    *,
    cause: str,
    danger: ExposureKind | None,
    already_exposed: bool,
) -> bool:
    """A live recording that joined the call during its open payment: paused at once, like a
    recording that starts during the payment; True when it must be paused now. ``danger`` is
    :func:`judge_joined`'s verdict."""
    return _keep_paused(
        recording,
        segment,
        changes,
        cause=cause,
        reported=None,
        at=changes.now,
        danger=danger,
        already_exposed=already_exposed,
    )


def _keep_paused(
    recording: RecordingSnap,
    segment: SegmentSnap,
    changes: Changes,
    *,
    cause: str,
    reported: EventType | None,
    at: datetime,
    danger: ExposureKind | None,
    already_exposed: bool,
) -> bool:
    state = recording.state
    if danger == ExposureKind.UNEXPECTED_RESUME:
        # Whatever recgate confirmed before may predate this resume: it counts for nothing now.
        if state != _R.RECORDING:
            changes.recording_state(recording, _R.RECORDING, cause)
        if recording.link is not None and recording.link.paused_at is not None:
            changes.touch_link(recording, segment).paused_at = None
    elif reported == EventType.RECORDING_PAUSED and state in (_R.PENDING, _R.RECORDING):
        # The PBX's word, not a confirmation: recgate still sends its own pause.
        changes.recording_state(recording, _R.PAUSED, cause)
    if danger is not None:
        recording.quarantined = True
        changes.touch_recording(recording)
        if not already_exposed:
            since = at
            if danger == ExposureKind.LATE_RECORDING and recording.started_at is not None:
                since = recording.started_at
            floor = segment.paused_at or segment.opened_at
            changes.exposures.append(
                NewExposure(
                    call_id=recording.call_id,
                    recording_id=recording.id,
                    segment_id=segment.id,
                    kind=danger,
                    started_at=min(max(since, floor), changes.now),
                    detail=f"reported by {cause}",
                )
            )
    if recording.confirmed_paused:
        return False
    changes.touch_link(recording, segment)
    if recording.state == _R.PENDING:
        # SPEC §2: a recording that starts while a payment is open goes straight to pausing.
        changes.recording_state(recording, _R.PAUSING, "recording live during payment")
    if segment.state == SegmentState.PAUSED:
        changes.segment_state(segment, SegmentState.PAUSING, "a recording is live during payment")
    segment.due_at = changes.now
    changes.touch_segment(segment)
    return True


# ---- which call each event of a batch lands on ------------------------------------------------


@dataclass(frozen=True, slots=True)
class KnownName:
    """A name a provider gives calls by, as stored: the key of the call it stands for (the
    name itself for a call's own key, another key for an alias), that call's start, and
    whether the call only holds recordings of a container (an Asterisk bridge) that arrived
    before the container was linked to its call (its key is their container's id)."""

    key: str
    started_at: datetime | None
    container: bool = False


@dataclass(frozen=True, slots=True)
class CallMerge:
    """A stored call found to be part of another (an agent's channel, a bridge recorded before
    it was linked): its rows move to ``target`` and its key becomes an alias of it."""

    index: int  # the event of the batch that showed it
    source: tuple[str, str]  # (provider, key)
    target: tuple[str, str]


@dataclass(frozen=True, slots=True)
class CallPlan:
    keys: list[tuple[str, str]]  # per event, the (provider, key) of the call it lands on
    merges: list[CallMerge]  # in the order the events showed them


def _rank(container: bool, started_at: datetime | None) -> tuple[bool, int, float]:
    # A call held under a container's name never keeps a conversation. A stored call with no
    # date yet (a payment started before any event) counts as oldest: the IVR names it.
    return (container, 0, 0.0) if started_at is None else (container, 1, started_at.timestamp())


def plan_calls(events: Sequence[PbxEvent], known: Mapping[tuple[str, str], KnownName]) -> CallPlan:
    """Which call each event lands on, in arrival order; ``known`` holds what is stored of the
    names the events use (``via_alias`` names and aliases).

    An event with no aliases lands on the call its name stands for (through an alias when it
    is ``via_alias``), or on a new call of that key. An event with aliases says its name and
    its aliases are one conversation. Of the calls they are the own keys of (and the event's
    name, when it names nothing yet, dated by the event), the *oldest* is kept: the caller's,
    whose channel came first, the way Asterisk names a conversation after its oldest channel
    (``linkedid``); a call that only holds a container's early recordings is never kept. The
    others are folded into it (:class:`CallMerge`), and every name becomes
    an alias of it; an alias of another call moves over without taking that call with it (an
    agent transferred, a bridge used again). When none of the names is a call's own key, the
    event's name is an alias already, and the conversation is its call.
    """
    owner = {name: found.key for name, found in known.items()}
    started: dict[tuple[str, str], datetime | None] = {}
    held: set[tuple[str, str]] = set()  # calls named after a container
    for (provider, _), found in known.items():
        started[(provider, found.key)] = found.started_at
        if found.container:
            held.add((provider, found.key))
    stored = set(started)
    provisional: list[tuple[str, str]] = []
    folded: list[tuple[int, tuple[str, str]]] = []

    def dated(call: tuple[str, str], at: datetime) -> None:
        current = started.get(call, at)
        # An undated stored call stays undated: the oldest (see _rank).
        if call not in started or (current is not None and at < current):
            started[call] = at

    for index, event in enumerate(events):
        provider, name, at = event.provider, event.call.provider_call_id, event.occurred_at
        if not event.aliases:
            key = owner.get((provider, name), name) if event.call.via_alias else name
            recording = event.recording
            if (provider, key) not in owner and recording and recording.container_id == key:
                held.add((provider, key))
            owner.setdefault((provider, key), key)
            dated((provider, key), at)
            provisional.append((provider, key))
            continue
        names = list(dict.fromkeys((name, *event.aliases)))
        own = [n for n in names if owner.get((provider, n)) == n]
        if (provider, name) not in owner:
            own.insert(0, name)
            started[(provider, name)] = at
        if own:
            # min() keeps the first of equals: the event's own name wins a tie.
            survivor = min(
                own,
                key=lambda n: _rank((provider, n) in held, started.get((provider, n))),
            )
        else:
            survivor = owner[(provider, name)]
        owner[(provider, survivor)] = survivor
        for other in names:
            if other == survivor:
                continue
            if owner.get((provider, other)) == other:
                folded.append((index, (provider, other)))
                for alias, key in owner.items():
                    if key == other and alias[0] == provider:
                        owner[alias] = survivor
            owner[(provider, other)] = survivor
        dated((provider, survivor), at)
        provisional.append((provider, survivor))

    def final(call: tuple[str, str]) -> tuple[str, str]:
        provider, key = call
        for _ in range(len(owner) + 1):
            nxt = owner.get((provider, key), key)
            if nxt == key:
                break
            key = nxt
        return (provider, key)

    merges = [
        CallMerge(index, source, final(source))
        for index, source in folded
        if source in stored and final(source) != source
    ]
    return CallPlan([final(call) for call in provisional], merges)
