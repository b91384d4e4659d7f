"""JSON bodies parsed with a nesting limit (app/domain/payloads.py)."""

from __future__ import annotations

import json

import pytest

from app.domain.payloads import MAX_JSON_DEPTH, MalformedJson, load_json


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("as_bytes", [True, False])
def test_nesting_up_to_the_limit_is_accepted_and_one_more_refused(as_bytes: bool) -> None:
    at_limit, over = _nested(MAX_JSON_DEPTH), _nested(MAX_JSON_DEPTH + 1)
    assert load_json(at_limit.encode() if as_bytes else at_limit) is not None
    with pytest.raises(MalformedJson, match="deeper"):
        load_json(over.encode() if as_bytes else over)


def test_objects_count_as_levels_like_arrays() -> None:
    body = '{"a":' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(MalformedJson, match="deeper"):
        load_json(body.encode())


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    body = json.dumps({"note": "{[" * 100, "call": {"id": "c-1"}}).encode()
    assert load_json(body)["call"] == {"id": "c-1"}


def test_many_shallow_objects_are_not_deep() -> None:
    body = json.dumps([{"id": n} for n in range(MAX_JSON_DEPTH * 4)]).encode()
    assert len(load_json(body)) == MAX_JSON_DEPTH * 4
