"""Caller numbers as subject access matches them: E.164, whatever formatting was stored.

Providers report the same caller as ``+442079460000``, ``020 7946 0000`` or ``02079460000``;
a subject access request must find all of them. National formats are read as UK numbers.
"""

from __future__ import annotations

import re

import phonenumbers

DEFAULT_REGION = "GB"
# Digits a stored number must end with to be a candidate: enough to be selective in SQL,
# few enough to be present in every formatting (national, international, with a trunk 0).
SUFFIX_DIGITS = 9
# Characters providers put between digits; removed in SQL before the suffix comparison.
SEPARATORS = (" ", "-", "(", ")", ".", "/")
_NON_DIGIT = re.compile(r"[^0-9]")


def to_e164(number: str | None) -> str | None:
    """``number`` in E.164, or None when it is not a possible phone number."""
    if not number:
        return None
    try:
        parsed = phonenumbers.parse(number, DEFAULT_REGION)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def match_suffix(e164: str) -> str:
    """The last digits of the national number, which every stored formatting contains."""
    national = str(phonenumbers.parse(e164).national_number)
    return _NON_DIGIT.sub("", national)[-SUFFIX_DIGITS:]


def same_caller(stored: str | None, e164: str) -> bool:
    """Whether a stored number is the caller ``e164`` (already normalised)."""
    return to_e164(stored) == e164
