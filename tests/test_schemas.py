"""The shared Avro schemas, their checker, the registry's validation and the sample events."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testkit import avro_strategy

from relais.schemas.check import ROUTING_KEYS, Problem, check_schemas
from relais.schemas.domain import EVENT_TYPES, ROUTING_VALUE_RE, EventType
from relais.schemas.errors import PayloadError, Reason, SchemaError
from relais.schemas.registry import (
    MAIN_SECTION,
    EventSchema,
    SchemaRegistry,
    build_schema,
    default_registry,
    schema_root,
    to_jsonable,
)
from relais.schemas.samples import sample_event

ALL_TYPES = sorted(EventType, key=lambda t: t.value)
EVENTS_ONLY = [t for t in ALL_TYPES if t in EVENT_TYPES]
CANARY = "CANARY-7f3a9c"


# -- helpers -----------------------------------------------------------------------------------


def _copy(src: Any, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_dir():
            _copy(item, dst / item.name)
        elif item.name.endswith(".avsc"):
            (dst / item.name).write_bytes(item.read_bytes())


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A writable copy of the packaged schema tree."""
    root = tmp_path / "avsc"
    _copy(schema_root(), root)
    return root


def _read(root: Path, rel: str) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((root / rel).read_text(encoding="utf-8"))
    return raw


def _write(root: Path, rel: str, raw: dict[str, Any]) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw), encoding="utf-8")


def _field(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in raw["fields"] if f["name"] == name)


def _reasons(problems: list[Problem], schema: str | None = None) -> set[Reason]:
    return {p.reason for p in problems if schema is None or p.schema == schema}


def _current_raw(event_type: EventType) -> dict[str, Any]:
    return copy.deepcopy(default_registry().by_type(event_type).raw)


# -- the packaged tree -------------------------------------------------------------------------


def test_packaged_tree_has_no_problem() -> None:
    assert check_schemas(schema_root()) == []


def test_one_current_schema_per_event_type_with_a_location_key() -> None:
    registry = default_registry()
    for event_type in EventType:
        schema = registry.by_type(event_type)
        assert schema.event_type is event_type
        if event_type in EVENT_TYPES:
            assert {"child_dept", "facts_dept"} & set(schema.routing.values())
        assert set(schema.routing.values()) <= ROUTING_KEYS


def test_medical_referral_medical_fields_are_a_section() -> None:
    schema = default_registry().by_type(EventType.MEDICAL_REFERRAL)
    assert schema.section_names == (MAIN_SECTION, "medical")
    medical = set(schema.sections["medical"].fields)
    assert {"clinical_findings", "sti_tests", "toxicology", "physician_conclusions"} <= medical
    assert not medical & set(schema.routing)
    assert "child" in schema.sections[MAIN_SECTION].fields


def test_danger_declaration_has_a_history() -> None:
    registry = default_registry()
    (v1,) = registry.history[EventType.DANGER_DECLARATION]
    assert v1.version == 1
    assert v1.pinned_reader is registry.by_type(EventType.DANGER_DECLARATION)
    assert v1.fingerprint != v1.pinned_reader.fingerprint


# -- lint --------------------------------------------------------------------------------------


def _add_field(rel: str, ftype: Any, **extra: Any) -> Any:
    def mutate(root: Path) -> None:
        raw = _read(root, rel)
        raw["fields"].append(
            {"name": "extra_field", "doc": "A test field.", "type": ftype, **extra}
        )
        _write(root, rel, raw)

    return mutate


def _edit_field(rel: str, name: str, **changes: Any) -> Any:
    def mutate(root: Path) -> None:
        raw = _read(root, rel)
        field = _field(raw, name)
        for key, value in changes.items():
            if value is None:
                field.pop(key, None)
            else:
                field[key] = value
        _write(root, rel, raw)

    return mutate


def _edit_child(rel: str, **changes: Any) -> Any:
    """Edit ``child.last_name`` (a field of a nested record)."""

    def mutate(root: Path) -> None:
        raw = _read(root, rel)
        nested = _field(_field(raw, "child")["type"], "last_name")
        for key, value in changes.items():
            if value is None:
                nested.pop(key, None)
            else:
                nested[key] = value
        _write(root, rel, raw)

    return mutate


def _drop_enum_doc(root: Path) -> None:
    raw = _read(root, "receipt.avsc")
    entry = _field(raw, "entries")["type"]["items"]
    del _field(entry, "state")["type"]["doc"]
    _write(root, "receipt.avsc", raw)


LINT_CASES = [
    (
        "array of null",
        "receipt.avsc",
        _add_field("receipt.avsc", {"type": "array", "items": "null"}, default=[]),
    ),
    (
        "map of null",
        "receipt.avsc",
        _add_field("receipt.avsc", {"type": "map", "values": "null"}, default={}),
    ),
    (
        "array of null",
        "rejection.avsc",
        _add_field("rejection.avsc", ["null", {"type": "array", "items": ["null"]}], default=None),
    ),
    ("missing doc", "rejection.avsc", _edit_field("rejection.avsc", "reason_code", doc=None)),
    ("missing doc", "signalement.avsc", _edit_child("signalement.avsc", doc="  ")),
    ("missing doc", "receipt.avsc", _drop_enum_doc),
    ("nested field", "signalement.avsc", _edit_child("signalement.avsc", secrecy="medical")),
    ("nested field", "signalement.avsc", _edit_child("signalement.avsc", routing="child_dept")),
    (
        "cannot be secret",
        "medical_referral.avsc",
        _edit_field("medical_referral.avsc", "child_dept", secrecy="medical"),
    ),
    (
        "code, enum or boolean",
        "signalement.avsc",
        _edit_field("signalement.avsc", "child", routing="case_ref"),
    ),
    (
        "unknown routing key",
        "signalement.avsc",
        _edit_field("signalement.avsc", "in_care", routing="x y"),
    ),
    (
        "already used",
        "signalement.avsc",
        _edit_field("signalement.avsc", "in_care", routing="child_dept"),
    ),
    (
        "no routing field",
        "care_orientation.avsc",
        _edit_field("care_orientation.avsc", "child_dept", routing=None),
    ),
    (
        "unknown secrecy class",
        "signalement.avsc",
        _edit_field("signalement.avsc", "facts_summary", secrecy="top"),
    ),
    (
        "first branch",
        "rejection.avsc",
        _add_field("rejection.avsc", ["string", "null"], default=None),
    ),
]


@pytest.mark.parametrize(("fragment", "schema", "mutate"), LINT_CASES)
def test_lint_rule_is_reported(tree: Path, fragment: str, schema: str, mutate: Any) -> None:
    mutate(tree)
    problems = check_schemas(tree)
    assert problems, "the mutation went unnoticed"
    assert {p.schema for p in problems} == {schema}
    assert _reasons(problems) == {Reason.SCHEMA_LINT}
    assert any(fragment in p.message for p in problems), problems


def test_undocumented_enum_symbol_is_reported(tree: Path) -> None:
    raw = _read(tree, "runaway_alert.avsc")
    _field(raw, "fpr_status")["type"]["symbols"].append("ARCHIVED")
    _write(tree, "runaway_alert.avsc", raw)
    problems = check_schemas(tree)
    assert [(p.reason, "ARCHIVED" in p.message) for p in problems] == [(Reason.SCHEMA_LINT, True)]


def test_type_set_problems(tree: Path) -> None:
    (tree / "rejection.avsc").unlink()
    (tree / "receipt_copy.avsc").write_bytes((tree / "receipt.avsc").read_bytes())
    (tree / "broken.avsc").write_text("{not json", encoding="utf-8")
    problems = check_schemas(tree)
    assert Problem("rejection.avsc", Reason.SCHEMA_LINT, "no current schema") in problems
    assert Problem("broken.avsc", Reason.SCHEMA_INVALID, "not readable JSON") in problems
    assert _reasons(problems, "receipt_copy.avsc") == {Reason.SCHEMA_LINT, Reason.SCHEMA_CONFLICT}


def test_missing_root_is_reported(tmp_path: Path) -> None:
    (problem,) = check_schemas(tmp_path / "nowhere")
    assert problem.reason is Reason.SCHEMA_INVALID


def test_unparsable_schema_is_invalid(tree: Path) -> None:
    raw = _read(tree, "receipt.avsc")
    _field(raw, "recipient")["type"] = "no.such.Type"
    _write(tree, "receipt.avsc", raw)
    assert _reasons(check_schemas(tree)) == {Reason.SCHEMA_INVALID}


# -- compatibility -----------------------------------------------------------------------------

HISTORY_V2 = "history/danger_declaration/v2.avsc"


def test_compatible_history_version_is_accepted(tree: Path) -> None:
    v2 = _current_raw(EventType.DANGER_DECLARATION)
    # v2 lacks a field the current version defaults, and has one the current version dropped
    v2["fields"] = [f for f in v2["fields"] if f["name"] != "child_informed"]
    v2["fields"].append(
        {
            "name": "school_name",
            "doc": "Name of the school.",
            "type": ["null", "string"],
            "default": None,
        }
    )
    _write(tree, HISTORY_V2, v2)
    assert check_schemas(tree) == []
    registry = SchemaRegistry.from_directory(tree)
    assert [s.version for s in registry.history[EventType.DANGER_DECLARATION]] == [1, 2]


def test_required_field_without_default_is_incompatible(tree: Path) -> None:
    raw = _read(tree, "danger_declaration.avsc")
    raw["fields"].append({"name": "school_uai", "doc": "UAI code of the school.", "type": "string"})
    _write(tree, "danger_declaration.avsc", raw)
    problems = check_schemas(tree)
    assert _reasons(problems) == {Reason.SCHEMA_INCOMPATIBLE}
    assert all("v1" in p.message and "school_uai" in p.message for p in problems)


def test_changed_type_in_history_is_incompatible(tree: Path) -> None:
    v2 = _current_raw(EventType.DANGER_DECLARATION)
    _field(v2, "other_minors_concerned")["type"] = "string"
    _write(tree, HISTORY_V2, v2)
    problems = check_schemas(tree)
    assert {(p.schema, p.reason) for p in problems} == {
        ("danger_declaration.avsc", Reason.SCHEMA_INCOMPATIBLE),
        (HISTORY_V2, Reason.SCHEMA_INCOMPATIBLE),  # v2 cannot read v1 either: transitive
    }


def test_removed_enum_symbol_is_incompatible(tree: Path) -> None:
    raw = _read(tree, "danger_declaration.avsc")
    enum = _field(raw, "schooling")["type"]
    enum["symbols"].remove("NOT_SCHOOLED")
    _write(tree, "danger_declaration.avsc", raw)
    problems = check_schemas(tree)
    assert _reasons(problems) == {Reason.SCHEMA_INCOMPATIBLE}
    assert any("missing_enum_symbols" in p.message for p in problems)


def test_field_moving_section_is_incompatible(tree: Path) -> None:
    v1 = _read(tree, "history/danger_declaration/v1.avsc")
    _field(v1, "child_words")["secrecy"] = "medical"
    _write(tree, "history/danger_declaration/v1.avsc", v1)
    problems = check_schemas(tree)
    assert _reasons(problems) == {Reason.SCHEMA_INCOMPATIBLE}
    assert any("secrecy marks differ" in p.message for p in problems)


def test_history_files_must_be_numbered(tree: Path) -> None:
    _write(tree, "history/danger_declaration/old.avsc", _current_raw(EventType.DANGER_DECLARATION))
    problems = check_schemas(tree)
    assert [(p.schema, p.reason) for p in problems] == [
        ("history/danger_declaration/old.avsc", Reason.SCHEMA_LINT)
    ]


# -- marks, fingerprints, conflicts ------------------------------------------------------------


def _with_secrecy(raw: dict[str, Any], field: str) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    _field(out, field)["secrecy"] = "medical"
    return out


def test_fingerprint_covers_secrecy_marks_the_canonical_form_does_not() -> None:
    raw = _current_raw(EventType.SIGNALEMENT)
    marked = _with_secrecy(raw, "child_words")
    a, b = build_schema(raw, 0), build_schema(marked, 0)
    pcf = fastavro.schema.to_parsing_canonical_form
    assert pcf(fastavro.parse_schema(raw)) == pcf(fastavro.parse_schema(marked))
    assert a.canonical_form == b.canonical_form
    assert a.fingerprint != b.fingerprint
    assert b.section_names == (MAIN_SECTION, "medical")


def test_same_canonical_form_other_marks_is_a_conflict() -> None:
    raw = _current_raw(EventType.SIGNALEMENT)
    current = build_schema(raw, 0)
    twin = build_schema(_with_secrecy(raw, "child_words"), 1)
    others = [s for s in default_registry().current() if s.event_type is not current.event_type]
    with pytest.raises(SchemaError) as info:
        SchemaRegistry([*others, current], [twin])
    assert info.value.reason is Reason.SCHEMA_CONFLICT


def test_conflict_is_reported_by_the_checker(tree: Path) -> None:
    twin = _with_secrecy(_current_raw(EventType.SIGNALEMENT), "child_words")
    _write(tree, "history/signalement/v1.avsc", twin)
    problems = check_schemas(tree)
    assert Reason.SCHEMA_CONFLICT in _reasons(problems, "history/signalement/v1.avsc")


# -- payload validation ------------------------------------------------------------------------


def _schema(event_type: EventType) -> EventSchema:
    return default_registry().by_type(event_type)


def test_payload_errors_name_the_fields_not_the_values() -> None:
    record = sample_event(EventType.SIGNALEMENT, rng=random.Random(1))
    del record["child"]
    record["in_care"] = "SECRET-VALUE-1"
    record["risk_level"] = "SECRET_VALUE_2"
    record["nickname"] = "SECRET-VALUE-3"
    with pytest.raises(PayloadError) as info:
        _schema(EventType.SIGNALEMENT).validate(record)
    err = info.value
    assert set(err.fields) == {
        "nickname (unknown field)",
        "child (missing)",
        "in_care",
        "risk_level",
    }
    assert err.reason is Reason.INVALID_PAYLOAD
    assert "SECRET" not in str(err)
    assert "SECRET" not in repr(err)


def test_nested_payload_errors_are_named() -> None:
    record = sample_event(EventType.RUNAWAY_ALERT, rng=random.Random(2))
    record["child"] = {**record["child"], "sex": "SECRET_SEX", "nickname": "SECRET-NICK"}
    with pytest.raises(PayloadError) as info:
        _schema(EventType.RUNAWAY_ALERT).validate(record)
    assert set(info.value.fields) == {"child.sex", "child.nickname (unknown field)"}
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize("bad", ["not-a-uuid", "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B"])
def test_uuid_text_must_be_canonical(bad: str) -> None:
    record = sample_event(EventType.RUNAWAY_ENDED, rng=random.Random(3))
    record["case_ref"] = bad
    with pytest.raises(PayloadError) as info:
        _schema(EventType.RUNAWAY_ENDED).validate(record)
    assert info.value.fields == ("case_ref",)
    assert bad not in str(info.value)
    record["case_ref"] = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    _schema(EventType.RUNAWAY_ENDED).validate(record)


def test_json_uuid_text_is_accepted_and_normalised() -> None:
    schema = _schema(EventType.RECEIPT)
    record = sample_event(EventType.RECEIPT, rng=random.Random(4))
    as_json = json.loads(json.dumps(to_jsonable(record)))
    as_json["entries"][0]["event_id"] = as_json["entries"][0]["event_id"].upper()
    back = schema.from_json(as_json)
    schema.validate(back)
    assert back == record


# -- samples -----------------------------------------------------------------------------------

SAMPLE_VARIANTS: list[dict[str, Any]] = [
    {},
    {"in_care": True, "guardian_dept": "75", "child_dept": "93", "facts_dept": "75"},
    {"prostitution_suspected": False, "child_dept": "2A", "imminent": True},
    {"child_dept": "974", "canary": CANARY},
]


@pytest.mark.parametrize("event_type", ALL_TYPES)
@pytest.mark.parametrize("variant", range(len(SAMPLE_VARIANTS)))
def test_sample_validates_and_round_trips(event_type: EventType, variant: int) -> None:
    schema = _schema(event_type)
    record = sample_event(event_type, rng=random.Random(variant), **SAMPLE_VARIANTS[variant])
    schema.validate(record)
    decoded: dict[str, Any] = {}
    for name, values in schema.split(record).items():
        body = schema.encode_section(name, values)
        assert body[:2] == b"\xc3\x01"
        decoded.update(schema.decode_section(name, body))
    assert decoded == record
    assert schema.from_json(json.loads(json.dumps(to_jsonable(record)))) == record


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_samples_are_deterministic_with_a_seed(event_type: EventType) -> None:
    first = sample_event(event_type, rng=random.Random(42))
    assert first == sample_event(event_type, rng=random.Random(42))


@pytest.mark.parametrize("event_type", EVENTS_ONLY)
def test_sample_canary_is_in_content_never_in_routing(event_type: EventType) -> None:
    schema = _schema(event_type)
    record = sample_event(event_type, canary=CANARY, rng=random.Random(5))
    sections = schema.split(record)
    assert CANARY in json.dumps(to_jsonable(sections), ensure_ascii=False)
    for name in set(sections) - {"medical"}:
        assert f"{CANARY}-medical" not in json.dumps(to_jsonable(sections[name]))
    if "medical" in sections:
        assert f"{CANARY}-medical" in json.dumps(to_jsonable(sections["medical"]))
    assert CANARY not in json.dumps(schema.routing_metadata(record))


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_sample_routing_metadata_is_only_codes(event_type: EventType) -> None:
    schema = _schema(event_type)
    record = sample_event(event_type, in_care=True, guardian_dept="75", rng=random.Random(6))
    meta = schema.routing_metadata(record)
    assert set(meta) == {schema.routing[f] for f in schema.routing if record[f] is not None}
    assert set(meta) <= ROUTING_KEYS
    child = record.get("child") or {}
    for value in meta.values():
        assert ROUTING_VALUE_RE.match(value)
        assert value not in (child.get("last_name"), child.get("first_names"))
    if "guardian_dept" in meta:
        assert meta["guardian_dept"] == "75"
        assert meta["in_care"] == "true"


def test_sample_parameters_reach_their_routing_fields() -> None:
    case = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    ended = sample_event(EventType.RUNAWAY_ENDED, case_ref=case, alert_sender="police-13-nord")
    meta = _schema(EventType.RUNAWAY_ENDED).routing_metadata(ended)
    assert meta["case_ref"] == case
    assert meta["alert_sender"] == "police-13-nord"
    answer = sample_event(EventType.REQUISITION_ANSWER, requester="opj-93", facts_dept="75")
    meta = _schema(EventType.REQUISITION_ANSWER).routing_metadata(answer)
    assert (meta["requester"], meta["facts_dept"]) == ("opj-93", "75")
    online = sample_event(EventType.ONLINE_EXPLOITATION_REPORT, imminent=True)
    assert (
        _schema(EventType.ONLINE_EXPLOITATION_REPORT).routing_metadata(online)["imminent"] == "true"
    )


# -- history decoding --------------------------------------------------------------------------


def test_body_written_with_v1_reads_as_current_with_defaults() -> None:
    registry = default_registry()
    (v1,) = registry.history[EventType.DANGER_DECLARATION]
    current = registry.by_type(EventType.DANGER_DECLARATION)
    record = sample_event(EventType.DANGER_DECLARATION, rng=random.Random(7))
    record["reporter_role"] = "SCHOOL_NURSE"
    old = {k: v for k, v in record.items() if k != "child_informed"}
    v1.validate(old)
    decoded = v1.decode_section(MAIN_SECTION, v1.encode_section(MAIN_SECTION, old))
    assert decoded == {**old, "child_informed": False}
    assert list(decoded) == [f["name"] for f in current.raw["fields"]]
    current.validate(decoded)


# -- generated records -------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", ALL_TYPES)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_records_round_trip(event_type: EventType, data: st.DataObject) -> None:
    schema = _schema(event_type)
    record = data.draw(
        st.fixed_dictionaries({name: avro_strategy(t) for name, t in schema.field_types.items()})
    )
    schema.validate(record)
    decoded: dict[str, Any] = {}
    for name, values in schema.split(record).items():
        decoded.update(schema.decode_section(name, schema.encode_section(name, values)))
    assert decoded == record
