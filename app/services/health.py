"""Readiness checks, the ops status summary and the gauges behind /metrics (SPEC §3.5)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.clock import Clock
from app.logging import scrub_log_text
from app.services.metrics import Metrics
from app.storage.media import MediaStore
from app.storage.repositories import (
    CallRepository,
    ExposureRepository,
    HealthRepository,
    RetentionRepository,
    SegmentRepository,
)
from app.telephony.base import ProviderError, RecordingController
from app.telephony.registry import enabled_providers

_DB_CHECK_TIMEOUT_S = 2.0
# A load balancer polling often costs one round of probes per window, not one per poll.
READINESS_CACHE_S = 5.0
# A provider probe's bound (also capped by RECGATE_PROVIDER_REQUEST_TIMEOUT_S).
PROBE_TIMEOUT_S = 2.0
# A payment's end asked this long ago with the segment still open: the resume is stuck.
STUCK_RESUME_S = 60
AUTOVACUUM_OFF = (
    "autovacuum is off: the tables are never analysed, so the query plans of the hot paths "
    "(webhook ingest, payment start and end) stay those made when the tables were small, and "
    "every statement costs more as they grow; dead rows are never reclaimed either "
    "(docs/deploy.md)"
)


@dataclass(frozen=True, slots=True)
class Readiness:
    status: str  # pass | warn | fail
    checks: dict[str, list[dict[str, Any]]]

    @property
    def ready(self) -> bool:
        """What a load balancer is told: pass and warn are ready, fail is not."""
        return self.status != "fail"

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
        metrics: Metrics | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.controllers = controllers
        self.store = store
        self.metrics = metrics
        self.cache_s = READINESS_CACHE_S
        self.probe_timeout_s = min(PROBE_TIMEOUT_S, settings.provider_request_timeout_s)
        # The store's configuration is read once, at the first readiness check after start-up
        # (a 1-tuple once known, so "no warning" is remembered too).
        self._store_warning: tuple[str | None] | None = None
        # (loop time it was computed at, the answer); one computation at a time.
        self._cached: tuple[float, Readiness] | None = None
        self._computing = asyncio.Lock()

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
        """Every check, probing each enabled provider; the same answer for ``cache_s``
        seconds (concurrent callers share one computation)."""
        loop = asyncio.get_running_loop()
        if (fresh := self._fresh(loop.time())) is not None:
            return fresh
        async with self._computing:
            if (fresh := self._fresh(loop.time())) is not None:
                return fresh
            started = loop.time()
            readiness = await self._compute()
            self._cached = (started, readiness)
        if self.metrics is not None:
            self.metrics.set_readiness(
                readiness.ready,
                {
                    name: any(entry["status"] == "fail" for entry in entries)
                    for name, entries in readiness.checks.items()
                },
            )
        return readiness

    def _fresh(self, now: float) -> Readiness | None:
        cached = self._cached
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        return None

    async def _compute(self) -> Readiness:
        now = self.clock()
        enabled = enabled_providers(self.settings)
        # The database and every provider at once: the slowest one bounds the answer.
        (db, overdue, overlong), maintenance, *probed = await asyncio.gather(
            self._database_check(now),
            self._maintenance_check(),
            *(self._provider_check(p, now) for p in enabled),
        )
        checks: dict[str, list[dict[str, Any]]] = {"database:connection": [db]}
        if maintenance is not None:
            checks["database:maintenance"] = [maintenance]
        entry: dict[str, Any]
        if not enabled:
            checks["providers"] = [{"status": "warn", "output": "no telephony provider is enabled"}]
        for provider, provider_entry in zip(enabled, probed, strict=True):
            checks[f"provider:{provider}"] = [provider_entry]
        if self.store is not None:
            warning = await self._media_store_warning()
            entry = (
                {"status": "pass", "output": self.store.describe()}
                if warning is None
                else {"status": "warn", "output": f"{self.store.describe()}: {warning}"}
            )
            checks["storage:media"] = [entry]
        if overdue is not None:
            checks["retention:overdue"] = [
                {
                    "status": "pass" if overdue == 0 else "warn",
                    "observedValue": overdue,
                    "observedUnit": "recordings",
                    "time": now.isoformat(),
                }
            ]
        if overlong is not None:
            # A recording paused for longer than policy allows: someone must look at the call.
            checks["payments:overlong"] = [
                {
                    "status": "pass" if overlong == 0 else "warn",
                    "observedValue": overlong,
                    "observedUnit": "payment segments open too long",
                    "time": now.isoformat(),
                }
            ]
        statuses = {e["status"] for entries in checks.values() for e in entries}
        status = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
        return Readiness(status=status, checks=checks)

    async def _database_check(self, now: datetime) -> tuple[dict[str, Any], int | None, int | None]:
        """The connection check, and the counts read over it (None when it failed)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        overdue: int | None = None
        overlong: int | None = None
        try:
            async with asyncio.timeout(_DB_CHECK_TIMEOUT_S):
                async with self.sessions() as session:
                    await HealthRepository(session).ping()
                    elapsed = loop.time() - started
                    overdue, _ = await RetentionRepository(session).count_due(now)
                    overlong = await SegmentRepository(session).count_open_since_before(
                        now - timedelta(seconds=self.settings.max_pause_s)
                    )
            entry: dict[str, Any] = {"status": "pass", **_timing(elapsed, now)}
        except Exception:  # any failure to reach the database makes us not ready
            entry = {
                "status": "fail",
                **_timing(loop.time() - started, now),
                "output": "database unreachable",
            }
        return {"componentType": "datastore", **entry}, overdue, overlong

    async def _maintenance_check(self) -> dict[str, Any] | None:
        """A warning while the PostgreSQL server runs without autovacuum. None otherwise,
        and when the setting cannot be read: the connection check tells of a database that
        cannot be reached, and a setting that cannot be read is no reason to stop serving."""
        try:
            async with asyncio.timeout(_DB_CHECK_TIMEOUT_S):
                async with self.sessions() as session:
                    off = await HealthRepository(session).autovacuum_off()
        except Exception:
            return None
        return {"status": "warn", "output": AUTOVACUUM_OFF} if off else None

    async def _provider_check(self, provider: str, now: datetime) -> dict[str, Any]:
        controller = self.controllers.get(provider)
        if controller is None:
            return {
                "status": "warn",
                "output": "webhooks accepted but no recording control configured",
            }
        loop = asyncio.get_running_loop()
        timeout_s = self.probe_timeout_s
        described = controller.describe()
        started = loop.time()
        try:
            async with asyncio.timeout(timeout_s):
                seen = await controller.probe(timeout_s)
            status, output = "pass", f"{described}: {seen}" if seen else described
        except TimeoutError:
            status, output = "fail", f"{described}: no answer within {timeout_s:g} s"
        except ProviderError as exc:
            status, output = "fail", f"{described}: {scrub_log_text(str(exc))}"
        except Exception as exc:  # a broken probe is a failed check, never a failed /readyz
            status, output = "fail", f"{described}: probe failed ({type(exc).__name__})"
        return {
            "status": status,
            "componentType": "system",
            **_timing(loop.time() - started, now),
            "output": output,
        }

    async def database_gauges(self) -> dict[str, float] | None:
        """The row counts /metrics exports (SPEC §3.5); None when the database cannot be read
        (the gauges are then left out rather than shown stale)."""
        now = self.clock()
        try:
            async with asyncio.timeout(_DB_CHECK_TIMEOUT_S):
                async with self.sessions() as session:
                    segments = SegmentRepository(session)
                    return {
                        "recgate_active_calls": await CallRepository(session).count_active(),
                        "recgate_open_payment_segments": await segments.count_open(),
                        "recgate_retention_overdue": (
                            await RetentionRepository(session).count_due(now)
                        )[0],
                        "recgate_overlong_payment_segments": (
                            await segments.count_open_since_before(
                                now - timedelta(seconds=self.settings.max_pause_s)
                            )
                        ),
                        "recgate_stuck_resume_segments": await segments.count_resume_stuck(
                            now - timedelta(seconds=STUCK_RESUME_S)
                        ),
                    }
        except Exception:  # readiness reports the database; the scrape still answers
            return None

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


def _timing(seconds: float, now: datetime) -> dict[str, Any]:
    """A check's duration (draft-inadarei-api-health-check ``observedValue`` in ms) and when it
    was observed."""
    return {
        "observedValue": round(seconds * 1000, 1),
        "observedUnit": "ms",
        "time": now.isoformat(),
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
