"""Checks of a schema tree, run by ``relais schemas check`` and the test suite.

:func:`check_schemas` reports every :class:`Problem` it finds, never stopping at the first:

* **parse** (``SCHEMA_INVALID``): every file is JSON holding one Avro record accepted both
  by fastavro (through :func:`~relais.schemas.registry.build_schema`) and by the reference
  ``avro`` implementation; the tree as a whole loads with
  :meth:`~relais.schemas.registry.SchemaRegistry.from_directory`;
* **lint** (``SCHEMA_LINT``): no array or map of ``null`` anywhere (unions included); a
  non-empty ``doc`` on every record, field, enum and fixed, and every enum symbol named in its
  enum's ``doc``; a union default fits the union's first branch; ``secrecy`` and ``routing``
  marks only on top-level fields; routing keys from :data:`ROUTING_KEYS`, each used once,
  never on a secret field, on a code-like type (string, enum, boolean, int or long, or a
  union of ``null`` and one of those); a named type used in one section is defined in that
  section; every event (not statement) type routes on ``child_dept`` or ``facts_dept``; the
  tree holds exactly one current schema per event type, in ``<event_type>.avsc``, and history
  files in ``history/<event_type>/v<N>.avsc``;
* **conflicts** (``SCHEMA_CONFLICT``): two current schemas for one event type, or two schemas
  with the same parsing canonical form but other marks (same fingerprint input, other
  sections);
* **compatibility** (``SCHEMA_INCOMPATIBLE``): BACKWARD_TRANSITIVE, checked with
  ``avro.compatibility.ReaderWriterCompatibilityChecker``: each version can read data written
  with every earlier one (reader newer, writer older), with the same sections and the same
  secrecy and routing marks on the fields they share (a field that changed section would be
  read from the wrong section).

Messages name files, fields and types, never data.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import avro.errors
import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from relais.schemas.domain import EVENT_TYPES, EventType, SecrecyClass
from relais.schemas.errors import Reason, SchemaError
from relais.schemas.registry import MAIN_SECTION, EventSchema, SchemaRegistry, build_schema

__all__ = ["LOCATION_ROUTING_KEYS", "ROUTING_KEYS", "Problem", "check_schemas"]

#: The routing keys the routing rules understand; a schema may only use these.
ROUTING_KEYS: frozenset[str] = frozenset(
    {
        "addressed_to",
        "alert_sender",
        "case_ref",
        "child_dept",
        "facts_dept",
        "guardian_dept",
        "imminent",
        "in_care",
        "prostitution_suspected",
        "requester",
    }
)
#: Every event (not statement) schema carries at least one of these.
LOCATION_ROUTING_KEYS: tuple[str, ...] = ("child_dept", "facts_dept")

_MARKS = ("secrecy", "routing")
_NAMED = ("record", "error", "enum", "fixed")
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_CODE_TYPES = frozenset({"string", "boolean", "int", "long", "enum"})
_ROUTING_KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_VERSION_RE = re.compile(r"^v([1-9][0-9]*)\.avsc$")
_REGISTRY_LABEL = "<registry>"


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: the schema file (relative to the root), a stable reason, a message."""

    schema: str
    reason: Reason
    message: str


@dataclass(slots=True)
class _File:
    label: str
    raw: dict[str, Any]
    schema: EventSchema | None
    history_of: str | None = None
    version: int = 0


def check_schemas(root: Path | Traversable) -> list[Problem]:
    """Check the schema tree under ``root``; an empty list means everything holds."""
    problems: list[Problem] = []
    if not root.is_dir():
        return [Problem(str(root), Reason.SCHEMA_INVALID, "schema directory not found")]
    loaded = [_load_file(path, path.name, problems) for path in _avsc(root)]
    current = [f for f in loaded if f is not None]
    history = _load_history(root, problems)
    _check_current_set(current, problems)
    _check_conflicts([*current, *history], problems)
    _check_history(current, history, problems)
    if not problems:
        try:
            SchemaRegistry.from_directory(root)
        except SchemaError as exc:
            problems.append(Problem(_REGISTRY_LABEL, exc.reason, str(exc)))
    return problems


# -- loading ------------------------------------------------------------------------------------


def _avsc(directory: Path | Traversable) -> list[Traversable]:
    return sorted(
        (p for p in directory.iterdir() if p.name.endswith(".avsc") and p.is_file()),
        key=lambda p: p.name,
    )


def _load_file(
    path: Path | Traversable, label: str, problems: list[Problem], version: int = 0
) -> _File | None:
    """Read, build and lint one file; ``None`` when it is not even a JSON record."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        problems.append(Problem(label, Reason.SCHEMA_INVALID, "not readable JSON"))
        return None
    if not isinstance(raw, dict) or raw.get("type") != "record":
        problems.append(Problem(label, Reason.SCHEMA_INVALID, "a schema file holds one record"))
        return None
    schema: EventSchema | None = None
    build_error: SchemaError | None = None
    try:
        schema = build_schema(raw, version)
    except SchemaError as exc:
        if exc.reason is not Reason.SCHEMA_LINT:
            # kept, unlinted: its event type is still taken, and compatibility still checked
            problems.append(Problem(label, exc.reason, str(exc)))
            problems.extend(_check_reference_parser(raw, label))
            return _File(label, raw, None, version=version)
        build_error = exc
    messages = _lint(raw, schema)
    problems.extend(Problem(label, Reason.SCHEMA_LINT, m) for m in messages)
    if build_error is not None and not messages:
        problems.append(Problem(label, build_error.reason, str(build_error)))
    problems.extend(_check_reference_parser(raw, label))
    return _File(label, raw, schema, version=version)


def _load_history(root: Path | Traversable, problems: list[Problem]) -> list[_File]:
    hist_root = root / "history"
    if not hist_root.is_dir():
        return []
    out: list[_File] = []
    for type_dir in sorted(hist_root.iterdir(), key=lambda p: p.name):
        if not type_dir.is_dir():
            continue
        seen: set[int] = set()
        for path in _avsc(type_dir):
            label = f"history/{type_dir.name}/{path.name}"
            match = _VERSION_RE.match(path.name)
            if match is None:
                problems.append(Problem(label, Reason.SCHEMA_LINT, "name it v<N>.avsc, N >= 1"))
                continue
            version = int(match.group(1))
            if version in seen:
                problems.append(Problem(label, Reason.SCHEMA_LINT, "duplicate version number"))
                continue
            seen.add(version)
            loaded = _load_file(path, label, problems, version)
            if loaded is not None:
                loaded.history_of = type_dir.name
                out.append(loaded)
    return out


def _check_reference_parser(raw: dict[str, Any], label: str) -> list[Problem]:
    """Partners may use any Avro implementation: the reference one must accept the file."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            avro.schema.parse(json.dumps(raw))
        except (avro.errors.AvroException, TypeError, ValueError) as exc:
            message = f"rejected by the avro reference parser: {type(exc).__name__}"
            return [Problem(label, Reason.SCHEMA_INVALID, message)]
    return [
        Problem(label, Reason.SCHEMA_LINT, f"avro warns: {w.category.__name__}") for w in caught
    ]


# -- lint ---------------------------------------------------------------------------------------


class _Linter:
    """Walks one schema document, collecting messages and named-type use per section."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.section = MAIN_SECTION
        self.defined: dict[str, str] = {}
        self.refs: list[tuple[str, str, str]] = []

    def named(self, node: dict[str, Any], ns: str) -> str:
        name = str(node.get("name", ""))
        if "." in name:
            return name
        namespace = node.get("namespace", ns)
        return f"{namespace}.{name}" if namespace else name

    def type_(self, node: Any, ns: str, where: str) -> None:
        if isinstance(node, str):
            if node not in _PRIMITIVES:
                full = node if "." in node or not ns else f"{ns}.{node}"
                self.refs.append((full, self.section, where))
        elif isinstance(node, list):
            for branch in node:
                self.type_(branch, ns, where)
        elif isinstance(node, dict):
            self.complex(node, ns, where)

    def complex(self, node: dict[str, Any], ns: str, where: str) -> None:
        kind = node.get("type")
        if kind in _NAMED:
            full = self.named(node, ns)
            self.defined.setdefault(full, self.section)
            self.doc(node, f"{kind} {full}")
            if kind == "enum":
                self.enum_symbols(node, full)
            if kind in ("record", "error"):
                inner_ns = full.rpartition(".")[0]
                for f in node.get("fields", []):
                    self.field(f, inner_ns, f"{full}.{f.get('name')}", nested=True)
        elif kind in ("array", "map"):
            part = "items" if kind == "array" else "values"
            if _is_null(node.get(part)):
                self.messages.append(f"{where}: {kind} of null")
            self.type_(node.get(part), ns, where)
        elif isinstance(kind, dict | list):
            self.type_(kind, ns, where)

    def field(self, f: dict[str, Any], ns: str, where: str, *, nested: bool) -> None:
        self.doc(f, f"field {where}")
        if nested:
            for mark in _MARKS:
                if mark in f:
                    self.messages.append(f"field {where}: {mark} mark on a nested field")
        ftype = f.get("type")
        # fastavro accepts a default that fits any branch; the Avro spec wants the first one
        if (
            isinstance(ftype, list)
            and ftype
            and "default" in f
            and ((f["default"] is None) != _is_null(ftype[0]))
        ):
            self.messages.append(f"field {where}: default does not fit the first branch")
        self.type_(ftype, ns, where)

    def doc(self, node: dict[str, Any], what: str) -> None:
        doc = node.get("doc")
        if not isinstance(doc, str) or not doc.strip():
            self.messages.append(f"{what}: missing doc")

    def enum_symbols(self, node: dict[str, Any], full: str) -> None:
        doc = str(node.get("doc", ""))
        missing = [s for s in node.get("symbols", []) if not re.search(rf"\b{re.escape(s)}\b", doc)]
        if missing:
            self.messages.append(f"enum {full}: symbols not documented: {', '.join(missing)}")


def _is_null(node: Any) -> bool:
    if node == "null":
        return True
    if isinstance(node, dict):
        return _is_null(node.get("type"))
    if isinstance(node, list):
        return bool(node) and all(_is_null(b) for b in node)
    return False


def _lint(raw: dict[str, Any], schema: EventSchema | None) -> list[str]:
    """Every lint message for one schema document."""
    linter = _Linter()
    full = linter.named(raw, "")
    linter.doc(raw, f"record {full}")
    linter.defined[full] = MAIN_SECTION
    ns = full.rpartition(".")[0]
    fields = raw.get("fields", [])
    for f in fields:
        linter.section = str(f.get("secrecy", MAIN_SECTION))
        linter.field(f, ns, str(f.get("name")), nested=False)
    messages = linter.messages
    for name, section, where in linter.refs:
        home = linter.defined.get(name)
        if home is not None and home != section:
            messages.append(f"field {where}: uses {name}, defined in section {home}")
    messages.extend(_lint_marks(raw, schema))
    return messages


def _lint_marks(raw: dict[str, Any], schema: EventSchema | None) -> list[str]:
    messages: list[str] = []
    keys: dict[str, str] = {}
    classes = {c.value for c in SecrecyClass}
    for f in raw.get("fields", []):
        name = f.get("name")
        if "secrecy" in f and f["secrecy"] not in classes:
            messages.append(f"field {name}: unknown secrecy class")
        if "routing" not in f:
            continue
        key = f["routing"]
        if not isinstance(key, str) or not _ROUTING_KEY_RE.match(key) or key not in ROUTING_KEYS:
            messages.append(f"field {name}: unknown routing key")
        elif key in keys:
            messages.append(f"field {name}: routing key {key} already used by {keys[key]}")
        else:
            keys[key] = str(name)
        if "secrecy" in f:
            messages.append(f"field {name}: a routing field cannot be secret")
        if schema is not None and not _code_like(schema.field_types.get(str(name))):
            messages.append(f"field {name}: a routing field must be a code, enum or boolean")
    event_type = raw.get("event_type")
    if event_type in EVENT_TYPES and not set(LOCATION_ROUTING_KEYS) & set(keys):
        messages.append(f"no routing field {' or '.join(LOCATION_ROUTING_KEYS)}")
    return messages


def _code_like(ftype: Any) -> bool:
    if isinstance(ftype, list):
        branches = [b for b in ftype if not _is_null(b)]
        return len(branches) == 1 and len(ftype) == 2 and _code_like(branches[0])
    if isinstance(ftype, dict):
        return ftype.get("type") in _CODE_TYPES
    return ftype in _CODE_TYPES


# -- the tree as a whole -------------------------------------------------------------------------


def _check_current_set(current: list[_File], problems: list[Problem]) -> None:
    seen: dict[str, str] = {}
    for f in current:
        event_type = str(f.raw.get("event_type"))
        if f.label != f"{event_type}.avsc":
            problems.append(Problem(f.label, Reason.SCHEMA_LINT, "name it <event_type>.avsc"))
        if event_type in seen:
            message = f"second current schema for {event_type} (first: {seen[event_type]})"
            problems.append(Problem(f.label, Reason.SCHEMA_CONFLICT, message))
        seen.setdefault(event_type, f.label)
    for event_type in EventType:
        if event_type.value not in seen:
            label = f"{event_type.value}.avsc"
            problems.append(Problem(label, Reason.SCHEMA_LINT, "no current schema"))


def _check_conflicts(files: list[_File], problems: list[Problem]) -> None:
    by_canonical: dict[str, _File] = {}
    for f in files:
        if f.schema is None:
            continue
        twin = by_canonical.setdefault(f.schema.canonical_form, f)
        if twin.schema is not None and twin.schema.fingerprint != f.schema.fingerprint:
            message = f"same canonical form as {twin.label} but other marks"
            problems.append(Problem(f.label, Reason.SCHEMA_CONFLICT, message))


def _check_history(current: list[_File], history: list[_File], problems: list[Problem]) -> None:
    by_type = {str(f.raw.get("event_type")): f for f in current}
    chains: dict[str, list[_File]] = {}
    for f in history:
        if f.history_of not in {t.value for t in EventType}:
            problems.append(Problem(f.label, Reason.SCHEMA_LINT, "unknown event type directory"))
            continue
        if f.raw.get("event_type") != f.history_of:
            problems.append(Problem(f.label, Reason.SCHEMA_LINT, "event_type is not its directory"))
            continue
        if f.history_of not in by_type:
            message = "history without a current schema"
            problems.append(Problem(f.label, Reason.SCHEMA_CONFLICT, message))
            continue
        chains.setdefault(f.history_of, []).append(f)
    for event_type, versions in chains.items():
        chain = [*sorted(versions, key=lambda v: v.version), by_type[event_type]]
        for reader, writer in _newer_older_pairs(chain):
            problems.extend(_compatibility(reader, writer))


def _newer_older_pairs(chain: list[_File]) -> Iterator[tuple[_File, _File]]:
    for i, reader in enumerate(chain):
        for writer in chain[:i]:
            yield reader, writer


def _compatibility(reader: _File, writer: _File) -> list[Problem]:
    """``reader`` (newer) must read everything ``writer`` (older) wrote, section by section."""
    ref = writer.label if writer.history_of is None else f"v{writer.version}"
    out = [
        Problem(reader.label, Reason.SCHEMA_INCOMPATIBLE, m)
        for m in _mark_changes(reader, writer, ref)
    ]
    try:
        checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
        result = checker.get_compatibility(
            avro.schema.parse(json.dumps(reader.raw)), avro.schema.parse(json.dumps(writer.raw))
        )
    except (avro.errors.AvroException, TypeError, ValueError):
        return out  # already reported by the reference parser check
    if result.compatibility is not SchemaCompatibilityType.compatible:
        where = ", ".join(sorted({_pointer_to_field(reader.raw, str(p)) for p in result.locations}))
        kinds = ", ".join(sorted({str(k.value) for k in result.incompatibilities}))
        message = f"cannot read data written with {ref}: {kinds} at {where}"
        out.append(Problem(reader.label, Reason.SCHEMA_INCOMPATIBLE, message))
    return out


def _pointer_to_field(raw: dict[str, Any], pointer: str) -> str:
    """``/fields/3/type/fields/1/type`` as ``child.sex`` (the pointer if it names no field)."""
    node: Any = raw
    names: list[str] = []
    try:
        for token in (t for t in pointer.split("/") if t):
            node = node[int(token)] if isinstance(node, list) else node[token]
            if token.isdigit() and isinstance(node, dict) and "type" in node and "name" in node:
                names.append(str(node["name"]))
    except (KeyError, IndexError, TypeError, ValueError):
        return pointer
    return ".".join(names) or "record"


def _mark_changes(reader: _File, writer: _File, ref: str) -> list[str]:
    """Bodies are decoded section by section: shared fields must stay in their section."""
    messages: list[str] = []
    if (
        reader.schema is not None
        and writer.schema is not None
        and set(reader.schema.sections) != set(writer.schema.sections)
    ):
        messages.append(f"sections differ from {ref}")
    shared = _names(reader.raw) & _names(writer.raw)
    for mark in _MARKS:
        old, new = _marks_of(writer.raw, mark), _marks_of(reader.raw, mark)
        changed = sorted(n for n in shared if old.get(n) != new.get(n))
        if changed:
            messages.append(f"{mark} marks differ from {ref} on: {', '.join(changed)}")
    return messages


def _marks_of(raw: dict[str, Any], mark: str) -> dict[str, str]:
    return {str(f.get("name")): str(f[mark]) for f in raw.get("fields", []) if mark in f}


def _names(raw: dict[str, Any]) -> set[str]:
    return {str(f.get("name")) for f in raw.get("fields", [])}
