"""docs/configuration.md is what scripts/config_reference.py renders from the settings model,
and every setting is described there."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from pydantic import AliasChoices, Field, SecretStr

from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "config_reference.py"
REGENERATE = ".venv/bin/python scripts/config_reference.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_reference", SCRIPT)
    assert spec is not None and spec.loader is not None, f"cannot load {SCRIPT}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


reference = _load()


def test_configuration_reference_is_current() -> None:
    problems: list[str] = reference.check()
    assert not problems, (
        "docs/configuration.md does not match app.config.Settings:\n  "
        + "\n  ".join(problems)
        + f"\nFix what is named above, then run: {REGENERATE}"
    )


def test_every_setting_appears_under_its_variable() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [
        name
        for name, field in Settings.model_fields.items()
        for variable in reference.env_names(name, field, "RECGATE_")
        if f"`{variable}`" not in text
    ]
    assert not missing, f"settings missing from docs/configuration.md: {missing}; run {REGENERATE}"


def test_a_setting_without_a_description_fails_the_check() -> None:
    class Extended(Settings):
        brand_new_setting: int = 3

    problems: list[str] = reference.check(Extended)
    assert any("'brand_new_setting' has no description" in line for line in problems), problems


def test_a_description_in_the_model_wins_and_retires_the_fallback() -> None:
    class Described(Settings):
        port: int = Field(default=8000, description="The port, described in the model.")

    problems: list[str] = reference.check(Described)
    assert any("'port' now has its own description" in line for line in problems), problems

    saved = reference.FALLBACK_DESCRIPTIONS.pop("port")
    try:
        text: str = reference.render(Described)
    finally:
        reference.FALLBACK_DESCRIPTIONS["port"] = saved
    assert "| `RECGATE_PORT` | integer | `8000` | The port, described in the model. |" in text


def test_a_secret_default_is_never_printed() -> None:
    class WithSecret(Settings):
        vendor_token: SecretStr = Field(
            default=SecretStr("do-not-print-me"), description="A vendor's token."
        )

    text: str = reference.render(WithSecret)
    assert "do-not-print-me" not in text
    assert "| `RECGATE_VENDOR_TOKEN` | secret | (secret) | A vendor's token. |" in text


def test_aliases_are_listed_as_their_own_variables() -> None:
    class Aliased(Settings):
        renamed: int = Field(
            default=1,
            validation_alias=AliasChoices("recgate_renamed", "RECGATE_OLD_NAME"),
            description="Renamed once.",
        )

    text: str = reference.render(Aliased)
    assert "| `RECGATE_RENAMED`<br>`RECGATE_OLD_NAME` | integer | `1` | Renamed once. |" in text


def test_a_stale_file_names_the_command_that_fixes_it(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("# an older reference\n", encoding="utf-8")
    problems: list[str] = reference.check(path=stale)
    assert problems and REGENERATE in problems[0], problems
