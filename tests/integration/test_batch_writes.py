"""A batch's writes (issue 8): many rows of a kind in one statement, the same rows as its
events applied one at a time.

On PostgreSQL the rows a batch writes to one table with the same columns go as one
execution, their values as arrays (``UPDATE … FROM unnest(…)``, ``INSERT … SELECT … FROM
unnest(…)``), not one execution per row. Each call's lifecycle here is applied twice: as
batches of one event per call (every statement then has a row per call), and one event at a
time; every row either way must be the same.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from app.domain.retention import Months, add_months
from app.services.ingest_apply import (
    BatchApply,
    IngestResult,
    IngestRules,
    apply_in_order,
    stored_payload,
)
from app.storage import live
from app.storage.db import Database
from app.telephony.generic import parse_event
from tests.conftest import event, own_database

CALLS = 4
T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
# Each step is one event per call; before the named steps, rows a payment and an earlier
# failure would have left are put in place (see _prepare).
STEPS: list[tuple[str, str | None]] = [
    ("call.started", None),
    ("call.answered", None),
    ("recording.started", "r-1"),
    ("recording.started", "r-2"),  # during the payment: paused at once, an exposure
    ("recording.resumed", "r-1"),  # during the payment: its link no longer paused
    ("recording.stopped", "r-1"),
    ("recording.completed", "r-1"),
    ("call.ended", None),  # ends the payment, its exposures and the call's own
]
APPLY = BatchApply(IngestRules(("council_tax",), timedelta(seconds=2), Months(18, 72)))


def _at(step: int) -> datetime:
    return T0 + timedelta(seconds=10 * step)


def _now(step: int) -> datetime:
    """When the step's events are applied: after they occurred, so the two differ."""
    return _at(step) + timedelta(seconds=2)


def _items(group: str, step: int) -> list[Any]:
    """The step's event for each call, each call's at a time and with values of its own (so
    rows written to the wrong call, or values to the wrong column, differ)."""
    type_, recording = STEPS[step]
    return [
        parse_event(
            "generic",
            f"{group}-{n}-{step}",
            json.dumps(
                event(
                    type_,
                    f"{group}-{n}",
                    recording,
                    at=(_at(step) + timedelta(milliseconds=500 * n)).isoformat(),
                    agent_id=f"agent-{n}-{step}",
                )
            ).encode(),
        )
        for n in range(CALLS)
    ]


async def _prepare(db: Database, group: str, step: int) -> None:
    """Before the first recording: a call-wide exposure (a pause that failed before any
    recording was known). Before the second: an open payment that paused the first."""
    mine = live.calls.c.provider_call_id.like(f"{group}-%")
    if STEPS[step] == ("recording.started", "r-1"):
        failed = _at(step) - timedelta(seconds=5)

        def call_exposures(conn: sa.Connection) -> None:
            for call_id in conn.execute(sa.select(live.calls.c.id).where(mine)).scalars():
                conn.execute(
                    live.exposures.insert(),
                    {
                        "id": uuid.uuid4(),
                        "call_id": call_id,
                        "kind": "pause_failed",
                        "started_at": failed,
                        "detail": "no recording known",
                    },
                )
            conn.execute(live.calls.update().where(mine).values(has_call_exposure=True))

        await db.write(call_exposures)
    if STEPS[step] == ("recording.started", "r-2"):
        paused = _at(step) - timedelta(seconds=3)

        def open_payments(conn: sa.Connection) -> None:
            found = sa.select(live.calls.c.id, live.recordings.c.id).join_from(
                live.calls, live.recordings, live.recordings.c.call_id == live.calls.c.id
            )
            for call_id, recording_id in conn.execute(found.where(mine)).all():
                segment = uuid.uuid4()
                conn.execute(
                    live.segments.insert(),
                    {
                        "id": segment,
                        "call_id": call_id,
                        "state": "paused",
                        "pause_behavior": "skip",
                        "call_level": False,
                        "opened_at": paused,
                        "paused_at": paused,
                        "pause_attempts": 1,
                        "resume_attempts": 0,
                    },
                )
                conn.execute(
                    live.links.insert(),
                    {
                        "segment_id": segment,
                        "recording_id": recording_id,
                        "pause_sent_at": paused,
                        "paused_at": paused,
                    },
                )
                conn.execute(
                    live.recordings.update()
                    .where(live.recordings.c.id == recording_id)
                    .values(state="paused")
                )

        await db.write(open_payments)
    if STEPS[step] == ("call.ended", None):
        # Exposures the call's end must bring forward (one that ended later), and one it must
        # leave ending when it started (it started after the call's end).
        ended = _at(step) + timedelta(milliseconds=500 * CALLS)

        def late_exposures(conn: sa.Connection) -> None:
            for call_id in conn.execute(sa.select(live.calls.c.id).where(mine)).scalars():
                for started, end in (
                    (ended - timedelta(seconds=4), ended + timedelta(minutes=5)),
                    (ended + timedelta(minutes=1), None),
                ):
                    conn.execute(
                        live.exposures.insert(),
                        {
                            "id": uuid.uuid4(),
                            "call_id": call_id,
                            "kind": "unexpected_resume",
                            "started_at": started,
                            "ended_at": end,
                            "detail": "around the call's end",
                        },
                    )

        await db.write(late_exposures)


async def _apply(db: Database, group: str, step: int, *, together: bool) -> list[Any]:
    """The step's events for ``group``: as one batch, or one at a time. Each outcome."""
    await _prepare(db, group, step)
    items = [(e, stored_payload(payload)) for e, payload in _items(group, step)]
    if together:
        return await apply_in_order(db, APPLY, items, _now(step))
    return [
        outcome for item in items for outcome in await apply_in_order(db, APPLY, [item], _now(step))
    ]


def _seen(outcome: Any) -> tuple[Any, ...]:
    assert isinstance(outcome, IngestResult), outcome
    return (outcome.duplicate, outcome.segment_to_drive is not None, outcome.exposures != ())


_DUMPS = {
    "calls": "SELECT substr(c.provider_call_id, 3), c.* FROM calls c WHERE c.provider_call_id LIKE :p",
    "recordings": "SELECT substr(c.provider_call_id, 3), r.* FROM recordings r "
    "JOIN calls c ON c.id = r.call_id WHERE c.provider_call_id LIKE :p",
    "segments": "SELECT substr(c.provider_call_id, 3), s.* FROM payment_segments s "
    "JOIN calls c ON c.id = s.call_id WHERE c.provider_call_id LIKE :p",
    "links": "SELECT substr(c.provider_call_id, 3), r.provider_recording_id, l.pause_sent_at, "
    "l.paused_at, l.resumed_at FROM segment_recordings l JOIN recordings r ON r.id = "
    "l.recording_id JOIN calls c ON c.id = r.call_id WHERE c.provider_call_id LIKE :p",
    "transitions": "SELECT substr(c.provider_call_id, 3), t.entity, t.from_state, t.to_state, "
    "t.cause, t.at FROM state_transitions t JOIN calls c ON c.id = t.call_id "
    "WHERE c.provider_call_id LIKE :p",
    "exposures": "SELECT substr(c.provider_call_id, 3), r.provider_recording_id, x.kind, "
    "x.started_at, x.ended_at, x.detail FROM exposures x JOIN calls c ON c.id = x.call_id "
    "LEFT JOIN recordings r ON r.id = x.recording_id WHERE c.provider_call_id LIKE :p",
    "inbox": "SELECT substr(provider_call_id, 3), type, occurred_at, received_at, payload "
    "FROM inbound_events WHERE provider_call_id LIKE :p",
}
# Columns that differ between the groups by nature: ids made afresh, and what names them.
_OWN = {"id", "call_id", "provider_call_id", "payload"}


async def _rows(db: Database, group: str) -> dict[str, list[tuple[Any, ...]]]:
    def read(conn: sa.Connection) -> dict[str, list[tuple[Any, ...]]]:
        found = {}
        for name, sql in _DUMPS.items():
            result = conn.execute(sa.text(sql), {"p": f"{group}-%"})
            keep = [i for i, key in enumerate(result.keys()) if key not in _OWN]
            found[name] = sorted(
                (tuple(row[i] for i in keep) for row in result), key=lambda row: repr(row)
            )
        return found

    return await db.write(read)


@contextmanager
def executions(db: Database) -> Iterator[list[tuple[str, int]]]:
    """Each statement sent, and how many rows it carried: one, or an ``executemany``'s."""
    sent: list[tuple[str, int]] = []

    def note(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        sent.append((" ".join(sql.split()), len(params) if many else 1))

    engines = db.sync_engines
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", note)


async def test_a_batch_stores_what_its_events_store_one_at_a_time(database_url: str) -> None:
    sent: list[int] = []
    async with own_database(database_url) as db:
        for step, (type_, recording) in enumerate(STEPS):
            with executions(db) as in_batch:
                together = await _apply(db, "b", step, together=True)
            sent += [rows for _, rows in in_batch]
            alone = await _apply(db, "s", step, together=False)
            assert [_seen(o) for o in together] == [_seen(o) for o in alone], (type_, recording)
            batched, single = await _rows(db, "b"), await _rows(db, "s")
            assert batched == single, f"after {type_} {recording or ''}"
    # Every kind of row was written, more than one of a kind per batch.
    assert {name: len(rows) > CALLS for name, rows in batched.items()} == {
        name: name not in ("calls", "segments") for name in _DUMPS
    }
    assert len(batched["links"]) == 2 * CALLS and len(batched["exposures"]) == 5 * CALLS
    assert all(x[4] is not None for x in batched["exposures"]), "the call's end ends them all"
    if database_url.startswith("postgresql"):
        # Many rows of a kind in one execution each, never one execution per row.
        assert max(sent) == 1, sent


async def test_too_long_a_value_is_refused_in_a_batch_as_alone(database_url: str) -> None:
    """A value longer than its column is refused, never stored cut short, however many rows
    share its statement (PostgreSQL checks the length; SQLite does not)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite stores a string of any length in any text column")
    items = []
    for n in range(2):
        body = event("recording.started", f"long-{n}", "r-1", at=T0.isoformat())
        parsed, payload = parse_event("generic", f"long-{n}", json.dumps(body).encode())
        assert parsed.recording is not None
        # A FreeSWITCH channel's recording is held as "channel:" + its Unique-ID, which may
        # be 255 characters long itself: 263 in all, for a column of 255.
        held = replace(parsed.recording, container_id="channel:" + "u" * 255)
        items.append((replace(parsed, recording=held), stored_payload(payload)))
    async with own_database(database_url) as db:
        outcomes = await apply_in_order(db, APPLY, items, _now(0))
        assert all(isinstance(o, sa.exc.DBAPIError) for o in outcomes), outcomes
        stored = await db.write(
            lambda conn: conn.execute(sa.select(sa.func.count()).select_from(live.recordings))
        )
        assert stored.scalar_one() == 0


def _parsed(event_id: str, body: dict[str, Any]) -> Any:
    parsed, payload = parse_event("generic", event_id, json.dumps(body).encode())
    return parsed, stored_payload(payload)


async def test_each_ended_call_gets_its_areas_retention_read_with_it_or_alone(
    database_url: str,
) -> None:
    """A batch's deadlines follow each call's area's override: as read with the call's live
    rows when the call was read and kept its area, and from the overrides read on their own
    when it was not (new in the batch) or its area changed in the batch. Where every call
    was read with its rows, the overrides are not read again."""
    ended = T0 + timedelta(minutes=10)
    council, benefits = Months(6, 24), Months(3, 12)
    first = [
        _parsed("a-1", event("call.started", "ret-a", at=T0.isoformat())),
        _parsed("a-2", event("recording.started", "ret-a", "r-1", at=T0.isoformat())),
        _parsed("b-1", event("call.started", "ret-b", at=T0.isoformat())),
        _parsed("e-1", event("call.started", "ret-e", at=T0.isoformat(), service_area=None)),
    ]
    read_with_rows = [
        _parsed("a-3", event("recording.stopped", "ret-a", "r-1", at=ended.isoformat())),
        _parsed("a-4", event("call.ended", "ret-a", at=ended.isoformat())),
        # No area: no override, whatever the overrides hold.
        _parsed("e-2", event("call.ended", "ret-e", at=ended.isoformat(), service_area=None)),
    ]
    alone = [
        # Read with its rows as a council tax call, then learns it is about benefits.
        _parsed("b-2", event("call.ended", "ret-b", at=ended.isoformat(), service_area="benefits")),
        # New in the batch: never read with rows.
        _parsed("c-1", event("call.started", "ret-c", at=T0.isoformat())),
        _parsed("c-2", event("recording.started", "ret-c", "r-1", at=T0.isoformat())),
        _parsed("c-3", event("recording.stopped", "ret-c", "r-1", at=ended.isoformat())),
        _parsed("c-4", event("call.ended", "ret-c", at=ended.isoformat())),
        # An area with no override: the defaults.
        _parsed("d-1", event("call.started", "ret-d", at=T0.isoformat(), service_area="housing")),
        _parsed("d-2", event("call.ended", "ret-d", at=ended.isoformat(), service_area="housing")),
        # No area, new in the batch: the defaults too.
        _parsed("f-1", event("call.started", "ret-f", at=T0.isoformat(), service_area=None)),
        _parsed("f-2", event("call.ended", "ret-f", at=ended.isoformat(), service_area=None)),
    ]
    rules = IngestRules(
        ("council_tax", "benefits", "housing"), timedelta(seconds=2), Months(18, 72)
    )
    apply = BatchApply(rules)

    def standalone_reads(sent: list[tuple[str, int]]) -> int:
        return sum(sql.startswith("SELECT retention_policies.service_area") for sql, _ in sent)

    async with own_database(database_url) as db:
        await db.write(
            lambda conn: conn.execute(
                sa.insert(live.policies),
                [
                    {"service_area": area, "media_months": m.media, "record_months": m.record}
                    | {"updated_by": "test", "updated_at": T0}
                    # An override for the empty area name, which a call without one never gets.
                    for area, m in (("council_tax", council), ("benefits", benefits), ("", council))
                ],
            )
        )
        applied_at = ended + timedelta(seconds=5)
        outcomes = await apply_in_order(db, apply, first, applied_at)
        assert all(isinstance(o, IngestResult) for o in outcomes), outcomes
        for items, reads in ((read_with_rows, 0), (alone, 1)):
            with executions(db) as sent:
                outcomes = await apply_in_order(db, apply, items, applied_at)
            assert all(isinstance(o, IngestResult) for o in outcomes), outcomes
            assert standalone_reads(sent) == reads, sent

        def deadlines(conn: sa.Connection) -> dict[str, tuple[Any, ...]]:
            found = conn.execute(
                sa.select(
                    live.calls.c.provider_call_id,
                    live.calls.c.record_retention_until,
                    live.recordings.c.retention_until,
                )
                .select_from(live.calls.outerjoin(live.recordings))
                .where(live.calls.c.provider_call_id.like("ret-%"))
            )
            return {row[0]: (row[1], row[2]) for row in found}

        found = await db.write(deadlines)

        def ids(conn: sa.Connection) -> list[uuid.UUID]:
            rows = conn.execute(
                sa.select(live.calls.c.id, live.recordings.c.id)
                .select_from(live.calls.outerjoin(live.recordings))
                .where(live.calls.c.provider_call_id.like("ret-%"))
            )
            return [i for row in rows for i in row if i is not None]

        made = await db.write(ids)
    # Time-ordered (app/domain/row_ids.py): the batch's new rows' keys land side by side.
    assert len(made) == 8 and {i.version for i in made} == {7}
    assert found == {
        "ret-a": (add_months(ended, council.record), add_months(ended, council.media)),
        "ret-b": (add_months(ended, benefits.record), None),
        "ret-c": (add_months(ended, council.record), add_months(ended, council.media)),
        "ret-d": (add_months(ended, 72), None),
        "ret-e": (add_months(ended, 72), None),
        "ret-f": (add_months(ended, 72), None),
    }
