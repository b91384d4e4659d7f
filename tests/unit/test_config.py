"""Settings: the guards that stop a dangerous configuration from starting."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.telephony.registry import enabled_providers

GOOD_SECRET = "whsec_" + base64.b64encode(b"a-real-secret-of-32-bytes-length").decode()


def make(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_simulator_is_on_in_development_and_off_in_production() -> None:
    assert make().sim_enabled is True
    assert make(env="production", audit_key=GOOD_SECRET).sim_enabled is False
    assert "sim" not in enabled_providers(
        make(env="production", generic_webhook_secret=GOOD_SECRET, audit_key=GOOD_SECRET)
    )


def test_production_refuses_the_simulator() -> None:
    with pytest.raises(ValidationError, match="SIM_ENABLED"):
        make(env="production", sim_enabled=True)


def test_production_refuses_placeholder_secrets() -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        make(env="production", twilio_auth_token="changeme")


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
