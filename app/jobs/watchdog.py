"""Periodic work inside the service: resume retries, the overlong-pause alert, media copies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from app.services.container import Services

log = logging.getLogger("recgate.jobs")

Job = tuple[str, float, Callable[[], Awaitable[object]]]


def service_jobs(services: Services) -> list[Job]:
    """What the service runs on its own, and how often (seconds)."""
    return [
        # Resume retries must come at least every 10 s (SPEC §3.1); each is due on its own time.
        ("resume-retries", 1.0, services.gate.retry_due_resumes),
        ("overlong-pauses", 5.0, services.gate.alert_overlong_segments),
        ("stuck-segments", 5.0, services.gate.recover_stuck_segments),
        ("media-copies", 60.0, services.media.fetch_due),
        ("redaction", 60.0, services.redaction.redact_due),
        # Several replicas may sweep at once: claims are leased rows, skipped when locked.
        ("retention-sweep", float(services.settings.sweep_interval_s), services.retention.sweep),
    ]


async def run_jobs(jobs: list[Job], tick_s: float = 0.5) -> None:
    """Run each job every its interval until cancelled; a failing job waits for its next turn."""
    loop = asyncio.get_running_loop()
    next_run = {name: loop.time() for name, _, _ in jobs}
    while True:
        for name, interval, job in jobs:
            if loop.time() < next_run[name]:
                continue
            next_run[name] = loop.time() + interval
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database blip must not end the loop; the next turn retries
                log.exception("periodic job %s failed", name)
        await asyncio.sleep(tick_s)
