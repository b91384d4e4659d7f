"""Ids of the rows recgate makes: time-ordered (UUID version 7, RFC 9562).

A random id (version 4) puts each new row's key, and each index entry that carries it (a
call's transitions, its recordings), on a page of its own anywhere in the index: a batch of
webhooks for twenty calls then writes twenty scattered pages per index. Ids that start with
the time they were made land next to each other, as the calls live at the same time do:
measured in process on SQLite, a batch of the benchmark's webhooks wrote 59 pages to the
WAL with random ids and 31–35 with these (docs/benchmarks.md).

The id is still a UUID with RFC 4122's variant, and its hex always holds a letter: the
scrubber reads it as an identifier, dashed or not, never as a card number. It is still
unguessable (74 of its bits are random), and tells when it was made, to the millisecond, as
the rows it keys already do.
"""

from __future__ import annotations

import secrets
import time
import uuid

_VERSION = 0x7 << 76
_VARIANT = 0b10 << 62
_RAND_A = (1 << 12) - 1
_RAND_B = (1 << 62) - 1


def new_id() -> uuid.UUID:
    """A new row id: the Unix time in milliseconds (48 bits), the version, 12 random bits,
    the variant and 62 random bits; drawn again in the rare case its hex has no letter (the
    scrubber reads a run of decimal digits as one, app/domain/scrub.py)."""
    millis = time.time_ns() // 1_000_000
    while True:
        rand = int.from_bytes(secrets.token_bytes(10), "big")
        made = uuid.UUID(
            int=(millis << 80)
            | _VERSION
            | ((rand >> 62) & _RAND_A) << 64
            | _VARIANT
            | (rand & _RAND_B)
        )
        if not made.hex.isdigit():
            return made
