"""Card-data scrubbing (SPEC §3.6).

Card numbers (13–19 digits that pass the Luhn check, with or without spaces or dashes) and
security codes written next to a card word are replaced by ``[REDACTED]`` before anything is
stored or logged.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[REDACTED]"

# A run of digits possibly broken by single spaces or dashes; the length check and Luhn are
# applied to the digits alone, so "4111 1111-1111 1111" is caught as well as "4111111111111111".
_DIGIT_RUN = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,}(?![\d])")
_SECURITY_CODE = re.compile(
    r"(?P<word>\b(?:cvv2?|cvc2?|cv2|cid|csc|cav2|security[ _-]?code|card[ _-]?verification"
    r"(?:[ _-]?(?:value|code|number))?|card[ _-]?security[ _-]?code)\b[\"']?\s*[:=]?\s*[\"']?)"
    r"(?P<code>\d{3,4})(?!\d)",
    re.IGNORECASE,
)
_CARD_KEY = re.compile(
    r"^(?:cvv2?|cvc2?|cv2|cid|csc|cav2|security_?code|card_?verification\w*|card_?security_?code)$",
    re.IGNORECASE,
)


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


def _card_numbers(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        run = match.group(0)
        digits = run.replace(" ", "").replace("-", "")
        if len(digits) <= 19:
            return REDACTED if luhn_ok(digits) else run
        # A longer run may hold a card number with other digits either side; try each window.
        for length in range(19, 12, -1):
            for start in range(0, len(digits) - length + 1):
                if luhn_ok(digits[start : start + length]):
                    return REDACTED
        return run

    return _DIGIT_RUN.sub(replace, text)


def scrub_text(text: str) -> str:
    """Return ``text`` with card numbers and labelled security codes redacted."""
    if not any(ch.isdigit() for ch in text):
        return text
    text = _SECURITY_CODE.sub(lambda m: m.group("word") + REDACTED, text)
    return _card_numbers(text)


def scrub(value: Any, key: str | None = None) -> Any:
    """Scrub a JSON-like value recursively: strings, numbers that look like card data, and the
    values of keys that name a security code."""
    if isinstance(value, dict):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, key) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if key is not None and _CARD_KEY.match(key) and isinstance(value, int | str):
        return REDACTED if str(value).strip().isdigit() else scrub_text(str(value))
    if isinstance(value, int):
        text = str(value)
        return REDACTED if scrub_text(text) != text else value
    if isinstance(value, str):
        return scrub_text(value)
    return value
