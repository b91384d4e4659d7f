"""Optimistic writes (``Database.write(optimistic=True)``) against the real databases.

On PostgreSQL the gate's work runs first outside a transaction: it reads the call without
locking it and writes once, in one statement guarded by the call's version as read. These pin
what that must keep: a write beaten by another writer stores nothing and the work runs again
in a transaction, writes that need a transaction get one, and on SQLite nothing changes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import respx
import sqlalchemy as sa

from app.domain import gate
from app.domain.roles import Role
from app.domain.snapshots import CallSnap, Changes, LinkSnap, RecordingSnap, Transition
from app.domain.states import PauseBehavior, RecordingState
from app.storage import direct
from app.storage.db import Database, create_engine
from app.storage.live import (
    LiveCallRepository,
    calls,
    links,
    recordings,
    segments,
    transitions,
)
from tests.api.test_payment_gating import PAUSE, RESUME, live_call
from tests.conftest import Harness, event, own_database

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
BUMP = (
    calls.update()
    .where(calls.c.id == sa.bindparam("of"))
    .values(live_version=calls.c.live_version + 1)
)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    async with own_database(database_url) as database:
        yield database


async def _call(db: Database) -> tuple[uuid.UUID, int]:
    call = await db.write(lambda c: LiveCallRepository(c).upsert_call("generic", "c-opt", NOW))
    return call.id, call.live_version


async def _stored(db: Database, call_id: uuid.UUID) -> tuple[int, list[str]]:
    def read(conn: sa.Connection) -> tuple[int, list[str]]:
        version = direct.run(conn, sa.select(calls.c.live_version).where(calls.c.id == call_id))
        causes = direct.run(
            conn, sa.select(transitions.c.cause).where(transitions.c.call_id == call_id)
        )
        return version.one()[0], sorted(r[0] for r in causes)

    return await db.write(read)


def _noting(call_id: uuid.UUID, cause: str, changes: Changes) -> None:
    changes.transitions.append(
        Transition("call", call_id, call_id, "in_progress", "in_progress", cause, NOW)
    )


def _opened(
    conn: sa.Connection,
    call_id: uuid.UUID,
    runs: list[bool],
    seen: tuple[CallSnap, int] | None = None,
) -> tuple[LiveCallRepository, CallSnap]:
    """A run of a work: its repository (noted: optimistic or not) and the call it read."""
    repo = LiveCallRepository(conn)
    runs.append(repo.optimistic)
    call = repo.call_by_id(call_id, seen=seen)
    assert call is not None
    return repo, call


def _work(
    call_id: uuid.UUID,
    runs: list[bool],
    *,
    beaten: bool = False,
    shape: Callable[[Changes], None] = lambda _: None,
) -> Callable[[sa.Connection], int]:
    def work(conn: sa.Connection) -> int:
        repo, call = _opened(conn, call_id, runs)
        if beaten and len(runs) == 1:
            # Another replica's transaction changes the call between this read and the write.
            direct.run(conn, BUMP, {"of": call_id})
        changes = Changes(NOW)
        _noting(call_id, f"run {len(runs)}", changes)
        shape(changes)
        repo.write(changes)
        return call.live_version

    return work


async def test_an_optimistic_write_is_one_statement_outside_a_transaction(
    db: Database, database_url: str
) -> None:
    call_id, version = await _call(db)
    runs: list[bool] = []
    heard: list[str] = []
    transactions: list[str] = []

    def hear(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        heard.append(statement.split()[0])

    def begun(conn: sa.Connection) -> None:
        transactions.append(str(conn.get_execution_options().get("isolation_level")))

    for engine in db.sync_engines:
        sa.event.listen(engine, "before_cursor_execute", hear)
        sa.event.listen(engine, "begin", begun)
    try:
        seen = await db.write(_work(call_id, runs), optimistic=True, inline=True)
    finally:
        for engine in db.sync_engines:
            sa.event.remove(engine, "before_cursor_execute", hear)
            sa.event.remove(engine, "begin", begun)
    postgres = database_url.startswith("postgresql")
    assert runs == [postgres]
    if postgres:
        # The call read, then the guarded write, on a connection in autocommit: no BEGIN,
        # no COMMIT, no lock held between them.
        assert heard == ["SELECT", "WITH"]
        assert set(transactions) <= {"AUTOCOMMIT"}
    # Either way the call's version moved on by one, as the version the work saw says.
    assert seen == version + 1
    assert await _stored(db, call_id) == (version + 1, ["run 1"])


async def _with_recording(db: Database, call_id: uuid.UUID) -> uuid.UUID:
    recording = RecordingSnap(
        id=uuid.uuid4(),
        call_id=call_id,
        provider_recording_id="r-opt",
        state=RecordingState.RECORDING,
        created=True,
    )

    def add(conn: sa.Connection) -> None:
        repo = LiveCallRepository(conn)
        assert repo.call_by_id(call_id) is not None
        changes = Changes(NOW)
        changes.recordings[recording.id] = recording
        repo.write(changes)

    await db.write(add)
    return recording.id


def _every_kind(call_id: uuid.UUID, run: int) -> Callable[[LiveCallRepository, Changes], None]:
    """Writes of every kind the gate sends, tagged with the run: a new segment, a changed
    recording, a link between them, a transition."""

    def shape(repo: LiveCallRepository, changes: Changes) -> None:
        (recording,) = repo.recordings(call_id, None)
        segment = gate.open_segment(call_id, PauseBehavior.SILENCE, f"run {run}", None, changes)
        recording.media_url = f"https://pbx.test/run-{run}"
        changes.touch_recording(recording)
        changes.links[(segment.id, recording.id)] = LinkSnap(segment.id, pause_sent_at=NOW)

    return shape


async def _kinds_stored(db: Database, call_id: uuid.UUID) -> tuple[Any, ...]:
    def read(conn: sa.Connection) -> tuple[Any, ...]:
        refs = direct.run(conn, sa.select(segments.c.id, segments.c.reference)).all()
        urls = direct.run(conn, sa.select(recordings.c.media_url)).all()
        linked = direct.run(conn, sa.select(links.c.segment_id)).all()
        return [tuple(r) for r in refs], [r[0] for r in urls], [r[0] for r in linked]

    return await db.write(read)


async def test_a_write_beaten_by_another_stores_nothing_and_runs_again_locked(
    db: Database, database_url: str
) -> None:
    """Another writer changes the call between the read and the guarded write: none of the
    writes (segment, recording, link, transition) lands, and the work runs again locked."""
    call_id, version = await _call(db)
    await _with_recording(db, call_id)
    version += 1
    runs: list[bool] = []

    def work(conn: sa.Connection) -> int:
        repo, call = _opened(conn, call_id, runs)
        if len(runs) == 1:
            # Another replica's transaction changes the call between this read and the write.
            direct.run(conn, BUMP, {"of": call_id})
        changes = Changes(NOW)
        _noting(call_id, f"run {len(runs)}", changes)
        _every_kind(call_id, len(runs))(repo, changes)
        repo.write(changes)
        return call.live_version

    seen = await db.write(work, optimistic=True, inline=True)
    last = len(runs)
    if database_url.startswith("postgresql"):
        # The locked run read the call after the other writer's change.
        assert runs == [True, False] and seen == version + 2
    else:
        assert runs == [False]
    assert await _stored(db, call_id) == (version + 2, ["ivr: payment start", f"run {last}"])
    (segment,), urls, linked = await _kinds_stored(db, call_id)
    assert segment[1] == f"run {last}"
    assert urls == [f"https://pbx.test/run-{last}"]
    assert linked == [segment[0]]


async def test_a_guard_waits_for_a_writer_holding_the_call_then_misses(
    db: Database, database_url: str
) -> None:
    """A transaction holds the call's row (locked, its version moved on, not committed yet):
    the guarded write waits for it, finds the version moved, writes nothing, and the work
    runs again locked after it."""
    if not database_url.startswith("postgresql"):
        pytest.skip("optimistic writes are PostgreSQL's")
    call_id, version = await _call(db)
    runs: list[bool] = []
    other = create_engine(database_url)
    try:
        async with other.connect() as holder:
            await holder.execute(BUMP, {"of": call_id})  # begins, locks, bumps
            task = asyncio.ensure_future(db.write(_work(call_id, runs), optimistic=True))
            # Until the guarded write is waiting on the row lock (bounded).
            for _ in range(500):
                async with other.connect() as waiting:
                    blocked = await waiting.scalar(
                        sa.text("SELECT count(*) FROM pg_locks WHERE NOT granted")
                    )
                if blocked or task.done():
                    break
                await asyncio.sleep(0.01)
            assert blocked and not task.done()
            await holder.commit()
        seen = await task
    finally:
        await other.dispose()
    assert runs == [True, False]
    assert seen == version + 2
    assert await _stored(db, call_id) == (version + 2, ["run 2"])


async def test_writes_that_need_a_transaction_get_one(db: Database, database_url: str) -> None:
    """Ending exposures reads the rows it ends: not in a guarded statement. The optimistic
    run writes nothing and the work runs again in a transaction."""
    call_id, version = await _call(db)
    runs: list[bool] = []

    def ending(changes: Changes) -> None:
        changes.end_call_exposures[call_id] = NOW

    await db.write(_work(call_id, runs, shape=ending), optimistic=True, inline=True)
    assert runs == ([True, False] if database_url.startswith("postgresql") else [False])
    assert await _stored(db, call_id) == (version + 1, [f"run {len(runs)}"])


async def test_an_optimistic_work_writes_once(db: Database, database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("optimistic writes are PostgreSQL's")
    call_id, _ = await _call(db)

    def twice(conn: sa.Connection) -> None:
        repo = LiveCallRepository(conn)
        repo.call_by_id(call_id)
        repo.write(Changes(NOW))
        repo.write(Changes(NOW))

    with pytest.raises(RuntimeError, match="writes once"):
        await db.write(twice, optimistic=True)


async def test_the_one_statement_read_gives_what_separate_reads_give(harness: Harness) -> None:
    """Optimistic reads take the call, its latest segment and its recordings (with their
    links to that segment) in one statement; the snapshots are those of separate reads.
    Two recordings, one paused inside a payment that has ended, one that joined later."""
    await live_call(harness)
    ivr = harness.auth(Role.IVR)
    async with respx.mock(assert_all_called=False) as pbx:
        pbx.post(PAUSE).respond(200, json={"state": "paused"})
        pbx.post(RESUME).respond(200, json={"state": "recording"})
        start = "/v1/calls/generic/c-123/payment/start"
        assert (await harness.client.post(start, headers=ivr)).status_code == 200
        end = "/v1/calls/generic/c-123/payment/end"
        assert (await harness.client.post(end, headers=ivr)).status_code == 200
    later = event("recording.started", recording_id="r-2")
    assert (await harness.send_event(later)).status_code == 200

    def read(conn: sa.Connection) -> tuple[Any, ...]:
        repo = LiveCallRepository(conn)
        call = repo.call_by_key("generic", "c-123")
        assert call is not None
        latest = repo.latest_segment(call.id)
        assert latest is not None
        return (
            call,
            latest,
            repo.open_segment(call.id),
            repo.recordings(call.id, latest.id),
            repo.recordings(call.id, uuid.uuid4(), new_segment=True),
        )

    db = harness.services.db
    together = await db.write(read, optimistic=True, inline=True)
    apart = await db.write(read)
    # The version each reports is the one its write moves the call to: apart, a locked read
    # has moved it already (SQLite's first read too); together, the guarded write would.
    assert replace(together[0], live_version=0) == replace(apart[0], live_version=0)
    assert together[1:] == apart[1:]
    _, latest, still_open, linked, unlinked = together
    assert latest.state == "closed" and still_open is None
    assert [r.provider_recording_id for r in linked] == ["r-1", "r-2"]
    assert linked[0].link is not None and linked[0].link.paused_at is not None
    assert linked[1].link is None and [r.link for r in unlinked] == [None, None]


async def test_a_call_trusted_as_seen_is_guarded_by_that_version(
    db: Database, database_url: str
) -> None:
    """Recording a provider's answer trusts the call as planning left it (no read): a
    change since, by anyone, makes the guarded write miss, and the work runs again locked."""
    call_id, version = await _call(db)
    snapshot = await db.write(lambda c: LiveCallRepository(c).call_by_id(call_id))
    assert snapshot is not None and snapshot.live_version == version + 1
    await db.write(lambda c: direct.run(c, BUMP, {"of": call_id}))  # someone else, since
    runs: list[bool] = []

    def work(conn: sa.Connection) -> int:
        repo, call = _opened(conn, call_id, runs, seen=(snapshot, snapshot.live_version))
        changes = Changes(NOW)
        _noting(call_id, f"run {len(runs)}", changes)
        repo.write(changes)
        return call.live_version

    seen = await db.write(work, optimistic=True, inline=True)
    postgres = database_url.startswith("postgresql")
    assert runs == ([True, False] if postgres else [False])
    assert seen == version + 3
    assert await _stored(db, call_id) == (version + 3, [f"run {len(runs)}"])


async def test_an_open_payment_read_in_one_statement(harness: Harness) -> None:
    """The one-statement read while a payment is open: the open segment, that segment by its
    id, the recording linked to it, and the call by its key (a payment start's read)."""
    await live_call(harness)
    ivr = harness.auth(Role.IVR)
    async with respx.mock(assert_all_called=False) as pbx:
        pbx.post(PAUSE).respond(200, json={"state": "paused"})
        start = "/v1/calls/generic/c-123/payment/start"
        assert (await harness.client.post(start, headers=ivr)).status_code == 200

    def read(conn: sa.Connection) -> tuple[Any, ...]:
        repo = LiveCallRepository(conn)
        call = repo.upsert_call("generic", "c-123", NOW)
        segment = repo.open_segment(call.id)
        assert segment is not None
        return (
            replace(call, live_version=0),
            segment,
            repo.segment(segment.id),
            repo.recordings(call.id, segment.id),
        )

    db = harness.services.db
    together = await db.write(read, optimistic=True, inline=True)
    assert together == await db.write(read)
    _, segment, same, (recording,) = together
    assert segment.state == "paused" and same == segment
    assert recording.link is not None and recording.link.segment_id == segment.id


async def test_an_answer_on_reads_no_write_checked_is_not_final(
    db: Database, database_url: str
) -> None:
    """A read beside the one-statement read is of another snapshot. An optimistic work that
    answers (or refuses) on it without a guarded write runs again in a transaction; one that
    refuses on the one-statement read alone does not."""
    call_id, _ = await _call(db)
    runs: list[bool] = []

    def answers(conn: sa.Connection) -> str:
        repo, call = _opened(conn, call_id, runs)
        repo.segment_by_key(call.id, "no-such-key")  # a read of its own
        return "answer"

    assert await db.write(answers, optimistic=True) == "answer"
    postgres = database_url.startswith("postgresql")
    assert runs == ([True, False] if postgres else [False])

    runs.clear()

    def refuses(conn: sa.Connection) -> None:
        repo, call = _opened(conn, call_id, runs)
        if len(runs) == 1:
            repo.segment_by_key(call.id, "no-such-key")
        raise LookupError(f"refused on run {len(runs)}")

    with pytest.raises(LookupError, match="run 2" if postgres else "run 1"):
        await db.write(refuses, optimistic=True)

    runs.clear()

    def refuses_on_one_read(conn: sa.Connection) -> None:
        _opened(conn, call_id, runs)
        raise LookupError("refused")

    with pytest.raises(LookupError):
        await db.write(refuses_on_one_read, optimistic=True)
    assert runs == [postgres]
