"""Periodic work inside the service, each job on its own schedule in its own task."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from app.services.container import Services
from app.storage.db import KEEP_WARM_EVERY_S

log = logging.getLogger("recgate.jobs")

Job = tuple[str, float, Callable[[], Awaitable[object]]]


def service_jobs(services: Services) -> list[Job]:
    """What the service runs on its own, and how often (seconds)."""
    jobs: list[Job] = [
        # Due payment segments: resume retries (at least every 10 s, SPEC §3.1), background
        # re-pauses, and segments whose driver died. Each due segment is driven on its own.
        ("gate-upkeep", 1.0, services.gate.run_due),
        ("overlong-pauses", 5.0, services.gate.alert_overlong_segments),
        # PostgreSQL: the gate's kept connections opened and pinged here, not on the IVR's path.
        ("database-keep-warm", KEEP_WARM_EVERY_S, services.db.keep_warm),
        ("media-copies", 60.0, services.media.fetch_due),
        ("redaction", 60.0, services.redaction.redact_due),
        # Several replicas may sweep at once: claims are leased rows, skipped when locked.
        ("retention-sweep", float(services.settings.sweep_interval_s), services.retention.sweep),
        # The audit chain's head, outside the database: truncation shows against it.
        (
            "audit-checkpoint",
            float(services.settings.audit_checkpoint_s),
            services.audit.checkpoint,
        ),
    ]
    if services.spool is not None:
        # rtpengine writes no notice of a finished file: its directory is read instead.
        jobs.append(("rtpengine-spool", 5.0, services.spool.scan))
    return jobs


async def run_jobs(jobs: list[Job]) -> None:
    """Run every job until cancelled, each in a task of its own: a long sweep never delays
    a resume retry. A failing job waits for its next turn."""
    async with asyncio.TaskGroup() as group:
        for name, interval, job in jobs:
            group.create_task(_every(name, interval, job), name=f"job:{name}")


async def _every(name: str, interval: float, job: Callable[[], Awaitable[object]]) -> None:
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:  # a database blip must not end the loop; the next turn retries
            log.exception("periodic job %s failed", name)
        await asyncio.sleep(interval)
