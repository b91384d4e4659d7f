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
from app.telephony.base import json_object
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

    async def run(self, talk_s: float = 0.0) -> CallOutcome:
        """A whole call with one card payment; what the IVR was told and what went wrong.

        A refused webhook ends the simulated call there (the rest would be refused too); a
        refused payment start or end is noted and the call goes on, as an IVR's would (with no
        payment end after a start whose token was refused).
        """
        import asyncio

        failures: list[str] = []
        try:
            await self.event("call.started")
            await self.event("call.answered")
            await self.event("recording.started")
            if talk_s:
                await asyncio.sleep(talk_s)
            start = await self.payment("start", {"reference": f"pay-{self.call_id}"})
            if not start.is_success:
                failures.append(describe_refusal("payment start", start))
            # A token refused at the start is refused at the end too: one reason, not two.
            if start.status_code not in (401, 403):
                end = await self.payment("end", {"outcome": "authorised"})
                if not end.is_success:
                    failures.append(describe_refusal("payment end", end))
            await self.event("recording.stopped")
            await self.event("call.ended")
            await self.event("recording.completed", duration_s=60)
        except httpx.HTTPStatusError as exc:
            body = json.loads(exc.request.content or b"{}")
            failures.append(describe_refusal(f"webhook {body.get('type', '?')}", exc.response))
            return CallOutcome(self.call_id, False, failures)
        safe = start.is_success and bool(json_object(start).get("safe_to_collect"))
        return CallOutcome(self.call_id, safe, failures)


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """One simulated call: was the IVR told it was safe, and each refusal on the way."""

    call_id: str
    safe_to_collect: bool
    failures: list[str]


def describe_refusal(step: str, response: httpx.Response) -> str:
    """``payment start → HTTP 401 unauthenticated (Authentication required)``: the step, the
    status and the problem document's type and title, so equal refusals count together."""
    problem = json_object(response)
    slug = str(problem.get("type") or "").rsplit("/", 1)[-1]
    title = problem.get("title")
    reason = " ".join(part for part in (slug, f"({title})" if title else "") if part)
    return f"{step} → HTTP {response.status_code}" + (f" {reason}" if reason else "")


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
