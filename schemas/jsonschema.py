"""The JSON form of every event schema, as a JSON Schema (draft 2020-12), for partner systems.

A partner's system submits events to its agent as JSON (``POST /v1/events/{event_type}``).
This module derives, from each Avro schema of the registry, the JSON Schema of that JSON
form: every field with its ``doc``, its type, its format and the bounds the domain fixes,
and a valid example. The agent validates submissions against exactly this document
(:mod:`relais.agents.validation` interprets it), so what the OpenAPI document publishes is
what is enforced.

The JSON form of Avro values:

* ``timestamp-millis``: an RFC 3339 date-time string **with its offset** (``Z`` or
  ``+01:00``; a time without offset is refused, never guessed), at most 6 fractional digits
  (kept to the millisecond); never an epoch number;
* ``date``: ``YYYY-MM-DD``; ``uuid``: the canonical lower-case form; ``bytes``: base64;
* enums: their symbol; a union with ``null``: the value or ``null``.

The bounds (string lengths, patterns, integer ranges, list sizes) are fixed here by field
name, since the Avro type system has none; a field name means the same thing in every
schema. Plausibility that depends on the clock or on two fields is carried by custom
keywords the validator applies and the descriptions state: ``x-relais-not-after-now`` (a
past fact: not later than the submission, within the clock skew) and, on a record,
``x-relais-order`` (pairs of fields that must not be in decreasing order). All times and
dates must lie in ``[1900-01-01, 2100-01-01)``.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import functools
import random
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from relais.schemas.domain import EVENT_TYPES, PARTNER_ID_RE, EventType
from relais.schemas.envelope import DEFAULT_SKEW_MS
from relais.schemas.registry import SchemaRegistry, default_registry
from relais.schemas.samples import sample_event

__all__ = [
    "DATETIME_PATTERN",
    "DATE_PATTERN",
    "DEPARTEMENTS",
    "EARLIEST",
    "LATEST",
    "SKEW_MS",
    "UUID_PATTERN",
    "example",
    "json_example",
    "json_schema",
    "openapi_components",
]

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
#: RFC 3339 date-time with a mandatory offset (``Z`` or ``±hh:mm``).
DATETIME_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$"
)
DATE_PATTERN: Final = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
UUID_PATTERN: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
#: Clock skew allowed for a past fact stated a little ahead of the agent's clock.
SKEW_MS: Final = DEFAULT_SKEW_MS
EARLIEST: Final = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
LATEST: Final = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)

# INSEE codes the schemas document for départements, in their official order: 01-19, 2A,
# 2B, 21-95 (20 was split in 1976) and 971-976. The directory enrols partners in the same
# codes but 975 (Saint-Pierre-et-Miquelon is a collectivité with its own child protection):
# an event about a child of 975 is still accepted, and goes to human triage, rather than
# being refused at intake with nowhere else to go (a test checks both lists).
DEPARTEMENTS: Final[tuple[str, ...]] = (
    *(f"{n:02d}" for n in range(1, 20)),
    "2A",
    "2B",
    *(f"{n:02d}" for n in range(21, 96)),
    *(str(n) for n in range(971, 977)),
)

_DEPARTEMENT_DEF: Final = "Departement"
_MAX_INT: Final = 2**31 - 1
_MAX_LONG: Final = 2**63 - 1
_SHORT: Final = 200  # names, references, identifiers
_LONG: Final = 1000  # addresses, places
_TEXT: Final = 20_000  # free text, in words
_MAX_ATTACHMENT: Final = 64 * 1024  # "a few tens of kB at most"
_DEFAULT_ITEMS: Final = 100


@dataclass(frozen=True, slots=True)
class _Bounds:
    """What the domain fixes for one field name (``None``: the type's default)."""

    max_length: int | None = None
    pattern: str | None = None
    minimum: int | None = None
    maximum: int | None = None
    max_items: int | None = None


_PHONE: Final = _Bounds(max_length=32, pattern=r"^\+?[0-9][0-9 ().-]{2,30}$")
_PARTNER: Final = _Bounds(max_length=64, pattern=PARTNER_ID_RE.pattern)
_COMMUNE: Final = _Bounds(max_length=5, pattern=r"^(?:[0-9]{5}|2[AB][0-9]{3})$")
_FREE_TEXT: Final = _Bounds(max_length=_TEXT)

_BY_NAME: Final[dict[str, _Bounds]] = {
    # who: partner ids of the directory
    **dict.fromkeys(
        (
            "addressed_to",
            "requester",
            "alert_sender",
            "return_interview_service",
            "sender",
            "recipient",
            "partner",
        ),
        _PARTNER,
    ),
    # where: INSEE commune codes
    **dict.fromkeys(("commune", "last_seen_commune", "found_commune"), _COMMUNE),
    # phones: the child's and a suspect's in E.164, professionals' as written
    "phone_number": _Bounds(max_length=16, pattern=r"^\+[1-9][0-9]{6,14}$"),
    **dict.fromkeys(
        ("referent_phone", "reporter_phone", "booking_holder_phone", "staff_contact_phone"),
        _PHONE,
    ),
    "last_ip_country": _Bounds(max_length=2, pattern=r"^[A-Z]{2}$"),
    "sha256_hex": _Bounds(max_length=64, pattern=r"^[0-9a-f]{64}$"),
    "media_type": _Bounds(
        max_length=127, pattern=r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$"
    ),
    "physician_rpps": _Bounds(max_length=11, pattern=r"^[0-9]{11}$"),
    "attachment": _Bounds(max_length=4 * -(-_MAX_ATTACHMENT // 3)),
    **dict.fromkeys(("address", "last_seen_place", "birth_place", "vehicle"), _Bounds(_LONG)),
    **dict.fromkeys(
        (
            "circumstances",
            "physical_description",
            "facts_summary",
            "child_words",
            "referral_summary",
            "clinical_findings",
            "physician_conclusions",
            "psychiatric_assessment",
            "description",
            "details",
            "remarks",
            "needs_summary",
            "observations",
            "content_text",
        ),
        _FREE_TEXT,
    ),
    # counts and ages
    "apparent_age": _Bounds(minimum=0, maximum=25),
    "declared_age": _Bounds(minimum=0, maximum=120),
    "approximate_age": _Bounds(minimum=0, maximum=120),
    "previous_runaways_12_months": _Bounds(minimum=0, maximum=366),
    "estimated_age_days": _Bounds(minimum=0, maximum=3650),
    "total_incapacity_days": _Bounds(minimum=0, maximum=3650),
    # lists
    "aliases": _Bounds(max_items=20),
    "subject_identifiers": _Bounds(max_items=50),
    "evidence_urls": _Bounds(max_items=50, max_length=2048, pattern=r"^https?://[^\s]+$"),
    "injuries": _Bounds(max_items=50),
    "sti_tests": _Bounds(max_items=20),
    "toxicology": _Bounds(max_items=30),
    "minors_observed": _Bounds(max_items=20),
    "suspects": _Bounds(max_items=20),
    "suspect_accounts": _Bounds(max_items=20),
    "items": _Bounds(max_items=50),
}
# Facts of the past: not later than the submission (within the clock skew).
_PAST: Final = frozenset(
    {
        "declared_at",
        "missing_since",
        "seen_at",
        "found_at",
        "observed_at",
        "detected_at",
        "answered_at",
        "created_at",
        "birth_date",
        "facts_known_since",
        "sampled_on",
    }
)
# (earlier, later) pairs of top-level fields, per event type.
_ORDER: Final[dict[EventType, tuple[tuple[str, str], ...]]] = {
    EventType.RUNAWAY_ALERT: (("missing_since", "declared_at"),),
    EventType.LODGING_SUSPICION_REPORT: (("check_in", "check_out"),),
    EventType.JUDICIAL_REQUISITION: (("period_start", "period_end"),),
    EventType.MEDICAL_REFERRAL: (("seen_at", "discharge_planned_at"),),
}


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


class _Builder:
    """Turns one Avro schema into a JSON Schema, named types into ``$defs``."""

    def __init__(self) -> None:
        self.defs: dict[str, dict[str, Any]] = {}

    def record(self, raw: Mapping[str, Any], orders: tuple[tuple[str, str], ...] = ()) -> Any:
        props: dict[str, Any] = {}
        for f in raw["fields"]:
            props[f["name"]] = self.field(f)
        out: dict[str, Any] = {"type": "object"}
        if raw.get("doc"):
            out["description"] = raw["doc"]
        out["properties"] = props
        out["required"] = [f["name"] for f in raw["fields"] if "default" not in f]
        out["additionalProperties"] = False
        if orders:
            out["x-relais-order"] = [list(pair) for pair in orders]
            sentences = [f" {a} must not be later than {b}." for a, b in orders]
            out["description"] = out.get("description", "") + "".join(sentences)
        return out

    def field(self, f: Mapping[str, Any]) -> dict[str, Any]:
        name = str(f["name"])
        out = dict(self.type_of(f["type"], name))
        doc = str(f.get("doc", ""))
        if name in _PAST:
            doc += (
                " A past fact: not later than the submission"
                f" ({SKEW_MS // 60_000} minutes of clock skew allowed)."
            )
            out["x-relais-not-after-now"] = True
        if doc:
            out = {"description": doc.strip(), **out}
        if "default" in f:
            out["default"] = copy.deepcopy(f["default"])
        for attr in ("secrecy", "routing"):
            if attr in f:
                out[f"x-relais-{attr}"] = f[attr]
        return out

    def type_of(self, t: Any, name: str) -> dict[str, Any]:
        if isinstance(t, list):
            branches = [b for b in t if b != "null"]
            if len(branches) != 1:
                return {"anyOf": [self.type_of(b, name) for b in t]}
            inner = self.type_of(branches[0], name)
            if "null" not in t:
                return inner
            if isinstance(inner.get("type"), str) and "enum" not in inner:
                return {**inner, "type": [inner["type"], "null"]}
            return {"anyOf": [inner, {"type": "null"}]}
        if isinstance(t, str):
            return self.primitive(t, name)
        kind = t.get("type")
        logical = t.get("logicalType")
        if logical in ("timestamp-millis", "timestamp-micros"):
            return {"type": "string", "format": "date-time", "pattern": DATETIME_PATTERN}
        if logical == "date":
            return {"type": "string", "format": "date", "pattern": DATE_PATTERN}
        if logical == "uuid":
            return {"type": "string", "format": "uuid", "pattern": UUID_PATTERN}
        if kind == "record":
            return self.named(t, lambda: self.record(t))
        if kind == "enum":
            return self.named(t, lambda: self.enum(t))
        if kind == "array":
            return self.array(t, name)
        if kind == "map":
            return {"type": "object", "additionalProperties": self.type_of(t["values"], name)}
        return self.primitive(str(kind), name)

    def named(self, t: Mapping[str, Any], build: Any) -> dict[str, Any]:
        short = _short(str(t["name"]))
        if short not in self.defs:
            self.defs[short] = {}  # placeholder: recursive types refer to it
            self.defs[short] = build()
        return {"$ref": f"#/$defs/{short}"}

    def enum(self, t: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string", "enum": list(t["symbols"])}
        if t.get("doc"):
            out = {"description": t["doc"], **out}
        return out

    def array(self, t: Mapping[str, Any], name: str) -> dict[str, Any]:
        items = self.type_of(t["items"], name)
        out: dict[str, Any] = {"type": "array", "items": items}
        target = self.defs.get(items.get("$ref", "").removeprefix("#/$defs/"), {})
        if "enum" in target:  # a set of codes: each at most once
            out["maxItems"] = len(target["enum"])
            out["uniqueItems"] = True
        else:
            bounds = _BY_NAME.get(name)
            limit = bounds.max_items if bounds is not None else None
            out["maxItems"] = limit or _DEFAULT_ITEMS
        return out

    def primitive(self, kind: str, name: str) -> dict[str, Any]:
        if kind in self.defs or _short(kind) in self.defs:  # a reference to a named type
            return {"$ref": f"#/$defs/{_short(kind)}"}
        bounds = _BY_NAME.get(name, _Bounds())
        if kind == "string":
            if name.endswith("_dept"):
                self.defs.setdefault(_DEPARTEMENT_DEF, _departement_def())
                return {"$ref": f"#/$defs/{_DEPARTEMENT_DEF}"}
            out: dict[str, Any] = {"type": "string", "minLength": 1}
            out["maxLength"] = bounds.max_length or _SHORT
            if bounds.pattern:
                out["pattern"] = bounds.pattern
            return out
        if kind == "bytes":
            return {
                "type": "string",
                "contentEncoding": "base64",
                "maxLength": bounds.max_length or 4 * -(-_MAX_ATTACHMENT // 3),
            }
        if kind in ("int", "long"):
            top = _MAX_INT if kind == "int" else _MAX_LONG
            low = bounds.minimum if bounds.minimum is not None else 0
            high = bounds.maximum if bounds.maximum is not None else top
            return {"type": "integer", "minimum": low, "maximum": high}
        if kind == "boolean":
            return {"type": "boolean"}
        if kind in ("float", "double"):
            return {"type": "number"}
        if kind == "null":
            return {"type": "null"}
        raise ValueError(f"no JSON form for Avro type {kind}")


def _departement_def() -> dict[str, Any]:
    return {
        "description": (
            "An INSEE département code: '01' to '95' without '20', '2A' and '2B' (Corse),"
            " '971' to '976' (overseas). No partner serves '975' (Saint-Pierre-et-Miquelon):"
            " its events go to human triage."
        ),
        "type": "string",
        "enum": list(DEPARTEMENTS),
    }


@functools.cache
def _cached_schema(event_type: EventType, registry: SchemaRegistry) -> dict[str, Any]:
    schema = registry.by_type(event_type)
    builder = _Builder()
    body = builder.record(schema.raw, _ORDER.get(event_type, ()))
    out: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:relais:event:{event_type.value}",
        "title": _short(schema.full_name),
        **body,
        "examples": [example(event_type)],
        "x-relais-event-type": event_type.value,
        "x-relais-fingerprint": schema.fingerprint.hex(),
        "$defs": builder.defs,
    }
    return out


def json_schema(
    event_type: EventType | str, registry: SchemaRegistry | None = None
) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the JSON form of an event type, with an example.

    Raises ``SchemaError(UNKNOWN_SCHEMA)`` for an unknown type.
    """
    reg = registry or default_registry()
    document: dict[str, Any] = copy.deepcopy(
        _cached_schema(reg.by_type(event_type).event_type, reg)
    )
    return document


def example(event_type: EventType | str, seed: int = 0) -> dict[str, Any]:
    """A valid, fictional example of the JSON form of ``event_type`` (deterministic)."""
    record = sample_event(EventType(event_type), rng=random.Random(seed))  # noqa: S311
    return {k: json_example(v) for k, v in record.items()}


def json_example(value: Any) -> Any:
    """An Avro datum in its JSON form (date-times in UTC with ``Z``, to the millisecond)."""
    if isinstance(value, Mapping):
        return {k: json_example(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_example(v) for v in value]
    if isinstance(value, dt.datetime):
        text = value.astimezone(dt.UTC).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


_DEF_REF = re.compile(r"^#/\$defs/(.+)$")


def openapi_components(
    registry: SchemaRegistry | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Component schemas of every publishable event type, for an OpenAPI 3.1 document.

    Returns the components (each event's body under its record name, the named types it
    uses beside it, references rewritten to ``#/components/schemas/...``) and, per event
    type, the component name of its body. Two event schemas defining one name differently
    keep both, the second prefixed with its record name.
    """
    reg = registry or default_registry()
    components: dict[str, Any] = {}
    originals: dict[str, Any] = {}  # component name -> definition as first seen
    bodies: dict[str, str] = {}
    for event_type in sorted(EVENT_TYPES, key=lambda t: t.value):
        doc = json_schema(event_type, reg)
        title = str(doc["title"])
        renames: dict[str, str] = {}
        for name, definition in doc["$defs"].items():
            target = name if originals.setdefault(name, definition) == definition else title + name
            renames[name] = target
        for name, definition in doc["$defs"].items():
            components[renames[name]] = _rewrite(definition, renames)
        body = {k: v for k, v in doc.items() if k not in ("$schema", "$id", "$defs")}
        components[title] = _rewrite(body, renames)
        bodies[event_type.value] = title
    return components, bodies


def _rewrite(value: Any, renames: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            match = _DEF_REF.match(v) if k == "$ref" and isinstance(v, str) else None
            if match:
                name = renames.get(match.group(1), match.group(1))
                out[k] = f"#/components/schemas/{name}"
            else:
                out[k] = _rewrite(v, renames)
        return out
    if isinstance(value, list):
        return [_rewrite(v, renames) for v in value]
    return value
