"""Shared fixtures: a migrated database per backend, the app, tokens, a signed-webhook helper.

The same API tests run on SQLite and on PostgreSQL. The schema is built by the Alembic
migrations, once per session; each test then gets an empty database (a copy of the migrated
SQLite file, or truncated PostgreSQL tables), so tests can use real concurrency and commits.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import respx
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import Settings
from app.domain.clock import Clock, utcnow
from app.domain.roles import Role
from app.main import create_app
from app.services.container import Services
from app.storage.db import Database, create_engine
from app.storage.migrate import upgrade
from app.telephony.signing import signed_headers
from app.telephony.transport import Http1Transport


class _RecgateTransportMocker(respx.mocks.HTTPCoreMocker):
    """respx's default mocker (httpcore's pool, under httpx's own transport), extended to
    recgate's provider transport (app/telephony/transport.py), which takes and gives httpx's
    own requests and responses: every test's PBX stands in for the network whichever
    transport the client has, and the tests' ASGI client to recgate is left alone, as
    before. tests/unit/test_transport.py runs the transport itself on sockets."""

    name = "recgate"
    targets: ClassVar[list[str]] = [
        *respx.mocks.HTTPCoreMocker.targets,
        "app.telephony.transport.Http1Transport",
    ]

    @classmethod
    def to_httpx_request(cls, **kwargs: Any) -> httpx.Request:
        request = kwargs["request"]
        if isinstance(request, httpx.Request):
            return request
        return super().to_httpx_request(**kwargs)  # type: ignore[no-untyped-call,no-any-return]

    @classmethod
    async def from_async_httpx_response(
        cls, httpx_response: httpx.Response, target: object, **kwargs: Any
    ) -> object:
        if isinstance(target, Http1Transport):
            return httpx_response
        return await super().from_async_httpx_response(  # type: ignore[no-untyped-call]
            httpx_response, target, **kwargs
        )


respx.mocks.DEFAULT_MOCKER = _RecgateTransportMocker.name

# recgate is production-strict unless told otherwise; the tests run it as a development site
# (simulator on, no audit key required), here for every Settings() the tests and the
# processes they start build. A test of production passes env="production" itself.
os.environ["RECGATE_ENV"] = "development"

SECRET = "whsec_" + base64.b64encode(b"recgate-test-secret-0123456789ab").decode()
ASTERISK_SECRET = "whsec_" + base64.b64encode(b"recgate-test-asterisk-0123456789").decode()
CONTROL_URL = "http://127.0.0.1:9/pbx"
POSTGRES_URL = os.environ.get("RECGATE_TEST_POSTGRES_URL")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@contextmanager
def scratch_postgres(prefix: str) -> Iterator[str]:
    """A database of its own on the test server (``RECGATE_TEST_POSTGRES_URL``), with no
    tables, dropped afterwards. Skips (or fails, when PostgreSQL is required) without one."""
    if not POSTGRES_URL:
        if os.environ.get("RECGATE_TEST_REQUIRE_POSTGRES"):
            pytest.fail("RECGATE_TEST_REQUIRE_POSTGRES is set but RECGATE_TEST_POSTGRES_URL is not")
        pytest.skip("PostgreSQL tests skipped: set RECGATE_TEST_POSTGRES_URL to run them")
    server = make_url(POSTGRES_URL)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    async def admin(statement: str) -> None:
        engine = create_async_engine(server, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text(statement))
        finally:
            await engine.dispose()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, built by the migrations, dropped after."""
    with scratch_postgres("recgate_test") as url:
        upgrade(url)
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "recgate.db"
        shutil.copyfile(template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    url: str = request.getfixturevalue("postgres_database")
    emptied(url)
    yield url


@asynccontextmanager
async def own_database(url: str) -> AsyncIterator[Database]:
    """A :class:`Database` of its own on ``url``, closed with its engine afterwards."""
    engine = create_engine(url)
    database = Database(engine, url)
    try:
        yield database
    finally:
        await database.close()
        await engine.dispose()


def emptied(url: str) -> str:
    """``url``'s PostgreSQL database with every table emptied (the migrations' own kept)."""

    async def truncate() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                tables = (
                    (
                        await conn.execute(
                            sa.text(
                                "SELECT tablename FROM pg_tables WHERE schemaname='public' AND tablename <> 'alembic_version'"
                            )
                        )
                    )
                    .scalars()
                    .all()
                )
                await conn.execute(
                    sa.text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
                )
        finally:
            await engine.dispose()

    asyncio.run(truncate())
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        env="development",
        database_url=database_url,
        media_dir=tmp_path / "media",
        generic_webhook_secret=SECRET,
        asterisk_webhook_secret=ASTERISK_SECRET,
        generic_control_url=CONTROL_URL,
        # Generous for a loaded CI machine; tests that need a deadline to pass make the PBX
        # slower than this rather than relying on a tight value.
        pause_timeout_ms=1500,
        provider_request_timeout_s=1.0,
        sim_pause_latency_ms=0,
        background_jobs=False,
        # Batches are applied in the test's own process (a worker per app would cost each test
        # a second interpreter); tests/integration/test_ingest_worker.py runs the worker, and
        # the processes tests start run it as production does.
        ingest_worker=False,
        _env_file=None,
    )


@dataclass
class Harness:
    """The running app, an HTTP client for it, and a token per role."""

    client: httpx.AsyncClient
    services: Services
    tokens: dict[Role, str]

    def auth(self, role: Role) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[role]}"}

    async def send_event(
        self,
        event: dict[str, Any],
        provider: str = "generic",
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = json.dumps(event).encode()
        signed = signed_headers(
            self.services.settings.webhook_key(provider) or b"", body, self.services.clock(), msg_id
        )
        signed["content-type"] = "application/json"
        signed.update(headers or {})
        return await self.client.post(f"/v1/webhooks/{provider}", content=body, headers=signed)

    async def recording_id(self, call_id: str, provider_recording_id: str) -> str:
        """recgate's id of the recording a provider names so."""
        async with self.services.engine.connect() as conn:
            found = (
                await conn.execute(
                    sa.text(
                        "SELECT r.id FROM recordings r JOIN calls c ON c.id = r.call_id "
                        "WHERE c.provider_call_id = :c AND r.provider_recording_id = :r"
                    ),
                    {"c": call_id, "r": provider_recording_id},
                )
            ).scalar_one()
        return str(uuid.UUID(str(found)))

    async def count(self, table: str) -> int:
        async with self.services.engine.connect() as conn:
            return int((await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one())


@pytest.fixture
def make_harness(settings: Settings) -> Callable[..., Any]:
    """Build a harness, optionally with changed settings: ``async with make_harness(x=1) as h``."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def build(clock: Clock = utcnow, **overrides: Any) -> AsyncIterator[Harness]:
        # Validated like real configuration, so overrides are typed as the environment would be.
        app = create_app(
            Settings(**{**settings.model_dump(), **overrides}, _env_file=None),
            clock=clock,
        )
        async with app.router.lifespan_context(app):
            services: Services = app.state.services
            tokens = {
                role: await services.tokens.create(f"test-{role.value}", role) for role in Role
            }
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://recgate.test"
            ) as client:
                yield Harness(client, services, tokens)
            await services.tasks.drain()

    return build


@pytest.fixture
async def harness(make_harness: Callable[..., Any]) -> AsyncIterator[Harness]:
    async with make_harness() as h:
        yield h


def event(
    type_: str,
    call_id: str = "c-123",
    recording_id: str | None = None,
    at: str | None = None,
    **call: Any,
) -> dict[str, Any]:
    """A generic-contract event body."""
    body: dict[str, Any] = {
        "type": type_,
        "occurred_at": at or datetime.now(UTC).isoformat(),
        "call": {
            "id": call_id,
            "from": "+441632960001",
            "to": "+441632960999",
            "direction": "inbound",
            "service_area": "council_tax",
            **call,
        },
    }
    if recording_id is not None:
        body["recording"] = {"id": recording_id, "format": "wav"}
    return body


class FakeClock:
    """A clock tests move by hand: ``clock.now = …`` or ``clock.advance(seconds=…)``."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        from datetime import timedelta

        self.now += timedelta(**delta)


@pytest.fixture
async def answering_pbx() -> AsyncIterator[respx.MockRouter]:
    """The generic PBX's control URL, confirming every pause and resume at once."""
    async with respx.mock(assert_all_called=False) as router:
        for action, state in (("pause", "paused"), ("resume", "recording")):
            router.post(
                url__regex=rf"{re.escape(CONTROL_URL)}/calls/.*/recording/{action}"
            ).respond(200, json={"state": state})
        yield router


async def assert_failure_observed(h: Harness, response: httpx.Response, route: str) -> None:
    """A request a route answers outside the framework's layers (``app/api/front.py``) failed
    unexpectedly: it still gets what those layers give, a problem document, the request id,
    its duration counted under the route's template; other methods on its path are the
    framework's (405)."""
    path = response.request.url.path
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["instance"] == path
    assert response.headers["x-request-id"]
    metrics = await h.client.get("/metrics", headers=h.auth(Role.OPS))
    assert (
        f'recgate_http_request_duration_seconds_count{{method="POST",route="{route}",status="500"}} 1.0'
        in metrics.text
    )
    assert (await h.client.get(path)).status_code == 405
