"""Standard Webhooks v1 signatures: verified on inbound webhooks, added to outbound control.

The signed content is ``"{id}.{timestamp}.{raw body}"``, HMAC-SHA256 with the secret's
decoded bytes, base64; the header is a space-separated list of ``v1,<signature>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Mapping
from datetime import datetime


class SignatureError(Exception):
    """The signature is missing, malformed, stale or wrong."""


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for ``body``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    key: bytes, body: bytes, now: datetime, msg_id: str | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for an outbound request."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(now.timestamp())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, msg_id, timestamp, body),
    }


def verify(
    key: bytes, headers: Mapping[str, str], body: bytes, now: datetime, tolerance_s: int = 300
) -> str:
    """Check the headers against the raw ``body``; return the message id.

    Raises :class:`SignatureError`. Comparison is constant-time; the timestamp must be within
    ``tolerance_s`` of ``now`` either way, so a captured request cannot be replayed later.
    """
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    missing = [
        name
        for name, value in (
            ("webhook-id", msg_id),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", signatures),
        )
        if not value
    ]
    if missing or not msg_id or not timestamp or not signatures:
        raise SignatureError("missing header: " + ", ".join(missing))
    # Plain ASCII digits only: int() would also take "1_614_265_330" or " +1", and a huge value
    # would overflow the float comparison below instead of failing as a bad signature.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise SignatureError("webhook-timestamp is not an integer")
    ts = int(timestamp)
    if abs(now.timestamp() - ts) > tolerance_s:
        raise SignatureError(
            f"webhook-timestamp is outside the {tolerance_s} s tolerance of recgate's clock (stale or replayed)"
        )
    expected = sign(key, msg_id, ts, body).encode()
    matched = False
    for candidate in signatures.split(" "):
        # Keep comparing after a match so timing does not tell which candidate matched.
        matched |= hmac.compare_digest(candidate.strip().encode(), expected)
    if not matched:
        raise SignatureError(
            "webhook-signature does not match: another secret (each route has its own), or the "
            "body, id or timestamp changed after signing"
        )
    return msg_id
