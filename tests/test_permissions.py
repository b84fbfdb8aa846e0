"""Least privilege, checked against a real nats-server: what every identity can and cannot do.

One broker for the module, built from a directory holding a partner of every PartnerKind.
Each partner is checked against the partner of the next kind (its ``victim``), whose
consumers it tries to read and ack and whose subjects it tries to use. Every refusal must
surface as PermissionDenied within a bounded time (``asyncio.wait_for`` guards against a
hang; it is not a performance assertion), and the broker's state is then checked through the
JetStream API: a refused ack did not ack, a refused admin call changed nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relais.broker_config.embedded import stop_process
from relais.broker_config.nats_conf import delivery_consumer_name
from relais.broker_config.streams import STREAMS
from relais.schemas.domain import PartnerKind, Priority
from relais.schemas.errors import PermissionDenied

BOUND = 5.0  # upper bound of a hang, not a performance target
KINDS = list(PartnerKind)


def pid_of(kind: PartnerKind) -> str:
    return f"{kind.value.replace('_', '-')}-1"  # as every_kind_directory names them


def victim_of(kind: PartnerKind) -> str:
    return pid_of(KINDS[(KINDS.index(kind) + 1) % len(KINDS)])


@pytest.fixture(scope="module")
def world(every_kind_directory, broker_launcher, tmp_path_factory) -> Iterator[Any]:
    test_directory = every_kind_directory
    broker = broker_launcher(Path(tmp_path_factory.mktemp("perm")), test_directory)
    try:
        asyncio.run(_publish_directory(broker, test_directory.signed))
        yield broker
    finally:
        stop_process(broker.server.pid)


async def _publish_directory(broker, signed: bytes) -> None:
    gateway = await broker.gateway()
    try:
        await gateway.js_publish("ref.dir", signed, msg_id="directory-1")
    finally:
        await gateway.close()


async def denied(operation: Awaitable[Any]) -> PermissionDenied:
    with pytest.raises(PermissionDenied) as caught:
        await asyncio.wait_for(operation, BOUND)
    return caught.value


async def consumer_info(gateway, stream: str, consumer: str) -> dict[str, Any]:
    return await gateway.api(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}")


async def check_own_rights(partner, gateway, pid: str) -> None:
    ack = await partner.js_publish(f"ref.in.{pid}", b"sealed", msg_id=f"{pid}-event-1")
    assert ack.stream == "INGRESS"
    ack = await partner.js_publish(f"ref.rcpt.{pid}", b"receipt", msg_id=f"{pid}-rcpt-1")
    assert ack.stream == "RECEIPTS"
    for priority in Priority:
        consumer = delivery_consumer_name(pid, priority)
        await gateway.js_publish(f"ref.out.{pid}.{priority.label}", b"copy")
        (msg,) = await partner.fetch("DELIVERY", consumer, 10, expires=2.0)
        assert msg.subject == f"ref.out.{pid}.{priority.label}"
        await partner.ack(msg, confirm=True)
        info = await consumer_info(gateway, "DELIVERY", consumer)
        assert info["num_ack_pending"] == 0
        assert info["num_pending"] == 0
        own = await partner.api(f"$JS.API.CONSUMER.INFO.DELIVERY.{consumer}")
        assert own["name"] == consumer
    # the current directory edition, by direct get
    edition = await partner.request("$JS.API.DIRECT.GET.DIRECTORY.ref.dir")
    assert edition.data.startswith(b'{"format":"relais-directory/1"')


async def check_forged_acks(partner, gateway, victim, pid: str, victim_id: str) -> None:
    victim_consumer = delivery_consumer_name(victim_id, Priority.FLASH)
    await gateway.js_publish(f"ref.out.{victim_id}.FLASH", b"for the victim only")
    (held,) = await victim.fetch("DELIVERY", victim_consumer, 1, expires=2.0)
    before = await consumer_info(gateway, "DELIVERY", victim_consumer)
    assert before["num_ack_pending"] == 1
    tokens = held.reply.split(".")  # $JS.ACK.<stream>.<consumer>.<5 numbers>
    assert len(tokens) == 9
    own = delivery_consumer_name(pid, Priority.FLASH)
    forged = [
        held.reply,  # classic form
        ".".join(["$JS.ACK", "_", "hash", *tokens[2:], "token"]),  # domain form
        # a 9-token subject that reads as the victim's classic form and as the attacker's
        # domain form: refused because ack permissions use exact token counts
        f"$JS.ACK.DELIVERY.{victim_consumer}.DELIVERY.{own}.1.1.1",
    ]
    for subject in forged:
        for payload in (b"+ACK", b"+TERM", b'+NXT {"batch":5}'):
            await denied(partner.publish(subject, payload, reply=f"_INBOX_{pid}.steal"))
        await denied(partner.request(subject, b"+ACK"))
    after = await consumer_info(gateway, "DELIVERY", victim_consumer)
    assert after["num_ack_pending"] == 1
    assert after["delivered"]["stream_seq"] == before["delivered"]["stream_seq"]
    await victim.ack(held, confirm=True)


def admin_calls(victim_id: str) -> list[tuple[str, dict[str, Any] | None]]:
    return [
        ("$JS.API.STREAM.CREATE.EVIL", {"name": "EVIL", "subjects": ["evil.>"]}),
        ("$JS.API.STREAM.UPDATE.DELIVERY", {"name": "DELIVERY", "subjects": [">"]}),
        ("$JS.API.STREAM.DELETE.DELIVERY", None),
        ("$JS.API.STREAM.PURGE.DELIVERY", None),
        ("$JS.API.STREAM.MSG.DELETE.INGRESS", {"seq": 1}),
        ("$JS.API.STREAM.MSG.GET.DELIVERY", {"seq": 1}),
        ("$JS.API.DIRECT.GET.DELIVERY", {"seq": 1}),
        ("$JS.API.DIRECT.GET.AUDIT", {"seq": 1}),
        ("$JS.API.CONSUMER.CREATE.DELIVERY.spy.ref.out.>", {"stream_name": "DELIVERY"}),
        ("$JS.API.CONSUMER.DURABLE.CREATE.DELIVERY.spy", {"stream_name": "DELIVERY"}),
        (f"$JS.API.CONSUMER.DELETE.DELIVERY.out-{victim_id}-FLASH", None),
        ("$JS.API.CONSUMER.LIST.DELIVERY", None),
        ("$JS.API.STREAM.NAMES", None),
    ]


async def check_refusals(partner, pid: str, victim_id: str) -> None:
    await denied(partner.js_publish(f"ref.in.{victim_id}", b"spoof", msg_id="spoof"))
    await denied(partner.js_publish(f"ref.rcpt.{victim_id}", b"spoof"))
    await denied(partner.js_publish(f"ref.out.{victim_id}.FLASH", b"bypass the router"))
    await denied(partner.js_publish("ref.audit.x", b"fake record"))
    await denied(partner.js_publish("ref.dir", b"fake directory"))
    for priority in Priority:
        victim_consumer = delivery_consumer_name(victim_id, priority)
        await denied(partner.fetch("DELIVERY", victim_consumer, 1, expires=1.0))
        await denied(partner.api(f"$JS.API.CONSUMER.INFO.DELIVERY.{victim_consumer}"))
    for subject, body in admin_calls(victim_id):
        error = await denied(partner.api(subject, body))
        assert subject.lower() in str(error).lower()
    for subject in ("ref.out.>", ">", f"_INBOX_{victim_id}.>", "_INBOX.>", f"ref.in.{pid}"):
        await denied(partner.subscribe(subject))


async def check_state(gateway, victim_id: str) -> None:
    names = (await gateway.api("$JS.API.STREAM.NAMES"))["streams"]
    assert sorted(names) == sorted(spec.name for spec in STREAMS)
    consumers = (await gateway.api("$JS.API.CONSUMER.NAMES.DELIVERY"))["consumers"]
    assert "spy" not in consumers
    assert len(consumers) == 3 * len(KINDS)
    assert f"out-{victim_id}-FLASH" in consumers


@pytest.mark.parametrize("kind", KINDS, ids=[k.value for k in KINDS])
async def test_partner_matrix(world, kind: PartnerKind) -> None:
    pid, victim_id = pid_of(kind), victim_of(kind)
    gateway = await world.gateway()
    partner = await world.partner(pid)
    victim = await world.partner(victim_id)
    try:
        ingress_before = world.stream_counts()["INGRESS"]
        await check_own_rights(partner, gateway, pid)
        await check_refusals(partner, pid, victim_id)
        await check_forged_acks(partner, gateway, victim, pid, victim_id)
        # refusals are connection-level errors only: the partner is still connected
        assert partner.is_connected
        await partner.flush()
        await check_state(gateway, victim_id)
        assert world.stream_counts()["INGRESS"] == ingress_before + 1  # its own event only
    finally:
        for conn in (partner, victim, gateway):
            await conn.close()


async def test_wrong_inbox_prefix_is_refused(world) -> None:
    """An agent must use its own inbox prefix: another partner's is refused at connect."""
    from relais.broker_config.connection import connect

    with pytest.raises(PermissionDenied):
        await asyncio.wait_for(
            connect(
                world.client_url,
                creds=world.partner_creds[pid_of(PartnerKind.SCHOOL)],
                inbox_prefix=f"_INBOX_{victim_of(PartnerKind.SCHOOL)}",
                name="confused",
            ),
            BOUND,
        )


async def test_unclaimed_denial_surfaces_on_flush(world) -> None:
    """A fire-and-forget publish that is refused is reported by the next flush."""
    partner = await world.partner(pid_of(PartnerKind.HOTEL))
    try:
        await partner.publish("ref.in.crip-1", b"x", confirm=False)
        await denied(partner.flush())
        assert partner.denials[-1].subject == "ref.in.crip-1"
    finally:
        await partner.close()


OPERATOR_READS = [
    ("$JS.API.INFO", None),
    ("$JS.API.STREAM.NAMES", None),
    ("$JS.API.STREAM.LIST", None),
    ("$JS.API.STREAM.INFO.INGRESS", None),
    ("$JS.API.CONSUMER.NAMES.DELIVERY", None),
    ("$JS.API.CONSUMER.LIST.DELIVERY", None),
    ("$JS.API.CONSUMER.INFO.INGRESS.router", None),
]
OPERATOR_REFUSED = [
    ("$JS.API.STREAM.PURGE.AUDIT", None),
    ("$JS.API.STREAM.DELETE.AUDIT", None),
    ("$JS.API.STREAM.MSG.GET.INGRESS", {"seq": 1}),
    ("$JS.API.DIRECT.GET.DELIVERY", {"seq": 1}),
    ("$JS.API.DIRECT.GET.INGRESS.ref.in.school-1", None),
    ("$JS.API.CONSUMER.MSG.NEXT.DELIVERY.out-crip-1-FLASH", {"batch": 1}),
    ("$JS.API.CONSUMER.CREATE.AUDIT.reader", {"stream_name": "AUDIT"}),
    ("$JS.API.CONSUMER.DELETE.INGRESS.router", None),
]


async def test_operator_reads_only(world) -> None:
    operator = await world.operator()
    gateway = await world.gateway()
    try:
        for subject, body in OPERATOR_READS:
            answer = await asyncio.wait_for(operator.api(subject, body), BOUND)
            assert "error" not in answer
        await gateway.js_publish("ref.audit.routed", json.dumps({"event": "e1"}).encode())
        record = await operator.request(
            "$JS.API.DIRECT.GET.AUDIT", json.dumps({"last_by_subj": "ref.audit.routed"}).encode()
        )
        assert json.loads(record.data) == {"event": "e1"}
        for subject, body in OPERATOR_REFUSED:
            await denied(operator.api(subject, body))
        for subject in ("ref.in.school-1", "ref.out.school-1.FLASH", "ref.audit.x", "ref.dir"):
            await denied(operator.publish(subject, b"x"))
        await denied(operator.publish("$JS.ACK.DELIVERY.out-crip-1-FLASH.1.1.1.1.0", b"+ACK"))
        for subject in (">", "ref.>", "_INBOX__gateway.>"):
            await denied(operator.subscribe(subject))
        await check_state(gateway, "crip-1")
    finally:
        await operator.close()
        await gateway.close()


def role_refusals(victim_id: str) -> list[tuple[str, dict[str, Any] | None]]:
    """What no gateway role may do: administer JetStream, or touch a partner's consumer."""
    victim = delivery_consumer_name(victim_id, Priority.FLASH)
    return [
        *admin_calls(victim_id)[:5],  # stream create, update, delete, purge, message delete
        ("$JS.API.STREAM.UPDATE.AUDIT", {"name": "AUDIT", "max_msgs": 3}),
        ("$JS.API.STREAM.DELETE.AUDIT", None),
        ("$JS.API.STREAM.CREATE.SPY", {"name": "SPY", "subjects": [f"_INBOX_{victim_id}.>"]}),
        ("$JS.API.CONSUMER.CREATE.DELIVERY.spy.ref.out.>", {"stream_name": "DELIVERY"}),
        ("$JS.API.CONSUMER.DURABLE.CREATE.INGRESS.router", {"stream_name": "INGRESS"}),
        (f"$JS.API.CONSUMER.DELETE.DELIVERY.{victim}", None),
        (f"$JS.API.CONSUMER.MSG.NEXT.DELIVERY.{victim}", {"batch": 1}),
        (f"$JS.API.CONSUMER.INFO.DELIVERY.{victim}", None),
        ("$JS.API.DIRECT.GET.DELIVERY", {"seq": 1}),
        ("$JS.API.STREAM.MSG.GET.DELIVERY", {"seq": 1}),
    ]


@pytest.mark.parametrize("role", ["router", "tracker"])
async def test_gateway_roles_cannot_administer_nor_read_partners(world, role: str) -> None:
    """Each gateway role's credential: no stream or consumer administration, no partner's
    consumer, no partner's subjects; each call tried, each refused, nothing changed."""
    conn = await getattr(world, role)()
    gateway = await world.gateway()
    victim = "crip-1"
    victim_consumer = delivery_consumer_name(victim, Priority.FLASH)
    try:
        held = await gateway.js_publish(f"ref.out.{victim}.FLASH", b"for the victim only")
        for subject, body in role_refusals(victim):
            await denied(conn.api(subject, body))
        ack = f"$JS.ACK.DELIVERY.{victim_consumer}.1.{held.seq}.1.1.0"
        await denied(conn.publish(ack, b"+ACK"))
        for subject in (f"ref.in.{victim}", f"ref.rcpt.{victim}"):
            await denied(conn.publish(subject, b"spoof"))
        if role == "router":  # only the tracker publishes directory editions and checkpoints
            for subject in ("ref.dir", "ref.audit.ckpt"):
                await denied(conn.publish(subject, b"x"))
        for subject in (">", "ref.>", f"_INBOX_{victim}.>", "_INBOX__admin.>"):
            await denied(conn.subscribe(subject))
        await check_state(gateway, victim)
        info = await consumer_info(gateway, "DELIVERY", victim_consumer)
        assert info["num_pending"] >= 1  # still there for the partner
        audit = await gateway.api("$JS.API.STREAM.INFO.AUDIT")
        assert audit["config"]["max_msgs"] == -1
    finally:
        await conn.close()
        await gateway.close()
