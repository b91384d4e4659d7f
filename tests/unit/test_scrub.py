"""Card-data scrubbing (SPEC §3.6): card numbers and labelled security codes never survive."""

from __future__ import annotations

import json
import re
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.domain.scrub import (
    REDACTED,
    has_card_data,
    scrub,
    scrub_fields,
    scrub_phone_number,
    scrub_text,
)

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
    """The digits a reader sees in ``text``: fullwidth, Arabic-Indic and other forms count."""
    normal = unicodedata.normalize("NFKC", text)
    return "".join(str(unicodedata.decimal(char)) for char in normal if char.isdecimal())


def makes_digits(char: str) -> bool:
    return any(c.isdecimal() for c in unicodedata.normalize("NFKC", char))


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


def test_unicode_digits_next_to_a_card_number_are_digits_of_the_same_run() -> None:
    # ARABIC-INDIC DIGIT THREE is a 3: glued on, it makes an 18-digit number, the same as ASCII.
    glued = f"\u0663{VISA}\u0663"
    assert has_card_data(glued) == has_card_data(f"3{VISA}3"), "script must not change the answer"
    out = scrub_text(f"\u0663\u0663\u0663 {VISA} \u0663")
    assert VISA not in digits_in(out), f"card number next to non-ASCII digits survived: {out!r}"


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

# No character that is or becomes a digit: a digit glued to a card number makes another number.
_NON_DIGIT_TEXT = st.text(
    alphabet=st.characters(codec="utf-8").filter(lambda char: not makes_digits(char)), max_size=30
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


# The scrubber's documented exemption: digits inside a hex identifier belong to it.
_HEX_ID_LIKE = re.compile(
    r"[0-9a-f]{16}|[0-9A-F]{32}|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(data=st.data(), pan=luhn_card_numbers(), before=_NON_DIGIT_TEXT, after=_NON_DIGIT_TEXT)
def test_no_luhn_valid_card_number_survives_scrub_text(
    data: st.DataObject, pan: str, before: str, after: str
) -> None:
    written = data.draw(formatted(pan))
    assume(not _HEX_ID_LIKE.search(before + written + after))
    out = scrub_text(before + written + after)
    assert pan not in digits_in(out), f"card number {pan} written as {written!r} survived: {out!r}"
    assert digits_in(out) == "", f"digits of card number {pan} ({written!r}) leaked: {out!r}"


# ---- separators and digit forms a hostile writer uses ----------------------------------------

ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"]
UNICODE_SPACES = ["\u00a0", "\u2009", "\u202f", "\u3000", "\u2007"]


def grouped(pan: str, layout: tuple[int, ...], separator: str) -> str:
    pieces, start = [], 0
    for size in layout:
        pieces.append(pan[start : start + size])
        start += size
    assert start == len(pan), "layout must cover the whole number"
    return separator.join(pieces)


def to_script(text: str, zero: str) -> str:
    """``text`` with its ASCII digits written in the script whose digit zero is ``zero``."""
    return "".join(chr(ord(zero) + int(c)) if c.isdigit() else c for c in text)


@pytest.mark.parametrize(
    "written",
    [
        "4111.1111.1111.1111",
        "4111/1111/1111/1111",
        "4111_1111_1111_1111",
        "4111. 1111. 1111. 1111",
        "4111 / 1111 / 1111 / 1111",
        "4111.1111/1111_1111",  # mixed
        "4111 .1111\u200b/ 1111-1111",
        "4111\u20131111\u20141111\u22121111",  # en dash, em dash, minus sign
        "4111\uff0e1111\uff0e1111\uff0e1111",  # fullwidth full stop
        "4111\uff0f1111\uff0f1111\uff0f1111",  # fullwidth solidus
        "4111\u00ad1111\u00ad1111\u00ad1111",  # soft hyphen
        grouped(AMEX, (4, 6, 5), "."),
        grouped(AMEX, (4, 6, 5), "/"),
        grouped("30569309025904", (4, 6, 4), "/"),  # Diners
        grouped(VISA_13, (4, 4, 4, 1), "."),
        grouped(LONG_19, (4, 4, 4, 4, 3), "_"),
        *(grouped(VISA, (4, 4, 4, 4), zw) for zw in ZERO_WIDTH),
        *(VISA[:7] + zw + VISA[7:] for zw in ZERO_WIDTH),  # inside a group, not only between
        *(grouped(VISA, (4, 4, 4, 4), space) for space in UNICODE_SPACES),
        grouped(MASTERCARD, (4, 4, 4, 4), "\u200b \u200b"),
        grouped(MASTERCARD, (4, 4, 4, 4), "\u00a0-\u2009"),
        "\u2066" + grouped(VISA, (4, 4, 4, 4), "\u202e") + "\u2069",  # bidi controls
    ],
)
def test_card_number_with_other_separators_is_redacted(written: str) -> None:
    out = scrub_text(f"card: {written}.")
    assert digits_in(out) == "", f"card number written as {written!r} left digits behind: {out!r}"
    assert REDACTED in out, f"card number written as {written!r} was not marked redacted: {out!r}"


@pytest.mark.parametrize(
    "written",
    [
        to_script(VISA, "\uff10"),  # fullwidth
        grouped(to_script(VISA, "\uff10"), (4, 4, 4, 4), "\u3000"),
        grouped(to_script(AMEX, "\uff10"), (4, 6, 5), "\uff0d"),
        to_script(VISA, "\u0660"),  # Arabic-Indic
        to_script(MASTERCARD, "\u06f0"),  # Extended Arabic-Indic
        to_script(VISA, "\u0966"),  # Devanagari
        to_script(VISA_13, "\u0e50"),  # Thai
        to_script(VISA, "\U0001d7ce"),  # mathematical bold
        "".join(to_script(d, z) for d, z in zip(VISA, "\uff10\u0660\u0030\u0966" * 4, strict=True)),
        "".join(d + "\ufe0f\u20e3" for d in VISA),  # keycap emoji digits
        "\u2074\u00b9\u00b9\u00b9" + "1" * 12,  # superscripts
    ],
)
def test_card_number_in_other_digit_forms_is_redacted(written: str) -> None:
    out = scrub_text(f"card {written} ok")
    assert digits_in(out) == "", f"card number written as {written!r} left digits behind: {out!r}"
    assert out == f"card {REDACTED} ok", f"surrounding text changed: {out!r}"


def test_redacted_text_comes_back_normalised_and_untouched_text_comes_back_as_given() -> None:
    fullwidth = "\uff43\uff41\uff52\uff44 " + to_script(VISA, "\uff10")
    assert scrub_text(fullwidth) == f"card {REDACTED}", "redacted text should be the NFKC form"
    phone = "\uff50\uff48\uff4f\uff4e\uff45 " + to_script("020 7946 0000", "\uff10")
    assert scrub_text(phone) is phone, "text with nothing to redact must come back as given"


@pytest.mark.parametrize(
    "text",
    [
        "CVV\u00a0123",
        "\uff23\uff36\uff36 \uff11\uff12\uff13",
        "cvv\u200b123",
        "CVV: \u0661\u0662\u0663",
    ],
)
def test_security_code_in_other_forms_is_redacted(text: str) -> None:
    out = scrub_text(f"said {text} then")
    assert digits_in(out) == "" and REDACTED in out, f"security code {text!r} survived: {out!r}"


def test_every_format_character_is_ignored_inside_a_card_number() -> None:
    format_chars = [
        chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf" and c > 0x7F
    ]
    assert len(format_chars) > 100, "the Unicode database should list many format characters"
    survivors = [
        f"U+{ord(char):04X}"
        for char in format_chars
        if digits_in(scrub_text(VISA[:5] + char + VISA[5:]))
    ]
    assert survivors == [], f"these format characters hide a card number: {survivors}"


# ---- ordinary numbers survive ----------------------------------------------------------------

ORDINARY = [
    "call 020 7946 0000 or 07700 900123",
    "caller +44 20 7946 0000",
    "from +442079460000 to +14155552671",
    "case CT-2024-001234 and REF/2023/12345",
    "dates 2024-03-01, 01/03/2024, 01.03.2024 and 2024/03/01",
    "amount £1,234.56 then 1234.50 and €1.234.567,89",
    "hosts 192.168.100.200, 10.0.0.1:8080 and 2001:db8::1",
    "id 550e8400-e29b-41d4-a716-446655440000",
    "id 123e4567-e89b-12d3-a456-426614174000",
    "at 2026-12-03T14:00:00.123456+00:00",
    "at 2026-12-03T14:00:00.123456789Z and 2026-12-03 14:00:00.123456 +0000",
    "between 2026-12-03T14:00:00.123456+00:00 and 2026-12-03T15:30:00.654321+00:00",
    "python 3.11.7, app 10.4.12, build 2024.03.01.1234",
    "flat 12, 123 High Street, order 123456789012",
    f"order {NOT_LUHN_16}",
    "\uff50\uff48\uff4f\uff4e\uff45 \uff10\uff12\uff10 \uff17\uff19\uff14\uff16 \uff10\uff10\uff10\uff10",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_numbers_survive(text: str) -> None:
    assert scrub_text(text) is text, f"ordinary text was altered: {scrub_text(text)!r}"
    assert not has_card_data(text), f"ordinary text was taken for card data: {text!r}"


@pytest.mark.parametrize(
    ("text", "run"),
    [
        ("uniqueid 1733234400.1233", "1733234400.1233"),  # Asterisk call id
        ("epoch 1733234400.123458", "1733234400.123458"),
        ("at 14:00:00.123456782+00:00", "00.123456782+00"),  # nanoseconds and an offset
        ("seasons 2023/2024/2025/2026", "2023/2024/2025/2026"),  # 4-4-4-4, but years
        ("version 10.4.12.12345675", "10.4.12.12345675"),
        ("hosts 192.168.100.203 10.0.0.1", "192.168.100.203 10.0.0.1"),
        ("dates 01.03.2024 02.03.2021", "01.03.2024 02.03.2021"),
        ("REF/2023/1234567896", "2023/1234567896"),
        ("oid 1.2.3.4.5.6.7.8.9.1.2.3.3", "1.2.3.4.5.6.7.8.9.1.2.3.3"),
        ("file rec_2024_03_01_123459.wav", "2024_03_01_123459"),
        ("from 20.5.2024 14.30.17", "20.5.2024 14.30.17"),
    ],
)
def test_ordinary_numbers_whose_digits_pass_luhn_survive(text: str, run: str) -> None:
    digits = digits_in(run)
    assert 13 <= len(digits) <= 19 and luhn_ok(digits), f"fixture {run!r} should add up to a PAN"
    assert scrub_text(text) is text, f"{run!r} is not laid out like a card: {scrub_text(text)!r}"


def test_huge_hostile_runs_are_scrubbed_in_linear_time() -> None:
    import time

    for text in [
        "1." * 100_000,
        "1 " * 100_000,
        "4111." * 40_000,
        "1" * 200_000,
        "\uff11" * 100_000,
    ]:
        started = time.perf_counter()
        out = scrub_text(text)
        elapsed = time.perf_counter() - started
        assert digits_in(out) == "", f"a huge run {text[:12]!r}… was not redacted outright"
        assert elapsed < 2.0, (
            f"scrubbing {len(text)} characters of {text[:12]!r} took {elapsed:.1f}s"
        )


# ---- phone-number fields ---------------------------------------------------------------------


@pytest.mark.parametrize("pan", [AMEX, VISA_13, VISA, MASTERCARD])
def test_card_number_with_a_plus_in_a_phone_field_is_redacted(pan: str) -> None:
    out = scrub_phone_number(f"+{pan}")
    assert pan not in digits_in(out) and REDACTED in out, f"+{pan} kept as a phone number: {out!r}"


@pytest.mark.parametrize(
    "number", ["+442079460000", "+447700900123", "+14155552671", UK_PHONE, "+44 20 7946 0000"]
)
def test_real_phone_numbers_are_kept_verbatim(number: str) -> None:
    assert scrub_phone_number(number) == number


def test_known_trade_off_a_valid_phone_number_that_passes_luhn_is_kept_in_a_phone_field() -> None:
    number = "+8613912345677"  # a valid Chinese mobile number whose 13 digits pass Luhn
    assert luhn_ok(number[1:]), "the fixture must look like a card number"
    assert scrub_phone_number(number) == number, "a valid phone number is kept for subject access"
    assert number[1:] not in digits_in(scrub_text(number)), "as free text it is still redacted"


# ---- one card number split across fields -----------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (("ref 4111 1111", "1111 1111 thanks"), ("ref [REDACTED]", "[REDACTED] thanks")),
        (("4111.1111.", "1111.1111"), ("[REDACTED].", "[REDACTED]")),
        (("CASE 4111 1111     ", "   1111 1111"), ("CASE [REDACTED]     ", "   [REDACTED]")),
        (("4111 1111", None, "1111 1111"), ("[REDACTED]", None, "[REDACTED]")),
        (("4111 1111", "", "1111 1111"), ("[REDACTED]", "", "[REDACTED]")),
        (("4111", "1111 1111", "1111 end"), ("[REDACTED]", "[REDACTED]", "[REDACTED] end")),
        (("ref 3782 822", "463 10005"), ("ref [REDACTED]", "[REDACTED]")),
        (("ref 41111111", "11111111"), ("ref [REDACTED]", "[REDACTED]")),
        (("ref 4111.11", "11.1111.1111 x"), ("ref [REDACTED]", "[REDACTED] x")),  # inside a group
        (
            ("ref " + to_script("41111111", "\uff10"), to_script("11111111", "\u0660") + " x"),
            ("ref [REDACTED]", "[REDACTED] x"),
        ),
    ],
)
def test_card_number_split_across_fields_is_redacted_on_both_sides(
    fields: tuple[str | None, ...], expected: tuple[str | None, ...]
) -> None:
    assert scrub_fields(*fields) == expected


@pytest.mark.parametrize(
    "fields",
    [
        ("CT-2024-001234", "call back on 020 7946 0000"),
        ("REF/2023/12345", "2024-03-01 note"),
        ("order 1234", "5678 items"),
        (None, "no digits"),
        ("", None),
        (),
    ],
)
def test_fields_without_a_split_card_number_are_kept(fields: tuple[str | None, ...]) -> None:
    out = scrub_fields(*fields)
    assert out == fields and all(a is b for a, b in zip(out, fields, strict=True))


def test_dates_either_side_of_the_boundary_do_not_add_up_to_a_card_number() -> None:
    fields = ("seen 2000-01-01", "1993-01-01 born")
    assert luhn_ok("20000101199301"), "2000-01-01 1993-01 should pass Luhn, as in the fixture"
    assert scrub_text(" ".join(fields)) != " ".join(fields), "in one text the dates do count"
    assert scrub_fields(*fields) == fields, "only a card layout or one undivided run counts"


def test_fields_are_scrubbed_one_by_one_too() -> None:
    assert scrub_fields(f"card {VISA}", "12 items", "cvv 123") == (
        f"card {REDACTED}",
        "12 items",
        f"cvv {REDACTED}",
    ), "a card number in one field must not take the next field's digits with it"


# ---- identifiers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "identifier",
    [
        f"call-{VISA}",
        "rec_4111_1111_1111_1111",
        "4111.1111.1111.1111",
        to_script(VISA, "\uff10"),
        f"evt{VISA[:8]}\u200b{VISA[8:]}",
        "cvv-123",
    ],
)
def test_identifier_with_card_data_is_detected(identifier: str) -> None:
    assert has_card_data(identifier)


@pytest.mark.parametrize(
    "identifier",
    [
        "1733234400.1233",
        "550e8400-e29b-41d4-a716-446655440000",
        "CA0123456789abcdef0123456789abcdef",
        "RE9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
        "c-1",
        "",
        "2026-12-03T14:00:00.123456+00:00",
    ],
)
def test_ordinary_identifier_is_not_card_data(identifier: str) -> None:
    assert not has_card_data(identifier)


# ---- hex identifiers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "identifier",
    [
        "67d80702-7091-4526-9548-052b61b95afe",  # 20 digits across the dashes
        "f31aeb00-4982-4407-8941-965096ee86ef",
        "CAc3034515972939b0db43738610d5fe14",  # a Twilio call SID with 13 digits in a row
        "CAf5866403982355990f7265191ed14e6a",
        "msg_0572d077725f632cb1a5409831722549",  # uuid4().hex
        # A uuid4 with one letter whose digits, read across the dashes, pass Luhn as a Visa.
        "11401181-3157-4118-9571-282c60680008",
        # uuid4().hex with one letter (about one in 100,000): 25 digits in a row, a Luhn run.
        "msg_468721b8608240558390260208540119",
    ],
)
def test_digits_inside_a_hex_identifier_are_not_a_card_number(identifier: str) -> None:
    assert not has_card_data(identifier), f"identifier {identifier!r} taken for card data"
    text = f"event {identifier} at 2024-03-01 12:00"
    assert scrub_text(text) is text, f"hex identifier altered: {scrub_text(text)!r}"


def test_card_number_next_to_a_hex_identifier_is_still_redacted() -> None:
    out = scrub_text(f"id 67d80702-7091-4526-9548-052b61b95afe {VISA}")
    assert out == f"id 67d80702-7091-4526-9548-052b61b95afe {REDACTED}", out


def test_a_uuid_shape_made_only_of_digits_is_no_identifier() -> None:
    assert has_card_data("00004111-1111-1111-1111-000000000000")
    # uuid4().hex's version and variant where it puts them, but no letter: a card and zeros.
    assert has_card_data("msg_41111111111141158000000000000000")
