"""The hot paths stay lean: SQL statements and transactions per request, counted (issue 8).

Every statement the service sends to the database during one request is counted with
SQLAlchemy's ``before_cursor_execute`` event, on the engine of the hot paths and on the ORM's
(which they must not use). A budget exceeded fails the test; the budgets are documented in
docs/gate.md, and raising one is a decision to write down there, not a number to bump here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import respx

from app.domain.roles import Role
from app.storage.db import READ_OPTION
from tests.api.test_payment_gating import PAUSE, RESUME, live_call
from tests.conftest import Harness, event

# Statements per request, BEGIN and COMMIT not counted; write transactions per request. The
# payment figures are with the IVR's token already checked (it is kept for a few seconds);
# the first request of a token reads it once more. On PostgreSQL the gate's writes go as one
# statement guarded by the call's version (``direct.run_guarded``), with the planning's
# ``synchronous_commit`` setting.
INGEST_NEW_CALL = 4
INGEST_RECORDING_EVENT = 6
PAYMENT_START = {"sqlite": 12, "postgresql": 3}
# PostgreSQL: the call's rows as its last command left them are taken as read, not read
# again (PaymentGate._known), by the end and by the call's next start.
PAYMENT_END = {"sqlite": 11, "postgresql": 2}
NEXT_PAYMENT_START = {"sqlite": 12, "postgresql": 2}
# PostgreSQL: the gate writes optimistically, outside a transaction, when nobody else is
# changing the call (docs/gate.md).
PAYMENT_WRITE_TRANSACTIONS = {"sqlite": 2, "postgresql": 0}
TOKEN_CHECK = 1


@dataclass
class Tally:
    statements: list[str] = field(default_factory=list)
    writes: int = 0

    @property
    def count(self) -> int:
        return len(self.statements)


@contextmanager
def counting(h: Harness) -> Iterator[Tally]:
    from sqlalchemy import event as sa_event

    tally = Tally()
    engines = {id(e): e for e in (*h.services.db.sync_engines, h.services.engine.sync_engine)}

    def statement(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        tally.statements.append(re.sub(r"\s+", " ", sql)[:100])

    def begin(conn: Any) -> None:
        # A transaction that may write: not autocommit (PostgreSQL's reads), not a read
        # (SQLite's token checks begin deferred).
        options = conn.get_execution_options()
        if options.get("isolation_level") != "AUTOCOMMIT" and not options.get(READ_OPTION):
            tally.writes += 1

    for engine in engines.values():
        sa_event.listen(engine, "before_cursor_execute", statement)
        sa_event.listen(engine, "begin", begin)
    try:
        yield tally
    finally:
        for engine in engines.values():
            sa_event.remove(engine, "before_cursor_execute", statement)
            sa_event.remove(engine, "begin", begin)


@pytest.fixture
async def pbx() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=False) as router:
        router.post(PAUSE).respond(200, json={"state": "paused"})
        router.post(RESUME).respond(200, json={"state": "recording"})
        yield router


def over(tally: Tally, budget: int) -> str:
    return f"{tally.count} statements (budget {budget}):\n" + "\n".join(tally.statements)


async def test_webhook_ingest_statements(harness: Harness) -> None:
    with counting(harness) as new_call:
        assert (await harness.send_event(event("call.started"))).status_code == 200
    assert new_call.count <= INGEST_NEW_CALL, over(new_call, INGEST_NEW_CALL)
    assert new_call.writes == 1

    with counting(harness) as recording:
        started = event("recording.started", recording_id="r-1")
        assert (await harness.send_event(started)).status_code == 200
    assert recording.count <= INGEST_RECORDING_EVENT, over(recording, INGEST_RECORDING_EVENT)
    assert recording.writes == 1, "webhook ingest is one transaction"


async def test_payment_start_and_end_statements(harness: Harness, pbx: respx.MockRouter) -> None:
    await live_call(harness)
    ivr = harness.auth(Role.IVR)
    with counting(harness) as cold:
        assert await harness.services.auth.authenticate(harness.tokens[Role.IVR]) is not None
    assert cold.count == TOKEN_CHECK and cold.writes == 0, over(cold, TOKEN_CHECK)

    backend = "sqlite" if harness.services.db.is_sqlite else "postgresql"
    with counting(harness) as start:
        response = await harness.client.post("/v1/calls/generic/c-123/payment/start", headers=ivr)
        assert response.status_code == 200, response.text
    assert start.count <= PAYMENT_START[backend], over(start, PAYMENT_START[backend])
    assert start.writes <= PAYMENT_WRITE_TRANSACTIONS[backend], "more write transactions"

    with counting(harness) as end:
        response = await harness.client.post("/v1/calls/generic/c-123/payment/end", headers=ivr)
        assert response.status_code == 200, response.text
    assert end.count <= PAYMENT_END[backend], over(end, PAYMENT_END[backend])
    assert end.writes <= PAYMENT_WRITE_TRANSACTIONS[backend]

    # The call's next payment, its last segment closed (on PostgreSQL, no read of its own for
    # an open segment beside the kept rows).
    with counting(harness) as again:
        response = await harness.client.post("/v1/calls/generic/c-123/payment/start", headers=ivr)
        assert response.status_code == 200, response.text
    assert again.count <= NEXT_PAYMENT_START[backend], over(again, NEXT_PAYMENT_START[backend])
    assert again.writes <= PAYMENT_WRITE_TRANSACTIONS[backend]


async def test_webhooks_arriving_together_share_statements(harness: Harness) -> None:
    """Group commit: 30 webhooks at once cost a few statements per batch, not per event."""
    import asyncio

    bodies = [event("call.started", call_id=f"together-{n}") for n in range(30)]
    with counting(harness) as together:
        answers = await asyncio.gather(*(harness.send_event(body) for body in bodies))
    assert {a.status_code for a in answers} == {200}
    assert together.count <= 2 * INGEST_NEW_CALL, over(together, 2 * INGEST_NEW_CALL)
