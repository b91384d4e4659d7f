"""The ``recgate`` command.

A mistake a user can make (a wrong URL, token, variable or folder) ends in one line on stderr
that names the thing to fix, and a non-zero exit; a traceback is for ``--debug`` (or
``RECGATE_DEBUG=1``). stdout carries only results, so scripts can read it; progress goes to
stderr, and only when that is a terminal.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import socket
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from pydantic import SecretStr

from app.config import Settings, get_settings
from app.domain.roles import Role

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence
    from datetime import datetime

    import httpx
    from sqlalchemy.ext.asyncio import AsyncEngine

    from app.services.calls import CallDetail
    from app.services.container import Services
    from app.services.retention import SweepResult
    from app.services.tokens import TokenService

cli = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="recgate: payment-safe call recording.",
    # A traceback (--debug) must not print local variables: they hold tokens and secrets.
    pretty_exceptions_show_locals=False,
)
tokens_cli = typer.Typer(no_args_is_help=True, help="API tokens: create, list, revoke.")
cli.add_typer(tokens_cli, name="tokens")
calls_cli = typer.Typer(no_args_is_help=True, help="Calls: what recgate knows of one.")
cli.add_typer(calls_cli, name="calls")
retention_cli = typer.Typer(no_args_is_help=True, help="Retention: the sweep and what is due.")
cli.add_typer(retention_cli, name="retention")
audit_cli = typer.Typer(no_args_is_help=True, help="The audit trail.")
cli.add_typer(audit_cli, name="audit")
subject_access_cli = typer.Typer(no_args_is_help=True, help="Subject access requests.")
cli.add_typer(subject_access_cli, name="subject-access")

T = TypeVar("T")
_TRUE = {"1", "true", "yes", "on"}
_debug = False


class CliError(Exception):
    """A mistake the user can fix: printed as one line, ``recgate: <message>``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recgate")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"recgate {_version()}")
        raise typer.Exit()


@cli.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="RECGATE_DEBUG",
            help="Show the traceback of an error instead of one line (RECGATE_DEBUG=1).",
        ),
    ] = False,
) -> None:
    global _debug
    _debug = debug


# ---- the database: where it is, and what went wrong with it ------------------------------


def _sqlite_path(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _database_name(url: str) -> str:
    """The database as a user can find it: a file's full path, or the URL without password."""
    from sqlalchemy.engine import make_url

    path = _sqlite_path(url)
    where = path.resolve() if path is not None else make_url(url).render_as_string(True)
    return f"at {where} (RECGATE_DATABASE_URL)"


def _require_database(settings: Settings) -> None:
    """Refuse to start on a SQLite file that does not exist: the engine would create an empty
    one (and its folder) wherever the command was run, and the command then fail on it."""
    path = _sqlite_path(settings.database_url)
    if path is None or path.exists():
        return
    relative = "" if path.is_absolute() else ", relative to this folder"
    raise CliError(
        f"no database at {path.resolve()} (RECGATE_DATABASE_URL{relative}): "
        "run `recgate migrate` to create it, or set RECGATE_DATABASE_URL to the service's database"
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _network_reason(exc: BaseException) -> str | None:
    """What a failed connection came to, in words; None when it was no network failure."""
    import httpx

    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "host not found"
        if isinstance(cause, TimeoutError | httpx.TimeoutException):
            return "timed out"
        if isinstance(cause, ConnectionError):
            return "connection lost"
    return None


def _database_problem(exc: BaseException, url: str) -> str | None:
    """One line for a database that cannot serve the command; None for anything else."""
    import sqlalchemy as sa

    from app.storage.db import DatabaseUnreachable

    chain = list(_causes(exc))
    if any(
        type(cause).__name__ == "UndefinedTableError" or "no such table" in str(cause)
        for cause in chain
    ):
        return (
            f"the database {_database_name(url)} has no recgate tables: run `recgate migrate`, "
            "or set RECGATE_DATABASE_URL to the service's database"
        )
    unusable = (
        isinstance(exc, DatabaseUnreachable | sa.exc.TimeoutError | sa.exc.DisconnectionError)
        # Connection and server errors, not a statement's (those would be recgate's bug).
        or (
            isinstance(exc, sa.exc.DBAPIError)
            and not isinstance(
                exc,
                sa.exc.IntegrityError
                | sa.exc.DataError
                | sa.exc.ProgrammingError
                | sa.exc.NotSupportedError,
            )
        )
        # A driver's own connect failure (asyncpg: refused, host not found, timed out). One
        # naming a file is a file's problem, not the database's.
        or (isinstance(exc, OSError) and exc.filename is None)
    )
    if not unusable:
        return None
    deepest = str(chain[-1]).strip().splitlines()
    reason = _network_reason(exc) or (deepest[0] if deepest else type(chain[-1]).__name__)
    return f"cannot use the database {_database_name(url)}: {reason}"


@contextmanager
def _database(settings: Settings, *, must_exist: bool = True) -> Iterator[None]:
    """Around a command's database work: refuse a missing SQLite file before anything creates
    it, and turn a database that cannot be used into one line naming it."""
    if must_exist:
        _require_database(settings)
    try:
        yield
    except BrokenPipeError:  # stdout closed early (`| head`): the CLI's, not the database's
        raise
    except Exception as exc:
        problem = _database_problem(exc, settings.database_url)
        if problem is None:
            raise
        raise CliError(problem) from exc


def _explain(exc: Exception) -> tuple[list[str], int]:
    """The lines (without the ``recgate:`` prefix) and exit code for an error from a command."""
    import httpx
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from app.config import settings_problems
    from app.errors import AppError

    if isinstance(exc, CliError):
        return [exc.message], exc.exit_code
    if isinstance(exc, ValidationError | SettingsError):
        return settings_problems(exc), 2
    if isinstance(exc, AppError):
        return [exc.detail or exc.title], 1
    if isinstance(exc, httpx.HTTPError):
        try:
            where = str(exc.request.url)
        except RuntimeError:  # no request attached
            where = "the server"
        reason = _network_reason(exc) or str(exc) or type(exc).__name__
        return [f"cannot reach {where} ({reason})"], 1
    if isinstance(exc, OSError) and exc.filename is not None:
        return [f"{exc.filename}: {exc.strerror or exc}"], 1
    first = str(exc).strip().splitlines()[:1]
    summary = f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__
    return [
        f"unexpected error: {summary} (run again with --debug, or RECGATE_DEBUG=1, "
        "for the traceback)"
    ], 1


def _fail(message: str, exit_code: int = 1) -> NoReturn:
    raise CliError(message, exit_code)


def _operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user entry (a container)
        return "unknown"


# ---- output: tables and progress ----------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned columns under a header row, for people; every cell is already text."""
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]


def _echo_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    for line in _table(headers, rows):
        typer.echo(line)


def _at(moment: datetime | None) -> str:
    return moment.isoformat(timespec="milliseconds") if moment is not None else "-"


@contextmanager
def _progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr while the block runs, when stderr is a terminal (not in a
    pipe, a log or a test); yields ``advance(n)``."""
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


# ---- commands -----------------------------------------------------------------------------


def _token_service(settings: Settings) -> tuple[AsyncEngine, TokenService]:
    from app.domain.clock import utcnow
    from app.services.tokens import TokenService
    from app.storage.db import create_engine, session_factory

    engine = create_engine(settings.database_url)
    return engine, TokenService(session_factory(engine), utcnow)


def _with_tokens(work: Callable[[TokenService], Awaitable[T]]) -> T:
    """Run ``work`` with the token service on the configured database, then close it."""
    settings = get_settings()

    async def run() -> T:
        engine, service = _token_service(settings)
        try:
            return await work(service)
        finally:
            await engine.dispose()

    with _database(settings):
        return asyncio.run(run())


@cli.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from app.storage.migrate import upgrade

    settings = get_settings()
    with _database(settings, must_exist=False):
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
    _require_database(settings)
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
    token = _with_tokens(lambda service: service.create(name, role))
    typer.echo(f"token {name!r} with role {role.value} created; it is shown only now:")
    typer.echo(token)


@tokens_cli.command("list")
def tokens_list() -> None:
    """List tokens (never their values)."""
    infos = _with_tokens(lambda service: service.list())
    _echo_table(
        ("NAME", "ROLE", "STATUS", "CREATED", "REVOKED"),
        [
            (
                info.name,
                info.role.value,
                "revoked" if info.revoked_at else "active",
                _at(info.created_at),
                _at(info.revoked_at),
            )
            for info in infos
        ],
    )
    typer.echo(f"{len(infos)} token(s)", err=True)


@tokens_cli.command("revoke")
def tokens_revoke(name: Annotated[str, typer.Argument(help="The token's name.")]) -> None:
    """Revoke a token by name; it stops working at once."""
    _with_tokens(lambda service: service.revoke(name))
    typer.echo(f"token {name!r} revoked")


def _with_services(work: Callable[[Services], Awaitable[int]]) -> int:
    """Run ``work`` against the configured database and providers, then close everything."""
    from app.services.container import Services

    settings = get_settings()

    async def run() -> int:
        services = Services.build(settings)
        try:
            return await work(services)
        finally:
            await services.close()

    with _database(settings):
        return asyncio.run(run())


@retention_cli.command("sweep")
def retention_sweep(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count only; delete nothing.")] = False,
) -> None:
    """Delete every due, unheld recording now (as the service does every sweep interval)."""

    async def work(services: Services) -> int:
        if dry_run:
            result = await services.retention.sweep(dry_run=True)
        else:
            result = await _sweep_with_progress(services)
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


async def _sweep_with_progress(services: Services) -> SweepResult:
    """The sweep, with a bar of the recordings due when it began that are gone since.

    The sweep reports nothing until it ends, so the bar counts what is left, twice a second,
    with the read the sweep itself starts with; only when someone is watching (a terminal).
    """
    from app.storage.repositories import RetentionRepository

    if not sys.stderr.isatty():
        return await services.retention.sweep()

    async def left(now: datetime) -> int:
        async with services.sessions() as session:
            return (await RetentionRepository(session).count_due(now))[0]

    began = services.clock()
    total = await left(began)
    sweep = asyncio.create_task(services.retention.sweep())
    with _progress("deleting due recordings", total) as advance:
        shown = 0
        while not sweep.done():
            await asyncio.wait({sweep}, timeout=0.5)
            if not sweep.done():
                done = min(max(total - await left(began), 0), total)
                advance(done - shown)
                shown = done
        advance(total - shown)
    return await sweep


@retention_cli.command("due")
def retention_due(
    within_days: Annotated[int, typer.Option(help="Deadlines within this many days.")] = 30,
    limit: Annotated[int, typer.Option(help="At most this many lines.")] = 100,
) -> None:
    """List recordings whose media deadline falls within the window, soonest first."""

    async def work(services: Services) -> int:
        rows = await services.retention.due(within_days, limit)
        _echo_table(
            ("DUE", "RECORDING", "PROVIDER", "SERVICE AREA", "STATUS"),
            [
                (
                    _at(recording.retention_until),
                    str(recording.id),
                    call.provider,
                    call.service_area or "-",
                    "held" if held else "due",
                )
                for recording, call, held in rows
            ],
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
    from app.api.disclosures import subject_access_read
    from app.services.audit import Actor

    operator = _operator()

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

    raise typer.Exit(_with_services(work))


@calls_cli.command("show")
def calls_show(
    provider: Annotated[str, typer.Argument(help="The provider: generic, twilio, asterisk, …")],
    call_id: Annotated[str, typer.Argument(help="The provider's id of the call.")],
) -> None:
    """Print a call's timeline (every state change of the call, its recordings and payment
    segments, with times and causes), then its recordings, segments and exposures. The read
    is audited, as GET /v1/calls/… is."""
    from app.errors import NotFound
    from app.services.audit import Actor

    actor = Actor(f"cli:{_operator()}", "cli")

    async def work(services: Services) -> int:
        try:
            detail = await services.calls.detail(provider, call_id, actor)
        except NotFound:
            _fail(f"no call {call_id!r} from provider {provider!r} in the database")
        for line in _call_lines(detail):
            typer.echo(line)
        return 0

    raise typer.Exit(_with_services(work))


def _section(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """An indented table, or nothing when there are no rows (the count above says so)."""
    return ["  " + line for line in _table(headers, rows)] if rows else []


def _call_lines(detail: CallDetail) -> list[str]:
    """A call as people read it: its facts, its timeline, then one table per kind of row."""
    call = detail.call
    first = detail.transitions[0].at if detail.transitions else None
    return [
        f"call {call.provider}/{call.provider_call_id}: {call.state}",
        f"  service area {call.service_area or '-'}, direction {call.direction or '-'}",
        f"  started {_at(call.started_at)}, answered {_at(call.answered_at)}, "
        f"ended {_at(call.ended_at)}",
        f"  record kept until {_at(call.record_retention_until)}",
        "",
        f"timeline ({len(detail.transitions)} state changes):",
        *_section(
            ("AT", "+MS", "ENTITY", "ID", "CHANGE", "CAUSE"),
            [
                (
                    _at(t.at),
                    f"{(t.at - first).total_seconds() * 1000:.1f}" if first else "-",
                    t.entity,
                    str(t.entity_id)[:8],
                    f"{t.from_state or '—'} → {t.to_state}",
                    t.cause,
                )
                for t in detail.transitions
            ],
        ),
        "",
        f"recordings ({len(detail.recordings)}):",
        *_section(
            ("ID", "PROVIDER ID", "STATE", "STARTED", "ENDED", "SECONDS", "KEPT UNTIL"),
            [
                (
                    str(r.id),
                    r.provider_recording_id,
                    r.state + (" (quarantined)" if r.quarantined else ""),
                    _at(r.started_at),
                    _at(r.ended_at),
                    f"{r.duration_s:g}" if r.duration_s is not None else "-",
                    _at(r.retention_until),
                )
                for r in detail.recordings
            ],
        ),
        "",
        f"payment segments ({len(detail.segments)}):",
        *_section(
            ("ID", "STATE", "REFERENCE", "OPENED", "PAUSED", "CLOSED", "BY", "OUTCOME"),
            [
                (
                    str(x.id),
                    x.state,
                    x.reference or "-",
                    _at(x.opened_at),
                    _at(x.paused_at),
                    _at(x.closed_at),
                    x.closed_by or "-",
                    x.outcome or "-",
                )
                for x in detail.segments
            ],
        ),
        "",
        f"exposures ({len(detail.exposures)}):",
        *_section(
            ("KIND", "RECORDING", "SEGMENT", "STARTED", "ENDED", "DETAIL"),
            [
                (
                    e.kind,
                    str(e.recording_id)[:8] if e.recording_id else "-",
                    str(e.segment_id)[:8] if e.segment_id else "-",
                    _at(e.started_at),
                    _at(e.ended_at),
                    e.detail or "-",
                )
                for e in detail.exposures
            ],
        ),
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@cli.command()
def demo() -> None:
    """Run one simulated call with a card payment through the service and print its timeline.

    Everything it makes (database, media) lives in a temporary folder, removed when the demo
    ends, whether it succeeds, fails or is interrupted."""
    # ignore_cleanup_errors: a file still held open must not turn a finished demo into an error.
    with tempfile.TemporaryDirectory(prefix="recgate-demo-", ignore_cleanup_errors=True) as tmp:
        _demo(Path(tmp))


def _demo(workdir: Path) -> None:
    import httpx
    import uvicorn

    class _DemoServer(uvicorn.Server):
        # Ctrl-C is the demo's: asyncio.run turns it into KeyboardInterrupt, which stops the
        # call, the server and then removes the folder. Were the server to take it, it would
        # shut down under the simulated call, which would then fail as if it were a bug.
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    from app.main import create_app
    from app.services.tokens import TokenService
    from app.simulator import SimulatedCall, format_timeline
    from app.storage.migrate import upgrade

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    port = _free_port()
    settings = Settings(
        # The demo is development by definition: a simulated PBX and a throwaway secret.
        env="development",
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
        server = _DemoServer(
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
                    f"recgate demo on http://127.0.0.1:{port} (simulated PBX, database "
                    f"{workdir / 'demo.db'}, removed when the demo ends)"
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
        except asyncio.CancelledError:
            # Ctrl-C: stop now, not when the request in flight ends, and quietly: that
            # request is cancelled with everything else, which is no error worth a traceback.
            logging.disable(logging.CRITICAL)
            server.force_exit = True
            raise
        finally:
            server.should_exit = True
            await serving

    asyncio.run(run())


@cli.command()
def simulate(
    calls: Annotated[int, typer.Option(min=1, help="How many calls to drive.")] = 20,
    concurrency: Annotated[int, typer.Option(min=1, help="Calls in flight at once.")] = 5,
    url: Annotated[
        str, typer.Option(help="Base URL of a running recgate.")
    ] = "http://127.0.0.1:8000",
    token: Annotated[
        str | None, typer.Option(envvar="RECGATE_IVR_TOKEN", help="An ivr token.")
    ] = None,
) -> None:
    """Drive N simulated calls with payments through a running service (sim provider).

    Prints a JSON summary on stdout; exits 1 when any call was refused anything, with each
    refusal (step, status, problem type) and how many calls it hit on stderr."""
    import httpx

    from app.simulator import CallOutcome, SimulatedCall

    if token is None:
        _fail(
            "needs an ivr token: --token or RECGATE_IVR_TOKEN "
            "(recgate tokens create --name NAME --role ivr)",
            2,
        )
    # This process is the simulated PBX and IVR, not the service: it needs only the secret it
    # signs with, so it reads the configuration without the service's production checks.
    key = Settings(env="development", sim_enabled=True).webhook_key("sim")
    if key is None:
        _fail(
            "needs RECGATE_GENERIC_WEBHOOK_SECRET, the service's own (make run keeps it in "
            "var/dev.env): the simulated PBX signs its webhooks with a key derived from it",
            2,
        )
    try:
        base = httpx.URL(url)
    except httpx.InvalidURL as exc:
        _fail(f"--url {url!r} is not a URL ({exc})", 2)
    if base.scheme not in ("http", "https") or not base.host:
        _fail(f"--url {url!r} is not an http(s) URL, e.g. http://127.0.0.1:8000", 2)

    async def run() -> tuple[list[CallOutcome], float]:
        limit = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            where = str(client.base_url)
            await _check_recgate(client, where)
            with _progress("calls", calls) as advance:

                async def one() -> CallOutcome:
                    async with limit:
                        call = SimulatedCall(client, key, token)
                        try:
                            outcome = await call.run()
                        except httpx.TransportError as exc:
                            reason = _network_reason(exc) or type(exc).__name__
                            outcome = CallOutcome(
                                call.call_id, False, [f"cannot reach {where} ({reason})"]
                            )
                    advance(1)
                    return outcome

                began = time.perf_counter()
                results = await asyncio.gather(*(one() for _ in range(calls)))
                return results, time.perf_counter() - began

    results, took = asyncio.run(run())
    failed = [outcome for outcome in results if outcome.failures]
    summary = {
        "calls": calls,
        "safe_to_collect": sum(1 for outcome in results if outcome.safe_to_collect),
        "failed": len(failed),
        "seconds": round(took, 3),
    }
    typer.echo(json.dumps(summary))
    if failed:
        reasons = Counter(reason for outcome in failed for reason in set(outcome.failures))
        listed = "; ".join(f"{count} × {reason}" for reason, count in reasons.most_common())
        hint = ""
        if any("HTTP 401" in reason and "payment" in reason for reason in reasons):
            hint = " (--token / RECGATE_IVR_TOKEN must be an ivr token of this service)"
        elif any("HTTP 401" in reason and "webhook" in reason for reason in reasons):
            hint = " (RECGATE_GENERIC_WEBHOOK_SECRET must be the service's own)"
        elif any("provider-not-enabled" in reason for reason in reasons):
            hint = " (is the simulator on at the service? RECGATE_SIM_ENABLED, on in development)"
        _fail(f"{len(failed)} of {calls} calls failed: {listed}{hint}")


async def _check_recgate(client: httpx.AsyncClient, where: str) -> None:
    """One request before the calls, so a wrong URL is one line, not N failed calls."""
    import httpx

    try:
        response = await client.get("/livez")
    except httpx.TransportError as exc:
        _fail(f"cannot reach {where} ({_network_reason(exc) or type(exc).__name__})")
    if response.status_code != 200:
        _fail(f"{where} does not answer as recgate does: GET /livez → HTTP {response.status_code}")


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:  # before a command ran (typer handles it inside one)
        sys.exit(130)
    except Exception as exc:
        if _debug or os.environ.get("RECGATE_DEBUG", "").strip().lower() in _TRUE:
            raise
        lines, exit_code = _explain(exc)
        for line in lines:
            typer.echo(f"recgate: {line}", err=True)
        sys.exit(exit_code)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
