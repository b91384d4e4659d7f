"""Bencode as rtpengine's ng protocol uses it (BEP 3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.telephony.bencode import MAX_DEPTH, BencodeError, Value, decode, encode


def test_the_ng_example_from_the_provider_notes_encodes_byte_for_byte() -> None:
    command = {"command": "pause recording", "call-id": "a84b4c76e66710@pbx.example"}
    assert encode(command) == (
        b"d7:call-id26:a84b4c76e66710@pbx.example7:command15:pause recordinge"
    )


def test_dictionary_keys_are_sorted_as_bytes_not_as_text() -> None:
    # "Z" (0x5a) sorts before "a" (0x61), and a prefix before a longer key.
    assert encode({"a": 1, "Z": 2, "ab": 3}) == b"d1:Zi2e1:ai1e2:abi3ee"
    # UTF-8 bytes decide: "é" (0xc3 0xa9) sorts after every ASCII key.
    assert encode({"é": 1, "z": 2}) == b"d1:zi2e2:\xc3\xa9i1ee"


def test_scalars_and_lists() -> None:
    assert encode(0) == b"i0e"
    assert encode(-42) == b"i-42e"
    assert encode("") == b"0:"
    assert encode(b"\x00\xff") == b"2:\x00\xff"
    assert encode("Größe") == b"7:Gr\xc3\xb6\xc3\x9fe"
    assert encode(["directional", ("x", 1)]) == b"l11:directionall1:xi1eee"


def test_decode_gives_bytes_back() -> None:
    reply = decode(b"d6:result5:error12:error-reason15:Unknown call-ide")
    assert reply == {b"result": b"error", b"error-reason": b"Unknown call-id"}
    assert decode(b"li1ei-3e0:le4:spame") == [1, -3, b"", [], b"spam"]


def test_booleans_are_refused_rather_than_sent_as_integers() -> None:
    with pytest.raises(BencodeError, match="booleans"):
        encode({"flag": True})


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(BencodeError, match="duplicate"):
        encode({"a": 1, b"a": 2})  # type: ignore[arg-type]
    with pytest.raises(BencodeError, match="duplicate"):
        decode(b"d1:ai1e1:ai2ee")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"i12",  # unterminated integer
        b"ie",
        b"i-e",
        b"i-0e",
        b"i03e",
        b"i1.5e",
        b"5:abc",  # string runs past the end
        b"03:abc",  # length with a leading zero
        b"l",
        b"li1e",
        b"d1:a",
        b"di1ei2ee",  # integer key
        b"i1ei2e",  # trailing data
        b"x",
    ],
)
def test_malformed_input_is_a_bencode_error(data: bytes) -> None:
    with pytest.raises(BencodeError):
        decode(data)


def test_nesting_is_bounded() -> None:
    deep = b"l" * (MAX_DEPTH + 2) + b"e" * (MAX_DEPTH + 2)
    with pytest.raises(BencodeError, match="deeply"):
        decode(deep)


values = st.recursive(
    st.integers() | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.binary(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(values)
def test_decode_inverts_encode(value: Value) -> None:
    assert decode(encode(value)) == value
