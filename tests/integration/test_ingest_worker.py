"""The ingest worker (issue 8): webhook batches applied by a process of recgate's own.

The service hands each batch to its worker over a pipe and answers each webhook once the
worker has committed it. Behaviour is the same as applying in the service's process: the
same rows, the same answers, 503 when nothing could be stored. When the worker dies, the
batch in hand is answered 503 (so the PBX retries) and the next batch starts another.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app.domain.events import PbxEvent
from app.domain.states import IllegalTransition
from app.errors import MalformedInput
from app.services import ingest_worker
from app.services.ingest_apply import (
    BatchApply,
    IngestResult,
    IngestRules,
    Items,
    Outcome,
    Turn,
    apply_in_order,
    stored_payload,
)
from app.services.ingest_worker import (
    IngestFailed,
    IngestWorker,
    _decoded,
    _encoded,
    worker_suits,
)
from app.storage.db import Database, DatabaseUnreachable, create_engine, server_of, sqlite_file
from app.storage.models import EncodedJson
from app.telephony.generic import parse_event
from tests.conftest import Harness, event

LIFECYCLE = (
    ("call.started", None),
    ("call.answered", None),
    ("recording.started", "rec-1"),
    ("recording.paused", "rec-1"),
    ("recording.resumed", "rec-1"),
    ("recording.stopped", "rec-1"),
    ("call.ended", None),
)


@pytest.fixture
def postgres(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("two batches at once (Turn) are PostgreSQL's: SQLite has one writer")


@pytest.fixture
async def worker_harness(make_harness: Callable[..., Any]) -> AsyncIterator[Harness]:
    async with make_harness(ingest_worker=True) as h:
        yield h


async def _lifecycle(h: Harness, call_id: str) -> list[str]:
    """One call's events, each sent once its predecessor is answered (as a PBX does)."""
    statuses = []
    for type_, recording in LIFECYCLE:
        response = await h.send_event(event(type_, call_id, recording))
        assert response.status_code == 200, response.text
        statuses.append(response.json()["status"])
    return statuses


async def _rows(h: Harness, prefix: str) -> list[tuple[Any, ...]]:
    """What the calls whose provider id starts with ``prefix`` left on disk, ids aside."""
    async with h.services.engine.connect() as conn:
        found = await conn.execute(
            sa.text(
                "SELECT c.provider_call_id, c.ended_at IS NOT NULL, r.provider_recording_id, "
                "r.state, r.pbx_paused, r.stopped_at IS NOT NULL, "
                "r.retention_until IS NOT NULL, "
                "(SELECT count(*) FROM inbound_events i WHERE i.provider_call_id = c.provider_call_id) "
                "FROM calls c LEFT JOIN recordings r ON r.call_id = c.id "
                "WHERE c.provider_call_id LIKE :p ORDER BY c.provider_call_id"
            ),
            {"p": f"{prefix}%"},
        )
        return [tuple(row) for row in found]


async def test_the_worker_applies_batches_as_the_service_would(worker_harness: Harness) -> None:
    h = worker_harness
    worker = h.services.ingest.worker
    assert worker is not None and worker.pid not in (None, os.getpid())
    # Twenty calls at once: batches of many calls, each call's events in order.
    outcomes = await asyncio.gather(*(_lifecycle(h, f"wk-{n:02}") for n in range(20)))
    assert outcomes == [["applied"] * len(LIFECYCLE)] * 20
    assert await _rows(h, "wk-") == [
        (f"wk-{n:02}", True, "rec-1", "stopped", False, True, True, len(LIFECYCLE))
        for n in range(20)
    ]
    started = event("call.started", "wk-dup")
    first = await h.send_event(started, msg_id="msg-dup")
    second = await h.send_event(started, msg_id="msg-dup")
    assert [first.json()["status"], second.json()["status"]] == ["applied", "duplicate"]
    assert await h.count("inbound_events") == 20 * len(LIFECYCLE) + 1


async def test_the_worker_hands_back_a_calls_rows_when_its_recording_starts(
    worker_harness: Harness,
) -> None:
    """PostgreSQL: the rows come over the worker's pipe to the payment gate (SQLite: none,
    a read there costs no round trip)."""
    h = worker_harness
    for type_, recording in (("call.started", None), ("recording.started", "r-1")):
        response = await h.send_event(event(type_, "wk-rows", recording))
        assert response.status_code == 200
    known = h.services.gate._learned.get(("generic", "wk-rows"))
    if h.services.db.is_sqlite:
        assert known is None
        return
    assert known is not None
    seen, _ = known
    assert seen.segment is None and seen.call.provider_call_id == "wk-rows"
    assert [r.provider_recording_id for r in seen.recordings] == ["r-1"]
    # With the server the worker wrote them through: the service's own connections reach it.
    server = await h.services.db.read(server_of)
    assert seen.server is not None and seen.server == server


async def test_a_worker_that_dies_costs_its_batch_a_503_and_the_next_starts_another(
    worker_harness: Harness,
) -> None:
    h = worker_harness
    worker = h.services.ingest.worker
    assert worker is not None
    pid = worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # it reads nothing more, commits nothing more
    try:
        sent = asyncio.create_task(h.send_event(event("call.started", "wk-dies")))
        for _ in range(500):  # bounded: until the batch is in the worker's pipe
            if worker.in_flight:
                break
            await asyncio.sleep(0.01)
        assert worker.in_flight == 1
    finally:
        os.kill(pid, signal.SIGKILL)
    response = await sent
    assert response.status_code == 503, response.text
    assert response.json()["type"].endswith("/database-unavailable")
    assert await h.count("calls") == 0, "nothing was stored, so nothing was acknowledged"

    # The PBX retries: a new worker applies it.
    retried = await h.send_event(event("call.started", "wk-dies"))
    assert (retried.status_code, retried.json()) == (200, {"status": "applied"})
    assert worker.pid not in (None, pid)
    assert await h.count("calls") == 1


async def _killed(worker: IngestWorker) -> None:
    """Kill the running worker and wait (bounded) until the service has seen it stop."""
    pid = worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    for _ in range(500):
        if worker.pid is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the service did not see its worker stop")


async def test_a_worker_that_keeps_dying_is_restarted_after_a_pause_not_per_batch(
    worker_harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = worker_harness
    worker = h.services.ingest.worker
    assert worker is not None
    monkeypatch.setattr(ingest_worker, "RESTART_BACKOFF_S", 1.5)
    await _killed(worker)  # one stop: the next batch starts another at once
    await worker.start()
    await _killed(worker)  # stopped again before answering a batch: a crash loop

    loop = asyncio.get_running_loop()
    refused_at = loop.time()
    refused = await h.send_event(event("call.started", "wk-loop"))
    assert refused.status_code == 503, refused.text
    assert refused.json()["type"].endswith("/database-unavailable")
    assert worker.pid is None, "no interpreter is started for a batch during the pause"
    assert await h.count("calls") == 0

    await asyncio.sleep(max(0.0, refused_at + 1.6 - loop.time()))
    retried = await h.send_event(event("call.started", "wk-loop"))
    assert (retried.status_code, retried.json()) == (200, {"status": "applied"})
    # It answered: the next stop is restarted at once again.
    await _killed(worker)
    again = await h.send_event(event("call.answered", "wk-loop"))
    assert (again.status_code, again.json()) == (200, {"status": "applied"})


async def test_the_worker_stops_with_the_service(make_harness: Callable[..., Any]) -> None:
    async with make_harness(ingest_worker=True) as h:
        worker = h.services.ingest.worker
        assert worker is not None
        pid = worker.pid
        assert pid is not None
        assert (await h.send_event(event("call.started", "wk-stop"))).status_code == 200
    assert worker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # exited and reaped: no process, not even a zombie


def test_every_outcome_crosses_the_pipe_as_it_was() -> None:
    result = IngestResult(duplicate=False, call_id=uuid.uuid4(), exposures=(("k", None),))
    assert _decoded(_encoded(result)) == result
    unreachable = _decoded(_encoded(DatabaseUnreachable("gone")))
    assert isinstance(unreachable, DatabaseUnreachable) and str(unreachable) == "gone"
    illegal = _decoded(_encoded(IllegalTransition("recording", "deleted", "recording")))
    assert isinstance(illegal, IllegalTransition)
    assert (illegal.entity, illegal.current, illegal.target) == (
        "recording",
        "deleted",
        "recording",
    )
    malformed = _decoded(_encoded(MalformedInput("bad")))
    assert isinstance(malformed, MalformedInput) and str(malformed) == "bad"
    # Anything else is logged by the worker and told apart from a database that is down.
    failed = _decoded(_encoded(RuntimeError("card 4111 1111 1111 1111 in a message")))
    assert isinstance(failed, IngestFailed) and "4111" not in str(failed)


def test_a_worker_only_for_a_database_another_process_can_open() -> None:
    assert worker_suits("postgresql+asyncpg://recgate@db/recgate")
    assert worker_suits("sqlite+aiosqlite:////var/lib/recgate/recgate.db")
    assert not worker_suits("sqlite+aiosqlite:///:memory:")
    assert not worker_suits("sqlite+aiosqlite://")
    # URI filenames: held in memory (no worker), or a file named by its path.
    for in_memory in (
        "file:shared?mode=memory&cache=shared&uri=true",
        "file::memory:?uri=true",
        "file::memory:?cache=shared&uri=1",
    ):
        assert not worker_suits(f"sqlite+aiosqlite:///{in_memory}"), in_memory
    for on_disk in (
        "file:/var/lib/recgate/recgate.db?mode=rwc&uri=true",
        "file://localhost/var/lib/recgate/recgate.db?uri=yes",
    ):
        url = f"sqlite+aiosqlite:///{on_disk}"
        assert worker_suits(url), on_disk
        assert sqlite_file(url) == Path("/var/lib/recgate/recgate.db"), on_disk


async def test_answers_reach_their_own_webhooks_with_batches_in_flight(
    worker_harness: Harness,
) -> None:
    """More webhooks at once than one batch holds, half of them repeats: each answer says
    what happened to its own event (an answer handed to another batch would swap them)."""
    h = worker_harness
    sent = [(event("call.started", f"wk-many-{n}"), f"msg-many-{n}") for n in range(60)]
    first = await asyncio.gather(*(h.send_event(body, msg_id=msg) for body, msg in sent[::2]))
    assert {r.json()["status"] for r in first} == {"applied"}
    mixed = await asyncio.gather(*(h.send_event(body, msg_id=msg) for body, msg in sent))
    assert [r.json()["status"] for r in mixed] == ["duplicate", "applied"] * 30
    assert await h.count("calls") == 60


async def _waiting_on_a_lock(h: Harness) -> int:
    async with h.services.engine.connect() as conn:
        found = await conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
        return int(found.scalar_one())


def _parsed(body: dict[str, Any], msg_id: str | None = None) -> tuple[PbxEvent, EncodedJson]:
    parsed, payload = parse_event(
        "generic", msg_id or f"msg-{uuid.uuid4()}", json.dumps(body).encode()
    )
    return parsed, stored_payload(payload)


@asynccontextmanager
async def _beside_each_other(
    h: Harness, first: Items, second: Items
) -> AsyncIterator[tuple[Turn, Turn, Turn, asyncio.Future[tuple[list[Outcome], list[Outcome]]]]]:
    """``first`` and ``second`` applied beside each other (``Turn``), behind a batch that
    holds its rows and has not committed yet (``held``, resolved by the test), once the
    second waits on a row the first holds. Yields the three turns and both batches'
    outcomes to await."""
    url = h.services.settings.database_url
    engine = create_engine(url, pool_size=3)
    db = Database(engine, url)
    apply = BatchApply(IngestRules.of(h.services.settings, frozenset()))
    held = Turn(ordered=False)
    held.locked.set()
    a = Turn.following(held, first)
    b = Turn.following(a, second)
    now = datetime.now(UTC)
    applied = asyncio.gather(
        apply_in_order(db, apply, first, now, turn=a),
        apply_in_order(db, apply, second, now, turn=b),
    )
    try:
        await a.locked.wait()
        for _ in range(500):  # bounded: until the second batch waits on the first's row
            if await _waiting_on_a_lock(h):
                break
            await asyncio.sleep(0.01)
        assert await _waiting_on_a_lock(h) == 1, "the second batch runs beside the first"
        yield held, a, b, applied
    finally:
        if not applied.done():
            applied.cancel()
            with suppress(BaseException):
                await applied
        await db.close()
        await engine.dispose()


@pytest.mark.parametrize("before_whole", [True, False], ids=["whole", "undone"])
async def test_batches_applied_at_once_keep_each_calls_events_in_order(
    postgres: None, make_harness: Callable[..., Any], before_whole: bool
) -> None:
    """The worker applies a batch while the one before it waits for the database
    (``Turn``). Two batches with events of one call: the second reads the call only once
    the first has committed, and commits after it; when the batch before them both is not
    committed whole, both are undone and applied again after it, and nothing is lost or
    counted twice."""
    async with make_harness(ingest_worker=False) as h:
        call = f"wk-turns-{before_whole}"
        first = [
            _parsed(event("call.started", call)),
            _parsed(event("recording.started", call, "rec-1")),
        ]
        second = [
            _parsed(event("recording.stopped", call, "rec-1")),
            _parsed(event("call.ended", call)),
        ]
        async with _beside_each_other(h, first, second) as (held, a, b, applied):
            assert await h.count("calls") == 0, "nothing committed ahead of the batch before"
            held.first_over(before_whole)
            held.end()
            outcomes = [o for batch in await applied for o in batch]
        assert all(isinstance(o, IngestResult) and not o.duplicate for o in outcomes), outcomes
        assert (a.whole.result(), b.whole.result()) == (before_whole, before_whole)
        assert await _rows(h, call) == [(call, True, "rec-1", "stopped", None, True, True, 4)]


async def test_a_retry_in_the_next_batch_of_an_event_whose_batch_is_undone_is_applied_once(
    postgres: None, make_harness: Callable[..., Any]
) -> None:
    """A PBX retry can reach the worker in the batch after its first copy's, and wait there
    on the first copy's inbox row. When the first copy's batch is then undone (the batch
    before it was not committed whole), neither may deadlock and the event must not be
    applied twice: the retry's batch is undone too, and finds the retry a duplicate once the
    first copy's batch has applied it again."""
    async with make_harness(ingest_worker=False) as h:
        first = [
            _parsed(event("call.started", "wk-retry-1"), "msg-retry"),
            _parsed(event("call.started", "wk-retry-2"), "msg-2"),
        ]
        second = [
            _parsed(event("call.started", "wk-retry-1"), "msg-retry"),
            _parsed(event("call.started", "wk-retry-3"), "msg-3"),
        ]
        async with _beside_each_other(h, first, second) as (held, a, b, applied):
            held.first_over(False)
            held.end()
            async with asyncio.timeout(30):  # bounded: a deadlock fails here, not hangs CI
                done = await applied
        assert (a.whole.result(), b.whole.result()) == (False, False)
        assert all(isinstance(o, IngestResult) and not o.duplicate for o in done[0]), done
        retried, applied_other = done[1]
        assert retried == IngestResult(duplicate=True)
        assert isinstance(applied_other, IngestResult) and not applied_other.duplicate
        async with h.services.engine.connect() as conn:
            found = await conn.execute(
                sa.text(
                    "SELECT provider_call_id FROM calls WHERE provider_call_id LIKE 'wk-retry-%' "
                    "ORDER BY 1"
                )
            )
            assert [r[0] for r in found] == ["wk-retry-1", "wk-retry-2", "wk-retry-3"]
        assert await h.count("inbound_events") == 3
