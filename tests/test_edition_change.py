"""A change of configuration edition never costs an honest event (issue 15).

Real nats-server, the gateway's real router and tracker, real partner agents. The load test
follows docs/operations.md §4 (enrolment, revocation, rotation, rules change) on a running
territory while several senders submit at a steady pace, with the agents' directory poll
left at its 30 s default: nothing relies on an agent having fetched the new edition.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from relais.agents.directory_watch import DirectoryWatch
from relais.agents.keys import PartnerKeys, write_atomic, write_key_file
from relais.agents.runtime import Agent
from relais.agents.territory import DEMO_PARTNERS, build_territory
from relais.broker_config.directory import (
    Directory,
    Partner,
    add_key,
    add_partner,
    bump_serial,
    new_partner_key,
    revoke_key,
    revoke_partner,
    sign_directory,
    utc_now,
    with_rules,
)
from relais.broker_config.edition import ExpiryState, expiry_state, verify_edition
from relais.broker_config.rules import default_rules_text, load_rules, with_deadline
from relais.gateway.audit import Checkpoint, decode_record, open_checkpoint, sign_checkpoint
from relais.gateway.policy import Policy
from relais.gateway.service import publish_directory
from relais.gateway.tracker import TrackerConfig
from relais.schemas.domain import EventType, Priority
from relais.schemas.errors import DirectoryError, EnvelopeError, Reason
from relais.schemas.registry import default_registry
from relais.schemas.samples import sample_event
from relais.schemas.statements import sign_statement, verify_statement

GEND, POLICE, HOSPITAL, HOTEL = (
    "gend-93-bobigny",
    "police-93-saint-denis",
    "hopital-93-avicenne",
    "hotel-93-gare",
)
CRIP, MEDREF, PJJ, MARAUDE, PARQUET, COORD = (
    "crip-93",
    "medref-93",
    "pjj-93",
    "maraude-93",
    "parquet-93-bobigny",
    "coord-93",
)
SENDERS = {
    GEND: EventType.RUNAWAY_ALERT,
    POLICE: EventType.RUNAWAY_ALERT,
    HOSPITAL: EventType.MEDICAL_REFERRAL,
    HOTEL: EventType.LODGING_SUSPICION_REPORT,
}
RATE = 12.0  # events per second, all senders together
DURATION = 32.0  # seconds of load
CHANGES_AT = (5.0, 11.0, 17.0, 23.0)  # enrolment, revocation, rotation, rules change


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _pjj_informed(text: str) -> str:
    """The packaged rules where the PJJ is also told of every runaway (the next version)."""
    start = text.index('id = "runaway-alert"')
    at = text.index("  [[rules.recipients]]", start)
    added = (
        '  [[rules.recipients]]\n  kind = "pjj"\n  territory = ["facts_dept"]\n'
        '  why = "PJJ du lieu des faits: informée des fugues"\n'
    )
    text = text[:at] + added + text[at:]
    return text.replace("\nversion = 1\n", "\nversion = 2\n", 1)


@dataclass(frozen=True, slots=True)
class Submitted:
    """An event a sender's agent accepted (answered 202)."""

    sender: str
    at: int
    etype: EventType
    routing: dict[str, str]


class Partnership:
    """The editions the partnership administrator signs, applied as docs/operations.md §4
    says: broker reload (users, consumers), then the gateway reload, which hands the roles
    the new policy and publishes the edition on ``ref.dir`` (``gateway/service.py``)."""

    def __init__(self, kit: Any, run: Any, to_test_directory: Any, territory: Any) -> None:
        self.kit, self.run, self.to_test_directory = kit, run, to_test_directory
        self.territory = territory
        self.by_serial: dict[int, Directory] = {territory.directory.serial: territory.directory}
        self.current: Directory = territory.directory
        self.applied_at: dict[int, int] = {territory.directory.serial: 0}

    async def publish(self, directory: Directory) -> bytes:
        """Sign the next edition of ``directory`` and put it in force; its signed bytes."""
        edition = bump_serial(directory)
        signed = sign_directory(edition, self.territory.root)
        self.by_serial[edition.serial] = edition
        self.current = edition
        view = replace(self.territory, directory=edition, signed_directory=signed)
        await self.kit.broker.reconfigure(self.to_test_directory(view))
        policy = Policy.of(edition)
        self.run.router.policy = policy
        self.run.tracker.policy = policy
        await publish_directory(self.run.conn, signed, policy, self.territory.root_public_key)
        self.applied_at[edition.serial] = _now_ms()
        return signed


async def _inbox_ids(agent: Agent) -> list[str]:
    ids: list[str] = []
    after = 0
    while True:
        items = await agent.inbox(after=after, limit=500)
        if not items:
            return ids
        ids.extend(str(i.event_id) for i in items)
        after = items[-1].seq


def _record_for(sender: str, etype: EventType, n: int) -> dict[str, Any]:
    # Codes only in routing; département 93 everywhere, so the rules find everyone.
    record = sample_event(etype, child_dept="93", prostitution_suspected=n % 2 == 0)
    return record


@pytest.mark.slow
async def test_no_honest_event_lost_across_edition_changes(
    agent_kit: Any, gateway_runner: Any, territory_directory: Any, tmp_path: Path
) -> None:
    full = build_territory(DEMO_PARTNERS)
    medref = full.directory.get(MEDREF)
    assert medref is not None
    first = bump_serial(
        Directory.model_validate(
            {
                **{n: getattr(full.directory, n) for n in type(full.directory).model_fields},
                "partners": tuple(p for p in full.directory.partners if p.id != MEDREF),
            }
        )
    )
    territory = replace(full, directory=first, signed_directory=sign_directory(first, full.root))
    kit = await agent_kit(territory)
    run = await gateway_runner(kit.broker, territory, directory=first)
    world = Partnership(kit, run, territory_directory, territory)

    # The CRIP's next key exists before the rotation: its agent holds both key files.
    crip_next = PartnerKeys.generate(CRIP)
    crip_next_file = kit.root / "keys" / f"{CRIP}-next.key"
    write_key_file(crip_next_file, crip_next, kit.passphrase, opslimit=1, memlimit=8192)
    crip_files = [kit.root / "keys" / f"{CRIP}.key", crip_next_file]

    receivers = (CRIP, PARQUET, MARAUDE, "uaped-93-jean-verdier", PJJ, COORD)
    agents: dict[str, Agent] = {}
    for pid in (*SENDERS, *receivers):
        extra = {"key_files": crip_files} if pid == CRIP else {}
        agents[pid] = Agent(kit.settings(pid, **extra))
        await agents[pid].start()
    submitted: dict[str, Submitted] = {}
    refused_at_intake: Counter[str] = Counter()

    async def submit(sender: str, n: int) -> None:
        etype = SENDERS[sender]
        record = _record_for(sender, etype, n)
        try:
            sub = await agents[sender].submit(etype, record)
        except (EnvelopeError, DirectoryError) as exc:  # the revoked hotel, once it knows
            refused_at_intake[f"{sender}:{exc.reason.value}"] += 1
            return
        routing = default_registry().by_type(etype).routing_metadata(record)
        submitted[str(sub.event_id)] = Submitted(sender, _now_ms(), etype, routing)

    async def changes(started: float) -> dict[str, int]:
        moments: dict[str, int] = {}
        loop = asyncio.get_running_loop()
        steps = ("enrolment", "revocation", "rotation", "rules")
        for step, at in zip(steps, CHANGES_AT, strict=True):
            await asyncio.sleep(max(0.0, started + at - loop.time()))
            directory = world.current
            if step == "enrolment":
                directory = add_partner(directory, medref)
            elif step == "revocation":
                directory = revoke_partner(directory, HOTEL)
            elif step == "rotation":
                now = utc_now()
                key = new_partner_key(
                    crip_next.sign_pk,
                    crip_next.box_pk,
                    not_before=now - timedelta(seconds=1),
                    not_after=now + timedelta(days=365),
                )
                old = territory.identities[CRIP].key_id
                directory = revoke_key(add_key(directory, CRIP, key), CRIP, old)
            else:
                directory = with_rules(directory, _pjj_informed(directory.rules))
            signed = await world.publish(directory)
            moments[step] = _now_ms()
            if step == "enrolment":  # the new partner's agent starts on the new edition
                edition_file = kit.root / "directory-enrolment.json"
                write_atomic(edition_file, signed, mode=0o644, overwrite=True)
                agents[MEDREF] = Agent(kit.settings(MEDREF, directory_file=edition_file))
                await agents[MEDREF].start()
        return moments

    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        changer = asyncio.create_task(changes(started))
        order = list(SENDERS)
        pending: set[asyncio.Task[None]] = set()
        n = 0
        while loop.time() - started < DURATION:
            task = asyncio.create_task(submit(order[n % len(order)], n))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
            await asyncio.sleep(max(0.0, started + n / RATE - loop.time()))
        await asyncio.gather(*list(pending))
        moments = await changer
        revoked_at = moments["revocation"]
        await _check_outcome(kit, agents, world, submitted, revoked_at, refused_at_intake)
    finally:
        for agent in agents.values():
            await agent.stop()


async def _routed_records(kit: Any) -> tuple[dict[str, list[dict[str, Any]]], list[Any]]:
    routed: dict[str, list[dict[str, Any]]] = defaultdict(list)
    quarantined = []
    for msg in await kit.read_stream("AUDIT"):
        if msg.subject != "ref.audit.rec":
            continue
        record = decode_record(msg.data)
        if record["kind"] == "ROUTED":
            routed[record["event_id"]].append(record)
        elif record["kind"] == "QUARANTINED":
            quarantined.append(record)
    return routed, quarantined


async def _missing(
    kit: Any, agents: dict[str, Agent], honest: set[str]
) -> tuple[set[str], dict[str, set[str]]]:
    """Honest events not routed yet, and per partner the routed ones not in its inbox."""
    routed, _ = await _routed_records(kit)
    unrouted = honest - routed.keys()
    absent: dict[str, set[str]] = {}
    for pid, agent in agents.items():
        wanted = {e for e in honest for rec in routed.get(e, []) if pid in rec["recipients"]}
        gap = wanted - set(await _inbox_ids(agent))
        if gap:
            absent[pid] = gap
    return unrouted, absent


async def _check_outcome(
    kit: Any,
    agents: dict[str, Agent],
    world: Partnership,
    submitted: dict[str, Submitted],
    revoked_at: int,
    refused_at_intake: Counter[str],
) -> None:
    # Honest: every event of the partners in good standing, and the hotel's until revoked.
    honest = {e for e, s in submitted.items() if s.sender != HOTEL or s.at < revoked_at - 1000}

    async def settled() -> bool:
        unrouted, absent = await _missing(kit, agents, honest)
        return not unrouted and not absent

    try:
        await kit.until(settled, bound=60.0, what="every honest event delivered")
    except AssertionError:
        unrouted, absent = await _missing(kit, agents, honest)
        states = [await agents[submitted[e].sender].sent_event(e) for e in sorted(unrouted)[:5]]
        raise AssertionError(f"not routed: {states}; not delivered: {absent}") from None
    routed, quarantined = await _routed_records(kit)

    # Each routed event went to exactly the recipients of the edition in force when it was
    # (last) delivered, and each of them got exactly one copy.
    copies: Counter[tuple[str, str]] = Counter()
    for msg in await kit.read_stream("DELIVERY"):
        headers = msg.headers or {}
        if len(msg.data) > 4 and msg.data[4] == 0x01 and "Relais-Escalation" not in headers:
            copies[(headers["Relais-Event-Id"], msg.subject.split(".")[2])] += 1
    resealed = grace = deliveries = 0
    for eid in honest:
        records, sent = routed[eid], submitted[eid]
        edition = world.by_serial[records[-1]["edition_in_force"]]
        rules = Policy.of(edition).rules
        expected = rules.decide(sent.etype, sent.routing, sender=sent.sender, directory=edition)
        delivered = [r for rec in records for r in rec["recipients"]]
        assert sorted(delivered) == sorted(expected.recipients), (eid, records)
        for rcpt in delivered:
            assert copies[(eid, rcpt)] == 1, (eid, rcpt)
        deliveries += len(delivered)
        resealed += sum(1 for rec in records if rec["resealed_from"] is not None)
        grace += sum(1 for rec in records if rec["edition"] < rec["edition_in_force"])

    honest_quarantined = [q for q in quarantined if q["event_id"] in honest]
    assert honest_quarantined == []
    # The revoked hotel: nothing of it routed from the revocation on, whatever it sealed.
    hotel = [e for e, s in submitted.items() if s.sender == HOTEL]
    assert all(r["at"] < revoked_at for e in hotel for r in routed.get(e, []))
    hotel_late = [e for e in hotel if submitted[e].at >= revoked_at]
    resealings = sum(
        int(sample.value)
        for agent in agents.values()
        for metric in agent.metrics.resealed.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )
    print(
        f"\nedition change under load: {len(submitted)} accepted (202), {len(honest)} honest,"
        f" {len(honest & routed.keys())} routed, {deliveries} deliveries (each exactly once),"
        f" {grace} routings under the previous edition's grace, {resealed} re-sealed"
        f" deliveries ({resealings} re-sealings by the agents), {len(honest_quarantined)}"
        f" honest quarantined; revoked hotel: {len(hotel_late)} accepted locally after"
        f" revocation, {len([q for q in quarantined if q['sender'] == HOTEL])} quarantined,"
        f" refused at intake {dict(refused_at_intake)}"
    )
    assert len(honest) >= RATE * DURATION * 0.8
    assert resealed > 0  # the changes did hit events in flight
    assert grace > 0


# -- revocation, triage, expiry, backdating --------------------------------------------------


async def test_a_revoked_partner_is_refused_and_receives_nothing_more(
    agent_kit: Any, gateway_runner: Any, territory_directory: Any
) -> None:
    territory = build_territory(DEMO_PARTNERS)
    kit = await agent_kit(territory)
    run = await gateway_runner(kit.broker, territory)
    # Sealed under the edition in force (the street outreach team is a recipient), published
    # once the edition revoking that team is in force: within the grace, not to the team.
    alert = kit.seal(EventType.RUNAWAY_ALERT, sample_event(EventType.RUNAWAY_ALERT), sender=GEND)
    own = kit.seal(
        EventType.DANGER_DECLARATION, sample_event(EventType.DANGER_DECLARATION), sender=MARAUDE
    )
    world = Partnership(kit, run, territory_directory, territory)
    await world.publish(revoke_partner(territory.directory, MARAUDE))
    gend = await kit.broker.partner(GEND)
    try:
        await gend.js_publish(f"ref.in.{GEND}", alert, msg_id="alert")
    finally:
        await gend.close()
    # The revoked team's own event, published before its credential went: refused.
    admin = await kit.broker.gateway()
    try:
        await admin.js_publish(f"ref.in.{MARAUDE}", own, msg_id="own")
    finally:
        await admin.close()

    async def outcome() -> Any:
        routed, quarantined = await _routed_records(kit)
        return (routed, quarantined) if routed and quarantined else None

    routed, quarantined = await kit.until(outcome, what="routed and quarantined")
    (record,) = next(iter(routed.values()))
    assert MARAUDE not in record["recipients"]
    assert CRIP in record["recipients"]
    assert record["edition"] < record["edition_in_force"]
    assert [(q["sender"], q["reason"]) for q in quarantined] == [
        (MARAUDE, Reason.REVOKED_PARTNER.value)
    ]
    outs = [m for m in await kit.read_stream("DELIVERY") if m.subject.split(".")[2] == MARAUDE]
    assert outs == []


async def test_an_undecidable_runaway_alert_stays_flash_and_is_escalated(
    agent_kit: Any, gateway_runner: Any, sealer: Any
) -> None:
    # No street outreach team, no CRIP for the child's département (a valid code): the
    # runaway alert's rule finds nobody.
    territory = build_territory(p for p in DEMO_PARTNERS if p.id != MARAUDE)
    kit = await agent_kit(territory)
    rules = load_rules(with_deadline(default_rules_text(), "runaway-alert", 1))
    record = sample_event(EventType.RUNAWAY_ALERT, child_dept="75", facts_dept="93")
    record["prostitution_suspected"] = False
    decision = rules.decide(
        EventType.RUNAWAY_ALERT,
        default_registry().by_type(EventType.RUNAWAY_ALERT).routing_metadata(record),
        sender=GEND,
        directory=territory.directory,
    )
    assert decision.triage
    assert decision.priority is Priority.FLASH
    assert decision.deadline_seconds == 1
    assert decision.recipients == (COORD,)
    assert decision.fallback == (PARQUET,)
    run = await gateway_runner(
        kit.broker, territory, rules=rules, tracker_config=TrackerConfig(tick=0.1)
    )
    gend = await kit.broker.partner(GEND)
    try:
        data = sealer(territory, EventType.RUNAWAY_ALERT, record, sender=GEND, rules=rules)
        await gend.js_publish(f"ref.in.{GEND}", data, msg_id="undecidable")
    finally:
        await gend.close()

    async def escalated() -> Any:
        records = [decode_record(m.data) for m in await kit.read_stream("AUDIT")]
        kinds = {r["kind"]: r for r in records if "kind" in r}
        return kinds if "ESCALATED" in kinds else None

    kinds = await kit.until(escalated, what="escalation")
    assert kinds["ROUTED"]["priority"] == "FLASH"
    assert kinds["ROUTED"]["deadline_at"] is not None
    assert kinds["ROUTED"]["recipients"] == [COORD]
    copies = [m for m in await kit.read_stream("DELIVERY") if m.subject.split(".")[2] == PARQUET]
    assert [m.subject for m in copies if m.data[4] == 0x01] == [f"ref.out.{PARQUET}.FLASH"]
    assert run.tracker is not None


def test_an_expired_edition_is_refused_with_its_reason(tmp_path: Path) -> None:
    territory = build_territory(DEMO_PARTNERS[:3] + DEMO_PARTNERS[-1:])
    issued = utc_now() - timedelta(days=10)
    old = bump_serial(territory.directory, issued_at=issued, valid_for=timedelta(days=2))
    signed = sign_directory(old, territory.root)
    now = _now_ms()
    with pytest.raises(DirectoryError) as refused:
        verify_edition(signed, territory.root_public_key, now_ms=now)
    assert refused.value.reason is Reason.DIRECTORY_EXPIRED
    assert verify_edition(signed, territory.root_public_key).serial == old.serial  # no clock
    watch = DirectoryWatch(territory.root_public_key, territory.signed_directory, cache=None)
    with pytest.raises(DirectoryError) as offered:
        watch.offer(signed)
    assert offered.value.reason is Reason.DIRECTORY_EXPIRED
    assert watch.serial == territory.directory.serial
    # Warned ahead: a quarter of the validity (at most 7 days) before the end.
    fresh = bump_serial(old, issued_at=utc_now(), valid_for=timedelta(days=8))
    assert expiry_state(fresh, now)[0] is ExpiryState.VALID
    assert expiry_state(fresh, now + 5 * 86_400_000)[0] is ExpiryState.VALID
    assert expiry_state(fresh, now + 7 * 86_400_000)[0] is ExpiryState.EXPIRING
    assert expiry_state(fresh, now + 9 * 86_400_000)[0] is ExpiryState.EXPIRED
    # A signed edition spells out its validity end; one that does not is malformed.
    assert b'"expires_at":"' in sign_directory(territory.directory, territory.root)


def test_a_backdated_statement_or_checkpoint_of_an_expired_key_is_refused() -> None:
    territory = build_territory(DEMO_PARTNERS[:4] + DEMO_PARTNERS[-1:])
    now = _now_ms()
    # The gateway's key ended an hour ago; it still signs, dating its statements back.
    ended = utc_now() - timedelta(hours=1)
    gateway = territory.identities["gateway"]
    directory = territory.directory
    partner = directory.get("gateway")
    assert partner is not None
    key = new_partner_key(
        gateway.sign_pk, gateway.box_pk, not_before=ended - timedelta(days=30), not_after=ended
    )
    directory = Directory.model_validate(
        {
            **{n: getattr(directory, n) for n in type(directory).model_fields},
            "partners": tuple(
                Partner.model_validate({**p.model_dump(), "keys": (key,)})
                if p.id == "gateway"
                else p
                for p in directory.partners
            ),
        }
    )
    keys = Policy.of(directory).keys
    backdated = now - 2 * 3_600_000  # when the key was still valid
    record = sample_event(EventType.REJECTION, alert_sender=GEND)
    statement = sign_statement(
        EventType.REJECTION,
        record,
        signer=gateway,
        partnership=directory.partnership,
        now_ms=backdated,
    )
    with pytest.raises(EnvelopeError) as refused:
        verify_statement(statement, keys=keys, now_ms=now)
    assert refused.value.reason is Reason.EXPIRED_KEY
    # Received when it says (the broker stored it then): the key was valid.
    assert verify_statement(statement, keys=keys, now_ms=backdated + 1000).signer == "gateway"
    checkpoint = Checkpoint(
        partnership=directory.partnership,
        signer="gateway",
        key_id=key.key_id,
        first_seq=1,
        last_seq=1,
        count=1,
        chain="00" * 32,
        previous="00" * 32,
        at=backdated,
    )
    data = sign_checkpoint(checkpoint, gateway)
    assert open_checkpoint(data, keys=keys, received_ms=backdated + 1000).at == backdated
    with pytest.raises(EnvelopeError) as bad:
        open_checkpoint(data, keys=keys, received_ms=now)
    assert bad.value.reason is Reason.AUDIT_CHECKPOINT_INVALID
    assert isinstance(bad.value.__cause__, EnvelopeError)
    assert bad.value.__cause__.reason is Reason.EXPIRED_KEY
