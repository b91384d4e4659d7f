"""A simulated PBX and IVR that drive calls through a running recgate over HTTP.

Used by ``recgate demo`` (one call, timeline printed) and ``recgate simulate`` (many at once).
Events are signed exactly as a real generic PBX would sign them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from app.domain.clock import Clock, utcnow
from app.telephony.signing import signed_headers


@dataclass
class SimulatedCall:
    """One call on the simulated PBX: events out to recgate, payment start/end as the IVR."""

    client: httpx.AsyncClient
    key: bytes
    ivr_token: str
    provider: str = "sim"
    call_id: str = field(default_factory=lambda: f"sim-{uuid.uuid4().hex[:12]}")
    recording_id: str = field(default_factory=lambda: f"rec-{uuid.uuid4().hex[:8]}")
    service_area: str = "council_tax"
    clock: Clock = utcnow

    async def event(self, type_: str, **recording: Any) -> httpx.Response:
        body: dict[str, Any] = {
            "type": type_,
            "occurred_at": self.clock().isoformat(),
            "call": {
                "id": self.call_id,
                "from": "+441632960001",
                "to": "+441632960999",
                "direction": "inbound",
                "service_area": self.service_area,
                "agent_id": "agent-7",
            },
        }
        if type_.startswith("recording."):
            body["recording"] = {"id": self.recording_id, "format": "wav", **recording}
        raw = json.dumps(body).encode()
        headers = signed_headers(self.key, raw, self.clock())
        headers["content-type"] = "application/json"
        response = await self.client.post(
            f"/v1/webhooks/{self.provider}", content=raw, headers=headers
        )
        response.raise_for_status()
        return response

    async def payment(self, action: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self.client.post(
            f"/v1/calls/{self.provider}/{self.call_id}/payment/{action}",
            json=body or {},
            headers={"authorization": f"Bearer {self.ivr_token}"},
        )

    async def run(self, talk_s: float = 0.0) -> dict[str, Any]:
        """A whole call with one card payment; returns what the IVR was told."""
        import asyncio

        await self.event("call.started")
        await self.event("call.answered")
        await self.event("recording.started")
        if talk_s:
            await asyncio.sleep(talk_s)
        start = await self.payment("start", {"reference": f"pay-{self.call_id}"})
        end = await self.payment("end", {"outcome": "authorised"})
        await self.event("recording.stopped")
        await self.event("call.ended")
        await self.event("recording.completed", duration_s=60)
        return {
            "start": start.status_code,
            "safe_to_collect": start.json().get("safe_to_collect"),
            "end": end.status_code,
        }


def format_timeline(call: dict[str, Any]) -> list[str]:
    """Human-readable lines of a call's timeline from ``GET /v1/calls/…``."""
    lines = []
    first: datetime | None = None
    for entry in call["timeline"]:
        at = datetime.fromisoformat(entry["at"])
        first = first or at
        offset = (at - first).total_seconds() * 1000
        change = f"{entry['from_state'] or '—'} → {entry['to_state']}"
        lines.append(f"+{offset:8.1f} ms  {entry['entity']:<9} {change:<24} {entry['cause']}")
    return lines
