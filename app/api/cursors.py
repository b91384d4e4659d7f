"""Opaque keyset cursors: (timestamp, id) pairs, base64 so clients treat them as opaque."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from app.errors import MalformedInput

T = TypeVar("T")


def encode(moment: datetime, ident: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{moment.isoformat()}|{ident}".encode()).decode()


def decode(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not cursor:
        return None
    try:
        moment, ident = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        parsed = datetime.fromisoformat(moment)
        if parsed.tzinfo is None:
            raise ValueError("naive")
        return parsed, uuid.UUID(ident)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedInput("cursor is not one recgate issued") from exc


def next_page(
    rows: Sequence[T], limit: int, key: Callable[[T], tuple[datetime, uuid.UUID]]
) -> str | None:
    """The cursor of the page after ``rows``, or None when this page was the last."""
    return encode(*key(rows[-1])) if rows and len(rows) == limit else None
