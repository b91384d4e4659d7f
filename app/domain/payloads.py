"""JSON bodies from outside, parsed with limits: a hostile body is a 4xx, never a 500."""

from __future__ import annotations

import json
from typing import Any

# Deeper than any event a PBX sends; deep enough nesting makes the recursive code that
# validates, scrubs and stores a payload fail, so it is refused at the door.
MAX_JSON_DEPTH = 32


class MalformedJson(ValueError):
    """The body is not JSON recgate accepts; the message is safe to store and show."""


def load_json(body: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse ``body``; :class:`MalformedJson` when it is not UTF-8 JSON or nests deeper than
    ``max_depth`` arrays and objects."""
    try:
        value = json.loads(body)
    except ValueError as exc:  # bad JSON, bad UTF-8, or an integer too long to convert
        raise MalformedJson("body is not JSON") from exc
    except RecursionError as exc:
        raise MalformedJson(f"body nests deeper than {max_depth} levels") from exc
    if _openings(body) > max_depth and json_depth(value) > max_depth:
        raise MalformedJson(f"body nests deeper than {max_depth} levels")
    return value


def _openings(body: bytes | str) -> int:
    """How many arrays and objects ``body`` could open at most (a bracket inside a string
    counts too): no deeper than that can they nest, so most bodies need no walk."""
    if isinstance(body, str):
        return body.count("{") + body.count("[")
    return body.count(b"{") + body.count(b"[")


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children)
    return deepest
