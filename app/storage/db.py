"""Engines, sessions, and the short transactions of the hot paths.

SQLite runs in WAL mode with foreign keys on. The ORM session factory serves everything that
is not on a hot path; :class:`Database` runs the hot paths (webhook ingest, the payment gate,
token checks) as plain functions of a synchronous Core ``Connection``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import asbool, await_

from app.storage import direct

T = TypeVar("T")
_log = logging.getLogger("recgate.db")


class DatabaseUnreachable(Exception):
    """The database cannot be reached or used right now (see :func:`database_unavailable`)."""


# Connection checkouts wait this long at most; callers with a deadline give up sooner.
POOL_TIMEOUT_S = 5.0
READ_OPTION = "recgate_read"
_IDLE_SINCE = "recgate_idle_since"
_PING_AFTER_IDLE_S = 5.0
# PostgreSQL: connections the gate's optimistic writes keep between writes, at most.
KEPT_CONNECTIONS = 4
# How often the service runs :meth:`Database.keep_warm`.
KEEP_WARM_EVERY_S = 2.0
# Room for the job's own run and the event loop's lag: a connection is pinged once idle for
# _PING_AFTER_IDLE_S - KEEP_WARM_EVERY_S - this (2 s), so none reaches 5 s before the next run.
_KEEP_WARM_SLACK_S = 1.0
# SQLite: after this many commits on the event loop's own connection and the writer
# thread's, a thread of its own checkpoints the WAL (neither does, so no write waits for it).
_CHECKPOINT_EVERY = 200
# Starting the WAL again after a checkpoint: tries, the pause between them, and the copying
# passes after which it is started again whatever was committed during the last.
_RESTART_TRIES, _RESTART_PAUSE_S, _RESTART_AFTER_PASSES = 8, 0.002, 3
# How long a connection other than the loop's waits for SQLite's write lock.
_BUSY_TIMEOUT_MS = 30_000
# The writer thread's tries for the write lock: this far apart, then (a long wait: another
# process, a long transaction) further.
_LOCK_POLL_S, _LOCK_POLL_LONG_S, _LOCK_POLL_SHORT_FOR_S = 0.0005, 0.005, 0.25


def _begin_when_free(cursor: Any, error: type[Exception]) -> None:
    """``BEGIN IMMEDIATE`` on a connection whose busy timeout is 0, tried again until the
    write lock is free or :data:`_BUSY_TIMEOUT_MS` has passed (then SQLite's own error)."""
    started = time.monotonic()
    while True:
        try:
            cursor.execute("BEGIN IMMEDIATE")
            return
        except error as exc:
            waited = time.monotonic() - started
            if not _locked(exc) or waited >= _BUSY_TIMEOUT_MS / 1000:
                raise
        time.sleep(_LOCK_POLL_S if waited < _LOCK_POLL_SHORT_FOR_S else _LOCK_POLL_LONG_S)


def _sqlite_engine(url: URL, *, timeout_s: float, pool_size: int) -> Engine:
    """A plain (not async) engine on SQLite file ``url``, shared between threads."""
    return sa.create_engine(
        url,
        connect_args={"timeout": timeout_s, "check_same_thread": False},
        pool_size=pool_size,
        max_overflow=0,
    )


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database ``url``; None for another database or an in-memory one."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    name = parsed.database
    uri = parsed.query.get("uri")
    if isinstance(uri, str) and asbool(uri) and name.startswith("file:"):
        # A URI filename: ``file:/path/recgate.db?mode=rwc&uri=true``, or one held in memory
        # (``mode=memory``, or SQLite's own ``file::memory:``).
        name = urlsplit(name).path
        if parsed.query.get("mode") == "memory" or name in ("", ":memory:"):
            return None
    return Path(name)


def _sqlite_setup(engine: Engine, *, inline: bool = False, polls: bool = False) -> None:
    """Pragmas on every connection; ``BEGIN IMMEDIATE`` for every transaction that may write,
    so two writers queue on the lock instead of one failing when its read lock cannot be
    upgraded. A read (execution option ``recgate_read``) begins deferred and takes no lock.

    ``inline``: the connection the event loop writes on itself. It never waits for the lock
    (busy timeout 0: the write goes to the writer thread instead) and never checkpoints the
    WAL on commit (a thread of its own does, now and then), so it never blocks the loop.

    ``polls``: the writer thread's connection. It waits for the write lock by trying again
    every half millisecond (:func:`_begin_when_free`), not in SQLite's busy handler, which
    sleeps 1, 2, 5, 10, 15, 20, 25 … ms between tries: there a lock held for 9 ms cost the
    write waiting for it 19 ms, and one held for 25 ms cost 34. Those writes are the event
    loop's that met the lock: an IVR is waiting for them."""

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={0 if inline or polls else _BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        if inline or polls:
            # Neither commits a checkpoint of its own (SQLite's default, once the WAL holds
            # 1,000 pages: always, under load): the checkpoint thread does, every
            # _CHECKPOINT_EVERY of their commits. On the writer thread such a checkpoint
            # made a payment's write wait for every page another process had committed
            # since the last one (the ingest worker, on SQLite) to be copied and flushed.
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        read = conn.get_execution_options().get(READ_OPTION, False)
        statement = "BEGIN" if read else "BEGIN IMMEDIATE"
        error = conn.dialect.loaded_dbapi.Error
        # On the driver's cursor: this runs before every hot-path transaction.
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            if polls and not read:
                _begin_when_free(cursor, error)
            else:
                cursor.execute(statement)
        except error as exc:
            raise sa.exc.DBAPIError.instance(statement, None, exc, error) from exc
        finally:
            cursor.close()


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """Create the async engine; for SQLite, make the directory and set the pragmas."""
    on_disk = sqlite_file(url)
    if on_disk is not None:
        on_disk.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)
        _sqlite_setup(engine.sync_engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_timeout", POOL_TIMEOUT_S)
    # A server that does not answer a connect is unavailable, not a 30 s wait.
    kwargs.setdefault(
        "connect_args", {"timeout": POOL_TIMEOUT_S, "prepared_statement_cache_size": 1000}
    )
    engine = create_async_engine(url, **kwargs)
    _ping_when_idle(engine.sync_engine)
    _know_the_server(engine.sync_engine)
    return engine


# Which server (PostgreSQL) a connection reached, in its pool record's ``info``: when the
# server started, and when its shared statistics were last reset. Another server (a failover)
# started at another time; a server that recovered from a crash in place (the postmaster
# ending every backend, replaying the WAL and going on, as by default) keeps its start time
# but discards its statistics, resetting them then. A reset by hand only costs reads.
_SERVER = "recgate_server"
_SERVER_QUERY = "SELECT pg_postmaster_start_time(), (SELECT stats_reset FROM pg_stat_archiver)"


def _know_the_server(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        driver = dbapi_connection.driver_connection
        try:
            row = await_(driver.fetchrow(_SERVER_QUERY, timeout=POOL_TIMEOUT_S))
        except TimeoutError as exc:  # a server that answers nothing is one that cannot be used
            raise ConnectionError("the database did not say which server it is") from exc
        record.info[_SERVER] = tuple(row)


def server_of(conn: Connection) -> object:
    """The server ``conn`` is connected to, as it was when the connection opened (None on
    SQLite; on PostgreSQL, a connection opened without asking is like no other). Rows read
    or written through one server are no guide to what another holds: a failover may lose
    commits, so the versions rows were kept at may hold other rows there, and a server that
    recovered from a crash has lost its commits not waited to disk. A failover behind a
    proxy that keeps recgate's connections open is not seen here."""
    if conn.dialect.name == "sqlite":
        return None
    return conn.connection.info.get(_SERVER) or object()


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use only when it has sat idle a while: a server
    restart then costs nobody a failed request, and a busy connection no extra round trip
    (which a ping on every checkout would cost every transaction)."""

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if _used_lately(record.info.get(_IDLE_SINCE)):
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise sa.exc.DisconnectionError() from exc  # the pool opens a fresh one

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class Database:
    """Short transactions for the hot paths, each a plain function of a Core ``Connection``.

    On SQLite one writer thread runs every write transaction of this process in turn:
    writers queue in arrival order, and a transaction costs one hand-over between threads,
    not several per statement; when another connection (another process's: the ingest
    worker's) holds the lock, the thread tries for it every half millisecond (not in SQLite's
    busy handler, whose sleeps grow to 25 ms and more). A read (a token check) runs in the
    event loop itself: in WAL mode it never waits for a writer. On PostgreSQL each function
    runs in a pooled connection of the async engine (``run_sync``), asyncpg underneath.

    A write given a ``deadline`` (the event loop's clock) that has not started by then is
    dropped; one that has started finishes, whoever still waits for it.

    On SQLite a write may also run ``inline``: in the event loop itself, when the write lock
    is free at that instant (else it queues for the writer thread as usual). The payment gate
    writes so: its transactions are a handful of statements, well under a millisecond, and a
    hand-over to a thread and back costs more than that, and more again in waits for the
    interpreter lock while the loop is busy, which is what the IVR's latency is made of.

    On PostgreSQL the gate's optimistic writes likewise keep a few connections out of the
    pool between writes (:class:`_KeptConnections`): a checkout and a return through the
    async engine cost about as much as one of those writes' statements.
    """

    def __init__(self, engine: AsyncEngine, url: str) -> None:
        self.engine = engine
        self.is_sqlite = url.startswith("sqlite")
        self._writer: ThreadPoolExecutor | None = None
        self._checkpointer: ThreadPoolExecutor | None = None
        self._sync: Engine | None = None
        self._queued: Engine | None = None
        self._inline: Engine | None = None
        self._inline_conn: Connection | None = None
        self._commits = 0
        self._checkpointing = False
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._optimistic = engine.execution_options(
            isolation_level="AUTOCOMMIT", **{direct.OPTIMISTIC: True}
        )
        self._kept = _KeptConnections(self._optimistic)
        if self.is_sqlite:
            sync_url = make_url(url).set(drivername="sqlite")
            self._sync = _sqlite_engine(sync_url, timeout_s=30, pool_size=4)
            _sqlite_setup(self._sync)
            self._queued = _sqlite_engine(sync_url, timeout_s=0, pool_size=1)
            _sqlite_setup(self._queued, polls=True)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="recgate-db-writer")
            self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="recgate-db-checkpoint")
            self._inline = _sqlite_engine(sync_url, timeout_s=0, pool_size=1)
            _sqlite_setup(self._inline, inline=True)

    @property
    def sync_engines(self) -> list[Engine]:
        """Every engine the hot paths issue statements on (to observe them in tests)."""
        engines = (self._sync, self._queued, self._inline)
        return [e for e in engines if e is not None] or [self.engine.sync_engine]

    async def write(
        self,
        work: Callable[[Connection], T],
        *,
        deadline: float | None = None,
        inline: bool = False,
        durable: bool = True,
        optimistic: bool = False,
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Run ``work`` in one write transaction; commit when it returns.

        ``inline`` (SQLite): run it in the event loop when the write lock is free; ``work``
        must then be short. ``durable=False`` (PostgreSQL): the commit does not wait for the
        WAL to reach the disk (``synchronous_commit off`` for this transaction: a server crash
        may lose it, never corrupt anything; the next durable commit makes it durable too).
        On SQLite every commit is like that already (WAL, ``synchronous=NORMAL``).

        ``optimistic`` (PostgreSQL): first run ``work`` outside a transaction: it reads a call
        without locking it, and writes once, in one statement guarded by the call's version
        as read (:class:`~app.storage.live.LiveCallRepository`). No BEGIN, no COMMIT, no lock
        held between statements. When that version has moved on, or the writes need a
        transaction, nothing was written and ``work`` runs again in a transaction. ``work``
        must then be a function of what it reads, not of what an earlier run of it changed.

        Raises :class:`DatabaseUnreachable` when the database cannot be used, and
        ``TimeoutError`` at ``deadline``."""
        if before_commit is not None and (self._sync is not None or optimistic):
            raise ValueError("before_commit is for PostgreSQL's transactions")
        with _unreachable_as_such():
            if inline and self._sync is not None:
                if deadline is not None and asyncio.get_running_loop().time() >= deadline:
                    raise TimeoutError
                done = self._write_inline(work)
                if done is not _LOCKED:
                    return done  # type: ignore[return-value]
            if not durable and self._sync is None:
                work = partial(_not_waiting_for_disk, work)
            if optimistic and self._sync is None:
                try:
                    async with asyncio.timeout_at(deadline):
                        return await self._kept.run(partial(_optimistically, work))
                except direct.NeedsTransaction:
                    pass  # changed since it was read, or needs a transaction: nothing written
            return await self._write(work, deadline, before_commit)

    def _write_inline(self, work: Callable[[Connection], T]) -> T | object:
        """``work`` in a transaction on the loop's own connection, or :data:`_LOCKED` when
        another writer holds the lock (nothing has been done then)."""
        conn = self._inline_conn
        if conn is None or conn.closed or conn.invalidated:
            # Kept open between writes: a pool checkout per transaction costs more than
            # the transaction's own statements.
            assert self._inline is not None
            conn = self._inline_conn = self._inline.connect()
        try:
            transaction = conn.begin()
        except sa.exc.OperationalError as exc:
            if _locked(exc):
                return _LOCKED
            self._drop_inline(conn)
            raise
        except BaseException:
            self._drop_inline(conn)
            raise
        with transaction:
            result = work(conn)
        self._committed()
        return result

    def _committed(self) -> None:
        """One more commit on the loop's connection or the writer thread's (in the loop)."""
        self._commits += 1
        if self._commits % _CHECKPOINT_EVERY == 0:
            self._checkpoint_soon()

    def _drop_inline(self, conn: Connection) -> None:
        """Forget the kept connection after a failed begin: closing the driver's connection
        ends whatever the failure left open (a BEGIN that went through, and its lock)."""
        self._inline_conn = None
        conn.invalidate()

    def _checkpoint_soon(self) -> None:
        """Checkpoint the WAL, and start it again from its beginning, on a thread of its own.

        Not on the writer thread: a write queued there (the event loop met the lock) would
        wait for the whole checkpoint, disk flushes and pauses included."""
        if self._checkpointing or self._checkpointer is None or self._sync is None:
            return
        self._checkpointing = True
        sync = self._sync

        def run() -> None:
            # On the driver's connection, outside any transaction: SQLite refuses to checkpoint
            # inside one, and SQLAlchemy would begin one (BEGIN IMMEDIATE) on first use.
            raw = sync.raw_connection()
            try:
                cursor = raw.cursor()
                cursor.execute("PRAGMA busy_timeout=0")
                try:
                    _checkpoint_and_restart(cursor)
                finally:
                    cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
                cursor.close()
            except Exception:
                _log.warning("WAL checkpoint failed; the next one tries again", exc_info=True)
            finally:
                raw.close()
                self._checkpointing = False

        try:
            self._checkpointer.submit(run)
        except RuntimeError:  # shutting down: the commit stands, the checkpoint can wait
            self._checkpointing = False

    async def read(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a transaction that writes nothing and takes no write lock."""
        with _unreachable_as_such():
            return await self._read(work)

    async def _write(
        self,
        work: Callable[[Connection], T],
        deadline: float | None,
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        if self._sync is None:
            async with asyncio.timeout_at(deadline):
                async with self.engine.begin() as conn:
                    result = await conn.run_sync(work)
                    if before_commit is not None:
                        await before_commit()
                    return result
        queued = self._queued
        assert queued is not None

        def run() -> T:
            with queued.begin() as conn:
                return work(conn)

        async with asyncio.timeout_at(deadline):
            result = await asyncio.get_running_loop().run_in_executor(self._writer, run)
        self._committed()
        return result

    async def _read(self, work: Callable[[Connection], T]) -> T:
        if self._sync is None:
            # Autocommit: a read needs no BEGIN and ROLLBACK round trips around it.
            async with self._autocommit.connect() as pooled:
                return await pooled.run_sync(work)
        # In WAL mode a read never waits for a writer (it reads the last committed
        # snapshot) and writes nothing, so a short one runs right here: a hand-over to a
        # reader thread would cost more than the read.
        with self._sync.connect() as raw:
            reader = raw.execution_options(**{READ_OPTION: True})
            with reader.begin():
                return work(reader)

    async def keep_warm(self) -> int:
        """PostgreSQL, every :data:`KEEP_WARM_EVERY_S`: keep the gate's kept connections ready
        off the IVR's path. While the database is unused and none is kept (a fresh process, or
        after the server dropped them) the few are opened now, not by the next payments; one
        kept idle so long that it might reach :data:`_PING_AFTER_IDLE_S` before the next run
        is pinged now, so a payment after a quiet spell finds it used lately and sends no ping
        first. How many were pinged or opened; none while the database cannot be reached (the
        readiness check says so; the next run tries again)."""
        if self._sync is not None:
            return 0
        idle_s = max(0.0, _PING_AFTER_IDLE_S - KEEP_WARM_EVERY_S - _KEEP_WARM_SLACK_S)
        try:
            with _unreachable_as_such():
                pool: Any = self.engine.sync_engine.pool
                opened = 0
                if isinstance(pool, sa.QueuePool) and pool.checkedout() == 0:
                    opened = await self._kept.fill()
                return opened + await self._kept.refresh(idle_s)
        except (DatabaseUnreachable, TimeoutError, OSError):
            _log.debug("kept connections not kept warm: the database cannot be reached")
            return 0

    async def close(self) -> None:
        await self._kept.close()
        for executor in (self._writer, self._checkpointer):
            if executor is not None:
                await asyncio.to_thread(executor.shutdown, wait=True)
        for engine in (self._sync, self._queued):
            if engine is not None:
                engine.dispose()
        if self._inline_conn is not None:
            self._inline_conn.close()
        if self._inline is not None:
            self._inline.dispose()


_LOCKED = object()


def _checkpoint_and_restart(cursor: Any) -> None:
    """Copy the WAL into the database and start the WAL again from its beginning, holding
    the write lock only for a moment (``cursor``: busy timeout 0, outside any transaction).

    A checkpoint that copied every frame lets the next writer start the WAL again, but only
    if that writer begins before anything else is committed: under the event loop's steady
    commits none ever does, and the WAL grows without end (with it, the cost of every commit
    and every page looked up in it: 60 µs a commit became 300). RESTART starts it again there
    and then, but holds the write lock throughout, and whatever is left to copy it copies
    under that lock, with two flushes to disk: after a long pass that was 7–40 ms here, and
    every write waited for it.

    So PASSIVE passes (no lock) do the copying, each up to the end of the WAL as it was when
    the pass began, each shorter than the one before (it copies what was committed during
    that one). RESTART runs after a pass that found the WAL as the pass before it left it
    (nothing committed in between: nothing is left to copy), or at the latest after
    :data:`_RESTART_AFTER_PASSES` passes, when what is left is what a short pass let through:
    under commits that never pause, the WAL is still started again. RESTART gives up at once
    when a reader still uses the WAL; a few more tries here, then the next checkpoint."""
    before = None
    passes = 0
    for _ in range(_RESTART_TRIES):
        busy, frames, copied = cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        passes += 1
        if busy or frames != copied:  # a reader holds older frames, or another checkpoint runs
            before, passes = None, 0
        elif frames == before or passes >= _RESTART_AFTER_PASSES:
            busy, _, _ = cursor.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            if not busy:  # started again
                return
            before, passes = None, 0
        else:
            before = frames
            continue  # at once: the pass just made was over what was committed meanwhile
        time.sleep(_RESTART_PAUSE_S)


class _KeptConnections:
    """A few autocommit connections of ``engine`` kept out of its pool between the works
    run on them, newest first. Each work finds its connection as a fresh checkout would:
    none of the options the gate's works set (:func:`direct.forget_work_options`), no
    transaction; one idle for :data:`_PING_AFTER_IDLE_S` is pinged first, as the pool would
    (a server restart costs no request its answer). One a work failed on (other than by
    :class:`direct.NeedsTransaction`) goes back to the pool, and when the server dropped it,
    every idle one is dropped too (they are likely gone as well). None is kept while the
    pool lends beyond its size (others need it more), or after :meth:`close`. Nothing is
    held across an ``await`` outside ``run``: a kept connection is idle, like a pooled one."""

    def __init__(self, engine: AsyncEngine, most: int = KEPT_CONNECTIONS) -> None:
        self._engine = engine
        self._most = most
        self._idle: list[tuple[AsyncConnection, float]] = []
        self._closed = False

    async def run(self, work: Callable[[Connection], T]) -> T:
        conn = await self._take()
        try:
            result = await conn.run_sync(partial(_as_checked_out, work))
        except direct.NeedsTransaction:
            await self._give_back(conn)
            raise
        except BaseException:
            dropped = conn.invalidated
            await conn.close()
            if dropped:
                await self._drop_idle()
            raise
        await self._give_back(conn)
        return result

    async def _take(self) -> AsyncConnection:
        while self._idle:
            conn, since = self._idle.pop()
            if _used_lately(since):
                return conn
            try:
                await conn.run_sync(_ping)
                return conn
            except Exception:
                _log.info("a kept database connection failed its ping; using another")
                await _drop(conn)
            except BaseException:  # cancelled (a deadline) while pinging: not kept, not lost
                await _drop(conn)
                raise
        return await self._engine.connect()

    async def fill(self) -> int:
        """Open connections until the few are kept, when none is; how many were opened."""
        if self._idle or self._closed:
            return 0
        opened = 0
        for _ in range(self._most):
            conn = await self._engine.connect()
            await self._give_back(conn)
            opened += 1
        return opened

    async def refresh(self, idle_s: float) -> int:
        """Ping each connection kept idle for ``idle_s`` or longer and keep it again as just
        used: one at a time, the longest idle first, the others kept meanwhile for any write
        that comes. One that fails its ping (or gives no answer within the pool's timeout)
        is dropped with every other idle one, as in :meth:`_take`: the server has likely
        dropped them all. How many were pinged."""
        pinged: set[int] = set()
        while True:
            now = time.monotonic()
            due = [e for e in self._idle if now - e[1] >= idle_s and id(e[0]) not in pinged]
            if not due:
                return len(pinged)
            entry = min(due, key=lambda e: e[1])
            self._idle.remove(entry)
            conn = entry[0]
            try:
                async with asyncio.timeout(POOL_TIMEOUT_S):
                    await conn.run_sync(_ping)
            except BaseException as exc:
                await _drop(conn)  # its state unknown: not given back to the pool as good
                if not isinstance(exc, Exception):
                    raise  # cancelled: the others are still kept
                _log.info("a kept database connection failed its ping; dropping the idle ones")
                await self._drop_idle()
                return len(pinged)
            pinged.add(id(conn))
            await self._give_back(conn)

    async def _give_back(self, conn: AsyncConnection) -> None:
        pool: Any = self._engine.sync_engine.pool
        lending_beyond = isinstance(pool, sa.QueuePool) and pool.checkedout() > pool.size()
        if (
            not self._closed
            and not lending_beyond
            and len(self._idle) < self._most
            and not conn.closed
            and not conn.invalidated
        ):
            self._idle.append((conn, time.monotonic()))
            return
        await conn.close()

    async def _drop_idle(self, *, gone: bool = True) -> None:
        """Let every idle one go: as gone (the pool replaces it), or back to the pool."""
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await (_drop(conn) if gone else conn.close())

    async def close(self) -> None:
        self._closed = True
        await self._drop_idle(gone=False)


async def _drop(conn: AsyncConnection) -> None:
    """Give ``conn`` back to the pool as gone: the pool opens a fresh one in its place."""
    try:
        await conn.invalidate()
    finally:
        await conn.close()


def _as_checked_out(work: Callable[[Connection], T], conn: Connection) -> T:
    """``work`` on a kept connection, which it finds and leaves as a fresh checkout: the
    options a work sets are its own, and the transaction SQLAlchemy began for a statement
    it ran (autocommit: nothing to roll back in the database) ends with it."""
    direct.forget_work_options(conn)
    try:
        return work(conn)
    finally:
        if conn.in_transaction():
            conn.rollback()


def _used_lately(idle_since: float | None) -> bool:
    """A connection idle since then needs no ping before use (a fresh one has no time)."""
    return idle_since is not None and time.monotonic() - idle_since < _PING_AFTER_IDLE_S


def _ping(conn: Connection) -> None:
    dbapi_connection = conn.connection.dbapi_connection
    if dbapi_connection is None:
        raise sa.exc.DisconnectionError("no driver connection")
    conn.dialect.do_ping(dbapi_connection)


def _optimistically(work: Callable[[Connection], T], conn: Connection) -> T:
    """``work`` outside a transaction. An answer or a refusal it reached without writing,
    on reads from more than one snapshot that no guarded write checked, is not final: the
    work runs again in a transaction (:class:`direct.NeedsTransaction`)."""
    try:
        result = work(conn)
    except direct.NeedsTransaction:
        raise
    except Exception as exc:
        if direct.unchecked_reads(conn) and not database_unavailable(exc):
            raise direct.NeedsTransaction("refused on reads no write checked") from exc
        raise
    if direct.unchecked_reads(conn):
        raise direct.NeedsTransaction("answered on reads no write checked")
    return result


def _not_waiting_for_disk(work: Callable[[Connection], T], conn: Connection) -> T:
    # ``SET LOCAL synchronous_commit`` goes with the transaction's writes when they are sent
    # together (no round trip of its own), else on its own before the commit.
    direct.lazy_commit(conn)
    result = work(conn)
    direct.settle_lazy_commit(conn)
    return result


def _locked(exc: Exception) -> bool:
    """SQLite's SQLITE_BUSY (the driver's error, or SQLAlchemy's wrapping it): another
    connection holds the write lock."""
    message = str(getattr(exc, "orig", exc))
    return "database is locked" in message or "database is busy" in message


@contextmanager
def _unreachable_as_such() -> Iterator[None]:
    """Database errors that say it cannot be used become :class:`DatabaseUnreachable`; a
    deadline (``TimeoutError``) and everything else pass through."""
    try:
        yield
    except TimeoutError:
        raise
    except Exception as exc:
        if database_unavailable(exc):
            raise DatabaseUnreachable(type(exc).__name__) from exc
        raise


def database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the database cannot be reached or used
    right now: a refused or dropped connection, a pool exhausted, a server shutting down, a
    database locked past the busy timeout. Not a bug in a statement."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa.exc.TimeoutError | ConnectionError | socket.gaierror):
            return True
        if isinstance(current, sa.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa.exc.OperationalError | sa.exc.InterfaceError):
            return True
        if isinstance(current, OSError) and not isinstance(
            current, FileNotFoundError | TimeoutError
        ):
            return True
        name = type(current).__name__
        # asyncpg's own classes, without importing asyncpg here.
        if name in {
            "CannotConnectNowError",
            "ConnectionDoesNotExistError",
            "ConnectionFailureError",
            "InterfaceError",
            "TooManyConnectionsError",
            "AdminShutdownError",
            "CrashShutdownError",
        }:
            return True
        current = current.__cause__ or current.__context__
    return False
