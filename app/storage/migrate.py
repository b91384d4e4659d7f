"""Run the Alembic migrations programmatically (``recgate migrate``, tests, the demo)."""

from __future__ import annotations

import os
from pathlib import Path

from alembic.config import Config

from alembic import command


def _alembic_dir() -> Path:
    candidates = [
        os.environ.get("RECGATE_ALEMBIC_DIR"),
        Path.cwd() / "alembic",
        Path(__file__).resolve().parents[2] / "alembic",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "env.py").is_file():
            return Path(candidate)
    raise FileNotFoundError(
        "alembic/ not found: run from the project directory or set RECGATE_ALEMBIC_DIR"
    )


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_alembic_dir()))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at ``database_url`` to ``revision``. Must not run inside an event loop."""
    command.upgrade(alembic_config(database_url), revision)
