"""Storage guarantees: SQLite pragmas, UTC timestamps, migrations build the schema."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import pytest
import sqlalchemy as sa

from app.domain.scrub import scrub
from app.services.ingest_apply import stored_payload
from app.storage.db import Database, create_engine
from app.storage.models import JsonDocument, UTCDateTime
from tests.conftest import own_database

T = TypeVar("T")


@asynccontextmanager
async def sqlite_database(template: Path, path: Path) -> AsyncIterator[Database]:
    """The hot paths' database on a fresh copy of the migrated SQLite template at ``path``."""
    await asyncio.to_thread(shutil.copyfile, template, path)
    async with own_database(f"sqlite+aiosqlite:///{path}") as db:
        yield db


async def write_behind_held_lock(
    db: Database, path: Path, work: Callable[[sa.Connection], T], held_s: float
) -> T:
    """``work`` written inline while another connection holds the write lock for ``held_s``:
    it waits (queued for the writer thread), then is written."""
    import sqlite3

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    pending = asyncio.ensure_future(db.write(work, inline=True))
    await asyncio.sleep(held_s)
    assert not pending.done(), "it waits for the lock, in the writer thread"
    holder.execute("COMMIT")
    holder.close()
    return await asyncio.wait_for(pending, 5)


def grow_wal(conn: sa.Connection) -> None:
    """A commit's worth of WAL: a page-sized row."""
    conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS wal_probe (x TEXT)")
    conn.exec_driver_sql("INSERT INTO wal_probe VALUES (?)", (" " * 4000,))


async def test_sqlite_runs_in_wal_with_foreign_keys(sqlite_template: Path, tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    await asyncio.to_thread(shutil.copyfile, sqlite_template, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar_one() == "wal"
            assert (await conn.execute(sa.text("PRAGMA foreign_keys"))).scalar_one() == 1
            with pytest.raises(sa.exc.IntegrityError):
                await conn.execute(
                    sa.text(
                        "INSERT INTO recordings (id, call_id, provider_recording_id, state, media_files,"
                        " quarantined, created_at, updated_at) VALUES ('a', 'no-such-call', 'r', 'pending',"
                        " 1, 0, '2026-01-01', '2026-01-01')"
                    )
                )
    finally:
        await engine.dispose()


async def test_timestamps_round_trip_as_utc(database_url: str) -> None:
    engine = create_engine(database_url)
    table = sa.Table("ts_probe", sa.MetaData(), sa.Column("at", UTCDateTime()))
    london_summer = datetime(2026, 7, 1, 12, 0, tzinfo=timezone(timedelta(hours=1)))
    try:
        async with engine.begin() as conn:
            if database_url.startswith("postgresql"):
                # The session's zone is not UTC: asyncpg reads a timestamptz as UTC anyway
                # (UTCDateTime converts nothing it reads there).
                await conn.execute(sa.text("SET LOCAL TIME ZONE 'Europe/London'"))
            await conn.run_sync(table.create)
            await conn.execute(table.insert().values(at=london_summer))
            stored = (await conn.execute(sa.select(table.c.at))).scalar_one()
            await conn.run_sync(table.drop)
    finally:
        await engine.dispose()
    assert stored == datetime(2026, 7, 1, 11, 0, tzinfo=UTC)
    assert stored.tzinfo is UTC


async def test_an_encoded_json_document_is_stored_as_sa_json_stores_its_value(
    database_url: str,
) -> None:
    """The inbox's payload column takes a document the service encoded already
    (``stored_payload``) and stores that text as it is: the same text ``sa.JSON`` stores for
    the document itself, read back as the same value. A document not yet encoded is encoded
    as ``sa.JSON`` does."""
    engine = create_engine(database_url)
    meta = sa.MetaData()
    table = sa.Table(
        "json_probe",
        meta,
        sa.Column("n", sa.Integer),
        sa.Column("theirs", sa.JSON),
        sa.Column("ours", JsonDocument),
    )
    document = {"b": [1, 2.5, None, True], "a": {"é": '\u0000 quote" ✓'}, "card": "4111"}
    scrubbed = scrub({**document, "note": "card 4111 1111 1111 1111"})
    try:
        async with engine.begin() as conn:
            await conn.run_sync(meta.create_all)
            await conn.execute(
                table.insert(),
                [
                    {"n": 1, "theirs": scrubbed, "ours": stored_payload(dict(scrubbed))},
                    {"n": 2, "theirs": document, "ours": document},
                ],
            )
            as_text = sa.select(sa.cast(table.c.theirs, sa.Text), sa.cast(table.c.ours, sa.Text))
            texts = (await conn.execute(as_text.order_by(table.c.n))).all()
            values = (await conn.execute(sa.select(table.c.ours).order_by(table.c.n))).all()
            await conn.run_sync(meta.drop_all)
    finally:
        await engine.dispose()
    assert [theirs for theirs, _ in texts] == [ours for _, ours in texts]
    assert [value for (value,) in values] == [scrubbed, document]
    assert "4111 1111" not in texts[0][1]


async def test_an_infinite_timestamp_set_by_hand_reads_as_utc(database_url: str) -> None:
    """``infinity`` (an operator's "keep forever", set by hand) comes from asyncpg naive; it
    is read tagged UTC like every other timestamp, so comparing it with recgate's times
    works."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no infinite timestamp")
    engine = create_engine(database_url)
    table = sa.Table("ts_forever", sa.MetaData(), sa.Column("at", UTCDateTime()))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.create)
            await conn.execute(sa.text("INSERT INTO ts_forever VALUES ('infinity')"))
            stored = (await conn.execute(sa.select(table.c.at))).scalar_one()
            await conn.run_sync(table.drop)
    finally:
        await engine.dispose()
    assert stored.tzinfo is UTC
    assert stored > datetime.now(UTC)


def test_naive_timestamps_are_refused() -> None:
    sqlite = sa.create_engine("sqlite://").dialect
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(datetime(2026, 1, 1), sqlite)
    bind = UTCDateTime().bind_processor(sqlite)
    assert bind is not None
    with pytest.raises(ValueError, match="naive"):
        bind(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 12, 4, 12, 0, tzinfo=UTC),
        datetime(2026, 12, 4, 12, 0, 5, 123456, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 30, 0, 1, tzinfo=timezone(timedelta(hours=1))),
        datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC),
        None,
    ],
)
def test_sqlite_timestamp_text_is_sqlalchemys_own(value: datetime | None) -> None:
    """The one-step SQLite bind writes exactly what SQLAlchemy's DATETIME would after the
    UTC normalisation, so stored text compares and reads back as before."""
    sqlite = sa.create_engine("sqlite://").dialect
    fast = UTCDateTime().bind_processor(sqlite)
    plain = sa.DateTime(timezone=True).dialect_impl(sqlite).bind_processor(sqlite)
    assert fast is not None and plain is not None
    expected = plain(UTCDateTime().process_bind_param(value, sqlite))
    assert fast(value) == expected
    # And back: what SQLAlchemy's DATETIME reads, tagged UTC, is what the one step reads.
    read = UTCDateTime().result_processor(sqlite, None)
    plain_read = sa.DateTime(timezone=True).dialect_impl(sqlite).result_processor(sqlite, None)
    assert read is not None and plain_read is not None
    back = UTCDateTime().process_result_value(plain_read(expected), sqlite)
    assert read(expected) == back
    assert back is None or (back.tzinfo is UTC and value is not None and back == value)


def test_sqlite_timestamp_text_with_its_own_zone_reads_as_utc() -> None:
    read = UTCDateTime().result_processor(sa.create_engine("sqlite://").dialect, None)
    assert read is not None
    assert read("2026-07-01 12:00:00+01:00") == datetime(2026, 7, 1, 11, 0, tzinfo=UTC)
    assert read("2026-07-01 12:00:00") == datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


async def test_migrations_match_the_models(database_url: str) -> None:
    """What the migrations build is what the ORM expects: no drift to autogenerate."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.storage.models import Base

    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"


async def test_the_sqlite_wal_starts_again_under_steady_commits(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """Commits that never stop (a busy event loop) still let the WAL start again from its
    beginning after each checkpoint: it does not grow with every commit, nor does the cost of
    each commit and page lookup with it."""
    from app.storage.db import _CHECKPOINT_EVERY

    path = tmp_path / "steady.db"
    wal = path.with_name(path.name + "-wal")
    async with sqlite_database(sqlite_template, path) as db:
        for _ in range(_CHECKPOINT_EVERY - 1):
            await db.write(grow_wal, inline=True)
        one_round = wal.stat().st_size  # what a checkpoint's worth of commits takes
        # Five rounds more, a millisecond apart (a busy loop's requests): each checkpoint
        # runs while the commits go on.
        for _ in range(5 * _CHECKPOINT_EVERY):
            await db.write(grow_wal, inline=True)
            await asyncio.sleep(0.001)
        # Without starting again the WAL would hold all six rounds.
        assert wal.stat().st_size < 3 * one_round


@pytest.mark.parametrize(
    ("busy_passes", "modes"),
    [
        # A commit during the first pass only: the third finds the WAL as the second left it.
        (1, ["PASSIVE", "PASSIVE", "PASSIVE", "RESTART"]),
        # Commits during every pass: started again after the third, over one commit's frames.
        (8, ["PASSIVE", "PASSIVE", "PASSIVE", "RESTART"]),
        # None: the second pass finds the WAL as the first left it.
        (0, ["PASSIVE", "PASSIVE", "RESTART"]),
    ],
)
def test_the_wal_restarts_when_next_to_nothing_is_left_to_copy_under_the_lock(
    sqlite_template: Path, tmp_path: Path, busy_passes: int, modes: list[str]
) -> None:
    """RESTART copies what is left under the write lock, with two flushes to disk, while
    every writer waits. So PASSIVE passes (no lock) copy first, until one finds the WAL as
    the pass before it left it, or, under commits that never pause, three passes have made
    what is left one pass's commits: then RESTART, and the WAL starts again."""
    import sqlite3

    from app.storage.db import _checkpoint_and_restart

    path = tmp_path / "x.db"
    shutil.copyfile(sqlite_template, path)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE wal_probe (x TEXT)")
    row = " " * 4000
    for _ in range(50):
        writer.execute("INSERT INTO wal_probe VALUES (?)", (row,))
    seen: list[tuple[str, tuple[int, int, int]]] = []
    checkpointer = sqlite3.connect(path, isolation_level=None)
    checkpointer.execute("PRAGMA busy_timeout=0")

    class Cursor:
        """The checkpoint's own cursor; a commit lands during each of the first
        ``busy_passes`` passes (its transaction began before the pass, as a busy loop's)."""

        def execute(self, sql: str) -> sqlite3.Cursor:
            during = "PASSIVE" in sql and len(seen) < busy_passes
            if during:
                writer.execute("BEGIN IMMEDIATE")
                writer.execute("INSERT INTO wal_probe VALUES (?)", (row,))
            done = checkpointer.execute(sql).fetchone()
            if during:
                writer.execute("COMMIT")
            seen.append((sql, done))
            return checkpointer.execute("SELECT ?, ?, ?", done)

    _checkpoint_and_restart(Cursor())
    assert [sql.removeprefix("PRAGMA wal_checkpoint(").rstrip(")") for sql, _ in seen] == modes
    frames = [done[1] for _, done in seen]
    assert all(done[1] == done[2] for _, done in seen), "each copied all it saw"
    assert frames[-1] - frames[-2] <= (frames[1] - frames[0]), "RESTART copied a commit at most"
    writer.execute("INSERT INTO wal_probe VALUES (?)", (row,))  # from the WAL's beginning again
    busy, now, _ = writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0
    assert now < frames[0] // 10, "one commit's frames, not the WAL's fifty"
    writer.close()
    checkpointer.close()


async def test_a_queued_sqlite_write_tries_the_lock_often_not_in_growing_sleeps(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """A write the event loop queued for the writer thread (it met the lock) takes the lock
    soon after it is free: the thread tries every half millisecond, where SQLite's busy
    handler sleeps 1, 2, 5, 10, 15, 20, 25 ms between tries. And it still waits long enough
    for a holder that takes its time."""
    import sqlite3

    path = tmp_path / "x.db"
    async with sqlite_database(sqlite_template, path) as db:
        tries: list[str] = []
        assert db._queued is not None

        @sa.event.listens_for(db._queued, "connect")
        def _count(dbapi_connection: sqlite3.Connection, _record: object) -> None:
            dbapi_connection.set_trace_callback(tries.append)

        assert await write_behind_held_lock(db, path, _count_calls, 0.3) == 0
        begins = [t for t in tries if t == "BEGIN IMMEDIATE"]
        # 300 ms at one try per 0.5 ms is 600 tries; the busy handler would make one call
        # (its own sleeps inside) of it. Loosely bounded for a loaded machine.
        assert len(begins) >= 20


def _count_calls(conn: sa.Connection) -> int:
    return int(conn.exec_driver_sql("SELECT count(*) FROM calls").scalar_one())


async def test_a_queued_sqlite_write_does_not_wait_for_a_checkpoint(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The WAL checkpoint (disk flushes, and pauses while a reader keeps it from starting the
    WAL again) runs on a thread of its own: a write queued meanwhile for the writer thread
    does not wait for it."""
    import sqlite3

    from app.storage import db as storage

    monkeypatch.setattr(storage, "_CHECKPOINT_EVERY", 1)
    monkeypatch.setattr(storage, "_RESTART_PAUSE_S", 1.0)
    path = tmp_path / "x.db"
    async with sqlite_database(sqlite_template, path) as db:
        await db.write(grow_wal)
        # A reader in the WAL: the checkpoint copies everything but cannot start the WAL
        # again, and pauses (a second here) before each of its further tries.
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM wal_probe").fetchone()
        await db.write(grow_wal, inline=True)  # the checkpoint starts
        assert db._checkpointing
        await asyncio.wait_for(db.write(grow_wal), 0.9)  # the writer thread's
        assert db._checkpointing, "the checkpoint was still pausing"
        reader.execute("COMMIT")
        reader.close()


async def test_sqlite_inline_write_runs_in_the_loop_or_queues_behind_a_held_lock(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """The payment gate's writes run in the event loop when the lock is free, and go to the
    writer thread (never failing, never blocking the loop) when another writer holds it."""
    import threading

    path = tmp_path / "x.db"
    loop_thread = threading.get_ident()
    ran_on: list[int] = []

    def work(conn: sa.Connection) -> int:
        ran_on.append(threading.get_ident())
        return _count_calls(conn)

    async with sqlite_database(sqlite_template, path) as db:
        assert await db.write(work, inline=True) == 0
        assert ran_on == [loop_thread]

        assert await write_behind_held_lock(db, path, work, 0.2) == 0
        assert ran_on[-1] != loop_thread

        # Past its deadline an inline write is not started.
        with pytest.raises(TimeoutError):
            await db.write(work, inline=True, deadline=asyncio.get_running_loop().time() - 1)
        assert len(ran_on) == 2

        # The loop's connection never checkpoints; a thread of its own does, now and then.
        wal = path.with_name(path.name + "-wal")
        while db._commits % 200 != 0:  # up to the 200th: the checkpoint runs
            await db.write(grow_wal, inline=True)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not db._checkpointing:
                break
        grown = wal.stat().st_size
        # Everything checkpointed: the next commits write the WAL from its start again, so it
        # does not grow. Without the checkpoint it would grow by about 100 pages.
        for _ in range(100):
            await db.write(grow_wal, inline=True)
        assert wal.stat().st_size <= grown, "the WAL was not checkpointed"


def _backfilled(path: Path) -> int:
    """Frames of the WAL of the SQLite database at ``path`` copied into the database since it
    last started again (``nBackfill`` in the ``-shm`` file, after the two copies of its
    48-byte header)."""
    shm = path.with_name(path.name + "-shm").read_bytes()
    return int.from_bytes(shm[96:100], sys.byteorder)


async def test_a_write_on_the_writer_thread_leaves_the_checkpoint_to_its_thread(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """A payment's write that met the lock (the ingest worker's batch) goes to the writer
    thread. Its commit must not checkpoint the WAL itself, as SQLite does by default once the
    WAL holds 1,000 pages (under load, always): the payment would wait for every page the
    other process committed since the last checkpoint to be copied and flushed. Its commits
    count towards the checkpoint thread's instead."""
    import sqlite3

    path = tmp_path / "w.db"
    async with sqlite_database(sqlite_template, path) as db:
        # The other process, connected throughout (the last connection to close removes the
        # -shm file): 1,200 pages in the WAL.
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("PRAGMA wal_autocheckpoint=0")
            other.execute("CREATE TABLE bulk (x BLOB)")
            other.execute(
                "INSERT INTO bulk WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
                "SELECT i + 1 FROM n WHERE i < 1200) SELECT randomblob(4000) FROM n"
            )
            assert _backfilled(path) == 0
            await db.write(grow_wal)  # not inline: the writer thread's
            assert _backfilled(path) == 0, "the writer thread's commit checkpointed the WAL"
            while db._commits % 200 != 0:  # the 200th starts the checkpoint thread
                await db.write(grow_wal)
            for _ in range(250):  # bounded: until the checkpoint thread is done
                await asyncio.sleep(0.02)
                if not db._checkpointing:
                    break
            assert _backfilled(path) > 1200, "its commits did not count towards a checkpoint"
        finally:
            other.close()


def _literal(value: object) -> str:
    """A parameter's value as SQL text, for a plan of a statement prepared by hand: an array
    as PostgreSQL writes one."""
    if value is None:
        return "NULL"
    if isinstance(value, list | tuple):
        return "'{" + ",".join(str(v) for v in value) + "}'"
    return f"'{value}'"


async def test_the_lean_indexes_serve_their_queries(database_url: str) -> None:
    """The partial indexes of alembic 0009 are the ones the planners use for the queries the
    service really sends: the upkeep's due and overlong segments, the gauges' open segments,
    the status page's failed pauses (a generic plan on PostgreSQL: what a bound parameter
    would hide), a call's recordings through the unique index that starts with the call's
    id, and a batch's live rows by the calls' key and that index. A state added to the open
    ones without a migration of the index fails here (on SQLite, whose planner wants the
    very condition). On PostgreSQL ``enable_seqscan = off`` shows the index can serve the
    query, not that the planner would pick it for a table of this size."""
    import uuid

    from app.storage.db import session_factory
    from app.storage.live import LiveCallRepository
    from app.storage.repositories import SegmentRepository

    engine = create_engine(database_url)
    sent: list[tuple[str, object]] = []

    def heard(conn: object, cursor: object, sql: str, params: object, *_: object) -> None:
        sent.append((sql, params))

    def plan(sync: sa.Connection, sql: str, params: object) -> str:
        if sync.dialect.name == "sqlite":
            rows = sync.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params).all()  # type: ignore[arg-type]
            return " ".join(str(row[-1]) for row in rows)
        # The plan a prepared statement settles on: one for any values of its parameters.
        sync.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        sync.exec_driver_sql("SET enable_seqscan = off")  # an index it can use, it then does
        sync.exec_driver_sql(f"PREPARE probe AS {sql}")
        try:
            values = ", ".join(_literal(v) for v in params)  # type: ignore[attr-defined]
            explain = f"EXPLAIN EXECUTE probe{f'({values})' if values else ''}"
            rows = sync.exec_driver_sql(explain).all()
        finally:
            sync.exec_driver_sql("DEALLOCATE probe")
        return " ".join(str(row[0]) for row in rows)

    def definitions(sync: sa.Connection) -> dict[str, str]:
        """Each index's name and its definition."""
        if sync.dialect.name == "sqlite":
            return dict(sync.exec_driver_sql("SELECT name, sql FROM sqlite_master").all())
        return dict(sync.exec_driver_sql("SELECT indexname, indexdef FROM pg_indexes").all())

    def unique_index(sync: sa.Connection, table: str, columns: list[str], named: str) -> str:
        """The name plans give the unique index of ``table`` on ``columns`` (``named`` on
        PostgreSQL): SQLite's own, by number, for a constraint's or a primary key's."""
        if sync.dialect.name != "sqlite":
            return named
        for _, name, *_ in sync.exec_driver_sql(f"PRAGMA index_list({table})").all():
            found = [row[2] for row in sync.exec_driver_sql(f"PRAGMA index_info({name})")]
            if found == columns:
                return str(name)
        raise AssertionError(f"no unique index of {table} on {columns}")

    async def plans_of(work: Callable[[], object]) -> list[str]:
        sent.clear()
        sa.event.listen(engine.sync_engine, "before_cursor_execute", heard)
        try:
            await work()  # type: ignore[misc]
        finally:
            sa.event.remove(engine.sync_engine, "before_cursor_execute", heard)
        async with engine.connect() as conn:
            return [await conn.run_sync(plan, sql, params) for sql, params in sent]

    now = datetime.now(UTC)
    try:

        async def due() -> None:
            async with engine.connect() as conn:
                await conn.run_sync(lambda sync: LiveCallRepository(sync).due_segments(now, 10))

        async def recordings() -> None:
            async with engine.connect() as conn:
                await conn.run_sync(
                    lambda sync: LiveCallRepository(sync).recordings(uuid.uuid4(), None)
                )

        async def live_rows() -> None:
            async with engine.connect() as conn:
                await conn.run_sync(
                    lambda sync: LiveCallRepository(sync).live_rows([uuid.uuid4(), uuid.uuid4()])
                )

        async def failed_pauses() -> None:
            async with session_factory(engine)() as session:
                await SegmentRepository(session).count_pause_failures_since(now)

        async def open_segments() -> None:
            async with session_factory(engine)() as session:
                segments = SegmentRepository(session)
                await segments.count_open()
                await segments.count_open_since_before(now)
                await segments.count_resume_stuck(now)
            async with engine.begin() as conn:
                await conn.run_sync(lambda sync: LiveCallRepository(sync).flag_overlong(now, now))

        async with engine.connect() as conn:
            indexes = await conn.run_sync(definitions)
            key = await conn.run_sync(
                unique_index,
                "recordings",
                ["call_id", "provider_recording_id"],
                "uq_recordings_key",
            )
            call_key = await conn.run_sync(unique_index, "calls", ["id"], "calls_pkey")
        # Partial, as built by the migrations (alembic's comparison of the models does not
        # look at an index's WHERE).
        for name in (
            "ix_payment_segments_due_at",
            "ix_payment_segments_open",
            "ix_state_transitions_pause_failed",
        ):
            assert "WHERE" in indexes[name], name

        def uses(plans: list[str], name: str) -> bool:
            return bool(plans) and all(name in p for p in plans)

        assert uses(await plans_of(due), "ix_payment_segments_due_at")
        assert uses(await plans_of(failed_pauses), "ix_state_transitions_pause_failed")
        assert uses(await plans_of(open_segments), "ix_payment_segments_open")
        assert uses(await plans_of(recordings), key)
        # A batch's live rows: its calls by their key, their recordings by the call's.
        live = await plans_of(live_rows)
        assert uses(live, call_key) and uses(live, key), live
    finally:
        await engine.dispose()
