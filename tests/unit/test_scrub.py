"""Card-data scrubbing (SPEC §3.6): card numbers and labelled security codes never survive."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.scrub import REDACTED, scrub, scrub_text

VISA = "4111111111111111"
MASTERCARD = "5555555555554444"
AMEX = "378282246310005"  # 15 digits
VISA_13 = "4222222222222"  # the classic 13-digit Visa test number
LONG_19 = "6221261234567890129"  # constructed: 18 digits plus the Luhn check digit
NOT_LUHN_16 = "4111111111111112"
UK_PHONE = "+441632960001"


def luhn_ok(digits: str) -> bool:
    """An independent Luhn check, so the tests do not trust the code under test."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value * 2 > 9 else value * 2
        total += value
    return total % 10 == 0


def luhn_check_digit(payload: str) -> str:
    for candidate in "0123456789":
        if luhn_ok(payload + candidate):
            return candidate
    raise AssertionError("unreachable: one check digit always fits")


def digits_in(text: str) -> str:
    return "".join(re.findall(r"[0-9]", text))


def test_fixture_numbers_are_what_the_tests_claim() -> None:
    for pan in (VISA, MASTERCARD, AMEX, VISA_13, LONG_19):
        assert luhn_ok(pan), f"test PAN {pan} should pass Luhn"
    assert len(VISA_13) == 13 and len(LONG_19) == 19
    assert not luhn_ok(NOT_LUHN_16), "the non-Luhn control number must fail Luhn"


# ---- card numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize("pan", [VISA, MASTERCARD, AMEX, VISA_13, LONG_19])
def test_bare_card_number_is_redacted(pan: str) -> None:
    out = scrub_text(f"customer read out {pan} slowly")
    assert pan not in out, f"{len(pan)}-digit card number {pan} survived: {out!r}"
    assert out == f"customer read out {REDACTED} slowly", f"surrounding text changed: {out!r}"


@pytest.mark.parametrize(
    "written",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111 1111-1111 1111",
        "5555 5555 5555 4444",
        "3782 822463 10005",  # Amex grouping 4-6-5
        "3782-822463-10005",
        "6221 2612 3456 7890 129",
        "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",  # speech-to-text style, one digit at a time
        "4111 - 1111 - 1111 - 1111",
        "4111  1111  1111  1111",
    ],
)
def test_card_number_with_spaces_or_dashes_is_redacted(written: str) -> None:
    out = scrub_text(f"card: {written}.")
    assert digits_in(out) == "", f"card number written as {written!r} left digits behind: {out!r}"
    assert REDACTED in out, f"card number written as {written!r} was not marked redacted: {out!r}"


def test_card_number_at_start_and_end_of_text() -> None:
    assert scrub_text(VISA) == REDACTED, "a text that is only a card number must be fully redacted"
    assert scrub_text(f"{VISA} end") == f"{REDACTED} end"
    assert scrub_text(f"start {VISA}") == f"start {REDACTED}"


def test_two_card_numbers_in_one_text_are_both_redacted() -> None:
    out = scrub_text(f"first {VISA}, then {MASTERCARD}")
    assert VISA not in out and MASTERCARD not in out, f"a second card number survived: {out!r}"


def test_non_luhn_sixteen_digit_run_is_left_alone() -> None:
    text = f"order reference {NOT_LUHN_16}"
    assert scrub_text(text) == text, "a 16-digit number failing Luhn is not a card number"


@pytest.mark.parametrize(
    "text",
    [
        f"caller {UK_PHONE} asked about council tax",
        "call back on +44 1632 960001 or 01632 960999",
        "07700 900123",
        "from +441632960001 to +441632960999",
    ],
)
def test_uk_phone_numbers_are_left_alone(text: str) -> None:
    assert scrub_text(text) == text, f"phone number text was altered: {scrub_text(text)!r}"


@pytest.mark.parametrize(
    "text",
    [
        "invoice 123456789012",  # 12 digits: too short to be a card
        "born 1970-01-01, visited 2026-11-28",
        "account 12345678 sort code 12-34-56",
        "amount 1234.56 on 2026-11-28 at 10:00",
    ],
)
def test_other_numbers_that_are_not_cards_survive(text: str) -> None:
    assert scrub_text(text) == text, f"a non-card number was altered: {scrub_text(text)!r}"


@pytest.mark.parametrize(
    "text",
    [
        f"0000{VISA}0000",  # 24 digits, no separators
        f"1234567{AMEX}89",
        f"ref 12 {VISA}",  # another number one space in front
        f"{VISA} 123",  # security code typed straight after the card number
        "4111 1111 1111 1111 123",
        "5555-5555-5555-4444-0926",  # expiry glued on with a dash
        f"{MASTERCARD} {VISA}",
    ],
)
def test_card_number_embedded_in_a_longer_digit_run_is_redacted(text: str) -> None:
    out = scrub_text(text)
    assert digits_in(out) == "", f"card number inside {text!r} survived: {out!r}"
    assert REDACTED in out


# ---- security codes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("CVV 123", "123"),
        ("cvv 123", "123"),
        ("cvc: 4567", "4567"),
        ("security code 999", "999"),
        ("Security Code: 999", "999"),
        ("CV2=123", "123"),
        ("CVV2: 321", "321"),
        ("CID 1234", "1234"),
        ("card verification value 808", "808"),
        ("card security code 707", "707"),
        ('{"cvv": "123"}', "123"),
        ('{"cvv":321}', "321"),
        ("CVV123", "123"),
        ("CVV-123", "123"),
        ("CVV #123", "123"),
        ("cvv code 123", "123"),
        ("the cvv is 456", "456"),
        ("card_cvv=123", "123"),
    ],
)
def test_security_code_next_to_card_word_is_redacted(text: str, code: str) -> None:
    out = scrub_text(f"caller said {text} then paused")
    assert code not in out, f"security code in {text!r} survived: {out!r}"
    assert REDACTED in out, f"security code in {text!r} was not marked redacted: {out!r}"


@pytest.mark.parametrize(
    "text",
    [
        "flat 123",
        "123 High Street",
        "Flat 12, 123 High Street, postcode AB1 2CD",
        "duration 312 seconds",
        "extension 4567",
        "acid 123",  # the card word must stand alone, not inside another word
        "code 123",  # "code" alone names nothing about a card
    ],
)
def test_other_short_numbers_are_left_alone(text: str) -> None:
    assert scrub_text(text) == text, f"non-card short number was altered: {scrub_text(text)!r}"


def test_card_and_code_in_one_sentence_are_both_redacted() -> None:
    out = scrub_text("card 4111 1111 1111 1111 exp 09/27 cvv 123")
    assert "4111" not in out and "cvv 123" not in out and "123" not in out, (
        f"card number or security code survived: {out!r}"
    )
    assert "09/27" in out, "the expiry date is not card data under SPEC §3.6 and should stay"


def test_security_code_word_in_front_of_a_card_number_does_not_leave_part_of_it() -> None:
    out = scrub_text("CVV 4111 1111 1111 1111")
    assert digits_in(out) == "", f"part of the card number survived: {out!r}"


def test_text_without_digits_is_returned_unchanged() -> None:
    text = "no numbers here, only cvv and security code words"
    assert scrub_text(text) == text


def test_unicode_digits_next_to_a_card_number_do_not_hide_it() -> None:
    out = scrub_text(f"\u0663{VISA}\u0663")  # ARABIC-INDIC DIGIT THREE either side
    assert VISA not in out, f"card number next to non-ASCII digits survived: {out!r}"


# ---- JSON-like values -----------------------------------------------------------------------


def test_nested_json_is_scrubbed_everywhere() -> None:
    payload = {
        "type": "call.started",
        "call": {
            "id": "c-1",
            "from": UK_PHONE,
            "notes": [f"card {VISA}", {"deep": f"cvv 123 {AMEX}"}],
        },
        "extra": {"caller_said": "my card is 5555-5555-5555-4444"},
        "tuple": ("x", MASTERCARD),
    }
    out = scrub(payload)
    text = json.dumps(out)
    for secret in (VISA, AMEX, "5555-5555-5555-4444", MASTERCARD, "cvv 123"):
        assert secret not in text, f"{secret!r} survived nested scrubbing: {text}"
    assert out["call"]["from"] == UK_PHONE, "a phone number field must be kept"
    assert out["call"]["id"] == "c-1" and out["type"] == "call.started", "ordinary fields changed"


def test_scrub_does_not_mutate_its_input() -> None:
    payload = {"note": f"card {VISA}", "list": [VISA]}
    scrub(payload)
    assert payload == {"note": f"card {VISA}", "list": [VISA]}, "scrub must return a copy"


@pytest.mark.parametrize("pan", [VISA, MASTERCARD, AMEX, LONG_19])
def test_card_number_given_as_json_integer_is_redacted(pan: str) -> None:
    out = scrub(json.loads(f'{{"nested": [{{"value": {pan}}}]}}'))
    assert out == {"nested": [{"value": REDACTED}]}, f"integer card number survived: {out!r}"


def test_ordinary_integers_booleans_floats_and_null_are_kept() -> None:
    payload = {"duration_s": 312, "amount": 12.5, "ok": True, "none": None, "big": int(NOT_LUHN_16)}
    assert scrub(payload) == payload, "non-card scalar values must pass through untouched"


@pytest.mark.parametrize(
    "key",
    [
        "cvv",
        "CVV",
        "cvc",
        "cvv2",
        "cv2",
        "csc",
        "security_code",
        "securityCode",
        "card_verification_value",
        "card_cvv",
        "cardCvv",
        "cvv_code",
        "security-code",
    ],
)
@pytest.mark.parametrize("value", [123, "123", "4567", " 999 "])
def test_value_of_a_key_naming_a_security_code_is_redacted(key: str, value: object) -> None:
    out = scrub({"card": {key: value, "holder": "A N Other"}})
    assert out["card"][key] == REDACTED, f"security code under key {key!r} survived: {out!r}"
    assert out["card"]["holder"] == "A N Other", "sibling fields must be kept"


def test_security_code_key_does_not_redact_non_numeric_values() -> None:
    out = scrub({"cvv": None, "cvc": True, "csc": "not provided"})
    assert out == {"cvv": None, "cvc": True, "csc": "not provided"}


def test_ordinary_keys_with_short_numbers_are_kept() -> None:
    payload = {"flat": 123, "house_number": "123", "extension": 4567, "duration_s": 999}
    assert scrub(payload) == payload, "short numbers under ordinary keys must not be redacted"


# ---- property -------------------------------------------------------------------------------

_NON_DIGIT_TEXT = st.text(
    alphabet=st.characters(exclude_characters="0123456789", codec="utf-8"), max_size=30
)


@st.composite
def luhn_card_numbers(draw: st.DrawFn) -> str:
    length = draw(st.integers(min_value=13, max_value=19))
    payload = draw(st.text(alphabet="0123456789", min_size=length - 1, max_size=length - 1))
    return payload + luhn_check_digit(payload)


@st.composite
def formatted(draw: st.DrawFn, digits: str) -> str:
    """``digits`` split into random groups joined by random spaces/dashes (or nothing)."""
    out = digits[0]
    for char in digits[1:]:
        if draw(st.booleans()):
            out += draw(st.sampled_from(["", " ", "-", " - ", "  "]))
        out += char
    return out


@settings(max_examples=400, deadline=None)
@given(data=st.data(), pan=luhn_card_numbers(), before=_NON_DIGIT_TEXT, after=_NON_DIGIT_TEXT)
def test_no_luhn_valid_card_number_survives_scrub_text(
    data: st.DataObject, pan: str, before: str, after: str
) -> None:
    written = data.draw(formatted(pan))
    out = scrub_text(before + written + after)
    assert pan not in digits_in(out), f"card number {pan} written as {written!r} survived: {out!r}"
    assert digits_in(out) == "", f"digits of card number {pan} ({written!r}) leaked: {out!r}"
