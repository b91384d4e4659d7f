"""The one ingestion path for PBX events, however they arrive (webhook, WebSocket consumer)."""

from __future__ import annotations

from typing import Any

from app.domain.call_facts import MAX_FUTURE, from_the_future
from app.domain.events import PbxEvent
from app.domain.ids import event_problem, without_card_like_checksum
from app.errors import MalformedInput
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

    async def accept(
        self, event: PbxEvent, payload: dict[str, Any], raw: bytes, *, webhook: bool = False
    ) -> IngestResult:
        """Apply ``event``; :class:`MalformedInput` (dead-lettered) when it cannot be trusted.
        A ``webhook``'s batch lets a payment being answered go first (an event stream's does
        not: its consumer waits for each event before it reads the next).

        Refused: an event whose ids hold a card number or cannot be shown faithfully (nothing
        of it is stored but the scrubbed dead letter), and one dated more than a few minutes
        ahead of recgate's clock (its date would outrank every true report after it).
        """
        reason = event_problem(event)
        if reason is None and from_the_future(event, self.ingest.clock()):
            reason = (
                f"occurred_at is more than {int(MAX_FUTURE.total_seconds() // 60)} minutes "
                "ahead of recgate's clock"
            )
        if reason is not None:
            await self.reject(event.provider, event.event_id, reason, raw)
            raise MalformedInput(reason)
        event = without_card_like_checksum(event)
        result = await self.ingest.ingest(event, payload, can_wait=webhook)
        if result.segment_to_drive is not None:
            # Keyed by recgate's own segment id: the event may have named the call by an alias.
            self.gate.kick(result.segment_to_drive)
        if result.media_ready is not None:
            self.media.spawn_fetch(result.media_ready)
        return result

    async def reject(self, provider: str, event_id: str | None, reason: str, body: bytes) -> None:
        """Keep a signed but malformed payload (scrubbed) for operators."""
        await self.ingest.dead_letter(provider, event_id, reason, body)
