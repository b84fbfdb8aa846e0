"""Backup and restore of an agent (real broker, real agents, a real webhook receiver).

* The CRIP's agent receives two alerts (webhooks, receipts), is backed up while it runs
  (online backup API), receives two more, and is killed. Its database is restored from the
  backup (refused while the agent runs), the hub recreates its delivery consumers, a fifth
  alert comes, and the agent starts again: the five events are in its inbox exactly once, and
  no ``DELIVERED`` receipt entry and no webhook call was made twice for any event id.
* The gendarmerie's agent queues an event while the broker is unreachable, is backed up,
  publishes it, and is restored from the backup where it was still queued: it publishes it
  again with the same ``Nats-Msg-Id``, and INGRESS holds it once.
* A gateway backup restores the tracker's database, and is refused while a tracker runs.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from relais.agents.backup import (
    held_lock,
    read_manifest,
    restore_database,
    write_backup,
)
from relais.agents.keys import write_atomic
from relais.agents.runtime import Agent
from relais.agents.store import AgentStore
from relais.agents.territory import build_territory
from relais.cli.backup_cmd import acked_floors, redeliver
from relais.gateway.tracker_store import TrackerStore, lock_path
from relais.schemas.domain import EventType
from relais.schemas.errors import ConfigError
from relais.schemas.samples import sample_event
from relais.schemas.statements import verify_statement

CRIP = "crip-93"
GEND = "gend-93-bobigny"
BOUND = 30.0


def _webhooks(kit: Any, receiver: Any) -> dict[str, Any]:
    path = kit.root / "secrets" / "webhook.secret"
    if not path.exists():
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_atomic(path, b"whsec_" + b"c2VjcmV0LWRlLXRlc3QtcG91ci1sZXMtd2ViaG9va3M=" + b"\n")
    return {
        "webhook_url": receiver.url,
        "webhook_secret_file": path,
        "webhook_backoff_initial_seconds": 0.05,
        "webhook_backoff_max_seconds": 0.2,
    }


def _inbox_ids(database: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return [r[0] for r in db.execute("SELECT event_id FROM inbox")]


async def _delivered_entries(kit: Any, territory: Any) -> Counter[str]:
    """How many ``DELIVERED`` receipt entries were published, per event id."""
    counts: Counter[str] = Counter()
    for msg in await kit.read_stream("RECEIPTS"):
        statement = verify_statement(msg.data, keys=territory.keys(), expected=EventType.RECEIPT)
        for entry in statement.record["entries"]:
            if entry["state"] == "DELIVERED":
                counts[str(entry["event_id"])] += 1
    return counts


async def _idle(kit: Any, partner: str) -> bool:
    conn = await kit.broker.gateway()
    try:
        for priority in ("FLASH", "URGENT", "ROUTINE"):
            info = await conn.api(f"$JS.API.CONSUMER.INFO.DELIVERY.out-{partner}-{priority}")
            if info["num_pending"] or info["num_ack_pending"]:
                return False
        return True
    finally:
        await conn.close()


async def _alert(kit: Any) -> str:
    record = sample_event(EventType.RUNAWAY_ALERT, in_care=False, prostitution_suspected=False)
    header = await kit.deliver(kit.seal(EventType.RUNAWAY_ALERT, record, sender=GEND), to=[CRIP])
    return str(header.event_id)


async def test_restored_agent_loses_nothing_and_repeats_nothing(
    agent_kit, webhook_receiver, tmp_path
) -> None:
    t = build_territory()
    kit = await agent_kit(t)
    settings = kit.settings(CRIP, **_webhooks(kit, webhook_receiver))
    backup = tmp_path / "backup"
    events: list[str] = []

    async def settled(agent: Any, count: int) -> bool:
        receipts = await _delivered_entries(kit, t)
        called = {c["id"] for c in webhook_receiver.delivered()}
        return (
            len(await agent.inbox(limit=100)) == count
            and set(events) <= set(receipts)
            and set(events) <= called
            and await _idle(kit, CRIP)
        )

    async with Agent(settings) as agent:
        events += [await _alert(kit), await _alert(kit)]
        await kit.until(lambda: settled(agent, 2), bound=BOUND, what="two alerts handled")
        with pytest.raises(ConfigError), held_lock(settings.data_dir / "agent.lock", "an agent"):
            pass  # a live store is never restored over
        write_backup(
            backup, role="agent", partner=CRIP, database=settings.database, keys=settings.key_files
        )
        events += [await _alert(kit), await _alert(kit)]
        await kit.until(lambda: settled(agent, 4), bound=BOUND, what="two more handled")
    # killed: the database is replaced by yesterday's backup
    floors = await acked_floors(settings)
    manifest = read_manifest(backup, role="agent", partner=CRIP)
    with held_lock(settings.data_dir / "agent.lock", "an agent"):
        aside = restore_database(backup, manifest, settings.database)
        store = AgentStore(settings.database)
        store.set_restored(floors)
        store.close()
    assert aside is not None
    assert any(aside.iterdir())
    assert sorted(_inbox_ids(settings.database)) == sorted(events[:2])
    admin = await kit.broker.gateway()
    try:
        assert len(await redeliver(admin, CRIP)) == 3
    finally:
        await admin.close()
    events.append(await _alert(kit))
    async with Agent(settings) as agent:
        await kit.until(lambda: settled(agent, 5), bound=BOUND, what="the restored inbox")
    inbox = _inbox_ids(settings.database)
    assert sorted(inbox) == sorted(events)  # every event, exactly once (five rows)
    receipts = await _delivered_entries(kit, t)
    assert {e: receipts[e] for e in events} == dict.fromkeys(events, 1)
    calls = Counter(c["id"] for c in webhook_receiver.delivered())
    assert {e: calls[e] for e in events} == dict.fromkeys(events, 1)


def _unreachable_url() -> str:
    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens
        sock.bind(("127.0.0.1", 0))
        return f"nats://127.0.0.1:{sock.getsockname()[1]}"


async def _ingress_copies(kit: Any, event_id: str) -> int:
    return sum(
        1 for m in await kit.read_stream("INGRESS") if m.headers.get("Nats-Msg-Id") == event_id
    )


async def test_restored_outbox_sends_nothing_twice(agent_kit, tmp_path) -> None:
    t = build_territory()
    kit = await agent_kit(t)
    offline = kit.settings(GEND, nats_url=_unreachable_url())
    record = sample_event(EventType.RUNAWAY_ALERT, in_care=False, prostitution_suspected=False)
    async with Agent(offline) as agent:
        sub = await agent.submit("runaway_alert", record)
        assert (await agent.sent_event(sub.event_id)).state.value == "queued"
    backup = tmp_path / "backup"
    write_backup(
        backup, role="agent", partner=GEND, database=offline.database, keys=offline.key_files
    )
    settings = kit.settings(GEND)
    event_id = str(sub.event_id)

    async def published(agent: Any) -> bool:
        sent = await agent.sent_event(event_id)
        return sent.state.value == "published" and await _ingress_copies(kit, event_id) >= 1

    async with Agent(settings) as agent:
        await kit.until(lambda: published(agent), bound=BOUND, what="the first publication")
    manifest = read_manifest(backup, role="agent", partner=GEND)
    with held_lock(settings.data_dir / "agent.lock", "an agent"):
        restore_database(backup, manifest, settings.database)
    store = AgentStore(settings.database)
    assert store.sent(event_id).state.value == "queued"  # the backup had not published it
    store.close()
    async with Agent(settings) as agent:
        await kit.until(lambda: published(agent), bound=BOUND, what="the second attempt")
    assert await _ingress_copies(kit, event_id) == 1


def test_gateway_backup_and_restore(tmp_path) -> None:
    database = tmp_path / "gateway" / "tracker.sqlite3"
    store = TrackerStore(database)
    store.set_mark("INGRESS", 7)
    key = tmp_path / "gateway.key"
    write_atomic(key, b"relais-key/1 encrypted bytes stand here\n")
    backup = tmp_path / "backup"
    manifest = write_backup(
        backup, role="gateway", partner="gateway", database=database, keys=[key]
    )
    assert (backup / "keys" / "gateway.key").read_bytes() == key.read_bytes()
    assert (backup / database.name).stat().st_mode & 0o077 == 0
    store.set_mark("INGRESS", 9)
    with pytest.raises(ConfigError), held_lock(lock_path(database), "a tracker"):
        pass  # the tracker runs
    store.close()
    with pytest.raises(ConfigError):
        read_manifest(backup, role="agent", partner="gateway")
    assert read_manifest(backup, role="gateway", partner="gateway") == manifest
    with held_lock(lock_path(database), "a tracker"):
        restore_database(backup, manifest, database)
    store = TrackerStore(database)
    try:
        assert store.mark("INGRESS") == 7
    finally:
        store.close()
