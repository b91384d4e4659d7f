"""Opaque keyset cursors: (timestamp, id) pairs, base64 so clients treat them as opaque."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime

from app.errors import MalformedInput


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
