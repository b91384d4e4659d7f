"""Settings: the guards that stop a dangerous configuration from starting."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from app.config import Settings, env_var, settings_problems
from app.telephony.registry import enabled_providers

GOOD_SECRET = "whsec_" + base64.b64encode(b"a-real-secret-of-32-bytes-length").decode()


def make(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_production_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECGATE_ENV", raising=False)
    settings = make(audit_key=GOOD_SECRET)
    assert settings.env == "production"
    assert settings.sim_enabled is False, "the simulator must be opted into, never on by default"
    with pytest.raises(ValidationError) as caught:
        make()
    (problem,) = settings_problems(caught.value)
    assert problem.startswith("RECGATE_AUDIT_KEY is required in production"), problem
    assert "RECGATE_ENV=development" in problem, "a defaulted production says how to opt out"


def test_an_explicit_production_refusal_has_no_opt_out_hint() -> None:
    with pytest.raises(ValidationError) as caught:
        make(env="production")
    (problem,) = settings_problems(caught.value)
    assert "RECGATE_AUDIT_KEY" in problem and "RECGATE_ENV" not in problem


def test_simulator_is_on_in_development_and_off_in_production() -> None:
    assert make(env="development").sim_enabled is True
    assert make(env="production", audit_key=GOOD_SECRET).sim_enabled is False
    assert "sim" not in enabled_providers(
        make(env="production", generic_webhook_secret=GOOD_SECRET, audit_key=GOOD_SECRET)
    )


def test_production_refuses_the_simulator() -> None:
    with pytest.raises(ValidationError, match="SIM_ENABLED"):
        make(env="production", sim_enabled=True)


def test_production_refuses_placeholder_secrets() -> None:
    with pytest.raises(ValidationError, match="RECGATE_TWILIO_AUTH_TOKEN is a placeholder"):
        make(env="production", twilio_auth_token="changeme", audit_key=GOOD_SECRET)


def test_malformed_secret_is_not_echoed_in_the_error() -> None:
    with pytest.raises(ValidationError) as caught:
        make(generic_webhook_secret="whsec_not!base64!secret-value-xyz")
    assert "secret-value-xyz" not in str(caught.value)


def test_record_retention_must_outlast_media_retention() -> None:
    with pytest.raises(ValidationError, match="RECORD_MONTHS"):
        make(retention_media_months=24, retention_record_months=12)


def test_providers_follow_their_settings() -> None:
    settings = make(
        generic_webhook_secret=GOOD_SECRET, twilio_account_sid="AC1", twilio_auth_token="t" * 32
    )
    assert enabled_providers(settings) == ["generic", "sim", "twilio"]


def test_production_requires_an_audit_key() -> None:
    with pytest.raises(ValidationError, match="RECGATE_AUDIT_KEY"):
        make(env="production")


def test_audit_keys_are_whsec_base64_or_plain_and_long_enough() -> None:
    plain = "a plain audit secret long enough"
    settings = make(audit_key=GOOD_SECRET, audit_previous_keys=f"{plain}, {GOOD_SECRET}")
    current, previous = settings.audit_signing_keys()
    assert current == b"a-real-secret-of-32-bytes-length"
    assert previous == [plain.encode(), current]
    with pytest.raises(ValidationError, match="16 bytes"):
        make(audit_key="too-short")
    with pytest.raises(ValidationError) as caught:
        make(audit_previous_keys="whsec_not!base64!secret-value-xyz")
    assert "secret-value-xyz" not in str(caught.value)


def test_development_audit_key_follows_the_webhook_secret() -> None:
    derived = make(generic_webhook_secret=GOOD_SECRET).audit_signing_keys()[0]
    assert derived == make(generic_webhook_secret=GOOD_SECRET).audit_signing_keys()[0]
    assert derived not in (make().audit_signing_keys()[0], b"a-real-secret-of-32-bytes-length")


def test_a_malformed_variable_is_named_as_the_environment_spells_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECGATE_PORT", "abc")
    monkeypatch.setenv("RECGATE_PAUSE_TIMEOUT_MS", "10")
    with pytest.raises(ValidationError) as caught:
        make()
    problems = settings_problems(caught.value)
    assert len(problems) == 2, problems
    timeout, port = sorted(problems)
    assert port.startswith("RECGATE_PORT is invalid: input should be a valid integer"), port
    assert timeout.startswith("RECGATE_PAUSE_TIMEOUT_MS is invalid: input should be greater")
    assert "abc" not in port, "a value may be a secret: never quoted"


def test_a_secret_that_fails_its_check_is_named_not_quoted() -> None:
    with pytest.raises(ValidationError) as caught:
        make(generic_webhook_secret="whsec_not!base64!secret-value-xyz")
    (problem,) = settings_problems(caught.value)
    assert problem == "RECGATE_GENERIC_WEBHOOK_SECRET is invalid: must be whsec_<base64>"


def test_an_unparseable_list_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECGATE_SERVICE_AREAS", "council_tax,other")
    with pytest.raises(SettingsError) as caught:
        make()
    (problem,) = settings_problems(caught.value)
    assert problem.startswith("RECGATE_SERVICE_AREAS cannot be parsed"), problem


def test_a_check_across_variables_keeps_its_own_wording() -> None:
    with pytest.raises(ValidationError) as caught:
        make(retention_media_months=24, retention_record_months=12)
    assert settings_problems(caught.value) == [
        "RECGATE_RETENTION_RECORD_MONTHS must be >= RECGATE_RETENTION_MEDIA_MONTHS"
    ]


def test_every_setting_has_a_variable_of_the_documented_form() -> None:
    for name in Settings.model_fields:
        assert env_var(name) == f"RECGATE_{name.upper()}"
