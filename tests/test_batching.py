"""Batching against a real nats-server: atomic batches, coalesced publishes, batch routing,
a routine batch interrupted by a FLASH one, receipts published after the ack.

What must hold whatever the batching: every message is stored exactly once (a batch that
holds an id the stream already has is refused as a whole, then published one message at a
time, each duplicate recognised as such), a redelivered ingress message is routed again
without a second copy or record, a replay is still a replay, a routine batch interrupted by
a FLASH one is taken up where it stopped and loses nothing, and a receipt whose
acknowledgement was not recorded before a crash is re-sent but stored once. No assertion on
wall-clock time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from relais.agents import receiving
from relais.agents.runtime import Agent
from relais.broker_config.rules import default_rules
from relais.gateway.audit import RECORD_SUBJECT, decode_record
from relais.gateway.delivery import copy_message
from relais.gateway.jetstream import (
    Outgoing,
    Published,
    get_message,
    publish,
    publish_many,
    read_stream,
)
from relais.gateway.policy import Policy
from relais.gateway.router import Quarantined, Routed, Router, RouterConfig
from relais.schemas.domain import EventType, Priority
from relais.schemas.envelope import Recipient, peek_header, seal
from relais.schemas.errors import Reason
from relais.schemas.samples import sample_event

GEND = "gend-93-bobigny"
CRIP = "crip-93"
FOYER = "foyer-93-horizon"
BATCH_ID = "Nats-Batch-Id"


def _copies(count: int, partner: str = CRIP) -> list[Outgoing]:
    return [
        copy_message(
            f"enveloppe {i}".encode(),
            partner=partner,
            priority=Priority.ROUTINE,
            event_id=uuid.uuid4(),
            event_type=EventType.CARE_ORIENTATION,
            rule="care-orientation@1",
        )
        for i in range(count)
    ]


async def _stream_last_seq(conn: Any, stream: str) -> int:
    info = await conn.api(f"$JS.API.STREAM.INFO.{stream}")
    return int(info["state"]["last_seq"])


async def test_atomic_batch_stores_each_message_once(
    broker_factory, demo_territory, territory_directory
) -> None:
    broker = await broker_factory(territory_directory(demo_territory))
    conn = await broker.gateway()
    try:
        first = _copies(60)
        results = await publish_many(conn, first, atomic_min=10)
        assert all(isinstance(r, Published) and not r.duplicate for r in results)
        seqs = [r.seq for r in results if isinstance(r, Published)]
        assert seqs == list(range(seqs[0], seqs[0] + 60))
        stored = await get_message(conn, "DELIVERY", seqs[7])
        assert stored is not None
        assert stored.headers["Nats-Msg-Id"] == first[7].msg_id
        assert stored.data == first[7].payload
        assert BATCH_ID in stored.headers  # it went as one atomic batch

        # The same 60 again with 5 new ones: the batch is refused (duplicate ids), then
        # published one by one: 60 duplicates, 5 stored.
        more = _copies(5)
        again = await publish_many(conn, [*first, *more], atomic_min=10)
        assert [r.duplicate for r in again if isinstance(r, Published)] == [True] * 60 + [False] * 5
        assert broker.stream_counts()["DELIVERY"] == 65

        # Below the threshold: one by one (no batch header).
        alone = await publish_many(conn, _copies(3), atomic_min=10)
        assert all(isinstance(r, Published) for r in alone)
        last = await get_message(conn, "DELIVERY", await _stream_last_seq(conn, "DELIVERY"))
        assert last is not None
        assert BATCH_ID not in last.headers
    finally:
        await conn.close()


async def test_a_stream_without_atomic_batches_gets_them_one_by_one(
    broker_factory, demo_territory, territory_directory
) -> None:
    broker = await broker_factory(territory_directory(demo_territory))
    conn = await broker.gateway()
    try:
        messages = [
            Outgoing(f"ref.quar.TEST_{i % 2}", b"quarantined", msg_id=f"quar-test:{i}")
            for i in range(12)
        ]
        results = await publish_many(conn, messages, atomic_min=2)
        assert all(isinstance(r, Published) and r.stored for r in results)
        assert broker.stream_counts()["QUARANTINE"] == 12
    finally:
        await conn.close()


async def test_publishes_of_one_turn_go_as_one_batch(
    broker_factory, demo_territory, territory_directory
) -> None:
    broker = await broker_factory(territory_directory(demo_territory))
    conn = await broker.gateway()
    try:
        records = [(f"test:{i}", f'{{"n":{i}}}'.encode()) for i in range(60)]
        results = await asyncio.gather(
            *(publish(conn, RECORD_SUBJECT, data, msg_id=mid) for mid, data in records)
        )
        assert [r.duplicate for r in results] == [False] * 60
        stored = [m async for m in read_stream(conn, "AUDIT")]
        assert [m.headers["Nats-Msg-Id"] for m in stored] == [mid for mid, _ in records]
        assert len({m.headers[BATCH_ID] for m in stored}) == 1
        assert [m.seq for m in stored] == [r.seq for r in results]
        # once more: duplicates, each told so, nothing stored twice
        again = await asyncio.gather(
            *(publish(conn, RECORD_SUBJECT, data, msg_id=mid) for mid, data in records)
        )
        assert all(r.duplicate for r in again)
        # a conditional publish is never part of a batch
        checkpoint = await publish(
            conn, "ref.audit.ckpt", b"{}", msg_id="test:ckpt", expect_last_subject_seq=0
        )
        assert checkpoint.stored
        last = await get_message(conn, "AUDIT", checkpoint.seq)
        assert last is not None
        assert BATCH_ID not in last.headers
        assert broker.stream_counts()["AUDIT"] == 61
    finally:
        await conn.close()


async def test_router_batch_routes_once_even_when_redelivered(
    broker_factory, demo_territory, territory_directory, sealer
) -> None:
    t = demo_territory
    broker = await broker_factory(territory_directory(t))
    gateway = await broker.gateway()
    sender = await broker.partner(GEND)
    try:
        envelopes = [
            sealer(t, EventType.RUNAWAY_ALERT, sample_event(EventType.RUNAWAY_ALERT), sender=GEND)
            for _ in range(15)
        ]
        for envelope in envelopes:
            await sender.js_publish(
                f"ref.in.{GEND}", envelope, msg_id=str(peek_header(envelope).event_id)
            )
        # the same event id again under another message id: a replay
        await sender.js_publish(f"ref.in.{GEND}", envelopes[0], msg_id="replayed")
        batch: list[Any] = []
        while len(batch) < 16:
            batch += await gateway.fetch("INGRESS", "router", 16 - len(batch), expires=2.0)
        router = Router(
            gateway,
            Policy(t.directory, default_rules()),
            t.identities["gateway"],
            config=RouterConfig(atomic_min=4),
        )
        outcomes = await router.handle_batch(batch)
        routed = [o for o in outcomes if isinstance(o, Routed)]
        quarantined = [o for o in outcomes if isinstance(o, Quarantined)]
        assert len(routed) == 15
        assert [q.reason for q in quarantined] == [Reason.REPLAY]
        # the copies, and the rejection signed for the sender of the replay
        copies = sum(len(peek_header(e).recipient_ids) for e in envelopes) + 1
        assert broker.stream_counts()["DELIVERY"] == copies

        # Redelivered (a router died before its acks): routed again, nothing stored twice.
        outcomes = await router.handle_batch(batch)
        assert sum(isinstance(o, Routed) for o in outcomes) == 15
        assert broker.stream_counts()["DELIVERY"] == copies
        records = [
            decode_record(m.data)
            async for m in read_stream(gateway, "AUDIT")
            if m.subject == RECORD_SUBJECT
        ]
        assert sorted(r["kind"] for r in records) == ["QUARANTINED"] + ["ROUTED"] * 15
        stored = [await get_message(gateway, "DELIVERY", seq) for seq in range(1, copies + 1)]
        batched = [m for m in stored if m is not None and BATCH_ID in m.headers]
        assert len(batched) == copies - 1  # the copies went as one batch, the rejection alone
    finally:
        await sender.close()
        await gateway.close()


def _sealed_for(territory: Any, partner: str, priority: Priority, event_type: EventType) -> bytes:
    keys = territory.identities[partner]
    return seal(
        event_type,
        sample_event(event_type, addressed_to=partner),
        sender=territory.identities[CRIP],
        partnership=territory.partnership,
        recipients=[Recipient(partner, keys.key_id, keys.box_pk)],
        departement="93",
        priority=priority,
    )


async def test_a_flash_batch_interrupts_a_routine_batch(
    agent_kit, demo_territory, monkeypatch
) -> None:
    # Look for a more urgent batch after every message (not after 1 ms of work).
    monkeypatch.setattr(receiving, "PREEMPT_SECONDS", 0.0)
    # Only the connection runs: this test drives the receiver by hand.
    monkeypatch.setattr(Agent, "_spawn", _spawn_link_only)
    kit = await agent_kit(demo_territory, sync_always=False)  # the subject is order
    routine = [
        _sealed_for(demo_territory, FOYER, Priority.ROUTINE, EventType.CARE_ORIENTATION)
        for _ in range(10)
    ]
    flash = _sealed_for(demo_territory, FOYER, Priority.FLASH, EventType.CARE_ORIENTATION)
    for envelope in [*routine, flash]:
        await kit.deliver(envelope)
    async with Agent(kit.settings(FOYER)) as agent:
        await kit.until(lambda: agent.readiness().nats, what="connected")
        receiver, conn = agent._receiver, agent._link.conn
        assert receiver is not None
        assert conn is not None
        routine_msgs = await _pull(conn, FOYER, Priority.ROUTINE, 10)
        receiver._slots[Priority.FLASH].put_nowait(await _pull(conn, FOYER, Priority.FLASH, 1))

        await receiver.handle(Priority.ROUTINE, routine_msgs)
        assert await agent.inbox() == []  # one examined, then put aside for the FLASH batch
        taken = receiver._take()
        assert taken is not None
        assert taken[0] is Priority.FLASH
        await receiver.handle(*taken)
        taken = receiver._take()  # the routine batch again, before any new one
        assert taken is not None
        assert taken[0] is Priority.ROUTINE
        assert taken[1] == routine_msgs
        assert len(taken[2]) == 1  # taken up where it stopped
        await receiver.handle(*taken)
        assert receiver._take() is None

        items = await agent.inbox(limit=100)
        await kit.until(lambda: _idle(kit, FOYER), what="every delivery acknowledged")
    order = [str(i.event_id) for i in items]
    ids = [str(peek_header(e).event_id) for e in [*routine, flash]]
    assert order == [ids[10], *ids[:10]]


def _spawn_link_only(self: Agent) -> None:
    self._tasks = [asyncio.create_task(self._link.run(self._stop))]


async def _pull(conn: Any, partner: str, priority: Priority, count: int) -> list[Any]:
    msgs: list[Any] = []
    while len(msgs) < count:
        msgs += await conn.fetch("DELIVERY", f"out-{partner}-{priority.label}", count - len(msgs))
    return msgs


async def _idle(kit: Any, partner: str) -> bool:
    gateway = await kit.broker.gateway()
    try:
        for priority in Priority:
            name = f"out-{partner}-{priority.label}"
            info = await gateway.api(f"$JS.API.CONSUMER.INFO.DELIVERY.{name}")
            if info["num_pending"] or info["num_ack_pending"]:
                return False
    finally:
        await gateway.close()
    return True


async def test_receipts_acknowledgements_recorded_lazily_are_resent_once(
    agent_kit, demo_territory
) -> None:
    kit = await agent_kit(demo_territory)
    envelopes = [
        _sealed_for(demo_territory, FOYER, Priority.URGENT, EventType.CARE_ORIENTATION)
        for _ in range(5)
    ]
    settings = kit.settings(FOYER)
    async with Agent(settings):
        for envelope in envelopes:
            await kit.deliver(envelope)
        await kit.until(lambda: _receipt_entries(kit, 5), what="receipts")
    statements = len(await kit.read_stream("RECEIPTS"))
    database = Path(settings.database)
    assert _unrecorded(database) == 0  # stopping records every acknowledgement
    # A crash before the acknowledgements were recorded: they are published again...
    with sqlite3.connect(database) as db:
        db.execute("UPDATE statements SET published_at = NULL")
    assert _unrecorded(database) == statements
    async with Agent(settings):
        await kit.until(lambda: _unrecorded(database) == 0, bound=30, what="re-sent")
    # ...and stored once (same Nats-Msg-Id within the duplicate window).
    assert len(await kit.read_stream("RECEIPTS")) == statements


async def _receipt_entries(kit: Any, count: int) -> bool:
    from relais.schemas.statements import verify_statement

    entries = 0
    for msg in await kit.read_stream("RECEIPTS"):
        statement = verify_statement(msg.data, keys=kit.territory.keys())
        entries += len(statement.record["entries"])
    return entries >= count


def _unrecorded(database: Path) -> int:
    with sqlite3.connect(database) as db:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM statements WHERE published_at IS NULL"
        ).fetchone()
    return int(count)


@pytest.mark.parametrize("atomic_min", [0, 2])
async def test_publish_many_reports_each_failure(
    broker_factory, demo_territory, territory_directory, atomic_min
) -> None:
    broker = await broker_factory(territory_directory(demo_territory))
    conn = await broker.gateway()
    try:
        good = _copies(3)
        bad = Outgoing("ref.out.nowhere", b"?", msg_id="nowhere")  # no stream takes it
        results = await publish_many(conn, [good[0], bad, good[1], good[2]], atomic_min=atomic_min)
        assert isinstance(results[1], Exception)
        assert all(isinstance(r, Published) for i, r in enumerate(results) if i != 1)
        assert broker.stream_counts()["DELIVERY"] == 3
    finally:
        await conn.close()
