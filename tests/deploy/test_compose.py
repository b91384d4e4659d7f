"""deploy/compose.yaml and deploy/recgate.env.example: PostgreSQL, a one-shot migration and
recgate, started in that order, with an environment production accepts once it is filled in."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tests.deploy.settings_env import (
    PLACEHOLDER,
    SETTINGS_VARIABLES,
    commented_settings,
    real_value,
    settings_from,
    variables_named,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "recgate.env.example"
RECGATE_SERVICES = ("migrate", "recgate")


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _env_file(text: str) -> dict[str, str]:
    """The assignments of an env file, comments and blank lines left out."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${NAME:?message} and ${NAME}, from the .env file."""
    for name, replacement in env.items():
        value = value.replace(f"${{{name}}}", replacement)
        start = value.find(f"${{{name}:?")
        while start != -1:
            end = value.index("}", start)
            value = value[:start] + replacement + value[end + 1 :]
            start = value.find(f"${{{name}:?")
    assert "${" not in value, f"uninterpolated variable in {value!r}"
    return value


def _container_env(service: dict[str, Any], dotenv: dict[str, str]) -> dict[str, str]:
    """What a recgate container's environment holds: the env file, then `environment:`."""
    assert service["env_file"] == ".env"
    environment = {k: _interpolate(str(v), dotenv) for k, v in service["environment"].items()}
    return {**dotenv, **environment}


def test_services_start_in_order_postgres_then_migration_then_recgate() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "migrate", "recgate"}
    migrate, recgate = services["migrate"], services["recgate"]
    assert migrate["command"] == ["recgate", "migrate"]
    assert migrate["restart"] == "no", "a one-shot migration must not be restarted"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert recgate["command"] == ["recgate", "serve"]
    assert recgate["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }


def test_postgres_16_has_a_healthcheck_and_a_volume() -> None:
    compose = _compose()
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in postgres["healthcheck"]["test"]
    volumes = dict(volume.split(":", 1) for volume in postgres["volumes"])
    data = next(name for name, path in volumes.items() if path == "/var/lib/postgresql/data")
    assert data in compose["volumes"]
    # The database container gets its own settings only, none of recgate's secrets.
    assert "env_file" not in postgres
    assert all(name.startswith("POSTGRES_") for name in postgres["environment"])


def test_recgate_is_built_from_the_repository_dockerfile() -> None:
    services = _compose()["services"]
    images = {services[name]["image"] for name in RECGATE_SERVICES}
    assert len(images) == 1, "migrate and recgate must run the same image"
    for name in RECGATE_SERVICES:
        build = services[name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file()
    recgate = services["recgate"]
    assert recgate["read_only"] is True
    assert "/tmp" in recgate["tmpfs"]
    assert any(volume.endswith(":/app/var") for volume in recgate["volumes"])


def test_every_variable_named_is_a_recgate_setting() -> None:
    for path in (COMPOSE, ENV_EXAMPLE):
        unknown = variables_named(path.read_text()) - SETTINGS_VARIABLES
        assert not unknown, f"{path.name} names variables recgate does not read: {unknown}"


def test_the_example_is_refused_by_production_until_each_placeholder_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = ENV_EXAMPLE.read_text()
    example = _env_file(text)
    assert example["RECGATE_ENV"] == "production"
    filled = {name: real_value(value) for name, value in example.items()}
    recgate = _compose()["services"]["recgate"]

    settings = settings_from(_container_env(recgate, filled), monkeypatch)
    assert settings.env == "production"
    assert not settings.sim_enabled
    assert settings.database_url.startswith("postgresql+asyncpg://recgate:")
    assert "@postgres:5432/" in settings.database_url
    assert PLACEHOLDER not in settings.database_url

    with pytest.raises(ValidationError):
        settings_from(_container_env(recgate, example), monkeypatch)
    # Each recgate secret, left as it is in the example (or uncommented as shown), is refused.
    shown = {
        **{k: v for k, v in example.items() if k.startswith("RECGATE_")},
        **commented_settings(text),
    }
    placeholders = [name for name, value in shown.items() if value == PLACEHOLDER]
    assert {"RECGATE_AUDIT_KEY", "RECGATE_GENERIC_WEBHOOK_SECRET"} <= set(placeholders)
    for name in placeholders:
        with pytest.raises(ValidationError):
            settings_from(_container_env(recgate, {**filled, name: PLACEHOLDER}), monkeypatch)


def _compose_cli() -> list[str] | None:
    """`docker compose`, `podman compose` or `docker-compose`: the first that runs here."""
    for command in (["docker", "compose"], ["podman", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            probe = subprocess.run(
                [*command, "version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return command
    return None


def test_compose_accepts_the_file(tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no `docker compose`, `podman compose` or `docker-compose` installed")
    # A copy, with the example as its .env, so the check needs no filled-in deploy/.env.
    (tmp_path / "deploy").mkdir()
    shutil.copy(COMPOSE, tmp_path / "deploy" / "compose.yaml")
    shutil.copy(ENV_EXAMPLE, tmp_path / "deploy" / ".env")
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    result = subprocess.run(
        [*cli, "-f", "deploy/compose.yaml", "config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    recgate = resolved["services"]["recgate"]
    assert recgate["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert recgate["environment"]["RECGATE_DATABASE_URL"].startswith(
        "postgresql+asyncpg://recgate:changeme@postgres:5432/"
    )
    assert recgate["environment"]["RECGATE_ENV"] == "production"
