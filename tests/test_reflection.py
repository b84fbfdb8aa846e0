"""No reply subject makes the broker store or deliver anything: the whole product, generated.

nats-server checks the subject a client publishes to, never the reply subject it names, and
JetStream answers on that reply subject. The broker configuration
(:mod:`relais.broker_config.accounts`) keeps JetStream in an account no client connects to, so
that an answer only ever reaches the requester's own account. This module checks it against a
real nats-server as an attacker holding any one credential would:

    every identity (a partner of every kind, the router, the tracker, the operator)
  × every request that identity may send (each JetStream API call it is allowed, pulls with a
    batch, acknowledgements asking for more, publishes to its own stream subjects)
  × every reply target (each stream's subjects, its own and another partner's; another
    identity's inbox; the hub's administrative API; another partner's ack subject)

After each identity's requests, every stream's last sequence has moved by exactly the
identity's own publishes (one stored message per publish to its own subject, whatever reply it
named), no consumer of another identity moved, and no other identity received anything. Then
``verify_audit`` still passes on the audit log that partners and the operator attacked.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from relais.broker_config.accounts import (
    Identity,
    Service,
    delivery_consumer_name,
    partner_identity,
    service_identity,
)
from relais.broker_config.directory import DirectoryKeys
from relais.broker_config.embedded import stop_process
from relais.broker_config.streams import STREAMS
from relais.gateway.audit import AuditKind, append_record, verify_audit
from relais.schemas.domain import PartnerKind, Priority

KINDS = [k for k in PartnerKind if k is not PartnerKind.GATEWAY]
PULL = json.dumps({"batch": 20, "expires": 100_000_000}).encode()  # 100 ms
SERVICES = (Service.ROUTER, Service.TRACKER, Service.OPERATOR)


def pid_of(kind: PartnerKind) -> str:
    return f"{kind.value.replace('_', '-')}-1"  # as every_kind_directory names them


def victim_of(pid: str) -> str:
    pids = [pid_of(k) for k in KINDS]
    return pids[(pids.index(pid) + 1) % len(pids)] if pid in pids else pids[0]


# -- what is sent ------------------------------------------------------------------------------


def _api_requests(subject: str, me: str) -> list[tuple[str, bytes]]:
    """Concrete calls for one allowed ``$JS.API`` subject (wildcards instantiated)."""
    if subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
        return [(subject, PULL)]
    own_consumer = delivery_consumer_name(me, Priority.FLASH) if me else "router"
    fills = {
        "$JS.API.STREAM.INFO.*": [f"$JS.API.STREAM.INFO.{s.name}" for s in STREAMS],
        "$JS.API.CONSUMER.NAMES.*": ["$JS.API.CONSUMER.NAMES.DELIVERY"],
        "$JS.API.CONSUMER.LIST.*": ["$JS.API.CONSUMER.LIST.DELIVERY"],
        "$JS.API.CONSUMER.INFO.*.*": [f"$JS.API.CONSUMER.INFO.DELIVERY.{own_consumer}"],
        "$JS.API.DIRECT.GET.DIRECTORY.>": ["$JS.API.DIRECT.GET.DIRECTORY.ref.dir"],
        "$JS.API.DIRECT.GET.AUDIT.>": ["$JS.API.DIRECT.GET.AUDIT.ref.audit.rec"],
        "$JS.API.DIRECT.GET.SEEN.>": [f"$JS.API.DIRECT.GET.SEEN.ref.seen.{uuid.uuid4()}"],
    }
    concrete = fills.get(subject, [subject])
    body = b""
    if subject.startswith(("$JS.API.DIRECT.GET.", "$JS.API.STREAM.MSG.GET.")):
        # a batch direct get answers with many messages: the most a reply could amplify
        body = json.dumps({"seq": 1, "batch": 20}).encode()
        if subject.startswith("$JS.API.STREAM.MSG.GET."):
            body = json.dumps({"seq": 1}).encode()
        if subject.endswith(">"):
            body = b""
    return [(s, body) for s in concrete]


def _publish_subject(pattern: str, victim: str) -> str:
    """A concrete subject for one of the identity's own stream subjects."""
    return (
        pattern.replace("ref.out.*.", f"ref.out.{victim}.")
        .replace("ref.quar.*", "ref.quar.REFLECTION_PROBE")
        .replace("ref.seen.*", f"ref.seen.{uuid.uuid4()}")
    )


def stream_of(subject: str) -> str:
    """The stream that stores ``subject``."""
    (name,) = [spec.name for spec in STREAMS if any(_matches(subject, p) for p in spec.subjects)]
    return name


def requests_of(
    identity: Identity, me: str, victim: str
) -> tuple[list[tuple[str, bytes]], Counter[str]]:
    """Every request ``identity`` may send, and per stream how many of them are publishes."""
    requests: list[tuple[str, bytes]] = []
    publishes: Counter[str] = Counter()
    for subject in identity.subjects:
        if subject.startswith("$JS.ACK."):
            continue  # acknowledgements need a delivered message: see _ack_requests
        if subject.startswith("$JS."):
            requests.extend(_api_requests(subject, me))
        else:
            concrete = _publish_subject(subject, victim)
            requests.append((concrete, b"reflection probe"))
            publishes[stream_of(concrete)] += 1
    return requests, publishes


def targets_for(me: str, victim: str) -> list[str]:
    """Every reply subject an attacker would try."""
    own = me or "nobody"
    return [
        f"ref.in.{own}",
        f"ref.in.{victim}",
        f"ref.rcpt.{own}",
        f"ref.rcpt.{victim}",
        f"ref.out.{own}.FLASH",
        f"ref.out.{victim}.FLASH",
        f"ref.out.{victim}.ROUTINE",
        "ref.audit.rec",
        "ref.audit.ckpt",
        "ref.quar.FORGED",
        "ref.dir",
        "ref.lease.tracker",
        f"ref.seen.{uuid.uuid4()}",
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.DELIVERY.x",
        f"_INBOX_{victim}.stolen",
        "_INBOX__router.stolen",
        "_INBOX__tracker.stolen",
        "_INBOX__operator.stolen",
        "_INBOX__admin.stolen",
        "$JS.API.STREAM.PURGE.AUDIT",
        "$JS.API.STREAM.DELETE.QUARANTINE",
        "$JS.API.STREAM.UPDATE.AUDIT",
        "$JS.API.STREAM.MSG.DELETE.AUDIT",
        f"$JS.API.CONSUMER.DELETE.DELIVERY.{delivery_consumer_name(victim, Priority.FLASH)}",
        f"$JS.API.CONSUMER.MSG.NEXT.DELIVERY.{delivery_consumer_name(victim, Priority.FLASH)}",
        f"$JS.ACK.DELIVERY.{delivery_consumer_name(victim, Priority.FLASH)}.1.1.1.1.0",
    ]


# -- the world ---------------------------------------------------------------------------------


@dataclass
class Listener:
    """Who received what: one connection per identity subscribed to its whole inbox."""

    received: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def world(every_kind_directory, broker_launcher, tmp_path_factory) -> Iterator[Any]:
    broker = broker_launcher(Path(tmp_path_factory.mktemp("reflect")), every_kind_directory)
    try:
        asyncio.run(_seed(broker, every_kind_directory.signed))
        yield broker
    finally:
        stop_process(broker.server.pid)


async def _seed(broker, signed: bytes) -> None:
    """A directory edition, a few valid audit records, and a pending delivery per partner."""
    admin, tracker = await broker.gateway(), await broker.tracker()
    try:
        await admin.js_publish("ref.dir", signed, msg_id="directory-1")
        for n in range(3):
            fields = {"event_id": str(uuid.uuid4()), "n": n}
            await append_record(tracker, AuditKind.ROUTED, fields, msg_id=f"seed-{n}")
        for kind in KINDS:
            for priority in Priority:
                subject = f"ref.out.{pid_of(kind)}.{priority.label}"
                for _ in range(3):
                    await admin.js_publish(subject, b"for the recipient only")
    finally:
        await admin.close()
        await tracker.close()


async def _state(admin) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for spec in STREAMS:
        info = await admin.api(f"$JS.API.STREAM.INFO.{spec.name}")
        state[spec.name] = (info["state"]["last_seq"], info["state"]["messages"])
    for stream in ("DELIVERY", "INGRESS", "RECEIPTS", "AUDIT"):
        consumers = await admin.api(f"$JS.API.CONSUMER.LIST.{stream}")
        for c in consumers["consumers"]:
            state[c["name"]] = (c["delivered"]["stream_seq"], c["ack_floor"]["stream_seq"])
    return state


async def _connect(world, who: str):
    if who in {s.value for s in SERVICES}:
        return await getattr(world, who)()
    return await world.partner(who)


async def _listen(world, names: list[str]) -> tuple[list[Any], dict[str, Listener]]:
    conns, listeners = [], {}
    for name in names:
        conn = await _connect(world, name)
        listener = listeners[name] = Listener()
        inbox = identity_of(name).inbox

        async def record(msg, listener=listener) -> None:
            listener.received[msg.subject] += 1

        await conn.nc.subscribe(f"{inbox}.>", cb=record)
        await conn.flush()
        conns.append(conn)
    return conns, listeners


def identity_of(name: str) -> Identity:
    if name in {s.value for s in SERVICES}:
        return service_identity(Service(name))
    return partner_identity(name)


async def _ack_requests(conn, me: str) -> list[tuple[str, bytes]]:
    """An acknowledgement asking for more (``+NXT``) on a delivery the identity really holds."""
    if not me:
        return []
    (msg,) = await conn.fetch("DELIVERY", delivery_consumer_name(me, Priority.ROUTINE), 1)
    nxt = b'+NXT {"batch":5,"expires":100000000}'  # expiring: no pull left waiting
    return [(msg.reply, nxt), (msg.reply, b"+WPI")]


async def _attack(world, name: str, all_names: list[str]) -> None:
    identity = identity_of(name)
    me = "" if name in {s.value for s in SERVICES} else name
    victim = victim_of(me) if me else pid_of(KINDS[0])
    requests, publishes = requests_of(identity, me, victim)
    targets = targets_for(me, victim)
    # a publish naming a reserved reply ($JS.ACK...) is refused by the server, not stored
    accepted = len([t for t in targets if not t.startswith("$JS.ACK.")])
    stored = Counter({stream: n * accepted for stream, n in publishes.items()})
    admin = await world.gateway()
    attacker = await _connect(world, name)
    others = [n for n in all_names if n != name]
    listen_conns, listeners = await _listen(world, others)
    try:
        requests += await _ack_requests(attacker, me)
        before = await _state(admin)
        for subject, body in requests:
            for target in targets:
                await attacker.nc.publish(subject, body, reply=target)
        await attacker.nc.flush()
        # Pulls answer at once or at their expiry (100 ms): wait three; then fence with a
        # round trip of each API call, answered to the attacker's own inbox (the API answers
        # in order of arrival).
        await asyncio.sleep(0.3)
        for subject, body in requests:
            if subject.startswith("$JS.API.") and ".MSG.NEXT." not in subject:
                await attacker.nc.request(subject, body, timeout=5.0)
        after = await _state(admin)
        moved = {
            k: (before[k], after[k]) for k in after if k not in before or after[k] != before[k]
        }
        expected = _expected_moves(name, me, stored, before, after)
        assert moved == expected, f"{name}: the broker stored or moved something: {moved}"
        for other, listener in listeners.items():
            assert not listener.received, f"{name} made {other} receive {listener.received}"
        # nats-server itself refuses a client's reply naming an ack subject (reserved)
        refused = {d.subject for d in attacker.denials}
        assert refused <= {t.lower() for t in targets if t.startswith("$JS.ACK.")}, refused
    finally:
        for conn in (attacker, admin, *listen_conns):
            await conn.close()


OWN_CONSUMERS = {"router": {"router"}, "tracker": {"tracker", "tracker-audit"}}


def _expected_moves(name, me, stored, before, after) -> dict[str, Any]:
    """What the identity's legitimate acts move: its own publishes and its own consumers."""
    expected = {}
    for stream, count in stored.items():
        assert after[stream][0] == before[stream][0] + count, (name, stream, before, after)
        expected[stream] = (before[stream], after[stream])
    own = {delivery_consumer_name(me, p) for p in Priority} if me else set()
    own |= OWN_CONSUMERS.get(name, set())
    for consumer in own:
        if before.get(consumer) != after.get(consumer):
            expected[consumer] = (before[consumer], after[consumer])
    return expected


def _matches(subject: str, pattern: str) -> bool:
    s, p = subject.split("."), pattern.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(s) == len(p)


ATTACKERS = [pid_of(k) for k in KINDS] + ["operator"]


async def test_no_reflection_from_partners_or_the_operator(world, every_kind_directory) -> None:
    """Every partner and the operator, every request, every target; then the audit verifies."""
    names = [*ATTACKERS, "router", "tracker"]
    for name in ATTACKERS:
        await _attack(world, name, names)
    operator = await world.operator()
    try:
        keys = DirectoryKeys(every_kind_directory.directory)
        report = await verify_audit(operator, keys=keys)
    finally:
        await operator.close()
    assert report.ok, report.problem
    assert report.records == 3


@pytest.mark.parametrize("service", ["router", "tracker"])
async def test_no_reflection_from_the_gateway_roles(world, service: str) -> None:
    """The gateway's roles: their own publishes store once each, their replies nothing."""
    await _attack(world, service, [*ATTACKERS, "router", "tracker"])
