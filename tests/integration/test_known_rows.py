"""A call's rows kept known between its payments (``PaymentGate._known``, PostgreSQL).

After a command, the gate keeps the call's rows as it wrote them, with the call's version; the
call's next start or end takes them as read instead of reading, and its one write is guarded
by that version. These pin what must hold: a change made since by anyone (a webhook, another
replica, the call ending) is never overlooked, an answer given without writing is read again,
nothing kept is taken as read through another server, and what is kept stays bounded.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import respx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from app.domain import gate
from app.domain.roles import Role
from app.domain.snapshots import Changes, SegmentSnap
from app.domain.states import PauseBehavior, SegmentState
from app.services import gating
from app.storage import db as db_module
from app.storage.db import Database
from app.storage.live import LiveCallRepository
from app.storage.models import Recording
from tests.api.test_gating_replicas import END, START, replica
from tests.api.test_payment_gating import get_call, live_call
from tests.conftest import Harness, event, own_database


@pytest.fixture(autouse=True)
def postgres_only(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("rows are kept known for PostgreSQL's optimistic writes only")


@contextmanager
def reads_of_calls(h: Harness) -> Iterator[list[str]]:
    """The statements that read a call's rows (the one-statement read), as they are sent."""
    seen: list[str] = []

    def statement(conn: object, cursor: object, sql: str, *args: object) -> None:
        if sql.lstrip().startswith("SELECT calls.id AS c_id"):
            seen.append(sql)

    engines = {id(e): e for e in (*h.services.db.sync_engines, h.services.engine.sync_engine)}
    for engine in engines.values():
        sa.event.listen(engine, "before_cursor_execute", statement)
    try:
        yield seen
    finally:
        for engine in engines.values():
            sa.event.remove(engine, "before_cursor_execute", statement)


async def _another_live_call(h: Harness, call_id: str) -> None:
    for type_, recording in (("call.started", None), ("recording.started", "r-1")):
        assert (await h.send_event(event(type_, call_id, recording))).status_code == 200


async def _start_pauses_both(h: Harness) -> None:
    """A payment start answers safe with r-1 and r-2 both paused."""
    body = await _pay(h, START)
    assert body["safe_to_collect"] is True
    recordings = body["recordings"]
    assert isinstance(recordings, list)
    assert sorted(r["provider_recording_id"] for r in recordings) == ["r-1", "r-2"]
    assert {r["state"] for r in recordings} == {"paused"}


async def _pay(h: Harness, path: str, expected: int = 200) -> dict[str, object]:
    response = await h.client.post(path, headers=h.auth(Role.IVR))
    assert response.status_code == expected, response.text
    body: dict[str, object] = response.json()
    return body


async def test_a_calls_first_payment_takes_the_rows_its_recording_left(
    harness: Harness, answering_pbx: respx.MockRouter
) -> None:
    """The batch that started the call's recording handed the call's rows back: its first
    start claims from them, with no read, and pauses that recording."""
    await live_call(harness)
    with reads_of_calls(harness) as reads:
        body = await _pay(harness, START)
    assert not reads
    assert body["safe_to_collect"] is True
    recordings = body["recordings"]
    assert isinstance(recordings, list)
    assert [(r["provider_recording_id"], r["state"]) for r in recordings] == [("r-1", "paused")]
    call = await get_call(harness)
    assert [r["state"] for r in call["recordings"]] == ["paused"]


async def test_a_recording_the_handed_back_rows_lack_is_paused_all_the_same(
    harness: Harness, answering_pbx: respx.MockRouter
) -> None:
    """r-2 is first reported resumed (its start comes late): live, and no rows handed back
    for it, so the rows handed back with r-1 are a version behind. The guard refuses them
    and the start, run again reading, pauses both."""
    await live_call(harness)
    resumed = await harness.send_event(event("recording.resumed", recording_id="r-2"))
    assert resumed.status_code == 200
    await _start_pauses_both(harness)


async def test_an_end_and_the_next_start_take_the_kept_rows_as_read(
    harness: Harness, answering_pbx: respx.MockRouter
) -> None:
    await live_call(harness)
    with reads_of_calls(harness) as reads:
        await _pay(harness, START)
        await _pay(harness, END)
        second = await _pay(harness, START)
    assert not reads, "the rows the recording left, then each command's, taken as read"
    assert second["safe_to_collect"] is True
    call = await get_call(harness)
    assert [s["state"] for s in call["segments"]] == ["closed", "paused"]


async def test_a_recording_reported_since_is_paused_by_the_next_start(
    harness: Harness, answering_pbx: respx.MockRouter
) -> None:
    """The webhook moved the call's version on past the rows the end left (one recording)
    and handed back the call's rows as it left them: the start takes those and covers
    both."""
    await live_call(harness)
    await _pay(harness, START)
    await _pay(harness, END)
    reported = await harness.send_event(event("recording.started", recording_id="r-2"))
    assert reported.status_code == 200
    await _start_pauses_both(harness)
    # What the start and the end leave is known again.
    await _pay(harness, END)
    with reads_of_calls(harness) as reads:
        await _pay(harness, START)
    assert not reads


async def test_a_call_that_ended_since_is_refused(
    harness: Harness, answering_pbx: respx.MockRouter
) -> None:
    await live_call(harness)
    await _pay(harness, START)
    await _pay(harness, END)
    assert (await harness.send_event(event("call.ended"))).status_code == 200
    await _pay(harness, START, expected=409)
    pauses = [c for c in answering_pbx.calls if c.request.url.path.endswith("/pause")]
    assert len(pauses) == 1, "no pause for a call that has ended"


async def test_another_replica_s_payment_is_seen(
    harness: Harness, answering_pbx: respx.MockRouter
) -> None:
    """Replica B starts and ends a payment on the call A last paid on: A's kept rows are a
    payment behind, and A's next start must open a third segment, not reuse the first."""
    await live_call(harness)
    await _pay(harness, START)
    await _pay(harness, END)
    async with replica(harness) as b:
        await _pay(b, START)
        await _pay(b, END)
    body = await _pay(harness, START)
    assert body["safe_to_collect"] is True
    call = await get_call(harness)
    assert [s["state"] for s in call["segments"]] == ["closed", "closed", "paused"]
    assert body["segment_id"] == call["segments"][-1]["id"]


async def test_an_answer_from_kept_rows_alone_is_read_again(
    harness: Harness, answering_pbx: respx.MockRouter
) -> None:
    """An end of a payment already ended writes nothing: its answer rests on the kept rows
    alone, so it is given only after reading them in a transaction."""
    await live_call(harness)
    await _pay(harness, START)
    await _pay(harness, END)
    with reads_of_calls(harness) as reads:
        again = await _pay(harness, END)
    assert again["state"] == "closed"
    key = ("generic", "c-123")
    assert key not in harness.services.gate._known, "a work run again reads from then on"
    assert not reads, "run again in a transaction, which reads with its locks"


async def test_rows_are_kept_for_a_bounded_number_of_calls(
    harness: Harness, answering_pbx: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gating, "_KNOWN_CALLS", 2)
    for n in range(3):
        call_id = f"c-{n}"
        for type_ in ("call.started", "call.answered"):
            assert (await harness.send_event(event(type_, call_id=call_id))).status_code == 200
        await _pay(harness, f"/v1/calls/generic/{call_id}/payment/start")
    assert list(harness.services.gate._known) == [("generic", "c-1"), ("generic", "c-2")]


async def test_kept_rows_are_read_again_after_a_while(
    harness: Harness, answering_pbx: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gating, "_KNOWN_FOR_S", 0.0)
    await live_call(harness)
    await _pay(harness, START)
    with reads_of_calls(harness) as reads:
        await _pay(harness, END)
    assert len(reads) == 1, "rows kept longer than that are read"


async def test_an_unreachable_database_forgets_every_kept_row(
    harness: Harness, answering_pbx: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failover may lose commits, and with them the versions rows were kept at."""
    from app.storage.db import DatabaseUnreachable

    await live_call(harness)
    await _pay(harness, START)
    gate_ = harness.services.gate
    assert gate_._known
    real = harness.services.db.write

    async def unreachable(*args: object, **kwargs: object) -> object:
        raise DatabaseUnreachable("failing over")

    monkeypatch.setattr(harness.services.db, "write", unreachable)
    await _pay(harness, END, expected=503)
    assert not gate_._known
    monkeypatch.setattr(harness.services.db, "write", real)
    with reads_of_calls(harness) as reads:
        await _pay(harness, END)
    assert len(reads) == 1


def _a_second_recording_at_the_same_version(conn: sa.Connection) -> None:
    """r-2, live, as r-1 is, written without moving the call's version on: what a server
    that lost commits in a failover can hold at a version the gate kept rows at."""
    r1 = conn.execute(sa.select(Recording.__table__)).mappings().one()
    conn.execute(
        sa.insert(Recording).values({**r1, "id": uuid.uuid4(), "provider_recording_id": "r-2"})
    )


async def _another_server(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database comes back as another server (a failover, a restart): every connection
    to it ends, and those opened since reach a server that started at another time. From
    here on every connection is pinged before use, so recgate's pools find the old ones gone
    and open new ones without any write failing, as after a while of quiet."""
    monkeypatch.setattr(
        db_module, "_SERVER_QUERY", "SELECT pg_postmaster_start_time() + interval '1 day', NULL"
    )
    monkeypatch.setattr(db_module, "_PING_AFTER_IDLE_S", 0.0)
    # From outside recgate's pools, so that none of its connections survives.
    outside = create_async_engine(h.services.settings.database_url, poolclass=sa.NullPool)
    try:
        async with outside.connect() as conn:
            await conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
    finally:
        await outside.dispose()


async def test_rows_kept_through_another_server_are_not_taken_as_read(
    harness: Harness, answering_pbx: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failover may lose commits, and usually fails no write of recgate's. The new server
    may then hold other rows at a version the gate kept rows at: here a second live
    recording. Rows kept through the old server are not taken as read through the new one:
    the start reads, and pauses both."""
    await live_call(harness)
    await _pay(harness, START)
    await _pay(harness, END)
    await _through_another_server_the_start_reads(harness, monkeypatch)


async def test_rows_handed_back_through_another_server_are_not_taken_as_read(
    harness: Harness, answering_pbx: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    await live_call(harness)
    await _through_another_server_the_start_reads(harness, monkeypatch)


async def _through_another_server_the_start_reads(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new server holds a second live recording at the version the rows were kept at:
    the next start reads, and pauses both."""
    await h.services.db.write(_a_second_recording_at_the_same_version)
    await _another_server(h, monkeypatch)
    with reads_of_calls(h) as reads:
        await _start_pauses_both(h)
    assert len(reads) == 1


async def test_a_command_planned_through_another_server_is_recorded_from_what_is_there(
    harness: Harness, answering_pbx: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server changes while the pause is out: the planning write (not waited to disk)
    may be lost with the old one, so the answer's write reads what the new one holds
    instead of taking the planned rows as read."""
    await live_call(harness)
    real = gating.PaymentGate._send

    async def then_another_server(gate_: gating.PaymentGate, *args: Any) -> Any:
        sent = await real(gate_, *args)
        await _another_server(harness, monkeypatch)
        return sent

    monkeypatch.setattr(gating.PaymentGate, "_send", then_another_server)
    with reads_of_calls(harness) as reads:
        body = await _pay(harness, START)
    assert len(reads) == 1, "the answer's write read the call"
    assert body["safe_to_collect"] is True


async def test_a_server_that_will_not_say_which_it_is_gets_a_503(
    harness: Harness, answering_pbx: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each new connection asks which server it reached, within the pool's timeout; a
    server that answers the handshake and then nothing is unavailable: the webhook is not
    acknowledged (the PBX sends it again) and the IVR hears "not safe"."""
    await live_call(harness)
    await _another_server(harness, monkeypatch)
    monkeypatch.setattr(db_module, "_SERVER_QUERY", "SELECT pg_sleep(5), NULL")
    monkeypatch.setattr(db_module, "POOL_TIMEOUT_S", 0.2)
    response = await harness.send_event(event("call.answered", call_id="c-456"))
    assert response.status_code == 503, response.text
    body = await _pay(harness, START, expected=503)
    assert body["safe_to_collect"] is False


NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


async def _segment(db: Database, call_id: uuid.UUID, at: datetime, open_: bool) -> uuid.UUID:
    def work(conn: sa.Connection) -> uuid.UUID:
        repo = LiveCallRepository(conn)
        assert repo.call_by_id(call_id) is not None
        changes = Changes(at)
        segment = gate.open_segment(call_id, PauseBehavior.SILENCE, None, None, changes)
        if not open_:
            gate.supersede(segment, changes)
        repo.write(changes)
        return segment.id

    return await db.write(work)


async def test_rows_read_are_whole_only_with_the_latest_segment_and_no_other_open(
    database_url: str,
) -> None:
    """Kept rows stand for all of the call's live rows: so a segment older than the latest,
    or one read while another segment of the call is open, never makes them whole."""
    async with own_database(database_url) as db:
        call = await db.write(lambda c: LiveCallRepository(c).upsert_call("generic", "c-w", NOW))
        older = await _segment(db, call.id, NOW, open_=True)
        latest = await _segment(db, call.id, NOW + timedelta(seconds=1), open_=False)

        def whole_for(segment_id: uuid.UUID | None) -> Awaitable[tuple[bool, bool]]:
            def work(conn: sa.Connection) -> tuple[bool, bool]:
                repo = LiveCallRepository(conn)
                assert (
                    repo.call_by_id(call.id) is not None
                )  # run again in a transaction after a read beside
                if segment_id is None:
                    changes = Changes(NOW)
                    new = gate.open_segment(call.id, PauseBehavior.SILENCE, None, None, changes)
                    return repo.whole(new), new.created
                found = repo.segment(segment_id)
                assert isinstance(found, SegmentSnap)
                return repo.whole(found), found.state == SegmentState.CLOSED

            return db.write(work, optimistic=True)

        # An older segment is still open: nothing read with it is whole.
        assert await whole_for(latest) == (False, True)
        assert await whole_for(older) == (False, False)
        assert await whole_for(None) == (False, True)

        def close_older(conn: sa.Connection) -> None:
            repo = LiveCallRepository(conn)
            assert repo.call_by_id(call.id) is not None
            segment = repo.segment(older)
            assert segment is not None
            changes = Changes(NOW)
            gate.supersede(segment, changes)
            repo.write(changes)

        await db.write(close_older)
        assert await whole_for(latest) == (True, True)
        assert await whole_for(older) == (False, True), "not the latest"
        assert await whole_for(None) == (True, True)


async def test_rows_handed_back_are_what_the_database_holds_at_that_version(
    harness: Harness,
) -> None:
    """What the gate takes as read for a call's first payment must be the call's rows as
    stored, field by field, at the version its write is guarded by."""
    from dataclasses import fields

    from app.domain.snapshots import CallSnap, RecordingSnap
    from app.storage import live

    await live_call(harness)
    assert (
        await harness.send_event(event("recording.started", recording_id="r-2"))
    ).status_code == 200
    known, _ = harness.services.gate._learned[("generic", "c-123")]
    assert known.segment is None and known.whole

    def stored(conn: sa.Connection) -> tuple[Any, Any]:
        call = conn.execute(
            sa.select(live.calls).where(live.calls.c.provider_call_id == "c-123")
        ).one()
        rows = conn.execute(
            sa.select(live.recordings)
            .where(live.recordings.c.call_id == call.id)
            .order_by(live.recordings.c.created_at, live.recordings.c.id)
        ).all()
        return call, rows

    call_row, recording_rows = await harness.services.db.read(stored)
    assert known.version == call_row.live_version
    for f in fields(CallSnap):
        if f.name != "created":
            assert getattr(known.call, f.name) == getattr(call_row, f.name), f.name
    assert [r.provider_recording_id for r in known.recordings] == ["r-1", "r-2"]
    for snap, row in zip(known.recordings, recording_rows, strict=True):
        for f in fields(RecordingSnap):
            if f.name in ("created", "link"):
                continue
            column = "provider_container_id" if f.name == "container_id" else f.name
            assert getattr(snap, f.name) == getattr(row, column), f.name
        assert snap.link is None


async def test_two_sets_of_rows_at_one_version_are_neither_taken_as_read(
    harness: Harness, answering_pbx: respx.MockRouter
) -> None:
    """Rows handed back at the version already kept can only mean commits were lost (a
    failover): which set is stored cannot be told, so the call's next start reads."""
    from dataclasses import replace

    await live_call(harness)
    gate_ = harness.services.gate
    known, _ = gate_._learned[("generic", "c-123")]
    other = replace(known.recordings[0], id=uuid.uuid4(), provider_recording_id="r-lost")
    gate_.learn(known.call, (other,), known.server)
    assert ("generic", "c-123") not in gate_._learned
    with reads_of_calls(harness) as reads:
        body = await _pay(harness, START)
    assert len(reads) == 1
    assert body["safe_to_collect"] is True


async def test_a_batch_that_finds_the_database_unreachable_forgets_every_kept_row(
    harness: Harness, answering_pbx: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.storage.db import DatabaseUnreachable

    await live_call(harness)
    await _pay(harness, START)
    await _another_live_call(harness, "c-456")
    gate_ = harness.services.gate
    assert gate_._known and gate_._learned

    async def unreachable(items: list[Any]) -> list[Any]:
        return [DatabaseUnreachable("failing over")] * len(items)

    monkeypatch.setattr(harness.services.ingest, "_applied", unreachable)
    response = await harness.send_event(event("call.answered", call_id="c-789"))
    assert response.status_code == 503
    assert not gate_._known and not gate_._learned


async def test_rows_handed_back_never_push_out_a_payment_s(
    harness: Harness, answering_pbx: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gating, "_KNOWN_CALLS", 1)
    await live_call(harness)
    await _pay(harness, START)
    for n in range(3):
        await _another_live_call(harness, f"c-other-{n}")
    assert list(harness.services.gate._known) == [("generic", "c-123")]
    assert list(harness.services.gate._learned) == [("generic", "c-other-2")]
    with reads_of_calls(harness) as reads:
        await _pay(harness, END)
    assert not reads
