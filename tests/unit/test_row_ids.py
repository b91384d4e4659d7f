"""Row ids are time-ordered UUIDs (version 7): new rows' keys land next to each other."""

from __future__ import annotations

import secrets
import time
import uuid

import pytest

from app.domain.row_ids import new_id
from app.domain.scrub import scrub_text


def test_an_id_is_a_version_7_uuid_of_the_time_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    made = new_id()
    after = time.time_ns() // 1_000_000
    assert made.version == 7 and made.variant == uuid.RFC_4122
    assert before <= made.int >> 80 <= after


def test_ids_made_later_sort_later_as_uuids_and_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_765_000_000_000_000_000]  # ns
    monkeypatch.setattr(time, "time_ns", lambda: now[0])
    earlier = [new_id() for _ in range(50)]
    now[0] += 1_000_000  # the next millisecond
    later = [new_id() for _ in range(50)]
    assert max(earlier) < min(later)
    assert max(i.hex for i in earlier) < min(i.hex for i in later)  # as SQLite stores them
    assert len(set(earlier + later)) == 100


# A time whose 48-bit millisecond count is written in decimal digits only (0x019999999999:
# 2025-09-30), as stretches of years are: the id's letters then come from its random bits.
_DIGITS_ONLY_MS = 0x019999999999


def test_the_scrubber_reads_an_id_as_an_identifier(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its random bits can make any digit run, but it is a UUID with RFC 4122's variant: it
    is stored and logged as it is, never mistaken for a card number, dashed or as hex, even
    at a time that gives its first twelve characters no letter."""
    monkeypatch.setattr(time, "time_ns", lambda: _DIGITS_ONLY_MS * 1_000_000)
    for _ in range(5_000):
        made = new_id()
        assert made.hex.startswith("019999999999")
        assert scrub_text(str(made)) == str(made)
        assert scrub_text(f"recording {made.hex} paused") == f"recording {made.hex} paused"


def test_an_id_whose_hex_would_be_digits_only_is_drawn_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Digits only, its hex would read as a number (a card's, for the scrubber). With one
    letter it is an identifier: the fewest an id may have."""
    monkeypatch.setattr(time, "time_ns", lambda: _DIGITS_ONLY_MS * 1_000_000)
    # Random bits whose hex is all digits, then the same with one letter (the last).
    draws = iter([bytes.fromhex("12345678901234567890"), bytes.fromhex("1234567890123456789a")])
    monkeypatch.setattr(secrets, "token_bytes", lambda n: next(draws))
    made = new_id()
    assert sum(c in "abcdef" for c in made.hex) == 1 and made.version == 7
    assert scrub_text(made.hex) == made.hex
    assert scrub_text(str(made)) == str(made)
