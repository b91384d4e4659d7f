"""Core statements run on the driver's own cursor: the hot paths' statement runner.

SQLAlchemy builds and compiles each hot-path statement once per dialect (and per set of
columns given, for an INSERT or UPDATE); :func:`run` then hands the SQL and the parameters,
converted by the columns' own types, straight to the driver's cursor, and converts the rows
it returns the same way. What it skips is SQLAlchemy's per-execution machinery (cache keys,
execution contexts, result metadata, events): on the payment and ingest paths that cost more
CPU than the database's own work. Values are stored exactly as SQLAlchemy stores them (its
own bind and result processors convert them), so the ORM reads what this writes.

On PostgreSQL an ``IN`` over a list given at execution (an expanding parameter) is sent as
``= ANY`` of one array parameter: the statement's SQL is then the same however many values
come, so the server prepares and plans it once per connection rather than once per list
length (a batch's ``IN`` of 1 to 32 calls was 32 statements, planned on nearly every
execution). Elsewhere an expanding ``IN`` is finished for each execution by SQLAlchemy's
own ``construct_expanded_state``. A parameter with no value and no default raises, as in
SQLAlchemy. An INSERT given many rows with ``RETURNING`` goes as one statement with its
``VALUES`` group once per row, as SQLAlchemy would send it, its rows in no particular order.
What goes through ``Connection.execute`` as before: such an INSERT whose parameters outside
``VALUES`` differ between rows, many rows with an expanding ``IN`` (on SQLite, or an ``IN``
left expanding on PostgreSQL), a
Python-side column default that is neither a constant nor a function of nothing, and
statements beyond the first 512 kept (a statement built on every call would otherwise be
compiled and kept on every call: build hot-path statements once).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BinaryExpression, BindParameter

Params = Mapping[str, Any]
_Convert = Callable[[Any], Any] | None

_PLACEHOLDER = re.compile(r"\$(\d+)")
# Prepared statements kept, at most; one built on every call would otherwise fill it.
_MAX_PREPARED = 512
# Placeholders in one statement, at most: both engines take 32,766 or more.
_MAX_PLACEHOLDERS = 30_000


class Unprepared(Exception):
    """The statement needs SQLAlchemy's own execution."""


class Rows:
    """What a statement returned: rows (by attribute, position or ``_mapping``), rowcount."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return list(self._rows)

    def one(self) -> Any:
        if not self._rows:
            raise sa.exc.NoResultFound("No row was found when one was required")
        return self.one_or_none()

    def one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise sa.exc.MultipleResultsFound("Multiple rows were found when one was required")
        return self._rows[0] if self._rows else None

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def scalars(self) -> Iterator[Any]:
        return (row[0] for row in self._rows)

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]


class Row(tuple[Any, ...]):
    """A row: a tuple whose columns are also attributes."""

    __slots__ = ()
    _index: ClassVar[dict[str, int]] = {}
    # By (prefix, strip): the names and positions :meth:`named` gives (each row type its own).
    _named: ClassVar[dict[tuple[str, bool], list[tuple[str, int]]]] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return self[self._index[name]]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def _mapping(self) -> dict[str, Any]:
        return {name: self[i] for name, i in self._index.items()}

    def named(self, prefix: str, *, strip: bool = True) -> dict[str, Any]:
        """The columns whose names start with ``prefix``, by name (without the prefix when
        ``strip``): a row that reads several tables side by side, one table's part."""
        key = (prefix, strip)
        at = self._named.get(key)
        if at is None:
            cut = len(prefix) if strip else 0
            at = self._named[key] = [
                (name[cut:], i) for name, i in self._index.items() if name.startswith(prefix)
            ]
        return {name: self[i] for name, i in at}


class Prepared:
    """One statement compiled for one dialect and one set of given keys."""

    def __init__(self, statement: Any, dialect: Dialect, keys: Sequence[str] | None) -> None:
        self.statement = statement
        if dialect.name == "postgresql":
            statement = visitors.replacement_traverse(
                cast(visitors.ExternallyTraversible, statement), {}, _in_as_any
            )
        compiled = statement.compile(
            dialect=dialect, column_keys=list(keys) if keys is not None else None
        )
        if not isinstance(compiled, SQLCompiler) or compiled.positiontup is None:
            raise Unprepared("not a positional SQL compilation")
        # An expanding IN: its SQL depends on how many values come, so it is finished for
        # each execution by SQLAlchemy's own ``construct_expanded_state``.
        self.expanding = compiled if any(b.expanding for b in compiled.binds.values()) else None
        if self.expanding is not None and (compiled.insert_prefetch or compiled.update_prefetch):
            raise Unprepared("an expanding IN with column defaults")
        self.sql = compiled.string
        by_name = {name: bind for bind, name in compiled.bind_names.items()}
        self.convert_by_name: dict[str, _Convert] = {
            name: bind.type._cached_bind_processor(dialect) for name, bind in by_name.items()
        }
        prefetch = {c.key: c.default for c in compiled.insert_prefetch}
        prefetch.update({c.key: c.onupdate for c in compiled.update_prefetch})
        # Per position: the parameter's key, what it is when not given, its converter.
        self.binds: list[tuple[str, Callable[[], Any] | None, Any, _Convert]] = []
        for name in compiled.positiontup:
            bind = by_name[name]
            convert = bind.type._cached_bind_processor(dialect)
            if bind.key in prefetch:
                made, value = _default(prefetch[bind.key])
                self.binds.append((bind.key, made, value, convert))
            elif bind.callable is None and bind.required:
                self.binds.append((bind.key, _required(bind.key), None, convert))
            else:
                self.binds.append((bind.key, bind.callable, bind.value, convert))
        columns = compiled._result_columns
        self.returns = bool(columns)
        # Can go in a statement of data-modifying CTEs with others (PostgreSQL's numbered
        # placeholders, renumbered there): returns nothing, a fixed SQL, and its placeholders
        # are exactly $1 … $n, none of them inside a literal.
        numbers = {int(n) for n in _PLACEHOLDER.findall(self.sql)}
        self.numbered = numbers == set(range(1, len(self.binds) + 1)) and "'" not in self.sql
        self.combinable = not self.returns and self.expanding is None and self.numbered
        self._dialect = dialect
        # An INSERT returning rows, given many rows: its VALUES group repeated, one per row.
        self.rows_group = (
            _values_group(self.sql, len(self.binds), dialect.paramstyle)
            if self.returns and self.expanding is None and isinstance(statement, sa.Insert)
            else None
        )
        self._many_sql: dict[int, str] = {}
        self._types = [column[3] for column in columns]
        # Converters need the driver's type codes (PostgreSQL): made on the first result.
        self._readers: list[_Convert] | None = None
        self._converting: list[tuple[int, Callable[[Any], Any]]] | None = None
        index = {column[0]: i for i, column in enumerate(columns)}
        self.row: type[Row] = type("Row", (Row,), {"__slots__": (), "_index": index, "_named": {}})

    def expanded(self, given: Params) -> tuple[str, tuple[Any, ...]]:
        """The SQL and parameters of an expanding statement for these values."""
        assert self.expanding is not None
        state = self.expanding.construct_expanded_state(given)
        # Converters of the values an IN expanded into, and of the other parameters.
        convert = {**self.convert_by_name, **state.processors}
        values = state.parameters
        out = []
        for name in state.positiontup or ():
            made = convert.get(name)
            out.append(values[name] if made is None else made(values[name]))
        return state.statement, tuple(out)

    def parameters(self, given: Params) -> tuple[Any, ...]:
        out = []
        for key, made, value, convert in self.binds:
            if key in given:
                value = given[key]
            elif made is not None:
                value = made()
            out.append(value if convert is None else convert(value))
        return tuple(out)

    def many(self, rows: Sequence[Params]) -> tuple[str, tuple[Any, ...]] | None:
        """One statement inserting ``rows`` (its VALUES group once per row) and its
        parameters; None when the parameters outside that group differ between rows."""
        group = self.rows_group
        assert group is not None
        if len(rows) * group.size > _MAX_PLACEHOLDERS:
            return None
        first, last = group.first, group.first + group.size
        values = [self.parameters(row) for row in rows]
        outside = values[0][:first] + values[0][last:]
        if any(v[:first] + v[last:] != outside for v in values[1:]):
            return None
        sql = self._many_sql.get(len(rows))
        if sql is None:
            sql = self._many_sql[len(rows)] = group.sql(len(rows))
        flat = list(values[0][:first])
        for v in values:
            flat.extend(v[first:last])
        flat.extend(values[0][last:])
        return sql, tuple(flat)

    def rows(self, fetched: Sequence[Sequence[Any]], description: Sequence[Any]) -> list[Any]:
        readers = self._readers
        if readers is None:
            readers = self._readers = [
                type_._cached_result_processor(self._dialect, column[1])
                for type_, column in zip(self._types, description, strict=True)
            ]
        make = self.row
        # Only the columns whose type converts what the driver gives (on PostgreSQL few do).
        convert = self._converting
        if convert is None:
            convert = self._converting = [(i, r) for i, r in enumerate(readers) if r is not None]
        if not convert:
            return [make(raw) for raw in fetched]
        out = []
        for raw in fetched:
            values = list(raw)
            for i, read in convert:
                values[i] = read(values[i])
            out.append(make(values))
        return out


def array_of(item: Any) -> postgresql.ARRAY[Any]:
    """An array parameter's type, of ``item``'s values (PostgreSQL). A string's length is
    left out: a cast to ``varchar(n)[]`` cuts a longer value short without a word, where
    the column refuses it (a write) or no row holds it (a lookup)."""
    if isinstance(item, sa.String) and item.length is not None:
        item = sa.String()
    return postgresql.ARRAY(item)


_ARRAY_ITEMS = (sa.Uuid, sa.String, sa.Text, sa.Integer, sa.BigInteger)


def _in_as_any(element: Any, **_kw: Any) -> Any:
    """``column IN (<expanding parameter>)`` as ``column = ANY(<array parameter>)``, the
    parameter keeping its name and value; None for anything else (left as it is)."""
    if not (
        isinstance(element, BinaryExpression)
        and element.operator is operators.in_op
        and isinstance(element.right, BindParameter)
        and element.right.expanding
        # Plain types only: an array of them means what the list meant. A row value, an
        # expression of no type, an Enum or a type of ours keeps SQLAlchemy's expanding IN.
        and type(element.left.type) in _ARRAY_ITEMS
    ):
        return None
    given = element.right
    array = BindParameter(
        given.key,
        given.value,
        type_=array_of(element.left.type),
        unique=given.unique,
        required=given.required,
        callable_=given.callable,
    )
    return element.left == sa.any_(array)


def _default(default: Any) -> tuple[Callable[[], Any] | None, Any]:
    """A Python-side column default as (function of nothing, constant)."""
    if default is None:
        return None, None
    if default.is_scalar:
        return None, default.arg
    if default.is_callable:
        # SQLAlchemy wraps a function of nothing (``_fn`` is the function itself); one that
        # reads the execution context needs SQLAlchemy's own execution.
        if default.arg is default._fn:
            raise Unprepared("a column default that reads the execution context")
        made: Callable[[], Any] = default._fn
        return made, None
    raise Unprepared("a SQL expression default")


def _required(key: str) -> Callable[[], Any]:
    """What a parameter without a value or default is when not given: an error, as in
    SQLAlchemy (never a silent NULL)."""

    def missing() -> Any:
        raise sa.exc.InvalidRequestError(f"A value is required for bind parameter {key!r}")

    return missing


class _ValuesGroup:
    """Where an INSERT's one ``VALUES (…)`` group sits in its SQL, and which of its
    placeholders (by position) are in it: ``first`` … ``first + size - 1``."""

    def __init__(self, sql: str, start: int, end: int, first: int, size: int, numbered: bool):
        self._head, self._group, self._tail = sql[:start], sql[start:end], sql[end:]
        self.first, self.size, self._numbered = first, size, numbered

    def sql(self, count: int) -> str:
        if not self._numbered:
            return self._head + ", ".join([self._group] * count) + self._tail
        size = self.size

        def renumbered(text: str, shift: int) -> str:
            return _PLACEHOLDER.sub(lambda m: f"${int(m.group(1)) + shift}", text)

        groups = [renumbered(self._group, i * size) for i in range(count)]
        # Placeholders after the group move past every row's; those before it stay.
        tail = renumbered(self._tail, (count - 1) * size)
        return self._head + ", ".join(groups) + tail


def _values_group(sql: str, binds: int, paramstyle: str) -> _ValuesGroup | None:
    """The VALUES group of a compiled single-row INSERT, or None when it cannot be told
    apart for sure (a literal string in the SQL, placeholders out of order)."""
    if "'" in sql or paramstyle not in ("qmark", "numeric_dollar"):
        return None
    start = sql.find(" VALUES (")
    if start < 0 or sql.find(" VALUES (", start + 1) >= 0:
        return None
    start += len(" VALUES ")
    depth, end = 0, -1
    for i in range(start, len(sql)):
        if sql[i] == "(":
            depth += 1
        elif sql[i] == ")":
            depth -= 1
            if not depth:
                end = i + 1
                break
    if end < 0:
        return None
    if paramstyle == "qmark":
        before, inside = sql[:start].count("?"), sql[start:end].count("?")
        if before + inside + sql[end:].count("?") != binds or not inside:
            return None
        return _ValuesGroup(sql, start, end, before, inside, numbered=False)
    numbers = [int(n) for n in _PLACEHOLDER.findall(sql)]
    if numbers != list(range(1, binds + 1)):
        return None  # each placeholder once, in order: positions are numbers
    before = len(_PLACEHOLDER.findall(sql[:start]))
    inside = len(_PLACEHOLDER.findall(sql[start:end]))
    if not inside:
        return None
    return _ValuesGroup(sql, start, end, before, inside, numbered=True)


_PREPARED: dict[tuple[int, str, tuple[str, ...] | None], tuple[Any, Prepared | None]] = {}


def _prepared(conn: Connection, statement: Any, keys: tuple[str, ...] | None) -> Prepared | None:
    """The statement prepared for ``conn``'s dialect, or None (SQLAlchemy runs it). Kept by
    the statement's identity: the statement itself is kept too, so its id stays its own."""
    key = (id(statement), conn.dialect.name, keys)
    found = _PREPARED.get(key)
    if found is not None and found[0] is statement:
        return found[1]
    if len(_PREPARED) >= _MAX_PREPARED:
        return None
    try:
        made: Prepared | None = Prepared(statement, conn.dialect, keys)
    except Unprepared:
        made = None
    _PREPARED[key] = (statement, made)
    return made


def run(conn: Connection, statement: Any, params: Params | Sequence[Params] | None = None) -> Any:
    """Execute ``statement`` inside ``conn``'s transaction, on the driver's cursor when it
    is prepared: a :class:`Rows`; SQLAlchemy's own result otherwise."""
    rows_given: Sequence[Params] = params if isinstance(params, list) else []
    many = isinstance(params, list)
    given: Params = (rows_given[0] if rows_given else {}) if many else (params or {})  # type: ignore[assignment]
    prepared = _prepared(conn, statement, _keys(statement, given))
    if prepared is None or (many and (prepared.returns or prepared.expanding is not None)):
        together = None
        if prepared is not None and prepared.rows_group is not None and rows_given:
            together = prepared.many(rows_given)
        if together is None:
            return conn.execute(statement, params)
        return _execute(conn, *together, many=False, read=prepared)
    sql = prepared.sql
    values: Any
    if many:
        values = [prepared.parameters(p) for p in rows_given]
    elif prepared.expanding is not None:
        sql, values = prepared.expanded(given)
    else:
        values = prepared.parameters(given)
    return _execute(conn, sql, values, many=many, read=prepared if prepared.returns else None)


def _keys(statement: Any, given: Params) -> tuple[str, ...] | None:
    return tuple(sorted(given)) if isinstance(statement, sa.Insert | sa.Update) else None


def _execute(
    conn: Connection,
    sql: str,
    values: Any,
    *,
    many: bool,
    read: Prepared | None,
    fetch: bool = False,
) -> Rows:
    """``sql`` on the driver's cursor; rows converted by ``read``, or as they come with
    ``fetch``."""
    dbapi_connection: Any = conn.connection.dbapi_connection
    cursor = dbapi_connection.cursor()
    # Whoever listens for statements (tracing, the statement budget test) still hears them.
    announce = conn.dispatch.before_cursor_execute
    if announce:
        announce(conn, cursor, sql, values, None, many)
    error = conn.dialect.loaded_dbapi.Error
    try:
        if many:
            cursor.executemany(sql, values)
            return Rows([], cursor.rowcount)
        cursor.execute(sql, values)
        rows: list[Any] = []
        if read is not None:
            rows = read.rows(cursor.fetchall(), cursor.description)
        elif fetch:
            rows = list(cursor.fetchall())
        return Rows(rows, cursor.rowcount)
    except error as exc:
        # As SQLAlchemy would: its own exception classes, and a connection that is gone
        # never goes back to the pool.
        gone = conn.dialect.is_disconnect(exc, dbapi_connection, cursor)
        if gone:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            sql, None, exc, error, connection_invalidated=gone, dialect=conn.dialect
        ) from exc
    finally:
        cursor.close()


# ---- writes sent together (PostgreSQL) --------------------------------------------------------

# Execution option: this transaction's commit need not wait for the WAL to reach the disk.
LAZY_COMMIT = "recgate_lazy_commit"
_SET_LAZY = "SET LOCAL synchronous_commit TO OFF"
# Rows sent in one statement at most: enough for a payment's writes, few enough that the
# statements' shapes (each prepared once per connection) stay few.
MAX_TOGETHER = 8
# Combined statements kept, by the prepared statements they are made of (kept alive by the
# key itself, so an address is never another statement's) and laziness.
_COMBINED: dict[tuple[Prepared | None, tuple[Prepared, ...], bool], str] = {}


def run_writes(conn: Connection, writes: Sequence[tuple[Any, Params | Sequence[Params]]]) -> None:
    """Execute ``writes`` (statements that return nothing) in order, inside ``conn``'s
    transaction. On PostgreSQL up to :data:`MAX_TOGETHER` consecutive rows go as one
    statement of data-modifying CTEs (one per row): one round trip instead of one per
    statement. Such writes see the same snapshot, so they must not touch the same row nor
    read rows another of them writes (an ``UPDATE … WHERE`` over rows an INSERT beside it
    adds): run those with :func:`run`. More rows than fit go as before (``executemany``).

    A transaction marked by :func:`lazy_commit` has its ``synchronous_commit`` setting sent
    here, as ``set_config`` in the combined statement."""
    together = conn.dialect.name == "postgresql"
    group: list[tuple[Prepared, Params]] = []
    for statement, params in writes:
        rows = _rows(params)
        if not rows:
            continue
        if not together:
            run(conn, statement, params)
            continue
        prepared = _prepared(conn, statement, _keys(statement, rows[0]))
        alone = prepared is None or not prepared.combinable
        if alone or len(rows) > MAX_TOGETHER:
            _send_together(conn, group)
            group = []
            run(conn, statement, params)
            continue
        assert prepared is not None
        if len(group) + len(rows) > MAX_TOGETHER:
            _send_together(conn, group)
            group = []
        group.extend((prepared, row) for row in rows)
    _send_together(conn, group)


def _rows(params: Params | Sequence[Params]) -> list[Params]:
    """One row or many (a list), as a list."""
    return params if isinstance(params, list) else [cast(Params, params)]


def _send_together(conn: Connection, group: list[tuple[Prepared, Params]]) -> None:
    lazy = bool(conn.get_execution_options().get(LAZY_COMMIT))
    if not group:
        return
    if len(group) == 1 and not lazy:
        prepared, params = group[0]
        _execute(conn, prepared.sql, prepared.parameters(params), many=False, read=None)
        return
    _send_combined(conn, None, group, lazy)
    if lazy:
        conn.execution_options(**{LAZY_COMMIT: False})


def _send_combined(
    conn: Connection,
    guard: tuple[Prepared, Params] | None,
    group: list[tuple[Prepared, Params]],
    lazy: bool,
) -> Rows:
    """``group`` (after ``guard``) as one statement; what it returns (the guard's count)."""
    sql = _combined(None if guard is None else guard[0], [p for p, _ in group], lazy)
    first = () if guard is None else guard[0].parameters(guard[1])
    values = first + tuple(v for prepared, row in group for v in prepared.parameters(row))
    return _execute(conn, sql, values, many=False, read=None, fetch=guard is not None)


def _combined(guard: Prepared | None, parts: list[Prepared], lazy: bool) -> str:
    """``WITH [recgate_guard AS (guard),] w0 AS (…), w1 AS (…) SELECT …``: each part's
    placeholders renumbered after those before it. Kept by shape."""
    key = (guard, tuple(parts), lazy)
    sql = _COMBINED.get(key)
    if sql is not None:
        return sql
    ctes, offset = [], 0
    named = [(GUARD, guard)] if guard is not None else []
    for name, prepared in [*named, *((f"w{n}", p) for n, p in enumerate(parts))]:

        def shift(match: re.Match[str], by: int = offset) -> str:
            return f"${int(match.group(1)) + by}"

        ctes.append(f"{name} AS ({_PLACEHOLDER.sub(shift, prepared.sql)})")
        offset += len(prepared.binds)
    columns = [_GUARD_COUNT] if guard is not None else []
    if lazy:
        columns.append("set_config('synchronous_commit', 'off', true)")
    sql = "WITH " + ", ".join(ctes) + " SELECT " + (", ".join(columns) or "1")
    if len(_COMBINED) < _MAX_PREPARED:
        _COMBINED[key] = sql
    return sql


# ---- optimistic writes (PostgreSQL) -------------------------------------------------------

# Execution option: the connection runs its work outside a transaction, reads as it goes and
# writes once, with :func:`run_guarded` (see ``Database.write(optimistic=True)``).
OPTIMISTIC = "recgate_optimistic"
# The CTE that guards the writes sent with it, and what the statement returns of it.
GUARD = "recgate_guard"
_GUARD_COUNT = "(SELECT count(*) FROM recgate_guard)"


class NeedsTransaction(Exception):
    """Nothing was written: run the work in a transaction instead (what it read has changed
    since, or its writes cannot go as one statement)."""


# Execution option: an optimistic work has read beside its one-statement read, and no guarded
# write has checked those reads since (they may come from different snapshots).
_UNCHECKED = "recgate_unchecked_reads"


def optimistic(conn: Connection) -> bool:
    return bool(conn.get_execution_options().get(OPTIMISTIC))


def note_unchecked_read(conn: Connection) -> None:
    conn.execution_options(**{_UNCHECKED: True})


def unchecked_reads(conn: Connection) -> bool:
    """An optimistic work read more than one snapshot and no guarded write checked them: an
    answer it gives without writing is not to be trusted (run it in a transaction)."""
    return bool(conn.get_execution_options().get(_UNCHECKED))


def run_guarded(
    conn: Connection,
    guard: tuple[Any, Params],
    writes: Sequence[tuple[Any, Params | Sequence[Params]]],
) -> None:
    """``writes`` as one statement, atomic by itself, on a connection outside a transaction:
    ``guard`` (an ``UPDATE … RETURNING`` that matches a row only when nothing has changed
    since the work read it) goes first, as the CTE ``recgate_guard``, and each write must
    write nothing unless that CTE holds a row (``WHERE EXISTS (SELECT * FROM
    recgate_guard)``). Raises :class:`NeedsTransaction` when the guard matched nothing (so
    nothing was written), or when the writes cannot go in one statement (before sending)."""
    statement, params = guard
    head = _prepared(conn, statement, _keys(statement, params))
    if head is None or not head.numbered or head.expanding is not None:
        raise NeedsTransaction("the guard cannot go in one statement")
    group: list[tuple[Prepared, Params]] = []
    for write, given in writes:
        for row in _rows(given):
            prepared = _prepared(conn, write, _keys(write, row))
            if prepared is None or not prepared.combinable or len(group) == MAX_TOGETHER:
                raise NeedsTransaction("the writes cannot go in one statement")
            group.append((prepared, row))
    lazy = bool(conn.get_execution_options().get(LAZY_COMMIT))
    matched = _send_combined(conn, (head, params), group, lazy).first()
    if not matched or not matched[0]:
        raise NeedsTransaction("changed since it was read")
    # Nothing changed the call since it was read: every read since then was of one state.
    conn.execution_options(**{LAZY_COMMIT: False, _UNCHECKED: False})


def forget_work_options(conn: Connection) -> None:
    """Clear what an earlier work on ``conn`` noted (a connection kept between works)."""
    options = conn.get_execution_options()
    if options.get(LAZY_COMMIT) or options.get(_UNCHECKED):
        conn.execution_options(**{LAZY_COMMIT: False, _UNCHECKED: False})


def lazy_commit(conn: Connection) -> None:
    """Mark the transaction: its commit need not wait for the disk (PostgreSQL). The setting
    goes with the next writes sent together, or with :func:`settle_lazy_commit`."""
    conn.execution_options(**{LAZY_COMMIT: True})


def settle_lazy_commit(conn: Connection) -> None:
    """Before the commit: send the mark if no writes carried it. Outside a transaction
    (optimistic) there is nothing left to commit."""
    if conn.get_execution_options().get(LAZY_COMMIT) and not optimistic(conn):
        conn.exec_driver_sql(_SET_LAZY)
        conn.execution_options(**{LAZY_COMMIT: False})
