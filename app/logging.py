"""Logging set-up: one format for the whole process, every line scrubbed of card data and
credentials."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

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


class ScrubbingFilter(logging.Filter):
    """Render the message, scrub it, and drop the arguments so nothing unscrubbed remains."""

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
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            # Used without ScrubbingFilter the traceback must still appear, and scrubbed.
            record.exc_text = scrub_log_text(self.formatException(record.exc_info))
        if record.exc_text:
            entry["error"] = record.exc_text
        return json.dumps(entry)


def configure_logging(fmt: str = "console", level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(ScrubbingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access logs would repeat URLs (call ids) per request and cost throughput; keep them off.
    logging.getLogger("uvicorn.access").handlers[:] = []
    logging.getLogger("uvicorn.access").propagate = False
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
