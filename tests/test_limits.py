"""Limits per identity, against a real nats-server: storage and connections.

A partner that fills its share of a stream gets a typed ``STORAGE_LIMIT`` error and nothing
else is affected: other partners still publish, and the agent's outbox keeps the events (and
says why in ``/readyz``) until there is room again, then publishes each exactly once. A
partner cannot open more connections than its account allows; others still connect.
"""

from __future__ import annotations

import pytest

from relais.agents.runtime import Agent
from relais.broker_config.accounts import AccountLimits
from relais.broker_config.streams import StorageLimits, provision
from relais.schemas.domain import EventType, PartnerKind
from relais.schemas.errors import Reason, TransportError
from relais.schemas.samples import sample_event

BOUND = 30.0  # upper bound of a wait, not a performance target
GEND = "gend-93-bobigny"


async def _set_partner_cap(broker, directory, cap: int) -> None:
    admin = await broker.gateway()
    try:
        limits = StorageLimits(stream_bytes=broker.storage.stream_bytes, partner_messages=cap)
        report = await provision(admin.jetstream(), directory, limits=limits)
        assert not report.conflicts, report.conflicts
    finally:
        await admin.close()


async def test_a_partner_over_its_share_gets_a_typed_error(broker_factory, directory_builder):
    td = directory_builder([("school-1", PartnerKind.SCHOOL), ("hotel-1", PartnerKind.HOTEL)])
    broker = await broker_factory(td)
    await _set_partner_cap(broker, td.directory, 100)
    school, hotel = await broker.partner("school-1"), await broker.partner("hotel-1")
    try:
        for n in range(100):
            await school.js_publish("ref.in.school-1", b"e", msg_id=f"s-{n}")
        with pytest.raises(TransportError) as caught:
            await school.js_publish("ref.in.school-1", b"e", msg_id="s-over")
        assert caught.value.reason is Reason.STORAGE_LIMIT
        ack = await hotel.js_publish("ref.in.hotel-1", b"e", msg_id="h-0")  # unaffected
        assert ack.stream == "INGRESS"
        assert broker.stream_counts()["INGRESS"] == 101
    finally:
        await school.close()
        await hotel.close()


async def test_connections_per_partner_are_capped(broker_factory, directory_builder):
    td = directory_builder([("school-1", PartnerKind.SCHOOL), ("hotel-1", PartnerKind.HOTEL)])
    broker = await broker_factory(td)
    cap = AccountLimits().partner_connections
    opened = [await broker.partner("school-1") for _ in range(cap)]
    try:
        with pytest.raises(TransportError) as caught:
            await broker.partner("school-1", connect_timeout=5.0)
        assert caught.value.reason is Reason.CONNECTION_LIMIT
        other = await broker.partner("hotel-1")  # another partner still connects
        await other.close()
        assert all(conn.is_connected for conn in opened)
    finally:
        for conn in opened:
            await conn.close()


async def test_the_outbox_keeps_events_while_the_share_is_full(agent_kit, demo_territory):
    kit = await agent_kit(demo_territory)
    await _set_partner_cap(kit.broker, demo_territory.directory, 100)
    filler = await kit.broker.partner(GEND)
    try:
        for n in range(100):
            await filler.js_publish(f"ref.in.{GEND}", b"filler", msg_id=f"filler-{n}")
    finally:
        await filler.close()
    async with Agent(kit.settings(GEND)) as agent:
        await kit.until(lambda: agent.readiness().ready, what="agent ready")
        accepted = [
            (await agent.submit("runaway_alert", sample_event(EventType.RUNAWAY_ALERT))).event_id
            for _ in range(3)
        ]
        await kit.until(
            lambda: agent.readiness().outbox_blocked == Reason.STORAGE_LIMIT.value,
            bound=BOUND,
            what="the outbox reports why it waits",
        )
        assert agent.readiness().ready  # it still receives
        await _set_partner_cap(kit.broker, demo_territory.directory, 10_000)  # room again

        async def all_published() -> bool:
            ids = {m.headers["Nats-Msg-Id"] for m in await kit.read_stream("INGRESS")}
            return {str(e) for e in accepted} <= ids

        await kit.until(all_published, bound=BOUND, what="published once there is room")
        await kit.until(lambda: agent.readiness().outbox_blocked is None, what="unblocked")
    ids = [m.headers["Nats-Msg-Id"] for m in await kit.read_stream("INGRESS")]
    assert sorted(i for i in ids if not i.startswith("filler-")) == sorted(map(str, accepted))
