"""The operator views: ``relais.gateway.flows`` on hand-built records, then every command.

* Without a broker: :class:`FlowBook` folds audit records built by hand (statuses, records
  in any order, pending and overdue at a given ``now``, small-count suppression, traces,
  the routing metadata that is never shown).
* Against a real nats-server (one for the module): the gateway runs in-process (router,
  tracker, checkpointer) while partners publish five events with a canary string in their
  content: a runaway alert taken in charge, one left alone until it escalates (3 s
  deadline), a danger declaration only delivered, a medical referral the CRIP declines, and
  a forged alert the router quarantines. The gateway is stopped, then every operator
  command runs through Typer's CliRunner with ``--json`` (parsed and checked) and without,
  and the canary must appear in none of their outputs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from relais.broker_config.embedded import stop_process
from relais.broker_config.rules import default_rules_text, load_rules, with_deadline
from relais.cli.app import app
from relais.gateway.checkpoint import Checkpointer
from relais.gateway.flows import (
    SHOWN_ROUTING_KEYS,
    SUPPRESSED,
    DeliveryState,
    FlowBook,
    FlowStatus,
    month_of,
    read_audit_records,
    suppress_small,
)
from relais.gateway.policy import Policy
from relais.gateway.router import Router, RouterConfig
from relais.gateway.service import publish_directory
from relais.gateway.tracker import Tracker, TrackerConfig
from relais.gateway.tracker_store import TrackerStore
from relais.schemas.domain import EventType
from relais.schemas.envelope import peek_header
from relais.schemas.samples import sample_event
from relais.schemas.statements import sign_statement

CANARY = "TEMOIN-CANARI-OPERATEUR-4F"
GEND = "gend-93-bobigny"
CRIP = "crip-93"
SCHOOL = "college-93-jaures"
HOSPITAL = "hopital-93-avicenne"
COORD = "coord-93"
PARQUET = "parquet-93-bobigny"
DEADLINE_S = 3
BOUND = 30.0  # upper bound of a wait, not a performance target
T0 = 1_760_000_000_000  # 2025-10-09, Unix milliseconds
ENV_CLEARED = {
    "RELAIS_SERVER": None,
    "NATS_URL": None,
    "RELAIS_CREDS": None,
    "RELAIS_ROOT_PUBLIC_KEY": None,
}


# -- FlowBook on hand-built records -----------------------------------------------------------


def routed(event_id: str, at: int, **over: Any) -> dict[str, Any]:
    record = {
        "kind": "ROUTED",
        "v": 1,
        "at": at,
        "event_id": event_id,
        "event_type": "runaway_alert",
        "sender": GEND,
        "recipients": [CRIP, "ase-93"],
        "fallback": [COORD, PARQUET],
        "rule": "runaway-alert@1",
        "priority": "FLASH",
        "departement": "93",
        "routing": {"child_dept": "93", "in_care": "true", "prostitution_suspected": "true"},
        "closes_case": False,
        "ingress_seq": 1,
        "digest": "00" * 32,
        "created_at": at - 50,
        "deadline_at": at + 900_000,
    }
    record.update(over)
    return record


def receipt(event_id: str, partner: str, state: str, at: int, reason: str | None = None):
    return {
        "kind": "RECEIPT",
        "v": 1,
        "at": at + 5,
        "event_id": event_id,
        "event_type": "runaway_alert",
        "partner": partner,
        "state": state,
        "decline_reason": reason,
        "receipt_at": at,
    }


def escalated(event_id: str, at: int, deadline_at: int) -> dict[str, Any]:
    return {
        "kind": "ESCALATED",
        "v": 1,
        "at": at,
        "event_id": event_id,
        "event_type": "runaway_alert",
        "sender": GEND,
        "rule": "runaway-alert@1",
        "priority": "FLASH",
        "deadline_at": deadline_at,
        "fallback": [COORD, PARQUET],
        "overdue": [CRIP, "ase-93"],
        "notice_id": str(uuid.uuid4()),
        "ingress_seq": 1,
        "released": True,
    }


def quarantined(event_id: str | None, at: int, reason: str = "BAD_SIGNATURE") -> dict[str, Any]:
    return {
        "kind": "QUARANTINED",
        "v": 1,
        "at": at,
        "event_id": event_id,
        "event_type": None,
        "sender": GEND,
        "claimed_sender": GEND,
        "reason": reason,
        "verified": False,
        "ingress_seq": 7,
    }


def ids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(n)]


def test_folding_statuses_and_what_is_shown(demo_territory) -> None:
    taken, alone, ended, declined, fresh = ids(5)
    records = [
        routed(taken, T0),
        receipt(taken, CRIP, "DELIVERED", T0 + 1000),
        receipt(taken, CRIP, "TAKEN_IN_CHARGE", T0 + 60_000),
        routed(alone, T0 + 1, deadline_at=T0 + 10_000),
        receipt(alone, CRIP, "DELIVERED", T0 + 2000),
        escalated(alone, T0 + 10_500, T0 + 10_000),
        receipt(alone, PARQUET, "TAKEN_IN_CHARGE", T0 + 70_000),
        routed(ended, T0 + 2),
        {
            "kind": "CLOSED",
            "v": 1,
            "at": T0 + 5000,
            "event_id": ended,
            "event_type": "runaway_alert",
            "sender": GEND,
            "closed_by": fresh,
            "closed_by_sender": GEND,
        },
        routed(declined, T0 + 3, event_type="danger_declaration", recipients=[CRIP]),
        receipt(declined, CRIP, "DECLINED", T0 + 4000, "NOT_COMPETENT"),
        # an older state after a final one changes nothing
        receipt(declined, CRIP, "DELIVERED", T0 + 5000),
        routed(fresh, T0 + 4, recipients=[CRIP], deadline_at=None),
    ]
    book = FlowBook.from_records(records, demo_territory.directory)
    status = {f.event_id: f.status for f in book.flows()}
    assert status == {
        taken: FlowStatus.TAKEN,
        alone: FlowStatus.TAKEN,  # by the fallback recipient, after the escalation
        ended: FlowStatus.CLOSED,
        declined: FlowStatus.DECLINED,
        fresh: FlowStatus.ROUTED,
    }
    assert [f.event_id for f in book.flows(limit=2)] == [fresh, declined]  # newest first
    a = book.get(alone)
    assert a.escalation is not None
    assert a.escalation.overdue == ("ase-93", CRIP)  # sorted
    parquet = a.deliveries[PARQUET]
    assert (parquet.role, parquet.kind, parquet.state) == (
        "fallback",
        "parquet",
        DeliveryState.TAKEN_IN_CHARGE,
    )
    assert parquet.take_delay_ms == 70_000 - 10_500  # from the escalation, not the routing
    assert book.get(taken).deliveries[CRIP].take_delay_ms == 60_000
    d = book.get(declined).deliveries[CRIP]
    assert (d.state, d.decline_reason) == (DeliveryState.DECLINED, "NOT_COMPETENT")
    # routing metadata that describes the child is dropped, whatever the record holds
    for flow in book.flows():
        assert set(flow.routing) <= SHOWN_ROUTING_KEYS
        assert "prostitution_suspected" not in json.dumps(flow.to_json())
    assert book.get(taken).routing == {"child_dept": "93"}
    assert book.awaiting_by_partner() == {CRIP: 1}  # only ``fresh`` awaits a decision
    assert book.flows(event_type="danger_declaration")[0].event_id == declined
    assert [f.event_id for f in book.flows(partner=PARQUET)] == [alone]  # once escalated
    assert [f.event_id for f in book.flows(since_ms=T0 + 3)] == [fresh, declined]


def test_records_in_any_order_fold_the_same(demo_territory) -> None:
    (event,) = ids(1)
    records = [
        routed(event, T0, deadline_at=T0 + 10_000),
        receipt(event, CRIP, "DELIVERED", T0 + 1000),
        escalated(event, T0 + 10_500, T0 + 10_000),
        receipt(event, COORD, "TAKEN_IN_CHARGE", T0 + 20_000),
    ]
    forward = FlowBook.from_records(records, demo_territory.directory).get(event).to_json()
    backward = FlowBook.from_records(records[::-1], demo_territory.directory).get(event).to_json()
    assert forward == backward
    assert forward["status"] == "taken_in_charge"
    assert forward["first_taken_at"] == T0 + 20_000


def test_pending_and_overdue_at_a_given_time() -> None:
    deadline, taken, no_deadline, all_declined, closed = ids(5)
    records = [
        routed(deadline, T0, deadline_at=T0 + 10_000),
        routed(taken, T0, deadline_at=T0 + 10_000),
        receipt(taken, "ase-93", "TAKEN_IN_CHARGE", T0 + 100),
        routed(no_deadline, T0, deadline_at=None, priority="ROUTINE"),
        receipt(no_deadline, CRIP, "DELIVERED", T0 + 100),
        routed(all_declined, T0, deadline_at=T0 + 10_000, recipients=[CRIP]),
        receipt(all_declined, CRIP, "DECLINED", T0 + 100, "DUPLICATE"),
        routed(closed, T0, deadline_at=T0 + 10_000),
        {"kind": "CLOSED", "v": 1, "at": T0 + 200, "event_id": closed},
    ]
    book = FlowBook.from_records(records)
    before, after = T0 + 9_999, T0 + 10_000
    assert [f.event_id for f in book.pending(before)] == [deadline, no_deadline]  # FLASH first
    assert book.overdue(before) == []
    assert [f.event_id for f in book.pending(after)] == [no_deadline]
    assert {f.event_id for f in book.overdue(after)} == {deadline, all_declined}
    late = book.get(deadline)
    assert late.waiting == ("ase-93", CRIP)
    assert late.escalation is None  # overdue whether or not the tracker escalated yet


def test_stats_suppress_small_counts(demo_territory) -> None:
    records = []
    events = ids(12)
    for i, event in enumerate(events):
        event_type = "runaway_alert" if i < 9 else "signalement"
        month_start = T0 if i < 11 else T0 + 40 * 86_400_000  # one event the next month
        records.append(
            routed(event, month_start + i, event_type=event_type, departement="93" if i else "75")
        )
        if i < 6:  # CRIP takes six in charge after 1..6 minutes
            records.append(
                receipt(event, CRIP, "TAKEN_IN_CHARGE", month_start + i + 60_000 * (i + 1))
            )
        if i < 2:  # the ASE two
            records.append(receipt(event, "ase-93", "TAKEN_IN_CHARGE", month_start + i + 1000))
    records.append(quarantined(None, T0))
    book = FlowBook.from_records(records, demo_territory.directory)
    published = book.stats().to_json()
    assert published["events"] == 12
    assert published["quarantined"] == SUPPRESSED
    assert published["escalated"] == 0
    assert published["by_type"] == {"runaway_alert": 9, "signalement": SUPPRESSED}
    assert published["by_departement"] == {"75": SUPPRESSED, "93": 11}
    assert published["by_month"] == {month_of(T0): 11, month_of(T0 + 40 * 86_400_000): "<5"}
    crip = published["delays"]["crip"]
    assert crip == {"samples": 6, "median_ms": 180_000, "p90_ms": 360_000}
    assert published["delays"]["ase"] == {"samples": "<5", "median_ms": None, "p90_ms": None}
    text = json.dumps(published)
    for small in (1, 2, 3, 4):  # no exact small count anywhere, in any shape
        assert f": {small}," not in text
        assert f": {small}}}" not in text
    assert [suppress_small(n) for n in (0, 1, 4, 5)] == [0, "<5", "<5", 5]


def test_trace_and_quarantine() -> None:
    routed_id, refused_id, unknown = ids(3)
    records = [
        routed(routed_id, T0),
        receipt(routed_id, CRIP, "DELIVERED", T0 + 10),
        quarantined(routed_id, T0 + 20, "REPLAY"),  # the same event published again
        quarantined(refused_id, T0 + 30),
        quarantined(None, T0 + 40, "BAD_MAGIC"),
        {"kind": "ROUTED", "v": 1, "at": T0},  # no event id: ignored, counted
        {"kind": "RECEIPT", "v": 1, "event_id": routed_id, "state": "NOPE", "at": T0},
    ]
    book = FlowBook.from_records(records)
    assert book.ignored == 2
    steps = [(s.step, s.partner) for s in book.trace(routed_id).steps]
    assert steps == [
        ("PUBLISHED", GEND),
        ("ROUTED", None),
        ("DELIVERED", CRIP),
        ("QUARANTINED", GEND),
    ]
    refused = book.trace(refused_id)
    assert refused.flow is None
    assert [q.reason for q in refused.quarantined] == ["BAD_SIGNATURE"]
    assert book.trace(unknown) is None
    assert [q.reason for q in book.quarantine()] == ["BAD_MAGIC", "BAD_SIGNATURE", "REPLAY"]
    assert [q.event_id for q in book.quarantine(reason="REPLAY")] == [routed_id]


# -- against a real broker and the real gateway -----------------------------------------------


@dataclass
class World:
    """The module's broker after the scenario, and what the commands need."""

    broker: Any
    root_key: Path
    directory_file: Path
    ids: dict[str, str]

    def broker_args(self) -> list[str]:
        return ["-s", self.broker.client_url, "--creds", str(self.broker.operator_creds)]

    def args(self, *command: str, directory: bool = True) -> list[str]:
        extra = ["--root-public-key", str(self.root_key)] if directory else []
        return [*command, *self.broker_args(), *extra]


def short_rules():
    return load_rules(with_deadline(default_rules_text(), "runaway-alert", DEADLINE_S))


async def _publish(broker, partner: str, kind: str, data: bytes) -> None:
    conn = await broker.partner(partner)
    try:
        await conn.js_publish(
            f"ref.{kind}.{partner}", data, msg_id=hashlib.sha256(data).hexdigest()
        )
    finally:
        await conn.close()


def _receipt(t, partner: str, event_id, state: str, reason: str | None = None) -> bytes:
    entry = {"event_id": event_id, "state": state, "decline_reason": reason}
    record = {"recipient": partner, "entries": [{**entry, "at": datetime.now(UTC)}]}
    return sign_statement(
        EventType.RECEIPT, record, signer=t.identities[partner], partnership=t.partnership
    )


async def _until_book(conn, check) -> FlowBook:
    deadline = time.monotonic() + BOUND
    while True:
        book = FlowBook.from_records((await read_audit_records(conn)).records)
        if check(book):
            return book
        assert time.monotonic() < deadline, "the scenario did not complete"
        await asyncio.sleep(0.1)


async def _scenario(broker, t, seal, database: Path) -> dict[str, str]:
    rules = short_rules()
    policy = Policy(t.directory, rules)
    signer = t.identities["gateway"]
    conn = await broker.gateway()
    store = TrackerStore(database)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(Router(conn, policy, signer, config=RouterConfig()).run(stop)),
        asyncio.create_task(
            Tracker(conn, store, policy, signer, config=TrackerConfig(tick=0.1)).run(stop)
        ),
        asyncio.create_task(
            Checkpointer(
                conn,
                signer,
                partnership=t.directory.partnership,
                every_records=5,
                every_seconds=0.5,
                anchor_file=database.parent / "audit-anchor.json",
            ).run(stop, tick=0.1)
        ),
    ]
    try:
        assert await publish_directory(conn, t.signed_directory, policy, t.root_public_key)

        def alert():
            return sample_event(
                EventType.RUNAWAY_ALERT, canary=CANARY, in_care=False, prostitution_suspected=False
            )

        data = {
            "taken": (GEND, seal(t, EventType.RUNAWAY_ALERT, alert(), sender=GEND, rules=rules)),
            "alone": (GEND, seal(t, EventType.RUNAWAY_ALERT, alert(), sender=GEND, rules=rules)),
            "danger": (
                SCHOOL,
                seal(
                    t,
                    EventType.DANGER_DECLARATION,
                    sample_event(EventType.DANGER_DECLARATION, canary=CANARY),
                    sender=SCHOOL,
                ),
            ),
            "medical": (
                HOSPITAL,
                seal(
                    t,
                    EventType.MEDICAL_REFERRAL,
                    sample_event(EventType.MEDICAL_REFERRAL, canary=CANARY),
                    sender=HOSPITAL,
                ),
            ),
            "refused": (
                GEND,
                seal(
                    t, EventType.RUNAWAY_ALERT, alert(), sender=GEND, rules=rules, recipients=[CRIP]
                ),
            ),
        }
        found = {name: str(peek_header(d).event_id) for name, (_, d) in data.items()}
        for sender, envelope in data.values():
            await _publish(broker, sender, "in", envelope)
        await _until_book(
            conn, lambda b: all(b.get(found[n]) for n in ("taken", "danger", "medical"))
        )
        await _publish(broker, CRIP, "rcpt", _receipt(t, CRIP, found["taken"], "TAKEN_IN_CHARGE"))
        await _publish(broker, CRIP, "rcpt", _receipt(t, CRIP, found["danger"], "DELIVERED"))
        await _publish(
            broker, CRIP, "rcpt", _receipt(t, CRIP, found["medical"], "DECLINED", "NOT_COMPETENT")
        )

        def complete(book: FlowBook) -> bool:
            danger, medical = book.get(found["danger"]), book.get(found["medical"])
            return (
                book.get(found["taken"]).taken
                and book.get(found["alone"]).escalation is not None
                and danger.deliveries[CRIP].state is DeliveryState.DELIVERED
                and medical.deliveries[CRIP].state is DeliveryState.DECLINED
                and len(book.quarantine()) == 1
            )

        await _until_book(conn, complete)
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=BOUND)
        await conn.close()
        store.close()
    for task in tasks:
        task.result()
    return found


@pytest.fixture(scope="module")
def world(demo_territory, territory_directory, broker_launcher, sealer, tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("operator"))
    broker = broker_launcher(root / "broker", territory_directory(demo_territory))
    try:
        found = asyncio.run(
            _scenario(broker, demo_territory, sealer, root / "tracker" / "tracker.sqlite3")
        )
        (root / "root.pub").write_text(demo_territory.root_public_b64 + "\n")
        (root / "directory.json").write_bytes(demo_territory.signed_directory)
        yield World(broker, root / "root.pub", root / "directory.json", found)
    finally:
        stop_process(broker.server.pid)


def run(args: list[str], env: dict[str, str | None] | None = None):
    """``relais ARGS`` with the broker variables of the environment cleared (or ``env``)."""
    return CliRunner().invoke(app, args, env={**ENV_CLEARED, **(env or {})}, prog_name="relais")


def run_json(args: list[str], env: dict[str, str | None] | None = None) -> Any:
    result = run([*args, "--json"], env)
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return json.loads(result.stdout)


def test_flows(world) -> None:
    doc = run_json(world.args("flows"))
    flows = {f["event_id"]: f for f in doc["flows"]}
    ids = world.ids
    assert set(flows) == {ids[n] for n in ("taken", "alone", "danger", "medical")}
    assert doc["total"] == 4
    assert doc["quarantined"] == 1
    assert flows[ids["taken"]]["status"] == "taken_in_charge"
    assert flows[ids["taken"]]["take_delay_ms"] >= 0
    alone = flows[ids["alone"]]
    assert alone["status"] == "escalated"
    assert alone["priority"] == "FLASH"
    assert alone["escalation"]["fallback"] == [COORD, PARQUET]
    assert alone["escalation"]["released"] is True
    roles = {r["partner"]: (r["role"], r["kind"]) for r in alone["recipients"]}
    assert roles[CRIP] == ("recipient", "crip")
    assert roles[PARQUET] == ("fallback", "parquet")
    crip = {f["event_id"]: r for f in doc["flows"] for r in f["recipients"] if r["partner"] == CRIP}
    assert crip[ids["danger"]]["state"] == "DELIVERED"
    assert crip[ids["medical"]]["state"] == "DECLINED"
    assert crip[ids["medical"]]["decline_reason"] == "NOT_COMPETENT"
    for flow in doc["flows"]:
        assert set(flow["routing"]) <= SHOWN_ROUTING_KEYS
        assert flow["departement"] == "93"
    alerts = run_json(world.args("flows", "--type", "runaway_alert"))["flows"]
    assert {f["event_id"] for f in alerts} == {ids["taken"], ids["alone"]}
    school = run_json(world.args("flows", "--partner", SCHOOL, "--since", "1h"))["flows"]
    assert [f["event_id"] for f in school] == [ids["danger"]]
    assert len(run_json(world.args("flows", "-n", "1"))["flows"]) == 1
    assert run_json(world.args("flows", "--since", "2999-01-01"))["flows"] == []
    # without the root key: the same flows, partner kinds unknown
    bare = run_json(world.args("flows", directory=False))["flows"]
    assert {f["event_id"] for f in bare} == set(flows)
    assert all(r["kind"] is None for f in bare for r in f["recipients"])
    text = run(world.args("flows"))
    assert text.exit_code == 0, text.stderr
    assert ids["alone"] in text.stdout
    assert "escalated" in text.stdout
    assert run(world.args("flows", "--type", "lettre")).exit_code == 2
    assert run(world.args("flows", "--since", "hier")).exit_code == 2


def test_trace(world) -> None:
    ids = world.ids
    alone = run_json(world.args("trace", ids["alone"]))
    steps = [(s["step"], s["partner"]) for s in alone["steps"]]
    assert steps[:2] == [("PUBLISHED", GEND), ("ROUTED", None)]
    assert ("ESCALATED", None) in steps
    assert alone["flow"]["deadline_at"] <= next(
        s["at"] for s in alone["steps"] if s["step"] == "ESCALATED"
    )
    taken = run_json(world.args("trace", ids["taken"].upper(), directory=False))
    assert taken["event_id"] == ids["taken"]
    assert ("TAKEN_IN_CHARGE", CRIP) in [(s["step"], s["partner"]) for s in taken["steps"]]
    refused = run_json(world.args("trace", ids["refused"]))
    assert refused["flow"] is None
    assert [q["reason"] for q in refused["quarantined"]] == ["RECIPIENTS_NOT_RULES"]
    text = run(world.args("trace", ids["medical"]))
    assert text.exit_code == 0
    assert "NOT_COMPETENT" in text.stdout
    unknown = run(world.args("trace", str(uuid.uuid4())))
    assert unknown.exit_code == 1
    assert "EVENT_NOT_FOUND" in unknown.stderr
    assert run(world.args("trace", "not-an-id")).exit_code == 2


def test_pending_and_overdue(world) -> None:
    ids = world.ids
    pending = run_json(world.args("pending"))["pending"]
    waiting = {f["event_id"]: f for f in pending}
    assert ids["danger"] in waiting
    assert CRIP in waiting[ids["danger"]]["waiting"]
    assert waiting[ids["danger"]]["remaining_ms"] is None  # no deadline for this type
    assert not {ids["taken"], ids["alone"]} & set(waiting)
    overdue = run_json(world.args("overdue"))["overdue"]
    assert [f["event_id"] for f in overdue] == [ids["alone"]]
    assert overdue[0]["late_ms"] >= 0
    assert overdue[0]["escalation"]["overdue"]
    for command in ("pending", "overdue"):
        text = run(world.args(command))
        assert text.exit_code == 0, text.stderr
    assert ids["alone"] in run(world.args("overdue")).stdout


def test_partners(world) -> None:
    doc = run_json(world.args("partners"))
    rows = {r["partner"]: r for r in doc["partners"]}
    assert doc["partnership"] == "partenariat-93"
    crip = rows[CRIP]
    assert (crip["kind"], crip["departements"], crip["revoked"]) == ("crip", ["93"], False)
    # nobody pulled: the CRIP's two alerts and its URGENT events wait at the broker
    assert crip["queued"]["FLASH"] >= 2
    assert crip["queued"]["URGENT"] >= 2
    assert crip["awaiting_decision"] >= 1  # the danger declaration
    assert crip["overdue"] == 1  # the escalated alert
    kinds = run_json(
        world.args("partners", "--kind", "crip", "--directory", str(world.directory_file))
    )
    assert [r["partner"] for r in kinds["partners"]] == [CRIP]
    paris = run_json(world.args("partners", "--departement", "75"))["partners"]
    assert "ase-75" in {r["partner"] for r in paris}
    assert all("75" in r["departements"] for r in paris)
    assert run(world.args("partners")).exit_code == 0
    missing = run(world.args("partners", directory=False))
    assert missing.exit_code == 2
    assert "root" in missing.stderr
    wrong_root = base64.b64encode(bytes(32)).decode()
    bad = run([*world.args("partners", directory=False), "--root-public-key", wrong_root])
    assert bad.exit_code == 1
    assert "DIRECTORY_BAD_SIGNATURE" in bad.stderr


def test_quarantine(world) -> None:
    doc = run_json(world.args("quarantine"))
    assert doc["by_reason"] == {"RECIPIENTS_NOT_RULES": 1}
    (entry,) = doc["quarantined"]
    assert (entry["event_id"], entry["sender"]) == (world.ids["refused"], GEND)
    assert run_json(world.args("quarantine", "--reason", "REPLAY"))["quarantined"] == []
    assert run(world.args("quarantine", "--reason", "NIMPORTE")).exit_code == 2
    assert "RECIPIENTS_NOT_RULES" in run(world.args("quarantine")).stdout


def test_stats(world) -> None:
    doc = run_json(world.args("stats"))
    assert doc["events"] == SUPPRESSED  # four events: "<5", never 4
    assert doc["escalated"] == SUPPRESSED
    assert doc["quarantined"] == SUPPRESSED
    assert doc["by_type"] == {
        "danger_declaration": SUPPRESSED,
        "medical_referral": SUPPRESSED,
        "runaway_alert": SUPPRESSED,
    }
    assert doc["by_departement"] == {"93": SUPPRESSED}
    assert list(doc["by_month"].values()) == [SUPPRESSED]
    assert doc["delays"]["crip"] == {"samples": SUPPRESSED, "median_ms": None, "p90_ms": None}
    months = run_json(world.args("stats", "--by", "month"))
    assert "by_month" in months
    assert "by_type" not in months
    text = run(world.args("stats"))
    assert text.exit_code == 0
    assert "<5" in text.stdout
    assert run(world.args("stats", directory=False)).exit_code == 2
    assert run(world.args("stats", "--by", "partner")).exit_code == 2


def test_no_view_shows_content(world) -> None:
    """The canary planted in every event's content appears in no output, human or JSON; nor
    does the routing metadata that describes the child."""
    ids = world.ids
    commands = [
        ["flows"],
        ["flows", "--type", "runaway_alert"],
        ["pending"],
        ["overdue"],
        ["partners"],
        ["quarantine"],
        ["stats"],
        *[["trace", event_id] for event_id in ids.values()],
    ]
    outputs = 0
    for command in commands:
        for json_flag in ([], ["--json"]):
            result = run([*world.args(*command), *json_flag])
            assert result.exit_code == 0, (command, result.stderr)
            shown = result.stdout + result.stderr
            assert CANARY not in shown, command
            assert "prostitution_suspected" not in shown, command
            assert "in_care" not in shown, command
            outputs += 1
    assert outputs == 2 * len(commands)


def test_the_common_options(world) -> None:
    """Environment variables, audit verify and broker status with them, rules explain from
    ref.dir, shell completion."""
    env = {
        "RELAIS_SERVER": world.broker.client_url,
        "RELAIS_CREDS": str(world.broker.operator_creds),
        "RELAIS_ROOT_PUBLIC_KEY": str(world.root_key),
    }
    assert len(run_json(["flows"], env)["flows"]) == 4
    natscli = {**env, "RELAIS_SERVER": None, "NATS_URL": world.broker.client_url}
    assert run_json(["stats"], natscli)["by_departement"] == {"93": SUPPRESSED}
    verified = run_json(["audit", "verify"], env)
    assert verified["ok"] is True
    assert verified["checkpoints"] >= 1
    status = run_json(["broker", "status", "--monitor", world.broker.monitor_url], env)
    assert {s["name"] for s in status["streams"]} >= {"AUDIT", "DELIVERY"}
    assert status["healthy"] is True
    assert status["sync_always"] is True
    # through the server address alone health and fsync are unknown: not a success
    blind = run(["broker", "status", "--json"], env)
    assert blind.exit_code == 1
    errors = [line for line in blind.stderr.splitlines() if line.startswith("error ")]
    assert errors == [errors[0]]
    assert errors[0].startswith("error [NOT_CONNECTED]: health and fsync unknown")
    explained = run_json(
        [
            "rules",
            "explain",
            "--type",
            "runaway_alert",
            "--sender",
            GEND,
            "--routing",
            "child_dept=93",
        ],
        env,
    )
    assert explained["rule"] == "runaway-alert@1"
    # no broker given at all: usage
    nothing = run(["flows"])
    assert nothing.exit_code == 2
    assert "-s URL" in nothing.stderr
    # completion of event types, partner kinds, reason codes
    for words, expected in (
        ("relais flows --type runaway_a", "runaway_alert"),
        ("relais partners --kind cr", "crip"),
        ("relais quarantine --reason RECIPIENTS_N", "RECIPIENTS_NOT_RULES"),
    ):
        completion = {"_RELAIS_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": "3"}
        assert run([], completion).stdout.split() == [expected]


def test_unreachable_broker_exits_3(world) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-c",
        "from relais.cli.app import main; main()",
        "flows",
        "-s",
        f"nats://127.0.0.1:{port}",
        "--creds",
        str(world.broker.operator_creds),
        "--timeout",
        "1",
        "--json",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ENV_CLEARED}
    done = subprocess.run(command, capture_output=True, text=True, timeout=BOUND, env=env)
    assert done.returncode == 3, done.stderr
    assert "NOT_CONNECTED" in done.stderr
    assert done.stdout == ""


def test_data_dir_of_an_embedded_broker(tmp_path) -> None:
    """``--data-dir`` wins over the environment; with ``-s`` typed too it is a usage error."""
    data_dir = tmp_path / "broker"
    up = run(["broker", "up", "--data-dir", str(data_dir), "--json"])
    assert up.exit_code == 0, up.output
    try:
        env = {"RELAIS_SERVER": "nats://127.0.0.1:1", "RELAIS_CREDS": str(tmp_path / "none")}
        doc = run_json(["flows", "--data-dir", str(data_dir)], env)
        assert doc["flows"] == []
        assert doc["total"] == 0
        both = run(["pending", "--data-dir", str(data_dir), "-s", "nats://127.0.0.1:1"])
        assert both.exit_code == 2
    finally:
        down = run(["broker", "down", "--data-dir", str(data_dir)])
    assert down.exit_code == 0
    assert run(["overdue", "--data-dir", str(data_dir)]).exit_code == 3
