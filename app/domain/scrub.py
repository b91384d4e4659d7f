"""Card-data scrubbing (SPEC §3.6).

What counts as card data:

* A card number: 13–19 digits that pass the Luhn check. Text is normalised first: invisible
  characters (zero-width spaces and joiners, other format characters) are removed, NFKC folds
  fullwidth and other compatibility forms, and decimal digits of every script become ASCII, so
  ``４１１１…`` and ``4111\\u200b1111…`` are the same number as ``4111111111111111``.
  Digits split by spaces (any Unicode space), dashes or ``+`` count however they are grouped.
  Digits split by a dot, slash or underscore count only in a card's own layout (4-4-4-4 with a
  shorter or longer last group, Amex 4-6-5, Diners 4-6-4) and with a card issuer's prefix
  (2221–2720, 3, 4, 5, 6): dates, amounts, IP addresses, version strings and timestamps are
  written with those separators and must not add up to a card number. Digits inside a hex
  identifier (a UUID with RFC 4122's variant, dashed or as ``.hex`` with a letter, or a
  UUID-shaped run or 16 or more lower-case or 32 or more upper-case hex characters with two
  letters or more among them, such as a Twilio SID) belong to the identifier: nobody writes a card number into one by accident.
* A security code: 3–4 digits next to a card word ("CVV 123", "security code: 999"), or the
  value of a field named like one.

Redacted text comes back in its normalised form; text with nothing to redact comes back as given.

Known trade-off: a phone-number field (:func:`scrub_phone_number`) keeps a valid E.164 phone
number verbatim even when its digits also pass Luhn, because subject-access searches need the
real number. So a 13–15 digit card number that is also a valid phone number survives there (in
free text the same digits are redacted).
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import phonenumbers

REDACTED = "[REDACTED]"

# Invisible characters that would split a number in two without showing anything: every format
# character (Unicode category Cf, checked by a test) and the other default-ignorable code points
# (variation selectors, Hangul fillers, Mongolian selectors, tag characters).
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u17b4\u17b5"
    "\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0"
    "\ufff0-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]+"
)
# Decimal digits NFKC leaves alone (Arabic-Indic, Devanagari, Thai, …).
_UNICODE_DIGIT = re.compile(r"(?![0-9])\d")
# Combining marks on a digit ("4\u20e3" is a keycap 4) would hide it from the digit pattern.
_MARK_AFTER_DIGIT = re.compile(
    r"(?<=[0-9])[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+"
)

# Separators that may split a card number however it is grouped: spaces, tabs and line breaks
# (every Unicode space), dashes, and '+' (a form-encoded space).
_FREE_SEPARATORS = r"\s+\-\u2010-\u2015\u2212"
# Separators that dates, amounts, addresses and versions use too: they only join groups laid
# out like a card number.
_STRICT_SEPARATOR_CHARS = "./_\u00b7\u2044\u2215"
_STRICT_SEPARATORS = frozenset(_STRICT_SEPARATOR_CHARS)
_SEPARATORS = _FREE_SEPARATORS + re.escape(_STRICT_SEPARATOR_CHARS)
_GAP = re.compile(rf"[{_SEPARATORS}]+")
_LEADING_SEPARATORS = re.compile(rf"[{_SEPARATORS}]*")
# A run of digits broken by up to three separator characters at a time; the length check and
# Luhn are applied to the digits alone.
_DIGIT_RUN = re.compile(rf"(?<![0-9])[0-9](?:[{_SEPARATORS}]{{0,3}}[0-9]){{12,}}(?![0-9])")
# Wherever ``_DIGIT_RUN`` matches, this does (13 digits and what separates them); it is
# searched several times faster, and only where it matches is ``_DIGIT_RUN`` searched.
_MAYBE_DIGIT_RUN = re.compile(rf"[0-9][0-9{_SEPARATORS}]{{12,}}")
# No legitimate value recgate stores has this many digits split only by spaces or dashes, nor
# this many in one run whatever splits it: redact such a run outright rather than search it, so
# a hostile payload cannot make the scrubber slow.
_LONGEST_SEARCHED_RUN = 64
_LONGEST_SEARCHED_CHAIN = 1024
# Group lengths of card numbers as people write them.
_CARD_LAYOUTS = frozenset(
    {(4, 4, 4, n) for n in range(1, 5)}
    | {(4, 4, 4, 4, n) for n in range(1, 4)}
    | {(4, 6, 4), (4, 6, 5)}
)
# Issuer prefixes: Mastercard 2221–2720, then 3 (Amex, Diners, JCB), 4 (Visa), 5, 6. Years
# (19xx, 20xx) and most other numbers in a dotted or slashed list do not start like this.
_CARD_PREFIX = re.compile(r"[3-6]|222[1-9]|22[3-9]|2[3-6]|27[01]|2720")
# Identifiers written in hex (UUIDs, a UUID's .hex, Twilio SIDs, hashes) are random: a run of
# digits inside one is part of the identifier, not a card number (about one in 300 random UUIDs
# would otherwise lose digits), and digits beside one do not run into it. Providers write them
# in one case: lower-case hex from 16 characters (Twilio's "CA" + 32, rtpengine's 16-character
# file suffix), upper-case from 32, and UUIDs in either. A mixed-case run such as
# "CA4012888888881881" is no such identifier: its digits are read as a number.
_HEX_ID = re.compile(
    r"(?<![0-9a-fA-F])[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}(?![0-9a-fA-F])"
    r"|(?<![0-9a-f])[0-9a-f]{16,}(?![0-9a-f])"
    r"|(?<![0-9A-F])[0-9A-F]{32,}(?![0-9A-F])"
)
_HEX_LETTER = re.compile(r"[a-f]", re.IGNORECASE)
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


def _normalise(text: str) -> str:
    """``text`` as the scrubber reads it: no invisible characters, NFKC, ASCII digits."""
    if text.isascii():
        return text  # already NFKC, and nothing in ASCII is invisible or a non-ASCII digit
    text = unicodedata.normalize("NFKC", _INVISIBLE.sub("", text))
    if text.isascii():
        return text
    text = _UNICODE_DIGIT.sub(lambda m: str(unicodedata.decimal(m.group())), text)
    return _MARK_AFTER_DIGIT.sub("", text)


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


def _has_card_in_layout(groups: list[str]) -> bool:
    """True when consecutive groups are laid out like a card number ("4111.1111.1111.1111",
    "3782/822463/10005"), start with an issuer's prefix and pass Luhn."""
    for first, group in enumerate(groups):
        if len(group) != 4 or not _CARD_PREFIX.match(group):
            continue
        layout: tuple[int, ...] = ()
        for last in range(first, min(first + 5, len(groups))):
            layout += (len(groups[last]),)
            if layout in _CARD_LAYOUTS and luhn_ok("".join(groups[first : last + 1])):
                return True
    return False


def _has_card_in_piece(groups: list[str]) -> bool:
    """The rule for digits split only by spaces, dashes or '+': any grouping counts."""
    digits = "".join(groups)
    if len(digits) < 13:
        return False
    if len(digits) > _LONGEST_SEARCHED_RUN:
        return True
    if len(digits) > 19:
        # A longer run may hold a card number with other digits either side.
        return _has_card_window(digits)
    return luhn_ok(digits) or (len(groups) > 1 and _has_card_in_groups(groups))


def _run_has_card(run: str) -> bool:
    """True when a run matched by ``_DIGIT_RUN`` holds a card number."""
    groups = _GAP.split(run)
    if sum(map(len, groups)) > _LONGEST_SEARCHED_CHAIN:
        return True
    strict = False
    piece_start = 0
    # Pieces split only by spaces, dashes or '+' count however they are grouped; a dot, slash
    # or underscore ends a piece, and only a card's own layout may cross it.
    for end, gap in enumerate(_GAP.findall(run)):
        if not _STRICT_SEPARATORS.isdisjoint(gap):
            strict = True
            if _has_card_in_piece(groups[piece_start : end + 1]):
                return True
            piece_start = end + 1
    if _has_card_in_piece(groups[piece_start:]):
        return True
    return strict and _has_card_in_layout(groups)


def _digit_runs(text: str) -> Iterator[re.Match[str]]:
    """``_DIGIT_RUN``'s matches in ``text``; none found faster where there are none (nearly
    always): only where ``_MAYBE_DIGIT_RUN`` matches is ``_DIGIT_RUN`` searched."""
    if _MAYBE_DIGIT_RUN.search(text) is None:
        return iter(())
    return _DIGIT_RUN.finditer(text)


def _card_numbers(text: str) -> str:
    if not any(_run_has_card(m.group(0)) for m in _digit_runs(text)):
        return text
    # Rarely reached: only now is it worth looking for hex identifiers.
    masked = _mask_hex_ids(text)
    cards = [m.span() for m in _DIGIT_RUN.finditer(masked) if _run_has_card(m.group(0))]
    return _redact_spans(text, cards)


def _mask_hex_ids(text: str) -> str:
    """``text`` with each hex identifier overwritten by letters, so no digit run includes it."""

    def mask(match: re.Match[str]) -> str:
        hex_id = match.group(0)
        # Decimal digits alone are no identifier of this kind: a card number is one of them,
        # and so is a card number with one letter beside it ("4012888888881881a"). A UUID with
        # RFC 4122's variant (8, 9, a or b opening its fourth group, as every uuid4 has) is one
        # however few letters it drew: about one random UUID in 50,000 has fewer than two, and
        # its digits may add up like a card's.
        rfc_uuid = "-" in hex_id and hex_id[19] in "89abAB"
        # The same written as a UUID's .hex (a common webhook or message id, and recgate's
        # own row ids, version 7): 32 lower-case characters with a version of RFC 9562 (1-8)
        # and the variant where they go, and a letter at least. About one in 100,000 random
        # ones has one letter only, and its digits may too; a version 7 id's first characters
        # are the time, which for years at a stretch draws no letter.
        uuid_hex = (
            len(hex_id) == 32
            and hex_id[12] in "12345678"
            and hex_id[16] in "89ab"
            and _HEX_LETTER.search(hex_id) is not None
        )
        if rfc_uuid or uuid_hex or len(_HEX_LETTER.findall(hex_id)) >= 2:
            return "x" * len(hex_id)
        return hex_id

    return _HEX_ID.sub(mask, text)


def _scrub_normalised(text: str) -> str:
    # Card numbers first: a card word just before a card number must not take its first digits
    # as a security code and leave the rest too short to be recognised.
    text = _card_numbers(text)
    return _SECURITY_CODE.sub(lambda m: m.group("word") + REDACTED, text)


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
    """Return ``text`` with card numbers and labelled security codes redacted.

    Where something is redacted the result is the normalised text (see the module docstring);
    otherwise ``text`` itself is returned.
    """
    if text.isascii():
        if _ASCII_DIGIT.search(text) is None:
            return text
        normal = text
    else:
        normal = _normalise(text)
        if _ASCII_DIGIT.search(normal) is None:
            return text
    scrubbed = _scrub_normalised(normal)
    return text if scrubbed == normal else scrubbed


def has_card_number(text: str) -> bool:
    """True when ``text`` holds a card number (security codes aside): an identifier such as
    ``cid-1234`` names no card."""
    normal = _normalise(text)
    return _ASCII_DIGIT.search(normal) is not None and _card_numbers(normal) != normal


def has_card_data(text: str) -> bool:
    """True when ``text`` holds a card number or a labelled security code, i.e. when
    :func:`scrub_text` would redact something. Used to refuse identifiers holding card data."""
    normal = _normalise(text)
    return _ASCII_DIGIT.search(normal) is not None and _scrub_normalised(normal) != normal


def scrub_fields(*texts: str | None) -> tuple[str | None, ...]:
    """Scrub fields that are written together (a hold's ``reference`` and ``note``), catching a
    card number split between them. The digits that end one field and those that begin the next
    are read as one number, split between two groups or inside one; when that number is laid
    out like a card (4111 1111 | 1111 1111, 3782 822 | 463 10005) or is one undivided run
    (41111111 | 11111111) and passes Luhn, the digits on both sides are redacted. Other layouts
    do not count across the boundary, so dates or references either side of it do not add up.

    ``None`` and empty fields are skipped, so the fields either side of them count as adjacent.
    Each result is what :func:`scrub_text` would return, with the split digits redacted too.
    """
    normal = [_normalise(text) if text else text for text in texts]
    scrubbed = [_scrub_normalised(n) if n and _ASCII_DIGIT.search(n) else n for n in normal]
    between_groups = _split_card_spans(scrubbed, " ")
    inside_a_group = _split_card_spans(scrubbed, "")
    cuts = [_merged(a + b) for a, b in zip(between_groups, inside_a_group, strict=True)]
    out: list[str | None] = []
    for text, before, after, spans in zip(texts, normal, scrubbed, cuts, strict=True):
        if after and spans:
            after = _redact_spans(after, spans)
        out.append(text if after == before else after)
    return tuple(out)


def _split_card_spans(fields: list[str | None], joiner: str) -> list[list[tuple[int, int]]]:
    """For each field, the stretches of digits that belong to a card number continued in the
    field before or after it, reading the fields joined by ``joiner``. The fields are already
    scrubbed on their own, so what is found here needs digits from both sides."""
    spans: list[list[tuple[int, int]]] = [[] for _ in fields]
    cores: list[str] = []  # each field without separators at its ends
    starts: list[int] = []  # where each core starts in the joined text
    owners: list[tuple[int, int]] = []  # (field index, where the core starts in the field)
    position = 0
    for index, field in enumerate(fields):
        if not field:
            continue
        lead = _leading_separators(field)
        trail = _leading_separators(field[::-1])
        core = field[lead : len(field) - trail]
        if not core:
            continue
        if cores:
            position += len(joiner)
        cores.append(core)
        starts.append(position)
        owners.append((index, lead))
        position += len(core)
    if len(cores) < 2:
        return spans
    joined = _mask_hex_ids(joiner.join(cores))
    for match in _DIGIT_RUN.finditer(joined):
        first = bisect_right(starts, match.start()) - 1
        last = bisect_right(starts, match.end() - 1) - 1
        if first == last or not _split_run_has_card(match.group(0)):
            continue
        for k in range(first, last + 1):
            index, lead = owners[k]
            low = max(match.start(), starts[k]) - starts[k] + lead
            high = min(match.end(), starts[k] + len(cores[k])) - starts[k] + lead
            spans[index].append((low, high))
    return spans


def _split_run_has_card(run: str) -> bool:
    groups = _GAP.split(run)
    return (len(groups) == 1 and _has_card_in_piece(groups)) or _has_card_in_layout(groups)


def _leading_separators(text: str) -> int:
    match = _LEADING_SEPARATORS.match(text)
    return match.end() if match else 0


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return merged


def _redact_spans(text: str, spans: list[tuple[int, int]]) -> str:
    pieces: list[str] = []
    done = 0
    for low, high in spans:
        pieces += [text[done:low], REDACTED]
        done = high
    pieces.append(text[done:])
    return "".join(pieces)


def scrub(value: Any, key: str | None = None) -> Any:
    """Scrub a JSON-like value recursively: strings, numbers that look like card data, and the
    values of keys that name a security code. A document that plainly holds none of these
    (:func:`_plainly_clean`) is returned as it is, not copied."""
    if key is None and isinstance(value, dict | list) and _plainly_clean(value):
        return value
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


# Joins a document's texts for one search: no pattern here matches it or across it, so a
# pattern matches the joined texts exactly where it matches one of them.
_APART = "\x00"


# Every card word of ``_CARD_WORD`` holds one of these: without them no security code is
# labelled in text. (A key is asked itself: "C-I-D" names one, and holds none of these.)
_CARD_WORD_PARTS = ("cv", "cid", "csc", "cav2", "security", "verification")


def _plainly_clean(document: dict[Any, Any] | list[Any]) -> bool:
    """True when scrubbing ``document`` would change nothing, decided by one search of all its
    texts (keys too) at once: no digit run long enough for a card number, no key naming a
    security code, no card word (so no security-code phrase), nothing that needs normalising.
    Webhook payloads are nearly all so; anything else gets the field-by-field walk, which is
    the authority."""
    texts: list[str] = []
    keys: list[str] = []
    if not _texts_of(document, texts, keys):
        return False
    joined = _APART.join(texts)
    if not joined.isascii():
        return False
    if next(_digit_runs(joined), None) is not None:
        return False
    if any(map(_names_security_code, keys)):
        return False
    lowered = joined.lower()
    return not any(part in lowered for part in _CARD_WORD_PARTS) or (
        _SECURITY_CODE.search(joined) is None
    )


def _texts_of(value: Any, texts: list[str], keys: list[str]) -> bool:
    """Collect the texts :func:`scrub` would read in ``value``; False for a value it reads
    otherwise (a key that is not a string, a type JSON does not have)."""
    if isinstance(value, str):
        texts.append(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return False
            texts.append(k)
            keys.append(k)
            if not _texts_of(v, texts, keys):
                return False
    elif isinstance(value, list | tuple):
        return all(_texts_of(v, texts, keys) for v in value)
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        texts.append(str(value))
    elif not isinstance(value, float) or value.is_integer():
        return False  # a whole float comes back as an int: the walk decides
    return True


_E164 = re.compile(r"\+[1-9][0-9]{5,14}")


def scrub_phone_number(number: str) -> str:
    """A caller or callee number as stored. A valid E.164 phone number is kept verbatim for
    subject-access searches, even when its digits also pass Luhn (the trade-off in the module
    docstring); anything else is scrubbed like text."""
    scrubbed = scrub_text(number)
    if scrubbed == number:
        return number  # nothing card-like: no need to ask whether it is a real phone number
    return number if _E164.fullmatch(number) and _is_valid_phone_number(number) else scrubbed


def _is_valid_phone_number(number: str) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(number))
    except phonenumbers.NumberParseException:
        return False
