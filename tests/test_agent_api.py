"""The agent's publishing side and local HTTP API, against a real nats-server.

Each test writes the demo territory to disk, starts a broker for it (``agent_kit``) and runs
agents in the test's event loop; the API is called in process (``httpx.ASGITransport``).
What the agent publishes is read back from the INGRESS stream as the gateway, and the
database is inspected directly to show that refused input leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from relais.agents.api import create_app
from relais.agents.runtime import Agent
from relais.broker_config.directory import (
    add_partner,
    bump_serial,
    new_partner,
    new_partner_key,
    sign_directory,
    utc_now,
)
from relais.broker_config.rules import load_rules
from relais.schemas.domain import EventType, PartnerKind, Priority
from relais.schemas.envelope import peek_header, verify_envelope
from relais.schemas.errors import ConfigError, Reason
from relais.schemas.registry import to_jsonable
from relais.schemas.samples import sample_event

GEND = "gend-93-bobigny"
SCHOOL = "college-93-jaures"
HOTEL = "hotel-93-gare"
SECRET = "Valeur-Qui-Ne-Doit-Jamais-Revenir"


def auth(kit: Any, partner: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {kit.token(partner)}"}


@contextlib.asynccontextmanager
async def serving(kit: Any, partner: str, **overrides: Any) -> AsyncIterator[Any]:
    """A started agent and an HTTP client for its API."""
    settings = kit.settings(partner, **overrides)
    async with Agent(settings) as agent:
        await kit.until(lambda: agent.readiness().ready, what="agent ready")
        app = create_app(agent, token=kit.token(partner).encode(), max_body=settings.max_body_bytes)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            yield agent, client


def alert_json(**changes: Any) -> dict[str, Any]:
    record = to_jsonable(sample_event(EventType.RUNAWAY_ALERT, prostitution_suspected=True))
    record.update(changes)
    return record


def outbox_rows(agent: Agent) -> int:
    with contextlib.closing(sqlite3.connect(agent.settings.database)) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


async def published(kit: Any, client: httpx.AsyncClient, event_id: str, partner: str) -> Any:
    async def state() -> Any:
        answer = await client.get(f"/v1/events/{event_id}", headers=auth(kit, partner))
        body = answer.json()
        return body if body["state"] == "published" else None

    return await kit.until(state, what="event published")


async def test_submit_publishes_sealed_event_with_rule_decision(agent_kit, demo_territory) -> None:
    kit = await agent_kit(demo_territory)
    async with serving(kit, GEND) as (_agent, client):
        answer = await client.post(
            "/v1/events/runaway_alert", json=alert_json(), headers=auth(kit, GEND)
        )
        assert answer.status_code == 202
        body = answer.json()
        assert body["priority"] == "FLASH"
        assert body["recipients"] == ["crip-93", "maraude-93", "parquet-93-bobigny"]
        assert body["fallback"] == ["coord-93"]
        assert answer.headers["location"] == f"/v1/events/{body['event_id']}"
        state = await published(kit, client, body["event_id"], GEND)
        assert state["rule"] == "runaway-alert@1"
        metrics = (await client.get("/metrics")).text
        assert (
            'relais_agent_submitted_total{event_type="runaway_alert",outcome="accepted",'
            'priority="FLASH",reason=""} 1.0'
        ) in metrics
        assert 'relais_agent_published_total{event_type="runaway_alert",priority="FLASH"} 1.0' in (
            metrics
        )
        assert body["event_id"] not in metrics  # labels are codes, never ids
    [msg] = await kit.read_stream("INGRESS")
    assert msg.subject == f"ref.in.{GEND}"
    assert msg.headers["Nats-Msg-Id"] == body["event_id"]
    header = verify_envelope(msg.data, keys=demo_territory.keys()).header
    assert str(header.event_id) == body["event_id"]
    assert header.priority is Priority.FLASH
    assert header.recipient_ids == tuple(body["recipients"])
    assert header.fallback_ids == ("coord-93",)
    # the outreach team is a recipient but never gets the identity section
    assert "maraude-93" not in header.audience("identity")


async def test_api_requires_the_bearer_token_except_health(agent_kit, demo_territory) -> None:
    kit = await agent_kit(demo_territory)
    async with serving(kit, GEND) as (_agent, client):
        for headers in ({}, {"Authorization": "Bearer not-the-token"}, auth(kit, SCHOOL)):
            answer = await client.post("/v1/events/runaway_alert", json={}, headers=headers)
            assert answer.status_code == 401
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json()["reason"] == "UNAUTHORIZED"
            assert (await client.get("/v1/inbox", headers=headers)).status_code == 401
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "ready": True,
            "keys": True,
            "directory": True,
            "nats": True,
            "outbox_blocked": None,
        }
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert "relais_agent_directory_serial 1.0" in metrics.text
        assert "relais_agent_nats_connected 1.0" in metrics.text


# (path, change to a valid alert, field named, reason): a value that must never be echoed
INVALID = [
    ("runaway_alert", {"in_care": "yes"}, "in_care", "INVALID_PAYLOAD"),
    ("runaway_alert", {"physical_description": None}, "physical_description", "INVALID_PAYLOAD"),
    ("runaway_alert", {"qualification": SECRET}, "qualification", "INVALID_PAYLOAD"),
    ("runaway_alert", {"child": {"sex": SECRET}}, "child.sex", "INVALID_PAYLOAD"),
    ("runaway_alert", {"surnom": SECRET}, "surnom", "INVALID_PAYLOAD"),
    ("alien_event", {}, "event_type", "UNKNOWN_TYPE"),
    ("receipt", {}, "event_type", "UNKNOWN_TYPE"),
    ("runaway_alert", {"child": {"birth_date": "14/03"}}, "child.birth_date", "INVALID_PAYLOAD"),
    ("runaway_alert", {"child": {"last_name": None}}, "child.last_name", "INVALID_PAYLOAD"),
    ("runaway_alert", {"child_dept": "20"}, "child_dept", "INVALID_PAYLOAD"),
    ("runaway_alert", {"circumstances": SECRET * 400}, "body", "OVERSIZE"),
]
# an oversize body is refused before it is parsed (413); everything else is invalid (422)
STATUS = {"OVERSIZE": 413}


def invalid_record(change: dict[str, Any]) -> dict[str, Any]:
    record = alert_json()
    for key, value in change.items():
        if value is None:
            del record[key]
        elif isinstance(value, dict):
            record[key] = {**record[key], **value}
        else:
            record[key] = value
    return record


async def test_invalid_payloads_are_refused_naming_the_field(agent_kit, demo_territory) -> None:
    """Wrong type, missing field, unknown enum symbol, unknown type: 422; oversize: 413."""
    kit = await agent_kit(demo_territory)
    async with serving(kit, GEND, max_body_bytes=4096) as (agent, client):
        for path, change, field, reason in INVALID:
            answer = await client.post(
                f"/v1/events/{path}", json=invalid_record(change), headers=auth(kit, GEND)
            )
            status = STATUS.get(reason, 422)
            assert answer.status_code == status, (field, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            problem = answer.json()
            assert problem["status"] == status
            assert problem["reason"] == reason, field
            assert field in [e["field"] for e in problem["errors"]]
            assert SECRET not in answer.text  # values are never echoed
        assert outbox_rows(agent) == 0
        # a valid event afterwards is the only one ever published
        ok = await client.post(
            "/v1/events/runaway_alert", json=alert_json(), headers=auth(kit, GEND)
        )
        await published(kit, client, ok.json()["event_id"], GEND)
    assert [m.headers["Nats-Msg-Id"] for m in await kit.read_stream("INGRESS")] == [
        ok.json()["event_id"]
    ]


async def test_malformed_bodies(agent_kit, demo_territory) -> None:
    kit = await agent_kit(demo_territory)
    async with serving(kit, GEND) as (agent, client):
        post = "/v1/events/runaway_alert"
        cases = [
            (b"[1, 2]", "application/json", 422),
            (b'{"in_care": true, "in_care": false}', "application/json", 422),
            (b'{"risk_level": NaN}', "application/json", 422),
            (b"{not json", "application/json", 422),
            (b"{}", "text/plain", 415),
        ]
        for content, media, status in cases:
            headers = {**auth(kit, GEND), "content-type": media}
            answer = await client.post(post, content=content, headers=headers)
            assert answer.status_code == status, content
            assert answer.headers["content-type"] == "application/problem+json"
        bad_key = {**auth(kit, GEND), "Idempotency-Key": "clé avec espaces".encode()}
        answer = await client.post(post, json=alert_json(), headers=bad_key)
        assert answer.status_code == 422
        assert answer.json()["errors"][0]["field"] == "Idempotency-Key"
        assert outbox_rows(agent) == 0


async def test_idempotency_key_same_answer_nothing_new(agent_kit, demo_territory) -> None:
    kit = await agent_kit(demo_territory)
    async with serving(kit, GEND) as (agent, client):
        record = alert_json()
        headers = {**auth(kit, GEND), "Idempotency-Key": "fpr-2025-000042"}
        first = await client.post("/v1/events/runaway_alert", json=record, headers=headers)
        again = await client.post("/v1/events/runaway_alert", json=record, headers=headers)
        assert first.status_code == again.status_code == 202
        assert again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        other = await client.post(
            "/v1/events/runaway_alert", json={**record, "in_care": True}, headers=headers
        )
        assert other.status_code == 409  # the key is taken: a conflict, not a bad body
        assert other.json()["reason"] == "IDEMPOTENCY_KEY_REUSED"
        # the Python API shares the keys, and concurrent duplicates collapse to one event
        python = await agent.submit(EventType.RUNAWAY_ALERT, record, "fpr-2025-000042")
        assert str(python.event_id) == first.json()["event_id"]
        assert python.replayed
        many = await asyncio.gather(
            *(agent.submit("runaway_alert", record, idempotency_key="k-77") for _ in range(5))
        )
        assert len({s.event_id for s in many}) == 1
        assert outbox_rows(agent) == 2
        await published(kit, client, str(many[0].event_id), GEND)
        await published(kit, client, first.json()["event_id"], GEND)
    assert len(await kit.read_stream("INGRESS")) == 2


async def test_routing_outcomes_triage_sender_not_allowed_no_rule(
    agent_kit, demo_territory, tmp_path
) -> None:
    kit = await agent_kit(demo_territory)
    declaration = to_jsonable(sample_event(EventType.DANGER_DECLARATION, child_dept="13"))
    async with serving(kit, SCHOOL) as (_agent, client):
        answer = await client.post(
            "/v1/events/danger_declaration", json=declaration, headers=auth(kit, SCHOOL)
        )
        assert answer.status_code == 202  # nobody competent in 13: human triage
        assert answer.json()["triage"] is True
        assert answer.json()["recipients"] == ["coord-93"]
    async with serving(kit, HOTEL) as (_agent, client):
        answer = await client.post(
            "/v1/events/runaway_alert", json=alert_json(), headers=auth(kit, HOTEL)
        )
        assert answer.status_code == 403
        assert answer.json()["reason"] == "SENDER_NOT_ALLOWED"
    rules = tmp_path / "rules.toml"
    rules.write_text(
        'version = 7\npartnership_rules = "sans triage national"\n'
        '[secrecy]\nmedical = ["parquet"]\nidentity = ["crip"]\n'
        '[[triage]]\nkind = "coordination"\nterritory = ["child_dept"]\nwhy = "triage local"\n'
        '[[rules]]\nid = "ip"\nevent_type = "danger_declaration"\nsenders = ["school"]\n'
        'priority = "URGENT"\nwhy = "test"\n'
        '[[rules.recipients]]\nkind = "crip"\nterritory = ["child_dept"]\nwhy = "crip"\n'
    )
    load_rules(rules)  # valid rules
    data_dir = kit.root / "agents" / "school-local-rules"
    async with serving(kit, SCHOOL, rules_file=rules, data_dir=data_dir) as (agent, client):
        answer = await client.post(
            "/v1/events/danger_declaration", json=declaration, headers=auth(kit, SCHOOL)
        )
        assert answer.status_code == 409
        assert answer.json()["reason"] == "NO_RULE"
        assert outbox_rows(agent) == 0


async def test_python_api_submits_at_once_even_before_connecting(agent_kit, demo_territory) -> None:
    kit = await agent_kit(demo_territory)
    async with Agent(kit.settings(GEND)) as agent:
        sub = await agent.submit(EventType.RUNAWAY_ALERT, sample_event(EventType.RUNAWAY_ALERT))

        async def state() -> Any:
            sent = await agent.sent_event(sub.event_id)
            return sent if sent is not None and sent.state.value == "published" else None

        sent = await kit.until(state, what="published")
        assert sent.ingress_seq == 1
    with pytest.raises(ConfigError) as excinfo:  # stopped: refused, not lost
        await agent.submit(EventType.RUNAWAY_ALERT, sample_event(EventType.RUNAWAY_ALERT))
    assert excinfo.value.reason is Reason.NOT_READY


async def test_unknown_ids_and_python_api(agent_kit, demo_territory) -> None:
    kit = await agent_kit(demo_territory)
    async with serving(kit, GEND) as (agent, client):
        unknown = uuid.uuid4()
        for path in (f"/v1/events/{unknown}", f"/v1/inbox/{unknown}"):
            answer = await client.get(path, headers=auth(kit, GEND))
            assert answer.status_code == 404
            assert answer.json()["reason"] == "UNKNOWN_EVENT"
        taken = await client.post(f"/v1/inbox/{unknown}/take-charge", headers=auth(kit, GEND))
        assert taken.status_code == 404
        sub = await agent.submit(EventType.RUNAWAY_ALERT, sample_event(EventType.RUNAWAY_ALERT))
        assert sub.priority is Priority.FLASH
        assert not sub.replayed
        state = await published(kit, client, str(sub.event_id), GEND)
        assert state["published_at"] is not None
        sent = await agent.sent_event(sub.event_id)
        assert sent is not None
        assert sent.ingress_seq == 1


async def test_directory_update_applied_without_restart(agent_kit, demo_territory) -> None:
    kit = await agent_kit(demo_territory)
    territory = demo_territory
    from relais.agents.keys import PartnerKeys

    newcomer = PartnerKeys.generate("crip-93-nord")
    now = utc_now()
    key = new_partner_key(
        newcomer.sign_pk,
        newcomer.box_pk,
        not_before=now - timedelta(days=1),
        not_after=now + timedelta(days=30),
    )
    partner = new_partner(
        "crip-93-nord", PartnerKind.CRIP, "CRIP 93, antenne nord", departements=["93"], keys=[key]
    )
    edition2 = bump_serial(add_partner(territory.directory, partner))
    signed2 = sign_directory(edition2, territory.root)
    declaration = to_jsonable(sample_event(EventType.DANGER_DECLARATION))
    async with serving(kit, SCHOOL, directory_poll_seconds=0.1) as (agent, client):
        first = await client.post(
            "/v1/events/danger_declaration", json=declaration, headers=auth(kit, SCHOOL)
        )
        assert first.json()["recipients"] == ["crip-93"]
        gateway = await kit.broker.gateway()
        try:
            await gateway.js_publish("ref.dir", signed2, msg_id="directory-2")
            await kit.until(lambda: agent.directory_serial == 2, what="edition 2 applied")
            # an older edition published afterwards is refused (rollback)
            await gateway.js_publish("ref.dir", territory.signed_directory, msg_id="old-1")
            assert not await agent.refresh_directory()
            assert agent.directory_serial == 2
        finally:
            await gateway.close()
        second = await client.post(
            "/v1/events/danger_declaration", json=declaration, headers=auth(kit, SCHOOL)
        )
        assert second.json()["recipients"] == ["crip-93", "crip-93-nord"]
        await published(kit, client, second.json()["event_id"], SCHOOL)
    envelope = (await kit.read_stream("INGRESS"))[-1].data
    assert peek_header(envelope).recipient_ids == ("crip-93", "crip-93-nord")
    # restarted with the old directory file, the agent keeps the newer edition it cached
    async with serving(kit, SCHOOL) as (agent, _client):
        assert agent.directory_serial == 2
    cached = json.loads((kit.root / "agents" / SCHOOL / "directory.json").read_bytes())
    assert cached["signed"]["serial"] == 2
