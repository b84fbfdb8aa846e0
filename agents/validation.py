"""Validation at intake: a submission is checked against the published contract, then sealed.

The contract of an event type is its JSON Schema (:mod:`relais.schemas.jsonschema`, the
schemas of the OpenAPI document). :func:`check_record` interprets exactly that document:
it compiles each schema once into checkers and walks the submitted value with them, so the
agent refuses what the document refuses and nothing else. On the way it converts the JSON
form into the Avro datum sealing needs (date-times in UTC, to the millisecond; dates; UUIDs;
bytes), so a time is never guessed: a date-time without offset, an epoch number, a date in
another format are refused, not coerced. The Python API's own values (``datetime`` with a
time zone, ``date``, ``UUID``, ``bytes``) are accepted as well.

Every problem is reported with the field's full path (``child.birth_date``,
``injuries[2].kind``) and a stable :class:`Code`, never with the value; at most
:data:`MAX_PROBLEMS` are reported, and an over-long list is not walked. Plausibility the
domain fixes is checked here too: past facts not later than now plus the clock skew, times
of one event in their order, départements from the official list.

:func:`check_sections` refuses an event whose secret section (e.g. ``medical``) no recipient
is entitled to, unless the caller accepts that this section is withheld: a section that
would silently reach nobody is the sender's to decide on, not the agent's.

:func:`parse_json_object` parses a request body (size is capped by the caller before it is
read): unique member names, no NaN or infinities, at most :data:`MAX_DEPTH` levels.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
import re
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from relais.agents.sealing import Plan
from relais.schemas.domain import EventType
from relais.schemas.errors import PayloadError, Reason
from relais.schemas.jsonschema import (
    DATETIME_PATTERN,
    DEPARTEMENTS,
    EARLIEST,
    LATEST,
    SKEW_MS,
    json_schema,
)
from relais.schemas.registry import MAIN_SECTION, EventSchema
from relais.schemas.strict_json import unique_members

__all__ = [
    "MAX_DEPTH",
    "MAX_PROBLEMS",
    "Code",
    "ContractError",
    "FieldProblem",
    "check_record",
    "check_sections",
    "parse_json_object",
    "safe_name",
]

MAX_PROBLEMS: Final = 32
MAX_DEPTH: Final = 32
# The latest offset in use (UTC+14): a date is in the future when it is after today
# anywhere on Earth.
_LATEST_OFFSET: Final = dt.timedelta(hours=14)
_NAIVE_DATETIME: Final = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?$"
)
_DATETIME: Final = re.compile(DATETIME_PATTERN)
_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_DEPARTEMENT_SET: Final = frozenset(DEPARTEMENTS)


class Code(StrEnum):
    """Stable codes of the problems the API reports (``errors[].code``). Never rename."""

    # the request itself
    BODY_TOO_LARGE = "BODY_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    NOT_JSON = "NOT_JSON"
    NOT_AN_OBJECT = "NOT_AN_OBJECT"
    TOO_DEEP = "TOO_DEEP"
    UNKNOWN_EVENT_TYPE = "UNKNOWN_EVENT_TYPE"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    INVALID_PARAMETER = "INVALID_PARAMETER"
    # a field
    MISSING = "MISSING"
    UNKNOWN_FIELD = "UNKNOWN_FIELD"
    WRONG_TYPE = "WRONG_TYPE"
    NOT_IN_ENUM = "NOT_IN_ENUM"
    UNKNOWN_DEPARTEMENT = "UNKNOWN_DEPARTEMENT"
    PATTERN_MISMATCH = "PATTERN_MISMATCH"
    TOO_SHORT = "TOO_SHORT"
    TOO_LONG = "TOO_LONG"
    BELOW_MINIMUM = "BELOW_MINIMUM"
    ABOVE_MAXIMUM = "ABOVE_MAXIMUM"
    TOO_MANY_ITEMS = "TOO_MANY_ITEMS"
    DUPLICATE_ITEMS = "DUPLICATE_ITEMS"
    NOT_A_DATETIME = "NOT_A_DATETIME"
    OFFSET_REQUIRED = "OFFSET_REQUIRED"
    NOT_A_DATE = "NOT_A_DATE"
    NOT_A_UUID = "NOT_A_UUID"
    NOT_BASE64 = "NOT_BASE64"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    IN_THE_FUTURE = "IN_THE_FUTURE"
    OUT_OF_ORDER = "OUT_OF_ORDER"
    # the routing decision
    NO_ENTITLED_RECIPIENT = "NO_ENTITLED_RECIPIENT"
    # the event's content, as the schema registry checks it once more before sealing
    DOES_NOT_FIT_SCHEMA = "DOES_NOT_FIT_SCHEMA"


_TEXT: Final[dict[Code, str]] = {
    Code.MISSING: "required",
    Code.UNKNOWN_FIELD: "not a field of this schema",
    Code.WRONG_TYPE: "wrong JSON type",
    Code.NOT_IN_ENUM: "not one of the symbols",
    Code.UNKNOWN_DEPARTEMENT: "not an INSEE département code",
    Code.PATTERN_MISMATCH: "does not match the pattern",
    Code.TOO_SHORT: "too short",
    Code.TOO_LONG: "too long",
    Code.BELOW_MINIMUM: "below the minimum",
    Code.ABOVE_MAXIMUM: "above the maximum",
    Code.TOO_MANY_ITEMS: "too many items",
    Code.DUPLICATE_ITEMS: "an item is repeated",
    Code.NOT_A_DATETIME: "not an RFC 3339 date-time",
    Code.OFFSET_REQUIRED: "a date-time needs its offset (Z or +hh:mm)",
    Code.NOT_A_DATE: "not a YYYY-MM-DD date",
    Code.NOT_A_UUID: "not a canonical lower-case UUID",
    Code.NOT_BASE64: "not base64",
    Code.OUT_OF_RANGE: "outside 1900-01-01 .. 2100-01-01",
    Code.IN_THE_FUTURE: "later than now (a past fact)",
    Code.OUT_OF_ORDER: "earlier than a time it must follow",
    Code.NO_ENTITLED_RECIPIENT: (
        "no recipient is entitled to this section: it would reach nobody"
        " (submit with accept_withheld=<section> to send the event without it)"
    ),
}


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One problem: where (a field path, never a value), a stable code and a short text."""

    path: str
    code: Code
    text: str = ""

    @property
    def problem(self) -> str:
        """What is wrong, in words (the code's text unless a more precise one is given)."""
        return self.text or _TEXT.get(self.code, self.code.value.lower().replace("_", " "))


class ContractError(PayloadError):
    """A submission that breaks the contract; ``problems`` says where and why."""

    def __init__(
        self,
        message: str,
        problems: tuple[FieldProblem, ...],
        *,
        reason: Reason = Reason.INVALID_PAYLOAD,
    ) -> None:
        super().__init__(
            message, fields=tuple(f"{p.path} ({p.problem})" for p in problems), reason=reason
        )
        self.problems = problems


# -- the checkers --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Walk:
    """One walk: the problems found and the instant past facts are judged against."""

    now: dt.datetime
    problems: list[FieldProblem] = field(default_factory=list)

    @property
    def full(self) -> bool:
        return len(self.problems) >= MAX_PROBLEMS

    def add(self, path: str, code: Code, text: str = "") -> None:
        if not self.full:
            self.problems.append(FieldProblem(path or "body", code, text))


class _Bad:
    """The result of a value that did not check (its problem is already recorded)."""


_BAD: Final = _Bad()
_Check = Callable[[Any, str, _Walk], Any]


def safe_name(key: Any) -> str:
    """A submitted member name as it may be reported: a plain name, else ``<name>``.

    A name is the caller's, not a value, but one that is not an identifier may be data.
    """
    return key if isinstance(key, str) and _NAME.fullmatch(key) else "<name>"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(node: Mapping[str, Any]) -> _Check:
    low, high = node.get("minimum"), node.get("maximum")

    def check(value: Any, path: str, walk: _Walk) -> Any:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON has one number type: 3.0 is the integer 3
        if not _is_int(value):
            walk.add(path, Code.WRONG_TYPE, "an integer is expected")
            return _BAD
        if low is not None and value < low:
            walk.add(path, Code.BELOW_MINIMUM, f"below the minimum ({low})")
            return _BAD
        if high is not None and value > high:
            walk.add(path, Code.ABOVE_MAXIMUM, f"above the maximum ({high})")
            return _BAD
        return value

    return check


def _boolean(value: Any, path: str, walk: _Walk) -> Any:
    if not isinstance(value, bool):
        walk.add(path, Code.WRONG_TYPE, "true or false is expected")
        return _BAD
    return value


def _number(value: Any, path: str, walk: _Walk) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        walk.add(path, Code.WRONG_TYPE, "a number is expected")
        return _BAD
    return value


def _in_range(moment: dt.datetime) -> bool:
    return EARLIEST <= moment < LATEST


def _datetime(value: Any, path: str, walk: _Walk) -> Any:
    if isinstance(value, dt.datetime):
        moment = value
        if moment.tzinfo is None or moment.utcoffset() is None:
            walk.add(path, Code.OFFSET_REQUIRED)
            return _BAD
    elif not isinstance(value, str):
        walk.add(path, Code.NOT_A_DATETIME, "an RFC 3339 date-time string is expected")
        return _BAD
    elif not _DATETIME.fullmatch(value):
        naive = _NAIVE_DATETIME.fullmatch(value)
        walk.add(path, Code.OFFSET_REQUIRED if naive else Code.NOT_A_DATETIME)
        return _BAD
    else:
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            walk.add(path, Code.NOT_A_DATETIME)
            return _BAD
    try:
        utc = moment.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        walk.add(path, Code.OUT_OF_RANGE)
        return _BAD
    if not _in_range(utc):
        walk.add(path, Code.OUT_OF_RANGE)
        return _BAD
    # the Avro type keeps milliseconds: the datum says what will be sealed
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def _date(value: Any, path: str, walk: _Walk) -> Any:
    if isinstance(value, dt.datetime) or not isinstance(value, str | dt.date):
        walk.add(path, Code.NOT_A_DATE, "a YYYY-MM-DD string is expected")
        return _BAD
    if isinstance(value, str):
        if len(value) != 10 or value[4] != "-" or value[7] != "-":
            walk.add(path, Code.NOT_A_DATE)
            return _BAD
        try:
            value = dt.date.fromisoformat(value)
        except ValueError:
            walk.add(path, Code.NOT_A_DATE)
            return _BAD
    if not EARLIEST.year <= value.year < LATEST.year:
        walk.add(path, Code.OUT_OF_RANGE)
        return _BAD
    return value


def _uuid(value: Any, path: str, walk: _Walk) -> Any:
    if isinstance(value, uuid.UUID):
        return value
    try:
        parsed = uuid.UUID(value) if isinstance(value, str) and len(value) == 36 else None
    except ValueError:
        parsed = None
    if parsed is None or str(parsed) != value:
        walk.add(path, Code.NOT_A_UUID)
        return _BAD
    return parsed


def _string(node: Mapping[str, Any]) -> _Check:
    fmt = node.get("format")
    if fmt == "date-time":
        return _datetime
    if fmt == "date":
        return _date
    if fmt == "uuid":
        return _uuid
    low, high = int(node.get("minLength", 0)), node.get("maxLength")
    pattern = re.compile(node["pattern"]) if "pattern" in node else None
    symbols = frozenset(node["enum"]) if "enum" in node else None
    enum_code = Code.UNKNOWN_DEPARTEMENT if symbols == _DEPARTEMENT_SET else Code.NOT_IN_ENUM
    base64_coded = node.get("contentEncoding") == "base64"

    def check(value: Any, path: str, walk: _Walk) -> Any:
        if base64_coded and isinstance(value, bytes):
            value_len = len(base64.b64encode(value)) if high is not None else 0
            if high is not None and value_len > high:
                walk.add(path, Code.TOO_LONG, f"longer than {high} base64 characters")
                return _BAD
            return value
        if not isinstance(value, str):
            walk.add(path, Code.WRONG_TYPE, "a string is expected")
            return _BAD
        if symbols is not None:
            if value not in symbols:
                walk.add(path, enum_code)
                return _BAD
            return value
        if len(value) < low:
            walk.add(path, Code.TOO_SHORT, f"shorter than {low} characters")
            return _BAD
        if high is not None and len(value) > high:
            walk.add(path, Code.TOO_LONG, f"longer than {high} characters")
            return _BAD
        if pattern is not None and not pattern.fullmatch(value):
            walk.add(path, Code.PATTERN_MISMATCH)
            return _BAD
        if base64_coded:
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                walk.add(path, Code.NOT_BASE64)
                return _BAD
        return value

    return check


def _past(inner: _Check) -> _Check:
    def check(value: Any, path: str, walk: _Walk) -> Any:
        out = inner(value, path, walk)
        if isinstance(out, dt.datetime):
            late = out > walk.now + dt.timedelta(milliseconds=SKEW_MS)
        elif isinstance(out, dt.date):
            horizon = walk.now + dt.timedelta(milliseconds=SKEW_MS) + _LATEST_OFFSET
            late = out > horizon.date()
        else:
            return out
        if late:
            walk.add(path, Code.IN_THE_FUTURE)
            return _BAD
        return out

    return check


def _nullable(inner: _Check) -> _Check:
    def check(value: Any, path: str, walk: _Walk) -> Any:
        return None if value is None else inner(value, path, walk)

    return check


def _array(node: Mapping[str, Any], items: _Check) -> _Check:
    limit = node.get("maxItems")
    unique = bool(node.get("uniqueItems"))

    def check(value: Any, path: str, walk: _Walk) -> Any:
        if not isinstance(value, list | tuple):
            walk.add(path, Code.WRONG_TYPE, "an array is expected")
            return _BAD
        if limit is not None and len(value) > limit:
            walk.add(path, Code.TOO_MANY_ITEMS, f"more than {limit} items")
            return _BAD  # not walked: the cost of a list is bounded by its cap
        out = [items(item, f"{path}[{i}]", walk) for i, item in enumerate(value)]
        if any(v is _BAD for v in out):
            return _BAD
        if unique and len({json.dumps(v, sort_keys=True, default=str) for v in out}) < len(out):
            walk.add(path, Code.DUPLICATE_ITEMS)
            return _BAD
        return out

    return check


def _object(node: Mapping[str, Any], props: Mapping[str, _Check]) -> _Check:
    required = tuple(node.get("required", ()))
    orders = tuple(tuple(pair) for pair in node.get("x-relais-order", ()))

    def check(value: Any, path: str, walk: _Walk) -> Any:
        if not isinstance(value, Mapping):
            walk.add(path, Code.WRONG_TYPE, "an object is expected")
            return _BAD
        prefix = f"{path}." if path else ""
        out: dict[str, Any] = {}
        bad = False
        for key in value:
            if key not in props:
                walk.add(prefix + safe_name(key), Code.UNKNOWN_FIELD)
                bad = True
        for key in required:
            if key not in value:
                walk.add(prefix + key, Code.MISSING)
                bad = True
        for key, checker in props.items():
            if key in value and not walk.full:
                out[key] = checker(value[key], prefix + key, walk)
                bad = bad or out[key] is _BAD
        if bad or walk.full:
            return _BAD
        for earlier, later in orders:
            first, second = out.get(earlier), out.get(later)
            if first is None or second is None or type(first) is not type(second):
                continue
            if first > second:
                walk.add(prefix + later, Code.OUT_OF_ORDER, f"earlier than {earlier}")
                bad = True
        return _BAD if bad else out

    return check


class _Compiler:
    """A JSON Schema (the subset :mod:`relais.schemas.jsonschema` writes) into checkers."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self._defs: Mapping[str, Any] = document.get("$defs", {})
        self._compiled: dict[str, _Check] = {}

    def compile(self, node: Mapping[str, Any]) -> _Check:
        check = self._compile(node)
        return _past(check) if node.get("x-relais-not-after-now") else check

    def _compile(self, node: Mapping[str, Any]) -> _Check:
        if "$ref" in node:
            return self._ref(str(node["$ref"]).removeprefix("#/$defs/"))
        if "anyOf" in node:
            branches = [b for b in node["anyOf"] if b != {"type": "null"}]
            if len(branches) != 1 or len(node["anyOf"]) != 2:
                raise ValueError("only [X, null] unions are supported")
            return _nullable(self._compile(branches[0]))
        kind = node.get("type")
        if isinstance(kind, list):
            (single,) = [k for k in kind if k != "null"]
            inner = self._compile({**node, "type": single})
            return _nullable(inner) if "null" in kind else inner
        if kind == "object":
            props = {k: self.compile(v) for k, v in node.get("properties", {}).items()}
            return _object(node, props)
        if kind == "array":
            return _array(node, self.compile(node["items"]))
        if kind == "string":
            return _string(node)
        if kind == "integer":
            return _integer(node)
        if kind == "boolean":
            return _boolean
        if kind == "number":
            return _number
        raise ValueError(f"unsupported JSON Schema node {sorted(node)}")

    def _ref(self, name: str) -> _Check:
        if name not in self._compiled:
            slot: list[_Check] = []
            # named types may refer to themselves: resolve through the slot
            self._compiled[name] = lambda value, path, walk: slot[0](value, path, walk)
            slot.append(self.compile(self._defs[name]))
            self._compiled[name] = slot[0]
        return self._compiled[name]


@functools.cache
def _checker(event_type: EventType) -> _Check:
    document = json_schema(event_type)
    return _Compiler(document).compile(document)


def check_record(schema: EventSchema, record: Mapping[str, Any], *, now_ms: int) -> dict[str, Any]:
    """The Avro datum of ``record`` (JSON form or Python values), checked against the contract.

    Past facts are judged against ``now_ms`` (Unix milliseconds). Raises
    :class:`ContractError` (``INVALID_PAYLOAD``) with every problem found, up to
    :data:`MAX_PROBLEMS`.
    """
    now = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC)
    walk = _Walk(now=now)
    datum = _checker(schema.event_type)(record, "", walk)
    if walk.problems or not isinstance(datum, dict):
        raise ContractError(
            f"{schema.event_type.value}: {len(walk.problems)} invalid field(s)",
            tuple(walk.problems) or (FieldProblem("body", Code.WRONG_TYPE),),
        )
    return datum


def _carries_content(record: Mapping[str, Any], fields: Collection[str]) -> bool:
    return any(record.get(f) not in (None, [], {}, "") for f in fields)


def check_sections(plan: Plan, accept_withheld: Collection[str] = ()) -> None:
    """Refuse a plan whose secret section with content would reach nobody.

    ``accept_withheld`` names the sections the caller accepts to see withheld (sent
    without them). Raises :class:`ContractError` naming each such section
    (``sections.<name>``, ``NO_ENTITLED_RECIPIENT``).
    """
    audiences = plan.audiences
    problems = tuple(
        FieldProblem(f"sections.{name}", Code.NO_ENTITLED_RECIPIENT)
        for name, section in plan.schema.sections.items()
        if name != MAIN_SECTION
        and not audiences.get(name)
        and name not in accept_withheld
        and _carries_content(plan.record, section.fields)
    )
    if problems:
        raise ContractError(
            f"{plan.event_type.value}: a secret section would reach no recipient", problems
        )


def parse_json_object(data: bytes) -> dict[str, Any]:
    """A request body as a JSON object (raises :class:`ContractError`).

    Refused: text that is not JSON, repeated member names, NaN and infinities, a value
    that is not an object (``NOT_AN_OBJECT``), nesting deeper than :data:`MAX_DEPTH`
    (``TOO_DEEP``; the parser's own recursion limit ends deeper documents the same way).
    """
    try:
        value = json.loads(data, object_pairs_hook=unique_members, parse_constant=_no_constant)
    except RecursionError as exc:
        raise _body_error(Code.TOO_DEEP) from exc
    except ValueError as exc:  # also UnicodeDecodeError, and integers beyond the digit limit
        raise _body_error(Code.NOT_JSON) from exc
    if _depth(value) > MAX_DEPTH:
        raise _body_error(Code.TOO_DEEP)
    if not isinstance(value, dict):
        raise _body_error(Code.NOT_AN_OBJECT)
    return value


def _body_error(code: Code) -> ContractError:
    return ContractError("the body is not a usable JSON object", (FieldProblem("body", code),))


def _depth(value: Any) -> int:
    """Nesting depth, without recursion (the value may be nested up to the parser's limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                break
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _no_constant(text: str) -> Any:
    raise ValueError("NaN and infinities are not JSON")
