"""The ``recgate`` command."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import SecretStr

from app.config import Settings, get_settings
from app.domain.roles import Role

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncEngine

    from app.services.container import Services
    from app.services.tokens import TokenService

cli = typer.Typer(
    no_args_is_help=True, add_completion=False, help="recgate: payment-safe call recording."
)
tokens_cli = typer.Typer(no_args_is_help=True, help="API tokens: create, list, revoke.")
cli.add_typer(tokens_cli, name="tokens")
retention_cli = typer.Typer(no_args_is_help=True, help="Retention: the sweep and what is due.")
cli.add_typer(retention_cli, name="retention")
audit_cli = typer.Typer(no_args_is_help=True, help="The audit trail.")
cli.add_typer(audit_cli, name="audit")
subject_access_cli = typer.Typer(no_args_is_help=True, help="Subject access requests.")
cli.add_typer(subject_access_cli, name="subject-access")


def _token_service(settings: Settings) -> tuple[AsyncEngine, TokenService]:
    from app.domain.clock import utcnow
    from app.services.tokens import TokenService
    from app.storage.db import create_engine, session_factory

    engine = create_engine(settings.database_url)
    return engine, TokenService(session_factory(engine), utcnow)


@cli.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from app.storage.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    typer.echo("database is at the latest schema")


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (RECGATE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (RECGATE_PORT).")] = None,
) -> None:
    """Run the HTTP service."""
    import uvicorn

    from app.logging import configure_logging
    from app.main import create_app

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )


@tokens_cli.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="A unique name for the token's holder.")],
    role: Annotated[Role, typer.Option(help="The role the token carries.")],
) -> None:
    """Create a token. It is printed once, alone on the last line, and stored only as a hash."""
    from app.errors import AppError

    async def run() -> str:
        engine, service = _token_service(get_settings())
        try:
            return await service.create(name, role)
        finally:
            await engine.dispose()

    try:
        token = asyncio.run(run())
    except AppError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"token {name!r} with role {role.value} created; it is shown only now:")
    typer.echo(token)


@tokens_cli.command("list")
def tokens_list() -> None:
    """List tokens (never their values)."""

    async def run() -> None:
        engine, service = _token_service(get_settings())
        try:
            for info in await service.list():
                status = f"revoked {info.revoked_at.isoformat()}" if info.revoked_at else "active"
                typer.echo(
                    f"{info.name}\t{info.role.value}\t{info.created_at.isoformat()}\t{status}"
                )
        finally:
            await engine.dispose()

    asyncio.run(run())


@tokens_cli.command("revoke")
def tokens_revoke(name: Annotated[str, typer.Argument(help="The token's name.")]) -> None:
    """Revoke a token by name; it stops working at once."""
    from app.errors import AppError

    async def run() -> None:
        engine, service = _token_service(get_settings())
        try:
            await service.revoke(name)
        finally:
            await engine.dispose()

    try:
        asyncio.run(run())
    except AppError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"token {name!r} revoked")


def _with_services(work: Callable[[Services], Awaitable[int]]) -> int:
    """Run ``work`` against the configured database and providers, then close everything."""
    from app.services.container import Services

    async def run() -> int:
        services = Services.build(get_settings())
        try:
            return await work(services)
        finally:
            await services.close()

    return asyncio.run(run())


@retention_cli.command("sweep")
def retention_sweep(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count only; delete nothing.")] = False,
) -> None:
    """Delete every due, unheld recording now (as the service does every sweep interval)."""

    async def work(services: Services) -> int:
        result = await services.retention.sweep(dry_run=dry_run)
        typer.echo(
            json.dumps(
                {
                    "dry_run": result.dry_run,
                    "deleted": result.deleted,
                    "skipped_held": result.skipped_held,
                    "errors": result.errors,
                    "records_erased": result.records_erased,
                }
            )
        )
        for detail in result.error_details:
            typer.echo(f"error: {detail}", err=True)
        return 1 if result.errors else 0

    raise typer.Exit(_with_services(work))


@retention_cli.command("due")
def retention_due(
    within_days: Annotated[int, typer.Option(help="Deadlines within this many days.")] = 30,
    limit: Annotated[int, typer.Option(help="At most this many lines.")] = 100,
) -> None:
    """List recordings whose media deadline falls within the window, soonest first."""

    async def work(services: Services) -> int:
        rows = await services.retention.due(within_days, limit)
        for recording, call, held in rows:
            until = recording.retention_until.isoformat() if recording.retention_until else "-"
            typer.echo(
                f"{until}\t{recording.id}\t{call.provider}\t{call.service_area or '-'}"
                f"\t{'held' if held else 'due'}"
            )
        typer.echo(f"{len(rows)} recording(s)", err=True)
        return 0

    raise typer.Exit(_with_services(work))


@audit_cli.command("verify")
def audit_verify() -> None:
    """Recompute the audit HMAC chain and hold it against the last checkpoint; exit 1 if it is
    broken (first_bad_seq names the first bad entry)."""

    async def work(services: Services) -> int:
        check = await services.audit.verify()
        typer.echo(
            json.dumps(
                {
                    "ok": check.ok,
                    "entries": check.entries,
                    "head": check.head,
                    "first_bad_seq": check.first_bad_seq,
                    "reason": check.reason,
                    "unkeyed": check.unkeyed,
                    "checkpoint": check.checkpoint,
                }
            )
        )
        return 0 if check.ok else 1

    raise typer.Exit(_with_services(work))


@subject_access_cli.command("export")
def subject_access_export(
    caller: Annotated[str, typer.Option(help="The caller's number, any formatting.")],
    out: Annotated[Path, typer.Option(help="The zip archive to write.")],
) -> None:
    """Write everything held for a caller to one zip: metadata.json (as GET
    /v1/subject-access answers), the media still held, and manifest.json (sha256, size)."""
    import getpass

    from app.api.disclosures import subject_access_read
    from app.errors import AppError
    from app.services.audit import Actor

    try:
        operator = getpass.getuser()
    except (KeyError, OSError):  # no user entry (a container)
        operator = "unknown"

    async def work(services: Services) -> int:
        result = await services.disclosures.export(
            caller,
            Actor(f"cli:{operator}", "cli"),
            out,
            lambda report: subject_access_read(report).model_dump(mode="json"),
        )
        for item in result.withheld:
            typer.echo(f"withheld {item['recording_id']}: {item['reason']}", err=True)
        typer.echo(f"{result.path}: {len(result.files)} file(s)")
        return 0

    try:
        code = _with_services(work)
    except AppError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from exc
    raise typer.Exit(code)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@cli.command()
def demo() -> None:
    """Run one simulated call with a card payment through the service and print its timeline."""
    import httpx
    import uvicorn

    from app.main import create_app
    from app.services.tokens import TokenService
    from app.simulator import SimulatedCall, format_timeline
    from app.storage.migrate import upgrade

    workdir = Path(tempfile.mkdtemp(prefix="recgate-demo-"))
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    port = _free_port()
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{workdir / 'demo.db'}",
        media_dir=workdir / "media",
        generic_webhook_secret=SecretStr(secret),
        sim_enabled=True,
        host="127.0.0.1",
        port=port,
    )
    upgrade(settings.database_url)

    async def run() -> None:
        app = create_app(settings)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        )
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.02)
        try:
            tokens = TokenService(app.state.services.sessions, app.state.services.clock)
            ivr = await tokens.create("demo-ivr", Role.IVR)
            reader = await tokens.create("demo-supervisor", Role.SUPERVISOR)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                key = settings.webhook_key("sim")
                assert key is not None
                call = SimulatedCall(client, key, ivr)
                typer.echo(
                    f"recgate demo on http://127.0.0.1:{port} (simulated PBX, database {workdir / 'demo.db'})"
                )
                typer.echo(
                    f"call {call.call_id}: started, answered, recording {call.recording_id} started"
                )
                await call.event("call.started")
                await call.event("call.answered")
                await call.event("recording.started")
                started = time.perf_counter()
                response = await call.payment("start", {"reference": "demo-payment"})
                elapsed = (time.perf_counter() - started) * 1000
                body = response.json()
                typer.echo(
                    f"IVR payment start → HTTP {response.status_code}, state {body['state']}, "
                    f"safe_to_collect {body['safe_to_collect']} ({elapsed:.0f} ms)"
                )
                typer.echo("… caller keys card details; nothing is recorded …")
                response = await call.payment("end", {"outcome": "authorised"})
                typer.echo(
                    f"IVR payment end → HTTP {response.status_code}, state {response.json()['state']}"
                )
                await call.event("recording.stopped")
                await call.event("call.ended")
                await call.event("recording.completed", duration_s=95)
                detail = await client.get(
                    f"/v1/calls/sim/{call.call_id}", headers={"authorization": f"Bearer {reader}"}
                )
                detail.raise_for_status()
                data = detail.json()
                typer.echo("")
                typer.echo("timeline:")
                for line in format_timeline(data):
                    typer.echo("  " + line)
                typer.echo("")
                typer.echo(
                    f"call {data['state']}; recording {data['recordings'][0]['state']}, "
                    f"kept until {data['recordings'][0]['retention_until']}; exposures: {len(data['exposures'])}"
                )
        finally:
            server.should_exit = True
            await serving

    asyncio.run(run())


@cli.command()
def simulate(
    calls: Annotated[int, typer.Option(help="How many calls to drive.")] = 20,
    concurrency: Annotated[int, typer.Option(help="Calls in flight at once.")] = 5,
    url: Annotated[
        str, typer.Option(help="Base URL of a running recgate.")
    ] = "http://127.0.0.1:8000",
    token: Annotated[
        str | None, typer.Option(envvar="RECGATE_IVR_TOKEN", help="An ivr token.")
    ] = None,
) -> None:
    """Drive N simulated calls with payments through a running service (sim provider)."""
    import httpx

    from app.simulator import SimulatedCall

    settings = get_settings()
    key = settings.webhook_key("sim")
    if key is None or token is None:
        typer.echo(
            "error: needs RECGATE_GENERIC_WEBHOOK_SECRET, the simulator enabled "
            "(RECGATE_SIM_ENABLED, on in development) and an ivr token (--token)",
            err=True,
        )
        raise typer.Exit(2)

    async def run() -> None:
        limit = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def one() -> dict[str, object]:
                async with limit:
                    return await SimulatedCall(client, key, token).run()

            began = time.perf_counter()
            results = await asyncio.gather(*(one() for _ in range(calls)))
            took = time.perf_counter() - began
        safe = sum(1 for r in results if r["safe_to_collect"])
        typer.echo(json.dumps({"calls": calls, "safe_to_collect": safe, "seconds": round(took, 3)}))

    asyncio.run(run())


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
