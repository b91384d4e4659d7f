"""Wires settings, storage, providers and services together for one running app."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.clock import Clock, utcnow
from app.services.audit import AuditKeys, AuditService
from app.services.calls import CallQueries
from app.services.concurrency import BackgroundTasks
from app.services.disclosures import DisclosureService
from app.services.gating import PaymentGate
from app.services.health import HealthService
from app.services.ingest import IngestService
from app.services.intake import EventIntake
from app.services.media import MediaService
from app.services.metrics import Metrics
from app.services.recordings import RecordingService
from app.services.redaction import RedactionService
from app.services.retention import RetentionService
from app.services.spool import SpoolWatcher
from app.services.tokens import TokenAuthenticator, TokenService
from app.storage.db import Database, create_engine, session_factory
from app.storage.media import build_media_store
from app.telephony.base import RecordingController
from app.telephony.registry import build_controllers
from app.telephony.rtpengine import RtpengineSpoolController
from app.telephony.transport import provider_client


@dataclass
class Services:
    settings: Settings
    clock: Clock
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    db: Database
    http: httpx.AsyncClient
    metrics: Metrics
    controllers: dict[str, RecordingController]
    tasks: BackgroundTasks
    gate: PaymentGate
    ingest: IngestService
    intake: EventIntake
    media: MediaService
    tokens: TokenService
    auth: TokenAuthenticator
    calls: CallQueries
    health: HealthService
    audit: AuditService
    retention: RetentionService
    recordings: RecordingService
    redaction: RedactionService
    disclosures: DisclosureService
    # rtpengine's recording directory, when recgate is given it (RECGATE_RTPENGINE_RECORDING_DIR).
    spool: SpoolWatcher | None = None

    @classmethod
    def build(cls, settings: Settings, clock: Clock = utcnow) -> Services:
        engine = create_engine(settings.database_url)
        sessions = session_factory(engine)
        db = Database(engine, settings.database_url)
        # One shared client for every provider call (app/telephony/transport.py).
        http = provider_client(settings.provider_request_timeout_s)
        auth = TokenAuthenticator(db)
        controllers = build_controllers(settings, http, clock)
        metrics = Metrics(controllers)
        tasks = BackgroundTasks()
        gate = PaymentGate(db, settings, clock, metrics, controllers, tasks)
        ingest = IngestService(
            db,
            settings,
            clock,
            metrics,
            tasks,
            frozenset(name for name, c in controllers.items() if c.call_level_covers_all),
            ivr=gate.answering,
        )
        ingest.on_rows, ingest.on_unreachable = gate.learn, gate.forget_known
        media = MediaService(
            sessions, settings, clock, build_media_store(settings), controllers, tasks
        )
        audit = AuditService(
            sessions, clock, AuditKeys.of(*settings.audit_signing_keys()), media.store
        )
        intake = EventIntake(ingest, gate, media)
        rtp = controllers.get("rtpengine")
        spool = (
            SpoolWatcher(rtp.spool, intake) if isinstance(rtp, RtpengineSpoolController) else None
        )
        return cls(
            settings=settings,
            clock=clock,
            engine=engine,
            sessions=sessions,
            db=db,
            http=http,
            metrics=metrics,
            controllers=controllers,
            tasks=tasks,
            gate=gate,
            ingest=ingest,
            intake=intake,
            media=media,
            tokens=TokenService(sessions, clock, on_revoke=auth.forget),
            auth=auth,
            calls=CallQueries(sessions, audit),
            health=HealthService(sessions, settings, clock, controllers, media.store, metrics),
            audit=audit,
            retention=RetentionService(
                sessions, settings, clock, media.store, controllers, audit, metrics
            ),
            recordings=RecordingService(sessions, clock, media.store, audit),
            redaction=RedactionService(sessions, settings, clock, media.store, audit),
            disclosures=DisclosureService(sessions, clock, media.store, audit),
            spool=spool,
        )

    async def start(self) -> None:
        await self.ingest.start()

    async def close(self) -> None:
        await self.tasks.close()
        await self.ingest.close()
        for controller in self.controllers.values():
            await controller.aclose()
        await self.http.aclose()
        await self.db.close()
        await self.engine.dispose()
