"""The ingest worker: a process of recgate's own that applies webhook batches.

One interpreter runs one thread of Python at a time. With webhooks arriving by the thousand,
the service's process is busy with HTTP, signatures and scrubbing, and each batch's
transaction (a few hundred microseconds of Python per event) waited its turn for the same
interpreter while a second core sat idle. The worker applies the batches on its own
connection, in its own interpreter: the service's process hands it a batch of parsed,
scrubbed events and the time, and gets back each event's result.

The worker is the service's child: it reads batches on its standard input and answers on
its standard output in the order it read them (on PostgreSQL it applies two at once, see
:class:`~app.services.ingest_apply.Turn`). It owns nothing: when its input closes (the
service stopped, or died) it finishes the batches in hand and exits; when it dies, the batch
in hand is answered 503 (nothing acknowledged, so the PBX sends it again) and the next batch
starts a new worker. A worker that keeps dying (it stops again before answering a batch, or
cannot start) is started again after a growing pause (:data:`RESTART_BACKOFF_S`), batches
being answered 503 meanwhile: a crash loop costs one interpreter start per pause, not one
per webhook. A batch it committed but could not answer is a duplicate when the PBX retries
it. Only plain values cross the pipe (events, results, the time), framed and
pickled; the pipe is the child's own, never a socket.

Run it only from :class:`IngestWorker`: ``python -m app.services.ingest_worker``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.domain.states import IllegalTransition
from app.errors import UNSTORABLE_TEXT, MalformedInput, unstorable_text
from app.services.ingest_apply import (
    BatchApply,
    IngestResult,
    IngestRules,
    Items,
    Outcome,
    Turn,
    apply_in_order,
)
from app.storage.db import Database, DatabaseUnreachable, create_engine, sqlite_file

log = logging.getLogger("recgate.ingest")

_HEADER = struct.Struct("!I")
# The worker imports recgate and answers "ready" within this, or the service gives up on it.
START_TIMEOUT_S = 60.0
# At shutdown the worker finishes the batches in hand within this, or it is killed.
STOP_TIMEOUT_S = 10.0
# Batches the worker applies at once on PostgreSQL, each on a connection of its own.
PIPELINE = 2
# After the second stop in a row with no batch answered in between, the next worker starts
# this long after the last stop, doubling with each stop after that up to the cap.
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0


class IngestFailed(Exception):
    """The worker could not apply a batch, for a reason other than the database or the
    events themselves (its log says which)."""


def worker_suits(database_url: str) -> bool:
    """Whether batches go to a worker for this database: one a second process can open,
    PostgreSQL or a SQLite file (not an in-memory database).

    On SQLite the worker and the gate's transactions in the service's process take turns at
    the file's one write lock; while the IVR waits for a payment, the service hands the
    worker no new batch (:meth:`IngestService._commit`; one handed over before still runs).
    Measured with the benchmark's load (docs/benchmarks.md): ingest 0.44 → 0.57–0.69 of the
    bare endpoint, and with webhooks pouring in payment start's p99 about as before (19–26
    ms) once no write on the writer thread checkpoints the WAL itself. Before the gate's
    writes polled for the lock and the IVR went first, that p99 was 740–890 ms with the
    worker, and SQLite had none."""
    if make_url(database_url).drivername.startswith("sqlite"):
        return sqlite_file(database_url) is not None
    return True


@dataclass(frozen=True, slots=True)
class _Setup:
    database_url: str
    rules: IngestRules
    log_format: str
    log_level: str


def _frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


# What an outcome other than a result crosses the pipe as, and back.
_FAILED = "the ingest worker could not apply the event"


def _encoded(outcome: Outcome) -> object:
    """An event's outcome as plain values (an exception need not pickle, and its driver's
    parts would not)."""
    if isinstance(outcome, IngestResult):
        return outcome
    if isinstance(outcome, DatabaseUnreachable):
        return ("unreachable", str(outcome))
    if isinstance(outcome, IllegalTransition):
        return ("illegal", (outcome.entity, outcome.current, outcome.target))
    if isinstance(outcome, MalformedInput):
        return ("malformed", str(outcome))
    if isinstance(outcome, SQLAlchemyError) and unstorable_text(outcome):
        return ("malformed", UNSTORABLE_TEXT)
    log.error("ingest event failed", exc_info=outcome)
    return ("failed", _FAILED)


def _decoded(encoded: object) -> Outcome:
    """An event's outcome as applying it in the service's process would have given it."""
    if isinstance(encoded, IngestResult):
        return encoded
    assert isinstance(encoded, tuple)
    kind, detail = encoded
    if kind == "unreachable":
        return DatabaseUnreachable(detail)
    if kind == "illegal":
        return IllegalTransition(*detail)
    if kind == "malformed":
        return MalformedInput(detail)
    return IngestFailed(detail)


@dataclass(eq=False)
class _Running:
    """One worker process, and a future per batch written to it and not yet answered, in
    the order written. A new process starts with a queue of its own."""

    process: asyncio.subprocess.Process
    waiting: deque[asyncio.Future[list[object]]] = field(default_factory=deque)
    answers: asyncio.Task[None] | None = None


class IngestWorker:
    """The service's side of the worker: start it, hand it batches, stop it.

    Batches are written to the worker as they come and answered in the order they were
    written: a caller may hand over the next batch before the last is answered, and the
    worker starts on it as soon as it has committed the last."""

    def __init__(self, settings: Settings, rules: IngestRules) -> None:
        self._setup = _Setup(settings.database_url, rules, settings.log_format, settings.log_level)
        self._running: _Running | None = None
        self._starting = asyncio.Lock()
        self._closed = False
        # Stops in a row (a death, a failed start) with no batch answered in between, and
        # the loop time before which no new worker is started.
        self._stops = 0
        self._restart_at = 0.0

    @property
    def pid(self) -> int | None:
        running = self._running
        return running.process.pid if running is not None and _alive(running) else None

    @property
    def in_flight(self) -> int:
        """Batches handed to the worker and not yet answered."""
        return len(self._running.waiting) if self._running is not None else 0

    async def start(self) -> None:
        await self._current()

    async def apply(self, items: Items, now: datetime) -> list[Outcome]:
        """Each event's outcome, as applying the batch in-process would give it.

        ``now`` is the service's clock when the batch was handed over; the worker adds the
        time the batch then waited, so a batch is dated when it is applied, as in-process.
        :class:`DatabaseUnreachable` for every event when the worker cannot be started or
        stops before it answers: whether the batch was committed is then unknown, and the
        PBX's retry tells (a duplicate)."""
        frame = _frame((items, now, time.monotonic()))
        try:
            running = await self._current()
        except DatabaseUnreachable as exc:
            return [exc] * len(items)
        stdin = running.process.stdin
        assert stdin is not None
        answer: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
        running.waiting.append(answer)
        stdin.write(frame)
        with suppress(ConnectionError):  # it stopped: its answer says so
            await stdin.drain()
        try:
            return [_decoded(encoded) for encoded in await answer]
        except DatabaseUnreachable as exc:
            return [exc] * len(items)

    async def close(self) -> None:
        self._closed = True
        async with self._starting:
            running, self._running = self._running, None
        if running is not None:
            await _stop(running.process)
            if running.answers is not None:
                await running.answers  # it ends at the worker's end of file

    async def _current(self) -> _Running:
        async with self._starting:
            running = self._running
            if running is not None and _alive(running):
                return running
            if self._closed:
                raise DatabaseUnreachable("the service is stopping")
            if asyncio.get_running_loop().time() < self._restart_at:
                raise DatabaseUnreachable("the ingest worker keeps stopping; it restarts shortly")
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    __name__,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    env=_child_env(),
                )
            except OSError as exc:
                log.error("the ingest worker could not be started: %s", exc)
                self._stopped()
                raise DatabaseUnreachable("the ingest worker could not be started") from exc
            assert process.stdin is not None and process.stdout is not None
            try:
                async with asyncio.timeout(START_TIMEOUT_S):
                    process.stdin.write(_frame(self._setup))
                    await process.stdin.drain()
                    ready = await _read_reply(process.stdout)
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
                await _stop(process)
                self._stopped()
                raise DatabaseUnreachable("the ingest worker did not start") from exc
            except BaseException:
                await asyncio.shield(_stop(process))
                raise
            if ready != ("ready", None):
                await _stop(process)
                self._stopped()
                raise DatabaseUnreachable("the ingest worker did not start")
            running = self._running = _Running(process)
            running.answers = asyncio.ensure_future(self._read_answers(running))
            return running

    async def _read_answers(self, running: _Running) -> None:
        """Hand each answer to its batch, in order; at the worker's end, fail the rest."""
        process = running.process
        assert process.stdout is not None
        try:
            while True:
                answer = await _read_reply(process.stdout)
                self._stops = 0  # it works: a later stop is restarted at once again
                waiting = running.waiting.popleft()
                if not waiting.done():  # its caller may have been cancelled
                    waiting.set_result(answer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._running is running:
                self._running = None
                if not self._closed:
                    self._stopped(process.pid)
            if process.stdin is not None and not process.stdin.is_closing():
                process.stdin.close()
            while running.waiting:
                waiting = running.waiting.popleft()
                if not waiting.done():
                    waiting.set_exception(DatabaseUnreachable("the ingest worker stopped"))

    def _stopped(self, pid: int | None = None) -> None:
        """Note a worker's stop (or failed start), and when the next may start."""
        self._stops += 1
        pause = 0.0
        if self._stops > 1:
            pause = min(RESTART_BACKOFF_S * 2 ** (self._stops - 2), RESTART_BACKOFF_MAX_S)
        self._restart_at = asyncio.get_running_loop().time() + pause
        log.error(
            "the ingest worker%s stopped (%d in a row); the next batch after %.1f s starts another",
            "" if pid is None else f" (pid {pid})",
            self._stops,
            pause,
        )


def _alive(running: _Running) -> bool:
    return running.process.returncode is None and (
        running.answers is None or not running.answers.done()
    )


async def _read_reply(stream: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await stream.readexactly(_HEADER.size))
    # The worker's own pipe: only this service's child writes on it.
    return pickle.loads(await stream.readexactly(size))  # noqa: S301


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.stdin is not None and not process.stdin.is_closing():
        process.stdin.close()  # the worker answers what it holds, then exits
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await process.wait()
    except TimeoutError:
        log.error("the ingest worker (pid %s) did not stop; killing it", process.pid)
        process.kill()
        await process.wait()


def _child_env() -> dict[str, str]:
    """The service's environment, with this copy of recgate first on the import path: the
    worker runs the same code as the service that started it."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else os.pathsep.join((root, path))}


# ---- the worker process ------------------------------------------------------------------


async def _read(stream: asyncio.StreamReader) -> Any:
    try:
        (size,) = _HEADER.unpack(await stream.readexactly(_HEADER.size))
        data = await stream.readexactly(size)
    except asyncio.IncompleteReadError:
        return None  # the service closed the pipe: stop
    # Standard input is the pipe of the service that started this worker; nothing else.
    return pickle.loads(data)  # noqa: S301


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop, as the service's own server uses, where it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - installed with uvicorn[standard] on Linux
        return None
    return uvloop.new_event_loop


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the service stops its worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to the log stream, never among the replies
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(sys.stdin.buffer, replies))


async def _serve(stdin: IO[bytes], replies: IO[bytes]) -> None:
    """Apply each batch read from ``stdin`` and answer its outcomes on ``replies``, in the
    order read, until the service closes the pipe. On PostgreSQL up to :data:`PIPELINE`
    batches are applied at once, each on a connection of its own, in their order
    (:class:`~app.services.ingest_apply.Turn`): one batch's Python runs while another waits
    for the database, which in turn took up to half of each batch's time."""
    from app.logging import configure_logging

    requests = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(requests), stdin)
    setup: _Setup = await _read(requests)
    configure_logging(setup.log_format, setup.log_level)
    # SQLite's connections come from the database's own engines, one writer at a time.
    sqlite = setup.database_url.startswith("sqlite")
    depth = 1 if sqlite else PIPELINE
    engine = create_engine(setup.database_url, **({} if sqlite else {"pool_size": depth}))
    db = Database(engine, setup.database_url)
    apply = BatchApply(setup.rules)
    slots = asyncio.Semaphore(depth)
    replies.write(_frame(("ready", None)))
    replies.flush()

    async def one(
        request: Any,
        turn: Turn | None,
        answered: asyncio.Future[None] | None,
        done: asyncio.Future[None],
    ) -> None:
        try:
            items, now, handed_over = request
            # Dated when applied, as in the service's process: plus the time it waited.
            now += timedelta(seconds=max(0.0, time.monotonic() - handed_over))
            # Inline (SQLite): nothing else runs on this loop, so a thread hand-over would
            # only cost.
            outcomes = await apply_in_order(db, apply, items, now, inline=True, turn=turn)
            if answered is not None:
                await answered  # answers go in the order the batches came
            replies.write(_frame([_encoded(outcome) for outcome in outcomes]))
            replies.flush()
            done.set_result(None)
        finally:
            slots.release()

    try:
        async with asyncio.TaskGroup() as running:
            turn: Turn | None = None
            answered: asyncio.Future[None] | None = None
            while True:
                await slots.acquire()
                if (request := await _read(requests)) is None:
                    break
                turn = None if sqlite else Turn.following(turn, request[0])
                done = loop.create_future()
                running.create_task(one(request, turn, answered, done))
                answered = done
    except* BrokenPipeError:
        pass  # the service is gone: nobody to answer
    except* Exception:
        # Logged scrubbed, not as the interpreter's own report (raw, on stderr).
        log.exception("the ingest worker failed; the service starts another")
        raise SystemExit(1) from None
    finally:
        await db.close()
        await engine.dispose()


if __name__ == "__main__":
    main()
