"""Identifiers that come from outside (SPEC §3.2, §3.6): provider call and recording ids,
webhook ids, idempotency keys.

An id is stored verbatim, indexed and echoed back, so it cannot be scrubbed the way free text
is: an id that holds a card number is refused instead, and so is one that could not be shown
or compared faithfully (control characters, line breaks, bidirectional overrides, zero-width
characters, or the replacement character that stands for bytes that were not UTF-8, which
would make different ids collapse into one).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import fields, replace

from app.domain.events import CallInfo, PbxEvent, RecordingInfo
from app.domain.scrub import has_card_number, luhn_ok

REPLACEMENT_CHARACTER = "\ufffd"
# Anything this early is a broken clock or a hostile date, never a call recgate will see.
EARLIEST_OCCURRED_AT_YEAR = 2000


def id_problem(value: str, what: str) -> str | None:
    """Why ``value`` cannot be used as an identifier, or None. The reason never repeats the
    value: it may be the card number it is refused for."""
    if not value:
        return f"{what} is empty"
    if REPLACEMENT_CHARACTER in value:
        return f"{what} is not valid UTF-8"
    if not value.isprintable() or (
        # No ASCII character is a format character (Cf): only other text needs the walk.
        not value.isascii() and any(unicodedata.category(ch) == "Cf" for ch in value)
    ):
        return f"{what} may hold printable characters only"
    if has_card_number(value):
        return f"{what} contains a card number"
    return None


def event_problem(event: PbxEvent) -> str | None:
    """Why a parsed event cannot be stored as it is, or None: an id recgate would keep that
    holds a card number or cannot be shown faithfully, or a date no PBX can mean."""
    checks = [
        (event.event_id, "the event id"),
        (event.call.provider_call_id, "the call id"),
        *((alias, "a call alias") for alias in event.aliases),
    ]
    recording = event.recording
    if recording is not None:
        checks.append((recording.provider_recording_id, "the recording id"))
        if recording.container_id is not None:
            checks.append((recording.container_id, "the recording's container id"))
        if recording.media_format is not None:
            checks.append((recording.media_format, "the recording format"))
    for value, what in checks:
        if (problem := id_problem(value, what)) is not None:
            return problem
    # Text columns cannot hold NUL (PostgreSQL refuses it), and no PBX means one.
    texts = [*_texts_of(event.call), *(_texts_of(recording) if recording is not None else [])]
    if any("\x00" in text for text in texts):
        return "a field holds a NUL character"
    if event.occurred_at.year < EARLIEST_OCCURRED_AT_YEAR:
        return f"occurred_at is before {EARLIEST_OCCURRED_AT_YEAR}"
    return None


def _texts_of(info: CallInfo | RecordingInfo) -> list[str]:
    """The text fields of an event's call or recording part."""
    names = _FIELD_NAMES[type(info)]
    return [v for v in (getattr(info, name) for name in names) if isinstance(v, str)]


_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    kind: tuple(f.name for f in fields(kind)) for kind in (CallInfo, RecordingInfo)
}


def valid_id(value: str, what: str) -> str:
    """``value`` when it is a usable identifier; ``ValueError`` (a 422 at the API) otherwise."""
    if (problem := id_problem(value, what)) is not None:
        raise ValueError(problem)
    return value


def without_card_like_checksum(event: PbxEvent) -> PbxEvent:
    """``event`` without the provider's media checksum when a run of its hex digits reads as
    a card number (about one digest in 175 does, by chance or by design). The scrubber lets a
    hex identifier keep its digits; a checksum costs nothing to drop instead (recgate computes
    its own when it stores the media), and refusing the event would leave the recording
    unknown and never deleted."""
    recording = event.recording
    if recording is None or recording.sha256 is None:
        return event
    if not any(_has_luhn_window(run) for run in _DIGIT_RUN.findall(recording.sha256)):
        return event
    return replace(event, recording=replace(recording, sha256=None))


_DIGIT_RUN = re.compile(r"[0-9]{13,}")


def _has_luhn_window(run: str) -> bool:
    return any(
        luhn_ok(run[start : start + length])
        for length in range(13, min(19, len(run)) + 1)
        for start in range(len(run) - length + 1)
    )
