"""Periodic work inside the service: resume retries and the overlong-pause alert."""

from __future__ import annotations

import asyncio
import logging

from app.services.gating import PaymentGate

log = logging.getLogger("recgate.jobs")


async def run_watchdog(gate: PaymentGate, interval_s: float) -> None:
    """Every ``interval_s``: retry due resumes, flag segments open too long. Runs until cancelled."""
    while True:
        try:
            await gate.retry_due_resumes()
            await gate.alert_overlong_segments()
        except asyncio.CancelledError:
            raise
        except Exception:  # the loop must survive a database blip; the next tick retries
            log.exception("watchdog tick failed")
        await asyncio.sleep(interval_s)
