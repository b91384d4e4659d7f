"""The recgate command, run as a user runs it: a real process against a real database file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RECGATE = str(Path(sys.executable).with_name("recgate"))


def run(args: list[str], db: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RECGATE_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
        "RECGATE_ENV": "development",
    }
    env.pop("RECGATE_GENERIC_WEBHOOK_SECRET", None)
    result = subprocess.run(
        [RECGATE, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "cli.db"
    run(["migrate"], path)
    return path


def test_tokens_create_list_revoke(db: Path) -> None:
    created = run(["tokens", "create", "--name", "ivr-desk-1", "--role", "ivr"], db)
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("rg_") and len(token) > 40, "the token alone is on the last line"

    listed = run(["tokens", "list"], db).stdout
    assert "ivr-desk-1\tivr" in listed and "active" in listed
    assert token not in listed, "a token is shown once, never listed"

    duplicate = run(["tokens", "create", "--name", "ivr-desk-1", "--role", "ops"], db, check=False)
    assert duplicate.returncode == 1 and "exists" in duplicate.stderr

    run(["tokens", "revoke", "ivr-desk-1"], db)
    assert "revoked" in run(["tokens", "list"], db).stdout
    assert run(["tokens", "revoke", "nobody"], db, check=False).returncode == 1


def test_tokens_create_refuses_unknown_role(db: Path) -> None:
    result = run(["tokens", "create", "--name", "x", "--role", "root"], db, check=False)
    assert result.returncode != 0


def test_demo_prints_a_gated_payment_timeline(tmp_path: Path) -> None:
    result = run(["demo"], tmp_path / "unused.db")
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
