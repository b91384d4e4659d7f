"""Payment gating (SPEC §3.1): pause every live recording before card details are taken.

The IVR hears ``safe_to_collect: true`` only while every live recording of the call has been
confirmed paused by the provider for this payment. Anything else fails closed with a 503.

How it holds up at contact-centre load:

- What to do is decided by pure functions (:mod:`app.domain.gate`); this module does the
  I/O. A payment start is one short write transaction that plans the command and claims the
  segment, the provider command with no transaction and no pooled connection held, and one
  short write transaction that records the answer.
- One command per segment is in flight at a time, across replicas: the segment row holds the
  claim (``command_id``, ``command_until``). A request that finds it claimed waits for that
  command (in this process, on the command's task; from another replica, by reading the row
  now and then) and answers from its outcome. Nobody holds a lock or a connection while
  waiting, so the pool cannot starve.
- The command runs in a task of its own, so a request that gives up or is cancelled never
  leaves a segment half done; a claim whose holder died runs out and the segment becomes due
  for the upkeep (:meth:`PaymentGate.run_due`), which drives each due segment in its own
  bounded attempt: one stuck call never delays another's retries.
- Everything a request does is bounded by its deadline (``RECGATE_PAUSE_TIMEOUT_MS`` from
  arrival): past it the IVR gets the fail-closed 503, never a 500 or silence.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial, wraps
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.engine import Connection

from app.config import Settings
from app.domain import gate
from app.domain.clock import Clock
from app.domain.gate import Command, ConfirmedState, ControlOutcome
from app.domain.scrub import scrub_text
from app.domain.snapshots import CallSnap, Changes, RecordingSnap, SegmentSnap
from app.domain.states import (
    CallState,
    IllegalTransition,
    PauseBehavior,
    SegmentState,
)
from app.errors import (
    CallBusy,
    CallEnded,
    DatabaseUnavailable,
    IllegalStateTransition,
    NoOpenPayment,
    PauseNotConfirmed,
    PaymentNotOpen,
    ProviderControlMissing,
    ProviderNotEnabled,
    ResumeNotConfirmed,
)
from app.logging import bind, log_provider_command
from app.services.concurrency import Answering, BackgroundTasks
from app.services.metrics import Metrics
from app.storage.db import Database, DatabaseUnreachable, server_of
from app.storage.live import LiveCallRepository
from app.telephony.base import (
    ControlTarget,
    ProviderRejected,
    ProviderUnavailable,
    RecordingController,
    RecordingGone,
    RecordingRef,
)
from app.telephony.registry import enabled_providers

log = logging.getLogger("recgate.gating")

T = TypeVar("T")
P = ParamSpec("P")
_S = SegmentState
# Kept back from the provider round trip so the answer can be recorded within the deadline.
_RECORD_RESERVE_S = 0.1
# Less than this left: no other round trip is started; the segment fails closed.
_MIN_ROUND_S = 0.02
# Reading a segment another replica drives: first wait, then doubling up to the longest.
_POLL_FIRST_S, _POLL_MAX_S = 0.005, 0.05
# Calls whose rows this process keeps known (PaymentGate._known): a few KiB each; and for
# how long, at most (about a long payment's length: rows older than that are read again).
_KNOWN_CALLS = 2_000
_KNOWN_FOR_S = 600.0
# The upkeep: due segments taken per run, and driven at once.
UPKEEP_BATCH = 100
UPKEEP_CONCURRENCY = 16


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
        # A segment is only ever left "paused" when every live recording was confirmed.
        return self.state == _S.PAUSED.value


def _outcome(segment: SegmentSnap, recordings: list[RecordingSnap]) -> SegmentOutcome:
    return SegmentOutcome(
        segment.id,
        segment.state.value,
        [RecordingStatus(r.id, r.provider_recording_id, r.state.value) for r in recordings],
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


@dataclass(frozen=True, slots=True)
class _Answer:
    """Nothing to send: answer from the stored segment."""

    outcome: SegmentOutcome


@dataclass(frozen=True, slots=True)
class _Busy:
    """Someone else has a command in flight on the segment: wait for it."""

    segment_id: uuid.UUID
    state: str


@dataclass(frozen=True, slots=True)
class _Seen:
    """The rows a transaction left behind, and the call's live version it left them at."""

    version: int
    # None: no segment of the call's was read or written (rows an ingest handed back).
    segment: SegmentSnap | None
    recordings: list[RecordingSnap]
    call: CallSnap
    # These were all of the call's live rows at ``version`` (``LiveCallRepository.whole``):
    # the call's next start or end may take them as read (``PaymentGate._known``).
    whole: bool = False
    # The server they were read or written through (``server_of``): taken as read through
    # that server only.
    server: object = None


@dataclass(frozen=True, slots=True)
class _Fly:
    """Send this command (the segment is claimed for it)."""

    command: Command
    call_id: uuid.UUID
    provider: str
    provider_call_id: str
    # What the transaction that planned the command wrote: the next one reuses it when the
    # call's live version shows nobody has changed it since.
    seen: _Seen | None = None


@dataclass(frozen=True, slots=True)
class _Failure:
    """A command the provider did not confirm; the reason is safe to store and show."""

    reason: str
    # A transient failure (unreachable, 5xx): worth another round while time remains.
    retryable: bool = False


# A transient failure to be tried again: plan anew from what is stored now (a recording may
# have been reported meanwhile), keeping the claim.
_AGAIN = _Failure("try again", retryable=True)


@dataclass(eq=False)
class _Flight:
    """A command loop running in this process; requests that wait on it lend it their
    deadline, so it can go on to what they asked for (an end: the resume)."""

    deadline: float
    task: asyncio.Task[SegmentOutcome] | None = None
    # Set once the pause has failed for good, before that is written: a requester whose
    # deadline passes while the write is under way answers with it, not with "pausing".
    pause_failed: bool = False


@dataclass(frozen=True, slots=True)
class _Recorded:
    outcome: SegmentOutcome
    next: Command | None
    exposures: int = 0
    seen: _Seen | None = None


def _copied_recordings(recordings: Iterable[RecordingSnap]) -> list[RecordingSnap]:
    return [replace(r, link=None if r.link is None else replace(r.link)) for r in recordings]


def _copied(
    segment: SegmentSnap, recordings: list[RecordingSnap]
) -> tuple[SegmentSnap, list[RecordingSnap]]:
    return replace(segment), _copied_recordings(recordings)


def _plan_and_write(
    repo: LiveCallRepository,
    changes: Changes,
    call: CallSnap,
    segment: SegmentSnap,
    lease: datetime,
) -> _Answer | _Fly:
    """Plan the segment's next command, claim it, write: the end of every planning
    transaction."""
    recordings = repo.recordings(call.id, segment.id, new_segment=segment.created)
    command = gate.plan(segment, recordings, changes, lease_until=lease)
    whole = repo.whole(segment)
    repo.write(changes)
    if command is None:
        return _Answer(_outcome(segment, recordings))
    seen = _Seen(call.live_version, segment, recordings, call, whole, server_of(repo.conn))
    return _Fly(command, call.id, call.provider, call.provider_call_id, seen)


def _answering(
    method: Callable[Concatenate[PaymentGate, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[PaymentGate, P], Coroutine[Any, Any, T]]:
    """Counts an IVR request in :attr:`PaymentGate.answering` while ``method`` answers it:
    webhooks and their batches let it go first meanwhile (:class:`Answering`)."""

    @wraps(method)
    async def answering(payments: PaymentGate, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with payments.answering.one():
            return await method(payments, *args, **kwargs)

    return answering


class PaymentGate:
    """Opens and closes payment segments and keeps every recording paused inside them."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Clock,
        metrics: Metrics,
        controllers: dict[str, RecordingController],
        tasks: BackgroundTasks,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.controllers = controllers
        self.tasks = tasks
        # Commands in flight from this process, by segment; requests wait on these.
        self._flights: dict[uuid.UUID, _Flight] = {}
        # Segments asked to be driven while a command of theirs was in flight.
        self._again: set[uuid.UUID] = set()
        # Segments a background attempt is working on right now.
        self._driving: set[uuid.UUID] = set()
        self._upkeep_slots: asyncio.Semaphore | None = None
        # PostgreSQL: each call's rows as this process's last command on it left them, when
        # they were all of its live rows; its next start or end takes them as read instead of
        # reading, its write guarded by their version (``LiveCallRepository.assume``).
        # Forgotten all at once when the database is unreachable (a failover may have lost
        # commits, and with them the versions these were kept at); taken as read only
        # through the server they were read or written through (``_Seen.server``).
        self._known: dict[tuple[str, str], tuple[_Seen, float]] = {}
        # The same, as an ingest batch that started a recording left them (``learn``): kept
        # apart, so calls that never pay cannot push out the rows of payments under way. A
        # call's rows are in one of the two at most.
        self._learned: dict[tuple[str, str], tuple[_Seen, float]] = {}
        # The IVR's starts and ends being answered right now.
        self.answering = Answering()

    @property
    def _timeout_s(self) -> float:
        return self.settings.pause_timeout_ms / 1000

    # ---- the IVR's requests -----------------------------------------------------------

    @_answering
    async def start(
        self,
        provider: str,
        provider_call_id: str,
        *,
        reference: str | None = None,
        behavior: PauseBehavior | None = None,
        idempotency_key: str | None = None,
    ) -> SegmentOutcome:
        """Open a payment segment and pause every recording; return once all are confirmed.

        Raises :class:`PauseNotConfirmed` (503, ``safe_to_collect: false``) when they are not
        within ``RECGATE_PAUSE_TIMEOUT_MS`` of the request, :class:`CallBusy` (503) when
        another command on the call did not finish in that time, :class:`DatabaseUnavailable`
        (503) when the database cannot be used, and :class:`PaymentNotOpen` (409) when an
        idempotency key replays a payment that has ended. Identical starts at the same time
        share one segment, one command and its outcome.
        """
        controller = self._controller(provider)
        # Not said by the IVR: what the platform itself does (silence on most).
        chosen = behavior or controller.default_behavior
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + self._timeout_s
        arrived = self.clock()
        key = scrub_text(idempotency_key) if idempotency_key else None
        reference = scrub_text(reference) if reference else None
        waited: list[_Busy] = []
        launched: list[_Flight] = []

        def plan(lease: datetime) -> Callable[[Connection], _Answer | _Busy | _Fly]:
            return partial(
                self._start_txn,
                provider=provider,
                provider_call_id=provider_call_id,
                reference=reference,
                behavior=chosen,
                key=key,
                arrived=arrived,
                waited=bool(waited),
                lease=lease,
            )

        try:
            async with asyncio.timeout_at(deadline):
                outcome, commanded = await self._until_answered(
                    controller, plan, deadline, waited, keep_trying=False, launched=launched
                )
            if outcome.safe_to_collect and commanded:
                self.metrics.pause_confirm_seconds.observe(loop.time() - began)
            return self._answer_start(outcome)
        except TimeoutError as exc:
            if launched and launched[-1].pause_failed:
                # Failed for good; its record is being written as the deadline passes.
                raise PauseNotConfirmed(
                    "Recording pause failed: do not take card details.",
                    state=_S.PAUSE_FAILED.value,
                    safe_to_collect=False,
                ) from exc
            if waited:
                raise CallBusy(
                    "Another operation on this call did not finish in time: do not take "
                    "card details.",
                    segment_id=str(waited[-1].segment_id),
                    state=waited[-1].state,
                    safe_to_collect=False,
                ) from exc
            raise PauseNotConfirmed(
                "Recording pause was not confirmed in time: do not take card details.",
                state=_S.PAUSING.value,
                safe_to_collect=False,
            ) from exc
        except DatabaseUnreachable as exc:
            raise DatabaseUnavailable(
                "The database is unavailable: do not take card details.",
                state=_S.PAUSE_FAILED.value,
                safe_to_collect=False,
            ) from exc

    @_answering
    async def end(
        self, provider: str, provider_call_id: str, *, outcome: str | None = None
    ) -> SegmentOutcome:
        """Close the payment segment and resume the recordings it paused.

        Raises :class:`NoOpenPayment` (409) when no segment was ever opened and
        :class:`ResumeNotConfirmed` (502) when a resume is not confirmed in time; the end is
        on record then, and the upkeep keeps resuming in the background.
        """
        controller = self._controller(provider)
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        waited: list[_Busy] = []

        def plan(lease: datetime) -> Callable[[Connection], _Answer | _Busy | _Fly]:
            return partial(
                self._end_txn,
                provider=provider,
                provider_call_id=provider_call_id,
                outcome=outcome,
                lease=lease,
            )

        try:
            async with asyncio.timeout_at(deadline):
                result, _ = await self._until_answered(
                    controller, plan, deadline, waited, keep_trying=True
                )
        except TimeoutError as exc:
            raise ResumeNotConfirmed(
                "Recording resume was not confirmed in time; recgate keeps trying.",
                state=waited[-1].state if waited else _S.RESUMING.value,
                safe_to_collect=False,
            ) from exc
        except DatabaseUnreachable as exc:
            raise DatabaseUnavailable(
                "The database is unavailable; end the payment again.", safe_to_collect=False
            ) from exc
        if result.state != _S.CLOSED.value:
            raise ResumeNotConfirmed(
                "Recording resume was not confirmed; recgate keeps retrying.",
                **outcome_body(result),
            )
        return result

    async def _until_answered(
        self,
        controller: RecordingController,
        plan: Callable[[datetime], Callable[[Connection], _Answer | _Busy | _Fly]],
        deadline: float,
        waited: list[_Busy],
        *,
        keep_trying: bool,
        launched: list[_Flight] | None = None,
    ) -> tuple[SegmentOutcome, bool]:
        """Plan in a write transaction, then: answer from what is stored, wait behind
        another command and plan again, or send. Whether a command was sent, too; the
        command loop it started, in ``launched``."""
        while True:
            step = await self._write(plan(self._lease(deadline)), deadline, durable=False)
            if isinstance(step, _Busy):
                bind(segment_id=step.segment_id)
                waited.append(step)
                await self._wait(step.segment_id, deadline)
                continue
            if isinstance(step, _Answer):
                bind(segment_id=step.outcome.segment_id)
                return step.outcome, False
            # The request's log line (and any line from here on) names recgate's own ids.
            bind(call_id=step.call_id, segment_id=step.command.segment_id)
            outcome = await self._launch(
                controller, step, deadline, keep_trying=keep_trying, launched=launched
            )
            return outcome, True

    # ---- background -------------------------------------------------------------------

    def kick(self, segment_id: uuid.UUID) -> None:
        """Drive the segment now (a recording went live during its payment), in the
        background; if a command of it is in flight, once more after that command."""
        if segment_id in self._flights or segment_id in self._driving:
            self._again.add(segment_id)
            return
        self.tasks.spawn(self._background(segment_id), name="gate:kick")

    async def drive(self, segment_id: uuid.UUID) -> SegmentOutcome | None:
        """One attempt, bounded by the pause deadline, to bring a segment that is due where
        it should be: every recording paused while the payment is open, resumed once it has
        ended. None when it is not due, or another driver has it in hand."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        step = await self._write(
            partial(self._drive_txn, segment_id=segment_id, lease=self._lease(deadline)),
            deadline,
            durable=False,
        )
        if isinstance(step, _Busy):
            return None
        if isinstance(step, _Answer):
            return step.outcome
        controller = self.controllers.get(step.provider)
        if controller is None:
            return None
        return await self._launch(controller, step, deadline, keep_trying=True)

    async def run_due(self) -> int:
        """Start a bounded attempt for every segment that is due and not driven by anyone
        (a retry after a failure, a driver that died); each runs on its own."""
        now = self.clock()
        due = await self.db.read(lambda c: LiveCallRepository(c).due_segments(now, UPKEEP_BATCH))
        started = 0
        for segment_id in due:
            if segment_id in self._flights or segment_id in self._driving:
                continue
            self.tasks.spawn(self._background(segment_id), name="gate:upkeep")
            started += 1
        return started

    async def alert_overlong_segments(self) -> int:
        """Flag payment segments open longer than ``RECGATE_MAX_PAUSE_S``; never resume them."""
        now = self.clock()
        before = now - timedelta(seconds=self.settings.max_pause_s)
        flagged = await self.db.write(lambda c: LiveCallRepository(c).flag_overlong(before, now))
        for segment_id, state in flagged:
            log.warning(
                "payment segment %s open for more than %ss (state %s): check the IVR",
                segment_id,
                self.settings.max_pause_s,
                state,
            )
        return len(flagged)

    async def _background(self, segment_id: uuid.UUID) -> None:
        if self._upkeep_slots is None:
            self._upkeep_slots = asyncio.Semaphore(UPKEEP_CONCURRENCY)
        self._driving.add(segment_id)
        try:
            async with self._upkeep_slots:
                await self.drive(segment_id)
                # Asked again while that attempt was under way: look once more.
                while segment_id in self._again:
                    self._again.discard(segment_id)
                    await self.drive(segment_id)
        except DatabaseUnreachable:
            log.warning("segment %s not driven: database unavailable", segment_id)
        except Exception:  # the upkeep tries again when the segment is next due
            log.exception("segment %s could not be driven", segment_id)
        finally:
            self._driving.discard(segment_id)

    # ---- transactions (each runs on one connection, in the database's thread) --------

    def _start_txn(
        self,
        conn: Connection,
        *,
        provider: str,
        provider_call_id: str,
        reference: str | None,
        behavior: PauseBehavior,
        key: str | None,
        arrived: datetime,
        waited: bool,
        lease: datetime,
    ) -> _Answer | _Busy | _Fly:
        repo = LiveCallRepository(conn)
        self._assume_known(repo, provider, provider_call_id)
        now = self.clock()
        changes = Changes(now)
        call = repo.upsert_call(provider, provider_call_id, now)
        if call.created:
            changes.call_created(call, "ivr: payment start")
        replayed = repo.segment_by_key(call.id, key) if key else None
        if replayed is not None and gate.phase(replayed) != "pause":
            # The same request again after its payment ended: say so, never "safe".
            return _Answer(_outcome(replayed, repo.recordings(call.id, replayed.id)))
        if call.state == CallState.ENDED:
            raise CallEnded("The call has ended; no payment can be taken on it.")
        segment = replayed or repo.open_segment(call.id)
        if segment is not None and segment.claimed(now):
            repo.write(changes)
            return _Busy(segment.id, segment.state.value)
        if segment is not None and gate.ending(segment):
            gate.supersede(segment, changes)
            segment = None
        if (
            waited
            and segment is not None
            and segment.state == _S.PAUSE_FAILED
            and segment.state_changed_at is not None
            and segment.state_changed_at >= arrived
        ):
            # The command this start waited for failed: that is its answer too.
            return _Answer(_outcome(segment, repo.recordings(call.id, segment.id)))
        if segment is None:
            segment = gate.open_segment(call.id, behavior, reference, key, changes)
        return _plan_and_write(repo, changes, call, segment, lease)

    def _end_txn(
        self,
        conn: Connection,
        *,
        provider: str,
        provider_call_id: str,
        outcome: str | None,
        lease: datetime,
    ) -> _Answer | _Busy | _Fly:
        repo = LiveCallRepository(conn)
        # Rows an ingest handed back hold no segment: nothing to end from them.
        self._assume_known(repo, provider, provider_call_id, with_segment=True)
        now = self.clock()
        changes = Changes(now)
        call = repo.call_by_key(provider, provider_call_id)
        segment = None if call is None else repo.latest_segment(call.id)
        if call is None or segment is None:
            raise NoOpenPayment("No payment was started on this call.")
        if segment.state == _S.CLOSED:
            return _Answer(_outcome(segment, repo.recordings(call.id, segment.id)))
        gate.request_end(segment, outcome, changes)
        if segment.claimed(now):
            # Its command finishes first; the end is on record for whoever drives next.
            repo.write(changes)
            return _Busy(segment.id, segment.state.value)
        return _plan_and_write(repo, changes, call, segment, lease)

    def _drive_txn(
        self, conn: Connection, *, segment_id: uuid.UUID, lease: datetime
    ) -> _Answer | _Busy | _Fly:
        repo = LiveCallRepository(conn)
        now = self.clock()
        changes = Changes(now)
        call_id = repo.segment_call_id(segment_id)
        call = None if call_id is None else repo.call_by_id(call_id)
        segment = None if call is None else repo.segment(segment_id)
        if call is None or segment is None:
            return _Busy(segment_id, "unknown")
        if segment.claimed(now):
            return _Busy(segment.id, segment.state.value)
        if segment.due_at is None or segment.due_at > now:
            # Settled, or waiting out a backoff: not this attempt's to drive.
            return _Busy(segment.id, segment.state.value)
        return _plan_and_write(repo, changes, call, segment, lease)

    def _record_txn(
        self,
        conn: Connection,
        *,
        fly: _Fly,
        result: list[ControlOutcome] | _Failure,
        more_time: bool,
        lease: datetime,
        keep_trying: bool,
    ) -> _Recorded:
        repo = LiveCallRepository(conn)
        now = self.clock()
        changes = Changes(now)
        command = fly.command
        server = server_of(conn)
        # Planned through another server (a failover, a crash since): read what this one
        # holds; the planning write (not waited to disk) may be lost.
        seen = fly.seen if fly.seen is None or fly.seen.server == server else None
        # Optimistic (PostgreSQL): the call as planning left it is not read again; the write
        # lands only if nobody has changed it since.
        call = repo.call_by_id(
            fly.call_id, seen=None if seen is None else (seen.call, seen.version)
        )
        if call is None:
            # The planning commit (not waited to disk) was lost with a database crash.
            raise DatabaseUnreachable("the segment's planning write is gone")
        # Still all of the call's live rows once written, if they were when planned.
        whole = False
        if seen is not None and seen.segment is not None and call.live_version == seen.version + 1:
            # Nobody has touched the call's live rows since this command was planned. Copies:
            # a run of this that writes nothing (optimistic, beaten) leaves them as they were.
            segment, recordings = _copied(seen.segment, seen.recordings)
            repo.adopt(segment, recordings)
            whole = seen.whole
        else:
            found = repo.segment(command.segment_id)
            if found is None:
                raise DatabaseUnreachable("the segment's planning write is gone")
            segment, recordings = found, repo.recordings(call.id, found.id)
        if segment.command_id != command.command_id:
            # The claim was taken from us (it ran out) or the call ended: what the provider
            # said is no longer ours to record.
            return _Recorded(_outcome(segment, recordings), None)
        if result is _AGAIN:
            next_command = gate.plan(segment, recordings, changes, lease_until=lease)
            repo.write(changes)
            seen = _Seen(call.live_version, segment, recordings, call, whole, server)
            return _Recorded(_outcome(segment, recordings), next_command, 0, seen)
        if isinstance(result, _Failure):
            if command.action == "pause":
                exposed = repo.pause_failed_exposed(segment.id)
                if gate.fail_pause(
                    segment,
                    recordings,
                    result.reason,
                    changes,
                    already_exposed=exposed,
                    keep_trying=keep_trying,
                ):
                    call.has_call_exposure = True
                    changes.touch_call(call)
            else:
                retry_in = timedelta(seconds=self.settings.resume_retry_interval_s)
                gate.fail_resume(segment, result.reason, changes, retry_in=retry_in)
            next_command = None
            if command.action == "pause" and gate.phase(segment) == "resume" and more_time:
                # The IVR ended the payment while this pause went unanswered: resume now,
                # in case it landed after all.
                next_command = gate.plan(segment, recordings, changes, lease_until=lease)
            exposed_now = len(changes.exposures)
            repo.write(changes)
            seen = _Seen(call.live_version, segment, recordings, call, whole, server)
            return _Recorded(_outcome(segment, recordings), next_command, exposed_now, seen)
        if command.action == "pause":
            gate.apply_pause(segment, recordings, result, changes)
        else:
            gate.apply_resume(segment, recordings, result, changes, call_level=command.call_level)
        next_command = None
        if not gate.needs_command(segment, recordings) or more_time:
            next_command = gate.plan(segment, recordings, changes, lease_until=lease)
        elif gate.phase(segment) == "pause":
            exposed = repo.pause_failed_exposed(segment.id)
            if gate.fail_pause(
                segment,
                recordings,
                "pause not confirmed within the deadline",
                changes,
                already_exposed=exposed,
                keep_trying=keep_trying,
            ):
                call.has_call_exposure = True
                changes.touch_call(call)
        else:
            # Out of time for the next resume: the upkeep carries on.
            gate.release(segment, changes, due_at=now)
        exposed_now = len(changes.exposures)
        repo.write(changes)
        return _Recorded(
            _outcome(segment, recordings),
            next_command,
            exposed_now,
            _Seen(call.live_version, segment, recordings, call, whole, server),
        )

    # ---- the command loop -------------------------------------------------------------

    async def _launch(
        self,
        controller: RecordingController,
        fly: _Fly,
        deadline: float,
        *,
        keep_trying: bool,
        launched: list[_Flight] | None = None,
    ) -> SegmentOutcome:
        """Run the command in a task of its own (so the requester may give up without
        leaving the segment half done) and wait for its outcome."""
        segment_id = fly.command.segment_id
        flight = _Flight(deadline)
        if launched is not None:
            launched.append(flight)
        task = self.tasks.spawn(
            self._flight(controller, fly, flight, keep_trying), name=f"gate:{fly.command.action}"
        )
        flight.task = task
        self._flights[segment_id] = flight

        def landed(_: asyncio.Task[SegmentOutcome]) -> None:
            if self._flights.get(segment_id) is flight:
                del self._flights[segment_id]
            # A background attempt looks at its own leftovers; a request's does not.
            if segment_id in self._again and segment_id not in self._driving:
                self._again.discard(segment_id)
                self.kick(segment_id)

        task.add_done_callback(landed)
        return await asyncio.shield(task)

    async def _flight(
        self, controller: RecordingController, fly: _Fly, flight: _Flight, keep_trying: bool
    ) -> SegmentOutcome:
        """Send, record the answer, and send again while the segment needs it and time
        allows. The one place a provider is commanded."""
        loop = asyncio.get_running_loop()
        reserve = min(_RECORD_RESERVE_S, self._timeout_s / 10)
        attempt = 0
        while True:
            result = await self._send(controller, fly, flight.deadline - reserve)
            if isinstance(result, _Failure) and result.retryable:
                pause_s = gate.retry_backoff(attempt)
                if flight.deadline - reserve - loop.time() > pause_s + _MIN_ROUND_S:
                    attempt += 1
                    await asyncio.sleep(pause_s)
                    result = _AGAIN
            if isinstance(result, _Failure) and result is not _AGAIN:
                flight.pause_failed = flight.pause_failed or fly.command.action == "pause"
                log.error(
                    "%s not confirmed on segment %s (provider %s): %s",
                    fly.command.action,
                    fly.command.segment_id,
                    fly.provider,
                    result.reason,
                )
            recorded = await self._write(
                partial(
                    self._record_txn,
                    fly=fly,
                    result=result,
                    more_time=flight.deadline - reserve - loop.time() > _MIN_ROUND_S,
                    lease=self._lease(flight.deadline),
                    keep_trying=keep_trying,
                )
            )
            if recorded.exposures:
                self.metrics.exposures.inc(recorded.exposures, kind="pause_failed")
            if recorded.next is None:
                self._keep_known(fly, recorded.seen)
                return recorded.outcome
            fly = _Fly(
                recorded.next, fly.call_id, fly.provider, fly.provider_call_id, recorded.seen
            )

    async def _send(
        self, controller: RecordingController, fly: _Fly, send_by: float
    ) -> list[ControlOutcome] | _Failure:
        """One command to the provider, bounded by ``send_by``."""
        loop = asyncio.get_running_loop()
        command = fly.command
        target = ControlTarget(
            fly.provider_call_id,
            tuple(
                RecordingRef(t.recording_id, t.provider_recording_id, t.container_id)
                for t in command.recordings
            ),
        )
        remaining = send_by - loop.time()
        if remaining <= 0:
            return _Failure(f"{command.action} not confirmed within the deadline")
        label = "ok"
        sent = loop.time()
        try:
            # Not wait_for: on 3.11 it runs the command in a task of its own (one more turn of
            # a busy event loop to start it and one to hear its end, while the IVR waits) and
            # can swallow a cancellation.
            async with asyncio.timeout(remaining):
                if command.action == "pause":
                    return await controller.pause(target, command.behavior)
                return await controller.resume(target)
        except RecordingGone:
            label = "gone"
            ids: list[str | None] = [t.provider_recording_id for t in command.recordings]
            return [ControlOutcome(rid, ConfirmedState.GONE) for rid in ids or [None]]
        except TimeoutError:
            label = "timeout"
            return _Failure(f"{command.action} timed out after {remaining:.2f}s")
        except ProviderUnavailable as exc:
            label = "unavailable"
            return _Failure(scrub_text(str(exc)), retryable=True)
        except ProviderRejected as exc:
            label = "rejected"
            return _Failure(scrub_text(str(exc)))
        finally:
            took = loop.time() - sent
            self.metrics.pause_commands.inc(
                provider=controller.name, action=command.action, outcome=label
            )
            self.metrics.provider_command_seconds.observe(
                took, provider=controller.name, action=command.action
            )
            log_provider_command(
                controller.name, command.action, label, took, segment_id=command.segment_id
            )

    async def _wait(self, segment_id: uuid.UUID, deadline: float) -> None:
        """Until the command in flight on the segment is done: on its task when this
        process sent it (lending it ``deadline``), otherwise by reading the segment's claim
        now and then."""
        flight = self._flights.get(segment_id)
        if flight is not None and flight.task is not None:
            flight.deadline = max(flight.deadline, deadline)
            with suppress(Exception):  # its failure is its own requester's to report
                await asyncio.shield(flight.task)
            return
        delay = _POLL_FIRST_S
        while True:
            await asyncio.sleep(delay)
            claim = await self.db.read(lambda c: LiveCallRepository(c).segment_claim(segment_id))
            if claim is None or claim <= self.clock():
                return
            delay = min(delay * 2, _POLL_MAX_S)

    # ---- shared -----------------------------------------------------------------------

    def _assume_known(
        self,
        repo: LiveCallRepository,
        provider: str,
        provider_call_id: str,
        *,
        with_segment: bool = False,
    ) -> None:
        """Give ``repo`` the call's rows as this process last left them. A work that runs
        again in a transaction (what it took as read had changed, or its writes need one)
        reads, and so does every later one until a command leaves the rows known again."""
        key = (provider, provider_call_id)
        kept = self._known.get(key) or self._learned.get(key)
        if kept is None:
            return
        known, since = kept
        if (
            not repo.optimistic
            or time.monotonic() - since > _KNOWN_FOR_S
            or known.server != server_of(repo.conn)
        ):
            self._forget(key)
            return
        if with_segment and known.segment is None:
            return
        segment = None if known.segment is None else replace(known.segment)
        recordings = _copied_recordings(known.recordings)
        repo.assume(known.call, known.version, segment, recordings)  # the call: copied there

    def _keep_known(self, fly: _Fly, seen: _Seen | None) -> None:
        key = (fly.provider, fly.provider_call_id)
        kept = self._forget(key)
        if seen is None or not seen.whole:
            return
        if kept is not None:
            table, (newer, _) = kept
            if newer.call.id == seen.call.id and newer.version > seen.version:
                table[key] = kept[1]  # newer rows came meanwhile (an ingest's): kept
                return
        self._put(self._known, key, seen)

    def learn(self, call: CallSnap, recordings: tuple[RecordingSnap, ...], server: object) -> None:
        """An ingest batch started a recording on ``call`` and wrote these, all of the
        call's live rows, at its version, through ``server``; no payment is open on it. The
        call's next start takes them as read (PostgreSQL: its one write guarded by that
        version), so a call's first payment needs no read before its claim."""
        if self.db.is_sqlite:
            return  # no round trip to save
        key = (call.provider, call.provider_call_id)
        kept = self._known.get(key) or self._learned.get(key)
        if kept is not None and kept[0].call.id == call.id:
            if kept[0].version > call.live_version:
                return  # these are older than what is kept
            if kept[0].version == call.live_version:
                # Two sets of rows at one version: commits were lost (a failover), and the
                # version alone cannot tell which are stored. Neither is taken as read.
                self._forget(key)
                return
        self._forget(key)
        seen = _Seen(call.live_version, None, list(recordings), call, True, server)
        self._put(self._learned, key, seen)

    def forget_known(self) -> None:
        """Take no kept rows as read from now on (the database was unreachable: a failover may
        have lost commits, and with them the versions rows were kept at)."""
        self._known.clear()
        self._learned.clear()

    def _forget(
        self, key: tuple[str, str]
    ) -> tuple[dict[tuple[str, str], tuple[_Seen, float]], tuple[_Seen, float]] | None:
        """Drop the call's kept rows; where they were, and they, if any."""
        for table in (self._known, self._learned):
            kept = table.pop(key, None)
            if kept is not None:
                return table, kept
        return None

    @staticmethod
    def _put(
        table: dict[tuple[str, str], tuple[_Seen, float]], key: tuple[str, str], seen: _Seen
    ) -> None:
        table[key] = (seen, time.monotonic())
        if len(table) > _KNOWN_CALLS:
            del table[next(iter(table))]  # the one kept longest

    def _lease(self, deadline: float) -> datetime:
        """Wall-clock end of a claim taken now for a command bounded by ``deadline``."""
        left = max(0.0, deadline - asyncio.get_running_loop().time())
        return self.clock() + timedelta(seconds=left) + gate.LEASE_GRACE

    async def _write(
        self,
        work: Callable[[Connection], T],
        deadline: float | None = None,
        *,
        durable: bool = True,
    ) -> T:
        """A gate transaction: short, so SQLite runs it in the loop. A planning transaction
        (claim, plan) need not wait for the disk: the provider's answer is recorded by a durable
        one, whose commit makes everything before it durable too; a database crash in between
        loses a claim whose command the IVR was never told succeeded (docs/gate.md)."""
        try:
            return await self.db.write(
                work, deadline=deadline, inline=True, durable=durable, optimistic=True
            )
        except DatabaseUnreachable:
            self.forget_known()
            raise
        except IllegalTransition as exc:
            raise IllegalStateTransition(
                str(exc), entity=exc.entity, current=exc.current, target=exc.target
            ) from exc

    def _controller(self, provider: str) -> RecordingController:
        controller = self.controllers.get(provider)
        if controller is not None:
            return controller
        # Fail closed either way: the IVR must read "not safe", whatever the misconfiguration.
        if provider in enabled_providers(self.settings):
            raise ProviderControlMissing(
                f"Recording control for {provider!r} is not configured: do not take card details.",
                safe_to_collect=False,
            )
        raise ProviderNotEnabled(f"Provider {provider!r} is not enabled.", safe_to_collect=False)

    @staticmethod
    def _answer_start(outcome: SegmentOutcome) -> SegmentOutcome:
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
