"""The schema registry: every shared Avro schema, parsed once, fingerprinted, split in sections.

Conventions of the ``.avsc`` files (``schemas/avsc``, checked by ``relais schemas check``):

* each file is one Avro ``record`` with a record-level ``"event_type"`` attribute naming the
  :class:`~relais.schemas.domain.EventType` it carries; earlier versions of a schema are kept
  under ``avsc/history/<event_type>/v<N>.avsc``;
* a top-level field may carry ``"secrecy": "<class>"`` (e.g. ``"medical"``): such fields
  travel in their own section, wrapped only for recipients entitled to that class;
* a top-level field may carry ``"routing": "<key>"``: its value, which must be an id, a
  code, an enum or a boolean, is copied in clear into the envelope header's routing
  metadata, which the routing rules read (and recipients check against the content).

The **fingerprint** bound by envelopes is SHA-256 over the UTF-8 Avro parsing canonical form,
a line feed, and the compact sorted-keys JSON of ``{"event_type", "routing", "secrecy"}``:
the canonical form alone drops custom attributes, so a schema whose secrecy marks changed
must not keep its fingerprint. Two schemas with the same canonical form and different marks
are refused.

Section bodies use Avro single-object encoding (``C3 01``, the 8-byte little-endian
CRC-64-AVRO fingerprint of the section schema, then the binary body) and are only ever
decoded with the pinned reader schema (the current version of the same event type).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import functools
import hashlib
import io
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro._validate_common import ValidationError
from fastavro.validation import validate

from relais.schemas.avro_strict import StrictReader, compile_reader
from relais.schemas.domain import ROUTING_VALUE_RE, EventType, SecrecyClass
from relais.schemas.errors import EnvelopeError, PayloadError, Reason, SchemaError

__all__ = [
    "MAIN_SECTION",
    "EventSchema",
    "SchemaRegistry",
    "crc64_avro",
    "default_registry",
]

MAIN_SECTION = "main"
_SINGLE_OBJECT_MARKER = b"\xc3\x01"
_EMPTY64 = 0xC15D213AA4D7A795


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return table


_CRC64_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> bytes:
    """The Avro CRC-64 (Rabin) fingerprint, as the 8 little-endian bytes of single-object use."""
    fp = _EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ _CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


def _dedupe_named(schema: Any, seen: set[str]) -> Any:
    """Replace repeated definitions of a named type with a reference to its name."""
    if isinstance(schema, list):
        return [_dedupe_named(s, seen) for s in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type")
    if kind in ("record", "enum", "fixed", "error"):
        name = str(schema["name"])
        if name in seen:
            return name
        seen.add(name)
        if kind in ("record", "error"):
            out = dict(schema)
            out["fields"] = [
                {**f, "type": _dedupe_named(f["type"], seen)} for f in schema["fields"]
            ]
            return out
        return schema
    if kind == "array":
        return {**schema, "items": _dedupe_named(schema["items"], seen)}
    if kind == "map":
        return {**schema, "values": _dedupe_named(schema["values"], seen)}
    return schema


@dataclass(frozen=True, slots=True)
class _Section:
    name: str
    record_name: str
    fields: tuple[str, ...]
    parsed: Any
    fp8: bytes
    strict: StrictReader


@dataclass(eq=False, slots=True)
class EventSchema:
    """One version of one event schema, parsed, with its sections."""

    event_type: EventType
    full_name: str
    version: int
    raw: dict[str, Any]
    canonical_form: str
    fingerprint: bytes
    secrecy: dict[str, str]
    routing: dict[str, str]
    sections: dict[str, _Section]
    field_types: dict[str, Any]
    required: frozenset[str]
    full_parsed: Any = field(default=None, repr=False)
    uuid_paths: tuple[tuple[str, ...], ...] = ()
    reader: EventSchema | None = field(default=None, repr=False)

    @property
    def section_names(self) -> tuple[str, ...]:
        """Section names in envelope order: ``main`` first, then secrecy classes sorted."""
        return tuple(self.sections)

    @property
    def pinned_reader(self) -> EventSchema:
        """The schema version bodies are decoded with (the current one)."""
        return self.reader if self.reader is not None else self

    # -- validation and encoding -----------------------------------------------------------

    def validate(self, record: Mapping[str, Any]) -> None:
        """Raise :class:`PayloadError` naming every field that does not fit (never values)."""
        bad: list[str] = [f"{k} (unknown field)" for k in record if k not in self.field_types]
        for name, ftype in self.field_types.items():
            if name not in record:
                if name in self.required:
                    bad.append(f"{name} (missing)")
                continue
            try:
                validate(record[name], ftype, field=name, strict=True)
            except ValidationError as exc:
                paths = sorted({_field_path(name, d.field) for d in exc.errors})
                bad.extend(paths or [name])
            bad.extend(_beyond_fastavro(record[name], ftype, name))
        if bad:
            bad = list(dict.fromkeys(bad))
            raise PayloadError(
                f"{self.event_type.value}: invalid fields: {', '.join(bad)}",
                fields=tuple(bad),
            )

    def encode_record(self, record: Mapping[str, Any]) -> dict[str, bytes]:
        """Validate ``record`` and encode every section, in one pass on the fast path.

        The fast path (one whole-record fastavro validation, the UUID fields, then the strict
        writer, which refuses unknown nested keys and missing fields) costs about as much as
        encoding alone; anything it refuses is diagnosed by :meth:`validate`, which raises the
        :class:`PayloadError` naming the fields. List items are counted first, against the
        cap receivers apply (``TOO_MANY_ITEMS``), so an oversized list costs nothing more.
        """
        for sec in self.sections.values():
            sec.strict.count_items(record)
        if (
            record.keys() <= self.field_types.keys()
            and validate(record, self.full_parsed, raise_errors=False, strict=True)
            and all(_is_canonical_uuid(v) for v in _values_at(record, self.uuid_paths))
        ):
            try:
                return {
                    name: self.encode_section(name, values)
                    for name, values in self.split(record).items()
                }
            except (ValueError, TypeError, KeyError, AttributeError):
                pass  # diagnosed below
        self.validate(record)
        raise PayloadError(f"{self.event_type.value}: record does not encode", fields=())

    def split(self, record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The record's values grouped by section (every section present, defaults filled)."""
        out: dict[str, dict[str, Any]] = {}
        for section in self.sections.values():
            out[section.name] = {f: record[f] for f in section.fields if f in record}
        return out

    def encode_section(self, section: str, values: Mapping[str, Any]) -> bytes:
        """Avro single-object encoding of one section's values."""
        sec = self.sections[section]
        buf = io.BytesIO()
        buf.write(_SINGLE_OBJECT_MARKER)
        buf.write(sec.fp8)
        fastavro.schemaless_writer(buf, sec.parsed, dict(values), strict_allow_default=True)
        return buf.getvalue()

    def decode_section(self, section: str, data: bytes) -> dict[str, Any]:
        """Decode a section body written with this schema version, read with the pinned reader.

        The body is first read strictly (:mod:`relais.schemas.avro_strict`): only its
        canonical encoding passes (``NONCANONICAL_ENCODING``), within the items cap
        (``TOO_MANY_ITEMS``). Otherwise ``EnvelopeError(BODY_DECODE_FAILED)``: the data was
        signed by a known partner but does not decode, which is a sender defect or an attack.
        """
        sec = self.sections.get(section)
        reader = self.pinned_reader.sections.get(section)
        if sec is None or reader is None:
            raise EnvelopeError(Reason.BODY_DECODE_FAILED)
        if data[:2] != _SINGLE_OBJECT_MARKER or data[2:10] != sec.fp8:
            raise EnvelopeError(Reason.BODY_DECODE_FAILED)
        sec.strict.check(data, 10)
        buf = io.BytesIO(data)
        buf.seek(10)
        try:
            # Same version: no schema resolution needed (and fastavro is faster without it).
            resolve = None if reader is sec else reader.parsed
            value = fastavro.schemaless_reader(buf, sec.parsed, resolve)
        except Exception as exc:
            raise EnvelopeError(Reason.BODY_DECODE_FAILED) from exc
        if buf.tell() != len(data) or not isinstance(value, dict):
            raise EnvelopeError(Reason.BODY_DECODE_FAILED)
        return value

    def routing_metadata(self, record: Mapping[str, Any]) -> dict[str, str]:
        """The routing metadata (key → code) that the header carries in clear."""
        meta: dict[str, str] = {}
        for fname, key in self.routing.items():
            value = record.get(fname)
            if value is None:
                continue
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            if not ROUTING_VALUE_RE.fullmatch(text):
                raise PayloadError(
                    f"{self.event_type.value}: routing field {fname} is not a code",
                    fields=(fname,),
                )
            meta[key] = text
        return meta

    # -- JSON (HTTP API, CLI) --------------------------------------------------------------

    def from_json(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Coerce a JSON object into an Avro datum (ISO dates and timestamps, base64 bytes)."""
        out: dict[str, Any] = {}
        for key, value in obj.items():
            ftype = self.field_types.get(key)
            out[key] = value if ftype is None else _from_json(value, ftype)
        return out


def _beyond_fastavro(value: Any, ftype: Any, path: str) -> list[str]:
    """What fastavro's validation lets through, as field paths.

    Unknown keys of nested records (the writer would silently drop them), and UUID text that
    is not canonical: fastavro writes any string and only the recipient's reader fails, or
    turns upper case into lower case, which breaks the routing metadata check on opening.
    """
    if isinstance(ftype, list):
        if value is None:
            return []
        branch = next((b for b in ftype if validate(value, b, raise_errors=False)), None)
        return [] if branch is None else _beyond_fastavro(value, branch, path)
    if not isinstance(ftype, dict):
        return []
    kind = ftype.get("type")
    if kind == "string" and ftype.get("logicalType") == "uuid":
        return [] if _is_canonical_uuid(value) else [path]
    out: list[str] = []
    if kind in ("record", "error") and isinstance(value, Mapping):
        types = {f["name"]: f["type"] for f in ftype["fields"]}
        out.extend(f"{path}.{k} (unknown field)" for k in value if k not in types)
        for key, sub in types.items():
            if key in value:
                out.extend(_beyond_fastavro(value[key], sub, f"{path}.{key}"))
    elif kind == "array" and isinstance(value, list):
        for item in value:
            out.extend(_beyond_fastavro(item, ftype["items"], path))
    elif kind == "map" and isinstance(value, Mapping):
        for item in value.values():
            out.extend(_beyond_fastavro(item, ftype["values"], path))
    return out


def _is_canonical_uuid(value: Any) -> bool:
    if isinstance(value, uuid.UUID):
        return True
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _uuid_paths(ftype: Any, path: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Access paths (field names, ``"[]"`` for array items) of every ``uuid`` string."""
    if isinstance(ftype, list):
        return [p for branch in ftype for p in _uuid_paths(branch, path)]
    if not isinstance(ftype, dict):
        return []
    kind = ftype.get("type")
    if kind == "string" and ftype.get("logicalType") == "uuid":
        return [path]
    if kind in ("record", "error"):
        return [p for f in ftype["fields"] for p in _uuid_paths(f["type"], (*path, f["name"]))]
    if kind == "array":
        return _uuid_paths(ftype["items"], (*path, "[]"))
    if kind == "map":
        return _uuid_paths(ftype["values"], (*path, "{}"))
    return []


def _values_at(value: Any, paths: tuple[tuple[str, ...], ...]) -> list[Any]:
    """The non-null values found at ``paths`` (see :func:`_uuid_paths`)."""
    out: list[Any] = []
    for path in paths:
        level = [value]
        for step in path:
            nxt: list[Any] = []
            for item in level:
                if step == "[]" and isinstance(item, list):
                    nxt.extend(item)
                elif step == "{}" and isinstance(item, Mapping):
                    nxt.extend(item.values())
                elif isinstance(item, Mapping) and item.get(step) is not None:
                    nxt.append(item[step])
            level = nxt
        out.extend(level)
    return out


def _field_path(top: str, error_field: str) -> str:
    if not error_field or error_field == top:
        return top
    return f"{top}.{error_field.rsplit('.', 1)[-1]}"


def _from_json(value: Any, ftype: Any) -> Any:
    if isinstance(ftype, list):
        if value is None:
            return None
        for branch in ftype:
            if branch != "null":
                converted = _from_json(value, branch)
                if converted is not value:
                    return converted
        return value
    if isinstance(ftype, dict):
        logical = ftype.get("logicalType")
        kind = ftype.get("type")
        if logical in ("timestamp-millis", "timestamp-micros") and isinstance(value, str):
            try:
                parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return value
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
        if logical == "date" and isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                return value
        if logical == "uuid" and isinstance(value, str):
            try:
                return uuid.UUID(value)
            except ValueError:
                return value
        if kind == "record" and isinstance(value, Mapping):
            types = {f["name"]: f["type"] for f in ftype["fields"]}
            return {k: _from_json(v, types[k]) if k in types else v for k, v in value.items()}
        if kind == "array" and isinstance(value, list):
            return [_from_json(v, ftype["items"]) for v in value]
        if kind == "map" and isinstance(value, Mapping):
            return {k: _from_json(v, ftype["values"]) for k, v in value.items()}
        if kind in ("bytes", "fixed") and isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except ValueError:
                return value
    if ftype == "bytes" and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            return value
    return value


def to_jsonable(value: Any) -> Any:
    """Decoded Avro values as JSON-compatible values (ISO times, base64 bytes)."""
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _marks(raw: Mapping[str, Any], attr: str) -> dict[str, str]:
    return {f["name"]: str(f[attr]) for f in raw["fields"] if attr in f}


def _fingerprint(
    canonical: str, event_type: str, secrecy: dict[str, str], routing: dict[str, str]
) -> bytes:
    marks = json.dumps(
        {"event_type": event_type, "routing": routing, "secrecy": secrecy},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8") + b"\n" + marks.encode("utf-8")).digest()


def build_schema(raw: dict[str, Any], version: int) -> EventSchema:
    """Parse one schema document into an :class:`EventSchema` (raises ``SchemaError``)."""
    if not isinstance(raw, dict) or raw.get("type") != "record":
        raise SchemaError("a schema file must hold one Avro record", reason=Reason.SCHEMA_INVALID)
    try:
        event_type = EventType(str(raw.get("event_type")))
    except ValueError as exc:
        raise SchemaError(
            f"schema {raw.get('name')!s}: missing or unknown event_type",
            reason=Reason.SCHEMA_INVALID,
        ) from exc
    try:
        parsed = cast(dict[str, Any], fastavro.parse_schema(copy.deepcopy(raw)))
        expanded = cast(dict[str, Any], fastavro.parse_schema(copy.deepcopy(raw), expand=True))
        canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    except Exception as exc:
        raise SchemaError(
            f"schema {raw.get('name')!s} does not parse: {type(exc).__name__}",
            reason=Reason.SCHEMA_INVALID,
        ) from exc
    secrecy = _marks(raw, "secrecy")
    routing = _marks(raw, "routing")
    for fname, klass in secrecy.items():
        if klass not in {c.value for c in SecrecyClass}:
            raise SchemaError(
                f"schema {parsed['name']}: field {fname} has unknown secrecy class",
                reason=Reason.SCHEMA_LINT,
            )
        if fname in routing:
            raise SchemaError(
                f"schema {parsed['name']}: routing field {fname} cannot be secret",
                reason=Reason.SCHEMA_LINT,
            )
    full_name = str(parsed["name"])
    field_types = {f["name"]: f["type"] for f in expanded["fields"]}
    required = frozenset(f["name"] for f in raw["fields"] if "default" not in f)
    sections: dict[str, _Section] = {}
    classes = [MAIN_SECTION, *sorted(set(secrecy.values()))]
    for klass in classes:
        fields = [f for f in expanded["fields"] if secrecy.get(f["name"], MAIN_SECTION) == klass]
        record_name = full_name if klass == MAIN_SECTION else f"{full_name}_{klass}"
        section_raw = _dedupe_named(
            {"type": "record", "name": record_name, "fields": fields}, set()
        )
        try:
            section_parsed = fastavro.parse_schema(section_raw)
        except Exception as exc:
            raise SchemaError(
                f"schema {full_name}: section {klass} does not stand alone",
                reason=Reason.SCHEMA_LINT,
            ) from exc
        pcf = fastavro.schema.to_parsing_canonical_form(section_parsed)
        sections[klass] = _Section(
            name=klass,
            record_name=record_name,
            fields=tuple(f["name"] for f in fields),
            parsed=section_parsed,
            fp8=crc64_avro(pcf.encode("utf-8")),
            strict=compile_reader(cast(dict[str, Any], section_parsed)),
        )
    return EventSchema(
        event_type=event_type,
        full_name=full_name,
        version=version,
        raw=raw,
        canonical_form=canonical,
        fingerprint=_fingerprint(canonical, event_type.value, secrecy, routing),
        secrecy=secrecy,
        routing=routing,
        sections=sections,
        field_types=field_types,
        required=required,
        full_parsed=parsed,
        uuid_paths=tuple(_uuid_paths(expanded, ())),
    )


class SchemaRegistry:
    """All schema versions, indexed by event type (current) and by fingerprint (any)."""

    def __init__(self, current: list[EventSchema], history: list[EventSchema]) -> None:
        self._current: dict[EventType, EventSchema] = {}
        self._by_fp: dict[bytes, EventSchema] = {}
        self._by_canonical: dict[str, EventSchema] = {}
        self.history: dict[EventType, list[EventSchema]] = {}
        for schema in current:
            if schema.event_type in self._current:
                raise SchemaError(
                    f"two current schemas for {schema.event_type.value}",
                    reason=Reason.SCHEMA_CONFLICT,
                )
            self._current[schema.event_type] = schema
        for schema in [*current, *history]:
            if schema.event_type not in self._current:
                raise SchemaError(
                    f"history for {schema.event_type.value} without a current schema",
                    reason=Reason.SCHEMA_CONFLICT,
                )
            twin = self._by_canonical.get(schema.canonical_form)
            if twin is not None and twin.fingerprint != schema.fingerprint:
                raise SchemaError(
                    f"{schema.full_name}: same canonical form as another schema but other marks",
                    reason=Reason.SCHEMA_CONFLICT,
                )
            self._by_canonical[schema.canonical_form] = schema
            self._by_fp.setdefault(schema.fingerprint, schema)
        for schema in history:
            schema.reader = self._current[schema.event_type]
            if set(schema.sections) != set(schema.reader.sections):
                raise SchemaError(
                    f"{schema.full_name} v{schema.version}: sections differ from current",
                    reason=Reason.SCHEMA_INCOMPATIBLE,
                )
            self.history.setdefault(schema.event_type, []).append(schema)
        for versions in self.history.values():
            versions.sort(key=lambda s: s.version)

    @classmethod
    def from_directory(cls, root: Path | Any) -> SchemaRegistry:
        """Load ``*.avsc`` under ``root`` and ``root/history/<type>/v<N>.avsc``."""
        current = [build_schema(_load(p), 0) for p in _iter_avsc(root)]
        history: list[EventSchema] = []
        hist_root = root / "history"
        if hist_root.is_dir():
            for type_dir in sorted(hist_root.iterdir(), key=lambda p: p.name):
                if not type_dir.is_dir():
                    continue
                for path in _iter_avsc(type_dir):
                    version = _version_of(path.name)
                    history.append(build_schema(_load(path), version))
        return cls(current, history)

    def current(self) -> Iterator[EventSchema]:
        """The current version of every schema."""
        return iter(self._current.values())

    def by_type(self, event_type: EventType | str) -> EventSchema:
        """The current schema of an event type (raises ``SchemaError(UNKNOWN_SCHEMA)``)."""
        try:
            return self._current[EventType(event_type)]
        except (KeyError, ValueError) as exc:
            raise SchemaError("unknown event type", reason=Reason.UNKNOWN_SCHEMA) from exc

    def by_fingerprint(self, fingerprint: bytes) -> EventSchema:
        """Any known schema version by fingerprint (raises ``EnvelopeError(UNKNOWN_SCHEMA)``)."""
        schema = self._by_fp.get(fingerprint)
        if schema is None:
            raise EnvelopeError(Reason.UNKNOWN_SCHEMA)
        return schema


def _iter_avsc(root: Any) -> list[Any]:
    return sorted(
        (p for p in root.iterdir() if p.name.endswith(".avsc") and p.is_file()),
        key=lambda p: p.name,
    )


def _version_of(name: str) -> int:
    stem = name.removesuffix(".avsc")
    if not stem.startswith("v") or not stem[1:].isdigit():
        raise SchemaError(f"history file {name} must be named v<N>.avsc", reason=Reason.SCHEMA_LINT)
    return int(stem[1:])


def _load(path: Any) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path.name}: not readable JSON", reason=Reason.SCHEMA_INVALID) from exc
    if not isinstance(data, dict):
        raise SchemaError(f"{path.name}: not a JSON object", reason=Reason.SCHEMA_INVALID)
    return data


def schema_root() -> Any:
    """The packaged ``avsc`` directory (works from a wheel, from any working directory)."""
    return resources.files("relais.schemas") / "avsc"


@functools.cache
def default_registry() -> SchemaRegistry:
    """The registry of the packaged schemas, loaded and parsed once per process."""
    return SchemaRegistry.from_directory(schema_root())
