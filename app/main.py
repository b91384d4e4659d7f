"""The FastAPI application: create_app() and its lifespan."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from app.api import calls, ops, recordings, retention, webhooks
from app.api.limits import BodySizeLimit
from app.config import Settings, get_settings
from app.domain.clock import Clock, utcnow
from app.errors import install_error_handlers
from app.jobs.ari_events import AriEventConsumer, ari_events_enabled
from app.jobs.watchdog import run_jobs, service_jobs
from app.services.container import Services

_gc_settled = False


def _settle_garbage_collector() -> None:
    """Keep the collector's full passes off the payment path.

    Everything loaded by now (modules, models, compiled statements) lives as long as the
    process; a full collection walking it all took about 55 ms each time, stalling every
    request in flight. Frozen objects are left out of those passes, and young garbage is
    collected less eagerly.
    """
    global _gc_settled
    if _gc_settled:  # once per process (tests start many apps; freezing each would leak)
        return
    _gc_settled = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(2_000, 10, 100)


def create_app(settings: Settings | None = None, clock: Clock = utcnow) -> FastAPI:
    """Build the app. Services are created when it starts and closed when it stops."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.build(settings, clock)
        app.state.services = services
        _settle_garbage_collector()
        watchdog = None
        if settings.background_jobs:
            watchdog = asyncio.create_task(run_jobs(service_jobs(services)), name="jobs")
        # Opt-in (RECGATE_ARI_EVENTS), so not tied to background_jobs.
        ari_events = None
        if ari_events_enabled(settings):
            consumer = AriEventConsumer(settings, services.intake, clock, services.metrics)
            ari_events = asyncio.create_task(consumer.run(), name="ari-events")
        try:
            yield
        finally:
            # Event intake stops first, so nothing is applied while services close.
            if ari_events is not None:
                ari_events.cancel()
                with suppress(asyncio.CancelledError):
                    await ari_events
            if watchdog is not None:
                watchdog.cancel()
                with suppress(asyncio.CancelledError):
                    await watchdog
            await services.close()

    app = FastAPI(
        title="recgate",
        version="0.1.0",
        summary="Keeps card details out of call recordings; keeps recordings only as long as allowed.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit)
    app.include_router(ops.router)
    app.include_router(calls.router)
    app.include_router(webhooks.router)
    app.include_router(recordings.router)
    app.include_router(retention.router)
    return app
