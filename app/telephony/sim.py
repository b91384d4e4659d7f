"""The in-process simulated PBX for the demo, tests and benchmarks.

It behaves like a PBX that records every call: pause and resume are confirmed after a
configurable latency. Its ``mode`` injects the faults a real PBX has: ``fail`` answers with a
transient error, ``hang`` never answers, ``reject`` refuses the command.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from app.domain.states import PauseBehavior
from app.telephony.base import (
    ConfirmedState,
    ControlOutcome,
    ControlTarget,
    ProviderRejected,
    ProviderUnavailable,
    RecordingController,
)
from app.telephony.generic import signed_event_route
from app.telephony.provider import Provider

SimMode = Literal["ok", "fail", "hang", "reject"]


@dataclass
class SimCommand:
    action: str
    provider_call_id: str
    recording_ids: tuple[str | None, ...]
    behavior: str | None


@dataclass
class SimPbx(RecordingController):
    latency_s: float = 0.02
    mode: SimMode = "ok"
    # Fail this many commands before behaving (a flaky PBX that recovers).
    fail_next: int = 0
    commands: list[SimCommand] = field(default_factory=list)
    # What the simulated PBX currently does per call: "paused" or "recording".
    call_states: dict[str, str] = field(default_factory=dict)
    name: str = "sim"
    call_level_covers_all: bool = True

    async def pause(self, target: ControlTarget, behavior: PauseBehavior) -> list[ControlOutcome]:
        return await self._command("pause", target, behavior.value, ConfirmedState.PAUSED)

    async def resume(self, target: ControlTarget) -> list[ControlOutcome]:
        return await self._command("resume", target, None, ConfirmedState.RECORDING)

    async def probe(self, timeout_s: float) -> str:
        """The simulator is in this process: always there."""
        return "simulated PBX"

    async def _command(
        self, action: str, target: ControlTarget, behavior: str | None, confirmed: ConfirmedState
    ) -> list[ControlOutcome]:
        ids = tuple(r.provider_recording_id for r in target.recordings) or (None,)
        self.commands.append(SimCommand(action, target.provider_call_id, ids, behavior))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if self.mode == "hang":
            await asyncio.Event().wait()
        if self.fail_next > 0 or self.mode == "fail":
            self.fail_next = max(0, self.fail_next - 1)
            raise ProviderUnavailable(f"sim {action}: simulated outage")
        if self.mode == "reject":
            raise ProviderRejected(f"sim {action}: simulated refusal")
        self.call_states[target.provider_call_id] = confirmed.value
        return [ControlOutcome(rid, confirmed) for rid in ids]

    def count(self, action: str, provider_call_id: str | None = None) -> int:
        return sum(
            1
            for c in self.commands
            if c.action == action
            and (provider_call_id is None or c.provider_call_id == provider_call_id)
        )


ADAPTER = Provider(
    name="sim",
    configured=lambda settings: bool(settings.sim_enabled),
    controller=lambda settings, _client, _clock: SimPbx(
        latency_s=settings.sim_pause_latency_ms / 1000
    ),
    webhooks=(
        signed_event_route(
            "sim",
            "The simulator speaks the generic contract, signed with a key derived from the "
            "generic secret, so nothing signed for /generic is taken here.",
        ),
    ),
)
