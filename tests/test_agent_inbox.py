"""The agent's receiving side against a real nats-server: inbox, receipts, notices, webhooks.

Envelopes are sealed with the demo territory's private keys the way a sender's agent seals
them, and published to the recipients' delivery subjects exactly as the router does
(protocol §7.1, ``AgentKit.deliver``). What the agent publishes back (receipts) is read from
the RECEIPTS stream as the gateway and checked with ``verify_statement``; webhook calls go to
a real local HTTP server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx

from relais.agents.api import create_app
from relais.agents.keys import PartnerKeys, write_atomic, write_key_file
from relais.agents.runtime import Agent
from relais.agents.webhooks import sign_webhook
from relais.broker_config.directory import (
    DirectoryKeys,
    add_key,
    bump_serial,
    new_partner_key,
    sign_directory,
    utc_now,
)
from relais.schemas import _crypto
from relais.schemas.domain import EventType
from relais.schemas.envelope import Recipient, peek_header, seal, verify_envelope
from relais.schemas.errors import EnvelopeError, Reason
from relais.schemas.registry import MAIN_SECTION, default_registry
from relais.schemas.samples import sample_event
from relais.schemas.statements import sign_statement, verify_statement

GEND = "gend-93-bobigny"
CRIP = "crip-93"
PARQUET = "parquet-93-bobigny"
HOSPITAL = "hopital-93-avicenne"
SCHOOL = "college-93-jaures"
CANARY = "TEMOIN-CANARI-AGENT"
WEBHOOK_SECRET = b"secret-de-webhook-pour-les-tests"


def webhook_settings(kit: Any, receiver: Any) -> dict[str, Any]:
    path = kit.root / "secrets" / "webhook.secret"
    if not path.exists():
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_atomic(path, WEBHOOK_SECRET + b"\n")
    return {
        "webhook_url": receiver.url,
        "webhook_secret_file": path,
        "webhook_backoff_initial_seconds": 0.05,
        "webhook_backoff_max_seconds": 0.2,
    }


@contextlib.asynccontextmanager
async def serving(kit: Any, partner: str, **overrides: Any) -> AsyncIterator[Any]:
    """A started agent and an HTTP client for its API."""
    settings = kit.settings(partner, **overrides)
    async with Agent(settings) as agent:
        await kit.until(lambda: agent.readiness().ready, what="agent ready")
        app = create_app(agent, token=kit.token(partner).encode())
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {kit.token(partner)}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://agent", headers=headers
        ) as client:
            yield agent, client


async def receipts(kit: Any, territory: Any) -> list[tuple[str, str, str, str | None]]:
    """``(signer, event id, state, decline reason)`` of every receipt entry published."""
    out = []
    for msg in await kit.read_stream("RECEIPTS"):
        statement = verify_statement(msg.data, keys=territory.keys(), expected=EventType.RECEIPT)
        assert msg.subject == f"ref.rcpt.{statement.signer}"
        assert statement.record["recipient"] == statement.signer
        body = (
            default_registry()
            .by_type(EventType.RECEIPT)
            .encode_section(MAIN_SECTION, statement.record)
        )
        assert msg.headers["Nats-Msg-Id"] == hashlib.sha256(body).hexdigest()
        for entry in statement.record["entries"]:
            out.append(
                (statement.signer, str(entry["event_id"]), entry["state"], entry["decline_reason"])
            )
    return out


async def consumer_idle(kit: Any, partner: str, priority: str) -> bool:
    gateway = await kit.broker.gateway()
    try:
        info = await gateway.api(f"$JS.API.CONSUMER.INFO.DELIVERY.out-{partner}-{priority}")
    finally:
        await gateway.close()
    return info["num_pending"] == 0 and info["num_ack_pending"] == 0


async def test_delivery_inbox_receipts_webhook_and_actions(
    agent_kit, demo_territory, webhook_receiver
) -> None:
    kit = await agent_kit(demo_territory)
    alert = kit.seal(EventType.RUNAWAY_ALERT, sample_event(EventType.RUNAWAY_ALERT), sender=GEND)
    second = kit.seal(EventType.RUNAWAY_ALERT, sample_event(EventType.RUNAWAY_ALERT), sender=GEND)
    header = await kit.deliver(alert)
    other = await kit.deliver(second)
    event_id = str(header.event_id)
    async with serving(kit, CRIP, **webhook_settings(kit, webhook_receiver)) as (_agent, client):
        await kit.until(lambda: len(webhook_receiver.delivered()) == 2, what="two webhooks")
        call = next(c for c in webhook_receiver.calls if c["id"] == event_id)
        expected = sign_webhook(WEBHOOK_SECRET, call["id"], int(call["timestamp"]), call["body"])
        assert call["signature"] == expected
        assert abs(int(call["timestamp"]) - time.time()) < 60
        document = json.loads(call["body"])
        assert document["type"] == "relais.event"
        assert document["data"]["event_id"] == event_id
        assert document["data"]["fields"]["child"]["last_name"]  # decrypted on the way out
        assert document["data"]["withheld_sections"] == []
        page = (await client.get("/v1/inbox")).json()
        assert [i["event_id"] for i in page["items"]] == [event_id, str(other.event_id)]
        assert page["items"][0]["fields"] == document["data"]["fields"]
        assert page["items"][0]["rule"] == "test-rule@1"
        await kit.until(lambda: consumer_idle(kit, CRIP, "FLASH"), what="acknowledged")
        # taking in charge and declining send signed receipts; final states do not change
        taken = await client.post(f"/v1/inbox/{event_id}/take-charge")
        assert taken.status_code == 202
        assert (await client.post(f"/v1/inbox/{event_id}/take-charge")).status_code == 202
        refused = await client.post(
            f"/v1/inbox/{event_id}/decline", json={"reason": "NOT_COMPETENT"}
        )
        assert refused.status_code == 409
        assert refused.json()["reason"] == "STATE_CONFLICT"
        bad = await client.post(f"/v1/inbox/{other.event_id}/decline", json={"reason": "BOF"})
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["field"] == "reason"
        declined = await client.post(
            f"/v1/inbox/{other.event_id}/decline", json={"reason": "DUPLICATE"}
        )
        assert declined.status_code == 202
        listed = (await client.get("/v1/inbox", params={"state": "declined"})).json()
        assert [i["decline_reason"] for i in listed["items"]] == ["DUPLICATE"]

        async def all_receipts() -> Any:
            found = await receipts(kit, demo_territory)
            return found if len(found) == 4 else None

        found = await kit.until(all_receipts, what="four receipt entries")
    assert sorted(found) == sorted(
        [
            (CRIP, event_id, "DELIVERED", None),
            (CRIP, str(other.event_id), "DELIVERED", None),
            (CRIP, event_id, "TAKEN_IN_CHARGE", None),
            (CRIP, str(other.event_id), "DECLINED", "DUPLICATE"),
        ]
    )
    assert len(webhook_receiver.calls) == 2  # webhooks never take in charge, nor repeat


async def test_crip_cannot_read_the_medical_section(agent_kit, demo_territory) -> None:
    kit = await agent_kit(demo_territory)
    record = sample_event(EventType.MEDICAL_REFERRAL, canary=CANARY)
    envelope = kit.seal(EventType.MEDICAL_REFERRAL, record, sender=HOSPITAL)
    header = await kit.deliver(envelope)
    assert {CRIP, PARQUET} <= set(header.recipient_ids)
    assert CRIP not in header.audience("medical")
    views = {}
    for partner in (CRIP, PARQUET):
        async with serving(kit, partner) as (agent, client):
            answer = await kit.until(
                lambda c=client: _found(c, header.event_id), what=f"{partner} inbox"
            )
            views[partner] = answer
            database = agent.settings.database
        # encrypted at rest: not even the entitled partner's database holds the content
        for path in database.parent.glob("agent.sqlite3*"):
            assert CANARY.encode() not in path.read_bytes()
    crip, parquet = views[CRIP], views[PARQUET]
    assert "medical" in crip["withheld_sections"]
    assert "medical" in parquet["opened_sections"]
    medical_fields = set(default_registry().by_type("medical_referral").sections["medical"].fields)
    assert medical_fields.isdisjoint(crip["fields"])
    assert medical_fields <= set(parquet["fields"])
    assert f"{CANARY}-medical" not in json.dumps(crip)
    assert f"{CANARY}-medical" in json.dumps(parquet)
    # direct access to the stream: the CRIP's keys open none of the medical key wraps
    copies = [m for m in await kit.read_stream("DELIVERY") if m.subject.startswith("ref.out.crip")]
    verified = verify_envelope(copies[0].data, keys=demo_territory.keys())
    index = [s.name for s in verified.header.sections].index("medical")
    crip_keys = demo_territory.identities[CRIP]
    failures = []
    for wrap in verified.wraps[index]:
        try:
            _crypto.unwrap_key(wrap, crip_keys.box_pk, crip_keys.box_sk)
        except EnvelopeError as exc:
            failures.append(exc.reason)
        else:
            raise AssertionError("the CRIP unwrapped a medical section key")
    assert failures == [Reason.UNWRAP_FAILED] * len(verified.wraps[index])


async def _found(client: httpx.AsyncClient, event_id: uuid.UUID) -> Any:
    answer = await client.get(f"/v1/inbox/{event_id}")
    return answer.json() if answer.status_code == 200 else None


async def test_bad_deliveries_are_terminated_with_their_reason(
    agent_kit, demo_territory, capsys
) -> None:
    kit = await agent_kit(demo_territory)
    good = kit.seal(
        EventType.DANGER_DECLARATION,
        sample_event(EventType.DANGER_DECLARATION, canary=CANARY),
        sender=SCHOOL,
    )
    tampered = bytearray(
        kit.seal(
            EventType.DANGER_DECLARATION,
            sample_event(EventType.DANGER_DECLARATION, canary=CANARY),
            sender=SCHOOL,
        )
    )
    tampered[-100] ^= 1  # in the last section's key wraps
    not_for_us = seal(
        EventType.DANGER_DECLARATION,
        sample_event(EventType.DANGER_DECLARATION),
        sender=demo_territory.identities[SCHOOL],
        partnership=demo_territory.partnership,
        recipients=[_recipient(demo_territory, "ase-93")],
        departement="93",
        priority=1,
    )
    forged_rejection = sign_statement(
        EventType.REJECTION,
        sample_event(EventType.REJECTION) | {"sender": CRIP},
        signer=demo_territory.identities[SCHOOL],  # not the gateway
        partnership=demo_territory.partnership,
    )
    for data in (bytes(tampered), not_for_us, b"RLS\x01\x09garbage", forged_rejection):
        await kit.deliver(data, to=[CRIP]) if data[4] == 1 else await _publish_raw(kit, data)
    await kit.deliver(good)
    async with serving(kit, CRIP) as (agent, client):
        await kit.until(lambda: _found(client, _event_id(good)), what="good event stored")
        await kit.until(lambda: consumer_idle(kit, CRIP, "URGENT"), what="all settled")
        items = (await client.get("/v1/inbox")).json()["items"]
        assert [i["event_id"] for i in items] == [str(_event_id(good))]
        database = agent.settings.database
    with contextlib.closing(sqlite3.connect(database)) as db:
        reasons = sorted(r for (r,) in db.execute("SELECT reason FROM refused"))
    assert reasons == sorted(
        ["SECTION_HASH_MISMATCH", "NOT_A_RECIPIENT", "WRONG_KIND", "SIGNER_NOT_GATEWAY"]
    )
    assert [e[1] for e in await receipts(kit, demo_territory)] == [str(_event_id(good))]
    logged = capsys.readouterr()
    assert CANARY not in logged.out + logged.err


def _recipient(territory: Any, partner: str) -> Recipient:
    keys = territory.identities[partner]
    return Recipient(partner, keys.key_id, keys.box_pk)


def _event_id(envelope: bytes) -> uuid.UUID:
    return peek_header(envelope).event_id


async def _publish_raw(kit: Any, data: bytes, *, partner: str = CRIP) -> None:
    gateway = await kit.broker.gateway()
    try:
        await gateway.js_publish(f"ref.out.{partner}.URGENT", data, msg_id=str(uuid.uuid4()))
    finally:
        await gateway.close()


async def test_redelivery_stores_receipts_and_calls_once(
    agent_kit, demo_territory, webhook_receiver
) -> None:
    kit = await agent_kit(demo_territory)
    envelope = kit.seal(
        EventType.DANGER_DECLARATION, sample_event(EventType.DANGER_DECLARATION), sender=SCHOOL
    )
    await kit.deliver(envelope)
    await _publish_raw(kit, envelope)  # the same envelope again, as after a lost ack
    settings = webhook_settings(kit, webhook_receiver)
    async with serving(kit, CRIP, **settings) as (_agent, client):
        await kit.until(lambda: consumer_idle(kit, CRIP, "URGENT"), what="both settled")
        await kit.until(lambda: webhook_receiver.delivered(), what="webhook")
        assert len((await client.get("/v1/inbox")).json()["items"]) == 1
    async with serving(kit, CRIP, **settings) as (_agent, _client):
        await _publish_raw(kit, envelope)  # and once more after a restart
        await kit.until(lambda: consumer_idle(kit, CRIP, "URGENT"), what="settled again")
    assert [e[2] for e in await receipts(kit, demo_territory)] == ["DELIVERED"]
    assert len(webhook_receiver.calls) == 1


async def test_rejection_and_escalation_notices(
    agent_kit, demo_territory, webhook_receiver
) -> None:
    kit = await agent_kit(demo_territory)
    gateway_keys = demo_territory.identities["gateway"]
    async with serving(kit, GEND, **webhook_settings(kit, webhook_receiver)) as (agent, client):
        rejected = await agent.submit("runaway_alert", sample_event(EventType.RUNAWAY_ALERT))
        escalated = await agent.submit("runaway_alert", sample_event(EventType.RUNAWAY_ALERT))
        await kit.until(lambda: agent.sent_event(escalated.event_id), what="queued")
        rejection = sign_statement(
            EventType.REJECTION,
            sample_event(EventType.REJECTION)
            | {"event_id": rejected.event_id, "sender": GEND, "reason_code": "STALE"},
            signer=gateway_keys,
            partnership=demo_territory.partnership,
        )
        notice = sign_statement(
            EventType.ESCALATION_NOTICE,
            sample_event(EventType.ESCALATION_NOTICE)
            | {"event_id": escalated.event_id, "sender": GEND},
            signer=gateway_keys,
            partnership=demo_territory.partnership,
        )
        await _publish_raw(kit, rejection, partner=GEND)
        await _publish_raw(kit, notice, partner=GEND)

        async def states() -> Any:
            a = (await client.get(f"/v1/events/{rejected.event_id}")).json()
            b = (await client.get(f"/v1/events/{escalated.event_id}")).json()
            return (a, b) if a["state"] == "rejected" and b["state"] == "escalated" else None

        first, _ = await kit.until(states, what="states updated")
        assert first["reason"] == "STALE"
        notices = (await client.get("/v1/notices")).json()["items"]
        assert [n["kind"] for n in notices] == ["rejection", "escalation_notice"]
        assert notices[0]["record"]["signer"] == "gateway"
        await kit.until(lambda: len(webhook_receiver.delivered()) == 2, what="notice webhooks")
    kinds = sorted(json.loads(c["body"])["type"] for c in webhook_receiver.calls)
    assert kinds == ["relais.escalation_notice", "relais.rejection"]


async def test_flash_is_served_before_a_routine_backlog(
    agent_kit, demo_territory, webhook_receiver
) -> None:
    kit = await agent_kit(demo_territory)
    orientations = [
        kit.seal(
            EventType.CARE_ORIENTATION,
            sample_event(EventType.CARE_ORIENTATION),
            sender=CRIP,
        )
        for n in range(40)
    ]
    for envelope in orientations:
        await kit.deliver(envelope)
    routine = {str(_event_id(e)) for e in orientations}
    # no rule sends the foyer a FLASH event: seal one directly (receivers do not apply rules)
    alert = seal(
        EventType.RUNAWAY_ALERT,
        sample_event(EventType.RUNAWAY_ALERT),
        sender=demo_territory.identities[GEND],
        partnership=demo_territory.partnership,
        recipients=[_recipient(demo_territory, "foyer-93-horizon")],
        departement="93",
        priority=0,
    )
    flash = str((await kit.deliver(alert)).event_id)
    settings = webhook_settings(kit, webhook_receiver) | {"fetch_batch": 4}
    async with serving(kit, "foyer-93-horizon", **settings) as (_agent, _client):
        await kit.until(lambda: len(webhook_receiver.delivered()) == 41, what="all delivered")
    order = [c["id"] for c in webhook_receiver.calls]
    assert set(order) == routine | {flash}
    assert order.index(flash) < 8  # behind at most the batches already pulled


async def test_key_rotation_opens_with_the_key_the_header_names(agent_kit, demo_territory) -> None:
    kit = await agent_kit(demo_territory)
    old = demo_territory.identities[CRIP]
    new = PartnerKeys.generate(CRIP)
    now = utc_now()
    entry = new_partner_key(
        new.sign_pk,
        new.box_pk,
        not_before=now - timedelta(hours=1),
        not_after=now + timedelta(days=9),
    )
    edition = bump_serial(add_key(demo_territory.directory, CRIP, entry))
    signed = sign_directory(edition, demo_territory.root)
    directory_file = kit.root / "directory-2.json"
    directory_file.write_bytes(signed)
    new_key_file = kit.root / "keys" / "crip-93-new.key"
    write_key_file(new_key_file, new, kit.passphrase, opslimit=1, memlimit=8192)
    record = sample_event(EventType.DANGER_DECLARATION)
    to_old = seal(
        "danger_declaration",
        record,
        sender=demo_territory.identities[SCHOOL],
        partnership=demo_territory.partnership,
        recipients=[Recipient(CRIP, old.key_id, old.box_pk)],
        departement="93",
        priority=1,
    )
    to_new = seal(
        "danger_declaration",
        record,
        sender=demo_territory.identities[SCHOOL],
        partnership=demo_territory.partnership,
        recipients=[Recipient(CRIP, new.key_id, new.box_pk)],
        departement="93",
        priority=1,
    )
    await kit.deliver(to_old)
    await kit.deliver(to_new)
    key_files = [kit.root / "keys" / f"{CRIP}.key", new_key_file]
    async with serving(kit, CRIP, key_files=key_files, directory_file=directory_file) as (
        agent,
        client,
    ):
        assert agent.directory_serial == 2
        for envelope in (to_old, to_new):
            item = await kit.until(lambda e=envelope: _found(client, _event_id(e)), what="stored")
            assert item["problem"] is None
            assert item["fields"]["facts_summary"] == record["facts_summary"]
        statements = await kit.until(lambda: kit.read_stream("RECEIPTS"), what="receipts")
    # receipts are signed with the newest key the directory lists
    assert {verify_statement(m.data, keys=DirectoryKeys(edition)).key_id for m in statements} == {
        new.key_id
    }
