"""Logging set-up: one format for the whole process, every line scrubbed of card data and
credentials, and recgate's own ids on every line written while they are bound.

The request middleware (``app/api/observe.py``) binds the request id; services bind recgate's
call and segment ids with :func:`bind` (uuids only: provider ids can hold anything a PBX put
in them). In JSON logs these are fields of every line; the console format appends them.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar, Token
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from app.domain.scrub import scrub_text

# Credentials that could reach a log line through an exception or a URL: recgate's own tokens,
# bearer and basic authorization values, Standard Webhooks secrets and signatures.
_SECRETS = re.compile(
    r"(?P<lead>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|\brg_[A-Za-z0-9_-]{16,}"
    r"|\bwhsec_[A-Za-z0-9+/=]{8,}"
    r"|\bv1,[A-Za-z0-9+/]{20,}={0,2}",
    re.IGNORECASE,
)


def scrub_log_text(text: str) -> str:
    """Card data and credentials out of one log line."""
    text = _SECRETS.sub(lambda m: (m.group("lead") or "") + "[SECRET]", text)
    return scrub_text(text)


# ---- the ids bound to the current request or job -------------------------------------------


@dataclass(frozen=True, slots=True)
class LogContext:
    """The ids every log line carries while they are bound."""

    request_id: str | None = None
    call_id: str | None = None
    segment_id: str | None = None

    def fields(self) -> dict[str, str]:
        return {
            name: value
            for name, value in (
                ("request_id", self.request_id),
                ("call_id", self.call_id),
                ("segment_id", self.segment_id),
            )
            if value is not None
        }


_NOTHING_BOUND = LogContext()
_context: ContextVar[LogContext] = ContextVar("recgate_log_context", default=_NOTHING_BOUND)


def bind(
    *, call_id: uuid.UUID | None = None, segment_id: uuid.UUID | None = None
) -> Token[LogContext]:
    """Attach recgate's own call and/or segment id to every log line written from here on in
    the current context (the request being served, or the task), and to its request log line.
    Ids not given keep their value. Tasks started afterwards inherit them; what a task binds
    stays in that task. Returns a token for :func:`unbind`, for code that must restore."""
    current = _context.get()
    return _context.set(
        replace(
            current,
            call_id=str(call_id) if call_id is not None else current.call_id,
            segment_id=str(segment_id) if segment_id is not None else current.segment_id,
        )
    )


def unbind(token: Token[LogContext]) -> None:
    """Restore the ids bound before the :func:`bind` (or :func:`bind_request`) that gave
    ``token``."""
    _context.reset(token)


def bind_request(request_id: str) -> Token[LogContext]:
    """A fresh context for one HTTP request (the request middleware calls this)."""
    return _context.set(LogContext(request_id=request_id))


def clear_context() -> Token[LogContext]:
    """No ids from here on in this context: for a task that works for many requests at once
    (a batch), which must not carry the ids of the one that happened to start it."""
    return _context.set(_NOTHING_BOUND)


def current_context() -> LogContext:
    """The ids bound now."""
    return _context.get()


# ---- lines the services write ----------------------------------------------------------------


def log_fields(
    logger: logging.Logger, level: int, msg: str, args: tuple[Any, ...], fields: dict[str, Any]
) -> None:
    """Write one line with structured ``fields`` (JSON fields; the console shows ``msg``).

    For lines written once per request or command: built directly, without the stack walk
    ``Logger.log`` does to find the caller, which no format here shows. Every handler's
    filters (the scrubbing filter among them) still run."""
    if logger.isEnabledFor(level):
        record = logger.makeRecord(
            logger.name, level, "", 0, msg, args, None, extra={"fields": fields}
        )
        logger.handle(record)


_provider_log = logging.getLogger("recgate.provider")
# Outcomes that leave the recording as recgate wants it; any other is a warning.
_FINE_OUTCOMES = frozenset({"ok", "gone"})


def log_provider_command(
    provider: str,
    action: str,
    outcome: str,
    seconds: float,
    *,
    segment_id: uuid.UUID | None = None,
) -> None:
    """One line per command sent to a provider: provider, action, outcome, duration (ms) and
    recgate's segment id (the bound one when not given). Warning level unless the outcome is
    ``ok`` or ``gone``."""
    level = logging.INFO if outcome in _FINE_OUTCOMES else logging.WARNING
    if not _provider_log.isEnabledFor(level):
        return
    duration_ms = round(seconds * 1000, 1)
    fields: dict[str, Any] = {
        "provider": provider,
        "action": action,
        "outcome": outcome,
        "duration_ms": duration_ms,
    }
    if segment_id is not None:
        fields["segment_id"] = str(segment_id)
    log_fields(
        _provider_log,
        level,
        "%s on %s: %s in %.1f ms",
        (action, provider, outcome, duration_ms),
        fields,
    )


# ---- handlers --------------------------------------------------------------------------------


class ScrubbingFilter(logging.Filter):
    """Render the message, scrub it, and drop the arguments so nothing unscrubbed remains.
    Structured fields are scrubbed too, and the ids bound at the time are attached."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # A broken log call (wrong arguments) must not raise at the call site, nor reach
            # logging's error report on stderr with its arguments unscrubbed.
            message = f"{record.msg} (unformattable log arguments: {record.args!r})"
        record.msg = scrub_log_text(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = scrub_log_text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.__dict__["fields"] = {
                str(k): scrub_log_text(v) if isinstance(v, str) else v for k, v in fields.items()
            }
        if not hasattr(record, "log_context"):
            # Taken now: a handler that formats later (a queue) must not see other ids.
            record.__dict__["log_context"] = _context.get()
        return True


def _structured(record: logging.LogRecord) -> dict[str, Any]:
    """The bound ids, then the line's own fields (a field wins over a bound id)."""
    context = getattr(record, "log_context", None)
    if not isinstance(context, LogContext):
        context = _context.get()
    entry: dict[str, Any] = context.fields()
    fields = getattr(record, "fields", None)
    if isinstance(fields, dict):
        entry.update(fields)
    return entry


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in _structured(record).items():
            entry.setdefault(name, value)
        if record.exc_info and not record.exc_text:
            # Used without ScrubbingFilter the traceback must still appear, and scrubbed.
            record.exc_text = scrub_log_text(self.formatException(record.exc_info))
        if record.exc_text:
            entry["error"] = record.exc_text
        return json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    """Human-readable lines, with the bound ids appended (``request_id=… call_id=…``)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = getattr(record, "log_context", None)
        if not isinstance(context, LogContext):
            context = _context.get()
        ids = context.fields()
        if "segment_id" in (fields := getattr(record, "fields", None) or {}):
            ids["segment_id"] = str(fields["segment_id"])
        if not ids:
            return line
        first, newline, rest = line.partition("\n")  # after the message, before a traceback
        tail = " ".join(f"{name}={value}" for name, value in ids.items())
        return f"{first} [{tail}]{newline}{rest}"


def configure_logging(fmt: str = "console", level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(ScrubbingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log would repeat raw URLs (call ids); recgate writes its own request line
    # (app/api/observe.py) with the route template instead.
    logging.getLogger("uvicorn.access").handlers[:] = []
    logging.getLogger("uvicorn.access").propagate = False
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
