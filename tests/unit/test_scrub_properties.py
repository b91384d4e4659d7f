"""Properties of card-data scrubbing (SPEC §3.6): however a Luhn-valid card number is written
(any separator, fullwidth or other digits, invisible characters inside, in text, in JSON keys and
values, split across two fields) its digits never survive; ordinary numbers come back as given."""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from datetime import UTC, datetime

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.domain.scrub import has_card_data, scrub, scrub_fields, scrub_text
from tests.unit.test_scrub import luhn_ok

BOUNDED = settings(max_examples=200, deadline=None, derandomize=True)

PREFIXES = ["4", "51", "52", "53", "54", "55", "34", "37", "6011", "65", "2221", "2720", "35"]
# Separators that may split a card number however it is grouped.
FREE = [" ", "  ", "-", " - ", "+", "\t", "\n", "\u00a0", "\u2009", "\u202f", "\u3000", "\u2013"]
FREE += ["\u2212", "\uff0d"]
# Separators that count only in a card's own layout.
STRICT = [".", "/", "_", ". ", " / ", "._", "\uff0e", "\uff0f", "\uff3f", "\u2024"]
ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"]
# The digit zero of each script a card number may be written in.
DIGIT_ZEROS = ["0", "\uff10", "\u0660", "\u06f0", "\u0966", "\u09e6", "\u0e50", "\U0001d7ce"]
# The scrubber's documented exemption: digits inside a hex identifier belong to it.
HEX_ID_LIKE = re.compile(r"[0-9a-f]{16}|[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}", re.IGNORECASE)


def reader_view(text: str) -> str:
    """``text`` as a person reads it: compatibility forms folded, invisible characters gone,
    every decimal digit written in ASCII."""
    normal = unicodedata.normalize("NFKC", text)
    return "".join(
        str(unicodedata.decimal(c)) if c.isdecimal() else c
        for c in normal
        if unicodedata.category(c) != "Cf"
    )


def digits_in(text: str) -> str:
    return "".join(c for c in reader_view(text) if c.isdecimal())


def strings_in(value: object) -> list[str]:
    """Every key, string and number in a JSON-like value, as text."""
    if isinstance(value, dict):
        return [text for k, v in value.items() for text in [str(k), *strings_in(v)]]
    if isinstance(value, list):
        return [text for item in value for text in strings_in(item)]
    return [str(value)]


def makes_digits(char: str) -> bool:
    return any(c.isdecimal() for c in unicodedata.normalize("NFKC", char))


# Letters, punctuation, symbols, spaces: anything but a character that is or becomes a digit, which
# glued to a card number would make another number.
SURROUNDING = st.text(
    st.characters(codec="utf-8").filter(lambda char: not makes_digits(char)), max_size=20
)


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(PREFIXES))
    length = draw(st.integers(min_value=13, max_value=19))
    size = length - len(prefix) - 1
    payload = prefix + draw(st.text("0123456789", min_size=size, max_size=size))
    return payload + next(c for c in "0123456789" if luhn_ok(payload + c))


def card_layouts(length: int) -> list[tuple[int, ...]]:
    """How people group a card number of ``length`` digits."""
    fours = (4,) * (length // 4) + ((length % 4,) if length % 4 else ())
    return [fours, *{14: [(4, 6, 4)], 15: [(4, 6, 5)]}.get(length, [])]


@st.composite
def any_layout(draw: st.DrawFn, length: int) -> tuple[int, ...]:
    cuts = draw(st.sets(st.integers(min_value=1, max_value=length - 1), max_size=length - 1))
    edges = [0, *sorted(cuts), length]
    return tuple(b - a for a, b in itertools.pairwise(edges))


LAYOUT_KINDS = ("undivided", "card layout", "any grouping")


@st.composite
def written_cards(draw: st.DrawFn, kinds: tuple[str, ...] = LAYOUT_KINDS) -> tuple[str, str]:
    """A card number and one way of writing it."""
    pan = draw(card_numbers())
    kind = draw(st.sampled_from(kinds))
    if kind == "undivided":
        layout: tuple[int, ...] = (len(pan),)
        separators = FREE
    elif kind == "card layout":
        layout = draw(st.sampled_from(card_layouts(len(pan))))
        separators = FREE + STRICT
    else:
        layout = draw(any_layout(len(pan)))
        separators = FREE
    one_script = draw(st.sampled_from([*DIGIT_ZEROS, None]))  # None: a script per digit
    invisible = st.sampled_from(["", "", "", *ZERO_WIDTH])
    written, start = "", 0
    for number, size in enumerate(layout):
        if number:
            written += draw(invisible) + draw(st.sampled_from(separators)) + draw(invisible)
        for digit in pan[start : start + size]:
            zero = one_script or draw(st.sampled_from(DIGIT_ZEROS))
            written += chr(ord(zero) + int(digit)) + draw(invisible)
        start += size
    return pan, written


@BOUNDED
@given(card=written_cards(), before=SURROUNDING, after=SURROUNDING)
def test_card_number_never_survives_in_text(card: tuple[str, str], before: str, after: str) -> None:
    pan, written = card
    text = before + written + after
    assume(not HEX_ID_LIKE.search(reader_view(text)))
    out = scrub_text(text)
    assert pan not in digits_in(out), f"card number {pan} written as {written!r} survived: {out!r}"
    assert digits_in(out) == "", f"digits of {pan} written as {written!r} leaked: {out!r}"
    assert has_card_data(text), f"has_card_data missed {pan} written as {written!r}"


@BOUNDED
@given(card=written_cards(), before=SURROUNDING, after=SURROUNDING)
def test_card_number_never_survives_in_json_keys_or_values(
    card: tuple[str, str], before: str, after: str
) -> None:
    pan, written = card
    text = before + written + after
    assume(not HEX_ID_LIKE.search(reader_view(text)))
    payload = {
        text: {"note": text, "items": [written, {"deep": written}]},
        "amount": int(pan),
        "float": float(pan) if len(pan) <= 15 else 0,
    }
    out = scrub(json.loads(json.dumps(payload)))
    leaked = "".join(digits_in(text) for text in strings_in(out))
    assert pan not in leaked, f"card number {pan} written as {written!r} survived: {out!r}"
    assert leaked in ("", "0"), f"digits of {pan} written as {written!r} leaked: {out!r}"


# Across a field boundary only a card's own layout or one undivided run counts (see scrub_fields).
@BOUNDED
@given(
    card=written_cards(kinds=("undivided", "card layout")),
    data=st.data(),
    before=SURROUNDING,
    after=SURROUNDING,
)
def test_card_number_split_across_two_fields_never_survives(
    card: tuple[str, str], data: st.DataObject, before: str, after: str
) -> None:
    pan, written = card
    split = data.draw(st.integers(min_value=1, max_value=len(written) - 1), label="split")
    reference, note = "ref " + before + written[:split], written[split:] + after + " note"
    assume(not HEX_ID_LIKE.search(reader_view(reference + note)))
    out = scrub_fields(reference, note)
    leaked = digits_in("".join(text or "" for text in out))
    assert pan not in leaked, f"{pan} split as {reference!r} | {note!r} survived: {out!r}"


# ---- ordinary numbers ------------------------------------------------------------------------

_DAY = st.dates(min_value=datetime(1900, 1, 1).date(), max_value=datetime(2100, 12, 31).date())
_MOMENT = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


def _formats(*formats: str) -> st.SearchStrategy[str]:
    return st.sampled_from(formats)


ORDINARY_IN_FIELDS = st.one_of(
    st.builds(lambda d, f: d.strftime(f), _DAY, _formats("%Y-%m-%d", "%d/%m/%Y", "%d.%m.%Y")),
    st.builds(lambda d, f: d.strftime(f), _DAY, _formats("%Y/%m/%d", "%d %B %Y")),
    st.builds(lambda m: m.isoformat(), _MOMENT),
    st.builds(lambda m: m.isoformat(sep=" ", timespec="microseconds"), _MOMENT),
    # nanoseconds and an offset: "2026-12-03T14:00:00.123456789+05:30"
    st.builds(
        lambda m, ns, off: m.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ns:09d}" + off,
        _MOMENT,
        st.integers(0, 999_999_999),
        _formats("Z", "+00:00", "-05:00", "+05:30"),
    ),
    st.builds(str, st.ip_addresses()),
    st.builds(lambda ip, port: f"{ip}:{port}", st.ip_addresses(v=4), st.integers(1, 65535)),
    # Real UUIDs have hex letters; one made only of digits is a 32-digit number to the scrubber.
    st.builds(str, st.uuids(version=4)).filter(lambda u: any(c in "abcdef" for c in u)),
    st.builds(lambda n: f"£{n / 100:,.2f}", st.integers(0, 10**11)),
    st.builds(lambda n: f"{n / 100:.2f}", st.integers(0, 10**11)),
    st.builds(lambda n: f"020 7946 {n:04d}", st.integers(0, 9999)),
    st.builds(lambda n: f"07700 900{n:03d}", st.integers(0, 999)),
    st.builds(lambda n: f"+44 20 7946 {n:04d}", st.integers(0, 9999)),
    st.builds(lambda y, n: f"CT-{y}-{n:06d}", st.integers(1990, 2099), st.integers(0, 999_999)),
    st.builds(lambda y, n: f"REF/{y}/{n:05d}", st.integers(1990, 2099), st.integers(0, 99_999)),
    st.builds(lambda a, b, c: f"{a}.{b}.{c}", *[st.integers(0, 999)] * 3),
    # An Asterisk uniqueid: epoch seconds, a dot, a sequence number.
    st.builds(lambda t, n: f"{t}.{n}", st.integers(10**9, 10**10 - 1), st.integers(0, 999_999)),
)
# Bare digit runs, and numbers written as one: either side of a field boundary two of them read
# as one undivided number, which may be a split card number (see scrub_fields).
ORDINARY = st.one_of(
    ORDINARY_IN_FIELDS,
    st.builds(lambda n: f"+447700900{n:03d}", st.integers(0, 999)),
    st.builds(str, st.integers(0, 10**12 - 1)),
)


_JOINERS = _formats(", ", " and ", "; ")


@BOUNDED
@given(items=st.lists(ORDINARY, min_size=1, max_size=4), joiner=_JOINERS)
def test_ordinary_numbers_come_back_unchanged(items: list[str], joiner: str) -> None:
    text = "noted " + joiner.join(items) + " thanks"
    assert scrub_text(text) is text, f"ordinary text was altered: {scrub_text(text)!r}"
    assert not has_card_data(text), f"ordinary text taken for card data: {text!r}"


@BOUNDED
@given(items=st.lists(ORDINARY_IN_FIELDS, min_size=2, max_size=4), joiner=_JOINERS)
def test_ordinary_numbers_either_side_of_a_field_boundary_come_back_unchanged(
    items: list[str], joiner: str
) -> None:
    fields = ("ref " + items[0], joiner.join(items[1:]))
    out = scrub_fields(*fields)
    assert out == fields and all(a is b for a, b in zip(out, fields, strict=True)), out


@BOUNDED
@given(card=written_cards(), before=SURROUNDING, after=SURROUNDING)
def test_an_id_holding_a_card_number_is_always_refused(
    card: tuple[str, str], before: str, after: str
) -> None:
    """Ids are stored verbatim, so instead of scrubbing, any id holding a card number in any
    layout is refused (SPEC §3.2), however it is embedded."""
    from app.domain.ids import id_problem

    pan, written = card
    value = before + written + after
    assume(not HEX_ID_LIKE.search(reader_view(value)))
    assert id_problem(value, "the call id") is not None, f"{pan} written as {written!r} kept"


# ---- a whole document at once: the same answer as field by field ------------------------------

_PIECES = st.sampled_from(
    [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1112",
        "+441632960001",
        "2026-12-05T07:31:22.123Z",
        "cvv",
        "CVV2: ",
        "card verification code ",
        "security code",
        "cid",
        "C-I-D",
        "s_e_c_u_r_i_t_y_c_o_d_e",
        "123",
        "9876",
        " ",
        "-",
        ".",
        "/",
        "_",
        "\x00",
        "\uff14",
        "rec-",
        "call",
        "0123456789abcdef0123",
        "ab",
    ]
)
_TEXTS = st.lists(_PIECES, max_size=6).map("".join)
_LEAVES = (
    _TEXTS
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.none()
)
_DOCUMENTS = st.recursive(
    _LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_TEXTS, children, max_size=4),
    max_leaves=12,
)


def _field_by_field(document: object) -> object:
    """What :func:`scrub` makes of a document walking it field by field (inner values are
    scrubbed under their key, which the shortcut for a whole document never takes)."""
    if isinstance(document, dict):
        return {scrub_text(str(k)): scrub(v, str(k)) for k, v in document.items()}
    assert isinstance(document, list)
    return [
        scrub(v, None) if not isinstance(v, dict | list) else _field_by_field(v) for v in document
    ]


@BOUNDED
@given(document=st.dictionaries(_TEXTS, _DOCUMENTS, max_size=5) | st.lists(_DOCUMENTS, max_size=5))
def test_a_whole_document_scrubs_as_its_fields_do(
    document: dict[str, object] | list[object],
) -> None:
    # NaN is not equal to itself: compare what is stored, the JSON.
    assert json.dumps(scrub(document)) == json.dumps(_field_by_field(document))


def test_a_plain_webhook_payload_is_checked_whole_and_kept_as_it_is() -> None:
    payload = {
        "type": "recording.started",
        "occurred_at": "2026-12-05T07:31:22.123Z",
        "call": {"id": "c-1a2b3c4d-1234", "from": "+441632960001", "agent_id": "agent-7"},
        "recording": {"id": "rec-1234", "format": "wav", "duration_s": 61.5},
    }
    assert scrub(payload) is payload
    payload["call"]["note"] = "caller read 4111 1111 1111 1111"
    assert scrub(payload)["call"]["note"] == "caller read [REDACTED]"
