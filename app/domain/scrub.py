"""Card-data scrubbing (SPEC §3.6).

Card numbers (13–19 digits that pass the Luhn check, with or without spaces or dashes) and
security codes written next to a card word are replaced by ``[REDACTED]`` before anything is
stored or logged.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

REDACTED = "[REDACTED]"

# A run of ASCII digits possibly broken by spaces or dashes ("4111 1111-1111 1111",
# "4111 - 1111 - 1111 - 1111"); the length check and Luhn are applied to the digits alone.
# [0-9] rather than \d: a Unicode digit next to a card number must not hide it.
# Spaces, tabs, line breaks, dashes and '+' (a form-encoded space) all separate groups.
_SEPARATOR = re.compile(r"[\s+-]+")
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9](?:[\s+-]{0,3}[0-9]){12,}(?![0-9])")
# No legitimate value recgate stores is a run of this many digits: redact it outright rather
# than search it, so a hostile payload cannot make the scrubber quadratic.
_LONGEST_SEARCHED_RUN = 64
_CARD_WORD = (
    r"cvv2?|cvc2?|cv2|cid|csc|cav2|security[ _-]?code|card[ _-]?verification"
    r"(?:[ _-]?(?:value|code|number))?|card[ _-]?security[ _-]?code"
)
# A card word standing alone ("card_cvv" counts, "acid" does not), then punctuation or a few
# filler words ("CVV: 123", "CVV-123", "CVV123", "cvv code is 123", '"cvv": "123"').
_SECURITY_CODE = re.compile(
    rf"(?P<word>(?<![a-z0-9])(?:{_CARD_WORD})(?![a-z])"
    r"(?:[\s\"':=#.\-]|(?:code|number|num|no|is|was)(?![a-z])){0,8})"
    r"(?P<code>[0-9]{3,4})(?![0-9])",
    re.IGNORECASE,
)
_CODE_KEY_WORDS = frozenset({"cvv", "cvv2", "cvc", "cvc2", "cv2", "csc", "cav2"})
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_KEY_SPLIT = re.compile(r"[^a-z0-9]+")
_PLAIN_KEY = re.compile(r"^[A-Za-z_.-]{1,64}$")
_ASCII_DIGIT = re.compile(r"[0-9]")


def luhn_ok(digits: str) -> bool:
    """True when ``digits`` passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _has_card_window(digits: str) -> bool:
    """True when some 13-19 digit stretch of ``digits`` passes Luhn."""
    for length in range(19, 12, -1):
        for start in range(0, len(digits) - length + 1):
            if luhn_ok(digits[start : start + length]):
                return True
    return False


def _has_card_in_groups(groups: list[str]) -> bool:
    """True when consecutive groups of a separated run make a Luhn-valid 13-19 digit number:
    "12 4111 1111 1111 1111" or "4111111111111111 123" hide a card next to other digits."""
    for first in range(len(groups)):
        digits = ""
        for group in groups[first:]:
            digits += group
            if len(digits) > 19:
                break
            if len(digits) >= 13 and luhn_ok(digits):
                return True
    return False


def _card_numbers(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        run = match.group(0)
        groups = _SEPARATOR.split(run)
        digits = "".join(groups)
        if len(digits) > _LONGEST_SEARCHED_RUN:
            return REDACTED
        if len(digits) > 19:
            # A longer run may hold a card number with other digits either side.
            return REDACTED if _has_card_window(digits) else run
        if luhn_ok(digits) or (len(groups) > 1 and _has_card_in_groups(groups)):
            return REDACTED
        return run

    return _DIGIT_RUN.sub(replace, text)


def _names_security_code(key: str) -> bool:
    """True for keys such as "cvv", "CVV2", "card_cvv", "cardCvv", "security-code"."""
    if _PLAIN_KEY.match(key):
        # Field names repeat on every webhook; one with no digit cannot hold card data, so
        # its answer may be remembered.
        return _names_security_code_cached(key)
    return _key_names_security_code(key)


@lru_cache(maxsize=1024)
def _names_security_code_cached(key: str) -> bool:
    return _key_names_security_code(key)


def _key_names_security_code(key: str) -> bool:
    words = [w for w in _KEY_SPLIT.split(_CAMEL_BOUNDARY.sub("_", key).lower()) if w]
    compact = "".join(words)
    return (
        compact == "cid"
        or not _CODE_KEY_WORDS.isdisjoint(words)
        or "securitycode" in compact
        or "cardverification" in compact
    )


def scrub_text(text: str) -> str:
    """Return ``text`` with card numbers and labelled security codes redacted."""
    if text.isascii():
        if _ASCII_DIGIT.search(text) is None:
            return text
    elif not any(ch.isdigit() for ch in text):
        return text
    # Card numbers first: a card word just before a card number must not take its first digits
    # as a security code and leave the rest too short to be recognised.
    text = _card_numbers(text)
    return _SECURITY_CODE.sub(lambda m: m.group("word") + REDACTED, text)


def scrub(value: Any, key: str | None = None) -> Any:
    """Scrub a JSON-like value recursively: strings, numbers that look like card data, and the
    values of keys that name a security code."""
    if isinstance(value, dict):
        # Keys are data too: a card number can arrive as a key.
        return {scrub_text(str(k)): scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, key) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if key is not None and _names_security_code(key) and isinstance(value, int | str):
        return REDACTED if str(value).strip().isdigit() else scrub_text(str(value))
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 4111111111111111.0 is a card number too
    if isinstance(value, int):
        text = str(value)
        return REDACTED if scrub_text(text) != text else value
    if isinstance(value, str):
        return scrub_text(value)
    return value


_E164 = re.compile(r"^\+[1-9][0-9]{5,14}$")


def scrub_phone_number(number: str) -> str:
    """A caller or callee number as stored: an E.164 number (at most 15 digits, so a PBX-labelled
    phone number) is kept for subject-access searches; anything else is scrubbed like text."""
    return number if _E164.match(number) else scrub_text(number)
