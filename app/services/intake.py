"""The one ingestion path for PBX events, however they arrive (webhook, WebSocket consumer)."""

from __future__ import annotations

from typing import Any

from app.domain.events import PbxEvent
from app.services.gating import PaymentGate
from app.services.ingest import IngestResult, IngestService
from app.services.media import MediaService


class EventIntake:
    """Store and apply a verified event, then start what it calls for: pausing a recording
    that went live during a payment, copying media the provider now holds."""

    def __init__(self, ingest: IngestService, gate: PaymentGate, media: MediaService) -> None:
        self.ingest = ingest
        self.gate = gate
        self.media = media

    async def accept(self, event: PbxEvent, payload: dict[str, Any]) -> IngestResult:
        result = await self.ingest.ingest(event, payload)
        if result.needs_pause:
            self.gate.spawn_enforce_pause(event.provider, event.call.provider_call_id)
        if result.media_ready is not None:
            self.media.spawn_fetch(result.media_ready)
        return result

    async def reject(self, provider: str, event_id: str | None, reason: str, body: bytes) -> None:
        """Keep a signed but malformed payload (scrubbed) for operators."""
        await self.ingest.dead_letter(provider, event_id, reason, body)
