"""The API contract: the published document, the validation that enforces it, no 5xx.

Three layers: the generated documents (JSON Schema per event type, OpenAPI 3.1) validate and
agree with the validator; the validator answers each bad input with its path and code; a
real agent behind the HTTP API (against a real nats-server) accepts every example and
answers every listed bad input, and arbitrary bodies and parameters, with a typed 4xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import io
import json
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from typer.testing import CliRunner

from relais.agents.api import create_app, openapi_document
from relais.agents.logs import configure_logging
from relais.agents.problems import Guard
from relais.agents.runtime import Agent
from relais.agents.validation import (
    MAX_DEPTH,
    Code,
    ContractError,
    check_record,
    parse_json_object,
)
from relais.broker_config.directory import DEPARTEMENTS as DIRECTORY_DEPARTEMENTS
from relais.cli.app import app as relais_app
from relais.schemas.domain import EVENT_TYPES, EventType
from relais.schemas.envelope import peek_header
from relais.schemas.jsonschema import DEPARTEMENTS, example, json_schema
from relais.schemas.registry import default_registry
from relais.schemas.samples import sample_event

SECRET = "Zq9-Valeur-Jamais-Renvoyee"
NOW = dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.UTC)
NOW_MS = int(NOW.timestamp() * 1000)
# which demo partner may send each event type (the packaged rules' senders)
SENDERS = {
    "runaway_alert": "gend-93-bobigny",
    "runaway_ended": "gend-93-bobigny",
    "danger_declaration": "college-93-jaures",
    "signalement": "college-93-jaures",
    "medical_referral": "hopital-93-avicenne",
    "lodging_suspicion_report": "hotel-93-gare",
    "online_exploitation_report": "reseau-social",
    "judicial_requisition": "parquet-93-bobigny",
    "requisition_answer": "hotel-93-gare",
    "care_orientation": "crip-93",
}
ALLOWED = {202, 400, 404, 409, 413, 415, 422}


def changed(record: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``record`` with ``path`` (``a.b``, ``a[0].b``) set, or deleted (``...``)."""
    out = copy.deepcopy(record)
    *parents, last = path.replace("[", ".").replace("]", "").split(".")
    target: Any = out
    for step in parents:
        target = target[int(step)] if step.isdigit() else target[step]
    key: Any = int(last) if last.isdigit() else last
    if value is ...:
        del target[key]
    else:
        target[key] = value
    return out


# -- the documents -----------------------------------------------------------------------------


def test_openapi_document_validates_and_is_committed() -> None:
    document = openapi_document()
    validate_openapi(document)  # OpenAPI 3.1 (JSON Schema 2020-12 dialect)
    assert document["openapi"].startswith("3.1")
    result = CliRunner().invoke(relais_app, ["agent", "openapi", "--check", "docs/openapi.json"])
    assert result.exit_code == 0, result.output


def test_each_event_type_has_its_own_path_and_body_schema() -> None:
    document = openapi_document()
    components = document["components"]["schemas"]
    for event_type in EVENT_TYPES:
        post = document["paths"][f"/v1/events/{event_type.value}"]["post"]
        ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body = components[ref.rsplit("/", 1)[-1]]
        assert body["x-relais-event-type"] == event_type.value
        assert body["additionalProperties"] is False
        assert body["examples"], event_type
        for name, prop in body["properties"].items():
            assert prop.get("description"), (event_type, name)
        for status in ("413", "415", "422", "409"):
            assert "application/problem+json" in post["responses"][status]["content"]
    # the templated path is not published: the document lists the types there are
    assert "/v1/events/{event_type}" not in document["paths"]


@pytest.mark.parametrize("event_type", sorted(t.value for t in EVENT_TYPES))
def test_json_schema_of_each_type_holds_its_example(event_type: str) -> None:
    document = json_schema(event_type)
    jsonschema.Draft202012Validator.check_schema(document)
    validator = jsonschema.Draft202012Validator(
        document, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    for seed in range(20):
        validator.validate(example(event_type, seed))
        check_record(
            default_registry().by_type(event_type), example(event_type, seed), now_ms=NOW_MS
        )
    assert document["examples"] == [example(event_type)]
    props = document["properties"]
    if event_type == "runaway_alert":
        assert props["declared_at"]["format"] == "date-time"
        assert props["declared_at"]["x-relais-not-after-now"] is True
        assert document["x-relais-order"] == [["missing_since", "declared_at"]]
        assert props["child_dept"]["$ref"] == "#/$defs/Departement"


def test_departements_are_the_directorys_and_975() -> None:
    assert set(DEPARTEMENTS) == set(DIRECTORY_DEPARTEMENTS) | {"975"}
    assert len(DEPARTEMENTS) == len(set(DEPARTEMENTS)) == 102
    assert "20" not in DEPARTEMENTS
    assert {"2A", "2B", "971", "976"} <= set(DEPARTEMENTS)


def test_schemas_show_and_sample_commands() -> None:
    runner = CliRunner()
    shown = runner.invoke(relais_app, ["schemas", "show", "medical_referral"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == json_schema("medical_referral")
    sampled = runner.invoke(relais_app, ["schemas", "sample", "medical_referral"])
    assert sampled.exit_code == 0, sampled.output
    jsonschema.validate(json.loads(sampled.output), json_schema("medical_referral"))
    other = runner.invoke(relais_app, ["schemas", "sample", "medical_referral", "--seed", "7"])
    assert json.loads(other.output) == example("medical_referral", 7) != json.loads(sampled.output)
    unknown = runner.invoke(relais_app, ["schemas", "show", "alien_event"])
    assert unknown.exit_code == 2
    assert "UNKNOWN_SCHEMA" in unknown.output


# -- the validator -----------------------------------------------------------------------------

ALERT = example("runaway_alert")
RA, C = "runaway_alert", Code
_ATTACHMENT = "items[0].attachment"
_TOXICOLOGY = [{"substance": "GHB", "result": "POSITIVE"}] * 31
# (event type, path, value or ... to delete it, code): reported at that path
BAD = [
    (RA, "child.birth_date", "14/03/2010", C.NOT_A_DATE),
    (RA, "child.birth_date", "2010-03-14T00:00:00Z", C.NOT_A_DATE),
    (RA, "child.birth_date", "2010-02-30", C.NOT_A_DATE),
    (RA, "child.birth_date", "2027-01-01", C.IN_THE_FUTURE),
    (RA, "declared_at", "2026-12-03T10:00:00", C.OFFSET_REQUIRED),
    (RA, "declared_at", 1764756000000, C.NOT_A_DATETIME),
    (RA, "declared_at", "03/12/2026 10:00", C.NOT_A_DATETIME),
    (RA, "declared_at", "0201-12-03T10:00:00Z", C.OUT_OF_RANGE),
    (RA, "missing_since", "2030-01-01T00:00:00Z", C.IN_THE_FUTURE),
    (RA, "declared_at", "2025-01-01T00:00:00+01:00", C.OUT_OF_ORDER),
    (RA, "child_dept", "20", C.UNKNOWN_DEPARTEMENT),
    (RA, "facts_dept", "9300", C.UNKNOWN_DEPARTEMENT),
    (RA, "guardian_dept", "2a", C.UNKNOWN_DEPARTEMENT),
    (RA, "child.last_name", ..., C.MISSING),
    (RA, "child.surnom", SECRET, C.UNKNOWN_FIELD),
    (RA, "child.sex", SECRET, C.NOT_IN_ENUM),
    (RA, "in_care", "yes", C.WRONG_TYPE),
    (RA, "previous_runaways_12_months", -1, C.BELOW_MINIMUM),
    (RA, "previous_runaways_12_months", 10**20, C.ABOVE_MAXIMUM),
    (RA, "physical_description", SECRET * 1000, C.TOO_LONG),
    (RA, "physical_description", "", C.TOO_SHORT),
    (RA, "last_seen_commune", "Paris", C.PATTERN_MISMATCH),
    (RA, "indicators", ["ONLINE_ADS", "ONLINE_ADS"], C.DUPLICATE_ITEMS),
    (RA, "child.aliases", ["x"] * 21, C.TOO_MANY_ITEMS),
    (RA, "child.phone_number", "06 12 34 56 78", C.PATTERN_MISMATCH),
    ("runaway_ended", "case_ref", "019A82A4-B374-71E2-B0B3-9BD17ED4D57B", C.NOT_A_UUID),
    ("medical_referral", "injuries[0].kind", SECRET, C.NOT_IN_ENUM),
    ("medical_referral", "toxicology", _TOXICOLOGY, C.TOO_MANY_ITEMS),
    ("requisition_answer", _ATTACHMENT, "pas du base64 !", C.NOT_BASE64),
    ("lodging_suspicion_report", "check_out", "2025-11-01T00:00:00Z", C.OUT_OF_ORDER),
]


def test_a_key_that_is_not_a_name_is_not_echoed() -> None:
    schema = default_registry().by_type(RA)
    with pytest.raises(ContractError) as excinfo:
        check_record(schema, changed(ALERT, SECRET, 1), now_ms=NOW_MS)
    assert [(p.path, p.code) for p in excinfo.value.problems] == [("<name>", C.UNKNOWN_FIELD)]


@pytest.mark.parametrize(("event_type", "path", "value", "code"), BAD)
def test_each_bad_value_is_named_by_path_and_code(event_type, path, value, code) -> None:
    schema = default_registry().by_type(event_type)
    with pytest.raises(ContractError) as excinfo:
        check_record(schema, changed(example(event_type), path, value), now_ms=NOW_MS)
    found = {(p.path, p.code) for p in excinfo.value.problems}
    assert (path, code) in found
    assert SECRET not in str(excinfo.value)
    assert SECRET not in repr(excinfo.value.fields)
    assert excinfo.value.reason.value == "INVALID_PAYLOAD"


def test_times_are_kept_as_instants_and_python_values_are_accepted() -> None:
    schema = default_registry().by_type("runaway_alert")
    paris = changed(ALERT, "declared_at", "2025-11-14T23:45:01.123456+01:00")
    datum = check_record(schema, paris, now_ms=NOW_MS)
    assert datum["declared_at"] == dt.datetime(2025, 11, 14, 22, 45, 1, 123000, tzinfo=dt.UTC)
    python = sample_event(EventType.RUNAWAY_ALERT, rng=random.Random(3))
    assert check_record(schema, python, now_ms=NOW_MS) == python
    naive = {**python, "declared_at": python["declared_at"].replace(tzinfo=None)}
    with pytest.raises(ContractError) as excinfo:
        check_record(schema, naive, now_ms=NOW_MS)
    assert [(p.path, p.code) for p in excinfo.value.problems] == [
        ("declared_at", Code.OFFSET_REQUIRED)
    ]
    # a past fact may be stated a little ahead of the agent's clock, not more
    soon = (NOW + dt.timedelta(minutes=4)).isoformat()
    late = (NOW + dt.timedelta(minutes=6)).isoformat()
    check_record(schema, changed(ALERT, "declared_at", soon), now_ms=NOW_MS)
    with pytest.raises(ContractError):
        check_record(schema, changed(ALERT, "declared_at", late), now_ms=NOW_MS)


def test_problems_are_capped_and_long_lists_not_walked() -> None:
    schema = default_registry().by_type("runaway_alert")
    flood = {f"champ_{i}": SECRET for i in range(10_000)}
    with pytest.raises(ContractError) as excinfo:
        check_record(schema, flood, now_ms=NOW_MS)
    assert len(excinfo.value.problems) == 32
    many = changed(ALERT, "child.aliases", [{"deep": [SECRET]}] * 100_000)
    with pytest.raises(ContractError) as excinfo:
        check_record(schema, many, now_ms=NOW_MS)
    assert [p.code for p in excinfo.value.problems] == [Code.TOO_MANY_ITEMS]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[" * 900 + b"]" * 900, Code.TOO_DEEP),
        (b'{"a":' * 900 + b"1" + b"}" * 900, Code.TOO_DEEP),
        (b"[" * 200_000, Code.TOO_DEEP),
        (b'{"a": 1, "a": 2}', Code.NOT_JSON),
        (b'{"a": NaN}', Code.NOT_JSON),
        (b'{"a": "\xff"}', Code.NOT_JSON),
        (b'{"a": ' + b"9" * 5000 + b"}", Code.NOT_JSON),
        (b"[1, 2]", Code.NOT_AN_OBJECT),
    ],
)
def test_bodies_refused_before_any_schema_work(body: bytes, code: Code) -> None:
    with pytest.raises(ContractError) as excinfo:
        parse_json_object(body)
    assert [(p.path, p.code) for p in excinfo.value.problems] == [("body", code)]


def test_nesting_up_to_the_limit_parses() -> None:
    nested = b'{"a":' * (MAX_DEPTH - 1) + b"{}" + b"}" * (MAX_DEPTH - 1)
    assert parse_json_object(nested)


@settings(max_examples=300, deadline=None)
@given(
    event_type=st.sampled_from(sorted(t.value for t in EVENT_TYPES)),
    pick=st.integers(min_value=0),
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=6,
    )
    | st.sampled_from(["2025-11-14", "2025-11-14T10:00:00Z", "93", "2A", "FEMALE", "RUNAWAY"]),
)
def test_what_the_validator_accepts_the_published_schema_accepts(event_type, pick, value) -> None:
    """Soundness: a record the agent takes is valid under the document it publishes."""
    record = example(event_type)
    paths = _leaf_paths(record)
    path = paths[pick % len(paths)]
    mutated = changed(record, path, value)
    try:
        check_record(default_registry().by_type(event_type), mutated, now_ms=NOW_MS)
    except ContractError:
        return
    jsonschema.validate(mutated, json_schema(event_type))


def _leaf_paths(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        out = [prefix + k for k in value] if prefix else list(value)
        for k, v in value.items():
            out.extend(_leaf_paths(v, f"{prefix}{k}."))
        return out
    if isinstance(value, list):
        base = prefix.rstrip(".")
        return [
            p
            for i, v in enumerate(value)
            for p in [f"{base}[{i}]", *_leaf_paths(v, f"{base}[{i}].")]
        ]
    return []


async def test_guard_answers_any_other_exception_opaquely() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError(f"fastavro could not read {SECRET}")

    transport = httpx.ASGITransport(app=Guard(broken))
    with structlog.testing.capture_logs() as logs:
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            answer = await client.post("/v1/events/runaway_alert", json={})
    assert answer.status_code == 500
    assert answer.json()["reason"] == "INTERNAL"
    assert SECRET not in answer.text
    assert logs == [
        {"event": "agent.api_error", "status": 500, "error": "ValueError", "log_level": "error"}
    ]
    # the application installs it: nothing escapes to the server (which would log a trace)
    app = create_app(None, token=b"jeton-de-test-0123456789")

    async def route() -> None:
        raise KeyError(SECRET)

    app.add_api_route("/boom", route)
    transport = httpx.ASGITransport(app=app)  # re-raises anything that escapes the app
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        boom = await client.get("/boom")
        not_ready = await client.get("/v1/inbox", headers={"Authorization": "Bearer x"})
    assert boom.status_code == 500
    assert SECRET not in boom.text
    assert not_ready.status_code == 401


# -- a real agent behind the HTTP API ------------------------------------------------------------

GEND = "gend-93-bobigny"
HOSPITAL = "hopital-93-avicenne"
PROBLEM_JSON = "application/problem+json"


@contextlib.asynccontextmanager
async def serving(kit: Any, partner: str) -> AsyncIterator[tuple[Agent, httpx.AsyncClient]]:
    """A started agent and an authorised HTTP client for its API (in process)."""
    settings_ = kit.settings(partner)
    async with Agent(settings_) as agent:
        await kit.until(lambda: agent.readiness().ready, what="agent ready")
        token = kit.token(partner).encode()
        app = create_app(agent, token=token, max_body=settings_.max_body_bytes)
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {kit.token(partner)}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://agent", headers=headers
        ) as client:
            yield agent, client


@contextlib.contextmanager
def json_log() -> Any:
    """The agent's log as it is written off a terminal: JSON lines, in a buffer."""
    saved = structlog.get_config()
    buffer = io.StringIO()
    # the level is explicit: a CLI test run before may have chosen warnings only
    configure_logging(json_output=True, stream=buffer, level=logging.INFO)
    try:
        yield buffer
    finally:
        structlog.configure(**saved)


def check_log(buffer: io.StringIO, *secrets: str) -> list[dict[str, Any]]:
    lines = buffer.getvalue().splitlines()
    records = [json.loads(line) for line in lines]  # one JSON object per line
    for line in lines:
        assert "Traceback" not in line
        for secret in secrets:
            assert secret not in line
    return records


async def published(kit: Any, client: httpx.AsyncClient, event_id: str) -> None:
    async def stored() -> bool:
        answer = await client.get(f"/v1/events/{event_id}")
        return bool(answer.json()["published_at"])

    await kit.until(stored, what="event published")


async def test_every_example_is_accepted_by_a_real_agent(agent_kit, demo_territory) -> None:
    kit = await agent_kit(demo_territory)
    accepted = []
    for partner in sorted(set(SENDERS.values())):
        async with serving(kit, partner) as (_agent, client):
            for event_type in sorted(t for t, p in SENDERS.items() if p == partner):
                answer = await client.post(f"/v1/events/{event_type}", json=example(event_type))
                assert answer.status_code == 202, (event_type, answer.text)
                accepted.append(answer.json()["event_id"])
    assert sorted(SENDERS) == sorted(t.value for t in EVENT_TYPES)
    assert len(accepted) == len(EVENT_TYPES)


ALERT_JSON = example("runaway_alert")
# (label, request changes, status, reason, field, code): sent to a real agent as the gendarmerie
HTTP_BAD = [
    ("date", {"body": changed(ALERT_JSON, "child.birth_date", "14/03/2010")}, 422,
     "INVALID_PAYLOAD", "child.birth_date", "NOT_A_DATE"),
    ("date as time", {"body": changed(ALERT_JSON, "child.birth_date", "2010-03-14T00:00:00Z")},
     422, "INVALID_PAYLOAD", "child.birth_date", "NOT_A_DATE"),
    ("no offset", {"body": changed(ALERT_JSON, "declared_at", "2026-12-03T10:00:00")}, 422,
     "INVALID_PAYLOAD", "declared_at", "OFFSET_REQUIRED"),
    ("epoch", {"body": changed(ALERT_JSON, "declared_at", 1764756000000)}, 422,
     "INVALID_PAYLOAD", "declared_at", "NOT_A_DATETIME"),
    ("future", {"body": changed(ALERT_JSON, "missing_since", "2090-01-01T00:00:00Z")}, 422,
     "INVALID_PAYLOAD", "missing_since", "IN_THE_FUTURE"),
    ("order", {"body": changed(ALERT_JSON, "declared_at", "2025-01-01T00:00:00Z")}, 422,
     "INVALID_PAYLOAD", "declared_at", "OUT_OF_ORDER"),
    ("dept 20", {"body": changed(ALERT_JSON, "child_dept", "20")}, 422,
     "INVALID_PAYLOAD", "child_dept", "UNKNOWN_DEPARTEMENT"),
    ("4 characters", {"body": changed(ALERT_JSON, "facts_dept", "9300")}, 422,
     "INVALID_PAYLOAD", "facts_dept", "UNKNOWN_DEPARTEMENT"),
    ("missing nested", {"body": changed(ALERT_JSON, "child.last_name", ...)}, 422,
     "INVALID_PAYLOAD", "child.last_name", "MISSING"),
    ("count", {"body": changed(ALERT_JSON, "previous_runaways_12_months", 2**40)}, 422,
     "INVALID_PAYLOAD", "previous_runaways_12_months", "ABOVE_MAXIMUM"),
    ("length", {"body": changed(ALERT_JSON, "circumstances", SECRET * 800)}, 422,
     "INVALID_PAYLOAD", "circumstances", "TOO_LONG"),
    ("depth", {"content": b'{"child": ' + b"[" * 900 + b"]" * 900 + b"}"}, 422,
     "INVALID_PAYLOAD", "body", "TOO_DEEP"),
    ("oversize", {"content": b'{"circumstances": "' + b"x" * 300_000 + b'"}'}, 413,
     "OVERSIZE", "body", "BODY_TOO_LARGE"),
    ("oversize streamed", {"stream": True}, 413, "OVERSIZE", "body", "BODY_TOO_LARGE"),
    ("media type", {"content": b"{}", "media": "text/plain"}, 415,
     "INVALID_PAYLOAD", "content-type", "UNSUPPORTED_MEDIA_TYPE"),
    ("unknown type", {"path": "/v1/events/receipt", "body": ALERT_JSON}, 422,
     "UNKNOWN_TYPE", "event_type", "UNKNOWN_EVENT_TYPE"),
    ("inbox cursor", {"get": "/v1/inbox?after=9223372036854775808"}, 422,
     "INVALID_PAYLOAD", "after", "ABOVE_MAXIMUM"),
    ("notices cursor", {"get": "/v1/notices?after=9223372036854775808"}, 422,
     "INVALID_PAYLOAD", "after", "ABOVE_MAXIMUM"),
    ("withheld section", {"body": changed(ALERT_JSON, "child_dept", "13") | {"facts_dept": "13"}},
     422, "INVALID_PAYLOAD", "sections.identity", "NO_ENTITLED_RECIPIENT"),
]  # fmt: skip


async def _send(client: httpx.AsyncClient, change: dict[str, Any]) -> httpx.Response:
    if "get" in change:
        return await client.get(change["get"])
    path = change.get("path", "/v1/events/runaway_alert")
    headers = {"content-type": change.get("media", "application/json")}
    if change.get("stream"):

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap while reading
            for _ in range(40):
                yield b"x" * 8192

        return await client.post(path, content=chunks(), headers=headers)
    content = change.get("content")
    if content is None:
        content = json.dumps(change["body"]).encode()
    return await client.post(path, content=content, headers=headers)


async def test_listed_bad_inputs_get_their_status_and_code(agent_kit, demo_territory) -> None:
    kit = await agent_kit(demo_territory)
    with json_log() as log:
        async with serving(kit, GEND) as (_agent, client):
            for label, change, status, reason, field, code in HTTP_BAD:
                answer = await _send(client, change)
                assert answer.status_code == status, (label, answer.text)
                assert answer.headers["content-type"] == PROBLEM_JSON
                problem = answer.json()
                assert (problem["status"], problem["reason"]) == (status, reason), label
                assert {"field": field, "code": code} in [
                    {"field": e["field"], "code": e["code"]} for e in problem["errors"]
                ], (label, problem)
                for secret in (SECRET, "14/03/2010", "9300", "1764756000000"):
                    assert secret not in answer.text
            # the same key with another body: a conflict, not an invalid body
            keyed = {"Idempotency-Key": "fpr-2026-0001"}
            first = await client.post("/v1/events/runaway_alert", json=ALERT_JSON, headers=keyed)
            assert first.status_code == 202
            other = changed(ALERT_JSON, "in_care", not ALERT_JSON["in_care"])
            again = await client.post("/v1/events/runaway_alert", json=other, headers=keyed)
            assert again.status_code == 409
            assert again.json()["reason"] == "IDEMPOTENCY_KEY_REUSED"
            assert again.json()["errors"][0]["field"] == "Idempotency-Key"
            await published(kit, client, first.json()["event_id"])
    records = check_log(log, SECRET, "14/03/2010", "9300", "1764756000000")
    problems = [r for r in records if r["event"] == "agent.api_problem"]
    assert len(problems) == len(HTTP_BAD) + 1
    assert {"status": 422, "reason": "INVALID_PAYLOAD", "codes": ["NOT_A_DATE"]}.items() <= (
        problems[0].items()
    )
    # only the keyed submission reached the broker
    assert len(await kit.read_stream("INGRESS")) == 1


async def test_a_section_nobody_may_read_is_refused_unless_withheld(agent_kit, demo_territory):
    """No competent partner in 13: triage, which never gets the medical section."""
    kit = await agent_kit(demo_territory)
    referral = example("medical_referral") | {"child_dept": "13", "facts_dept": "13"}
    async with serving(kit, HOSPITAL) as (agent, client):
        refused = await client.post("/v1/events/medical_referral", json=referral)
        assert refused.status_code == 422
        assert [(e["field"], e["code"]) for e in refused.json()["errors"]] == [
            ("sections.medical", "NO_ENTITLED_RECIPIENT")
        ]
        accepted = await client.post(
            "/v1/events/medical_referral", params={"accept_withheld": "medical"}, json=referral
        )
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["triage"] is True
        await published(kit, client, accepted.json()["event_id"])
        bad = await client.post(
            "/v1/events/medical_referral", params={"accept_withheld": "tout"}, json=referral
        )
        assert bad.status_code == 422
        # the Python API refuses the same way
        with pytest.raises(ContractError) as excinfo:
            await agent.submit("medical_referral", referral)
        assert excinfo.value.problems[0].code is Code.NO_ENTITLED_RECIPIENT
    [msg] = await kit.read_stream("INGRESS")
    assert [s.name for s in peek_header(msg.data).sections] == ["main"]


GEND_TYPES = ["danger_declaration", "judicial_requisition", "runaway_alert", "runaway_ended"]
_TEXT = st.text(max_size=12).map(lambda t: "Zq9-" + t)  # a marker that must never come back
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(_TEXT | st.text(), inner, max_size=4)
    ),
    max_leaves=12,
)
_HEADER = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20)
# path segments: anything but what ends a segment ('/', '?', '#')
_PATH = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#"),
    min_size=1,
    max_size=40,
)
_QUERY = st.dictionaries(
    st.sampled_from(["after", "limit", "state", "accept_withheld", "Zq9"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str) | _TEXT | st.just(""),
    max_size=3,
)


@st.composite
def _request(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["submit", "mutated", "mutated", "list", "get", "action"]))
    # mostly the types the gendarmerie may send (others are refused 403 by the rules)
    event_type = draw(st.sampled_from([*GEND_TYPES, *GEND_TYPES, None]))
    if event_type is None:
        event_type = draw(_PATH)
    if kind == "mutated":
        record = example(str(event_type)) if event_type in SENDERS else dict(ALERT_JSON)
        paths = _leaf_paths(record)
        path = paths[draw(st.integers(0, len(paths) - 1))]
        body: Any = changed(record, path, draw(_JSON | st.just(...)))
    else:
        body = draw(_JSON)
    return {
        "kind": kind,
        "event_type": event_type,
        "body": json.dumps(body).encode() if draw(st.booleans()) else draw(st.binary(max_size=40)),
        "media": draw(st.sampled_from(["application/json", "application/x+json", "text/plain"])),
        "key": draw(st.sampled_from([None, None, "cle-1"]) | _HEADER),
        "query": draw(st.just({}) | _QUERY),
        "id": draw(_PATH | st.uuids().map(str)),
        "list": draw(st.sampled_from(["/v1/inbox", "/v1/notices"])),
        "action": draw(st.sampled_from(["take-charge", "decline"])),
    }


async def _arbitrary(client: httpx.AsyncClient, r: dict[str, Any]) -> httpx.Response:
    headers = {"content-type": r["media"]}
    if r["key"] is not None:
        headers["Idempotency-Key"] = r["key"]
    if r["kind"] in ("submit", "mutated"):
        path = f"/v1/events/{r['event_type']}"
        return await client.post(path, content=r["body"], headers=headers, params=r["query"])
    if r["kind"] == "list":
        return await client.get(r["list"], params=r["query"])
    if r["kind"] == "get":
        return await client.get(f"/v1/events/{r['id']}", params=r["query"])
    path = f"/v1/inbox/{r['id']}/{r['action']}"
    return await client.post(path, content=r["body"], headers=headers)


async def test_arbitrary_requests_get_a_typed_4xx_never_5xx(agent_kit, demo_territory) -> None:
    """Hypothesis drives a real agent (in a worker thread, requests run on the agent's loop)."""
    kit = await agent_kit(demo_territory)
    seen: dict[int, int] = {}
    with json_log() as log:
        async with serving(kit, GEND) as (_agent, client):
            loop = asyncio.get_running_loop()

            @settings(
                max_examples=250,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(request=_request())
            def prop(request: dict[str, Any]) -> None:
                future = asyncio.run_coroutine_threadsafe(_arbitrary(client, request), loop)
                answer = future.result(timeout=60)
                reads = request["kind"] in ("list", "get")
                allowed = {200, 400, 404, 422} if reads else ALLOWED
                assert answer.status_code in allowed, (request, answer.text)
                if answer.status_code >= 400:
                    assert answer.headers["content-type"] == PROBLEM_JSON
                    assert answer.json()["status"] == answer.status_code
                assert "Zq9" not in answer.text
                seen[answer.status_code] = seen.get(answer.status_code, 0) + 1

            await asyncio.to_thread(prop)
    check_log(log, "Zq9")
    assert {404, 415, 422} <= seen.keys(), seen  # the inputs reached the interesting branches
