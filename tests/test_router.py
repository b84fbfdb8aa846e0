"""The router against a real nats-server: every refusal quarantined with its reason, routing.

One broker for the module (the demo territory). Each test runs a router in its own event
loop (``gateway_runner``), publishes from partners' connections on their own ingress
subjects, and checks what the broker holds afterwards: the original bytes in QUARANTINE
with their index headers, the signed rejection the sender pulls from its own consumer
(verified with ``verify_statement``), the audit records, the copies each recipient's
consumer gets, and their headers. Forged envelopes are sealed with the real ``seal`` and
the demo territory's private keys.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from relais.broker_config.directory import (
    DirectoryKeys,
    bump_serial,
    revoke_key,
    sign_directory,
)
from relais.broker_config.embedded import stop_process
from relais.broker_config.rules import default_rules
from relais.cli.rules_cmd import app as rules_app
from relais.gateway.audit import RECORD_SUBJECT, decode_record
from relais.gateway.jetstream import StoredMessage, get_message, read_stream
from relais.gateway.policy import Policy
from relais.gateway.router import Quarantined, RouterConfig, admit, ingress_identity
from relais.schemas.domain import EventType, PartnerKind, Priority
from relais.schemas.envelope import open_envelope, peek_header
from relais.schemas.errors import EnvelopeError, PermissionDenied, Reason
from relais.schemas.samples import sample_event
from relais.schemas.statements import sign_statement, verify_statement

GEND = "gend-93-bobigny"
POLICE = "police-93-saint-denis"
HOSPITAL = "hopital-93-avicenne"
HOTEL = "hotel-93-gare"
SCHOOL = "college-93-jaures"
CANARY = "TEMOIN-CANARI-ROUTEUR"
ALLOWED_HEADERS = {"Nats-Msg-Id", "Relais-Event-Id", "Relais-Type", "Relais-Rule"}
BOUND = 15.0  # upper bound of a wait, not a performance target


@pytest.fixture(scope="module")
def world(demo_territory, territory_directory, broker_launcher, tmp_path_factory) -> Iterator[Any]:
    broker = broker_launcher(
        Path(tmp_path_factory.mktemp("router")), territory_directory(demo_territory)
    )
    try:
        yield broker
    finally:
        stop_process(broker.server.pid)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def publish_as(broker, partner: str, data: bytes, msg_id: str | None = None) -> int:
    conn = await broker.partner(partner)
    try:
        ack = await conn.js_publish(f"ref.in.{partner}", data, msg_id=msg_id or str(uuid.uuid4()))
    finally:
        await conn.close()
    return ack.seq


async def find_stored(
    conn, stream: str, match: Callable[[StoredMessage], bool], *, bound: float = BOUND
) -> StoredMessage:
    """The first message of ``stream`` that ``match``-es, polling until ``bound``."""
    deadline = time.monotonic() + bound
    seen = 0
    while True:
        info = await conn.api(f"$JS.API.STREAM.INFO.{stream}")
        last = info["state"]["last_seq"]
        for seq in range(seen + 1, last + 1):
            msg = await get_message(conn, stream, seq)
            if msg is not None and match(msg):
                return msg
        seen = last
        assert time.monotonic() < deadline, f"nothing matching in {stream}"
        await asyncio.sleep(0.05)


async def audit_records(conn) -> list[dict[str, Any]]:
    return [
        decode_record(m.data)
        async for m in read_stream(conn, "AUDIT")
        if m.subject == RECORD_SUBJECT
    ]


async def pull_statement(broker, territory, partner: str, priority: Priority, match):
    """The first statement on ``partner``'s consumer that ``match``-es (others are acked)."""
    conn = await broker.partner(partner)
    keys = territory.keys()
    deadline = time.monotonic() + BOUND
    try:
        while time.monotonic() < deadline:
            for msg in await conn.fetch("DELIVERY", f"out-{partner}-{priority.label}", 50):
                await conn.ack(msg)
                if msg.data[4] not in (0x03, 0x04):
                    continue
                statement = verify_statement(msg.data, keys=keys)
                if match(statement):
                    return statement, msg
    finally:
        await conn.close()
    raise AssertionError(f"no matching statement for {partner}")


def alert(**kwargs) -> dict[str, Any]:
    return sample_event(EventType.RUNAWAY_ALERT, **kwargs)


# -- quarantine cases ------------------------------------------------------------------------


def forge_signer_not_ingress(t, seal):
    # A publishes on its own subject a valid envelope signed by B.
    return GEND, seal(t, EventType.RUNAWAY_ALERT, alert(), sender=POLICE)


def forge_recipients(t, seal):
    return GEND, seal(
        t, EventType.RUNAWAY_ALERT, alert(), sender=GEND, recipients=["crip-93", "maraude-93"]
    )


def forge_medical_audience(t, seal):
    # The CRIP is a recipient of a medical referral, never of its medical section.
    record = sample_event(EventType.MEDICAL_REFERRAL, canary=CANARY)
    medical = ["crip-93", "parquet-93-bobigny", "uaped-93-jean-verdier"]
    return HOSPITAL, seal(
        t, EventType.MEDICAL_REFERRAL, record, sender=HOSPITAL, audiences={"medical": medical}
    )


def forge_unknown_type(t, seal):
    sealed = seal(t, EventType.RUNAWAY_ALERT, alert(), sender=GEND)
    name = EventType.RUNAWAY_ALERT.value.encode()
    assert sealed.count(name) == 1
    return GEND, sealed.replace(name, b"runaway_alerx")  # same length: framing stays valid


def forge_statement(t, seal):
    record = sample_event(EventType.RECEIPT, addressed_to=GEND)
    return GEND, sign_statement(
        EventType.RECEIPT, record, signer=t.identities[GEND], partnership=t.partnership
    )


def forge_stale(t, seal):
    return GEND, seal(
        t, EventType.RUNAWAY_ALERT, alert(), sender=GEND, now_ms=now_ms() - 2 * 3600_000
    )


def forge_future(t, seal):
    return GEND, seal(t, EventType.RUNAWAY_ALERT, alert(), sender=GEND, now_ms=now_ms() + 600_000)


def forge_tampered(t, seal):
    sealed = bytearray(seal(t, EventType.RUNAWAY_ALERT, alert(canary=CANARY), sender=GEND))
    sealed[-100] ^= 0x01  # a byte of the last section's wraps, after the signed header
    return GEND, bytes(sealed)


def forge_bad_signature(t, seal):
    sealed = bytearray(seal(t, EventType.RUNAWAY_ALERT, alert(), sender=GEND))
    sealed[-1] ^= 0x01
    return GEND, bytes(sealed)


def forge_sender_kind(t, seal):
    return HOTEL, seal(t, EventType.RUNAWAY_ALERT, alert(), sender=HOTEL)


def forge_priority(t, seal):
    return GEND, seal(t, EventType.RUNAWAY_ALERT, alert(), sender=GEND, priority=Priority.ROUTINE)


def forge_departement(t, seal):
    return GEND, seal(t, EventType.RUNAWAY_ALERT, alert(), sender=GEND, departement="75")


CASES = {
    "signer-not-ingress": (forge_signer_not_ingress, Reason.SIGNER_NOT_INGRESS_IDENTITY),
    "recipients-not-rules": (forge_recipients, Reason.RECIPIENTS_NOT_RULES),
    "medical-audience": (forge_medical_audience, Reason.AUDIENCE_NOT_ENTITLED),
    "unknown-type": (forge_unknown_type, Reason.UNKNOWN_TYPE),
    "statement-on-ingress": (forge_statement, Reason.WRONG_KIND),
    "stale": (forge_stale, Reason.STALE),
    "future": (forge_future, Reason.FROM_FUTURE),
    "tampered": (forge_tampered, Reason.SECTION_HASH_MISMATCH),
    "bad-signature": (forge_bad_signature, Reason.BAD_SIGNATURE),
    "sender-kind": (forge_sender_kind, Reason.SENDER_NOT_ALLOWED),
    "priority": (forge_priority, Reason.PRIORITY_NOT_RULES),
    "departement": (forge_departement, Reason.DEPARTEMENT_NOT_RULES),
}


async def check_quarantined(world, territory, conn, sender, data, seq, reason) -> None:
    """Original bytes kept with their index headers, audit record, signed rejection."""
    kept = await find_stored(
        conn, "QUARANTINE", lambda m: m.headers.get("Relais-Ingress-Seq") == str(seq)
    )
    assert kept.subject == f"ref.quar.{reason.value}"
    assert kept.data == data
    assert kept.headers["Relais-Reason"] == reason.value
    assert kept.headers["Relais-Sender"] == sender
    try:
        claimed = peek_header(data)
    except EnvelopeError:
        claimed = None
    if claimed is None:
        assert "Relais-Event-Id" not in kept.headers
    else:
        assert kept.headers["Relais-Event-Id"] == str(claimed.event_id)
    statement, msg = await pull_statement(
        world, territory, sender, Priority.URGENT, lambda s: s.record["ingress_sequence"] == seq
    )
    assert statement.event_type is EventType.REJECTION
    assert statement.signer == "gateway"
    assert territory.directory.get(statement.signer).kind is PartnerKind.GATEWAY
    assert statement.record["reason_code"] == reason.value
    assert statement.record["sender"] == sender
    assert msg.headers["Relais-Type"] == "rejection"
    records = [
        r
        for r in await audit_records(conn)
        if r["kind"] == "QUARANTINED" and r["ingress_seq"] == seq
    ]
    assert len(records) == 1
    assert records[0]["reason"] == reason.value
    assert records[0]["sender"] == sender


@pytest.mark.parametrize("case", sorted(CASES))
async def test_refused_events_are_quarantined(
    case, world, demo_territory, sealer, gateway_runner
) -> None:
    forge, reason = CASES[case]
    run = await gateway_runner(
        world, demo_territory, roles=("router",), router_config=RouterConfig(max_age_ms=3600_000)
    )
    sender, data = forge(demo_territory, sealer)
    seq = await publish_as(world, sender, data)
    await check_quarantined(world, demo_territory, run.conn, sender, data, seq, reason)


async def test_replay_after_the_dedup_window(world, demo_territory, sealer, gateway_runner):
    """The same envelope again under another Nats-Msg-Id (as after the 2 h window): REPLAY."""
    run = await gateway_runner(world, demo_territory, roles=("router",))
    data = sealer(demo_territory, EventType.RUNAWAY_ALERT, alert(), sender=GEND)
    first = await publish_as(world, GEND, data)
    await find_stored(
        run.conn,
        "AUDIT",
        lambda m: m.subject == RECORD_SUBJECT and decode_record(m.data)["ingress_seq"] == first,
    )
    again = await publish_as(world, GEND, data)
    await check_quarantined(world, demo_territory, run.conn, GEND, data, again, Reason.REPLAY)
    # The same ingress message handled twice (a redelivery) is not a replay.
    event_id = peek_header(data).event_id
    assert await run.router._seen.claim(event_id, first)
    assert not await run.router._seen.claim(event_id, again)


async def test_revoked_key(world, demo_territory, sealer, gateway_runner):
    """A directory edition revokes the sender's key: its envelopes are refused."""
    t = demo_territory
    directory = revoke_key(t.directory, GEND, t.identities[GEND].key_id)
    directory = bump_serial(directory)
    sign_directory(directory, t.root)  # a real, signed edition
    run = await gateway_runner(world, t, roles=("router",), directory=directory)
    data = sealer(t, EventType.RUNAWAY_ALERT, alert(), sender=GEND)
    seq = await publish_as(world, GEND, data)
    kept = await find_stored(
        run.conn, "QUARANTINE", lambda m: m.headers.get("Relais-Ingress-Seq") == str(seq)
    )
    assert kept.headers["Relais-Reason"] == Reason.REVOKED_KEY.value
    assert kept.data == data


# -- routing -----------------------------------------------------------------------------------


async def pull_copies(broker, partner: str, priority: Priority, event_id: str, *, wait=1.0):
    """Every copy of ``event_id`` on ``partner``'s consumer (acked), pulling until quiet."""
    conn = await broker.partner(partner)
    found = []
    try:
        while batch := await conn.fetch(
            "DELIVERY", f"out-{partner}-{priority.label}", 100, expires=wait
        ):
            for msg in batch:
                await conn.ack(msg)
                if (msg.headers or {}).get("Relais-Event-Id") == event_id:
                    found.append(msg)
    finally:
        await conn.close()
    return found


async def test_routed_once_per_recipient_and_headers_hold_no_content(
    world, demo_territory, sealer, gateway_runner
):
    t = demo_territory
    run = await gateway_runner(world, t, roles=("router",))
    record = alert(canary=CANARY, prostitution_suspected=False, in_care=True)
    data = sealer(t, EventType.RUNAWAY_ALERT, record, sender=GEND)
    header = peek_header(data)
    assert header.fallback_ids, "the alert has fallback recipients"
    seq = await publish_as(world, GEND, data)
    await find_stored(
        run.conn,
        "AUDIT",
        lambda m: m.subject == RECORD_SUBJECT and decode_record(m.data)["ingress_seq"] == seq,
    )
    event_id = str(header.event_id)
    for partner in header.recipient_ids:
        copies = await pull_copies(world, partner, Priority.FLASH, event_id)
        assert len(copies) == 1, partner
        msg = copies[0]
        assert msg.data == data
        assert set(msg.headers) == ALLOWED_HEADERS
        assert msg.headers["Nats-Msg-Id"] == f"{event_id}:{partner}"
        assert msg.headers["Relais-Type"] == "runaway_alert"
        assert msg.headers["Relais-Rule"] == "runaway-alert@1"
        assert CANARY not in repr(msg.headers)
        assert CANARY not in msg.subject
        opened = open_envelope(msg.data, recipient=t.identities[partner], keys=t.keys())
        assert CANARY in repr(opened.fields) or partner == "maraude-93"
    for partner in header.fallback_ids:
        for priority in Priority:
            assert await pull_copies(world, partner, priority, event_id, wait=0.3) == []
    (routed,) = [r for r in await audit_records(run.conn) if r.get("ingress_seq") == seq]
    assert routed["kind"] == "ROUTED"
    assert routed["recipients"] == list(header.recipient_ids)
    assert routed["fallback"] == list(header.fallback_ids)
    assert routed["rule"] == "runaway-alert@1"
    assert routed["deadline_at"] - routed["at"] == 900_000
    assert CANARY not in repr(routed)


def test_admit_is_pure_and_cheapest_first(demo_territory, sealer) -> None:
    """Without a broker: the admission checks and the ingress identity."""
    t = demo_territory
    policy = Policy(t.directory, default_rules())
    data = sealer(
        t, EventType.DANGER_DECLARATION, sample_event(EventType.DANGER_DECLARATION), sender=SCHOOL
    )
    admitted = admit(data, sender=SCHOOL, policy=policy, now_ms=now_ms(), config=RouterConfig())
    assert not isinstance(admitted, Quarantined)
    assert admitted.rule == "danger-declaration@1"
    refused = admit(
        b"garbage", sender=SCHOOL, policy=policy, now_ms=now_ms(), config=RouterConfig()
    )
    assert refused.reason is Reason.BAD_MAGIC
    assert refused.header is None
    later = now_ms() + int(timedelta(days=8).total_seconds() * 1000)
    assert admit(
        data, sender=SCHOOL, policy=policy, now_ms=later, config=RouterConfig()
    ).reason in (
        Reason.STALE,
        Reason.EXPIRED,
    )
    assert ingress_identity(f"ref.in.{SCHOOL}") == SCHOOL
    assert ingress_identity("ref.in.a.b") is None
    assert ingress_identity("ref.rcpt.school") is None
    assert DirectoryKeys(t.directory).partner_kind(SCHOOL) is PartnerKind.SCHOOL


def test_rules_explain_cli(demo_territory, tmp_path) -> None:
    t = demo_territory
    signed = tmp_path / "directory.json"
    signed.write_bytes(t.signed_directory)
    args = ["explain", "--type", "runaway_alert", "--sender", GEND, "--directory", str(signed)]
    for pair in ("child_dept=93", "facts_dept=93", "in_care=true", "guardian_dept=75"):
        args += ["--routing", pair]
    args += ["--root-public-key", t.root_public_b64, "--json"]
    result = CliRunner().invoke(rules_app, args)
    assert result.exit_code == 0, result.output
    explained = json.loads(result.stdout)
    assert explained["rule"] == "runaway-alert@1"
    assert explained["priority"] == "FLASH"
    assert explained["deadline_seconds"] == 900
    roles = {row["partner"]: row["role"] for row in explained["recipients"]}
    assert roles["ase-75"] == "recipient"
    assert roles["coord-93"] == "fallback"
    assert all(row["why"] for row in explained["recipients"])
    assert "maraude-93" not in explained["audiences"]["identity"]
    result = CliRunner().invoke(rules_app, [*args[:-2], "AAAA"])
    assert result.exit_code == 2
    result = CliRunner().invoke(rules_app, [*args, "--routing", "bad value"])
    assert result.exit_code == 2
    text = CliRunner().invoke(rules_app, args[:-1])
    assert text.exit_code == 0
    assert "runaway-alert@1" in text.stdout


async def test_the_operator_cannot_read_sensitive_routing_flags(
    world, demo_territory, sealer, gateway_runner
):
    """ROUTED records keep no prostitution_suspected nor in_care; nothing else is readable."""
    t = demo_territory
    run = await gateway_runner(world, t, roles=("router",))
    record = alert(canary=CANARY, prostitution_suspected=True, in_care=True)
    data = sealer(t, EventType.RUNAWAY_ALERT, record, sender=GEND)
    assert {"prostitution_suspected", "in_care"} <= set(peek_header(data).routing)
    seq = await publish_as(world, GEND, data)
    await find_stored(
        run.conn,
        "AUDIT",
        lambda m: m.subject == RECORD_SUBJECT and decode_record(m.data)["ingress_seq"] == seq,
    )
    operator = await world.operator()
    try:
        seen = [m.data async for m in read_stream(operator, "AUDIT")]
        assert seen, "the operator reads the audit log"
        for sensitive in (b"prostitution_suspected", b"in_care", b"imminent"):
            assert not any(sensitive in raw for raw in seen), sensitive
        (routed,) = [decode_record(r) for r in seen if decode_record(r).get("ingress_seq") == seq]
        assert routed["routing"]["child_dept"] == "93"  # what the views need stays
        for stream in ("INGRESS", "DELIVERY", "RECEIPTS", "QUARANTINE", "SEEN"):
            with pytest.raises(PermissionDenied):
                await operator.request(f"$JS.API.DIRECT.GET.{stream}", b'{"seq":1}')
            with pytest.raises(PermissionDenied):
                await operator.request(f"$JS.API.STREAM.MSG.GET.{stream}", b'{"seq":1}')
    finally:
        await operator.close()
