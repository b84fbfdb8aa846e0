"""No single tracker whose loss stops an escalation: rebuild, standby takeover, one active.

A real nats-server (the demo territory), a router, and trackers run as the gateway runs them
(:class:`~relais.gateway.active.ActiveTracker`, each with its own SQLite store and its own
connection with the tracker credential). Runaway alerts get a short deadline through the
rules. A tracker "dies" by losing its connection and its task at once (no clean release of
the lease, as after a SIGKILL); "losing its host" also deletes its data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relais.broker_config.embedded import stop_process
from relais.broker_config.rules import default_rules_text, load_rules, with_deadline
from relais.gateway.active import ActiveTracker
from relais.gateway.audit import RECORD_SUBJECT, decode_record
from relais.gateway.jetstream import read_stream
from relais.gateway.lease import Lease, LeaseConfig
from relais.gateway.policy import Policy
from relais.gateway.tracker import Tracker, TrackerConfig
from relais.gateway.tracker_store import EventState, TrackerStore
from relais.schemas.domain import EventType
from relais.schemas.envelope import peek_header
from relais.schemas.samples import sample_event
from relais.schemas.statements import sign_statement

GEND = "gend-93-bobigny"
CRIP = "crip-93"
DEADLINE_S = 6
BOUND = 30.0  # upper bound of a wait, not a performance target
LEASE = LeaseConfig(ttl_ms=2000, margin_ms=500)


@pytest.fixture(scope="module")
def world(demo_territory, territory_directory, broker_launcher, tmp_path_factory) -> Iterator[Any]:
    broker = broker_launcher(
        Path(tmp_path_factory.mktemp("ha")), territory_directory(demo_territory)
    )
    try:
        yield broker
    finally:
        stop_process(broker.server.pid)


@pytest.fixture(scope="module")
def rules():
    return load_rules(with_deadline(default_rules_text(), "runaway-alert", DEADLINE_S))


@dataclass
class Running:
    """One tracker process, as far as the broker can tell."""

    active: ActiveTracker
    store: TrackerStore
    conn: Any
    task: asyncio.Task[None]
    stop: asyncio.Event
    root: Path

    async def kill(self, *, lose_disk: bool = False) -> None:
        """Gone at once: connection and task, no lease released; optionally its disk."""
        await self.conn.close()
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task
        self.store.close()
        if lose_disk:
            shutil.rmtree(self.root)

    async def shutdown(self) -> None:
        self.stop.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self.task, 15)
        await self.conn.close()
        self.store.close()


@pytest.fixture
async def trackers(world, demo_territory, rules, tmp_path) -> AsyncIterator[Any]:
    started: list[Running] = []

    async def start(name: str) -> Running:
        root = tmp_path / name
        store = TrackerStore(root / "tracker.sqlite3")
        conn = await world.tracker()
        policy = Policy(demo_territory.directory, rules)
        tracker = Tracker(
            conn,
            store,
            policy,
            demo_territory.identities["gateway"],
            config=TrackerConfig(tick=0.1),
        )
        active = ActiveTracker(tracker, store, conn, Lease(conn, config=LEASE, holder=name))
        stop = asyncio.Event()
        running = Running(active, store, conn, asyncio.create_task(active.run(stop)), stop, root)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            if not running.task.done():
                await running.shutdown()


async def until(check, what: str, bound: float = BOUND):
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        value = await check() if asyncio.iscoroutinefunction(check) else check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(what)


async def records(conn, kind: str) -> list[dict[str, Any]]:
    found = []
    async for msg in read_stream(conn, "AUDIT"):
        if msg.subject == RECORD_SUBJECT and (record := decode_record(msg.data))["kind"] == kind:
            found.append(record)
    return found


async def publish_alerts(world, territory, sealer, rules, count: int) -> list[str]:
    conn = await world.partner(GEND)
    ids = []
    try:
        for _ in range(count):
            record = sample_event(
                EventType.RUNAWAY_ALERT, prostitution_suspected=False, in_care=False
            )
            data = sealer(territory, EventType.RUNAWAY_ALERT, record, sender=GEND, rules=rules)
            event_id = str(peek_header(data).event_id)
            await conn.js_publish(f"ref.in.{GEND}", data, msg_id=event_id)
            ids.append(event_id)
    finally:
        await conn.close()
    return ids


async def take_in_charge(world, territory, event_id: str) -> None:
    from datetime import UTC, datetime

    record = {
        "recipient": CRIP,
        "entries": [
            {
                "event_id": event_id,
                "state": "TAKEN_IN_CHARGE",
                "decline_reason": None,
                "outcome": None,
                "at": datetime.now(UTC),
            }
        ],
    }
    data = sign_statement(
        EventType.RECEIPT,
        record,
        signer=territory.identities[CRIP],
        partnership=territory.partnership,
    )
    conn = await world.partner(CRIP)
    try:
        await conn.js_publish(f"ref.rcpt.{CRIP}", data, msg_id=f"{event_id}:{CRIP}:taken")
    finally:
        await conn.close()


def lateness(escalated: list[dict[str, Any]], routed: dict[str, dict[str, Any]]) -> list[int]:
    return sorted(r["at"] - routed[r["event_id"]]["deadline_at"] for r in escalated)


@pytest.mark.slow
async def test_host_lost_a_fresh_tracker_escalates_every_open_alert(
    world, demo_territory, sealer, rules, gateway_runner, trackers
) -> None:
    """SIGKILL and the data directory deleted, alerts open: a fresh tracker rebuilds from the
    streams, escalates each on time, then processes the receipts that come afterwards."""
    await gateway_runner(world, demo_territory, roles=("router",), rules=rules)
    first = await trackers("first")
    await until(lambda: first.active.active, "the first tracker is active")
    ids = await publish_alerts(world, demo_territory, sealer, rules, 5)
    await until(lambda: all(first.store.event(uuid.UUID(i)) for i in ids), "learnt")
    await first.kill(lose_disk=True)
    await trackers("fresh")  # another host, an empty data directory
    admin = await world.gateway()
    try:

        async def all_escalated() -> bool:
            return {r["event_id"] for r in await records(admin, "ESCALATED")} >= set(ids)

        await until(all_escalated, "every open alert escalated by the fresh tracker")
        escalated = [r for r in await records(admin, "ESCALATED") if r["event_id"] in ids]
        assert len(escalated) == len(ids)  # each exactly once
        routed = {r["event_id"]: r for r in await records(admin, "ROUTED")}
        late = lateness(escalated, routed)
        print(f"escalation lateness after a host loss (ms): {late}")
        assert all(ms <= 5000 for ms in late), late
        # a receipt that arrives afterwards is processed
        await take_in_charge(world, demo_territory, ids[0])

        async def recorded() -> bool:
            return any(
                r["event_id"] == ids[0] and r["state"] == "TAKEN_IN_CHARGE"
                for r in await records(admin, "RECEIPT")
            )

        await until(recorded, "the late receipt is processed")
    finally:
        await admin.close()


@pytest.mark.slow
async def test_the_standby_takes_over_and_nothing_happens_twice(
    world, demo_territory, sealer, rules, gateway_runner, trackers
) -> None:
    """Two trackers: one active, one standby. An alert taken in charge is never escalated,
    the others are escalated once each; the active one dies, the standby escalates on time."""
    await gateway_runner(world, demo_territory, roles=("router",), rules=rules)
    one, two = await trackers("one"), await trackers("two")
    await until(lambda: one.active.active or two.active.active, "one tracker is active")
    await asyncio.sleep(LEASE.renew_every * 3)
    assert [one.active.active, two.active.active].count(True) == 1
    leader, standby = (one, two) if one.active.active else (two, one)
    ids = await publish_alerts(world, demo_territory, sealer, rules, 3)
    await take_in_charge(world, demo_territory, ids[0])
    await until(
        lambda: all(standby.store.event(uuid.UUID(i)) for i in ids), "the standby learnt them"
    )
    await leader.kill()
    admin = await world.gateway()
    try:

        async def escalated_others() -> bool:
            found = {r["event_id"] for r in await records(admin, "ESCALATED")}
            return found >= set(ids[1:])

        await until(escalated_others, "the standby escalates the unanswered alerts")
        await asyncio.sleep(1.0)  # a double escalation would show by now
        escalated = [r for r in await records(admin, "ESCALATED") if r["event_id"] in ids]
        assert sorted(r["event_id"] for r in escalated) == sorted(ids[1:])  # once, not ids[0]
        assert standby.active.active
        assert standby.store.event(uuid.UUID(ids[0])).state is EventState.TAKEN
        routed = {r["event_id"]: r for r in await records(admin, "ROUTED")}
        late = lateness(escalated, routed)
        print(f"escalation lateness after the active tracker's loss (ms): {late}")
        assert all(ms <= 5000 for ms in late), late
    finally:
        await admin.close()


@pytest.mark.slow
async def test_a_receipt_stored_before_the_deadline_is_never_escalated(
    world, demo_territory, sealer, rules, gateway_runner, trackers
) -> None:
    """The take-in-charge is stored while no tracker runs; the tracker that starts after the
    deadline drains the receipts before it escalates."""
    await gateway_runner(world, demo_territory, roles=("router",), rules=rules)
    first = await trackers("before")
    await until(lambda: first.active.active, "active")
    ids = await publish_alerts(world, demo_territory, sealer, rules, 1)
    await until(lambda: first.store.event(uuid.UUID(ids[0])), "learnt")
    await first.shutdown()  # a clean stop: the lease is released
    await take_in_charge(world, demo_territory, ids[0])
    await asyncio.sleep(DEADLINE_S + 0.5)  # the deadline passes while no tracker runs
    again = await trackers("before")  # the same data directory
    await until(lambda: again.active.active, "active again")
    await until(lambda: again.store.event(uuid.UUID(ids[0])).state is EventState.TAKEN, "taken")
    admin = await world.gateway()
    try:
        assert [r for r in await records(admin, "ESCALATED") if r["event_id"] == ids[0]] == []
    finally:
        await admin.close()
