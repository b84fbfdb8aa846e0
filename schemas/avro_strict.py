"""One meaning per byte: a strict pre-reader of Avro binary bodies, and the work caps.

Avro's binary encoding leaves room for several spellings of one value, and Avro decoders
read the non-canonical ones differently (a boolean byte ``0x02`` is ``true`` to fastavro and
``false`` to the ``avro`` package; fastavro takes a union index ``-1`` as the last branch and
reads 11-byte varints). A signature and a key commitment guarantee the bytes, not their
meaning, so before any signed body is decoded, :class:`StrictReader` walks it against the
writer schema and accepts only the one encoding a conformant writer produces:

* ``boolean``: the byte ``0x00`` or ``0x01``;
* ``int`` / ``long`` (and every length, count and index): zig-zag varint in its minimal
  form (no final ``0x00`` group after another group), at most 5 / 10 bytes, within 32 / 64
  bits;
* union and enum indexes within range;
* ``array`` / ``map``: one block with a positive count followed by the end marker ``0``
  (or the end marker alone when empty); no negative block counts, no second block; map
  keys unique;
* ``string`` / ``bytes`` / ``fixed``: lengths within the input (UTF-8 validity is then
  checked by the decoder);
* nothing after the record.

Failures: :class:`~relais.schemas.errors.EnvelopeError` with ``NONCANONICAL_ENCODING``
(another spelling), ``TOO_MANY_ITEMS`` (the cap below) or ``BODY_DECODE_FAILED`` (the
bytes end early or run on).

**Work caps.** The work a body can cause is bounded by its schema (section schemas are not
recursive; :func:`compile_reader` refuses a recursive one) times the number of array items
and map entries, which is capped per section at :data:`MAX_ITEMS` *before* the items are
read: a 192 KiB section of one-byte items is refused at its first block count.
:meth:`StrictReader.count_items` applies the same cap to a record before it is encoded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from relais.schemas.errors import EnvelopeError, PayloadError, Reason, SchemaError

__all__ = ["MAX_ITEMS", "StrictReader", "compile_reader"]

# Array items plus map entries in one section. A batched receipt carries up to 500 entries;
# no event needs more than a few dozen.
MAX_ITEMS: Final = 1024

# scan(data, pos, budget) -> new pos; budget[0] is the number of items still allowed.
_Scan = Callable[[bytes, int, list[int]], int]
# count(value, budget) -> None, raising PayloadError when the budget runs out.
_Count = Callable[[Any, list[int]], None]


def _varint(data: bytes, pos: int, max_bits: int) -> tuple[int, int]:
    """Read a minimal unsigned varint of at most ``max_bits`` bits: ``(raw, new pos)``."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    raw = byte & 0x7F
    shift = 7
    while True:
        pos += 1
        byte = data[pos]
        raw |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0:  # a final zero group: an overlong spelling
                raise EnvelopeError(Reason.NONCANONICAL_ENCODING)
            break
        shift += 7
        if shift >= max_bits:
            raise EnvelopeError(Reason.NONCANONICAL_ENCODING)
    if raw >> max_bits:
        raise EnvelopeError(Reason.NONCANONICAL_ENCODING)
    return raw, pos + 1


def _long(data: bytes, pos: int) -> tuple[int, int]:
    raw, pos = _varint(data, pos, 64)
    return (raw >> 1) ^ -(raw & 1), pos


def _scan_null(data: bytes, pos: int, budget: list[int]) -> int:
    return pos


def _scan_boolean(data: bytes, pos: int, budget: list[int]) -> int:
    if data[pos] > 1:
        raise EnvelopeError(Reason.NONCANONICAL_ENCODING)
    return pos + 1


def _scan_int(data: bytes, pos: int, budget: list[int]) -> int:
    return _varint(data, pos, 32)[1]


def _scan_long(data: bytes, pos: int, budget: list[int]) -> int:
    return _varint(data, pos, 64)[1]


def _fixed_size(size: int) -> _Scan:
    def scan(data: bytes, pos: int, budget: list[int]) -> int:
        end = pos + size
        if end > len(data):
            raise IndexError(end)
        return end

    return scan


def _scan_bytes(data: bytes, pos: int, budget: list[int]) -> int:
    size, pos = _long(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise EnvelopeError(Reason.BODY_DECODE_FAILED)
    return end


_PRIMITIVES: Final[dict[str, _Scan]] = {
    "null": _scan_null,
    "boolean": _scan_boolean,
    "int": _scan_int,
    "long": _scan_long,
    "float": _fixed_size(4),
    "double": _fixed_size(8),
    "bytes": _scan_bytes,
    "string": _scan_bytes,
}


def _no_count(value: Any, budget: list[int]) -> None:
    return None


class StrictReader:
    """The strict pre-reader of one (non-recursive) record schema."""

    __slots__ = ("_count", "_scan")

    def __init__(self, scan: _Scan, count: _Count) -> None:
        self._scan = scan
        self._count = count

    def check(self, data: bytes, start: int = 0) -> None:
        """Accept ``data[start:]`` only if it is the canonical encoding of one datum."""
        budget = [MAX_ITEMS]
        try:
            end = self._scan(data, start, budget)
        except IndexError as exc:  # the bytes ended inside a value
            raise EnvelopeError(Reason.BODY_DECODE_FAILED) from exc
        if end != len(data):
            raise EnvelopeError(Reason.BODY_DECODE_FAILED)

    def count_items(self, value: Any) -> None:
        """Refuse (``PayloadError``, ``TOO_MANY_ITEMS``) a datum beyond the items cap.

        Only counts: the datum is validated elsewhere. Values of an unexpected type are
        skipped (validation names them).
        """
        self._count(value, [MAX_ITEMS])


class _Compiler:
    """Turns a fastavro-parsed schema into a pair of closures per node."""

    def __init__(self, named: Mapping[str, Any]) -> None:
        self._named = named
        self._done: dict[str, tuple[_Scan, _Count, bool]] = {}
        self._busy: set[str] = set()

    def node(self, schema: Any) -> tuple[_Scan, _Count, bool]:
        """``(scan, count, holds_items)`` for one schema node."""
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _PRIMITIVES[schema], _no_count, False
            return self._named_node(schema)
        if isinstance(schema, list):
            return self._union(schema)
        if not isinstance(schema, dict):
            raise SchemaError("not an Avro schema node", reason=Reason.SCHEMA_INVALID)
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            return self._named_node(str(schema["name"]), schema)
        if kind == "array":
            return self._array(schema["items"])
        if kind == "map":
            return self._map(schema["values"])
        return self.node(kind)  # {"type": "long", "logicalType": ...} and the like

    def _named_node(self, name: str, schema: Any = None) -> tuple[_Scan, _Count, bool]:
        if name in self._done:
            return self._done[name]
        if name in self._busy:
            raise SchemaError(f"recursive type {name}", reason=Reason.SCHEMA_LINT)
        definition = schema if schema is not None else self._named.get(name)
        if not isinstance(definition, dict):
            raise SchemaError(f"unknown named type {name}", reason=Reason.SCHEMA_INVALID)
        self._busy.add(name)
        kind = definition["type"]
        if kind in ("record", "error"):
            built = self._record(definition["fields"])
        elif kind == "enum":
            built = self._enum(len(definition["symbols"])), _no_count, False
        else:
            built = _fixed_size(int(definition["size"])), _no_count, False
        self._busy.discard(name)
        self._done[name] = built
        return built

    def _record(self, fields: list[dict[str, Any]]) -> tuple[_Scan, _Count, bool]:
        nodes = [(str(f["name"]), *self.node(f["type"])) for f in fields]
        scans = tuple(scan for _name, scan, _count, _items in nodes)
        counted = tuple((name, count) for name, _scan, count, items in nodes if items)

        def scan(data: bytes, pos: int, budget: list[int]) -> int:
            for field_scan in scans:
                pos = field_scan(data, pos, budget)
            return pos

        def count(value: Any, budget: list[int]) -> None:
            if isinstance(value, Mapping):
                for name, field_count in counted:
                    if name in value:
                        field_count(value[name], budget)

        return scan, count, bool(counted)

    @staticmethod
    def _enum(size: int) -> _Scan:
        def scan(data: bytes, pos: int, budget: list[int]) -> int:
            raw, pos = _varint(data, pos, 32)
            if raw & 1 or raw >> 1 >= size:  # odd zig-zag values are negative
                raise EnvelopeError(Reason.NONCANONICAL_ENCODING)
            return pos

        return scan

    def _union(self, branches: list[Any]) -> tuple[_Scan, _Count, bool]:
        nodes = [self.node(b) for b in branches]
        scans = tuple(n[0] for n in nodes)
        size = len(scans)
        counts = tuple(n[1] for n in nodes if n[2])

        def scan(data: bytes, pos: int, budget: list[int]) -> int:
            raw, pos = _varint(data, pos, 64)
            if raw & 1 or raw >> 1 >= size:
                raise EnvelopeError(Reason.NONCANONICAL_ENCODING)
            return scans[raw >> 1](data, pos, budget)

        def count(value: Any, budget: list[int]) -> None:
            for branch_count in counts:  # each branch counts only values of its shape
                branch_count(value, budget)

        return scan, count, bool(counts)

    def _array(self, items: Any) -> tuple[_Scan, _Count, bool]:
        item_scan, item_count, nested = self.node(items)

        def scan(data: bytes, pos: int, budget: list[int]) -> int:
            n, pos = _long(data, pos)
            if n == 0:
                return pos
            _take(n, budget)
            for _ in range(n):
                pos = item_scan(data, pos, budget)
            if data[pos] != 0:  # a second block, or a negative (sized) block count
                raise EnvelopeError(Reason.NONCANONICAL_ENCODING)
            return pos + 1

        def count(value: Any, budget: list[int]) -> None:
            if isinstance(value, list | tuple):
                _spend(len(value), budget)
                if nested:
                    for item in value:
                        item_count(item, budget)

        return scan, count, True

    def _map(self, values: Any) -> tuple[_Scan, _Count, bool]:
        value_scan, value_count, nested = self.node(values)

        def scan(data: bytes, pos: int, budget: list[int]) -> int:
            n, pos = _long(data, pos)
            if n == 0:
                return pos
            _take(n, budget)
            keys: set[bytes] = set()
            for _ in range(n):
                start = pos
                pos = _scan_bytes(data, pos, budget)
                keys.add(data[start:pos])
                pos = value_scan(data, pos, budget)
            if len(keys) != n or data[pos] != 0:  # duplicate keys mean two things
                raise EnvelopeError(Reason.NONCANONICAL_ENCODING)
            return pos + 1

        def count(value: Any, budget: list[int]) -> None:
            if isinstance(value, Mapping):
                _spend(len(value), budget)
                if nested:
                    for item in value.values():
                        value_count(item, budget)

        return scan, count, True


def _take(n: int, budget: list[int]) -> None:
    """Spend ``n`` items of a body being read (``n < 0`` is a sized block)."""
    if n < 0:
        raise EnvelopeError(Reason.NONCANONICAL_ENCODING)
    budget[0] -= n
    if budget[0] < 0:
        raise EnvelopeError(Reason.TOO_MANY_ITEMS)


def _spend(n: int, budget: list[int]) -> None:
    """Spend ``n`` items of a record being sealed."""
    budget[0] -= n
    if budget[0] < 0:
        raise PayloadError(
            f"more than {MAX_ITEMS} list items in one section", reason=Reason.TOO_MANY_ITEMS
        )


def compile_reader(parsed: Mapping[str, Any]) -> StrictReader:
    """The strict reader of a fastavro-parsed record schema (``SchemaError`` if recursive)."""
    compiler = _Compiler(parsed.get("__named_schemas") or {})
    scan, count, _items = compiler.node(dict(parsed))
    return StrictReader(scan, count)
