"""The hot paths' statement runner (``app.storage.direct``) against the real databases.

It skips SQLAlchemy's execution machinery, so these pin that it keeps SQLAlchemy's meaning:
values stored and read back as SQLAlchemy stores and reads them, defaults applied, a missing
parameter refused, database errors as SQLAlchemy's own exceptions, statement listeners told.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from app.storage import direct
from app.storage.db import Database, create_engine
from app.storage.models import UTCDateTime


def _made() -> str:
    return "made-by-default"


def _from_context(context: Any) -> str:
    return f"ctx-{context.get_current_parameters()['label']}"


_meta = sa.MetaData()
probe = sa.Table(
    f"direct_probe_{uuid.uuid4().hex[:8]}",
    _meta,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("label", sa.String(32), nullable=False),
    sa.Column("at", UTCDateTime()),
    sa.Column("amount", sa.Numeric(10, 2)),
    sa.Column("flag", sa.Boolean, nullable=False, default=False),
    sa.Column("made", sa.String(32), default=_made),
    sa.Column("from_ctx", sa.String(64), default=_from_context),
    sa.Column("hits", sa.BigInteger, nullable=False, default=0),
)
child = sa.Table(
    f"direct_child_{uuid.uuid4().hex[:8]}",
    _meta,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("probe_id", sa.Uuid, sa.ForeignKey(probe.c.id), nullable=False),
    sa.Column("note", sa.String(32)),
)
INSERT = probe.insert()
INSERT_CHILD = child.insert()
RENAME = probe.update().where(probe.c.id == sa.bindparam("of_id")).values(label=sa.bindparam("to"))
BY_LABELS = sa.select(probe).where(probe.c.label.in_(sa.bindparam("labels", expanding=True)))
BY_LABEL = sa.select(probe).where(probe.c.label == sa.bindparam("label"))
BUMP = (
    probe.update()
    .where(probe.c.label == sa.bindparam("of"))
    .values(hits=probe.c.hits + sa.bindparam("by"))
)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    engine = create_engine(database_url)
    database = Database(engine, database_url)
    async with engine.begin() as conn:
        await conn.run_sync(_meta.create_all)
    try:
        yield database
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(_meta.drop_all)
        await database.close()
        await engine.dispose()


async def _write(db: Database, work: Callable[[sa.Connection], Any]) -> Any:
    return await db.write(work, inline=True)


async def test_values_round_trip_as_sqlalchemy_stores_and_reads_them(db: Database) -> None:
    key = uuid.uuid4()
    london = datetime(2026, 7, 1, 12, 30, tzinfo=timezone(timedelta(hours=1)))
    row = {"id": key, "label": "a", "at": london, "amount": Decimal("12.50"), "flag": True}

    def work(conn: sa.Connection) -> tuple[Any, Any]:
        assert direct.run(conn, INSERT, row).rowcount == 1
        ours = direct.run(conn, BY_LABEL, {"label": "a"}).one()
        theirs = conn.execute(BY_LABEL, {"label": "a"}).one()
        return ours, theirs

    ours, theirs = await _write(db, work)
    assert tuple(ours) == tuple(theirs)
    assert ours.id == key and isinstance(ours.id, uuid.UUID)
    assert ours.at == datetime(2026, 7, 1, 11, 30, tzinfo=UTC)
    assert ours.amount == Decimal("12.50") and isinstance(ours.amount, Decimal)
    assert ours.flag is True
    assert ours._mapping["label"] == "a"


async def test_defaults_fill_what_was_not_given(db: Database) -> None:
    def work(conn: sa.Connection) -> Any:
        direct.run(conn, INSERT, {"id": uuid.uuid4(), "label": "b", "from_ctx": "given"})
        return direct.run(conn, BY_LABEL, {"label": "b"}).one()

    row = await _write(db, work)
    assert (row.flag, row.made, row.hits, row.at) == (False, "made-by-default", 0, None)


async def test_a_default_that_reads_the_context_goes_through_sqlalchemy(db: Database) -> None:
    def work(conn: sa.Connection) -> tuple[Any, Any]:
        result = direct.run(conn, INSERT, {"id": uuid.uuid4(), "label": "c"})
        return result, direct.run(conn, BY_LABEL, {"label": "c"}).one()

    result, row = await _write(db, work)
    assert isinstance(result, sa.CursorResult), "SQLAlchemy's own execution, with its context"
    assert row.from_ctx == "ctx-c"


async def test_a_missing_parameter_is_refused_not_stored_as_null(db: Database) -> None:
    def work(conn: sa.Connection) -> Any:
        direct.run(conn, INSERT, {"id": uuid.uuid4(), "label": "d", "from_ctx": "x"})
        with pytest.raises(sa.exc.InvalidRequestError, match="'by'"):
            direct.run(conn, BUMP, {"of": "d"})
        # Many rows: the later row lacks a key the first one gave.
        rows = [
            {"id": uuid.uuid4(), "label": "e", "from_ctx": "x"},
            {"id": uuid.uuid4(), "from_ctx": "x"},
        ]
        with pytest.raises(sa.exc.InvalidRequestError, match="'label'"):
            direct.run(conn, INSERT, rows)
        return direct.run(conn, BY_LABEL, {"label": "d"}).one()

    row = await _write(db, work)
    assert row.hits == 0


async def test_many_rows_expanding_in_and_updates(db: Database) -> None:
    rows = [{"id": uuid.uuid4(), "label": f"m{i}", "from_ctx": "x"} for i in range(5)]

    def work(conn: sa.Connection) -> list[str]:
        # Many rows' rowcount is the driver's (asyncpg: -1), so the rows are read back.
        direct.run(conn, INSERT, rows)
        found = [r.label for r in direct.run(conn, BY_LABELS, {"labels": ["m1", "m3", "zz"]})]
        direct.run(conn, BUMP, [{"of": "m1", "by": 2}, {"of": "m3", "by": 5}])
        return sorted(found)

    assert await _write(db, work) == ["m1", "m3"]

    def counts(conn: sa.Connection) -> dict[str, int]:
        return {r.label: r.hits for r in direct.run(conn, sa.select(probe.c.label, probe.c.hits))}

    assert (await _write(db, counts)) == {"m0": 0, "m1": 2, "m2": 0, "m3": 5, "m4": 0}


LITERAL_LIST = sa.select(probe.c.label).where(probe.c.label.in_(["n0", "n2"]))
# A row value's IN, and one over an expression of no type, have no array to go as: they
# stay SQLAlchemy's expanding IN.
BY_PAIRS = sa.select(probe.c.label).where(
    sa.tuple_(probe.c.label, probe.c.flag).in_(sa.bindparam("pairs", expanding=True))
)
BY_LOWER = sa.select(probe.c.label).where(
    sa.func.lower(probe.c.label).in_(sa.bindparam("lowered", expanding=True))
)


async def test_an_in_list_is_one_statement_whatever_its_length(
    db: Database, database_url: str
) -> None:
    """On PostgreSQL an ``IN`` over a list is sent as ``= ANY`` of one array: the same SQL,
    prepared and planned once, for any number of values; the rows are SQLAlchemy's own."""
    heard: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        heard.append(statement)

    rows = [{"id": uuid.uuid4(), "label": f"n{i}", "from_ctx": "x"} for i in range(4)]
    # Longer than the column: no row holds it, and it must not be cut to one that does.
    long_label = "n1" + "x" * 40
    lists = [["n1"], ["n0", "n3", "zz"], [], ["n1", "n2", "n0", "n3"], [long_label[:32], "n3"]]

    def work(conn: sa.Connection) -> list[tuple[list[str], list[str]]]:
        direct.run(conn, INSERT, rows)
        direct.run(conn, INSERT, {"id": uuid.uuid4(), "label": long_label[:32], "from_ctx": "x"})
        out = []
        for labels in [*lists, [long_label]]:
            ours = sorted(r.label for r in direct.run(conn, BY_LABELS, {"labels": labels}))
            theirs = sorted(r.label for r in conn.execute(BY_LABELS, {"labels": labels}))
            out.append((ours, theirs))
        literal = sorted(r.label for r in direct.run(conn, LITERAL_LIST))
        out.append((literal, sorted(r.label for r in conn.execute(LITERAL_LIST))))
        pairs = {"pairs": [("n1", False), ("n2", True), ("n3", False)]}
        by_pairs = sorted(r.label for r in direct.run(conn, BY_PAIRS, pairs))
        out.append((by_pairs, sorted(r.label for r in conn.execute(BY_PAIRS, pairs))))
        lowered = {"lowered": ["n0", "n3"]}
        by_lower = sorted(r.label for r in direct.run(conn, BY_LOWER, lowered))
        out.append((by_lower, sorted(r.label for r in conn.execute(BY_LOWER, lowered))))
        return out

    for engine in db.sync_engines:
        sa.event.listen(engine, "before_cursor_execute", listen)
    try:
        found = await _write(db, work)
    finally:
        for engine in db.sync_engines:
            sa.event.remove(engine, "before_cursor_execute", listen)
    for ours, theirs in found:
        assert ours == theirs
    assert [ours for ours, _ in found] == [
        ["n1"],
        ["n0", "n3"],
        [],
        ["n0", "n1", "n2", "n3"],
        [long_label[:32], "n3"],
        [],
        ["n0", "n2"],
        ["n1", "n3"],
        ["n0", "n3"],
    ]
    # Ours and SQLAlchemy's in turn: ours for each list.
    ours_sent = [s for s in heard if "WHERE" in s][: (len(lists) + 1) * 2 : 2]
    if database_url.startswith("postgresql"):
        assert len(set(ours_sent)) == 1, "one SQL for every length of the list"
        assert "= ANY" in ours_sent[0] and "VARCHAR[]" in ours_sent[0]
    else:
        assert len(set(ours_sent)) > 1, "SQLite: SQLAlchemy's expanding IN"


def _upsert(database_url: str) -> Any:
    """An upsert returning rows, with a parameter outside its VALUES (as the calls' upsert)."""
    insert = postgresql.insert if database_url.startswith("postgresql") else sqlite.insert
    statement = insert(probe)
    return statement.on_conflict_do_update(
        index_elements=["id"],
        set_={"hits": probe.c.hits + sa.bindparam("by"), "at": statement.excluded.at},
    ).returning(probe.c.id, probe.c.label, probe.c.at, probe.c.amount, probe.c.made, probe.c.hits)


async def test_many_rows_returning_go_as_one_statement_and_read_as_sqlalchemys(
    db: Database, database_url: str
) -> None:
    upsert = _upsert(database_url)
    at = datetime(2026, 7, 1, 12, 30, tzinfo=timezone(timedelta(hours=1)))
    keys = [uuid.uuid4() for _ in range(4)]

    def rows(by: list[int]) -> list[dict[str, Any]]:
        return [
            {
                "id": k,
                "label": f"r{i}",
                "at": at + timedelta(minutes=i),
                "amount": Decimal(i),
                "from_ctx": "x",
                "by": by[i],
            }
            for i, k in enumerate(keys)
        ]

    heard: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        heard.append(statement)

    def work(conn: sa.Connection) -> tuple[Any, Any, Any]:
        # Two rows there already: both inserted and updated rows come back, converted.
        direct.run(conn, INSERT, [{"id": k, "label": "old", "from_ctx": "x"} for k in keys[:2]])
        heard.clear()
        ours = direct.run(conn, upsert, rows([1, 1, 1, 1]))
        stored = conn.execute(sa.select(probe)).all()
        # A parameter outside VALUES that differs by row: SQLAlchemy's own execution.
        differing = direct.run(conn, upsert, rows([1, 2, 3, 4]))
        return ours, stored, differing

    for engine in db.sync_engines:
        sa.event.listen(engine, "before_cursor_execute", listen)
    try:
        ours, stored, differing = await _write(db, work)
    finally:
        for engine in db.sync_engines:
            sa.event.remove(engine, "before_cursor_execute", listen)
    assert isinstance(ours, direct.Rows)
    assert sum(s.startswith("INSERT INTO") for s in heard) >= 2
    assert heard[0].count("ON CONFLICT") == 1, "four rows in one statement"
    got = {row.id: row for row in ours}
    assert set(got) == set(keys)
    for i, key in enumerate(keys):
        row = got[key]
        assert isinstance(row.id, uuid.UUID)
        assert row.at == (at + timedelta(minutes=i)).astimezone(UTC)
        # The two that were there keep their label and count the bump; the rest are new.
        assert row.label == ("old" if i < 2 else f"r{i}")
        assert row.hits == (1 if i < 2 else 0)
        assert row.made == "made-by-default"
        assert row.amount == (None if i < 2 else Decimal(i))
    assert isinstance(differing, sa.CursorResult)
    assert {r.id: r.hits for r in differing} == {k: [2, 3, 3, 4][i] for i, k in enumerate(keys)}
    assert len(stored) == 4


async def test_database_errors_are_sqlalchemys_and_listeners_hear_each_statement(
    db: Database,
) -> None:
    heard: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        heard.append(statement)

    for engine in db.sync_engines:
        sa.event.listen(engine, "before_cursor_execute", listen)
    key = uuid.uuid4()

    def work(conn: sa.Connection) -> None:
        direct.run(conn, INSERT, {"id": key, "label": "f", "from_ctx": "x"})

    try:
        await _write(db, work)
        with pytest.raises(sa.exc.IntegrityError):
            await _write(db, work)
    finally:
        for engine in db.sync_engines:
            sa.event.remove(engine, "before_cursor_execute", listen)
    assert sum("INSERT INTO" in s for s in heard) == 2

    # The failed transaction left nothing behind: the next write goes through.
    def other(conn: sa.Connection) -> int:
        rowcount: int = direct.run(
            conn, INSERT, {"id": uuid.uuid4(), "label": "g", "from_ctx": "x"}
        ).rowcount
        return rowcount

    assert await _write(db, other) == 1


async def test_a_failed_begin_on_the_loops_sqlite_connection_leaves_no_lock(
    database_url: str,
) -> None:
    """BEGIN IMMEDIATE went through, then the begin failed: the kept connection must not stay
    inside that transaction, holding the write lock for good."""
    if not database_url.startswith("sqlite"):
        pytest.skip("the loop's own connection is SQLite's")
    engine = create_engine(database_url)
    db = Database(engine, database_url)
    failing = [True]

    def after_begin(_conn: Any) -> None:
        if failing[0]:
            failing[0] = False
            raise RuntimeError("a listener failed after BEGIN IMMEDIATE")

    inline = db.sync_engines[-1]
    sa.event.listen(inline, "begin", after_begin)

    def count(conn: sa.Connection) -> int:
        return int(conn.exec_driver_sql("SELECT count(*) FROM calls").scalar_one())

    try:
        with pytest.raises(RuntimeError):
            await db.write(count, inline=True)
        # Another connection can take the write lock at once, and the loop can write again.
        import sqlite3

        other = sqlite3.connect(database_url.split("///", 1)[1], isolation_level=None, timeout=0)
        other.execute("BEGIN IMMEDIATE")
        other.execute("COMMIT")
        other.close()
        assert await db.write(count, inline=True) == 0
    finally:
        await db.close()
        await engine.dispose()


class _Heard:
    def __init__(self, db: Database) -> None:
        self.engines = db.sync_engines
        self.statements: list[str] = []

    def __enter__(self) -> list[str]:
        for engine in self.engines:
            sa.event.listen(engine, "before_cursor_execute", self._hear)
        return self.statements

    def __exit__(self, *_: Any) -> None:
        for engine in self.engines:
            sa.event.remove(engine, "before_cursor_execute", self._hear)

    def _hear(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        self.statements.append(statement)


async def test_writes_sent_together_store_what_separate_statements_store(
    db: Database, database_url: str
) -> None:
    """A parent, its child and an update of another row: one statement on PostgreSQL (the
    child's foreign key is checked against the parent inserted beside it), three on SQLite;
    the same rows either way."""
    parent, other, kid = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await _write(db, lambda c: direct.run(c, INSERT, {"id": other, "label": "o", "from_ctx": "x"}))

    def work(conn: sa.Connection) -> None:
        direct.run_writes(
            conn,
            [
                (
                    INSERT,
                    [{"id": parent, "label": "p", "from_ctx": "x", "amount": Decimal("1.50")}],
                ),
                (INSERT_CHILD, {"id": kid, "probe_id": parent, "note": "k"}),
                (RENAME, [{"of_id": other, "to": "renamed"}]),
            ],
        )

    with _Heard(db) as heard:
        await _write(db, work)
    postgres = database_url.startswith("postgresql")
    assert len(heard) == (1 if postgres else 3), heard

    def read(conn: sa.Connection) -> tuple[Any, ...]:
        labels = {r.id: (r.label, r.amount, r.hits) for r in direct.run(conn, sa.select(probe))}
        kids = [(r.id, r.probe_id, r.note) for r in direct.run(conn, sa.select(child))]
        return labels, kids

    labels, kids = await _write(db, read)
    assert labels == {parent: ("p", Decimal("1.50"), 0), other: ("renamed", None, 0)}
    assert kids == [(kid, parent, "k")]


async def test_more_rows_than_go_together_still_all_land(db: Database, database_url: str) -> None:
    rows = [{"id": uuid.uuid4(), "label": f"r{i}", "from_ctx": "x"} for i in range(20)]
    few = [{"id": uuid.uuid4(), "label": f"f{i}", "from_ctx": "x"} for i in range(3)]

    def work(conn: sa.Connection) -> None:
        direct.run_writes(conn, [(INSERT, few), (INSERT, rows), (INSERT, [])])

    with _Heard(db) as heard:
        await _write(db, work)
    if database_url.startswith("postgresql"):
        # The three rows together, then the twenty as many rows of one statement.
        assert [h.split()[0] for h in heard] == ["WITH", "INSERT"]
        assert len(rows) > direct.MAX_TOGETHER
    found = await _write(db, lambda c: {r.label for r in direct.run(c, sa.select(probe.c.label))})
    assert found == {r["label"] for r in rows + few}


async def test_a_failed_write_among_others_stores_none_of_them(db: Database) -> None:
    taken = uuid.uuid4()
    await _write(db, lambda c: direct.run(c, INSERT, {"id": taken, "label": "t", "from_ctx": "x"}))

    def work(conn: sa.Connection) -> None:
        direct.run_writes(
            conn,
            [
                (INSERT, {"id": uuid.uuid4(), "label": "new", "from_ctx": "x"}),
                (INSERT, {"id": taken, "label": "again", "from_ctx": "x"}),
            ],
        )

    with _Heard(db) as heard, pytest.raises(sa.exc.IntegrityError):
        await _write(db, work)
    # On PostgreSQL both went as one statement, which failed as a whole.
    assert len(heard) == (1 if db.sync_engines[0].dialect.name == "postgresql" else 2)
    found = await _write(db, lambda c: {r.label for r in direct.run(c, sa.select(probe.c.label))})
    assert found == {"t"}

    def orphan(conn: sa.Connection) -> None:
        direct.run_writes(
            conn,
            [
                (INSERT, {"id": uuid.uuid4(), "label": "p", "from_ctx": "x"}),
                (INSERT_CHILD, {"id": uuid.uuid4(), "probe_id": uuid.uuid4(), "note": "o"}),
            ],
        )

    # A child whose parent is in neither the statement nor the table is refused.
    with pytest.raises(sa.exc.IntegrityError):
        await _write(db, orphan)
    assert await _write(db, lambda c: direct.run(c, sa.select(child)).all()) == []


async def test_a_commit_not_waiting_for_the_disk_says_so_once(
    db: Database, database_url: str
) -> None:
    """PostgreSQL: ``synchronous_commit`` is off for a write given ``durable=False`` (with the
    writes sent together, or on its own when there are none), and on for the next write."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite's commits never wait for the disk (WAL, synchronous=NORMAL)")

    def setting(conn: sa.Connection) -> str:
        value: str = conn.exec_driver_sql("SHOW synchronous_commit").scalar_one()
        return value

    def with_writes(conn: sa.Connection) -> str:
        direct.run_writes(conn, [(INSERT, {"id": uuid.uuid4(), "label": "w", "from_ctx": "x"})])
        return setting(conn)

    with _Heard(db) as heard:
        assert await db.write(with_writes, durable=False) == "off"
    assert not any(h.startswith("SET LOCAL") for h in heard)
    assert "set_config('synchronous_commit', 'off', true)" in heard[0]

    with _Heard(db) as heard:
        await db.write(lambda c: None, durable=False)
    assert heard == ["SET LOCAL synchronous_commit TO OFF"]

    assert await db.write(setting) == "on"
    assert await db.write(with_writes) == "on"
