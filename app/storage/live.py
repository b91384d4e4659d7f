"""The rows of live calls, read and written with a few Core statements (the hot paths).

:class:`LiveCallRepository` works on one synchronous ``Connection`` inside a transaction
(see :class:`app.storage.db.Database`). It reads a call's rows into the domain's snapshots and
writes back only the columns a decision changed, so work done on the same rows by other
paths (the retention sweep, media copies) is never overwritten with stale values. Every
statement is built once per dialect and reused, so SQLAlchemy compiles it once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import fields, replace
from datetime import datetime
from enum import StrEnum
from functools import partial
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from app.domain.retention import Months
from app.domain.row_ids import new_id
from app.domain.snapshots import (
    CallSnap,
    Changes,
    LinkSnap,
    RecordingSnap,
    SegmentSnap,
)
from app.domain.states import (
    OPEN_SEGMENT_STATES,
    CallState,
    ExposureKind,
    PauseBehavior,
    RecordingState,
    SegmentState,
)
from app.storage import direct
from app.storage.models import (
    ApiToken,
    Call,
    CallAlias,
    DeadLetter,
    Exposure,
    InboundEvent,
    PaymentSegment,
    Recording,
    RetentionPolicy,
    SegmentRecording,
    StateTransition,
    is_open,
)

calls = cast(sa.Table, Call.__table__)
aliases = cast(sa.Table, CallAlias.__table__)
recordings = cast(sa.Table, Recording.__table__)
segments = cast(sa.Table, PaymentSegment.__table__)
links = cast(sa.Table, SegmentRecording.__table__)
exposures = cast(sa.Table, Exposure.__table__)
transitions = cast(sa.Table, StateTransition.__table__)
inbox = cast(sa.Table, InboundEvent.__table__)
tokens = cast(sa.Table, ApiToken.__table__)
policies = cast(sa.Table, RetentionPolicy.__table__)
dead_letters = cast(sa.Table, DeadLetter.__table__)


# Snapshot field -> column, for the fields that a decision may change.
_CALL_COLUMNS = {
    f.name: f.name
    for f in fields(CallSnap)
    if f.name not in {"id", "provider", "provider_call_id", "created"}
}
_RECORDING_COLUMNS = {
    f.name: "provider_container_id" if f.name == "container_id" else f.name
    for f in fields(RecordingSnap)
    if f.name not in {"id", "call_id", "provider_recording_id", "created", "link"}
}
_SEGMENT_COLUMNS = {
    f.name: f.name for f in fields(SegmentSnap) if f.name not in {"id", "call_id", "created"}
}
_LINK_COLUMNS = ("pause_sent_at", "paused_at", "resumed_at")
_LINK_MAP = {c: c for c in _LINK_COLUMNS}
_MISSING = object()
_RECORDING_SELECT = [recordings.c[c] for c in ("id", "call_id", "provider_recording_id")] + [
    recordings.c[c] for c in _RECORDING_COLUMNS.values()
]
_LINK_SELECT = [links.c.segment_id.label("link_segment_id")] + [
    links.c[c].label(f"link_{c}") for c in _LINK_COLUMNS
]


def _plain(value: Any) -> Any:
    """Enum members as the strings they stand for (drivers want plain values)."""
    return value.value if isinstance(value, StrEnum) else value


# Optimistic writes (PostgreSQL, ``direct.run_guarded``): each write is written only when the
# guard, the call's version moving on from the one read, matched.
_GUARD_HELD = sa.exists().select_from(sa.table(direct.GUARD))
_GUARD_CALL = (
    calls.update()
    .where(calls.c.id == sa.bindparam("of_id"), calls.c.live_version == sa.bindparam("seen"))
    .values(live_version=calls.c.live_version + 1)
    .returning(calls.c.id)
)


def _open_segment_id() -> sa.ScalarSelect[Any]:
    """The id of the call's latest open segment (correlated with ``calls``)."""
    opened = segments.alias("opened")
    return (
        sa.select(opened.c.id)
        .where(opened.c.call_id == calls.c.id, is_open(opened.c.state))
        .order_by(opened.c.opened_at.desc())
        .limit(1)
        .correlate(calls)
        .scalar_subquery()
    )


def _read_together() -> sa.Select[Any]:
    """A call, its latest payment segment, the id of its latest open one, and every
    recording of the call with its link to the latest: one row per recording (one with no
    recording when it has none)."""
    latest = segments.alias("latest")
    latest_id = (
        sa.select(latest.c.id)
        .where(latest.c.call_id == calls.c.id)
        .order_by(latest.c.opened_at.desc())
        .limit(1)
        .correlate(calls)
        .scalar_subquery()
    )
    open_id = _open_segment_id()
    link = sa.and_(links.c.recording_id == recordings.c.id, links.c.segment_id == segments.c.id)
    return (
        sa.select(
            *(c.label(f"c_{c.name}") for c in calls.c),
            *(c.label(f"s_{c.name}") for c in segments.c),
            open_id.label("open_id"),
            *(c.label(f"r_{c.name}") for c in _RECORDING_SELECT),
            *_LINK_SELECT,
        )
        .select_from(
            calls.outerjoin(segments, segments.c.id == latest_id)
            .outerjoin(recordings, recordings.c.call_id == calls.c.id)
            .outerjoin(links, link)
        )
        .order_by(recordings.c.created_at, recordings.c.id)
    )


_CALL_ROWS_BY_ID = _read_together().where(calls.c.id == sa.bindparam("of_id"))
_CALL_ROWS_BY_KEY = _read_together().where(
    calls.c.provider == sa.bindparam("of_provider"),
    calls.c.provider_call_id == sa.bindparam("of_provider_call_id"),
)


def _prefixed(row: Any, prefix: str, *, strip: bool = True) -> dict[str, Any]:
    """The columns of ``row`` named with ``prefix`` (without it when ``strip``)."""
    if isinstance(row, direct.Row):
        return row.named(prefix, strip=strip)
    cut = len(prefix) if strip else 0
    return {k[cut:]: v for k, v in row._mapping.items() if k.startswith(prefix)}


def _recording_row(row: Any) -> dict[str, Any]:
    """A recording and its link, from a row that reads them beside other tables (``r_``,
    ``link_``)."""
    return {**_prefixed(row, "r_"), **_prefixed(row, "link_", strip=False)}


def _recording_values(recording: RecordingSnap) -> dict[str, Any]:
    """A recording and its link as :func:`_recording_row` gives them."""
    link = recording.link
    return {
        "id": recording.id,
        "call_id": recording.call_id,
        "provider_recording_id": recording.provider_recording_id,
        **_values(recording, _RECORDING_COLUMNS),
        "link_segment_id": None if link is None else link.segment_id,
        **{f"link_{c}": None if link is None else getattr(link, c) for c in _LINK_COLUMNS},
    }


def _guarded_select(table: sa.Table, columns: list[str]) -> sa.Select[Any]:
    """``SELECT :a, :b … WHERE EXISTS (SELECT * FROM recgate_guard)``: one row to insert,
    or none when the guard did not hold."""
    values = [sa.bindparam(c, type_=table.c[c].type) for c in columns]
    return sa.select(*values).where(_GUARD_HELD)


# Guarded twins, by the statement itself (kept alive by the key) and the columns given.
_GUARDED: dict[tuple[Any, tuple[str, ...]], Any] = {}


class _Statements:
    """Statements that differ by dialect (upserts), built once per dialect."""

    def __init__(self, dialect: str) -> None:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self.inbox = insert(inbox).on_conflict_do_nothing(index_elements=["provider", "event_id"])
        self.inbox_new = self.inbox.returning(inbox.c.provider, inbox.c.event_id)
        call_insert = insert(calls)
        self.upsert_call = call_insert.on_conflict_do_update(
            index_elements=["provider", "provider_call_id"],
            set_={
                "updated_at": call_insert.excluded.updated_at,
                "live_version": calls.c.live_version + 1,
            },
        ).returning(*calls.c)
        alias_insert = insert(aliases)
        # The latest link wins: a channel transferred, a bridge used again for the next call.
        self.alias = alias_insert.on_conflict_do_update(
            index_elements=["provider", "alias"], set_={"call_id": alias_insert.excluded.call_id}
        )
        self.upsert_link = _latest_link_wins(insert(links))
        # The same, written only when the guard of an optimistic write holds (see _guarded).
        columns = ["segment_id", "recording_id", *_LINK_COLUMNS]
        self.guarded_link = _latest_link_wins(
            insert(links).from_select(columns, _guarded_select(links, columns))
        )

    def set_form(self, statement: Any, keys: tuple[str, ...]) -> Any | None:
        """The twin of one of :meth:`LiveCallRepository.write`'s statements that writes many
        rows in one execution (PostgreSQL): each parameter ``k`` of a row becomes an array
        ``a_k`` of every row's value, unnested into a row per element (:func:`_unnest`).
        None for an INSERT that leaves out a column with a Python-side default: one value
        made for the statement would go to every row."""
        key = (statement, keys)
        if key in _SET_FORMS:
            return _SET_FORMS[key]
        found: Any
        if isinstance(statement, sa.Update):
            table, columns = _UPDATE_OF[statement]
            rows = _unnest(table, {"row_id": "id", **{f"v_{c}": c for c in columns}})
            found = (
                table.update()
                .where(table.c.id == rows.c.row_id)
                .values({c: rows.c[f"v_{c}"] for c in columns})
            )
        else:
            table = cast(sa.Table, statement.table)
            rows = _unnest(table, {k: k for k in keys})
            found = postgresql.insert(table).from_select(
                list(keys), sa.select(*(rows.c[k] for k in keys)), include_defaults=False
            )
            if statement is self.upsert_link:
                found = _latest_link_wins(found)
            if any(c.default is not None for c in table.c if c.key not in keys):
                found = None
        _SET_FORMS[key] = found
        return found

    def guarded(self, statement: Any, keys: tuple[str, ...]) -> Any:
        """The guarded twin of one of :meth:`LiveCallRepository.write`'s statements, given
        the columns of its rows."""
        if statement is self.upsert_link:
            return self.guarded_link
        key = (statement, keys)
        found = _GUARDED.get(key)
        if found is None:
            if isinstance(statement, sa.Update):
                found = statement.where(_GUARD_HELD)
            else:
                table = cast(sa.Table, statement.table)
                found = table.insert().from_select(list(keys), _guarded_select(table, list(keys)))
            _GUARDED[key] = found
        return found


def _latest_link_wins(insert: Any) -> Any:
    """A link's INSERT that, for a link already there, writes the new times over it."""
    return insert.on_conflict_do_update(
        index_elements=["segment_id", "recording_id"],
        set_={c: insert.excluded[c] for c in _LINK_COLUMNS},
    )


_BY_DIALECT: dict[str, _Statements] = {}
_SET_FORMS: dict[tuple[Any, tuple[str, ...]], Any] = {}


def _unnest(table: sa.Table, names: dict[str, str]) -> Any:
    """``unnest(:a_n1, :a_n2, …) AS v(n1, n2, …)`` (PostgreSQL): for each name, an array
    parameter typed as an array of its column's type (:func:`direct.array_of`)."""
    arrays = [
        sa.bindparam(f"a_{name}", type_=direct.array_of(table.c[column].type))
        for name, column in names.items()
    ]
    return sa.func.unnest(*arrays).table_valued(*names).render_derived(name="v")


def _as_arrays(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows of one statement (the same keys) as one array per key, for its set form."""
    return {f"a_{key}": [row[key] for row in rows] for key in rows[0]}


def _statements(conn: Connection) -> _Statements:
    name = conn.dialect.name
    found = _BY_DIALECT.get(name)
    if found is None:
        found = _BY_DIALECT[name] = _Statements(name)
    return found


# Whether a call holds recordings under its own key as their container: a call made for a
# bridge's recording that arrived before the bridge was linked to its call.
_HELD = (
    sa.exists()
    .where(
        recordings.c.call_id == calls.c.id,
        recordings.c.provider_container_id == calls.c.provider_call_id,
    )
    .label("held")
)
# What each of some names stands for: the call it is an alias of, or the call it is the key of.
_NAMES = sa.union_all(
    sa.select(
        aliases.c.alias.label("name"),
        calls.c.provider_call_id.label("key"),
        calls.c.started_at,
        _HELD,
        sa.literal(True).label("is_alias"),
    )
    .join_from(aliases, calls, aliases.c.call_id == calls.c.id)
    .where(
        aliases.c.provider == sa.bindparam("provider"),
        aliases.c.alias.in_(sa.bindparam("names", expanding=True)),
    ),
    sa.select(
        calls.c.provider_call_id.label("name"),
        calls.c.provider_call_id.label("key"),
        calls.c.started_at,
        _HELD,
        sa.literal(False).label("is_alias"),
    ).where(
        calls.c.provider == sa.bindparam("provider"),
        calls.c.provider_call_id.in_(sa.bindparam("names", expanding=True)),
    ),
)
# Folding one call into another (see LiveCallRepository.merge_call).
_MOVE_RECORDINGS = (
    recordings.update()
    .where(recordings.c.call_id == sa.bindparam("source"))
    .values(call_id=sa.bindparam("target"), updated_at=sa.bindparam("now"))
    .returning(recordings.c.id)
)
_MOVE_SEGMENTS = (
    segments.update()
    .where(segments.c.call_id == sa.bindparam("source"))
    .values(call_id=sa.bindparam("target"))
)
_MOVE_EXPOSURES = (
    exposures.update()
    .where(exposures.c.call_id == sa.bindparam("source"))
    .values(call_id=sa.bindparam("target"))
)
# The call's own transitions stay as the record of the call that was folded.
_MOVE_TRANSITIONS = (
    transitions.update()
    .where(transitions.c.call_id == sa.bindparam("source"), transitions.c.entity != "call")
    .values(call_id=sa.bindparam("target"))
)
_MOVE_ALIASES = (
    aliases.update()
    .where(aliases.c.call_id == sa.bindparam("source"))
    .values(call_id=sa.bindparam("target"))
)
_INSERT_SEGMENT = segments.insert()
_INSERT_RECORDING = recordings.insert()
_INSERT_EXPOSURE = exposures.insert()
# No RETURNING of the new id (nobody reads it), so it can go with other writes.
_INSERT_TRANSITION = transitions.insert().inline()
_DELETE_CALL = calls.delete().where(calls.c.id == sa.bindparam("source"))
# Lock the call for the transaction and bump its live version, in one statement.
_CALL_BY_ID = (
    calls.update()
    .where(calls.c.id == sa.bindparam("of_id"))
    .values(live_version=calls.c.live_version + 1)
    .returning(*calls.c)
)
_CALL_BY_KEY = (
    calls.update()
    .where(
        calls.c.provider == sa.bindparam("of_provider"),
        calls.c.provider_call_id == sa.bindparam("of_provider_call_id"),
    )
    .values(live_version=calls.c.live_version + 1)
    .returning(*calls.c)
)
_SEGMENT_CALL = sa.select(segments.c.call_id).where(segments.c.id == sa.bindparam("id"))
_SEGMENT_CLAIM = sa.select(segments.c.command_id, segments.c.command_until).where(
    segments.c.id == sa.bindparam("id")
)
_SEGMENT_BY_ID = sa.select(*segments.c).where(segments.c.id == sa.bindparam("id"))
_OPEN_SEGMENT = (
    sa.select(*segments.c)
    .where(segments.c.call_id == sa.bindparam("call_id"), is_open(segments.c.state))
    .order_by(segments.c.opened_at.desc())
    .limit(1)
)
_LATEST_SEGMENT = (
    sa.select(*segments.c)
    .where(segments.c.call_id == sa.bindparam("call_id"))
    .order_by(segments.c.opened_at.desc())
    .limit(1)
)
_SEGMENT_BY_KEY = sa.select(*segments.c).where(
    segments.c.call_id == sa.bindparam("call_id"),
    segments.c.idempotency_key == sa.bindparam("key"),
)
_LINK_JOIN = sa.and_(
    links.c.recording_id == recordings.c.id, links.c.segment_id == sa.bindparam("segment_id")
)
_RECORDINGS = (
    sa.select(*_RECORDING_SELECT, *_LINK_SELECT)
    .select_from(recordings.outerjoin(links, _LINK_JOIN))
    .where(recordings.c.call_id == sa.bindparam("call_id"))
    .order_by(recordings.c.created_at, recordings.c.id)
)
_RECORDING = (
    sa.select(*_RECORDING_SELECT, *_LINK_SELECT)
    .select_from(recordings.outerjoin(links, _LINK_JOIN))
    .where(
        recordings.c.call_id == sa.bindparam("call_id"),
        recordings.c.provider_recording_id == sa.bindparam("provider_recording_id"),
    )
)


def _live_rows() -> sa.Select[Any]:
    """For each of some calls: its latest open segment, and every recording of the call
    with its link to that segment; one row per recording (one with no recording when it has
    none, and no segment columns when none is open). With each, the call's service area as
    stored and that area's retention override, if it has one."""
    open_id = _open_segment_id()
    link = sa.and_(links.c.recording_id == recordings.c.id, links.c.segment_id == segments.c.id)
    return (
        sa.select(
            calls.c.id.label("of_call"),
            calls.c.service_area.label("of_area"),
            policies.c.media_months.label("area_media_months"),
            policies.c.record_months.label("area_record_months"),
            *(c.label(f"s_{c.name}") for c in segments.c),
            *(c.label(f"r_{c.name}") for c in _RECORDING_SELECT),
            *_LINK_SELECT,
        )
        .select_from(
            calls.outerjoin(policies, policies.c.service_area == calls.c.service_area)
            .outerjoin(segments, segments.c.id == open_id)
            .outerjoin(recordings, recordings.c.call_id == calls.c.id)
            .outerjoin(links, link)
        )
        .where(calls.c.id.in_(sa.bindparam("call_ids", expanding=True)))
        .order_by(recordings.c.created_at, recordings.c.id)
    )


_LIVE_ROWS = _live_rows()

_POLICY_ALL = (policies.c.service_area, policies.c.media_months, policies.c.record_months)
_POLICIES = sa.select(*_POLICY_ALL)
_OPEN_EXPOSURE = (
    sa.select(exposures.c.id)
    .where(
        exposures.c.segment_id == sa.bindparam("segment_id"),
        exposures.c.recording_id == sa.bindparam("recording_id"),
        exposures.c.ended_at.is_(None),
    )
    .limit(1)
)
_PAUSE_FAILED_EXPOSED = sa.select(exposures.c.recording_id).where(
    exposures.c.segment_id == sa.bindparam("segment_id"),
    exposures.c.kind == ExposureKind.PAUSE_FAILED.value,
    exposures.c.ended_at.is_(None),
)
_CALL_EXPOSURE_WINDOWS = sa.select(exposures.c.started_at, exposures.c.ended_at).where(
    exposures.c.call_id == sa.bindparam("call_id"), exposures.c.recording_id.is_(None)
)
_END_RECORDING_EXPOSURES = (
    exposures.update()
    .where(
        exposures.c.recording_id.in_(sa.bindparam("recording_ids", expanding=True)),
        exposures.c.ended_at.is_(None),
        exposures.c.kind != ExposureKind.PAUSE_FAILED.value,
    )
    .values(ended_at=sa.bindparam("now"))
)
_END_SEGMENT_EXPOSURES = (
    exposures.update()
    .where(exposures.c.segment_id == sa.bindparam("of_segment"), exposures.c.ended_at.is_(None))
    .values(ended_at=sa.bindparam("now"))
)


def _end_call_exposures(of_call: Any, ended: Any) -> sa.Update:
    """A call's exposures end when it ended at the latest (one that started after that,
    when it started)."""
    return (
        exposures.update()
        .where(
            exposures.c.call_id == of_call,
            sa.or_(exposures.c.ended_at.is_(None), exposures.c.ended_at > ended),
        )
        .values(
            ended_at=sa.case((exposures.c.started_at > ended, exposures.c.started_at), else_=ended)
        )
    )


_END_CALL_EXPOSURES = _end_call_exposures(
    sa.bindparam("of_call"), sa.bindparam("ended", type_=exposures.c.started_at.type)
)
_ENDED = _unnest(exposures, {"of_call": "call_id", "ended": "started_at"})
# The same for many calls at once (PostgreSQL).
_END_CALLS_EXPOSURES = _end_call_exposures(_ENDED.c.of_call, _ENDED.c.ended)
_TOKEN = sa.select(tokens.c.name, tokens.c.role).where(
    tokens.c.token_hash == sa.bindparam("token_hash"), tokens.c.revoked_at.is_(None)
)
_DUE = (
    sa.select(segments.c.id)
    .where(
        segments.c.due_at <= sa.bindparam("now"),
        sa.or_(segments.c.command_until.is_(None), segments.c.command_until <= sa.bindparam("now")),
    )
    .order_by(segments.c.due_at)
    .limit(sa.bindparam("limit"))
)
_OVERLONG = (
    segments.update()
    .where(
        is_open(segments.c.state),
        segments.c.opened_at < sa.bindparam("opened_before"),
        segments.c.overlong_alerted_at.is_(None),
    )
    .values(overlong_alerted_at=sa.bindparam("now"))
    .returning(segments.c.id, segments.c.state)
)


def _mapping(row: Row[Any] | dict[str, Any]) -> Any:
    return row if isinstance(row, dict) else row._mapping


def _call(row: Row[Any] | dict[str, Any]) -> tuple[CallSnap, dict[str, Any]]:
    """The snapshot, and the row's values as read (to tell later what changed)."""
    m = _mapping(row)
    read = {c: m[c] for c in _CALL_COLUMNS.values()}
    values: dict[str, Any] = {f: read[c] for f, c in _CALL_COLUMNS.items()}
    values["state"] = CallState(values["state"])
    snap = CallSnap(
        id=m["id"], provider=m["provider"], provider_call_id=m["provider_call_id"], **values
    )
    return snap, read


def _segment(row: Row[Any] | dict[str, Any]) -> tuple[SegmentSnap, dict[str, Any]]:
    m = _mapping(row)
    read = {c: m[c] for c in _SEGMENT_COLUMNS.values()}
    values: dict[str, Any] = {f: read[c] for f, c in _SEGMENT_COLUMNS.items()}
    values["state"] = SegmentState(values["state"])
    values["pause_behavior"] = PauseBehavior(values["pause_behavior"])
    return SegmentSnap(id=m["id"], call_id=m["call_id"], **values), read


def _recording(
    row: Row[Any] | dict[str, Any], *, linked: bool = True
) -> tuple[RecordingSnap, dict[str, Any]]:
    m = _mapping(row)
    read = {c: m[c] for c in _RECORDING_COLUMNS.values()}
    values: dict[str, Any] = {f: read[c] for f, c in _RECORDING_COLUMNS.items()}
    values["state"] = RecordingState(values["state"])
    link = None
    if linked and m["link_segment_id"] is not None:
        link = LinkSnap(m["link_segment_id"], **{c: m[f"link_{c}"] for c in _LINK_COLUMNS})
    snap = RecordingSnap(
        id=m["id"],
        call_id=m["call_id"],
        provider_recording_id=m["provider_recording_id"],
        link=link,
        **values,
    )
    return snap, read


def _values(snap: Any, columns: dict[str, str]) -> dict[str, Any]:
    return {c: _plain(getattr(snap, f)) for f, c in columns.items()}


class LiveCallRepository:
    """Reads and writes one call's live rows inside the caller's transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._run: Any = partial(direct.run, conn)
        self.sql = _statements(conn)
        # What each row held when read, to write back only what changed.
        self._loaded: dict[tuple[str, uuid.UUID], dict[str, Any]] = {}
        self._links: dict[tuple[uuid.UUID, uuid.UUID], dict[str, Any]] = {}
        # By call, as :meth:`live_rows` read it: its service area and that area's retention
        # override (:meth:`area_override`); every area's, once read without the rows.
        self._area_policies: dict[uuid.UUID, tuple[str | None, Months | None]] = {}
        self._every_policy: dict[str, Months] | None = None
        # Optimistic (PostgreSQL, ``Database.write(optimistic=True)``): outside a transaction,
        # a call is read, not locked, and the one write is guarded by the version read.
        self.optimistic = direct.optimistic(conn)
        self._guard: tuple[uuid.UUID, int] | None = None
        self._written = False
        # Optimistic, read with the call: its id, its latest segment, its latest open segment's id, and
        # its recordings (:meth:`_read_call`).
        self._prefetch: (
            tuple[uuid.UUID, dict[str, Any] | None, uuid.UUID | None, list[Any]] | None
        ) = None
        # Optimistic: rows this process wrote last, taken as read instead of reading (:meth:`assume`).
        self._assumed: tuple[CallSnap, int, SegmentSnap | None, list[RecordingSnap]] | None = None
        if self.optimistic:
            self._run = self._run_optimistic

    def _run_optimistic(self, statement: Any, params: Any = None) -> Any:
        """A statement of an optimistic work: reads come before the one write, and a read
        beside the one-statement read is noted (its snapshot is another one) until the
        guarded write checks it."""
        if self._written:
            raise RuntimeError("an optimistic work writes last")
        if self._guard is not None and isinstance(statement, sa.Select | sa.CompoundSelect):
            direct.note_unchecked_read(self.conn)
        return direct.run(self.conn, statement, params)

    def _remember(self, kind: str, key: uuid.UUID, values: dict[str, Any]) -> None:
        self._loaded[(kind, key)] = values

    # ---- reads ----------------------------------------------------------------------------

    def insert_inbox(self, values: dict[str, Any]) -> bool:
        """Store an event in the inbox; False when it was there already (a duplicate)."""
        return bool(self._run(self.sql.inbox, values).rowcount)

    def insert_inbox_many(self, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
        """Store events in the inbox; the (provider, event id) of those that were new."""
        result = self._run(self.sql.inbox_new, rows)
        return {(row.provider, row.event_id) for row in result}

    def upsert_calls(
        self, keys: list[tuple[str, str]], now: datetime
    ) -> dict[tuple[str, str], CallSnap]:
        """The calls, created (``created``) where new, locked for the transaction. Keys are
        taken in order, so concurrent batches lock calls in the same order."""
        new_ids = {key: new_id() for key in keys}
        rows = [
            {
                "id": new_ids[key],
                "provider": key[0],
                "provider_call_id": key[1],
                "state": CallState.IN_PROGRESS.value,
                "has_call_exposure": False,
                "created_at": now,
                "updated_at": now,
            }
            for key in sorted(keys)
        ]
        found: dict[tuple[str, str], CallSnap] = {}
        for row in self._run(self.sql.upsert_call, rows):
            call, read = _call(row)
            key = (call.provider, call.provider_call_id)
            call.created = call.id == new_ids[key]
            self._remember("call", call.id, read)
            found[key] = call
        return found

    def live_rows(
        self, call_ids: Iterable[uuid.UUID]
    ) -> tuple[dict[uuid.UUID, SegmentSnap], dict[uuid.UUID, list[RecordingSnap]]]:
        """In one statement, for each call: its open payment segment (the latest), when it
        has one; and every recording of the call, with its link to that segment."""
        ids = sorted(set(call_ids))
        found: dict[uuid.UUID, list[RecordingSnap]] = {call_id: [] for call_id in ids}
        open_ones: dict[uuid.UUID, SegmentSnap] = {}
        if not ids:
            return open_ones, found
        for row in self._run(_LIVE_ROWS, {"call_ids": ids}):
            call_id = row.of_call
            if call_id not in self._area_policies:
                override = None
                if row.area_media_months is not None:
                    override = Months(row.area_media_months, row.area_record_months)
                self._area_policies[call_id] = (row.of_area, override)
            if row.s_id is not None and call_id not in open_ones:
                open_ones[call_id] = self._segment_read(_prefixed(row, "s_"))
            if row.r_id is not None:
                found[call_id].append(self._loaded_recording(_recording_row(row)))
        return open_ones, found

    def area_override(self, call: CallSnap) -> Months | None:
        """The retention override of ``call``'s service area (None: it has none; nor has a
        call with no area). As :meth:`live_rows` read it with the call; for a call not among
        those (new in this transaction) or whose area has changed since, from every area's
        overrides, read once in the transaction."""
        found = self._area_policies.get(call.id)
        if found is not None and found[0] == call.service_area:
            return found[1]
        if call.service_area is None:
            return None
        if self._every_policy is None:
            rows = self._run(_POLICIES)
            self._every_policy = {
                row.service_area: Months(row.media_months, row.record_months) for row in rows
            }
        return self._every_policy.get(call.service_area)

    def resolve_names(
        self, provider: str, names: Iterable[str]
    ) -> dict[str, tuple[str, datetime | None, bool]]:
        """For each name that stands for a stored call (an alias, or a call's own key): that
        call's key, its start, and whether it holds a container's recordings under the
        container's own name; in one statement."""
        params = {"provider": provider, "names": sorted(set(names))}
        found: dict[str, tuple[str, datetime | None, bool]] = {}
        for row in self._run(_NAMES, params):
            if row.is_alias or row.name not in found:
                found[row.name] = (row.key, row.started_at, bool(row.held))
        return found

    def merge_call(self, source: CallSnap, target: CallSnap, now: datetime) -> set[uuid.UUID]:
        """Fold ``source`` into ``target`` (both locked by this transaction): its recordings,
        payment segments, exposures and aliases move over, its key becomes an alias of
        ``target``, and the call itself goes. The ids of the recordings that moved."""
        params = {"source": source.id, "target": target.id, "now": now}
        moved = set(self._run(_MOVE_RECORDINGS, params).scalars())
        for statement in (_MOVE_SEGMENTS, _MOVE_EXPOSURES, _MOVE_TRANSITIONS, _MOVE_ALIASES):
            self._run(statement, params)
        self.add_aliases(target, (source.provider_call_id,), now)
        self._run(_DELETE_CALL, params)
        self._loaded.pop(("call", source.id), None)
        return moved

    def add_aliases(self, call: CallSnap, names: Iterable[str], now: datetime) -> None:
        """``names`` stand for ``call`` from now on, whatever call they stood for before."""
        rows = [
            {"provider": call.provider, "alias": name, "call_id": call.id, "created_at": now}
            # Once each: PostgreSQL refuses to update one row twice in one statement.
            for name in dict.fromkeys(names)
            if name != call.provider_call_id
        ]
        if rows:
            self._run(self.sql.alias, rows)

    def assume(
        self,
        call: CallSnap,
        version: int,
        segment: SegmentSnap | None,
        recordings: list[RecordingSnap],
    ) -> None:
        """Optimistic: the call's rows as this process wrote them last, at the call's live
        version ``version``, when they were all of its live rows then (:meth:`whole`). The
        next read of that call takes them as read instead of reading; the write stays guarded
        by that version, so it lands only if nobody has changed the call since, and an answer
        given without writing is not final (the work runs again, reading)."""
        if self.optimistic:
            self._assumed = (call, version, segment, recordings)

    def _assumed_call(self) -> CallSnap:
        assert self._assumed is not None
        known, version, segment, recordings = self._assumed
        self._assumed = None
        call = self._guard_seen(known, version)
        latest = None
        open_id = None
        if segment is not None:
            latest = {
                "id": segment.id,
                "call_id": segment.call_id,
                **_values(segment, _SEGMENT_COLUMNS),
            }
            open_id = segment.id if segment.state in OPEN_SEGMENT_STATES else None
        self._prefetch = (call.id, latest, open_id, [_recording_values(r) for r in recordings])
        direct.note_unchecked_read(self.conn)
        return call

    def _guard_seen(self, known: CallSnap, version: int) -> CallSnap:
        """A copy of ``known`` as if read now at ``version``, the write guarded by it."""
        call = replace(known, live_version=version, created=False)
        self._guard_call(call, _values(call, _CALL_COLUMNS))
        return call

    def whole(self, segment: SegmentSnap) -> bool:
        """Optimistic: what this work read of the call is all of its live rows once it has
        written ``segment`` (not yet written, or the call's latest): the latest open segment
        read was this one or none (the read names no older open one), and every recording
        was read, with its link to ``segment``."""
        if self._prefetch is None or self._prefetch[0] != segment.call_id:
            return False
        _, latest, open_id, _ = self._prefetch
        latest_id = None if latest is None else latest["id"]
        return (segment.created or segment.id == latest_id) and open_id in (None, segment.id)

    def _read_call(self, statement: sa.Select[Any], params: dict[str, Any]) -> CallSnap | None:
        """Optimistic: the call as read, with the version the guarded write moves it to (as
        a locked read would have bumped it); that write is guarded by the version read. Its
        latest segment and its recordings come in the same statement, for the reads that
        follow (:meth:`_prefetched`). The call's rows given to :meth:`assume` are not read."""
        if self._assumed is not None:
            known = self._assumed[0]
            key = (params.get("of_provider"), params.get("of_provider_call_id"))
            if params.get("of_id") == known.id or key == (known.provider, known.provider_call_id):
                return self._assumed_call()
        rows = self._run(statement, params).all()
        if not rows:
            return None
        first = rows[0]
        call, read = _call(_prefixed(first, "c_"))
        self._guard_call(call, read)
        segment = _prefixed(first, "s_") if first.s_id is not None else None
        found = [_recording_row(row) for row in rows if row.r_id is not None]
        self._prefetch = (call.id, segment, first.open_id, found)
        return call

    def _guard_call(self, call: CallSnap, read: dict[str, Any]) -> None:
        if self._guard is not None:
            # Decisions may rest on the first read: one call, read once.
            raise direct.NeedsTransaction("a call read twice")
        self._guard = (call.id, call.live_version)
        call.live_version += 1
        read["live_version"] = call.live_version
        self._remember("call", call.id, read)

    def _prefetched(self, call_id: uuid.UUID) -> tuple[dict[str, Any] | None, list[Any]] | None:
        """The latest segment and the recordings read with the call, if that call."""
        if self._prefetch is None or self._prefetch[0] != call_id:
            return None
        return self._prefetch[1], self._prefetch[3]

    def upsert_call(self, provider: str, provider_call_id: str, now: datetime) -> CallSnap:
        """The call, created (``created``) if new; locked for the transaction."""
        if self.optimistic:
            params = {"of_provider": provider, "of_provider_call_id": provider_call_id}
            found = self._read_call(_CALL_ROWS_BY_KEY, params)
            if found is None:
                raise direct.NeedsTransaction("a new call")
            return found
        made_id = new_id()
        row = self._run(
            self.sql.upsert_call,
            {
                "id": made_id,
                "provider": provider,
                "provider_call_id": provider_call_id,
                "state": CallState.IN_PROGRESS.value,
                "has_call_exposure": False,
                "created_at": now,
                "updated_at": now,
            },
        ).one()
        call, read = _call(row)
        call.created = call.id == made_id
        self._remember("call", call.id, read)
        return call

    def call_by_id(
        self, call_id: uuid.UUID, *, seen: tuple[CallSnap, int] | None = None
    ) -> CallSnap | None:
        """The call, locked for the transaction (its live version bumped).

        Optimistic, with ``seen`` (the call as an earlier transaction of this process left
        it, and the version it left it at): not read again; the write is guarded by that
        version, so it lands only if nobody has changed the call since."""
        if self.optimistic and seen is not None:
            return self._guard_seen(*seen)
        if self.optimistic:
            return self._read_call(_CALL_ROWS_BY_ID, {"of_id": call_id})
        row = self._run(_CALL_BY_ID, {"of_id": call_id}).one_or_none()
        if row is None:
            return None
        call, read = _call(row)
        self._remember("call", call.id, read)
        return call

    def call_by_key(self, provider: str, provider_call_id: str) -> CallSnap | None:
        """The call, locked for the transaction (its live version bumped); None when
        recgate does not know it."""
        params = {"of_provider": provider, "of_provider_call_id": provider_call_id}
        if self.optimistic:
            return self._read_call(_CALL_ROWS_BY_KEY, params)
        row = self._run(_CALL_BY_KEY, params).one_or_none()
        if row is None:
            return None
        call, read = _call(row)
        self._remember("call", call.id, read)
        return call

    def segment_call_id(self, segment_id: uuid.UUID) -> uuid.UUID | None:
        found: uuid.UUID | None = self._run(_SEGMENT_CALL, {"id": segment_id}).scalar_one_or_none()
        return found

    def segment_claim(self, segment_id: uuid.UUID) -> datetime | None:
        """Until when the segment's command in flight holds its claim; None when none is."""
        row = self._run(_SEGMENT_CLAIM, {"id": segment_id}).one_or_none()
        if row is None or row.command_id is None:
            return None
        until: datetime | None = row.command_until
        return until

    def _one_segment(self, statement: sa.Select[Any], params: dict[str, Any]) -> SegmentSnap | None:
        row = self._run(statement, params).one_or_none()
        if row is None:
            return None
        segment, read = _segment(row)
        self._remember("segment", segment.id, read)
        return segment

    def adopt(self, segment: SegmentSnap, recordings: list[RecordingSnap]) -> None:
        """Take rows read (and written) by an earlier transaction of this process as read
        now: the call's live version says nobody has changed them since."""
        self._remember("segment", segment.id, _values(segment, _SEGMENT_COLUMNS))
        for recording in recordings:
            self._remember("recording", recording.id, _values(recording, _RECORDING_COLUMNS))
            if recording.link is not None:
                key = (recording.link.segment_id, recording.id)
                self._links[key] = _values(recording.link, _LINK_MAP)

    def _segment_read(self, row: dict[str, Any]) -> SegmentSnap:
        segment, read = _segment(row)
        self._remember("segment", segment.id, read)
        return segment

    def segment(self, segment_id: uuid.UUID) -> SegmentSnap | None:
        latest = None if self._prefetch is None else self._prefetch[1]
        if latest is not None and latest["id"] == segment_id:
            return self._segment_read(latest)
        return self._one_segment(_SEGMENT_BY_ID, {"id": segment_id})

    def open_segment(self, call_id: uuid.UUID) -> SegmentSnap | None:
        prefetched = self._prefetched(call_id)
        if prefetched is not None and self._prefetch is not None:
            latest, open_id = prefetched[0], self._prefetch[2]
            if open_id is None:
                return None  # none open (the latest closed, or no segment at all)
            if latest is not None and latest["id"] == open_id:
                return self._segment_read(latest)
            # An older segment is still open (the one read is not it): read it now.
        return self._one_segment(_OPEN_SEGMENT, {"call_id": call_id})

    def latest_segment(self, call_id: uuid.UUID) -> SegmentSnap | None:
        prefetched = self._prefetched(call_id)
        if prefetched is not None:
            return None if prefetched[0] is None else self._segment_read(prefetched[0])
        return self._one_segment(_LATEST_SEGMENT, {"call_id": call_id})

    def segment_by_key(self, call_id: uuid.UUID, key: str) -> SegmentSnap | None:
        return self._one_segment(_SEGMENT_BY_KEY, {"call_id": call_id, "key": key})

    def _loaded_recording(
        self, row: Row[Any] | dict[str, Any], *, linked: bool = True
    ) -> RecordingSnap:
        recording, read = _recording(row, linked=linked)
        self._remember("recording", recording.id, read)
        if recording.link is not None:
            key = (recording.link.segment_id, recording.id)
            self._links[key] = _values(recording.link, _LINK_MAP)
        return recording

    def recordings(
        self, call_id: uuid.UUID, segment_id: uuid.UUID | None, *, new_segment: bool = False
    ) -> list[RecordingSnap]:
        """Every recording of the call, each with its link to ``segment_id`` (none when
        ``new_segment``: a segment not yet written has no links)."""
        prefetched = self._prefetched(call_id)
        if prefetched is not None:
            latest = prefetched[0]
            if new_segment or (latest["id"] if latest is not None else None) == segment_id:
                linked = not new_segment
                return [self._loaded_recording(row, linked=linked) for row in prefetched[1]]
        rows = self._run(_RECORDINGS, {"call_id": call_id, "segment_id": segment_id})
        return [self._loaded_recording(row) for row in rows]

    def recording(
        self, call_id: uuid.UUID, provider_recording_id: str, segment_id: uuid.UUID | None
    ) -> RecordingSnap | None:
        row = self._run(
            _RECORDING,
            {
                "call_id": call_id,
                "provider_recording_id": provider_recording_id,
                "segment_id": segment_id,
            },
        ).one_or_none()
        return None if row is None else self._loaded_recording(row)

    def open_exposure(self, segment_id: uuid.UUID, recording_id: uuid.UUID) -> bool:
        params = {"segment_id": segment_id, "recording_id": recording_id}
        return self._run(_OPEN_EXPOSURE, params).first() is not None

    def pause_failed_exposed(self, segment_id: uuid.UUID) -> set[uuid.UUID | None]:
        """Recordings (None: the call) with an open pause_failed exposure in the segment."""
        rows = self._run(_PAUSE_FAILED_EXPOSED, {"segment_id": segment_id})
        return {row.recording_id for row in rows}

    def call_exposure_windows(self, call_id: uuid.UUID) -> list[tuple[datetime, datetime | None]]:
        rows = self._run(_CALL_EXPOSURE_WINDOWS, {"call_id": call_id})
        return [(row.started_at, row.ended_at) for row in rows]

    def principal(self, token_hash: str) -> tuple[str, str] | None:
        row = self._run(_TOKEN, {"token_hash": token_hash}).one_or_none()
        return None if row is None else (row.name, row.role)

    def due_segments(self, now: datetime, limit: int) -> list[uuid.UUID]:
        """Segments whose next step is due and that nobody drives right now."""
        return list(self._run(_DUE, {"now": now, "limit": limit}).scalars())

    def flag_overlong(self, opened_before: datetime, now: datetime) -> list[tuple[uuid.UUID, str]]:
        rows = self._run(_OVERLONG, {"opened_before": opened_before, "now": now})
        return [(row.id, row.state) for row in rows]

    # ---- writes ---------------------------------------------------------------------------

    def write(self, changes: Changes) -> None:
        """Write what ``changes`` records: only changed columns of rows read, whole new rows,
        and the state transitions; rows of a kind with the same changed columns in one
        statement. The writes that touch distinct rows go together (one round trip on
        PostgreSQL, :func:`direct.run_writes`); ending exposures reads rows and follows.

        Optimistic: all of it as one statement guarded by the call's version as read, or
        :class:`direct.NeedsTransaction` (nothing written) when that version has moved on,
        or when the writes need a transaction (the call's own row, exposures to end)."""
        if self.optimistic:
            self._write_guarded(changes)
            return
        writes: list[tuple[Any, Any]] = self._writes(changes)
        if self.conn.dialect.name == "postgresql":
            writes = [self._in_one(statement, rows) for statement, rows in writes]
        direct.run_writes(self.conn, writes)
        self._end_exposures(changes)

    def _in_one(self, statement: Any, rows: list[dict[str, Any]]) -> tuple[Any, Any]:
        """Many rows of a statement as one execution, not one each (PostgreSQL): with the
        rest, a batch's writes then go as a statement or two (direct.run_writes)."""
        many = self.sql.set_form(statement, tuple(sorted(rows[0]))) if len(rows) > 1 else None
        return (statement, rows) if many is None else (many, _as_arrays(rows))

    def _write_guarded(self, changes: Changes) -> None:
        if self._written:
            raise RuntimeError("an optimistic work writes once")
        ends = changes.exposures_end_for or changes.segment_exposures_end
        if self._guard is None or changes.calls or ends or changes.end_call_exposures:
            raise direct.NeedsTransaction("these writes need a transaction")
        self._written = True
        call_id, seen = self._guard
        writes = [
            (self.sql.guarded(statement, tuple(sorted(rows[0]))), rows)
            for statement, rows in self._writes(changes)
        ]
        direct.run_guarded(self.conn, (_GUARD_CALL, {"of_id": call_id, "seen": seen}), writes)

    def _writes(self, changes: Changes) -> list[tuple[Any, list[dict[str, Any]]]]:
        """The statements that write ``changes`` (but ending exposures), with their rows."""
        now = changes.now
        writes: list[tuple[Any, list[dict[str, Any]]]] = []
        writes += self._update_rows(
            "call", calls, [(c.id, _values(c, _CALL_COLUMNS)) for c in changes.calls.values()], now
        )
        new_segments = [s for s in changes.segments.values() if s.created]
        if new_segments:
            rows = [
                {"id": s.id, "call_id": s.call_id, **_values(s, _SEGMENT_COLUMNS)}
                for s in new_segments
            ]
            writes.append((_INSERT_SEGMENT, rows))
            for segment, row in zip(new_segments, rows, strict=True):
                segment.created = False
                self._remember("segment", segment.id, row)
        writes += self._update_rows(
            "segment",
            segments,
            [
                (s.id, _values(s, _SEGMENT_COLUMNS))
                for s in changes.segments.values()
                if s not in new_segments
            ],
            None,
        )
        new = [r for r in changes.recordings.values() if r.created]
        if new:
            writes.append(
                (
                    _INSERT_RECORDING,
                    [
                        {
                            "id": r.id,
                            "call_id": r.call_id,
                            "provider_recording_id": r.provider_recording_id,
                            "media_files": 1,
                            "media_fetch_attempts": 0,
                            "created_at": now,
                            **_values(r, _RECORDING_COLUMNS),
                            "updated_at": now,
                        }
                        for r in new
                    ],
                )
            )
            for r in new:
                r.created = False
                self._remember("recording", r.id, _values(r, _RECORDING_COLUMNS))
        writes += self._update_rows(
            "recording",
            recordings,
            [
                (r.id, _values(r, _RECORDING_COLUMNS))
                for r in changes.recordings.values()
                if r not in new
            ],
            now,
        )
        rows = []
        for (segment_id, recording_id), link in changes.links.items():
            values = _values(link, _LINK_MAP)
            if self._links.get((segment_id, recording_id)) != values:
                rows.append({"segment_id": segment_id, "recording_id": recording_id, **values})
                self._links[(segment_id, recording_id)] = values
        if rows:
            writes.append((self.sql.upsert_link, rows))
        if changes.exposures:
            writes.append(
                (
                    _INSERT_EXPOSURE,
                    [
                        {
                            "id": new_id(),
                            "call_id": e.call_id,
                            "recording_id": e.recording_id,
                            "segment_id": e.segment_id,
                            "kind": e.kind.value,
                            "started_at": e.started_at,
                            "ended_at": None,
                            "detail": e.detail[:500],
                        }
                        for e in changes.exposures
                    ],
                )
            )
            changes.exposures.clear()
        if changes.transitions:
            writes.append(
                (
                    _INSERT_TRANSITION,
                    [
                        {
                            "entity": t.entity,
                            "entity_id": t.entity_id,
                            "call_id": t.call_id,
                            "from_state": t.from_state,
                            "to_state": t.to_state,
                            "cause": t.cause[:255],
                            "at": t.at,
                        }
                        for t in changes.transitions
                    ],
                )
            )
            changes.transitions.clear()
        return writes

    def _end_exposures(self, changes: Changes) -> None:
        """These read the exposures they end, those just inserted included: after the rest."""
        now = changes.now
        if changes.exposures_end_for:
            self.conn.execute(
                _END_RECORDING_EXPOSURES,
                {"recording_ids": sorted(changes.exposures_end_for), "now": now},
            )
            changes.exposures_end_for.clear()
        for segment_id in changes.segment_exposures_end:
            self._run(_END_SEGMENT_EXPOSURES, {"of_segment": segment_id, "now": now})
        changes.segment_exposures_end.clear()
        ends = [{"of_call": c, "ended": e} for c, e in changes.end_call_exposures.items()]
        if len(ends) > 1 and self.conn.dialect.name == "postgresql":
            self._run(_END_CALLS_EXPOSURES, _as_arrays(ends))
        else:
            for params in ends:
                self._run(_END_CALL_EXPOSURES, params)
        changes.end_call_exposures.clear()

    def _update_rows(
        self,
        kind: str,
        table: sa.Table,
        rows: list[tuple[uuid.UUID, dict[str, Any]]],
        updated_at: datetime | None,
    ) -> list[tuple[sa.Update, list[dict[str, Any]]]]:
        """The UPDATEs of the columns of each row that differ from what was read, one
        statement per set of changed columns."""
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for key, values in rows:
            before = self._loaded.get((kind, key), {})
            changed = {c: v for c, v in values.items() if before.get(c, _MISSING) != v}
            if not changed:
                continue
            self._remember(kind, key, {**before, **changed})
            if updated_at is not None:
                changed["updated_at"] = updated_at
            params = {"row_id": key, **{f"v_{c}": v for c, v in changed.items()}}
            groups.setdefault(tuple(sorted(changed)), []).append(params)
        return [(_update_statement(table, columns), group) for columns, group in groups.items()]


_UPDATES: dict[tuple[str, tuple[str, ...]], sa.Update] = {}
# Each of those statements' table and columns (for its set form).
_UPDATE_OF: dict[sa.Update, tuple[sa.Table, tuple[str, ...]]] = {}


def _update_statement(table: sa.Table, columns: tuple[str, ...]) -> sa.Update:
    """``UPDATE table SET <columns> WHERE id = :row_id``, built once per column set."""
    key = (table.name, columns)
    found = _UPDATES.get(key)
    if found is None:
        found = _UPDATES[key] = (
            table.update()
            .where(table.c.id == sa.bindparam("row_id"))
            .values({c: sa.bindparam(f"v_{c}") for c in columns})
        )
        _UPDATE_OF[found] = (table, columns)
    return found


def insert_dead_letter(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(dead_letters.insert(), values)
