"""What recgate is measured against, in the same run (bench/gate_load.py):

- ``bare_app``: a bare FastAPI endpoint that validates the generic webhook body with pydantic
  and answers, nothing else: the ceiling for webhook ingest on this stack.
- ``forwarder_app``: the smallest possible payment gate: an endpoint that makes the one PBX
  call (a shared ``httpx.AsyncClient`` on its default transport; recgate's client has a
  transport of its own since a59302d, ``app/telephony/transport.py``) and answers.
- ``floor_app``: the smallest payment gate that keeps the two promises that cost database
  round trips: a segment is claimed in the database before its command is sent (two
  replicas given the same start never both send it: SPEC §3.1, nothing sent twice), and
  the PBX's confirmation is committed before the IVR hears "safe" (a crash cannot lose a
  payment the IVR was told is safe, whose end must resume the recordings). One claim
  statement, the PBX call, one confirming statement; no authentication, body, idempotency
  or bookkeeping of recordings. On PostgreSQL through ``asyncpg`` directly, the claim not
  waited to disk and the confirmation waited (as recgate's writes); on SQLite through
  ``sqlite3`` in the event loop, WAL with ``synchronous=NORMAL`` (as recgate's: both commits
  survive the process, not a power cut) (``BENCH_FLOOR_DB``: ``postgresql://…`` or
  ``sqlite:///path``).
- ``python bench/baselines.py pbx PORT``: a PBX control URL that answers every pause and
  resume at once, and reports its own handling time (``GET /stats``).

The models here are written out independently of recgate's, so the baseline does not move
when recgate's code does.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field


class CallBody(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str = Field(min_length=1, max_length=255)
    from_: str | None = Field(default=None, alias="from", max_length=64)
    to: str | None = Field(default=None, max_length=64)
    direction: Literal["inbound", "outbound"] | None = None
    service_area: str | None = Field(default=None, max_length=64)
    agent_id: str | None = Field(default=None, max_length=128)


class RecordingBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=255)
    media_url: str | None = Field(default=None, max_length=2048)
    duration_s: float | None = Field(default=None, ge=0)
    format: str | None = Field(default=None, max_length=16)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")


class EventBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal[
        "call.started",
        "call.answered",
        "call.transferred",
        "call.ended",
        "recording.started",
        "recording.paused",
        "recording.resumed",
        "recording.stopped",
        "recording.completed",
        "recording.failed",
    ]
    occurred_at: datetime
    call: CallBody
    recording: RecordingBody | None = None


bare_app = FastAPI()


@bare_app.post("/v1/webhooks/generic")
async def bare_ingest(event: EventBody) -> dict[str, str]:
    return {"status": "applied"}


forwarder_app = FastAPI()
_client: httpx.AsyncClient | None = None


def _pbx() -> httpx.AsyncClient:
    global _client
    if _client is None:
        _client = httpx.AsyncClient(
            base_url=os.environ["BENCH_PBX_URL"],
            timeout=httpx.Timeout(1.5, connect=1.0),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
    return _client


async def _forward(call_id: str, action: str, confirming: str) -> dict[str, object]:
    response = await _pbx().post(f"/calls/{call_id}/recording/{action}", json={})
    if response.status_code != 200 or response.json().get("state") != confirming:
        raise HTTPException(503)
    return {"state": confirming, "safe_to_collect": action == "pause"}


@forwarder_app.post("/v1/calls/{provider}/{call_id}/payment/start")
async def forward_start(provider: str, call_id: str) -> dict[str, object]:
    return await _forward(call_id, "pause", "paused")


@forwarder_app.post("/v1/calls/{provider}/{call_id}/payment/end")
async def forward_end(provider: str, call_id: str) -> dict[str, object]:
    return await _forward(call_id, "resume", "recording")


# ---- the floor: a forwarder with the two writes the promises need -----------------------------

_FLOOR_TABLE = """
CREATE TABLE IF NOT EXISTS bench_floor (
    id TEXT PRIMARY KEY, call_id TEXT NOT NULL, state TEXT NOT NULL, claim_until TEXT
)"""
# One open segment per call: the claim's guard.
_FLOOR_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS bench_floor_open ON bench_floor (call_id) "
    "WHERE state <> 'closed'"
)
# Per step: the PBX action, the PBX's answer that confirms it, the state then stored.
_FLOOR_STEPS = {
    "start": ("pause", "paused", "paused"),
    "end": ("resume", "recording", "closed"),
}


class _FloorStore:
    """Claim a segment, then record its confirmed state; the same SQL on both databases."""

    def __init__(self, run: Any, close: Any, numbered: bool) -> None:
        self._run, self.close = run, close
        a, b, c = ("$1", "$2", "$3") if numbered else ("?", "?", "?")
        self.sql = {
            "start": "INSERT INTO bench_floor (id, call_id, state, claim_until) "
            f"VALUES ({a}, {b}, 'pausing', {c}) ON CONFLICT DO NOTHING RETURNING id",
            "end": f"UPDATE bench_floor SET state = 'resuming', claim_until = {a} "
            f"WHERE call_id = {b} AND state = 'paused' RETURNING id",
            "confirm": f"UPDATE bench_floor SET state = {a}, claim_until = NULL WHERE id = {b}",
        }

    async def claim(self, step: str, call_id: str) -> str | None:
        until = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        args = (uuid.uuid4().hex, call_id, until) if step == "start" else (until, call_id)
        row = await self._run(self.sql[step], args, False)
        return None if row is None else str(row[0])

    async def confirm(self, segment: str, state: str) -> None:
        await self._run(self.sql["confirm"], (state, segment), True)

    async def release(self, segment: str, step: str) -> None:
        """A command the PBX did not confirm gives its claim back: the segment is left as it
        was before (a start's closed, an end's paused), so the call's next payment can go."""
        before = "closed" if step == "start" else "paused"
        await self._run(self.sql["confirm"], (before, segment), False)


async def _postgres_floor(url: str) -> _FloorStore:
    import asyncpg  # type: ignore[import-untyped]

    url = url.replace("postgresql+asyncpg://", "postgresql://")
    # The claim is not waited to disk (as recgate's planning write); the confirmation is.
    lazy = await asyncpg.create_pool(
        url, min_size=2, max_size=10, server_settings={"synchronous_commit": "off"}
    )
    durable = await asyncpg.create_pool(url, min_size=2, max_size=10)
    async with durable.acquire() as conn:
        await conn.execute(_FLOOR_TABLE)
        await conn.execute(_FLOOR_INDEX)

    async def run(sql: str, args: tuple[str, ...], wait: bool) -> Any:
        pool = durable if wait else lazy
        async with pool.acquire() as conn:
            return await conn.fetchrow(sql, *args)

    async def close() -> None:
        await lazy.close()
        await durable.close()

    return _FloorStore(run, close, numbered=True)


def _sqlite_floor(path: str) -> _FloorStore:
    # In the event loop, WAL, synchronous NORMAL, no checkpoint on commit: as recgate's own
    # gate writes on SQLite (whose writer thread checkpoints now and then; over one run the
    # floor's WAL grows a few MiB). Both commits survive the process, not the machine.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute(_FLOOR_TABLE)
    db.execute(_FLOOR_INDEX)

    async def run(sql: str, args: tuple[str, ...], wait: bool) -> Any:
        # Every row stepped: a statement with RETURNING commits only once it has finished.
        rows = db.execute(sql, args).fetchall()
        return rows[0] if rows else None

    async def close() -> None:
        db.close()

    return _FloorStore(run, close, numbered=False)


@asynccontextmanager
async def _floor_lifespan(app: FastAPI) -> AsyncIterator[None]:
    url = os.environ["BENCH_FLOOR_DB"]
    store = (
        _sqlite_floor(url.removeprefix("sqlite:///"))
        if url.startswith("sqlite")
        else await _postgres_floor(url)
    )
    app.state.floor = store
    yield
    await store.close()


floor_app = FastAPI(lifespan=_floor_lifespan)


async def _floor(call_id: str, step: str) -> dict[str, object]:
    store: _FloorStore = floor_app.state.floor
    action, confirming, stored = _FLOOR_STEPS[step]
    segment = await store.claim(step, call_id)
    if segment is None:
        raise HTTPException(409)
    try:
        answer = await _forward(call_id, action, confirming)
    except BaseException:
        await store.release(segment, step)
        raise
    await store.confirm(segment, stored)
    return answer


@floor_app.post("/v1/calls/{provider}/{call_id}/payment/start")
async def floor_start(provider: str, call_id: str) -> dict[str, object]:
    return await _floor(call_id, "start")


@floor_app.post("/v1/calls/{provider}/{call_id}/payment/end")
async def floor_end(provider: str, call_id: str) -> dict[str, object]:
    return await _floor(call_id, "end")


# ---- the PBX ---------------------------------------------------------------------------------


class Pbx:
    """Answers ``POST …/recording/pause`` with ``{"state":"paused"}`` and ``…/resume`` with
    ``{"state":"recording"}`` as soon as the request is read."""

    def __init__(self) -> None:
        self.handling: list[float] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                began = time.perf_counter()
                lines = head.split(b"\r\n")
                method, path, _ = lines[0].split(b" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                if path.startswith(b"/stats"):
                    body = json.dumps(self.stats(reset=method == b"POST")).encode()
                elif path.endswith(b"/pause"):
                    body = b'{"state":"paused"}'
                else:
                    body = b'{"state":"recording"}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                if not path.startswith(b"/stats"):
                    self.handling.append(time.perf_counter() - began)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def stats(self, reset: bool) -> dict[str, float]:
        ordered = sorted(self.handling)
        result = {
            "n": len(ordered),
            "p50_ms": ordered[len(ordered) // 2] * 1000 if ordered else 0.0,
            "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000 if ordered else 0.0,
        }
        if reset:
            self.handling.clear()
        return result


async def _run_pbx(port: int) -> None:
    pbx = Pbx()
    server = await asyncio.start_server(pbx.serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["pbx"]:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(_run_pbx(int(sys.argv[2])))
