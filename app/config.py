"""Settings (SPEC §5): environment variables with the ``RECGATE_`` prefix, and a ``.env`` file."""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SERVICE_AREAS = (
    "council_tax",
    "benefits",
    "environmental",
    "adult_social_care",
    "highways",
    "other",
)
_PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "whsec_changeme", ""}


class Settings(BaseSettings):
    # hide_input_in_errors: a mistyped secret must not be echoed into a startup error or log.
    model_config = SettingsConfigDict(
        env_prefix="RECGATE_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    env: Literal["development", "production"] = "development"
    database_url: str = "sqlite+aiosqlite:///./var/recgate.db"
    media_dir: Path = Path("./var/media")
    # Where media lives: media_dir, or an S3 bucket (or S3-compatible store at the endpoint).
    # S3 credentials come from the standard AWS chain (environment, shared config, instance or
    # task role): recgate neither takes nor logs them.
    media_store: Literal["local", "s3"] = "local"
    s3_bucket: str | None = None
    s3_prefix: str = "recordings/"
    s3_endpoint_url: str | None = None
    s3_region: str = "eu-west-2"
    host: str = "127.0.0.1"
    port: int = 8000
    public_base_url: str = "http://127.0.0.1:8000"
    log_format: Literal["json", "console"] = "console"
    log_level: str = "INFO"

    service_areas: list[str] = Field(default_factory=lambda: list(DEFAULT_SERVICE_AREAS))

    # Payment gating
    pause_timeout_ms: int = Field(default=2000, ge=50, le=60_000)
    max_pause_s: int = Field(default=900, ge=1)
    resume_retry_interval_s: float = Field(default=5.0, gt=0, le=10.0)
    provider_request_timeout_s: float = Field(default=1.5, gt=0)
    # How far a PBX's clock may be from recgate's. A PBX report during a payment dismisses
    # danger only when it provably predates recgate's own command: by more than this plus
    # the report's timestamp precision.
    pbx_clock_skew_ms: int = Field(default=1000, ge=0, le=60_000)

    # Generic provider
    generic_webhook_secret: SecretStr | None = None
    generic_control_url: str | None = None
    webhook_tolerance_s: int = 300

    # Built-in simulator (demo, tests, benchmarks)
    # Defaults to on in development only: the simulator confirms pauses nothing real makes.
    sim_enabled: bool | None = None
    sim_pause_latency_ms: int = Field(default=20, ge=0)

    # Twilio
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_api_base: str = "https://api.twilio.com"
    media_fetch_attempts: int = Field(default=10, ge=1)

    # Asterisk ARI
    ari_url: str | None = None  # the ARI base *including* /ari, e.g. http://127.0.0.1:8088/ari
    ari_user: str | None = None
    ari_password: SecretStr | None = None
    ari_app: str = "recgate"
    # Consume the ARI event WebSocket (/ari/events?app=…) instead of, or as well as, relayed
    # events on POST /v1/webhooks/asterisk.
    ari_events: bool = False

    # rtpengine
    rtpengine_ng: str | None = None  # host:port of rtpengine's ng control (UDP)
    # The recording daemon's finish notification carries no signature: its --notify-uri must
    # carry ?token=<this>, compared in constant time.
    rtpengine_notify_token: SecretStr | None = None
    rtpengine_block_dtmf: bool = True

    # Retention
    retention_media_months: int = Field(default=18, ge=1)
    retention_record_months: int = Field(default=72, ge=1)
    sweep_interval_s: int = Field(default=300, ge=1)
    # Silence this much either side of an exposure when redacting (clocks, DTMF tails).
    redaction_margin_s: float = Field(default=2.0, ge=0, le=60)

    metrics_public: bool = False
    background_jobs: bool = True

    @field_validator("generic_webhook_secret")
    @classmethod
    def _secret_is_standard_webhooks(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        body = raw.removeprefix("whsec_")
        try:
            key = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("must be whsec_<base64>") from exc
        if len(key) < 16:
            raise ValueError("must decode to at least 16 bytes")
        return value

    @model_validator(mode="after")
    def _no_placeholders_in_production(self) -> Settings:
        if self.sim_enabled is None:
            self.sim_enabled = self.env == "development"
        if self.env != "production":
            return self
        if self.sim_enabled:
            raise ValueError(
                "RECGATE_SIM_ENABLED must be off in production: the simulator answers "
                "safe_to_collect without pausing any real recording"
            )
        for name in (
            "generic_webhook_secret",
            "twilio_auth_token",
            "ari_password",
            "rtpengine_notify_token",
        ):
            secret = getattr(self, name)
            if secret is not None and secret.get_secret_value().lower() in _PLACEHOLDERS:
                raise ValueError(f"RECGATE_{name.upper()} is a placeholder; set a real secret")
        return self

    @model_validator(mode="after")
    def _records_outlive_media(self) -> Settings:
        if self.retention_record_months < self.retention_media_months:
            raise ValueError(
                "RECGATE_RETENTION_RECORD_MONTHS must be >= RECGATE_RETENTION_MEDIA_MONTHS"
            )
        return self

    @model_validator(mode="after")
    def _s3_store_has_bucket(self) -> Settings:
        if self.media_store == "s3" and not self.s3_bucket:
            raise ValueError("RECGATE_MEDIA_STORE=s3 needs RECGATE_S3_BUCKET")
        return self

    @property
    def generic_secret_key(self) -> bytes | None:
        if self.generic_webhook_secret is None:
            return None
        raw = self.generic_webhook_secret.get_secret_value().removeprefix("whsec_")
        return base64.b64decode(raw)

    @property
    def enabled_providers(self) -> list[str]:
        providers: list[str] = []
        if self.generic_webhook_secret is not None:
            providers.append("generic")
        if self.sim_enabled:
            providers.append("sim")
        if self.twilio_account_sid and self.twilio_auth_token is not None:
            providers.append("twilio")
        if self.ari_url:
            providers.append("asterisk")
        if self.rtpengine_ng:
            providers.append("rtpengine")
        return providers

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
