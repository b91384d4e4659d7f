"""Ids from outside (SPEC §3.2): refused when they hold a card number or unshowable
characters, and never for the shapes real providers use."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import pytest

from app.domain.events import CallInfo, EventType, PbxEvent, RecordingInfo
from app.domain.ids import event_problem, id_problem, without_card_like_checksum

CARD = "4012888888881881"


def provider_ids(rng: random.Random) -> dict[str, str]:
    """One id of each shape the providers recgate speaks to really send."""
    hexdigits = "0123456789abcdef"
    epoch = rng.randint(1_700_000_000, 1_900_000_000)
    return {
        "twilio call sid": "CA" + "".join(rng.choice(hexdigits) for _ in range(32)),
        "twilio recording sid": "RE" + "".join(rng.choice(hexdigits) for _ in range(32)),
        "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "uuid hex": uuid.UUID(int=rng.getrandbits(128), version=4).hex,
        "asterisk uniqueid": f"{epoch}.{rng.randint(0, 999_999)}",
        "asterisk recording": f"call-{epoch}.{rng.randint(0, 99_999)}",
        # SIPp's "%u-%p@%s" and a phone's random hex, then rtpengine's "<call-id>-<16 hex>".
        "sip call-id": f"{rng.randint(1, 99_999)}-{rng.randint(100, 65_535)}@127.0.0.1",
        "phone call-id": f"{rng.getrandbits(96):024x}@10.{rng.randint(0, 255)}.0.1",
        "rtpengine file": f"{rng.getrandbits(96):024x}-{rng.getrandbits(64):016x}-mix.wav",
        "webhook id": f"msg_{rng.getrandbits(96):024x}",
    }


def test_real_provider_id_shapes_are_not_refused() -> None:
    """Hex ids keep their digits (the scrubber's hex-identifier rule: 16 or more hex characters
    with a letter among them). What remains is a hex part that happens to be all decimal digits
    and pass Luhn, which no rule can tell from a card number: for rtpengine's 16-hex file
    suffix about 1 in 20,000."""
    rng = random.Random(9)
    samples = 5_000
    refused = [
        (shape, value)
        for _ in range(samples)
        for shape, value in provider_ids(rng).items()
        if id_problem(value, "the id") is not None
    ]
    assert len(refused) <= 2, refused


@pytest.mark.parametrize(
    "value",
    [
        CARD,
        f"CA{CARD}",
        f"call-{CARD}",
        f"x{CARD}x",
        "4012 8888 8888 1881",
        "4012.8888.8888.1881",
        "4012\u200b8888\u200b8888\u200b1881",
        CARD.translate(str.maketrans("0123456789", "０１２３４５６７８９")),
    ],
)
def test_an_id_holding_a_card_number_is_refused_without_repeating_it(value: str) -> None:
    problem = id_problem(value, "the call id")
    assert problem == "the call id contains a card number" or (
        problem is not None and "printable" in problem
    )


@pytest.mark.parametrize(
    "value", ["", "a\x00", "a\nb", "a\u202eb", "a\u200bb", "a\ufffdb", "a\u2028b"]
)
def test_an_id_that_cannot_be_shown_faithfully_is_refused(value: str) -> None:
    assert id_problem(value, "the id") is not None


def _event(**recording: str | None) -> PbxEvent:
    return PbxEvent(
        provider="generic",
        event_id="e-1",
        type=EventType.RECORDING_COMPLETED,
        occurred_at=datetime(2026, 12, 3, tzinfo=UTC),
        call=CallInfo("c-1"),
        recording=RecordingInfo("r-1", **recording),  # type: ignore[arg-type]
    )


def test_event_problem_names_the_field() -> None:
    assert event_problem(_event()) is None
    assert event_problem(_event(media_format=CARD)) == "the recording format contains a card number"
    early = PbxEvent(
        "generic", "e", EventType.CALL_STARTED, datetime(1970, 1, 1, tzinfo=UTC), CallInfo("c")
    )
    assert event_problem(early) == "occurred_at is before 2000"


def test_a_checksum_whose_digits_read_as_a_card_number_is_dropped() -> None:
    plain = "ab" * 32
    assert without_card_like_checksum(_event(sha256=plain)).recording.sha256 == plain  # type: ignore[union-attr]
    hostile = CARD + "ab" * 24
    assert without_card_like_checksum(_event(sha256=hostile)).recording.sha256 is None  # type: ignore[union-attr]
