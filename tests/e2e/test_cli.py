"""The recgate command, run as a user runs it: a real process against a real database file.

Every command runs in a folder of its own (``cwd``), so a command that wrongly created
``./var/recgate.db`` would be caught, and with only the ``RECGATE_*`` variables a test gives.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.simulator import SimulatedCall
from tests.conftest import SECRET, scratch_postgres

RECGATE = str(Path(sys.executable).with_name("recgate"))
DEVELOPMENT = {"RECGATE_ENV": "development"}


def environment(db: Path | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without any RECGATE_ variable, then the test's own."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RECGATE_")}
    if db is not None:
        env["RECGATE_DATABASE_URL"] = f"sqlite+aiosqlite:///{db}"
    env.update(extra if extra is not None else DEVELOPMENT)
    return env


def run(
    args: list[str],
    db: Path | None,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [RECGATE, *args],
        env=environment(db, env),
        cwd=cwd or (db.parent if db is not None else None),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``recgate: …`` line a mistake must give, and nothing that looks like a bug."""
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("recgate: "), lines[0]
    return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "cli.db"
    run(["migrate"], path)
    return path


def test_version_is_the_installed_distribution() -> None:
    result = run(["--version"], None)
    assert result.stdout.strip() == f"recgate {version('recgate')}"


def test_tokens_create_list_revoke(db: Path) -> None:
    created = run(["tokens", "create", "--name", "ivr-desk-1", "--role", "ivr"], db)
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("rg_") and len(token) > 40, "the token alone is on the last line"

    header, row = run(["tokens", "list"], db).stdout.splitlines()
    assert header.split() == ["NAME", "ROLE", "STATUS", "CREATED", "REVOKED"]
    assert row.split()[:3] == ["ivr-desk-1", "ivr", "active"]
    assert row.index("ivr-desk-1") == header.index("NAME"), "columns line up under the header"
    assert row.index("active") == header.index("STATUS")
    assert token not in row, "a token is shown once, never listed"

    duplicate = run(["tokens", "create", "--name", "ivr-desk-1", "--role", "ops"], db, check=False)
    assert duplicate.returncode == 1 and "exists" in one_line(duplicate)

    run(["tokens", "revoke", "ivr-desk-1"], db)
    row = run(["tokens", "list"], db).stdout.splitlines()[1]
    assert row.split()[2] == "revoked" and row.split()[4] != "-", "revoked, and when"
    unknown = run(["tokens", "revoke", "nobody"], db, check=False)
    assert unknown.returncode == 1 and "nobody" in one_line(unknown)


def test_tokens_create_refuses_unknown_role(db: Path) -> None:
    result = run(["tokens", "create", "--name", "x", "--role", "root"], db, check=False)
    assert result.returncode != 0


def test_retention_due_prints_a_header_even_with_nothing_due(db: Path) -> None:
    result = run(["retention", "due"], db)
    assert result.stdout.split() == ["DUE", "RECORDING", "PROVIDER", "SERVICE", "AREA", "STATUS"]
    assert "0 recording(s)" in result.stderr


# ---- mistakes: one line naming the thing to fix, a non-zero exit, nothing created ----------


@pytest.mark.parametrize(
    "args",
    [
        # One command per way in: the token commands, those on every service, and serve.
        ["tokens", "list"],
        ["retention", "sweep"],
        ["calls", "show", "sim", "c-1"],
        ["serve", "--port", "9"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_a_command_run_where_there_is_no_database_says_so_and_creates_none(
    tmp_path: Path, args: list[str]
) -> None:
    result = run(args, None, check=False, cwd=tmp_path)  # the default ./var/recgate.db
    line = one_line(result)
    assert result.returncode == 1
    assert f"no database at {tmp_path / 'var' / 'recgate.db'}" in line, line
    assert "recgate migrate" in line and "RECGATE_DATABASE_URL" in line, line
    assert not (tmp_path / "var").exists(), "nothing may be created where the command ran"


def test_a_database_without_tables_is_named_with_the_way_out(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    result = run(["tokens", "list"], empty, check=False)
    line = one_line(result)
    assert result.returncode == 1
    assert f"the database at {empty}" in line and "no recgate tables" in line, line
    assert "recgate migrate" in line


def test_an_unreachable_postgresql_is_one_line_without_its_password(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql+asyncpg://recgate:hunter2-secret@127.0.0.1:{port}/recgate"
    result = run(
        ["tokens", "list"],
        None,
        check=False,
        cwd=tmp_path,
        env={**DEVELOPMENT, "RECGATE_DATABASE_URL": url},
    )
    line = one_line(result)
    assert result.returncode == 1
    assert f"postgresql+asyncpg://recgate:***@127.0.0.1:{port}/recgate" in line, line
    assert "RECGATE_DATABASE_URL" in line and "connection refused" in line, line
    assert "hunter2-secret" not in result.stderr + result.stdout


@pytest.fixture
def empty_postgres_database() -> Iterator[str]:
    """A PostgreSQL database of this test's own, with no tables; dropped after."""
    with scratch_postgres("recgate_cli") as url:
        yield url


def test_a_postgresql_database_without_tables_says_to_migrate(
    tmp_path: Path, empty_postgres_database: str
) -> None:
    env = {**DEVELOPMENT, "RECGATE_DATABASE_URL": empty_postgres_database}
    result = run(["tokens", "list"], None, check=False, cwd=tmp_path, env=env)
    line = one_line(result)
    assert result.returncode == 1
    assert "has no recgate tables" in line and "recgate migrate" in line, line
    assert empty_postgres_database.rsplit("/", 1)[-1] in line, "the database is named"


def test_an_invalid_setting_names_its_variable(tmp_path: Path) -> None:
    result = run(
        ["tokens", "list"],
        None,
        check=False,
        cwd=tmp_path,
        env={**DEVELOPMENT, "RECGATE_PORT": "abc"},
    )
    line = one_line(result)
    assert result.returncode == 2
    assert line.startswith("recgate: RECGATE_PORT is invalid: input should be a valid integer")
    assert not (tmp_path / "var").exists()


def test_production_is_the_default_and_says_how_to_opt_out(db: Path) -> None:
    result = run(["tokens", "list"], db, check=False, env={})  # no RECGATE_ENV at all
    line = one_line(result)
    assert result.returncode == 2
    assert "RECGATE_AUDIT_KEY is required in production" in line, line
    assert "RECGATE_ENV=development" in line, line


def test_production_refuses_the_simulator_by_its_variable(db: Path) -> None:
    result = run(["tokens", "list"], db, check=False, env={"RECGATE_SIM_ENABLED": "true"})
    line = one_line(result)
    assert result.returncode == 2 and "RECGATE_SIM_ENABLED must be off in production" in line


def test_a_file_that_cannot_be_written_is_named(db: Path) -> None:
    out = db.parent / "no-such-folder" / "export.zip"
    args = ["subject-access", "export", "--caller", "+441632960001", "--out", str(out)]
    result = run(args, db, check=False)
    line = one_line(result)
    assert result.returncode == 1
    assert str(out.parent) in line and "No such file or directory" in line, line

    debugged = run(["--debug", *args], db, check=False)
    assert debugged.returncode != 0 and "Traceback" in debugged.stderr, "--debug shows the trace"


def test_simulate_against_a_closed_port_names_the_url(tmp_path: Path) -> None:
    port = free_port()
    result = run(
        ["simulate", "--url", f"http://127.0.0.1:{port}", "--token", "rg_x", "--calls", "2"],
        None,
        check=False,
        cwd=tmp_path,
        env={"RECGATE_GENERIC_WEBHOOK_SECRET": SECRET},
    )
    line = one_line(result)
    assert result.returncode == 1
    assert line == f"recgate: cannot reach http://127.0.0.1:{port} (connection refused)"


def test_simulate_without_the_webhook_secret_names_it(tmp_path: Path) -> None:
    result = run(["simulate", "--token", "rg_x"], None, check=False, cwd=tmp_path)
    line = one_line(result)
    assert result.returncode == 2 and "RECGATE_GENERIC_WEBHOOK_SECRET" in line, line


# ---- against a running service -------------------------------------------------------------


@dataclass
class Served:
    url: str
    db: Path
    ivr_token: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``recgate serve`` on a migrated database, as ``make run`` starts it; stopped by PID."""
    workdir = tmp_path_factory.mktemp("served")
    db = workdir / "served.db"
    extra = {
        **DEVELOPMENT,
        "RECGATE_GENERIC_WEBHOOK_SECRET": SECRET,
        "RECGATE_BACKGROUND_JOBS": "false",
        "RECGATE_SIM_PAUSE_LATENCY_MS": "0",
    }
    run(["migrate"], db, env=extra)
    token = run(["tokens", "create", "--name", "ivr", "--role", "ivr"], db, env=extra)
    port = free_port()
    env = environment(db, {**extra, "RECGATE_PORT": str(port), "RECGATE_LOG_LEVEL": "WARNING"})
    log = (workdir / "serve.log").open("w")
    process = subprocess.Popen(
        [RECGATE, "serve"], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (workdir / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/livez", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "recgate serve did not start within 60 s"
            time.sleep(0.1)
        yield Served(url, db, token.stdout.strip().splitlines()[-1], extra)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def simulate(served: Served, token: str, calls: int) -> subprocess.CompletedProcess[str]:
    args = ["simulate", "--url", served.url, "--token", token, "--calls", str(calls)]
    return run(args, served.db, check=False, env=served.env)


def test_simulate_drives_calls_and_prints_a_json_summary(served: Served) -> None:
    result = simulate(served, served.ivr_token, 3)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["calls"], summary["safe_to_collect"], summary["failed"]) == (3, 3, 0)


def test_simulate_with_a_wrong_token_fails_and_says_why(served: Served) -> None:
    result = simulate(served, "rg_not-a-token-of-this-service", 3)
    line = one_line(result)
    assert result.returncode == 1
    assert json.loads(result.stdout)["failed"] == 3, "stdout stays a machine-readable summary"
    assert line.startswith(
        "recgate: 3 of 3 calls failed: 3 × payment start → HTTP 401 unauthenticated"
    ), line
    assert "RECGATE_IVR_TOKEN" in line, line


def test_simulate_against_something_else_names_the_url(served: Served) -> None:
    result = run(
        ["simulate", "--url", f"{served.url}/elsewhere", "--token", served.ivr_token],
        served.db,
        check=False,
        env=served.env,
    )
    line = one_line(result)
    assert result.returncode == 1
    assert f"{served.url}/elsewhere/ does not answer as recgate does" in line, line


def test_calls_show_prints_the_timeline_and_audits_the_read(served: Served) -> None:
    settings = Settings(env="development", generic_webhook_secret=SECRET, _env_file=None)
    key = settings.webhook_key("sim")
    assert key is not None

    async def one_call() -> str:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            call = SimulatedCall(client, key, served.ivr_token)
            outcome = await call.run()
            assert outcome.safe_to_collect and not outcome.failures, outcome
            return call.call_id

    call_id = asyncio.run(one_call())
    out = run(["calls", "show", "sim", call_id], served.db, env=served.env).stdout
    lines = out.splitlines()
    assert lines[0] == f"call sim/{call_id}: ended"
    header = next(line for line in lines if line.strip().startswith("AT "))
    assert header.split() == ["AT", "+MS", "ENTITY", "ID", "CHANGE", "CAUSE"]
    for change in (
        "— → in_progress",
        "pausing → paused",
        "resuming → closed",
        "stopped → available",
        "in_progress → ended",
    ):
        assert change in out, f"timeline lacks {change}:\n{out}"
    assert "ivr: payment start" in out and "sim:call.ended" in out
    assert "payment segments (1):" in out and "authorised" in out
    assert "recordings (1):" in out and "exposures (0):" in out

    with sqlite3.connect(served.db) as conn:
        actor, role = conn.execute(
            "SELECT actor, role FROM audit_entries WHERE action = 'call.read' "
            "ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    assert actor.startswith("cli:") and role == "cli", "reading a call from the CLI is audited"


def test_calls_show_of_an_unknown_call_is_one_line(served: Served) -> None:
    result = run(["calls", "show", "sim", "no-such-call"], served.db, check=False, env=served.env)
    assert result.returncode == 1
    assert one_line(result) == "recgate: no call 'no-such-call' from provider 'sim' in the database"


# ---- the demo ----------------------------------------------------------------------------


def test_demo_prints_a_gated_payment_timeline_and_leaves_nothing(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = run(["demo"], None, env={"TMPDIR": str(scratch)}, cwd=tmp_path)
    out = result.stdout
    assert "safe_to_collect True" in out
    assert "pausing → paused" in out and "resuming → closed" in out
    for step in (
        "sim:call.started",
        "sim:recording.started",
        "ivr: payment start",
        "ivr: payment end",
        "sim:call.ended",
    ):
        assert step in out, f"timeline lacks {step}"
    assert "exposures: 0" in out
    assert str(scratch) in out, "the demo works in the temporary folder"
    assert list(scratch.iterdir()) == [], "the demo's temporary folder is removed"
    assert list(tmp_path.iterdir()) == [scratch], "and nothing is made where it ran"


def _ctrl_c_heard() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_demo_stops_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # The simulated PBX takes a minute to pause, so Ctrl-C lands while the demo waits on it.
    env = environment(
        None,
        {
            "TMPDIR": str(scratch),
            "RECGATE_SIM_PAUSE_LATENCY_MS": "60000",
            "RECGATE_PAUSE_TIMEOUT_MS": "60000",
        },
    )
    process = subprocess.Popen(
        [RECGATE, "demo"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a suite run as a background job (`pytest … &`) has Ctrl-C
        # ignored, and a child would inherit that and never hear it.
        preexec_fn=_ctrl_c_heard,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("call "):  # the call is under way
                break
        else:
            pytest.fail(f"the demo ended before its call: {process.communicate()}")
        assert any(scratch.iterdir()), "the demo is working in its folder"
        process.send_signal(signal.SIGINT)
        began = time.monotonic()
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert time.monotonic() - began < 15, "Ctrl-C does not wait for the call in flight"
    assert process.returncode == 130
    assert "Traceback" not in out + err and err.strip() == "", err
    assert list(scratch.iterdir()) == [], "an interrupted demo removes its folder too"
