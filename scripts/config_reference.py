"""Render docs/configuration.md from the settings model, ``app.config.Settings``.

    .venv/bin/python scripts/config_reference.py           # rewrite docs/configuration.md
    .venv/bin/python scripts/config_reference.py --check   # exit 1 when it is stale

Each setting's description is its ``Field(description=...)`` in ``app/config.py`` where it has
one, else the text kept in ``FALLBACK_DESCRIPTIONS`` below. A setting with neither, a fallback
for a setting that no longer exists (or that now has a description of its own), or a group
naming an unknown setting is an error: the reference must describe every setting, once.
Variable names, types and defaults come from the model itself, so they cannot drift. Secrets
are marked ``(secret)`` and their defaults are never printed.
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path, PurePath

import annotated_types
from pydantic import AliasChoices, AliasPath, BaseModel, SecretBytes, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "configuration.md"
SCRIPT = "scripts/config_reference.py"
REGENERATE = f".venv/bin/python {SCRIPT}"


@dataclass(frozen=True)
class Group:
    title: str
    intro: str
    fields: tuple[str, ...]


# Order of the reference. A setting in no group is listed under "Other settings".
GROUPS: tuple[Group, ...] = (
    Group(
        "Core",
        "The service itself: mode, where it listens, logs, and what it accepts.",
        (
            "env",
            "host",
            "port",
            "public_base_url",
            "log_format",
            "log_level",
            "service_areas",
            "metrics_public",
            "background_jobs",
        ),
    ),
    Group(
        "Database",
        "`recgate migrate` creates or upgrades the schema; `recgate serve` never changes it.",
        ("database_url", "ingest_worker"),
    ),
    Group(
        "Media storage",
        "Where recgate keeps the copies of recording media it fetches from providers.",
        (
            "media_store",
            "media_dir",
            "s3_bucket",
            "s3_prefix",
            "s3_endpoint_url",
            "s3_region",
            "media_fetch_attempts",
        ),
    ),
    Group(
        "Payment gate and provider traffic",
        "How long the IVR waits for a confirmed pause, and how recgate talks to providers. "
        "See [gate.md](gate.md).",
        (
            "pause_timeout_ms",
            "max_pause_s",
            "resume_retry_interval_s",
            "provider_request_timeout_s",
            "pbx_clock_skew_ms",
            "webhook_tolerance_s",
        ),
    ),
    Group(
        "Generic PBX",
        "The generic webhook contract. See [providers.md](providers.md#generic-pbx).",
        ("generic_webhook_secret", "generic_control_url", "generic_media_hosts"),
    ),
    Group(
        "Simulator",
        "The built-in simulated PBX (`sim`) for the demo, tests and benchmarks.",
        ("sim_enabled", "sim_pause_latency_ms"),
    ),
    Group(
        "Twilio",
        "See [providers.md](providers.md#twilio).",
        ("twilio_account_sid", "twilio_auth_token", "twilio_api_base"),
    ),
    Group(
        "Asterisk (ARI)",
        "See [providers.md](providers.md#asterisk-ari).",
        (
            "ari_url",
            "ari_user",
            "ari_password",
            "ari_app",
            "ari_events",
            "asterisk_webhook_secret",
        ),
    ),
    Group(
        "rtpengine and SIP proxies",
        "See [providers.md](providers.md#rtpengine) and "
        "[providers.md](providers.md#kamailio--rtpengine).",
        (
            "rtpengine_ng",
            "rtpengine_block_dtmf",
            "rtpengine_recording_dir",
            "rtpengine_notify_token",
            "sip_proxy_token",
        ),
    ),
    Group(
        "FreeSWITCH",
        "See [providers.md](providers.md#connecting-freeswitch).",
        (
            "freeswitch_esl_host",
            "freeswitch_esl_port",
            "freeswitch_esl_password",
            "freeswitch_pause_mode",
            "freeswitch_events",
        ),
    ),
    Group(
        "Amazon Connect",
        "See [providers.md](providers.md#connecting-amazon-connect).",
        (
            "connect_instance_id",
            "connect_region",
            "connect_endpoint_url",
            "connect_aws_access_key_id",
            "connect_aws_secret_access_key",
            "connect_recording_type",
            "connect_webhook_token",
        ),
    ),
    Group(
        "Genesys Cloud",
        "See [providers.md](providers.md#connecting-genesys-cloud).",
        (
            "genesys_region",
            "genesys_api_base",
            "genesys_login_base",
            "genesys_client_id",
            "genesys_client_secret",
            "genesys_webhook_token",
        ),
    ),
    Group(
        "Retention",
        "Deadlines, the sweep and redaction. See "
        "[api.md](api.md#recordings-legal-holds-retention-and-audit).",
        (
            "retention_media_months",
            "retention_record_months",
            "sweep_interval_s",
            "redaction_margin_s",
        ),
    ),
    Group(
        "Audit trail",
        "The key of the audit trail's HMAC chain and its checkpoints. See [api.md](api.md#audit).",
        ("audit_key", "audit_previous_keys", "audit_checkpoint_s"),
    ),
)

# Descriptions for settings that have no Field(description=...) in app/config.py. When a
# setting gains one there, delete its entry here (the check says so).
FALLBACK_DESCRIPTIONS: dict[str, str] = {
    "env": (
        "`production` refuses to start with a placeholder secret (`changeme`, `secret`, "
        "`password`, …), with the simulator on, or without `RECGATE_AUDIT_KEY`; the error names "
        "the variable. `make run`, `recgate demo` and the tests choose `development` explicitly"
    ),
    "host": "Bind address of `recgate serve` (the container image sets `0.0.0.0`)",
    "port": "Port of `recgate serve`",
    "public_base_url": (
        "The URL the PBX reaches recgate at (e.g. `https://recgate.council.example`). Twilio "
        "signs the URL it called, and recgate rebuilds it from this, so signatures verify "
        "behind a proxy or TLS terminator"
    ),
    "log_format": "`console` (one readable line) or `json` (one JSON object per line)",
    "log_level": "Python log level (`DEBUG`, `INFO`, `WARNING`, …)",
    "service_areas": (
        "Accepted service areas, as JSON. An event naming another area is stored as `other`"
    ),
    "metrics_public": "Serve `GET /metrics` without a token (otherwise it needs `ops`)",
    "background_jobs": (
        "Run the in-process jobs: payment upkeep (resume retries, re-pauses), overlong-payment "
        "alerts, media copies, redaction, the retention sweep, audit checkpoints and the "
        "rtpengine recording-directory scan. Leave on in a service"
    ),
    "database_url": (
        "SQLAlchemy async URL. PostgreSQL: `postgresql+asyncpg://user:pass@host:5432/db` "
        "(needed for more than one replica). A relative SQLite path is relative to the working "
        "directory"
    ),
    "media_store": (
        "`local` (files in `RECGATE_MEDIA_DIR`) or `s3` (S3-compatible object storage; "
        "credentials come from the standard AWS chain, never from recgate settings)"
    ),
    "media_dir": (
        "Local media store: copies are kept as `<recording id>.<ext>` (wav, pcap …), the audit "
        "checkpoint as `audit/checkpoint.json`. Relative to the working directory"
    ),
    "s3_bucket": (
        "Bucket for `RECGATE_MEDIA_STORE=s3` (required then). Use an **unversioned** bucket, or "
        "one whose lifecycle expires noncurrent versions: on a versioned bucket a delete only "
        "adds a marker and the media survives (`/readyz` warns, check `storage:media`)"
    ),
    "s3_prefix": "Key prefix inside the bucket",
    "s3_endpoint_url": "Endpoint of an S3-compatible store (path-style addressing)",
    "s3_region": "Bucket region",
    "media_fetch_attempts": (
        "How many times a provider's media is fetched into the store before recgate stops "
        "trying. Retries come at the next job turn (within a minute), then after "
        "1, 2, 4 … minutes, at most an hour apart"
    ),
    "pause_timeout_ms": (
        "How long payment start (and end) waits for the provider to confirm, retries included. "
        "An unconfirmed pause is a `503` with `safe_to_collect: false`"
    ),
    "max_pause_s": (
        "A payment segment open longer than this is logged as an alert, counted in "
        "`recgate_overlong_payment_segments` and shown by `/readyz` (`payments:overlong`); it is "
        "never resumed by itself"
    ),
    "resume_retry_interval_s": "Pause between background retries of an unconfirmed resume",
    "provider_request_timeout_s": (
        "Timeout of one outbound request to a provider (HTTP, and each rtpengine ng command); "
        "readiness probes wait at most this or 2 s, whichever is less"
    ),
    "pbx_clock_skew_ms": (
        "How far a PBX's clock may be from recgate's. During a payment a PBX report dismisses "
        "danger only if it is earlier than recgate's own pause command by more than this plus "
        "the report's timestamp precision"
    ),
    "webhook_tolerance_s": (
        "How far `webhook-timestamp` may be from recgate's clock on Standard Webhooks routes "
        "(generic, sim, asterisk)"
    ),
    "generic_webhook_secret": (
        "`whsec_<base64>` (at least 16 bytes): verifies `POST /v1/webhooks/generic` and signs "
        "generic control requests. The simulator's webhooks use a key derived from it, so nothing "
        "signed for `/generic` is taken on `/sim`. Unset: generic webhooks are off. `make run` "
        "takes it from `var/dev.env` unless set"
    ),
    "generic_control_url": (
        "Base URL of the PBX's pause/resume API (`{url}/calls/{id}/recording/pause`, "
        "`{url}/health` for readiness). Unset: generic webhooks are accepted, but payment start "
        "on a generic call answers `503` with `safe_to_collect: false` and `/readyz` warns"
    ),
    "generic_media_hosts": (
        "Comma-separated (not JSON) hosts generic `media_url`s are copied from: `host` or "
        "`host:port` for https, `http://host[:port]` for plain HTTP, e.g. "
        "`pbx.council.example,http://10.0.0.5:8080`. Empty: generic media is not copied. Needs "
        "`RECGATE_GENERIC_CONTROL_URL` too"
    ),
    "sim_enabled": (
        "Enable the built-in simulated PBX (`sim` provider, `/v1/webhooks/sim`). Unset means on "
        "in development and off in production, where it is refused: it answers "
        "`safe_to_collect` without pausing anything real"
    ),
    "sim_pause_latency_ms": "How long the simulator takes to confirm a pause or resume",
    "twilio_account_sid": (
        "Twilio account SID (`AC…`); with the auth token it enables the Twilio provider"
    ),
    "twilio_auth_token": (
        "Twilio auth token: Basic auth on the REST API and the key of `X-Twilio-Signature`"
    ),
    "twilio_api_base": "Twilio REST base URL; media is fetched only from URLs under it",
    "ari_url": (
        "Asterisk ARI base URL **including `/ari`**, e.g. `http://127.0.0.1:8088/ari`; enables "
        "the Asterisk provider. The event socket is derived from it (`ws(s)://…/ari/events`)"
    ),
    "ari_user": (
        "ARI user (`ari.conf`), HTTP Basic. Without user and password, payments on Asterisk "
        "calls fail closed"
    ),
    "ari_password": "ARI password",
    "ari_app": "ARI Stasis application whose events the built-in consumer reads",
    "ari_events": (
        "Consume the ARI event WebSocket in the service (reconnecting with backoff), as well as "
        "or instead of relayed `POST /v1/webhooks/asterisk` events"
    ),
    "asterisk_webhook_secret": (
        "`whsec_<base64>`: verifies ARI events relayed to `POST /v1/webhooks/asterisk`. A secret "
        "of its own, so a body signed for another route is refused there. Unset: that route is "
        "off (the ARI WebSocket still works)"
    ),
    "rtpengine_ng": (
        "`host:port` of rtpengine's ng control port (bencode over UDP, no authentication: keep "
        "it on loopback or a private network); enables the rtpengine provider"
    ),
    "rtpengine_block_dtmf": (
        "Also `block DTMF` during a payment, so keypad digits reach neither the agent nor the "
        "far end"
    ),
    "rtpengine_recording_dir": (
        "rtpengine's `--recording-dir` (pcap method), readable and writable by recgate: every "
        "file rtpengine closes becomes a recording, is copied into the media store (size, "
        "sha256), and is "
        "deleted here when its retention ends"
    ),
    "rtpengine_notify_token": (
        "The recording daemon's finish notification carries no signature: its `--notify-uri` "
        "must end in `?token=<this>`, compared in constant time"
    ),
    "sip_proxy_token": (
        "Shared token a SIP proxy (Kamailio, OpenSIPS) sends in `X-Recgate-Token` to report call "
        "start, answer, end and recording start to `POST /v1/webhooks/sip-proxy`. Unset: that "
        "route is off"
    ),
    "retention_media_months": (
        "Media deadline = recording end + N calendar months, clamped to the month's last day"
    ),
    "retention_record_months": (
        "Call-record deadline = call end + N months; personal fields are erased then. Must be "
        "≥ `RECGATE_RETENTION_MEDIA_MONTHS`"
    ),
    "sweep_interval_s": (
        "How often the service runs the retention sweep (also once at start-up; safe from "
        "several replicas at once)"
    ),
    "redaction_margin_s": (
        "Silence this many seconds either side of an exposure when redacting a quarantined WAV"
    ),
    "audit_key": (
        "Key of the audit trail's HMAC chain and checkpoints: `whsec_<base64>` or a plain "
        "secret, at least 16 bytes. **Required in production**; keep it outside the database. "
        "In development it is derived from `RECGATE_GENERIC_WEBHOOK_SECRET`"
    ),
    "audit_previous_keys": (
        "Comma-separated keys retired by a rotation; entries and checkpoints they signed still "
        "verify"
    ),
    "audit_checkpoint_s": (
        "How often the audit chain's head is written to the media store "
        "(`audit/checkpoint.json`) and logged; also at shutdown"
    ),
}

INTRO = """\
recgate reads its settings from environment variables with the `RECGATE_` prefix, and from a
`.env` file in the working directory; the environment wins over `.env`. List values are JSON
(`RECGATE_SERVICE_AREAS='["council_tax","other"]'`), booleans `true` or `false`.

- **Production is the default.** Unless `RECGATE_ENV=development`, recgate refuses to start
  with a placeholder secret, with the simulator on, or without `RECGATE_AUDIT_KEY`. It still
  starts when a provider's secret is *missing*: each one only enables its provider. `make
  run`, `recgate demo` and the test suite choose development themselves; so must any other
  `recgate` command run against a development database (`export RECGATE_ENV=development`).
- **Errors name the variable, never the value.** A setting that fails validation is reported
  as `RECGATE_… is invalid: …` without its value, so a mistyped secret is not echoed into a
  terminal or log.
- `make run` honours every variable here, so the same command serves a real deployment; the
  container image sets `RECGATE_HOST=0.0.0.0`, `RECGATE_ENV=production`,
  `RECGATE_SIM_ENABLED=false` and `RECGATE_LOG_FORMAT=json` (see [container.md](container.md)).
"""

OTHER_VARIABLES = """\
## Other environment variables

These are read outside the settings model.

| variable | read by | meaning |
|---|---|---|
| `RECGATE_ALEMBIC_DIR` | `recgate migrate` | where the migrations are; unset: `./alembic`, then the checkout's own (the image sets `/app/alembic`) |
| `RECGATE_DEBUG` | `recgate` | `1`: print the traceback of an error instead of one line (same as `--debug`) |
| `RECGATE_IVR_TOKEN` | `recgate simulate` | the `ivr` token, instead of `--token` |
| `RECGATE_TEST_POSTGRES_URL` | tests | a PostgreSQL server where the suite may create a throwaway database; unset: PostgreSQL variants are skipped |
| `RECGATE_TEST_REQUIRE_POSTGRES`, `…_RTPENGINE`, `…_KAMAILIO`, `…_PROMTOOL`, `…_CONTAINER` | tests | `1`: a test that would skip for lack of PostgreSQL, rtpengine, Kamailio, promtool or podman fails instead (`.ci/run` sets them) |
| `RECGATE_TEST_BASE_IMAGE` | tests | base image of the container test (default: the local Debian base, see [container.md](container.md)) |
| `RECGATE_BENCH_POSTGRES_URL` | benchmarks | PostgreSQL server for `bench/` (see [benchmarks.md](benchmarks.md)) |
"""


class IncompleteReference(Exception):
    """The settings model cannot be documented as it stands (a description is missing …)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# ---- reading the model ------------------------------------------------------------------


def _without_none(annotation: object) -> list[object]:
    """The types a value may have, ``None`` left out: ``X | None`` → [X]."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return [annotation]


def is_secret(field: FieldInfo) -> bool:
    """A setting whose value must never be printed: any SecretStr/SecretBytes in its type."""

    def walk(annotation: object) -> bool:
        if annotation in (SecretStr, SecretBytes):
            return True
        return any(walk(arg) for arg in typing.get_args(annotation))

    return walk(field.annotation)


def env_names(name: str, field: FieldInfo, prefix: str) -> list[str]:
    """The environment variables that set a field: the prefixed name, or its aliases (which
    pydantic-settings reads alone, without the prefix)."""
    alias = field.validation_alias if field.validation_alias is not None else field.alias
    if alias is None:
        return [f"{prefix}{name}".upper()]
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
    names: list[str] = []
    for choice in choices:
        if isinstance(choice, AliasPath):
            first = choice.path[0]
            names.append(str(first).upper())
        else:
            names.append(str(choice).upper())
    return list(dict.fromkeys(names))


def _type_name(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f"`{value}`" for value in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in _without_none(annotation))
    if origin in (list, tuple, set, frozenset):
        inner = _type_name(args[0]) if args else "value"
        return f"JSON list of {inner}s"
    if origin is dict:
        return "JSON object"
    if isinstance(annotation, type):
        if issubclass(annotation, bool):
            return "boolean"
        if issubclass(annotation, int):
            return "integer"
        if issubclass(annotation, float):
            return "number"
        if issubclass(annotation, str):
            return "string"
        if issubclass(annotation, (SecretStr, SecretBytes)):
            return "secret"
        if issubclass(annotation, PurePath):
            return "path"
        if issubclass(annotation, enum.Enum):
            return " | ".join(f"`{member.value}`" for member in annotation)
    return str(annotation)


def type_text(field: FieldInfo) -> str:
    """The type as a reader writes it, with its bounds: ``integer, 50–60000``."""
    text = " or ".join(_type_name(arg) for arg in _without_none(field.annotation))
    low = high = None
    bounds: list[str] = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            low = str(item.ge)
        elif isinstance(item, annotated_types.Gt):
            bounds.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            high = str(item.le)
        elif isinstance(item, annotated_types.Lt):
            bounds.append(f"< {item.lt}")
    if low is not None and high is not None:
        bounds.insert(0, f"{low}–{high}")
    elif low is not None:
        bounds.insert(0, f"≥ {low}")
    elif high is not None:
        bounds.append(f"≤ {high}")
    return f"{text}, {', '.join(bounds)}" if bounds else text


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _value_text(value.value)
    if isinstance(value, PurePath):
        text = value.as_posix()
        return text if value.is_absolute() or text.startswith(".") else f"./{text}"
    if isinstance(value, list | tuple | set | frozenset | dict):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return json.dumps(items if not isinstance(items, tuple) else list(items))
    return str(value)


def default_text(field: FieldInfo) -> str:
    """The default as written in the environment; never a secret's."""
    if is_secret(field):
        return "(secret)"
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    if field.default_factory is not None:
        if field.default_factory_takes_validated_data:
            return "computed"
        factory = typing.cast("typing.Callable[[], object]", field.default_factory)
        value = factory()
    else:
        value = field.default
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    return f"`{_value_text(value)}`"


def description(name: str, field: FieldInfo) -> str | None:
    own = (field.description or "").strip()
    return own or FALLBACK_DESCRIPTIONS.get(name)


def problems(model: type[BaseModel]) -> list[str]:
    """What keeps the reference from being complete and single-sourced."""
    fields = model.model_fields
    found: list[str] = []
    for name, field in fields.items():
        own = (field.description or "").strip()
        if not own and name not in FALLBACK_DESCRIPTIONS:
            found.append(
                f"setting {name!r} has no description: give it Field(description=...) in "
                f"app/config.py, or an entry in FALLBACK_DESCRIPTIONS in {SCRIPT}"
            )
        elif own and name in FALLBACK_DESCRIPTIONS:
            found.append(
                f"setting {name!r} now has its own description in app/config.py: delete its "
                f"entry from FALLBACK_DESCRIPTIONS in {SCRIPT}"
            )
    for name in FALLBACK_DESCRIPTIONS:
        if name not in fields:
            found.append(
                f"FALLBACK_DESCRIPTIONS in {SCRIPT} describes {name!r}, which is not a setting"
            )
    seen: set[str] = set()
    for group in GROUPS:
        for name in group.fields:
            if name not in fields:
                found.append(f"group {group.title!r} in {SCRIPT} lists unknown setting {name!r}")
            if name in seen:
                found.append(f"setting {name!r} is in more than one group in {SCRIPT}")
            seen.add(name)
    return found


# ---- writing the reference --------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _slug(title: str) -> str:
    kept = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def render(model: type[BaseModel] | None = None) -> str:
    """The whole of docs/configuration.md; :class:`IncompleteReference` when incomplete."""
    model = model or _settings_model()
    found = problems(model)
    if found:
        raise IncompleteReference(found)
    fields = model.model_fields
    prefix = str(model.model_config.get("env_prefix", ""))
    grouped = [(group, [n for n in group.fields if n in fields]) for group in GROUPS]
    listed = {name for _, names in grouped for name in names}
    rest = [name for name in fields if name not in listed]
    if rest:
        grouped.append((Group("Other settings", "", tuple(rest)), rest))

    lines = [
        f"<!-- Generated by {SCRIPT} from app.config.Settings. Do not edit by hand: change",
        "     app/config.py (or the descriptions in the script) and run",
        f"     {REGENERATE} -->",
        "",
        "# Configuration reference",
        "",
        INTRO.rstrip(),
        "",
        "This page is generated from the settings model (`app/config.py`). Regenerate it with",
        f"`{REGENERATE}`; `--check` (and the test suite) fails while it is stale.",
        "",
        "Contents: "
        + ", ".join(f"[{group.title}](#{_slug(group.title)})" for group, _ in grouped)
        + ", [Other environment variables](#other-environment-variables).",
        "",
    ]
    for group, names in grouped:
        lines += [f"## {group.title}", ""]
        if group.intro:
            lines += [group.intro, ""]
        lines += ["| variable | type | default | meaning |", "|---|---|---|---|"]
        for name in names:
            field = fields[name]
            variables = "<br>".join(f"`{env}`" for env in env_names(name, field, prefix))
            kind = type_text(field)
            text = description(name, field) or ""
            lines.append(
                f"| {variables} | {_cell(kind)} | {_cell(default_text(field))} | {_cell(text)} |"
            )
        lines.append("")
    lines += [OTHER_VARIABLES.rstrip(), ""]
    return "\n".join(lines)


def _settings_model() -> type[BaseModel]:
    if str(ROOT) not in sys.path:  # run as a script: the repository is not on the path
        sys.path.insert(0, str(ROOT))
    from app.config import Settings

    return Settings


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def check(model: type[BaseModel] | None = None, path: Path = OUTPUT) -> list[str]:
    """Why ``path`` is not what the generator writes now; empty when it is."""
    try:
        expected = render(model)
    except IncompleteReference as exc:
        return exc.problems
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [f"{_shown(path)} does not exist: run {REGENERATE}"]
    if current != expected:
        return [f"{_shown(path)} is out of date with app/config.py: run {REGENERATE}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when docs/configuration.md is stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        found = check()
        for line in found:
            print(f"config_reference: {line}", file=sys.stderr)
        return 1 if found else 0
    try:
        text = render()
    except IncompleteReference as exc:
        for line in exc.problems:
            print(f"config_reference: {line}", file=sys.stderr)
        return 1
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {_shown(OUTPUT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
