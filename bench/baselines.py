"""What recgate is measured against, in the same run (bench/gate_load.py):

- ``bare_app``: a bare FastAPI endpoint that validates the generic webhook body with pydantic
  and answers, nothing else: the ceiling for webhook ingest on this stack.
- ``forwarder_app``: the smallest possible payment gate: an endpoint that makes the one PBX
  call (a shared ``httpx.AsyncClient``, as recgate uses) and answers.
- ``python bench/baselines.py pbx PORT``: a PBX control URL that answers every pause and
  resume at once, and reports its own handling time (``GET /stats``).

The models here are written out independently of recgate's, so the baseline does not move
when recgate's code does.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import datetime
from typing import Literal

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
