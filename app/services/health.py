"""Readiness checks, the ops status summary and the gauges behind /metrics (SPEC §3.5)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.clock import Clock
from app.storage.media import MediaStore
from app.storage.repositories import (
    CallRepository,
    ExposureRepository,
    HealthRepository,
    RetentionRepository,
    SegmentRepository,
)
from app.telephony.base import RecordingController
from app.telephony.registry import enabled_providers

_DB_CHECK_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Readiness:
    status: str  # pass | warn | fail
    checks: dict[str, list[dict[str, Any]]]

    def detailed(self) -> dict[str, Any]:
        """The application/health+json document for operators: hosts, counts and messages."""
        return {"status": self.status, "checks": self.checks}

    def minimal(self) -> dict[str, Any]:
        """The document for anyone else (load balancers, the internet): each check's name and
        status only. Hosts, counts and messages tell an attacker what is behind the service
        and when it is struggling."""
        return {
            "status": self.status,
            "checks": {
                name: [{"status": entry["status"]} for entry in entries]
                for name, entries in self.checks.items()
            },
        }


class HealthService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        clock: Clock,
        controllers: dict[str, RecordingController],
        store: MediaStore | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.controllers = controllers
        self.store = store
        # The store's configuration is read once, at the first readiness check after start-up
        # (a 1-tuple once known, so "no warning" is remembered too).
        self._store_warning: tuple[str | None] | None = None

    async def _media_store_warning(self) -> str | None:
        if self.store is None:
            return None
        if self._store_warning is None:
            try:
                async with asyncio.timeout(_DB_CHECK_TIMEOUT_S):
                    self._store_warning = (await self.store.deletion_warning(),)
            except TimeoutError:
                return "the media store's configuration could not be read yet"
        return self._store_warning[0]

    async def readiness(self) -> Readiness:
        now = self.clock()
        checks: dict[str, list[dict[str, Any]]] = {}
        statuses: list[str] = []
        overdue: int | None = None
        overlong: int | None = None
        try:
            async with asyncio.timeout(_DB_CHECK_TIMEOUT_S):
                async with self.sessions() as session:
                    repo = HealthRepository(session)
                    await repo.ping()
                    overdue, _ = await RetentionRepository(session).count_due(now)
                    overlong = await SegmentRepository(session).count_open_since_before(
                        now - timedelta(seconds=self.settings.max_pause_s)
                    )
            db = {"status": "pass", "time": now.isoformat()}
        except Exception:  # any failure to reach the database makes us not ready
            db = {"status": "fail", "time": now.isoformat(), "output": "database unreachable"}
        checks["database:connection"] = [db]
        statuses.append(db["status"])
        entry: dict[str, Any]
        enabled = enabled_providers(self.settings)
        if not enabled:
            checks["providers"] = [{"status": "warn", "output": "no telephony provider is enabled"}]
            statuses.append("warn")
        for provider in enabled:
            controller = self.controllers.get(provider)
            if controller is None:
                entry = {
                    "status": "warn",
                    "output": "webhooks accepted but no recording control configured",
                }
            else:
                entry = {"status": "pass", "output": controller.describe()}
            checks[f"provider:{provider}"] = [entry]
            statuses.append(entry["status"])
        if self.store is not None:
            warning = await self._media_store_warning()
            entry = (
                {"status": "pass", "output": self.store.describe()}
                if warning is None
                else {"status": "warn", "output": f"{self.store.describe()}: {warning}"}
            )
            checks["storage:media"] = [entry]
            statuses.append(entry["status"])
        if overdue is not None:
            entry = {
                "status": "pass" if overdue == 0 else "warn",
                "observedValue": overdue,
                "observedUnit": "recordings",
            }
            checks["retention:overdue"] = [entry]
            statuses.append(str(entry["status"]))
        if overlong is not None:
            # A recording paused for longer than policy allows: someone must look at the call.
            entry = {
                "status": "pass" if overlong == 0 else "warn",
                "observedValue": overlong,
                "observedUnit": "payment segments open too long",
            }
            checks["payments:overlong"] = [entry]
            statuses.append(str(entry["status"]))
        status = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
        return Readiness(status=status, checks=checks)

    async def summary(self) -> dict[str, Any]:
        now = self.clock()
        day_ago = now - timedelta(hours=24)
        async with self.sessions() as session:
            return {
                "active_calls": await CallRepository(session).count_active(),
                "open_segments": await SegmentRepository(session).count_open(),
                "pause_failures_24h": await SegmentRepository(session).count_pause_failures_since(
                    day_ago
                ),
                "exposures_24h": await ExposureRepository(session).count_since(day_ago),
                "retention_overdue": (await RetentionRepository(session).count_due(now))[0],
                "last_sweep_at": _iso(await RetentionRepository(session).last_sweep_at()),
                "provider_copies_held": (
                    await RetentionRepository(session).count_provider_copies_held()
                ),
            }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
