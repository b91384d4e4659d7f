"""What the benchmarks share: a free loopback port, a scratch PostgreSQL database."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A scratch PostgreSQL database on ``server_url``'s server, dropped afterwards."""
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    name = f"recgate_bench_{uuid.uuid4().hex[:10]}"
    admin = server.render_as_string(hide_password=False)
    _sql(admin, f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        _sql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _sql(url: str, statement: str) -> str | None:
    """``statement`` on ``url``, outside a transaction; the first column of its first row,
    as text, when it returns rows."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> str | None:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                result = await conn.execute(text(statement))
                return str(result.scalar()) if result.returns_rows else None
        finally:
            await engine.dispose()

    return asyncio.run(run())


def autovacuum_stand_in(url: str) -> Callable[[], bool]:
    """What the server's autovacuum would have done by now, done by hand when it is off.

    A PostgreSQL server runs autovacuum unless told not to; this machine's is told not to.
    Without it, a scratch database's tables are never analysed, so the plans of prepared
    statements made while they were nearly empty (sequential scans) are kept as they grow,
    and the cost of every hot-path statement grows with them: measured, the server's CPU
    per ingested event went from 186 to 363 µs over six rounds (docs/benchmarks.md). The
    returned function runs ``VACUUM ANALYZE`` on the database when the server's autovacuum
    is off (and says whether it did), nothing otherwise (and nothing on SQLite)."""
    if url.startswith("sqlite") or _sql(url, "SHOW autovacuum") == "on":
        return lambda: False

    def settle() -> bool:
        _sql(url, "VACUUM ANALYZE")
        return True

    return settle
