"""Bencode, the encoding of rtpengine's ng control protocol (BEP 3).

Four types: integers ``i42e``, byte strings ``4:spam``, lists ``l…e`` and dictionaries
``d…e`` whose keys are byte strings sorted as raw bytes. Text is encoded as UTF-8; decoding
gives byte strings back, since bencode does not say what the bytes mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import TypeAlias

# What decode() returns.
Value: TypeAlias = int | bytes | list["Value"] | dict[bytes, "Value"]
# What encode() accepts: text is encoded as UTF-8, tuples are lists.
Encodable: TypeAlias = (
    int
    | str
    | bytes
    | Sequence["Encodable"]
    | Mapping[str, "Encodable"]
    | Mapping[bytes, "Encodable"]
)

# Nesting deeper than this is not an ng message; refusing it keeps decoding from recursing away.
MAX_DEPTH = 32


class BencodeError(ValueError):
    """The bytes are not one well-formed bencoded value."""


def encode(value: Encodable) -> bytes:
    """Bencode ``value``; dictionary keys are sorted as bytes, as the format requires."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _encode(value: Encodable, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError("value nested too deeply")
    # bool is an int subclass; bencode has no booleans, and True as i1e would hide a mistake.
    if isinstance(value, bool):
        raise BencodeError("bencode has no booleans")
    if isinstance(value, int):
        out += b"i%de" % value
    elif isinstance(value, str | bytes):
        raw = value.encode() if isinstance(value, str) else value
        out += b"%d:" % len(raw)
        out += raw
    elif isinstance(value, Mapping):
        items: list[tuple[bytes, Encodable]] = []
        for key, item in value.items():
            if isinstance(key, str):
                key = key.encode()
            if not isinstance(key, bytes):
                raise BencodeError("dictionary keys must be text or bytes")
            items.append((key, item))
        items.sort(key=lambda pair: pair[0])
        for (key, _), (following, _) in pairwise(items):
            if key == following:
                raise BencodeError(f"duplicate dictionary key {key!r}")
        out += b"d"
        for key, item in items:
            out += b"%d:" % len(key)
            out += key
            _encode(item, out, depth + 1)
        out += b"e"
    elif isinstance(value, Sequence):
        out += b"l"
        for item in value:
            _encode(item, out, depth + 1)
        out += b"e"
    else:
        raise BencodeError(f"cannot bencode {type(value).__name__}")


def decode(data: bytes) -> Value:
    """Decode exactly one bencoded value; trailing bytes are an error."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise BencodeError(f"trailing data at offset {end}")
    return value


def _decode(data: bytes, at: int, depth: int) -> tuple[Value, int]:
    if depth > MAX_DEPTH:
        raise BencodeError("value nested too deeply")
    if at >= len(data):
        raise BencodeError("unexpected end of data")
    lead = data[at : at + 1]
    if lead == b"i":
        end = data.find(b"e", at + 1)
        if end < 0:
            raise BencodeError("unterminated integer")
        return _integer(data[at + 1 : end]), end + 1
    if lead == b"l":
        items: list[Value] = []
        at += 1
        while data[at : at + 1] != b"e":
            item, at = _decode(data, at, depth + 1)
            items.append(item)
        return items, at + 1
    if lead == b"d":
        mapping: dict[bytes, Value] = {}
        at += 1
        while data[at : at + 1] != b"e":
            key, at = _decode(data, at, depth + 1)
            if not isinstance(key, bytes):
                raise BencodeError("dictionary key is not a byte string")
            if key in mapping:
                raise BencodeError(f"duplicate dictionary key {key!r}")
            mapping[key], at = _decode(data, at, depth + 1)
        return mapping, at + 1
    if lead.isdigit():
        colon = data.find(b":", at)
        if colon < 0:
            raise BencodeError("string length without ':'")
        length = _integer(data[at:colon])
        end = colon + 1 + length
        if end > len(data):
            raise BencodeError("string runs past the end of data")
        return data[colon + 1 : end], end
    raise BencodeError(f"unexpected byte {lead!r} at offset {at}")


def _integer(raw: bytes) -> int:
    # Exactly one spelling per number: no leading zeros, no "-0", no sign on its own.
    digits = raw.removeprefix(b"-")
    if (
        not digits
        or not digits.isdigit()
        or (digits.startswith(b"0") and len(digits) > 1)
        or raw == b"-0"
    ):
        raise BencodeError(f"malformed integer {raw!r}")
    return int(raw)
