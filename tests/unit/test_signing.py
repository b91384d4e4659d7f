"""Standard Webhooks v1 signatures (SPEC §3.2): the published vector, tolerance, bad input."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from app.telephony.signing import SignatureError, sign, signed_headers, verify

# The published test vector of the Standard Webhooks reference library:
# github.com/standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py,
# test_sign_function (the same id, payload and secret are DEFAULT_MSG_ID, DEFAULT_PAYLOAD and
# DEFAULT_SECRET there).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_PAYLOAD = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
# The same file's test_invalid_signature_raises_error: the vector with its last byte changed.
VECTOR_BAD_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="

KEY = base64.b64decode(VECTOR_SECRET.removeprefix("whsec_"))
VECTOR_NOW = datetime.fromtimestamp(VECTOR_TIMESTAMP, UTC)


def vector_headers(**changes: str) -> dict[str, str]:
    headers = {
        "webhook-id": VECTOR_MSG_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    headers.update(changes)
    return headers


def fresh_headers(now: datetime, body: bytes = VECTOR_PAYLOAD, key: bytes = KEY) -> dict[str, str]:
    return signed_headers(key, body, now, msg_id="msg_test")


# ---- the published vector -------------------------------------------------------------------


def test_sign_reproduces_the_published_vector() -> None:
    got = sign(KEY, VECTOR_MSG_ID, VECTOR_TIMESTAMP, VECTOR_PAYLOAD)
    assert got == VECTOR_SIGNATURE, f"not interoperable with Standard Webhooks: {got}"


def test_verify_accepts_the_published_vector_and_returns_the_message_id() -> None:
    got = verify(KEY, vector_headers(), VECTOR_PAYLOAD, VECTOR_NOW)
    assert got == VECTOR_MSG_ID, f"verify should return the webhook-id, got {got!r}"


def test_verify_refuses_the_published_bad_signature() -> None:
    with pytest.raises(SignatureError):
        verify(
            KEY,
            vector_headers(**{"webhook-signature": VECTOR_BAD_SIGNATURE}),
            VECTOR_PAYLOAD,
            VECTOR_NOW,
        )


def test_signed_headers_round_trip_through_verify() -> None:
    now = datetime(2026, 11, 28, 10, 0, 0, 900000, tzinfo=UTC)
    body = b'{"type": "call.started"}'
    headers = signed_headers(KEY, body, now)
    assert headers["webhook-id"].startswith("msg_"), "generated ids follow the msg_ convention"
    assert headers["webhook-timestamp"] == str(int(now.timestamp())), "timestamp is whole seconds"
    assert verify(KEY, headers, body, now) == headers["webhook-id"], "own signature must verify"


def test_signed_headers_generate_a_new_id_each_time() -> None:
    now = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    first, second = signed_headers(KEY, b"{}", now), signed_headers(KEY, b"{}", now)
    assert first["webhook-id"] != second["webhook-id"], "two requests must not share an id"


# ---- wrong content or key -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b'{"test": 2432232315}', b'{"test": 2432232314} ', b'{"test":2432232314}', b""],
    ids=["digit-changed", "trailing-space", "re-serialised", "empty"],
)
def test_tampered_body_is_refused(body: bytes) -> None:
    with pytest.raises(SignatureError):
        verify(KEY, vector_headers(), body, VECTOR_NOW)


def test_wrong_secret_is_refused() -> None:
    with pytest.raises(SignatureError):
        verify(b"another-secret-of-32-bytes-long!", vector_headers(), VECTOR_PAYLOAD, VECTOR_NOW)


def test_undecoded_secret_is_refused() -> None:
    # verify takes the decoded key bytes; passing the "whsec_..." text is a different key.
    with pytest.raises(SignatureError):
        verify(VECTOR_SECRET.encode(), vector_headers(), VECTOR_PAYLOAD, VECTOR_NOW)


def test_changed_message_id_is_refused() -> None:
    with pytest.raises(SignatureError):
        verify(KEY, vector_headers(**{"webhook-id": "msg_other"}), VECTOR_PAYLOAD, VECTOR_NOW)


def test_changed_timestamp_is_refused_even_within_tolerance() -> None:
    headers = vector_headers(**{"webhook-timestamp": str(VECTOR_TIMESTAMP + 1)})
    with pytest.raises(SignatureError):
        verify(KEY, headers, VECTOR_PAYLOAD, VECTOR_NOW)


# ---- timestamp tolerance (±5 minutes) -------------------------------------------------------


@pytest.mark.parametrize(
    "skew_s", [-301, 301, -3600, 86400], ids=["just-old", "just-future", "hour-old", "day-future"]
)
def test_timestamp_outside_tolerance_is_refused(skew_s: int) -> None:
    with pytest.raises(SignatureError, match="tolerance"):
        verify(KEY, vector_headers(), VECTOR_PAYLOAD, VECTOR_NOW + timedelta(seconds=-skew_s))


@pytest.mark.parametrize(
    "skew_s", [-300, -299, 0, 299, 300], ids=["edge-old", "old", "now", "future", "edge-future"]
)
def test_timestamp_within_tolerance_is_accepted(skew_s: int) -> None:
    # skew_s > 0 means the sender's clock is ahead of ours.
    assert (
        verify(KEY, vector_headers(), VECTOR_PAYLOAD, VECTOR_NOW - timedelta(seconds=skew_s))
        == VECTOR_MSG_ID
    )


def test_tolerance_is_configurable() -> None:
    now = VECTOR_NOW + timedelta(seconds=60)
    assert verify(KEY, vector_headers(), VECTOR_PAYLOAD, now, tolerance_s=60) == VECTOR_MSG_ID
    with pytest.raises(SignatureError):
        verify(KEY, vector_headers(), VECTOR_PAYLOAD, now, tolerance_s=59)


def test_stale_request_is_refused_even_with_a_correct_signature() -> None:
    # A captured request replayed later: the signature is genuine, the timestamp is not fresh.
    headers = fresh_headers(VECTOR_NOW)
    verify(KEY, headers, VECTOR_PAYLOAD, VECTOR_NOW)
    with pytest.raises(SignatureError):
        verify(KEY, headers, VECTOR_PAYLOAD, VECTOR_NOW + timedelta(minutes=6))


# ---- header shape ---------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_refused(missing: str) -> None:
    headers = vector_headers()
    del headers[missing]
    with pytest.raises(SignatureError, match="missing"):
        verify(KEY, headers, VECTOR_PAYLOAD, VECTOR_NOW)


@pytest.mark.parametrize("empty", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_empty_header_is_refused(empty: str) -> None:
    with pytest.raises(SignatureError):
        verify(KEY, vector_headers(**{empty: ""}), VECTOR_PAYLOAD, VECTOR_NOW)


def test_one_matching_signature_among_several_is_enough() -> None:
    # As in the reference library's test_multi_sig_payload_is_valid: key rotation sends several.
    signatures = " ".join(
        [
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            VECTOR_SIGNATURE,
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        ]
    )
    headers = vector_headers(**{"webhook-signature": signatures})
    assert verify(KEY, headers, VECTOR_PAYLOAD, VECTOR_NOW) == VECTOR_MSG_ID


def test_several_signatures_none_matching_are_refused() -> None:
    signatures = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= " + VECTOR_BAD_SIGNATURE
    with pytest.raises(SignatureError):
        verify(KEY, vector_headers(**{"webhook-signature": signatures}), VECTOR_PAYLOAD, VECTOR_NOW)


@pytest.mark.parametrize(
    "signature",
    [
        "v1a," + VECTOR_SIGNATURE.removeprefix("v1,"),  # right bytes, wrong version tag
        "v2," + VECTOR_SIGNATURE.removeprefix("v1,"),
        VECTOR_SIGNATURE.removeprefix("v1,"),  # no version tag at all
        "v1,",
        "v1,not-base64!!",
        "garbage",
        ",",
        " ",
    ],
    ids=["v1a", "v2", "untagged", "empty-v1", "not-base64", "garbage", "comma", "space"],
)
def test_malformed_or_wrongly_versioned_signature_is_refused(signature: str) -> None:
    with pytest.raises(SignatureError):
        verify(KEY, vector_headers(**{"webhook-signature": signature}), VECTOR_PAYLOAD, VECTOR_NOW)


@pytest.mark.parametrize("timestamp", ["hello", "1614265330.0", "", "0x6037", "1614265330abc"])
def test_non_integer_timestamp_is_refused(timestamp: str) -> None:
    with pytest.raises(SignatureError):
        verify(KEY, vector_headers(**{"webhook-timestamp": timestamp}), VECTOR_PAYLOAD, VECTOR_NOW)


@pytest.mark.parametrize(
    "timestamp",
    ["9" * 400, "-" + "9" * 400, "1" * 5000, "1_614_265_330", "+1614265330", " 1614265330"],
    ids=["huge", "huge-negative", "beyond-int-limit", "underscores", "plus-sign", "leading-space"],
)
def test_oversized_or_non_canonical_timestamp_is_a_signature_error(timestamp: str) -> None:
    # Unauthenticated input: anything but SignatureError would surface as a 500, not a 401.
    with pytest.raises(SignatureError):
        verify(KEY, vector_headers(**{"webhook-timestamp": timestamp}), VECTOR_PAYLOAD, VECTOR_NOW)


@pytest.mark.parametrize("route", ["generic", "sim", "asterisk"])
def test_the_shell_signer_signs_with_each_routes_own_key(route: str) -> None:
    """scripts/sign-webhook.sh (used throughout docs/api.md) agrees with recgate on every
    route's key, and its headers verify on no other route."""
    import os
    import subprocess
    from pathlib import Path

    from app.config import Settings

    generic = "whsec_" + base64.b64encode(b"generic-secret-for-the-signer-01").decode()
    asterisk = "whsec_" + base64.b64encode(b"asterisk-secret-for-the-signer-1").decode()
    settings = Settings(
        generic_webhook_secret=generic,
        asterisk_webhook_secret=asterisk,
        sim_enabled=True,
        _env_file=None,
    )
    body = '{"type": "call.started"}'
    script = Path(__file__).resolve().parents[2] / "scripts" / "sign-webhook.sh"
    env = {
        **os.environ,
        "RECGATE_GENERIC_WEBHOOK_SECRET": generic,
        "RECGATE_ASTERISK_WEBHOOK_SECRET": asterisk,
    }
    printed = subprocess.run(
        [str(script), "--route", route, body], env=env, capture_output=True, text=True, check=True
    ).stdout
    headers = dict(line.split(": ", 1) for line in printed.strip().splitlines())
    now = datetime.now(UTC)
    for other in ("generic", "sim", "asterisk"):
        key = settings.webhook_key(other)
        assert key is not None
        if other == route:
            assert verify(key, headers, body.encode(), now) == headers["webhook-id"]
        else:
            with pytest.raises(SignatureError):
                verify(key, headers, body.encode(), now)
