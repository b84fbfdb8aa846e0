"""Forms generated from the Avro schemas, and form posts turned back into event records.

:func:`form_for` walks a schema: each field becomes an input with its French label, the
schema's doc as help, required when the schema gives neither a null branch nor a default;
an enum becomes a choice list, an array of enums a set of boxes, a date a date picker, a
timestamp a date-and-time picker (read as Paris time), an array of strings one line per
item, a record a group of fields, an array of records a few repeated groups (the empty ones
are left out). Bytes fields are not offered (no upload from the form).

:func:`record_from_form` reads a post back into the JSON form of a record, exactly what a
partner's system would send to ``POST /v1/events/{type}``; validation is then the agent's
own (:meth:`relais.agents.runtime.Agent.submit`), the same code path as the HTTP API. A
value that cannot be converted (letters in a number) is passed on as typed, so the schema
names the field. :func:`field_errors` puts the schema's complaints next to their fields.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from relais.agents.web.labels import field_label, symbol_label
from relais.schemas.registry import EventSchema

__all__ = [
    "FormField",
    "FormGroup",
    "field_errors",
    "form_for",
    "named_types",
    "paris",
    "record_from_form",
    "resolve",
]

REPEATED_SLOTS: Final = 3
_LONG_TEXT: Final = frozenset(
    {
        "circumstances",
        "description",
        "details",
        "facts_summary",
        "child_words",
        "observations",
        "physical_description",
        "referral_summary",
        "clinical_findings",
        "physician_conclusions",
        "psychiatric_assessment",
        "needs_summary",
        "remarks",
        "content_text",
    }
)
_PROBLEMS: Final = {
    "missing": "Champ obligatoire.",
    "unknown field": "Champ inconnu.",
}


def paris() -> dt.tzinfo:
    """Europe/Paris (the users' time), UTC when the system has no time zone data."""
    try:
        return ZoneInfo("Europe/Paris")
    except ZoneInfoNotFoundError:
        return dt.UTC


@dataclass(frozen=True, slots=True)
class FormField:
    """One input of a form."""

    path: str  # the form field name: dotted, with the slot number inside repeated groups
    key: str  # the schema path the validation names (no slot number)
    label: str
    help: str
    kind: str  # text, textarea, int, bool, enum, choices, lines, date, datetime
    required: bool
    nullable: bool
    choices: tuple[tuple[str, str], ...] = ()
    section: str = "main"

    @property
    def is_group(self) -> bool:
        """Always false (templates tell fields from groups)."""
        return False


@dataclass(frozen=True, slots=True)
class FormGroup:
    """A record's fields, or the slots of an array of records."""

    path: str
    key: str
    label: str
    help: str
    nullable: bool
    children: tuple[FormField | FormGroup, ...] = ()
    slots: tuple[tuple[FormField | FormGroup, ...], ...] = ()  # arrays of records
    section: str = "main"
    repeated: bool = field(default=False)

    @property
    def is_group(self) -> bool:
        """Always true."""
        return True


def named_types(raw: Any, out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every named type (record, enum, fixed) a schema defines, by name."""
    out = {} if out is None else out
    if isinstance(raw, list):
        for branch in raw:
            named_types(branch, out)
    elif isinstance(raw, dict):
        kind = raw.get("type")
        if kind in ("record", "enum", "fixed") and "name" in raw:
            out.setdefault(raw["name"], raw)
            if raw.get("namespace"):
                out.setdefault(f"{raw['namespace']}.{raw['name']}", raw)
        for f in raw.get("fields", ()) if kind == "record" else ():
            named_types(f["type"], out)
        if kind == "array":
            named_types(raw["items"], out)
        elif isinstance(kind, dict | list):
            named_types(kind, out)
    return out


def resolve(ftype: Any, names: Mapping[str, Any]) -> Any:
    """A type with a reference to a named type (``"TestResult"``) replaced by its definition."""
    if isinstance(ftype, str) and ftype in names:
        return names[ftype]
    if isinstance(ftype, list):
        return [resolve(b, names) for b in ftype]
    if isinstance(ftype, dict) and ftype.get("type") == "array":
        return {**ftype, "items": resolve(ftype["items"], names)}
    return ftype


def _branches(ftype: Any) -> tuple[bool, Any]:
    """(nullable, the non-null type) of a field type."""
    if isinstance(ftype, list):
        others = [b for b in ftype if b != "null"]
        return "null" in ftype, others[0] if len(others) == 1 else others
    return False, ftype


def _leaf_kind(name: str, ftype: Any) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """The input kind and choices of a scalar type (``None``: not offered)."""
    if isinstance(ftype, dict):
        logical, kind = ftype.get("logicalType"), ftype.get("type")
        if logical == "date":
            return "date", ()
        if logical in ("timestamp-millis", "timestamp-micros"):
            return "datetime", ()
        if kind == "enum":
            return "enum", tuple((s, symbol_label(ftype, s)) for s in ftype["symbols"])
        if kind == "array":
            items = ftype["items"]
            if isinstance(items, dict) and items.get("type") == "enum":
                return "choices", tuple((s, symbol_label(items, s)) for s in items["symbols"])
            if items == "string":
                return "lines", ()
            return None
        if kind == "string":
            return ("textarea" if name in _LONG_TEXT else "text"), ()
        return _leaf_kind(name, kind)
    if ftype == "string":
        return ("textarea" if name in _LONG_TEXT else "text"), ()
    if ftype in ("int", "long"):
        return "int", ()
    if ftype == "boolean":
        return "bool", ()
    return None


def _item(
    spec: Mapping[str, Any], prefix: str, key_prefix: str, section: str, names: Mapping[str, Any]
) -> FormField | FormGroup | None:
    name = spec["name"]
    path, key = prefix + name, key_prefix + name
    nullable, ftype = _branches(resolve(spec["type"], names))
    section = spec.get("secrecy", section)
    label, help_text = field_label(name), str(spec.get("doc", ""))
    if isinstance(ftype, dict) and ftype.get("type") == "record":
        children = _items(ftype["fields"], path + ".", key + ".", section, names)
        return FormGroup(path, key, label, help_text, nullable, children, section=section)
    if (
        isinstance(ftype, dict)
        and ftype.get("type") == "array"
        and isinstance(ftype["items"], dict)
        and ftype["items"].get("type") == "record"
    ):
        sub = ftype["items"]["fields"]
        slots = tuple(
            _items(sub, f"{path}.{i}.", key + ".", section, names) for i in range(REPEATED_SLOTS)
        )
        return FormGroup(
            path, key, label, help_text, True, slots=slots, section=section, repeated=True
        )
    found = _leaf_kind(name, ftype)
    if found is None:
        return None
    kind, choices = found
    required = not nullable and "default" not in spec and kind not in ("choices", "lines")
    return FormField(path, key, label, help_text, kind, required, nullable, choices, section)


def _items(
    fields: Iterable[Mapping[str, Any]],
    prefix: str,
    key_prefix: str,
    section: str,
    names: Mapping[str, Any],
) -> tuple[FormField | FormGroup, ...]:
    out = [_item(f, prefix, key_prefix, section, names) for f in fields]
    return tuple(i for i in out if i is not None)


def form_for(schema: EventSchema) -> tuple[FormField | FormGroup, ...]:
    """The inputs of an event type's form, in schema order."""
    return _items(schema.raw["fields"], "", "", "main", named_types(schema.raw))


# -- reading a post back -----------------------------------------------------------------------


class _Empty:
    """Nothing was typed for an input."""


_EMPTY: Final = _Empty()


def _leaf_value(item: FormField, form: Any) -> Any:
    if item.kind == "choices":
        return [v for v in form.getlist(item.path) if v]
    raw = str(form.get(item.path, "") or "").strip()
    if item.kind == "lines":
        return [line.strip() for line in raw.splitlines() if line.strip()]
    if not raw:
        return _EMPTY
    if item.kind == "int":
        try:
            return int(raw)
        except ValueError:
            return raw  # the schema names the field
    if item.kind == "bool":
        return {"true": True, "false": False}.get(raw, raw)
    if item.kind == "datetime":
        try:
            local = dt.datetime.fromisoformat(raw)
        except ValueError:
            return raw
        if local.tzinfo is None:
            local = local.replace(tzinfo=paris())
        return local.isoformat()
    return raw


def _group_value(group: FormGroup, form: Any) -> Any:
    if group.repeated:
        items = [_record(slot, form) for slot in group.slots]
        return [i for i in items if i is not _EMPTY]
    value = _record(group.children, form)
    if value is _EMPTY:
        return None if group.nullable else {}
    return value


def _record(items: Iterable[FormField | FormGroup], form: Any) -> Any:
    """The record the inputs hold, or ``_EMPTY`` when nothing at all was typed."""
    out: dict[str, Any] = {}
    typed = False
    for item in items:
        name = item.key.rsplit(".", 1)[-1]
        value = _group_value(item, form) if isinstance(item, FormGroup) else _leaf_value(item, form)
        if value is _EMPTY:
            if isinstance(item, FormField) and item.nullable:
                out[name] = None
            continue
        if value not in ([], None, {}):
            typed = True
        out[name] = value
    return out if typed else _EMPTY


def record_from_form(schema: EventSchema, form: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON record a post holds and the required inputs left empty (path -> message)."""
    items = form_for(schema)
    record = _record(items, form)
    missing: dict[str, str] = {}
    _missing(items, form, missing, inside_typed=True)
    return ({} if record is _EMPTY else record), missing


def _missing(
    items: Iterable[FormField | FormGroup], form: Any, out: dict[str, str], *, inside_typed: bool
) -> None:
    for item in items:
        if isinstance(item, FormGroup):
            if item.repeated:
                for slot in item.slots:
                    if _record(slot, form) is not _EMPTY:
                        _missing(slot, form, out, inside_typed=True)
                continue
            typed = _record(item.children, form) is not _EMPTY
            if typed or not item.nullable:
                _missing(item.children, form, out, inside_typed=True)
        elif inside_typed and item.required and _leaf_value(item, form) is _EMPTY:
            out[item.path] = _PROBLEMS["missing"]


def field_errors(
    problems: Iterable[str], items: Iterable[FormField | FormGroup]
) -> tuple[dict[str, str], list[str]]:
    """The schema's complaints (``"name (problem)"``) by input path; those matching none."""
    keys: dict[str, str] = {}
    _index(items, keys)
    by_path: dict[str, str] = {}
    unplaced: list[str] = []
    for text in problems:
        name, _, rest = text.partition(" (")
        problem = rest.rstrip(")")
        message = _PROBLEMS.get(problem, "Valeur invalide.")
        path = keys.get(name)
        while path is None and "." in name:  # a field inside repeated groups: the group
            name = name.rsplit(".", 1)[0]
            path = keys.get(name)
        if path is None:
            unplaced.append(field_label(name))
        else:
            by_path.setdefault(path, message)
    return by_path, unplaced


def _index(items: Iterable[FormField | FormGroup], keys: dict[str, str]) -> None:
    for item in items:
        keys.setdefault(item.key, item.path)
        if isinstance(item, FormGroup):
            _index(item.children, keys)
