"""Row ids are time-ordered UUIDs (version 7): new rows' keys land next to each other."""

from __future__ import annotations

import time
import uuid

from app.domain.row_ids import new_id
from app.domain.scrub import scrub_text


def test_an_id_is_a_version_7_uuid_of_the_time_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    made = new_id()
    after = time.time_ns() // 1_000_000
    assert made.version == 7 and made.variant == uuid.RFC_4122
    assert before <= made.int >> 80 <= after


def test_ids_made_later_sort_later_as_uuids_and_as_text() -> None:
    earlier = [new_id() for _ in range(50)]
    time.sleep(0.002)  # the next millisecond at least
    later = [new_id() for _ in range(50)]
    assert max(earlier) < min(later)
    assert max(i.hex for i in earlier) < min(i.hex for i in later)  # as SQLite stores them
    assert len(set(earlier + later)) == 100


def test_the_scrubber_reads_an_id_as_an_identifier() -> None:
    """Its random bits can make any digit run, but it is a UUID with RFC 4122's variant: it
    is stored and logged as it is, never mistaken for a card number."""
    for _ in range(5_000):
        made = new_id()
        assert scrub_text(str(made)) == str(made)
        assert scrub_text(f"recording {made.hex} paused") == f"recording {made.hex} paused"
