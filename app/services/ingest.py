"""Webhook ingestion: the inbox, then each event applied to its call, with group commit.

Webhooks that arrive together are stored and applied together, in arrival order, in one
short transaction (:class:`~app.services.ingest_apply.BatchApply`). Each webhook is answered
only once its batch has committed: 2xx still means "durably stored and applied". An event
that cannot be applied does not take its batch down with it: the batch is then applied one
event at a time.

Batches are applied by the ingest worker, a process of recgate's own
(:mod:`app.services.ingest_worker`), when the database is one it can open too: the
service's process then spends its interpreter on HTTP, signatures and the payment gate,
and the batches run beside it on another core. Otherwise (an in-memory database,
``RECGATE_INGEST_WORKER=false``) they run in the service's process.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.config import Settings
from app.domain.clock import Clock
from app.domain.events import PbxEvent
from app.domain.scrub import scrub_text
from app.domain.snapshots import CallSnap, RecordingSnap
from app.domain.states import IllegalTransition
from app.errors import IllegalStateTransition
from app.logging import clear_context
from app.services.concurrency import Answering, BackgroundTasks
from app.services.ingest_apply import (
    BatchApply,
    IngestResult,
    IngestRules,
    Items,
    Outcome,
    apply_in_order,
    stored_payload,
)
from app.services.ingest_worker import PIPELINE, IngestWorker, worker_suits
from app.services.metrics import Metrics
from app.storage.db import Database, DatabaseUnreachable
from app.storage.live import insert_dead_letter
from app.storage.models import EncodedJson

__all__ = ["IngestResult", "IngestService"]

log = logging.getLogger("recgate.ingest")

# Events applied in one transaction at most: enough to pay for the statements many times
# over, few enough that a payment's transaction never queues long behind a batch (SQLite).
MAX_BATCH = 32


@dataclass(slots=True)
class _Pending:
    event: PbxEvent
    payload: EncodedJson
    future: asyncio.Future[IngestResult]
    # Whether its batch may wait for the IVR's payments being answered (``_commit``).
    can_wait: bool = False


class IngestService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Clock,
        metrics: Metrics,
        tasks: BackgroundTasks,
        call_level_covers_all: frozenset[str] = frozenset(),
        ivr: Answering | None = None,
    ) -> None:
        self.db = db
        # The IVR's payment starts and ends being answered: batches let them go first.
        self.ivr = ivr or Answering()
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.tasks = tasks
        rules = IngestRules.of(settings, call_level_covers_all)
        self.worker: IngestWorker | None = None
        if settings.ingest_worker and worker_suits(settings.database_url):
            self.worker = IngestWorker(settings, rules)
        self._apply = BatchApply(rules)
        # Batches handed over before the first is answered: the worker applies that many at
        # once. In-process batches go one at a time (in order).
        self._depth = PIPELINE if self.worker is not None else 1
        # Whether a webhooks' batch waits for the payments being answered before it starts:
        # everywhere but in the worker on PostgreSQL, where it holds no lock the gate needs
        # (tried there, the wait cost ingest a fifth and the IVR nothing: docs/gate.md).
        self._ivr_first = self.worker is None or db.is_sqlite
        self._pending: list[_Pending] = []
        self._in_flight = 0
        # Told a call's live rows as a batch left them when a recording started on it
        # (``IngestResult.rows``): the payment gate's :meth:`~PaymentGate.learn`.
        self.on_rows: Callable[[CallSnap, tuple[RecordingSnap, ...], object], None] | None = None
        # Told when a batch found the database unreachable: the gate's
        # :meth:`~PaymentGate.forget_known` (a failover may have lost what it was told).
        self.on_unreachable: Callable[[], None] | None = None

    async def start(self) -> None:
        """Start the ingest worker, if batches are applied there (a webhook waits for it
        otherwise)."""
        if self.worker is not None:
            await self.worker.start()

    async def close(self) -> None:
        if self.worker is not None:
            await self.worker.close()

    async def _applied(self, items: Items) -> list[Outcome]:
        if self.worker is not None:
            return await self.worker.apply(items, self.clock())
        # In the event loop itself when the write lock is free (SQLite): handed to the writer
        # thread, a batch cost two hand-overs and turns at the interpreter lock with every
        # webhook in the meantime. Not while the IVR still waits for a payment after the
        # batch gave it its turn (``_commit``), though: a batch holds the loop for
        # milliseconds, and the payment's every step would queue behind it (docs/gate.md).
        inline = not self.ivr.busy
        return await apply_in_order(self.db, self._apply, items, self.clock(), inline=inline)

    async def ingest(
        self, event: PbxEvent, payload: dict[str, Any], *, can_wait: bool = False
    ) -> IngestResult:
        """Store ``event`` in the inbox and apply it; return once that is committed.

        ``payload`` is the provider's raw payload; it is scrubbed and encoded here, before
        it joins a batch (:func:`~app.services.ingest_apply.stored_payload`).
        ``can_wait``: its batch may wait for the IVR's payments being answered (a webhook's;
        not an event stream's, whose consumer waits for each event before the next).
        """
        loop = asyncio.get_running_loop()
        pending = _Pending(event, stored_payload(payload), loop.create_future(), can_wait)
        self._pending.append(pending)
        self._dispatch()
        # Shielded: a webhook whose sender hung up is still applied with its batch.
        return await asyncio.shield(pending.future)

    def _dispatch(self) -> None:
        """Hand the pending events over, as batches, while fewer than ``_depth`` are out."""
        reserved = 0
        while self._in_flight < self._depth and len(self._pending) > reserved * MAX_BATCH:
            self._in_flight += 1
            reserved += 1
            self.tasks.spawn(self._commit(), name="ingest-commit")

    async def _commit(self) -> None:
        # A batch holds many webhooks: its lines carry their own ids, not the first request's.
        clear_context()
        batch: list[_Pending] = []
        try:
            if self._ivr_first and all(p.can_wait for p in self._pending[:MAX_BATCH]):
                # In this process, a batch started while the IVR waits would hold the loop,
                # or (SQLite) the write lock the payment's own transactions need next; in
                # the writer thread it would take turns with them at the interpreter lock.
                # In the worker on SQLite, it would hold that lock too.
                await self.ivr.done()
            # Taken now: the webhooks that arrived meanwhile join the batch.
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            if not batch:
                self._in_flight -= 1
                return
            outcomes = await self._applied([(p.event, p.payload) for p in batch])
        except asyncio.CancelledError:
            # Shutting down: nothing more is applied, and nobody is left waiting.
            for pending in (*batch, *self._pending):
                pending.future.cancel()
            self._pending = []
            raise
        except Exception as exc:
            log.error("an ingest batch could not be handed over", exc_info=exc)
            outcomes = [exc] * len(batch)
        self._in_flight -= 1
        self._dispatch()
        if self.on_unreachable is not None and any(
            isinstance(o, DatabaseUnreachable) for o in outcomes
        ):
            self.on_unreachable()
        for pending, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, IllegalTransition):
                outcome = IllegalStateTransition(
                    str(outcome),
                    entity=outcome.entity,
                    current=outcome.current,
                    target=outcome.target,
                )
            if isinstance(outcome, IngestResult):
                self._count(pending.event, outcome)
                if outcome.rows is not None and self.on_rows is not None:
                    self.on_rows(*outcome.rows)
                if not pending.future.done():
                    pending.future.set_result(outcome)
            elif not pending.future.done():
                pending.future.set_exception(outcome)

    def _count(self, event: PbxEvent, result: IngestResult) -> None:
        self.metrics.webhook_events.inc(
            provider=event.provider,
            type=event.type.value,
            outcome="duplicate" if result.duplicate else "applied",
        )
        for kind, recording_id in result.exposures:
            self.metrics.exposures.inc(kind=kind)
            log.warning(
                "exposure %s on recording %s (call %s): recording quarantined",
                kind,
                recording_id,
                result.call_id,
            )

    async def dead_letter(
        self, provider: str, event_id: str | None, reason: str, body: bytes
    ) -> None:
        """Keep a signed but malformed payload, scrubbed, for operators."""
        text = body.decode("utf-8", errors="replace")
        try:
            stored: str = stored_payload(json.loads(text))
        except (json.JSONDecodeError, RecursionError):
            stored = scrub_text(text)
        values = {
            "provider": provider,
            # An id refused for its characters is kept escaped, so an operator sees what came.
            "event_id": event_id
            and scrub_text(event_id if event_id.isprintable() else ascii(event_id)[1:-1])[:255],
            "reason": scrub_text(reason)[:1000],
            # Text columns cannot hold NUL (PostgreSQL refuses it): kept as its JSON escape.
            "payload": stored.replace("\x00", "\\u0000"),
            "received_at": self.clock(),
        }
        await self.db.write(lambda conn: insert_dead_letter(conn, values))
        self.metrics.webhook_events.inc(provider=provider, type="unknown", outcome="malformed")
        log.warning("malformed %s webhook dead-lettered: %s", provider, scrub_text(reason))
