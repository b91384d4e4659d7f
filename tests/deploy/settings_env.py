"""The settings a deploy file may name, and building them from a file's environment."""

from __future__ import annotations

import base64
import os
import re
import secrets

import pytest

from app.config import Settings

PREFIX = str(Settings.model_config.get("env_prefix", ""))
# Every variable recgate reads: its prefix and a field name.
SETTINGS_VARIABLES = frozenset(PREFIX + name.upper() for name in Settings.model_fields)
# The placeholder every deploy template uses for a value to replace.
PLACEHOLDER = "changeme"

_VARIABLE = re.compile(rf"\b{PREFIX}[A-Z0-9_]+\b")
# `# NAME=value` (env file) or `# NAME: value` (YAML): an optional setting left commented out.
_COMMENTED = re.compile(rf"^\s*#\s*({PREFIX}[A-Z0-9_]+)\s*[=:]\s*(\S+)\s*$", re.MULTILINE)


def variables_named(text: str) -> set[str]:
    """Every RECGATE_* name in a file, comments included."""
    return set(_VARIABLE.findall(text))


def commented_settings(text: str) -> dict[str, str]:
    """The settings a file shows commented out, for a site to enable."""
    return dict(_COMMENTED.findall(text))


def real_value(value: str) -> str:
    """``value`` with its placeholder replaced as a site would: a whole placeholder by a
    secret every secret setting accepts, one inside a URL by a password."""
    if value == PLACEHOLDER:
        return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    return value.replace(PLACEHOLDER, secrets.token_hex(16))


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as recgate would build them in a container whose environment is ``env``."""
    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)
