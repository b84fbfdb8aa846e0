"""Webhook delivery when the partner's system is down, failing or asking to slow down.

A real local HTTP server plays the partner's system (``webhook_receiver``): it is first
stopped (connections refused), then answers 500, then 429 with ``Retry-After``, then 200.
The event stays in the inbox throughout and nothing but ``DELIVERED`` is ever sent.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from typing import Any

from relais.agents.keys import write_atomic
from relais.agents.runtime import Agent
from relais.agents.webhooks import backoff_delay, parse_retry_after, sign_webhook
from relais.schemas.domain import EventType
from relais.schemas.samples import sample_event
from relais.schemas.statements import verify_statement

CRIP = "crip-93"
SCHOOL = "college-93-jaures"


def secret_file(kit: Any) -> Any:
    path = kit.root / "secrets" / "webhook.secret"
    path.parent.mkdir(mode=0o700, exist_ok=True)
    if not path.exists():
        # Standard Webhooks form: whsec_ + base64 of the key
        write_atomic(path, b"whsec_c2VjcmV0LWRlLXdlYmhvb2stcG91ci1sZXMtdGVzdHM=\n")
    return path


def attempts(agent: Agent, outcome: str) -> float:
    value = agent.metrics.registry.get_sample_value(
        "relais_agent_webhook_attempts_total",
        {"kind": "event", "priority": "URGENT", "outcome": outcome},
    )
    return value or 0.0


async def receipt_states(kit: Any, territory: Any) -> list[str]:
    states = []
    for msg in await kit.read_stream("RECEIPTS"):
        statement = verify_statement(msg.data, keys=territory.keys())
        states.extend(e["state"] for e in statement.record["entries"])
    return states


async def test_down_500_429_then_delivered_event_stays_in_inbox(
    agent_kit, demo_territory, webhook_receiver
) -> None:
    kit = await agent_kit(demo_territory)
    webhook_receiver.stop()  # the partner's system is down
    settings = kit.settings(
        CRIP,
        webhook_url=webhook_receiver.url,
        webhook_secret_file=secret_file(kit),
        webhook_backoff_initial_seconds=0.05,
        webhook_backoff_max_seconds=0.2,
    )
    envelope = kit.seal(
        EventType.DANGER_DECLARATION, sample_event(EventType.DANGER_DECLARATION), sender=SCHOOL
    )
    event_id = (await kit.deliver(envelope)).event_id
    async with Agent(settings) as agent:
        await kit.until(lambda: attempts(agent, "unreachable") >= 3, what="retries while down")
        item = await agent.inbox_item(event_id)
        assert item is not None
        assert item.state.value == "delivered"
        webhook_receiver.script.extend([(500, {}), (429, {"Retry-After": "1"}), (200, {})])
        webhook_receiver.start()  # back, on the same port
        await kit.until(lambda: webhook_receiver.delivered(), what="delivered at last")
        assert attempts(agent, "failed") == 1
        assert attempts(agent, "throttled") == 1
        assert attempts(agent, "delivered") == 1
        item = await agent.inbox_item(event_id)
        assert item is not None
        assert item.state.value == "delivered"  # a webhook is not taking in charge
    calls = webhook_receiver.calls
    assert [c["status"] for c in calls] == [500, 429, 200]
    assert {c["id"] for c in calls} == {str(event_id)}
    assert calls[2]["at"] - calls[1]["at"] >= 0.9  # Retry-After: 1 honoured
    key = b"secret-de-webhook-pour-les-tests"
    for call in calls:  # each attempt is signed with its own timestamp
        assert call["signature"] == sign_webhook(
            key, call["id"], int(call["timestamp"]), call["body"]
        )
    assert await receipt_states(kit, demo_territory) == ["DELIVERED"]


async def test_abandoned_webhook_leaves_the_event_for_polling(
    agent_kit, demo_territory, webhook_receiver
) -> None:
    kit = await agent_kit(demo_territory)
    webhook_receiver.script.extend([(500, {})] * 1000)
    settings = kit.settings(
        CRIP,
        webhook_url=webhook_receiver.url,
        webhook_secret_file=secret_file(kit),
        webhook_backoff_initial_seconds=0.05,
        webhook_backoff_max_seconds=0.1,
        webhook_give_up_seconds=0.5,
    )
    envelope = kit.seal(
        EventType.DANGER_DECLARATION, sample_event(EventType.DANGER_DECLARATION), sender=SCHOOL
    )
    event_id = (await kit.deliver(envelope)).event_id
    async with Agent(settings) as agent:
        await kit.until(lambda: attempts(agent, "abandoned") == 1, what="abandoned")
        count = len(webhook_receiver.calls)
        assert count >= 2
        [item] = await agent.inbox()
        assert item.event_id == event_id
        assert item.fields["facts_summary"]
    assert len(webhook_receiver.calls) == count  # no more calls once abandoned
    assert await receipt_states(kit, demo_territory) == ["DELIVERED"]


def test_retry_after_and_backoff() -> None:
    now = time.time()
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("bientôt", now) is None
    later = dt.datetime.fromtimestamp(now + 30, dt.UTC)
    parsed = parse_retry_after(email.utils.format_datetime(later, usegmt=True), now)
    assert parsed is not None
    assert 28 <= parsed <= 30
    assert parse_retry_after("99999999", now) == 86_400.0
    delays = [backoff_delay(n, 1.0, 300.0, rng=lambda: 1.0) for n in range(1, 12)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert delays[-1] == 300.0
    assert backoff_delay(3, 1.0, 300.0, rng=lambda: 0.0) == 2.0  # half fixed, half random
