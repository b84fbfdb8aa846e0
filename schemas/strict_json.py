"""Bounded, strict JSON for signed documents: the directory, audit records, checkpoints.

Parsing JSON costs time and memory in proportion to its values, and Python's parser builds
the whole tree before anything can look at it: 63 MiB of ``[{},{},...]`` is 21 million
objects (seconds, gigabytes). So :func:`loads_bounded` refuses, *before parsing*, a document
over its byte cap, or holding more containers (``{`` and ``[``) or values (``,``) than its
caps allow. Those counts are byte counts, done in C: they also count the brackets and commas
inside strings, so they only ever overestimate, which is safe (a document near its caps is
refused, never one far below them).

Then the parse is strict: UTF-8 only, no duplicate members (two parsers would keep
different ones), no floats, ``NaN`` or ``Infinity`` (the signed documents hold integers
only), and, with ``max_depth``, no nesting deeper than the format has (the containers cap
bounds the depth before parsing; deeper than the parser's own limit is a refusal too).
Every failure is the caller's typed error (a :class:`~relais.schemas.errors.RelaisError`
subclass): a ``RecursionError``, ``ValueError`` or ``UnicodeError`` never escapes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NoReturn

from relais.schemas.errors import RelaisError

__all__ = ["JsonLimits", "check_bounds", "loads_bounded", "max_depth", "unique_members"]


class JsonLimits:
    """The caps of one document kind (bytes, containers, values, nesting depth)."""

    __slots__ = ("max_bytes", "max_containers", "max_depth", "max_values")

    def __init__(
        self, *, max_bytes: int, max_containers: int, max_values: int, max_depth: int | None
    ) -> None:
        self.max_bytes = max_bytes
        self.max_containers = max_containers
        self.max_values = max_values
        self.max_depth = max_depth


def max_depth(value: Any) -> int:
    """The nesting depth of a parsed value (a scalar is 0), without recursion."""
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
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook`` that refuses a member given twice."""
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("duplicate member")
    return members


def _no_floats(text: str) -> NoReturn:
    raise ValueError("floats and constants are not allowed")


def check_bounds(data: bytes, limits: JsonLimits, error: Callable[[str], RelaisError]) -> None:
    """Refuse, without parsing, a document over the byte, container or value caps."""
    if not isinstance(data, bytes | bytearray):
        raise error("not bytes")
    if len(data) > limits.max_bytes:
        raise error("document too large")
    containers = data.count(b"{") + data.count(b"[")
    if containers > limits.max_containers:
        raise error("too many objects and lists")
    if data.count(b",") + containers > limits.max_values:
        raise error("too many values")


def loads_bounded(data: bytes, limits: JsonLimits, error: Callable[[str], RelaisError]) -> Any:
    """Parse ``data`` within ``limits``; any failure raises ``error(why)`` (no values in it)."""
    check_bounds(data, limits, error)
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=unique_members,
            parse_float=_no_floats,
            parse_constant=_no_floats,
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError included
        raise error("not a JSON document") from exc
    # The containers cap already bounds the depth (and so this walk): this is the format's.
    if limits.max_depth is not None and max_depth(value) > limits.max_depth:
        raise error("nested too deep")
    return value
