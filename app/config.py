"""Settings (SPEC §5): environment variables with the ``RECGATE_`` prefix, and a ``.env`` file."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import httpx
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

DEFAULT_SERVICE_AREAS = (
    "council_tax",
    "benefits",
    "environmental",
    "adult_social_care",
    "highways",
    "other",
)
# "cluecon": FreeSWITCH's stock event socket password.
_PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "whsec_changeme", "cluecon", ""}


class Settings(BaseSettings):
    # hide_input_in_errors: a mistyped secret must not be echoed into a startup error or log.
    model_config = SettingsConfigDict(
        env_prefix="RECGATE_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    # Production unless a site opts out: the strict checks (no placeholder secrets, no
    # simulator, an audit key) must not depend on someone remembering to ask for them.
    # ``make run``, ``recgate demo`` and the tests say ``development`` explicitly.
    env: Literal["development", "production"] = "production"
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
    # Hosts recgate may copy generic recording media from (``media_url``): comma-separated
    # ``host`` or ``host:port`` (https), ``http://host[:port]`` for plain HTTP. Empty: no copies.
    generic_media_hosts: str = ""
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
    # Relayed ARI events (POST /v1/webhooks/asterisk) are signed with a secret of their own, so
    # a body signed for another route is refused there.
    asterisk_webhook_secret: SecretStr | None = None
    ari_url: str | None = None  # the ARI base *including* /ari, e.g. http://127.0.0.1:8088/ari
    ari_user: str | None = None
    ari_password: SecretStr | None = None
    ari_app: str = "recgate"
    # Consume the ARI event WebSocket (/ari/events?app=…) instead of, or as well as, relayed
    # events on POST /v1/webhooks/asterisk.
    ari_events: bool = False

    # FreeSWITCH (app/telephony/freeswitch.py): mod_event_socket, inbound mode.
    freeswitch_esl_host: str | None = Field(
        default=None,
        description=(
            "Host of FreeSWITCH's event socket (`event_socket.conf.xml` `listen-ip`). Enables "
            "the `freeswitch` provider; pauses are `uuid_record` commands sent over it"
        ),
    )
    freeswitch_esl_port: int = Field(
        default=8021, ge=1, le=65535, description="Port of the event socket (`listen-port`)"
    )
    freeswitch_esl_password: SecretStr | None = Field(
        default=None,
        description=(
            "The event socket's `password`. Required for payments on `freeswitch` calls; "
            "production refuses FreeSWITCH's stock `ClueCon`. It crosses the network in clear: "
            "keep the socket on loopback or a private network"
        ),
    )
    freeswitch_pause_mode: Literal["mask", "pause"] = Field(
        default="mask",
        description=(
            "What a FreeSWITCH pause is when the IVR leaves `pause_behavior` out: `mask` "
            "(`uuid_record … mask`: silence written, the timeline kept) or `pause` (nothing "
            "written; FreeSWITCH 1.10.7 and later). The IVR's `silence` is always `mask`, its "
            "`skip` always `pause`"
        ),
    )
    freeswitch_events: bool = Field(
        default=False,
        description=(
            "Consume the event socket (`CHANNEL_ANSWER`, `CHANNEL_HANGUP_COMPLETE`, "
            "`RECORD_START`, `RECORD_STOP`) with a connection of its own, reconnecting with "
            "backoff; FreeSWITCH keeps no events for a client that is away"
        ),
    )

    # rtpengine
    rtpengine_ng: str | None = None  # host:port of rtpengine's ng control (UDP)
    # The recording daemon's finish notification carries no signature: its --notify-uri must
    # carry ?token=<this>, compared in constant time.
    rtpengine_notify_token: SecretStr | None = None
    rtpengine_block_dtmf: bool = True
    # rtpengine's --recording-dir (pcap method), readable by recgate: finished files become
    # recordings whose media is copied into the store and deleted here when retention ends.
    rtpengine_recording_dir: Path | None = None
    # A SIP proxy in front of rtpengine (Kamailio, OpenSIPS) reports call start, answer, end
    # and recording start to POST /v1/webhooks/sip-proxy with this in X-Recgate-Token.
    sip_proxy_token: SecretStr | None = None

    # Genesys Cloud (app/telephony/genesys.py)
    genesys_region: str = Field(
        default="mypurecloud.com",
        description=(
            "The Genesys Cloud region's domain, as in `https://api.{region}` and "
            "`https://login.{region}`: `mypurecloud.com` (US East), `euw2.pure.cloud` (London), "
            "`mypurecloud.ie` (Dublin), `mypurecloud.de` (Frankfurt) …"
        ),
    )
    genesys_api_base: str | None = Field(
        default=None,
        description="Platform API base; unset: `https://api.{RECGATE_GENESYS_REGION}`",
    )
    genesys_login_base: str | None = Field(
        default=None,
        description=(
            "OAuth base (`{base}/oauth/token`); unset: `https://login.{RECGATE_GENESYS_REGION}`"
        ),
    )
    genesys_client_id: str | None = Field(
        default=None,
        description=(
            "Client id of a Genesys Cloud OAuth client with the Client Credentials grant whose "
            "role may pause recordings (`conversation:recording:pauseOthers`). With the secret, "
            "it enables payments on `genesys` calls"
        ),
    )
    genesys_client_secret: SecretStr | None = Field(
        default=None, description="That OAuth client's secret (never logged)"
    )
    genesys_webhook_token: SecretStr | None = Field(
        default=None,
        description=(
            "The API key Amazon EventBridge sends in `X-Recgate-Token` with Genesys Cloud "
            "events to `POST /v1/webhooks/genesys` (at least 16 characters); unset: that "
            "route is off"
        ),
    )

    # Amazon Connect (app/telephony/connect.py)
    connect_instance_id: str | None = Field(
        default=None,
        description=(
            "Id of the Amazon Connect instance (the part after `instance/` in its ARN); it "
            "enables payments on `amazon_connect` calls, and contact events of other instances "
            "are ignored"
        ),
    )
    connect_region: str = Field(
        default="eu-west-2", description="AWS region of the Amazon Connect instance"
    )
    connect_endpoint_url: str | None = Field(
        default=None,
        description=(
            "Amazon Connect API endpoint; unset: AWS's own for the region (set only for a "
            "test double or a VPC endpoint)"
        ),
    )
    connect_aws_access_key_id: str | None = Field(
        default=None,
        description=(
            "Access key id for the Amazon Connect API; unset: the standard AWS credential chain "
            "(environment, shared config, instance or task role), which is preferred"
        ),
    )
    connect_aws_secret_access_key: SecretStr | None = Field(
        default=None,
        description="Secret of `RECGATE_CONNECT_AWS_ACCESS_KEY_ID` (set both or neither)",
    )
    connect_recording_type: Literal["ALL", "AGENT", "IVR"] = Field(
        default="ALL",
        description=(
            "What a suspend covers: `ALL` sends no `ContactRecordingType`, so Connect suspends "
            "every recording the flow makes of the contact (IVR, agent, screen); `AGENT` or "
            "`IVR` suspends only that one and leaves the other recording"
        ),
    )
    connect_webhook_token: SecretStr | None = Field(
        default=None,
        description=(
            "The API key an EventBridge API destination sends in `X-Recgate-Token` with "
            "Amazon Connect contact events to `POST /v1/webhooks/amazon-connect` (at least 16 "
            "characters); unset: that route is off"
        ),
    )

    # Retention
    retention_media_months: int = Field(default=18, ge=1)
    retention_record_months: int = Field(default=72, ge=1)
    sweep_interval_s: int = Field(default=300, ge=1)
    # Silence this much either side of an exposure when redacting (clocks, DTMF tails).
    redaction_margin_s: float = Field(default=2.0, ge=0, le=60)

    # Audit trail (SPEC §3.3): the key of its HMAC chain, kept outside the database
    # (``whsec_<base64>`` or a plain secret, at least 16 bytes). Required in production; in
    # development it is derived from the generic webhook secret (``make run`` generates one).
    audit_key: SecretStr | None = None
    # Keys retired by a rotation, comma-separated: entries they signed still verify.
    audit_previous_keys: SecretStr | None = None
    # How often the chain head is checkpointed to the media store (and on shutdown).
    audit_checkpoint_s: int = Field(default=300, ge=1)

    metrics_public: bool = False
    background_jobs: bool = True
    ingest_worker: bool = Field(
        default=True,
        description=(
            "Apply webhook batches in a child process of the service (the ingest worker, "
            "[gate.md](gate.md#webhook-ingest-group-commit-in-a-worker-process)), so they run "
            "on a core of their own (PostgreSQL, or a SQLite file; an in-memory database "
            "has none). `false` applies them in the service's process"
        ),
    )

    @field_validator("generic_webhook_secret", "asterisk_webhook_secret")
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

    @field_validator("audit_key", "audit_previous_keys")
    @classmethod
    def _audit_keys_are_long_enough(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if value is not None:
            raw = value.get_secret_value()
            parts = raw.split(",") if info.field_name == "audit_previous_keys" else [raw]
            for part in parts:
                if part.strip() and len(_audit_key_bytes(part)) < 16:
                    raise ValueError("each audit key must be at least 16 bytes")
        return value

    @field_validator("freeswitch_esl_password")
    @classmethod
    def _esl_password_is_one_line(cls, value: SecretStr | None) -> SecretStr | None:
        # It is sent as "auth <password>" on one line: a line break would end the command.
        if value is not None and not value.get_secret_value().isprintable():
            raise ValueError("must be printable characters on one line")
        return value

    @field_validator("generic_media_hosts")
    @classmethod
    def _media_hosts_are_origins(cls, value: str) -> str:
        media_origins(value)  # refuse a malformed entry at startup, not at the first fetch
        return value

    @field_validator("genesys_region")
    @classmethod
    def _genesys_region_is_a_domain(cls, value: str) -> str:
        if not re.fullmatch(r"(?:[a-z0-9-]+\.)+[a-z]{2,}", value.strip().lower()):
            raise ValueError("must be a domain such as mypurecloud.com or euw2.pure.cloud")
        return value.strip().lower()

    @field_validator("genesys_api_base", "genesys_login_base")
    @classmethod
    def _genesys_bases_are_urls(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^/?#@\s]+(?:/[^?#\s]*)?", value):
            raise ValueError("must be an http(s) URL without credentials, query or fragment")
        return value

    @field_validator("genesys_webhook_token")
    @classmethod
    def _genesys_token_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _genesys_client_is_whole(self) -> Settings:
        if (self.genesys_client_id is None) != (self.genesys_client_secret is None):
            raise ValueError(
                "RECGATE_GENESYS_CLIENT_ID and RECGATE_GENESYS_CLIENT_SECRET are set together"
            )
        return self

    @field_validator("connect_instance_id")
    @classmethod
    def _connect_instance_is_an_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9-]{1,100}", value):
            raise ValueError("must be the instance id (the part after instance/ in its ARN)")
        return value

    @field_validator("connect_region")
    @classmethod
    def _connect_region_is_a_region(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z]{2}(?:-[a-z]+)+-\d+", value):
            raise ValueError("must be an AWS region such as eu-west-2")
        return value

    @field_validator("connect_endpoint_url")
    @classmethod
    def _connect_endpoint_is_a_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^/?#@\s]+/?", value):
            raise ValueError("must be an http(s) URL without credentials, path or query")
        return value

    @field_validator("connect_webhook_token")
    @classmethod
    def _connect_token_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _connect_key_is_whole(self) -> Settings:
        if (self.connect_aws_access_key_id is None) != (self.connect_aws_secret_access_key is None):
            raise ValueError(
                "RECGATE_CONNECT_AWS_ACCESS_KEY_ID and RECGATE_CONNECT_AWS_SECRET_ACCESS_KEY are "
                "set together"
            )
        return self

    @model_validator(mode="after")
    def _no_placeholders_in_production(self) -> Settings:
        if self.sim_enabled is None:
            self.sim_enabled = self.env == "development"
        if self.env != "production":
            return self
        # Production by default: say so, or a first-time user cannot tell why a command that
        # never mentioned production refuses to run.
        why = (
            ""
            if "env" in self.model_fields_set
            else " (RECGATE_ENV is production unless set; RECGATE_ENV=development for a "
            "development setup)"
        )
        if self.sim_enabled:
            raise ValueError(
                "RECGATE_SIM_ENABLED must be off in production: the simulator answers "
                "safe_to_collect without pausing any real recording" + why
            )
        for name in (
            "generic_webhook_secret",
            "asterisk_webhook_secret",
            "twilio_auth_token",
            "ari_password",
            "freeswitch_esl_password",
            "rtpengine_notify_token",
            "sip_proxy_token",
            "genesys_client_secret",
            "genesys_webhook_token",
            "connect_aws_secret_access_key",
            "connect_webhook_token",
        ):
            secret = getattr(self, name)
            if secret is not None and secret.get_secret_value().lower() in _PLACEHOLDERS:
                raise ValueError(
                    f"RECGATE_{name.upper()} is a placeholder; set a real secret" + why
                )
        if self.audit_key is None:
            raise ValueError(
                "RECGATE_AUDIT_KEY is required in production: it signs the audit trail" + why
            )
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
        return _signing_key(self.generic_webhook_secret)

    @property
    def generic_media_origins(self) -> frozenset[MediaOrigin]:
        return media_origins(self.generic_media_hosts)

    def webhook_key(self, route: str) -> bytes | None:
        """The key that signs webhooks on ``/v1/webhooks/{route}``; None when that route takes
        no signed webhooks. Each route has a key of its own, so a request signed for one route
        is refused on every other: generic and asterisk by their own secrets, the simulator by
        a key derived from the generic secret (it is a development tool; nobody configures it).
        """
        if route == "generic":
            return self.generic_secret_key
        if route == "asterisk":
            return _signing_key(self.asterisk_webhook_secret)
        if route == "sim" and self.sim_enabled and self.generic_secret_key is not None:
            return hmac.new(self.generic_secret_key, _SIM_KEY_LABEL, hashlib.sha256).digest()
        return None

    def audit_signing_keys(self) -> tuple[bytes, list[bytes]]:
        """The audit chain's current key and the keys it rotated away from.

        Without ``RECGATE_AUDIT_KEY`` (development only) the key is derived from the generic
        webhook secret, or is a fixed development key when there is none: entries then verify
        only for as long as that secret stays the same.
        """
        if self.audit_key is not None:
            current = _audit_key_bytes(self.audit_key.get_secret_value())
        else:
            seed = self.generic_secret_key or b"recgate development only"
            current = hmac.new(seed, _AUDIT_KEY_LABEL, hashlib.sha256).digest()
        previous = []
        if self.audit_previous_keys is not None:
            raw = self.audit_previous_keys.get_secret_value()
            previous = [_audit_key_bytes(part) for part in raw.split(",") if part.strip()]
        return current, previous

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


_SIM_KEY_LABEL = b"recgate webhook route: sim"
_AUDIT_KEY_LABEL = b"recgate audit chain (development)"


def _audit_key_bytes(secret: str) -> bytes:
    """``whsec_<base64>`` decoded; any other value is a plain secret, taken as UTF-8."""
    secret = secret.strip()
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("an audit key starting whsec_ must be base64") from exc
    return secret.encode()


# (scheme, host, port) recgate may fetch media from; the port is explicit even when default.
MediaOrigin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}


def media_origins(hosts: str) -> frozenset[MediaOrigin]:
    """Parse ``RECGATE_GENERIC_MEDIA_HOSTS``: ``host`` or ``host:port`` means https, and only an
    entry written ``http://host[:port]`` allows plain HTTP. Hosts are names, matched as written
    (lower-cased); nothing is resolved. Raise ``ValueError`` on anything else."""
    origins: set[MediaOrigin] = set()
    # Errors name the entry's position, never its text: a mistake may carry credentials.
    for position, entry in enumerate((part.strip() for part in hosts.split(",")), start=1):
        if not entry:
            continue
        text = entry if "://" in entry else f"https://{entry}"
        try:
            url = httpx.URL(text)
        except (httpx.InvalidURL, ValueError) as exc:
            raise ValueError(f"generic media host #{position} is not host[:port]") from exc
        if (
            url.scheme not in _DEFAULT_PORTS
            or not url.host
            or url.userinfo
            or url.path not in ("", "/")
            or url.query
            or url.fragment
        ):
            raise ValueError(
                f"generic media host #{position} must be host[:port] or http://host[:port]"
            )
        origins.add((url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme]))
    return frozenset(origins)


def _signing_key(secret: SecretStr | None) -> bytes | None:
    if secret is None:
        return None
    return base64.b64decode(secret.get_secret_value().removeprefix("whsec_"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def env_var(field_name: str) -> str:
    """The environment variable that sets a field of :class:`Settings`."""
    field = Settings.model_fields.get(field_name)
    alias = (field.validation_alias or field.alias) if field is not None else None
    if isinstance(alias, str):
        return alias.upper()  # pydantic-settings reads an aliased field under its alias alone
    return f"{Settings.model_config.get('env_prefix', '')}{field_name}".upper()


_SETTINGS_ERROR_FIELD = re.compile(r'field "([^"]+)"(?: from source "(\w+)")?')


def settings_problems(exc: ValidationError | SettingsError) -> list[str]:
    """One line per problem with the configuration, naming the environment variable (not the
    field) and never quoting the value, which may be a secret."""
    if isinstance(exc, SettingsError):
        found = _SETTINGS_ERROR_FIELD.search(str(exc))
        if found is None:
            return [f"the configuration cannot be read: {exc}"]
        where = " in .env" if found.group(2) == "DotEnvSettingsSource" else ""
        return [
            f"{env_var(found.group(1))}{where} cannot be parsed: a list or mapping is "
            'written as JSON, e.g. ["council_tax", "other"]'
        ]
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        loc = [part for part in error["loc"] if part != "__root__"]
        if not loc:  # a check across fields: its message names the variables itself
            problems.append(message)
            continue
        name = env_var(str(loc[0]))
        item = "".join(
            f" (item {part + 1})" if isinstance(part, int) else f".{part}" for part in loc[1:]
        )
        if message[:2].istitle():  # "Input should be …", not an acronym
            message = message[:1].lower() + message[1:]
        problems.append(f"{name}{item} is invalid: {message}")
    return problems
