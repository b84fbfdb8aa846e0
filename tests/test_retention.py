"""Retention enforced with evidence (real broker, gateway and agents).

The territory's signed directory sets every limit to seconds (records 2 s, audit 10 s). A
gendarmerie agent sends a runaway alert; the CRIP's agent receives it and takes it in
charge; a forged message is quarantined. Then, reading each store directly:

* INGRESS, DELIVERY, RECEIPTS and QUARANTINE hold no message any more (nats-server's
  ``max_age``, set by ``provision`` from the directory), nor do the agents' inbox and outbox
  tables, nor the tracker's events table;
* the audit log holds the ``PURGED`` records of the tracker and of the four streams, and
  each agent's ``purges`` table records what it forgot (metadata only);
* once the oldest audit records are dropped by age, ``relais audit verify`` still passes:
  the chain is verified from the signed checkpoint where the retained log begins.

Plus the model's own rules (minimums, audit outlives the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from relais.agents.runtime import Agent
from relais.agents.territory import build_territory
from relais.broker_config.directory import Directory, sign_directory
from relais.broker_config.retention import STREAM_RETENTION, Retention
from relais.broker_config.streams import with_retention
from relais.cli.app import app
from relais.gateway.audit import decode_record, verify_audit
from relais.gateway.jetstream import read_stream
from relais.gateway.keeper import Keeper, KeeperConfig
from relais.gateway.policy import Policy
from relais.gateway.service import publish_directory
from relais.schemas.domain import EventType
from relais.schemas.samples import sample_event

GEND = "gend-93-bobigny"
CRIP = "crip-93"
RECORD_STREAMS = ("INGRESS", "DELIVERY", "RECEIPTS", "QUARANTINE")
BOUND = 60.0  # upper bound of the waits, not a target
SHORT = Retention(
    ingress_seconds=2,
    delivery_seconds=2,
    receipts_seconds=2,
    quarantine_seconds=2,
    audit_seconds=10,
    agent_inbox_seconds=2,
    agent_unanswered_seconds=2,
    agent_outbox_seconds=2,
    tracker_closed_seconds=2,
)


def test_limits_are_validated() -> None:
    with pytest.raises(ValidationError):
        Retention(ingress_seconds=0)
    with pytest.raises(ValidationError):
        Retention(audit_seconds=60, ingress_seconds=120)  # evidence must outlive the data
    with pytest.raises(ValidationError):
        Retention(delivery_seconds=100 * 86_400)  # an agent would forget what may come again
    defaults = Retention()
    assert defaults.audit_seconds == 365 * 86_400
    ages = {s.name: s.max_age for s in with_retention(SHORT)}
    assert {n: ages[n] for n in STREAM_RETENTION} == {
        "INGRESS": 2.0,
        "DELIVERY": 2.0,
        "RECEIPTS": 2.0,
        "QUARANTINE": 2.0,
        "AUDIT": 10.0,
    }
    assert ages["SEEN"] == 8 * 86_400  # not governed: the router's replay window
    config = next(s for s in with_retention(SHORT) if s.name == "INGRESS").config()
    assert config.duplicate_window == 2.0  # nats-server wants it within max_age


def _short_territory() -> Any:
    t = build_territory()
    fields = {name: getattr(t.directory, name) for name in Directory.model_fields}
    directory = Directory.model_validate({**fields, "retention": SHORT})
    return dataclasses.replace(
        t, directory=directory, signed_directory=sign_directory(directory, t.root)
    )


def _count(database: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608


def _purges(database: Path) -> list[tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return [(r[0], r[1]) for r in db.execute("SELECT store, count FROM purges")]


async def _stream_state(conn: Any, name: str) -> dict[str, Any]:
    info = await conn.api(f"$JS.API.STREAM.INFO.{name}")
    return {**info["state"], "max_age": info["config"].get("max_age", 0)}


async def _purged_stores(conn: Any, seen: set[str]) -> set[str]:
    async for msg in read_stream(conn, "AUDIT"):
        if msg.subject == "ref.audit.rec":
            record = decode_record(msg.data)
            if record["kind"] == "PURGED":
                assert set(record) == {"kind", "v", "store", "count", "up_to", "at"} | (
                    {"first_seq"} if record["store"] != "tracker" else set()
                )
                seen.add(record["store"])
    return seen


async def test_nothing_older_than_the_limit_remains(agent_kit, gateway_runner) -> None:
    t = _short_territory()
    kit = await agent_kit(t)
    run = await gateway_runner(kit.broker, t, checkpoint_seconds=0.3)
    policy = Policy(t.directory, run.router.policy.rules)
    assert await publish_directory(run.conn, t.signed_directory, policy, t.root_public_key)
    for name in STREAM_RETENTION:
        expected = SHORT.stream_max_age(name)
        assert (await _stream_state(run.conn, name))["max_age"] == int(expected * 1e9)
    keeper = Keeper(
        run.conn,
        run.store,
        lambda: policy,
        config=KeeperConfig(every_seconds=0.3, monitor_url=kit.broker.monitor_url),
    )
    keeper_task = asyncio.create_task(keeper.run(run.stop))
    gend_settings, crip_settings = kit.settings(GEND), kit.settings(CRIP)
    async with Agent(gend_settings) as gend, Agent(crip_settings) as crip:
        record = sample_event(EventType.RUNAWAY_ALERT, in_care=False, prostitution_suspected=False)
        sub = await gend.submit("runaway_alert", record)
        await kit.until(lambda: crip.inbox_item(sub.event_id), what="the delivery")
        await crip.take_charge(sub.event_id)
        forger = await kit.broker.partner(GEND)
        try:
            await forger.js_publish(f"ref.in.{GEND}", b"not an envelope", msg_id="forged-1")
        finally:
            await forger.close()
        await kit.until(
            lambda: (
                run.store.event(sub.event_id) is not None
                and run.store.event(sub.event_id).state.value == "taken"
            ),
            what="the take-charge at the tracker",
        )
        seen: set[str] = set()

        async def all_forgotten() -> bool:
            states = [await _stream_state(run.conn, n) for n in RECORD_STREAMS]
            stores = [
                _count(s.database, table)
                for s in (gend_settings, crip_settings)
                for table in ("inbox", "outbox")
            ]
            events = _tracker_events(run)
            await _purged_stores(run.conn, seen)
            return (
                all(s["messages"] == 0 and s["first_seq"] > 1 for s in states)
                and stores == [0, 0, 0, 0]
                and events == 0
                and {"tracker", *RECORD_STREAMS} <= seen
            )

        await kit.until(all_forgotten, bound=BOUND, what="every store to forget")
        assert ("outbox", 1) in _purges(gend_settings.database)
        assert ("inbox", 1) in _purges(crip_settings.database)

        async def verified_after_expiry() -> Any:
            state = await _stream_state(run.conn, "AUDIT")
            if state["first_seq"] <= 1 or state["messages"] == 0:
                return None
            report = await verify_audit(
                run.conn, keys=policy.keys, partnership=t.directory.partnership
            )
            return report if report.ok and report.retained_from > 1 else None

        report = await kit.until(verified_after_expiry, bound=BOUND, what="a retained chain")
        assert report.records >= 1
    cli = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        [
            "audit",
            "verify",
            "--root-public-key",
            str(kit.root / "root.pub"),
            "-s",
            kit.broker.client_url,
            "--creds",
            str(kit.broker.operator_creds),
            "--json",
        ],
        env={"RELAIS_SERVER": None, "NATS_URL": None, "RELAIS_CREDS": None},
        prog_name="relais",
    )
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["ok"] is True
    run.stop.set()
    await keeper_task


def _tracker_events(run: Any) -> int:
    """Rows of the tracker's events table, read on the tracker's own connection."""
    return int(run.store._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
