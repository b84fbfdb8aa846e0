"""The tracker against a real nats-server: receipts, deadlines, escalation, case closure.

One broker for the module (the demo territory); each test runs a router and a tracker in
its own event loop (``gateway_runner``) with a fresh SQLite store. Deadlines are shortened
through a rules file (the FLASH runaway alert's 900 s become 2 s). Partners act through
their own connections: they publish events on their ingress subjects, pull their delivery
consumers and publish receipts signed with their own keys on ``ref.rcpt.<id>``. The tracker
survives a SIGKILL too: see ``test_gateway_faults.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from relais.broker_config.embedded import stop_process
from relais.broker_config.rules import default_rules_text, load_rules, with_deadline
from relais.gateway.audit import RECORD_SUBJECT, decode_record
from relais.gateway.jetstream import read_stream
from relais.gateway.tracker_store import EventState, PartyState
from relais.schemas.domain import EventType, Priority
from relais.schemas.envelope import open_envelope, peek_header
from relais.schemas.samples import sample_event
from relais.schemas.statements import sign_statement, verify_statement

GEND = "gend-93-bobigny"
CRIP = "crip-93"
PARQUET = "parquet-93-bobigny"
COORD = "coord-93"
SCHOOL = "college-93-jaures"
DEADLINE_S = 2
BOUND = 15.0  # upper bound of a wait, not a performance target


@pytest.fixture(scope="module")
def world(demo_territory, territory_directory, broker_launcher, tmp_path_factory) -> Iterator[Any]:
    broker = broker_launcher(
        Path(tmp_path_factory.mktemp("tracker")), territory_directory(demo_territory)
    )
    try:
        yield broker
    finally:
        stop_process(broker.server.pid)


@pytest.fixture(scope="module")
def short_rules():
    return load_rules(with_deadline(default_rules_text(), "runaway-alert", DEADLINE_S))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def publish_as(broker, partner: str, subject_kind: str, data: bytes) -> int:
    conn = await broker.partner(partner)
    try:
        msg_id = hashlib.sha256(data).hexdigest()
        ack = await conn.js_publish(f"ref.{subject_kind}.{partner}", data, msg_id=msg_id)
    finally:
        await conn.close()
    return ack.seq


def receipt(territory, partner: str, *entries, signer: str | None = None) -> bytes:
    record = {
        "recipient": partner,
        "entries": [
            {
                "event_id": event_id,
                "state": state,
                "decline_reason": reason,
                "outcome": outcome[0] if outcome else None,
                "at": datetime.now(UTC),
            }
            for event_id, state, reason, *outcome in entries
        ],
    }
    return sign_statement(
        EventType.RECEIPT,
        record,
        signer=territory.identities[signer or partner],
        partnership=territory.partnership,
    )


async def drained(conn, stream: str, consumer: str) -> None:
    """Wait until ``consumer`` has nothing pending nor unacknowledged."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        info = await conn.api(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}")
        if info["num_pending"] == 0 and info["num_ack_pending"] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{consumer} not drained")


async def until(check, what: str):
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(what)


async def records_about(conn, event_id) -> list[dict[str, Any]]:
    return [r async for r in _records(conn) if r.get("event_id") == str(event_id)]


async def _records(conn):
    async for msg in read_stream(conn, "AUDIT"):
        if msg.subject == RECORD_SUBJECT:
            yield decode_record(msg.data)


async def pull(broker, partner: str, priority: Priority, event_id, *, wait: float = 0.5):
    """Messages about ``event_id`` on ``partner``'s consumer (acked), pulling until quiet."""
    conn = await broker.partner(partner)
    found = []
    try:
        while batch := await conn.fetch(
            "DELIVERY", f"out-{partner}-{priority.label}", 100, expires=wait
        ):
            for msg in batch:
                await conn.ack(msg)
                if (msg.headers or {}).get("Relais-Event-Id") == str(event_id):
                    found.append((time.time_ns() // 1_000_000, msg))
    finally:
        await conn.close()
    return found


def alert_record(**kwargs) -> dict[str, Any]:
    return sample_event(
        EventType.RUNAWAY_ALERT, prostitution_suspected=False, in_care=False, **kwargs
    )


async def test_deadlines_escalation_take_in_charge_and_closure(
    world, demo_territory, sealer, gateway_runner, short_rules
):
    """Three alerts with a 2 s deadline: one left alone (escalated within 2 s of its
    deadline, the fallback recipient opens the original envelope), one taken in charge, one
    whose runaway ended (neither escalated)."""
    t = demo_territory
    run = await gateway_runner(world, t, rules=short_rules)
    alone, taken, ended = (
        sealer(t, EventType.RUNAWAY_ALERT, alert_record(), sender=GEND, rules=short_rules)
        for _ in range(3)
    )
    ids = [peek_header(data).event_id for data in (alone, taken, ended)]
    assert peek_header(alone).fallback_ids == (COORD, PARQUET)
    for data in (alone, taken, ended):
        await publish_as(world, GEND, "in", data)
    events = await until(
        lambda: all(run.store.event(i) for i in ids) and [run.store.event(i) for i in ids],
        "the tracker learns the alerts",
    )
    await publish_as(world, CRIP, "rcpt", receipt(t, CRIP, (ids[1], "TAKEN_IN_CHARGE", None)))
    end = sample_event(
        EventType.RUNAWAY_ENDED,
        case_ref=ids[2],
        alert_sender=GEND,
        prostitution_suspected=False,
        in_care=False,
    )
    await publish_as(
        world, GEND, "in", sealer(t, EventType.RUNAWAY_ENDED, end, sender=GEND, rules=short_rules)
    )

    deadline = events[0].deadline_at
    await until(
        lambda: run.store.event(ids[0]).state is EventState.ESCALATED, "the alert escalates"
    )
    copies = await pull(world, PARQUET, Priority.FLASH, ids[0])
    envelopes = [(at, m) for at, m in copies if m.data[4] == 0x01]
    notices = [m for _, m in copies if m.data[4] == 0x04]
    assert len(envelopes) == 1
    assert len(notices) == 1
    arrived, copy = envelopes[0]
    assert arrived - deadline <= 2000, f"escalated {arrived - deadline} ms after the deadline"
    assert copy.data == alone  # the original envelope, as the sender sealed it
    opened = open_envelope(copy.data, recipient=t.identities[PARQUET], keys=t.keys())
    assert opened.fields["child_dept"] == "93"
    notice = verify_statement(notices[0].data, keys=t.keys())
    assert notice.signer == "gateway"
    assert notice.event_type is EventType.ESCALATION_NOTICE
    assert copy.headers["Relais-Escalation"] == str(notice.record["notice_id"])
    assert notice.record["event_id"] == ids[0]
    assert notice.record["fallback_recipients"] == [COORD, PARQUET]
    assert sorted(notice.record["overdue_recipients"]) == sorted(peek_header(alone).recipient_ids)
    for partner, priority in ((COORD, Priority.FLASH), (GEND, Priority.URGENT)):
        got = [m for _, m in await pull(world, partner, priority, ids[0]) if m.data[4] == 0x04]
        assert len(got) == 1, partner
        assert (
            verify_statement(got[0].data, keys=t.keys()).record["notice_id"]
            == (notice.record["notice_id"])
        )

    # The other two are past their deadline too, and stay as they are.
    await asyncio.sleep(max(0.0, (events[2].deadline_at - now_ms()) / 1000) + 1.0)
    assert run.store.event(ids[1]).state is EventState.TAKEN
    assert run.store.event(ids[2]).state is EventState.CLOSED
    for event_id in ids[1:]:
        assert await pull(world, PARQUET, Priority.FLASH, event_id, wait=0.2) == []
        kinds = [r["kind"] for r in await records_about(run.conn, event_id)]
        assert "ESCALATED" not in kinds
    closed = [r for r in await records_about(run.conn, ids[2]) if r["kind"] == "CLOSED"]
    assert len(closed) == 1
    assert closed[0]["sender"] == GEND
    escalated = [r for r in await records_about(run.conn, ids[0]) if r["kind"] == "ESCALATED"]
    assert len(escalated) == 1
    assert escalated[0]["released"] is True


async def test_duplicate_and_out_of_order_receipts_change_nothing(
    world, demo_territory, sealer, gateway_runner
):
    t = demo_territory
    run = await gateway_runner(world, t)
    data = sealer(t, EventType.RUNAWAY_ALERT, alert_record(), sender=GEND)
    event_id = peek_header(data).event_id
    await publish_as(world, GEND, "in", data)
    await until(lambda: run.store.event(event_id), "the tracker learns the alert")
    taken = receipt(t, CRIP, (event_id, "DELIVERED", None), (event_id, "TAKEN_IN_CHARGE", None))
    await publish_as(world, CRIP, "rcpt", taken)
    await drained(run.conn, "RECEIPTS", "tracker")
    before = await records_about(run.conn, event_id)
    # the same receipt again (another Nats-Msg-Id), an older state, a conflicting final one
    for again in (
        taken + b"",
        receipt(t, CRIP, (event_id, "DELIVERED", None)),
        receipt(t, CRIP, (event_id, "TAKEN_IN_CHARGE", None)),
        receipt(t, CRIP, (event_id, "DECLINED", "NOT_COMPETENT")),
    ):
        conn = await world.partner(CRIP)
        await conn.js_publish(f"ref.rcpt.{CRIP}", again, msg_id=str(uuid.uuid4()))
        await conn.close()
    await drained(run.conn, "RECEIPTS", "tracker")
    after = await records_about(run.conn, event_id)
    assert after == before
    states = [r["state"] for r in after if r["kind"] == "RECEIPT"]
    assert states == ["DELIVERED", "TAKEN_IN_CHARGE"]
    crip = next(p for p in run.store.parties(event_id) if p.partner == CRIP)
    assert crip.state is PartyState.TAKEN_IN_CHARGE
    assert crip.decline_reason is None
    assert run.store.event(event_id).state is EventState.TAKEN


async def test_receipt_before_its_routed_record(world, demo_territory, sealer, gateway_runner):
    """A receipt that overtakes the ROUTED audit record is kept, then applied."""
    t = demo_territory
    run = await gateway_runner(world, t)
    data = sealer(
        t, EventType.DANGER_DECLARATION, sample_event(EventType.DANGER_DECLARATION), sender=SCHOOL
    )
    event_id = peek_header(data).event_id
    await publish_as(world, CRIP, "rcpt", receipt(t, CRIP, (event_id, "DECLINED", "DUPLICATE")))
    await drained(run.conn, "RECEIPTS", "tracker")
    assert run.store.event(event_id) is None
    await publish_as(world, SCHOOL, "in", data)
    party = await until(
        lambda: [p for p in run.store.parties(event_id) if p.state is PartyState.DECLINED],
        "the early receipt is applied",
    )
    assert party[0].partner == CRIP
    assert party[0].decline_reason == "DUPLICATE"
    await drained(run.conn, "AUDIT", "tracker-audit")
    kinds = [r["kind"] for r in await records_about(run.conn, event_id)]
    assert kinds == ["ROUTED", "RECEIPT"]


async def test_refused_receipts(world, demo_territory, sealer, gateway_runner):
    """Signed by another partner than the subject's, by a non-recipient, or tampered."""
    t = demo_territory
    run = await gateway_runner(world, t)
    data = sealer(
        t, EventType.DANGER_DECLARATION, sample_event(EventType.DANGER_DECLARATION), sender=SCHOOL
    )
    event_id = peek_header(data).event_id
    await publish_as(world, SCHOOL, "in", data)
    await until(lambda: run.store.event(event_id), "the tracker learns the event")
    forged = receipt(t, CRIP, (event_id, "TAKEN_IN_CHARGE", None), signer="ase-93")
    tampered = bytearray(receipt(t, CRIP, (event_id, "TAKEN_IN_CHARGE", None)))
    tampered[-1] ^= 1
    await publish_as(world, CRIP, "rcpt", forged)
    await publish_as(world, CRIP, "rcpt", bytes(tampered))
    await publish_as(world, "ase-93", "rcpt", receipt(t, "ase-93", (event_id, "DELIVERED", None)))
    await drained(run.conn, "RECEIPTS", "tracker")
    assert {p.partner: p.state for p in run.store.parties(event_id)} == {CRIP: PartyState.ROUTED}
    assert run.store.event(event_id).state is EventState.OPEN
    assert [r["kind"] for r in await records_about(run.conn, event_id)] == ["ROUTED"]


async def test_outcomes_and_progress_notices_to_the_sender(
    world, demo_territory, sealer, gateway_runner
):
    """A danger declaration's ladder reaches the school in signed progress notices, the
    CRIP's outcome included; receipts that misuse ``outcome`` are refused whole."""
    t = demo_territory
    run = await gateway_runner(world, t)
    data = sealer(
        t, EventType.DANGER_DECLARATION, sample_event(EventType.DANGER_DECLARATION), sender=SCHOOL
    )
    event_id = peek_header(data).event_id
    await publish_as(world, SCHOOL, "in", data)
    await until(lambda: run.store.event(event_id), "the tracker learns the event")
    taken = receipt(
        t,
        CRIP,
        (event_id, "DELIVERED", None),
        (event_id, "TAKEN_IN_CHARGE", None, "ASSESSMENT_UNDER_WAY"),
    )
    await publish_as(world, CRIP, "rcpt", taken)
    for wrong in (
        (event_id, "CONCLUDED", None),  # a conclusion names its outcome
        (event_id, "CONCLUDED", None, "ASSESSMENT_UNDER_WAY"),  # which is not a conclusion
        (event_id, "DECLINED", "DUPLICATE", "NO_DANGER_FOUND"),  # a decline has none
    ):
        await publish_as(world, CRIP, "rcpt", receipt(t, CRIP, wrong))
    await drained(run.conn, "RECEIPTS", "tracker")
    crip = next(p for p in run.store.parties(event_id) if p.partner == CRIP)
    assert (crip.state, crip.outcome) == (PartyState.TAKEN_IN_CHARGE, "ASSESSMENT_UNDER_WAY")
    await publish_as(
        world, CRIP, "rcpt", receipt(t, CRIP, (event_id, "CONCLUDED", None, "NO_DANGER_FOUND"))
    )
    await until(
        lambda: (
            next(p for p in run.store.parties(event_id) if p.partner == CRIP).state
            is PartyState.CONCLUDED
        ),
        "the conclusion is applied",
    )
    assert run.store.event(event_id).state is EventState.TAKEN
    expected = [
        ("CONCLUDED", "NO_DANGER_FOUND"),
        ("DELIVERED", ""),
        ("TAKEN_IN_CHARGE", "ASSESSMENT_UNDER_WAY"),
    ]

    async def recorded() -> list[tuple[str, str]]:
        receipts = [r for r in await records_about(run.conn, event_id) if r["kind"] == "RECEIPT"]
        # the records of one commit are published together: their order may vary
        return sorted((r["state"], r["outcome"] or "") for r in receipts)

    # the store and the log are two readers' views: read the log until it shows the
    # conclusion too (bounded), then compare it whole
    for _ in range(int(BOUND / 0.05)):
        if (found := await recorded()) == expected:
            break
        await asyncio.sleep(0.05)
    assert found == expected

    async def told() -> list[dict[str, Any]]:
        notices = [m for _, m in await pull(world, SCHOOL, Priority.URGENT, event_id)]
        for msg in notices:
            assert msg.data[4] == 0x05
            assert msg.headers["Relais-Type"] == "progress_notice"
        steps.extend(
            s for msg in notices for s in verify_statement(msg.data, keys=t.keys()).record["steps"]
        )
        return [s for s in steps if s["state"] == "CONCLUDED"]

    steps: list[dict[str, Any]] = []
    deadline = time.monotonic() + BOUND
    while not await told():
        assert time.monotonic() < deadline, "no progress notice with the conclusion"
    # each step once, in whatever order the notices came (receivers must not rely on it)
    assert sorted((s["partner"], s["state"], s["outcome"] or "") for s in steps) == [
        (CRIP, "CONCLUDED", "NO_DANGER_FOUND"),
        (CRIP, "DELIVERED", ""),
        (CRIP, "ROUTED", ""),
        (CRIP, "TAKEN_IN_CHARGE", "ASSESSMENT_UNDER_WAY"),
    ]
    assert all(s["event_id"] == event_id and s["role"] == "RECIPIENT" for s in steps)
