"""The gate's optimistic writes keep a few PostgreSQL connections between writes.

A checkout from the async engine's pool and its return cost about as much as one of the
gate's statements, twice per payment start. What keeping them must not cost: a work's
settings leaking into the next one (a durable commit sent as a lazy one), a connection the
server dropped failing a request, a failed connection kept, or more connections kept out of
the pool than the few the gate needs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
import sqlalchemy as sa

from app.domain.snapshots import Changes, Transition
from app.storage import db as db_module
from app.storage import direct
from app.storage.db import KEPT_CONNECTIONS, Database, DatabaseUnreachable, create_engine
from app.storage.live import LiveCallRepository
from tests.conftest import emptied, own_database

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


@pytest.fixture
def pg_url(postgres_database: str) -> str:
    """PostgreSQL only: SQLite keeps its one connection of the event loop anyway."""
    return emptied(postgres_database)


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[Database]:
    async with own_database(pg_url) as database:
        yield database


async def _call(db: Database) -> uuid.UUID:
    call = await db.write(lambda c: LiveCallRepository(c).upsert_call("generic", "c-kept", NOW))
    return call.id


def _noting(call_id: uuid.UUID, cause: str) -> Callable[[sa.Connection], int]:
    """A gate-like work: read the call, write one transition guarded by its version."""

    def work(conn: sa.Connection) -> int:
        repo = LiveCallRepository(conn)
        call = repo.call_by_id(call_id)
        assert call is not None
        changes = Changes(NOW)
        changes.transitions.append(
            Transition("call", call_id, call_id, "in_progress", "in_progress", cause, NOW)
        )
        repo.write(changes)
        return call.live_version

    return work


def _backend_pid(conn: sa.Connection) -> int:
    pid: int = direct.run(conn, sa.select(sa.func.pg_backend_pid())).one()[0]
    return pid


def _terminate(pid: int, conn: sa.Connection) -> None:
    """End backend ``pid``, waiting (up to 5 s) until it has gone."""
    assert direct.run(conn, sa.select(sa.func.pg_terminate_backend(pid, 5000))).one()[0]


def _idle_for(db: Database, seconds: float) -> None:
    """Age the connections ``db`` keeps as if ``seconds`` had passed."""
    kept = db._kept
    kept._idle = [(conn, since - seconds) for conn, since in kept._idle]


def _checked_out(db: Database) -> int:
    pool: Any = db.engine.sync_engine.pool
    count: int = pool.checkedout()
    return count


class Heard:
    def __init__(self, db: Database) -> None:
        self.engine = db.engine.sync_engine
        self.statements: list[str] = []
        self.checkouts = 0

    def __enter__(self) -> Heard:
        sa.event.listen(self.engine, "before_cursor_execute", self._statement)
        sa.event.listen(self.engine.pool, "checkout", self._checkout)
        return self

    def __exit__(self, *_: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._statement)
        sa.event.remove(self.engine.pool, "checkout", self._checkout)

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        self.statements.append(statement)

    def _checkout(self, *_: Any) -> None:
        self.checkouts += 1


async def test_writes_in_a_row_take_one_connection_from_the_pool(pg: Database) -> None:
    call_id = await _call(pg)
    versions = []
    with Heard(pg) as heard:
        for n in range(5):
            versions.append(await pg.write(_noting(call_id, f"w{n}"), optimistic=True))
    assert heard.checkouts == 1
    # Each write its read and its guarded write: no ping, no reset between them.
    assert [s.split()[0] for s in heard.statements] == ["SELECT", "WITH"] * 5
    assert versions == sorted(set(versions))


async def test_a_lazy_works_setting_does_not_reach_the_next_work(pg: Database) -> None:
    """A planning work (``durable=False``) that answers without writing leaves its
    connection marked for a lazy commit; the durable write after it on that connection
    must still wait for the disk."""
    call_id = await _call(pg)

    def answers_without_writing(conn: sa.Connection) -> None:
        assert LiveCallRepository(conn).call_by_id(call_id) is not None

    with Heard(pg) as heard:
        await pg.write(answers_without_writing, optimistic=True, durable=False)
        await pg.write(_noting(call_id, "durable"), optimistic=True)
        await pg.write(_noting(call_id, "lazy"), optimistic=True, durable=False)
    writes = [s for s in heard.statements if s.startswith("WITH")]
    assert len(writes) == 2
    assert "synchronous_commit" not in writes[0]
    assert "synchronous_commit" in writes[1]
    assert heard.checkouts == 1


async def test_a_connection_the_server_dropped_costs_no_write(
    pg: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    call_id = await _call(pg)
    first = await pg.write(_backend_pid, optimistic=True)
    await pg.read(partial(_terminate, first))
    # The kept connection has been idle "long enough": it is pinged before use.
    monkeypatch.setattr(db_module, "_PING_AFTER_IDLE_S", 0.0)
    assert await pg.write(_noting(call_id, "after the drop"), optimistic=True)
    assert await pg.write(_backend_pid, optimistic=True) != first


async def test_a_restart_costs_one_write_not_one_per_kept_connection(pg: Database) -> None:
    """Within the 5 s no ping is sent: the first write on a connection the server dropped
    fails (the IVR hears 503), and the other kept ones, likely gone too, are dropped with it."""
    call_id = await _call(pg)

    def pid_after_a_while(conn: sa.Connection) -> int:
        direct.run(conn, sa.select(sa.func.pg_sleep(0.05)))
        return _backend_pid(conn)

    pids = await asyncio.gather(*(pg.write(pid_after_a_while, optimistic=True) for _ in range(3)))
    assert _checked_out(pg) == 3
    for pid in pids:
        await pg.read(partial(_terminate, pid))
    with pytest.raises(DatabaseUnreachable):
        await pg.write(_noting(call_id, "on a dropped connection"), optimistic=True)
    assert _checked_out(pg) == 0
    assert await pg.write(_noting(call_id, "on a fresh one"), optimistic=True)


async def test_a_deadline_during_the_ping_loses_no_connection(
    pg: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    call_id = await _call(pg)
    await pg.write(_noting(call_id, "kept"), optimistic=True)
    assert _checked_out(pg) == 1

    def slow_ping(conn: sa.Connection) -> None:
        direct.run(conn, sa.select(sa.func.pg_sleep(2)))

    monkeypatch.setattr(db_module, "_PING_AFTER_IDLE_S", 0.0)
    monkeypatch.setattr(db_module, "_ping", slow_ping)
    deadline = asyncio.get_running_loop().time() + 0.2
    with pytest.raises(TimeoutError):
        await pg.write(_noting(call_id, "late"), optimistic=True, deadline=deadline)
    assert _checked_out(pg) == 0


async def test_a_work_that_needs_a_transaction_keeps_its_connection(pg: Database) -> None:
    """Reading the call twice cannot be done optimistically (:class:`direct.NeedsTransaction`):
    the work runs again locked, in a transaction of the pool's, and the kept connection
    stays kept for the next write."""
    call_id = await _call(pg)

    def reads_twice(conn: sa.Connection) -> int:
        repo = LiveCallRepository(conn)
        repo.call_by_id(call_id)
        call = repo.call_by_id(call_id)
        assert call is not None
        return call.live_version

    with Heard(pg) as heard:
        await pg.write(reads_twice, optimistic=True)
        assert _checked_out(pg) == 1
        await pg.write(_noting(call_id, "after"), optimistic=True)
    # One for the first try (kept since), one for the locked transaction; none after.
    assert heard.checkouts == 2


async def test_nothing_is_kept_after_close(pg: Database) -> None:
    started = asyncio.Event()

    def slow(conn: sa.Connection) -> None:
        started.set()  # in the event loop's thread: run_sync's greenlet
        direct.run(conn, sa.select(sa.func.pg_sleep(0.2)))

    writing = asyncio.create_task(pg.write(slow, optimistic=True))
    await started.wait()
    await pg.close()
    await writing
    assert _checked_out(pg) == 0


async def test_none_is_kept_while_the_pool_lends_beyond_its_size(pg_url: str) -> None:
    engine = create_engine(pg_url, pool_size=2, max_overflow=8)
    db = Database(engine, pg_url)

    def slow(conn: sa.Connection) -> None:
        direct.run(conn, sa.select(sa.func.pg_sleep(0.05)))

    try:
        await asyncio.gather(*(db.write(slow, optimistic=True) for _ in range(6)))
        # Kept only once the pool was back within its size: the other users' share stays.
        assert _checked_out(db) <= 2
    finally:
        await db.close()
        await engine.dispose()


async def test_a_failed_work_gives_its_connection_back(pg: Database) -> None:
    call_id = await _call(pg)
    await pg.write(_noting(call_id, "kept"), optimistic=True)
    assert _checked_out(pg) == 1

    def fails(conn: sa.Connection) -> None:
        LiveCallRepository(conn).call_by_id(call_id)
        raise ValueError("a bug in the work")

    with pytest.raises(ValueError):
        await pg.write(fails, optimistic=True)
    assert _checked_out(pg) == 0
    await pg.write(_noting(call_id, "kept again"), optimistic=True)
    assert _checked_out(pg) == 1


async def test_a_few_connections_are_kept_and_none_after_close(pg: Database) -> None:
    def slow(conn: sa.Connection) -> None:
        direct.run(conn, sa.select(sa.func.pg_sleep(0.05)))

    await asyncio.gather(*(pg.write(slow, optimistic=True) for _ in range(3 * KEPT_CONNECTIONS)))
    assert _checked_out(pg) == KEPT_CONNECTIONS
    await pg.close()
    assert _checked_out(pg) == 0


async def test_a_fresh_process_opens_its_kept_connections_before_the_first_payment(
    pg: Database,
) -> None:
    def slow(conn: sa.Connection) -> None:
        direct.run(conn, sa.select(sa.func.pg_sleep(0.05)))

    assert await pg.keep_warm() == KEPT_CONNECTIONS
    assert _checked_out(pg) == KEPT_CONNECTIONS
    with Heard(pg) as heard:
        await asyncio.gather(*(pg.write(slow, optimistic=True) for _ in range(KEPT_CONNECTIONS)))
    assert heard.checkouts == 0
    # Kept already and used just now: nothing to open or ping.
    assert await pg.keep_warm() == 0


async def test_a_payment_after_a_quiet_spell_sends_no_ping(
    pg: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper pings a connection kept idle for 2 s, so the next write, more than the 5 s
    ping age after the connection's last work, goes straight to its statements."""
    call_id = await _call(pg)
    await pg.write(_noting(call_id, "kept"), optimistic=True)
    pings: list[int] = []
    ping = db_module._ping

    def counted(conn: sa.Connection) -> None:
        pings.append(1)
        ping(conn)

    monkeypatch.setattr(db_module, "_ping", counted)
    _idle_for(pg, 3.0)
    assert await pg.keep_warm() == 1
    assert len(pings) == 1
    _idle_for(pg, 3.0)  # 6 s since the connection's last work, 3 s since the keeper's ping
    with Heard(pg) as heard:
        assert await pg.write(_noting(call_id, "after a quiet spell"), optimistic=True)
    assert len(pings) == 1
    assert heard.checkouts == 0


async def test_the_keeper_finds_a_dropped_connection_before_a_payment_does(
    pg: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlike a write within the ping age (the restart test above), the keeper's ping costs
    no request its answer: the connection the server dropped is let go before it is used."""
    call_id = await _call(pg)
    first = await pg.write(_backend_pid, optimistic=True)
    await pg.read(partial(_terminate, first))
    monkeypatch.setattr(db_module, "_PING_AFTER_IDLE_S", 0.0)  # every kept one is due
    assert await pg.keep_warm() == 0
    assert _checked_out(pg) == 0
    monkeypatch.setattr(db_module, "_PING_AFTER_IDLE_S", 5.0)  # no ping before the write
    assert await pg.write(_noting(call_id, "after the drop"), optimistic=True)
    assert await pg.write(_backend_pid, optimistic=True) != first


async def test_a_write_during_the_keepers_pings_finds_a_kept_connection(
    pg: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper pings one connection at a time: the others stay kept meanwhile, so a write
    that comes then opens nothing."""
    assert await pg.keep_warm() == KEPT_CONNECTIONS
    call_id = await _call(pg)

    pinging = asyncio.Event()

    def slow_ping(conn: sa.Connection) -> None:
        pinging.set()  # in the event loop's thread: run_sync's greenlet
        direct.run(conn, sa.select(sa.func.pg_sleep(0.1)))

    monkeypatch.setattr(db_module, "_ping", slow_ping)
    monkeypatch.setattr(db_module, "_PING_AFTER_IDLE_S", 0.0)  # every kept one is due
    keeping = asyncio.create_task(pg.keep_warm())
    await pinging.wait()
    with Heard(pg) as heard:
        assert await pg.write(_noting(call_id, "during the pings"), optimistic=True)
    assert heard.checkouts == 0
    assert await keeping >= KEPT_CONNECTIONS
    assert _checked_out(pg) == KEPT_CONNECTIONS


async def test_a_ping_with_no_answer_drops_the_kept_connections(
    pg: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    call_id = await _call(pg)
    await pg.write(_noting(call_id, "kept"), optimistic=True)

    def hanging_ping(conn: sa.Connection) -> None:
        direct.run(conn, sa.select(sa.func.pg_sleep(5)))

    monkeypatch.setattr(db_module, "_ping", hanging_ping)
    monkeypatch.setattr(db_module, "_PING_AFTER_IDLE_S", 0.0)
    monkeypatch.setattr(db_module, "POOL_TIMEOUT_S", 0.2)
    assert await pg.keep_warm() == 0
    assert _checked_out(pg) == 0
    assert await pg.write(_noting(call_id, "on a fresh one"), optimistic=True)


async def test_the_keeper_waits_out_a_database_it_cannot_reach() -> None:
    url = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"  # nothing listens on port 1
    engine = create_engine(url)
    db = Database(engine, url)
    try:
        assert await db.keep_warm() == 0
    finally:
        await db.close()
        await engine.dispose()
