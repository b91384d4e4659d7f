"""What an event consumer (a PBX socket recgate reads itself) does with each event it reads:
hand it to the same intake as a webhook, or dead-letter what cannot be read. Neither a bad
event nor a database outage stops the consumer."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from app.domain.events import PbxEvent
from app.errors import MalformedInput
from app.services.intake import EventIntake
from app.services.metrics import Metrics


async def hand_over(
    intake: EventIntake,
    metrics: Metrics,
    log: logging.Logger,
    provider: str,
    event: PbxEvent | None,
    stored: dict[str, Any],
    raw: bytes,
) -> None:
    """Apply ``event`` (None: one recgate does not map, counted as ignored); one intake refuses
    is dead-lettered there, one that cannot be applied (database down) is logged and lost."""
    if event is None:
        metrics.webhook_events.inc(provider=provider, type="unmapped", outcome="ignored")
        return
    try:
        await intake.accept(event, stored, raw)
    except asyncio.CancelledError:
        raise
    except MalformedInput:
        pass  # dead-lettered by intake
    except Exception:
        log.exception("%s %s event could not be applied; it is lost", provider, event.type.value)


async def dead_letter(
    intake: EventIntake, log: logging.Logger, provider: str, reason: str, raw: bytes
) -> None:
    """Keep an unreadable event (scrubbed) in the dead letters."""
    try:
        await intake.reject(provider, None, reason, raw)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unreadable %s event could not be dead-lettered", provider)
