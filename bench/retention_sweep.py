"""The retention sweep over a large recordings table: due rows deleted per second, peak memory.

    .venv/bin/python bench/retention_sweep.py [--backend sqlite|postgres|both]
        [--rows N --due M | --scales 10k:1k,100k:10k,1M:100k]
        [--trace separate|inline|off] [--baseline-scale smallest|none|ROWS:DUE]

For each backend and scale (rows:due): a fresh database built by the Alembic migrations,
bulk-loaded with one call per recording (SQLite: executemany in one transaction, values
through the columns' own bind processors; PostgreSQL: COPY through asyncpg's
``copy_records_to_table``, then ANALYZE of the loaded tables). Every due recording (deadline
in the past, spread evenly through the table) gets a real 44-byte WAV file in a temporary
media directory; 1 % of the due ones are under an active hold on the recording and 0.1 %
under a hold on their caller's number (the sweep must skip both), another 1 % carry a
released hold (deleted like the rest). Recordings not yet due have a ``media_path`` but no
file: the sweep never touches them. Calls' record deadlines are years away, so no call record
is erased. Each round sweeps its own copy of the loaded database.

``RetentionService.sweep()`` runs in a fresh child process, built by ``Services.build`` from
``Settings`` (local media store; no provider keeps a copy, so no provider deletion is timed).
Reported per scale: rows/s (due rows deleted per second of sweep), the tracemalloc peak
during the sweep, and the child's RSS before the sweep and at its peak during the sweep
(VmRSS sampled every 20 ms; not ``ru_maxrss``, which imports reach first). With
``--trace separate`` (default) the timed sweep runs without tracemalloc, whose allocation
hooks slow this code about 2×, and the tracemalloc peak comes from a second sweep over a
copy of the same data; ``--trace inline`` takes both from one sweep (rows/s pessimistic);
``--trace off`` skips tracemalloc. Memory flatness is the largest scale over the smallest,
in the same run. At ``--baseline-scale`` (default: the smallest) the pre-batching sweep loop
(``_delete_one`` per claimed recording) also runs, for a same-run speed ratio.

After every sweep the parent checks, in SQL: exactly the due, unheld recordings are
tombstoned (state, reason, media path cleared), held and not-yet-due ones untouched, one
audit entry and one state transition per deleted recording, the audit chain verifies
(``AuditService.verify()``), and the media directory holds exactly the held recordings'
files. Results go to bench/results/retention_sweep.md. The PostgreSQL server comes from
RECGATE_BENCH_POSTGRES_URL (default postgresql+asyncpg://postgres@127.0.0.1:5432/test); a
scratch database is created there and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.storage.models import Call, LegalHold, Recording  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "retention_sweep.md"
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DEFAULT_SCALES = "10k:1k,100k:10k,1M:100k"
CHUNK = 50_000
HELD_CALLER = "+441632960000"
# A valid, empty 8 kHz mono WAV: the smallest honest recording.
WAV = (
    b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00@\x1f\x00\x00"
    b"\x80>\x00\x00\x02\x00\x10\x00data\x00\x00\x00\x00"
)
CATEGORIES = ("due", "released", "held", "callerheld", "keep")
DELETED_CATEGORIES = frozenset({"due", "released"})
CHILD_TIMEOUT_S = 3600


def parse_count(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    for suffix, factor in (("k", 1_000), ("m", 1_000_000)):
        if text.endswith(suffix):
            return int(float(text[:-1]) * factor)
    return int(text)


@dataclass(frozen=True, slots=True)
class Scale:
    rows: int
    due: int

    @property
    def label(self) -> str:
        return f"{self.rows:,} / {self.due:,}"


def category(i: int, scale: Scale) -> str:
    """Which kind recording number ``i`` is: due ones are spread evenly through the table."""
    step = scale.rows // scale.due
    j, rest = divmod(i, step)
    if rest or j >= scale.due:
        return "keep"
    if j % 100 == 1:
        return "held"
    if j % 1000 == 7:
        return "callerheld"
    if j % 100 == 3:
        return "released"
    return "due"


def expected_counts(scale: Scale) -> dict[str, int]:
    counts = dict.fromkeys(CATEGORIES, 0)
    step = scale.rows // scale.due
    for j in range(scale.due):
        counts[category(j * step, scale)] += 1
    counts["keep"] = scale.rows - sum(counts[c] for c in CATEGORIES if c != "keep")
    return counts


# ---- data -------------------------------------------------------------------------------


CALL_COLUMNS = (
    "id",
    "provider",
    "provider_call_id",
    "state",
    "service_area",
    "from_number",
    "to_number",
    "direction",
    "agent_id",
    "started_at",
    "answered_at",
    "ended_at",
    "record_retention_until",
    "created_at",
    "updated_at",
)
RECORDING_COLUMNS = (
    "id",
    "call_id",
    "provider_recording_id",
    "state",
    "started_at",
    "stopped_at",
    "completed_at",
    "ended_at",
    "duration_s",
    "media_format",
    "media_files",
    "media_path",
    "media_size",
    "media_fetch_attempts",
    "quarantined",
    "retention_until",
    "created_at",
    "updated_at",
)
HOLD_COLUMNS = (
    "id",
    "recording_id",
    "caller",
    "reason",
    "reference",
    "placed_by",
    "placed_at",
    "released_by",
    "released_at",
)
AREAS = ("council_tax", "benefits", "environmental", "adult_social_care", "highways", "other")


@dataclass
class Chunk:
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    recordings: list[tuple[Any, ...]] = field(default_factory=list)
    holds: list[tuple[Any, ...]] = field(default_factory=list)
    media: list[str] = field(default_factory=list)


def generate(scale: Scale, now: datetime) -> Iterator[Chunk]:
    """The rows, ``CHUNK`` recordings at a time (so the loader's memory stays bounded)."""
    year = 365 * 86400
    for start in range(0, scale.rows, CHUNK):
        chunk = Chunk()
        for i in range(start, min(start + CHUNK, scale.rows)):
            kind = category(i, scale)
            # Due: deadline 1 day to ~1 year ago; not due: 1 day to ~18 months ahead.
            spread = timedelta(seconds=(i * 7919) % year)
            if kind == "keep":
                retention_until = now + timedelta(days=1) + spread * 1.5
            else:
                retention_until = now - timedelta(days=1) - spread
            ended = retention_until - timedelta(days=548)
            started = ended - timedelta(minutes=6)
            call_id, recording_id = uuid.uuid4(), uuid.uuid4()
            caller = HELD_CALLER if kind == "callerheld" else f"+4479{i:08d}"
            chunk.calls.append(
                (
                    call_id,
                    "generic",
                    f"bench-call-{i}",
                    "ended",
                    AREAS[i % len(AREAS)],
                    caller,
                    "+441632960999",
                    "inbound",
                    f"agent-{i % 300}",
                    started,
                    started + timedelta(seconds=20),
                    ended,
                    ended + timedelta(days=6 * 365),
                    started,
                    ended,
                )
            )
            media_path = f"{recording_id}.wav"
            chunk.recordings.append(
                (
                    recording_id,
                    call_id,
                    f"{kind}-{i}",
                    "available",
                    started,
                    ended,
                    ended,
                    ended,
                    360.0,
                    "wav",
                    1,
                    media_path,
                    len(WAV),
                    1,
                    False,
                    retention_until,
                    started,
                    ended,
                )
            )
            if kind != "keep":
                chunk.media.append(media_path)
            if kind in ("held", "released"):
                released = kind == "released"
                chunk.holds.append(
                    (
                        uuid.uuid4(),
                        recording_id,
                        None,
                        "legal_claim",
                        f"CLAIM-{i}",
                        "bench-dpo",
                        ended,
                        "bench-dpo" if released else None,
                        ended + timedelta(days=30) if released else None,
                    )
                )
        if start == 0:
            chunk.holds.append(
                (
                    uuid.uuid4(),
                    None,
                    HELD_CALLER,
                    "police_investigation",
                    "POL-1",
                    "bench-dpo",
                    now - timedelta(days=400),
                    None,
                    None,
                )
            )
        yield chunk


def write_media(media_dir: Path, names: list[str]) -> None:
    media_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        fd = os.open(media_dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, WAV)
        finally:
            os.close(fd)


def load_sqlite(path: Path, scale: Scale, now: datetime) -> list[str]:
    """executemany on the stdlib driver, every table in one transaction; values go through
    the columns' own SQLAlchemy bind processors, so they are stored exactly as the app
    stores them (UUIDs as hex, UTC timestamps as text). Returns the due media names."""
    from sqlalchemy.dialects.sqlite import pysqlite

    dialect = pysqlite.dialect()
    tables = []
    for table, columns, attr in (
        (Call.__table__, CALL_COLUMNS, "calls"),
        (Recording.__table__, RECORDING_COLUMNS, "recordings"),
        (LegalHold.__table__, HOLD_COLUMNS, "holds"),
    ):
        processors = [
            table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns
        ]
        sql = (
            f"INSERT INTO {table.name} ({', '.join(columns)}) "  # type: ignore[attr-defined]
            f"VALUES ({', '.join('?' * len(columns))})"
        )
        tables.append((sql, processors, attr))
    media: list[str] = []
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous=OFF")
        db.execute("BEGIN")
        for chunk in generate(scale, now):
            for sql, processors, attr in tables:
                db.executemany(
                    sql,
                    (
                        [v if f is None else f(v) for f, v in zip(processors, row, strict=True)]
                        for row in getattr(chunk, attr)
                    ),
                )
            media += chunk.media
        db.execute("COMMIT")
        # One self-contained file to copy for each round; the app turns WAL back on.
        db.execute("PRAGMA journal_mode=DELETE")
    finally:
        db.close()
    return media


async def load_postgres(url: str, scale: Scale, now: datetime) -> list[str]:
    """COPY through asyncpg on the raw connection; returns the due media names."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    media: list[str] = []
    try:
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            async with raw.transaction():
                for chunk in generate(scale, now):
                    await raw.copy_records_to_table(
                        "calls", records=chunk.calls, columns=CALL_COLUMNS
                    )
                    await raw.copy_records_to_table(
                        "recordings", records=chunk.recordings, columns=RECORDING_COLUMNS
                    )
                    if chunk.holds:
                        await raw.copy_records_to_table(
                            "legal_holds", records=chunk.holds, columns=HOLD_COLUMNS
                        )
                    media += chunk.media
            # What autovacuum would do shortly after a load this size. Only the loaded tables:
            # analysing the empty audit_entries would record it as empty (reltuples 0), and
            # with autovacuum off (as on the test server) nothing would correct that, so the
            # audit chain's head lookup could keep a plan made for an empty table.
            await raw.execute("ANALYZE calls, recordings, legal_holds")
    finally:
        await engine.dispose()
    return media


# ---- databases --------------------------------------------------------------------------


async def pg_admin(server_url: str, *statements: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


class Backend:
    """A loaded template database per scale, cloned for every sweep round."""

    name: str

    def create_template(self, scale: Scale, now: datetime) -> list[str]:
        raise NotImplementedError

    def clone(self) -> str:
        raise NotImplementedError

    def drop_clone(self, url: str) -> None:
        raise NotImplementedError

    def drop_template(self) -> None:
        raise NotImplementedError


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.template = workdir / "template.db"

    def create_template(self, scale: Scale, now: datetime) -> list[str]:
        from app.storage.migrate import upgrade

        self.template.unlink(missing_ok=True)
        upgrade(f"sqlite+aiosqlite:///{self.template}")
        return load_sqlite(self.template, scale, now)

    def clone(self) -> str:
        path = self.workdir / f"sweep-{uuid.uuid4().hex[:8]}.db"
        shutil.copyfile(self.template, path)
        return f"sqlite+aiosqlite:///{path}"

    def drop_clone(self, url: str) -> None:
        path = Path(sa.engine.make_url(url).database or "")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    def drop_template(self) -> None:
        self.template.unlink(missing_ok=True)


class PostgresBackend(Backend):
    name = "postgres"

    def __init__(self, server_url: str) -> None:
        self.server = sa.engine.make_url(server_url)
        self.admin_url = self.server.render_as_string(hide_password=False)
        self.template: str | None = None

    def _url(self, database: str) -> str:
        return self.server.set(database=database).render_as_string(hide_password=False)

    def create_template(self, scale: Scale, now: datetime) -> list[str]:
        from app.storage.migrate import upgrade

        self.template = f"recgate_bench_{uuid.uuid4().hex[:10]}"
        asyncio.run(pg_admin(self.admin_url, f'CREATE DATABASE "{self.template}"'))
        url = self._url(self.template)
        upgrade(url)
        return asyncio.run(load_postgres(url, scale, now))

    def clone(self) -> str:
        assert self.template is not None
        name = f"{self.template}_{uuid.uuid4().hex[:6]}"
        asyncio.run(
            pg_admin(self.admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        )
        return self._url(name)

    def drop_clone(self, url: str) -> None:
        name = sa.engine.make_url(url).database
        asyncio.run(pg_admin(self.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def drop_template(self) -> None:
        if self.template is not None:
            asyncio.run(
                pg_admin(self.admin_url, f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
            )
            self.template = None


# ---- the sweep, in a child process ------------------------------------------------------


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """The highest VmRSS seen while it runs, sampled every 20 ms from a thread."""

    def __init__(self) -> None:
        import threading

        self.peak_kib = _rss_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_kib = max(self.peak_kib, _rss_kib())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, _rss_kib())


async def per_recording_sweep(services: Any) -> Any:
    """The sweep as it was before batching: each claimed recording through ``_delete_one``
    (the manual-deletion path), one read, one media deletion and one transaction at a time."""
    from app.services.audit import SYSTEM_SWEEP
    from app.services.retention import _LEASE, SWEEP_BATCH, SweepResult
    from app.storage.repositories import RetentionRepository

    service = services.retention
    result = SweepResult(dry_run=False)
    async with service.sessions() as session, session.begin():
        _, result.skipped_held = await RetentionRepository(session).count_due(service.clock())
    while True:
        async with service.sessions() as session, session.begin():
            now = service.clock()
            claimed = await RetentionRepository(session).claim_due(now, now + _LEASE, SWEEP_BATCH)
        if not claimed:
            return result
        for recording_id in claimed:
            error = await service._delete_one(recording_id, "retention", SYSTEM_SWEEP)
            if error is None:
                result.deleted += 1
            else:
                result.errors += 1
                result.error_details.append(error)


async def child_sweep(
    url: str, media_dir: str, trace: bool, profile: str | None, per_recording: bool = False
) -> dict[str, Any]:
    import tracemalloc

    from app.config import Settings
    from app.services.container import Services

    settings = Settings(
        env="development",  # a bench database, no audit key: not a production site
        database_url=url,
        media_dir=Path(media_dir),
        sim_enabled=False,
        background_jobs=False,
        log_level="WARNING",
        _env_file=None,
    )
    services = Services.build(settings)
    try:
        async with services.engine.connect() as conn:  # a running service has a warm pool
            await conn.execute(sa.text("SELECT 1"))
        rss_before = _rss_kib()
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        if trace:
            tracemalloc.start()
        with RssSampler() as rss:
            began = time.perf_counter()
            if per_recording:
                result = await per_recording_sweep(services)
            else:
                result = await services.retention.sweep()
            seconds = time.perf_counter() - began
        peak = tracemalloc.get_traced_memory()[1] if trace else None
        tracemalloc.stop()
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)
        return {
            "deleted": result.deleted,
            "skipped_held": result.skipped_held,
            "errors": result.errors,
            "records_erased": result.records_erased,
            "error_details": result.error_details[:3],
            "seconds": seconds,
            "tracemalloc_peak": peak,
            "rss_before_kib": rss_before,
            "rss_peak_kib": rss.peak_kib,
            "rss_after_kib": _rss_kib(),
            "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }
    finally:
        await services.close()


def run_child(
    url: str, media_dir: Path, trace: bool, profile: Path | None, per_recording: bool = False
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECGATE_")}
    env["RECGATE_ALEMBIC_DIR"] = str(ROOT / "alembic")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", url, str(media_dir)]
    if trace:
        command.append("--child-trace")
    if per_recording:
        command.append("--child-per-recording")
    if profile is not None:
        command += ["--profile", str(profile)]
    done = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
    )
    if done.returncode != 0:
        raise RuntimeError(f"sweep child failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---- checks -----------------------------------------------------------------------------


async def verify(url: str, media_dir: Path, scale: Scale, swept: dict[str, Any]) -> list[str]:
    """Everything that must hold after the sweep; an empty list when it all does."""
    from app.config import Settings
    from app.services.container import Services

    expected = expected_counts(scale)
    to_delete = sum(expected[c] for c in DELETED_CATEGORIES)
    held = expected["held"] + expected["callerheld"]
    problems: list[str] = []
    if (swept["deleted"], swept["skipped_held"], swept["errors"]) != (to_delete, held, 0):
        problems.append(
            f"sweep said deleted={swept['deleted']} skipped_held={swept['skipped_held']} "
            f"errors={swept['errors']} {swept['error_details']}, expected {to_delete}/{held}/0"
        )
    services = Services.build(
        Settings(
            env="development",
            database_url=url,
            media_dir=media_dir,
            sim_enabled=False,
            background_jobs=False,
            _env_file=None,
        )
    )
    try:
        async with services.engine.connect() as conn:

            async def scalar(sql: str, **params: Any) -> Any:
                return (await conn.execute(sa.text(sql), params)).scalar_one()

            for kind in CATEGORIES:
                total, deleted = (
                    await conn.execute(
                        sa.text(
                            "SELECT count(*), count(deleted_at) FROM recordings "
                            "WHERE provider_recording_id LIKE :p"
                        ),
                        {"p": f"{kind}-%"},
                    )
                ).one()
                want = expected[kind] if kind in DELETED_CATEGORIES else 0
                if (total, deleted) != (expected[kind], want):
                    problems.append(
                        f"{kind}: {deleted} of {total} deleted, expected {want} of {expected[kind]}"
                    )
            bad_tombstones = await scalar(
                "SELECT count(*) FROM recordings WHERE deleted_at IS NOT NULL AND ("
                "state <> 'deleted' OR deleted_reason <> 'retention' OR media_path IS NOT NULL "
                "OR sweep_lease_until IS NOT NULL OR deletion_error IS NOT NULL)"
            )
            if bad_tombstones:
                problems.append(f"{bad_tombstones} deleted recordings with a malformed tombstone")
            untouched = await scalar(
                "SELECT count(*) FROM recordings WHERE deleted_at IS NULL AND ("
                "state <> 'available' OR media_path IS NULL OR sweep_lease_until IS NOT NULL)"
            )
            if untouched:
                problems.append(f"{untouched} undeleted recordings were modified")
            audits = await scalar(
                "SELECT count(*) FROM audit_entries WHERE action = 'recording.deleted'"
            )
            audited = await scalar(
                "SELECT count(DISTINCT a.target_id) FROM audit_entries a "
                "WHERE a.action = 'recording.deleted' AND a.actor = 'retention-sweep'"
            )
            transitions = await scalar(
                "SELECT count(*) FROM state_transitions WHERE to_state = 'deleted' "
                "AND from_state = 'available' AND cause = 'deleted: retention'"
            )
            if (audits, audited, transitions) != (to_delete,) * 3:
                problems.append(
                    f"{audits} audit entries ({audited} recordings), {transitions} transitions; "
                    f"expected {to_delete} each"
                )
            kept = set(
                (
                    await conn.execute(
                        sa.text(
                            "SELECT media_path FROM recordings WHERE deleted_at IS NULL "
                            "AND (provider_recording_id LIKE 'held-%' "
                            "OR provider_recording_id LIKE 'callerheld-%')"
                        )
                    )
                ).scalars()
            )
        left = {entry.name for entry in os.scandir(media_dir)}
        if left != kept:
            problems.append(
                f"media dir holds {len(left)} files, expected the {len(kept)} held ones "
                f"({len(left - kept)} unexpected, {len(kept - left)} missing)"
            )
        chain = await services.audit.verify()
        if not chain.ok or chain.entries != to_delete:
            problems.append(
                f"audit chain ok={chain.ok} entries={chain.entries} bad={chain.first_bad_seq}"
            )
    finally:
        await services.close()
    return problems


# ---- driving it -------------------------------------------------------------------------


@dataclass
class Row:
    backend: str
    scale: Scale
    load_s: float
    timed: dict[str, Any]
    traced: dict[str, Any]
    checks: list[str]
    baseline: dict[str, Any] | None = None


def run_scale(
    backend: Backend,
    scale: Scale,
    workdir: Path,
    trace: str,
    profile: Path | None,
    baseline: bool,
) -> Row:
    def log(message: str) -> None:
        print(f"[{backend.name} {scale.label}] {message}", file=sys.stderr, flush=True)

    now = datetime.now(UTC)
    began = time.perf_counter()
    media = backend.create_template(scale, now)
    load_s = time.perf_counter() - began
    log(f"loaded in {load_s:.1f} s ({len(media):,} media files per round)")
    rounds = {
        "separate": [("timed", False), ("traced", True)],
        "inline": [("timed", True)],
        "off": [("timed", False)],
    }[trace]
    if baseline:
        rounds.insert(0, ("per-recording", False))
    results: dict[str, dict[str, Any]] = {}
    checks: list[str] = []
    try:
        for name, traced in rounds:
            url = backend.clone()
            media_dir = workdir / f"media-{uuid.uuid4().hex[:8]}"
            try:
                write_media(media_dir, media)
                swept = run_child(
                    url,
                    media_dir,
                    traced,
                    profile if name == "timed" else None,
                    per_recording=name == "per-recording",
                )
                results[name] = swept
                log(
                    f"{name}: deleted {swept['deleted']:,} in {swept['seconds']:.1f} s "
                    f"({swept['deleted'] / swept['seconds']:,.0f} rows/s)"
                    + (
                        f", tracemalloc peak {swept['tracemalloc_peak'] / 2**20:.2f} MiB"
                        if swept["tracemalloc_peak"] is not None
                        else ""
                    )
                )
                problems = asyncio.run(verify(url, media_dir, scale, swept))
                checks += [f"{name}: {p}" for p in problems]
                log(
                    f"{name}: checks {'passed' if not problems else 'FAILED: ' + '; '.join(problems)}"
                )
            finally:
                backend.drop_clone(url)
                shutil.rmtree(media_dir, ignore_errors=True)
    finally:
        backend.drop_template()
    timed = results["timed"]
    return Row(
        backend.name,
        scale,
        load_s,
        timed,
        results.get("traced", timed),
        checks,
        results.get("per-recording"),
    )


def _machine() -> list[str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return [
        f"- Machine: {cpu}, nproc {os.cpu_count()}, memory {mem}, "
        f"{platform.platform()}, Python {platform.python_version()}, "
        f"SQLAlchemy {sa.__version__}",
    ]


def _pg_version(server_url: str) -> str:
    from sqlalchemy.ext.asyncio import create_async_engine

    async def version() -> str:
        engine = create_async_engine(server_url)
        try:
            async with engine.connect() as conn:
                return str((await conn.execute(sa.text("SHOW server_version"))).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(version())


def report(
    rows: list[Row], trace: str, versions: dict[str, str], walls: dict[str, float], load: float
) -> str:
    command = ".venv/bin/python bench/" + " ".join(
        shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]
    )
    lines = [
        "# Retention sweep: due rows deleted per second and peak memory",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Command: `{command}`",
        *_machine(),
        f"- Load average when the run started: {load:.2f}",
        *(f"- {name}: {v}" for name, v in versions.items()),
        "- Data per scale: one call per recording; due recordings spread evenly through the "
        "table, each with a real 44-byte WAV file in a local media directory; 1 % of the due "
        "ones held on the recording, 0.1 % held on their caller's number, 1 % with a released "
        "hold. Local media store, no provider copy to delete.",
        "- Timing: `RetentionService.sweep()` alone, in a fresh child process with a warm "
        "connection pool; rows/s = due rows deleted / sweep seconds. "
        + {
            "separate": "The tracemalloc peak comes from a second sweep over a copy of the same "
            "data, so the timed sweep runs without tracemalloc.",
            "inline": "tracemalloc was on during the timed sweep (rows/s pessimistic).",
            "off": "tracemalloc not used.",
        }[trace],
        "- RSS: the child's resident set after `Services.build` and a first query (before), and "
        "the highest VmRSS sampled every 20 ms during the sweep of the timed round (peak).",
        "",
    ]
    for backend in dict.fromkeys(r.backend for r in rows):
        mine = [r for r in rows if r.backend == backend]
        lines += [
            f"## {backend}",
            "",
            "| rows | due | deleted | held skipped | load s | sweep s | rows/s "
            "| tracemalloc peak MiB | RSS before MiB | RSS peak MiB | RSS growth MiB | checks |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in mine:
            t = r.timed
            peak = _mib(r.traced["tracemalloc_peak"])
            before, top = t["rss_before_kib"] / 1024, t["rss_peak_kib"] / 1024
            lines.append(
                f"| {r.scale.rows:,} | {r.scale.due:,} | {t['deleted']:,} | "
                f"{t['skipped_held']:,} | {r.load_s:.1f} | {t['seconds']:.1f} | "
                f"{t['deleted'] / t['seconds']:,.0f} | {peak} | {before:.1f} | {top:.1f} | "
                f"{top - before:.1f} | {'pass' if not r.checks else 'FAIL'} |"
            )
        if len(mine) > 1:
            small, large = mine[0], mine[-1]
            rate_ratio = (large.timed["deleted"] / large.timed["seconds"]) / (
                small.timed["deleted"] / small.timed["seconds"]
            )
            rss_ratio = large.timed["rss_peak_kib"] / small.timed["rss_peak_kib"]
            traced = (
                f"tracemalloc peak **{large.traced['tracemalloc_peak'] / small.traced['tracemalloc_peak']:.2f}×**, "
                if small.traced["tracemalloc_peak"]
                else ""
            )
            lines += [
                "",
                f"Flatness, largest / smallest scale ({large.scale.rows // small.scale.rows}× "
                f"the rows, {large.scale.due // small.scale.due}× the due rows): {traced}"
                f"RSS peak {rss_ratio:.2f}×; rows/s {rate_ratio:.2f}×.",
            ]
        for r in mine:
            if r.baseline is None:
                continue
            before = r.baseline["deleted"] / r.baseline["seconds"]
            after = r.timed["deleted"] / r.timed["seconds"]
            lines += [
                "",
                f"Same run, {r.scale.label}: the per-recording sweep (the loop before batching: "
                f"`_delete_one` per claimed recording) deleted {r.baseline['deleted']:,} in "
                f"{r.baseline['seconds']:.1f} s, {before:,.0f} rows/s; batched {after:,.0f} "
                f"rows/s, **{after / before:.1f}×**.",
            ]
        lines += [
            "",
            f"Wall time for {backend}, loading and checks included: {walls[backend] / 60:.1f} min.",
        ]
        failed = [f"{r.scale.label}: {c}" for r in mine for c in r.checks]
        if failed:
            lines += ["", "Checks that failed:", "", *(f"- {c}" for c in failed)]
        lines.append("")
    return "\n".join(lines)


def _mib(size: int | None) -> str:
    return "—" if size is None else f"{size / 2**20:.2f}"


def parse_scales(args: argparse.Namespace) -> list[Scale]:
    if args.rows is not None or args.due is not None:
        if args.rows is None or args.due is None:
            raise SystemExit("--rows and --due go together")
        pairs = [(args.rows, args.due)]
    else:
        pairs = []
        for item in args.scales.split(","):
            rows, due = item.split(":")
            pairs.append((parse_count(rows), parse_count(due)))
    scales = [Scale(rows, due) for rows, due in pairs]
    for scale in scales:
        if not 0 < scale.due <= scale.rows or scale.rows > 10_000_000:
            raise SystemExit(f"bad scale {scale}: need 0 < due <= rows <= 10M")
    return sorted(scales, key=lambda s: s.rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--rows", type=parse_count)
    parser.add_argument("--due", type=parse_count)
    parser.add_argument(
        "--scales", default=DEFAULT_SCALES, help="rows:due pairs, smallest first (k, M allowed)"
    )
    parser.add_argument("--trace", choices=("separate", "inline", "off"), default="separate")
    parser.add_argument(
        "--baseline-scale",
        default="smallest",
        help="rows:due at which the per-recording sweep also runs, for a same-run ratio "
        "('smallest', 'none', or one of the scales)",
    )
    parser.add_argument("--profile", type=Path, help="cProfile the timed sweep into this file")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=2, metavar=("URL", "MEDIA_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--child-trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-per-recording", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        url, media_dir = args.child
        profile = str(args.profile) if args.profile else None
        swept = child_sweep(url, media_dir, args.child_trace, profile, args.child_per_recording)
        print(json.dumps(asyncio.run(swept)))
        return

    scales = parse_scales(args)
    baseline_scale: Scale | None = None
    if args.baseline_scale == "smallest":
        baseline_scale = scales[0]
    elif args.baseline_scale != "none":
        rows_text, due_text = args.baseline_scale.split(":")
        baseline_scale = Scale(parse_count(rows_text), parse_count(due_text))
        if baseline_scale not in scales:
            raise SystemExit(f"--baseline-scale {args.baseline_scale} is not one of the scales")
    load = os.getloadavg()[0]
    # A terminated run still drops its scratch databases and files (the finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server_url = os.environ.get("RECGATE_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)
    rows: list[Row] = []
    walls: dict[str, float] = {}
    versions = {"SQLite": sqlite3.sqlite_version}
    with tempfile.TemporaryDirectory(prefix="recgate-bench-sweep-") as tmp:
        workdir = Path(tmp)
        for name in ("sqlite", "postgres"):
            if args.backend not in (name, "both"):
                continue
            backend: Backend
            if name == "sqlite":
                backend = SqliteBackend(workdir)
            else:
                backend = PostgresBackend(server_url)
                versions["PostgreSQL"] = _pg_version(server_url)
            began = time.perf_counter()
            for scale in scales:
                rows.append(
                    run_scale(
                        backend, scale, workdir, args.trace, args.profile, scale == baseline_scale
                    )
                )
            walls[name] = time.perf_counter() - began
    text = report(rows, args.trace, versions, walls, load)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    if any(r.checks for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
