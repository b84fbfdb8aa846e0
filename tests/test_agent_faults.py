"""Crashes and outages: nothing accepted is lost, nothing delivered is repeated.

* The broker goes down; events keep being accepted (202). The agent (a real subprocess,
  ``relais agent run``) is killed with SIGKILL while the broker is down and started again;
  more events are accepted. When the broker is back (same data directory, same port),
  every accepted event is on INGRESS exactly once.
* The agent is killed with SIGKILL after decrypting a delivery and before its receipt
  (the test-only fault hook ``RELAIS_AGENT_TEST_CRASH_AT``, see ``relais.agents.faults``),
  and also right after storing it; once restarted, the inbox row, the ``DELIVERED`` receipt
  and the webhook call each happen once although the message is redelivered.
* 10,000 ROUTINE deliveries are queued for a partner, then a FLASH alert: the alert reaches
  the partner's webhook before the 100th routine event, and again when it arrives while the
  backlog is being worked through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relais.agents.faults import ENV_VAR
from relais.agents.keys import write_atomic
from relais.agents.runtime import Agent
from relais.broker_config.embedded import start_server, stop_process
from relais.broker_config.nats_conf import write_config
from relais.schemas.domain import EventType, Priority
from relais.schemas.envelope import Recipient, seal
from relais.schemas.registry import to_jsonable
from relais.schemas.samples import sample_event
from relais.schemas.statements import verify_statement

pytestmark = pytest.mark.slow

GEND = "gend-93-bobigny"
CRIP = "crip-93"
SCHOOL = "college-93-jaures"
SECRET = b"secret-de-webhook-pour-les-tests"


def write_agent_config(kit: Any, partner: str, **overrides: Any) -> Path:
    """A JSON settings file for ``relais agent run`` (every value explicit)."""
    settings = kit.settings(partner, **overrides)
    path = kit.root / f"{partner}.agent.json"
    path.write_text(json.dumps(settings.model_dump(mode="json")), encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def agent_process(
    config: Path, data_dir: Path, *, env: dict[str, str] | None = None, listens: bool = True
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """``relais agent run --config`` as a subprocess; its API URL once it listens.

    ``listens=False``: a process expected to crash (it may do so before it listens).
    """
    info = data_dir / "api.json"
    info.unlink(missing_ok=True)  # a SIGKILL-ed agent leaves its own behind
    log = (config.parent / f"{config.stem}.log").open("ab")
    command = [sys.executable, "-m", "relais.cli.agent_cmd", "run", "--config", str(config)]
    # Popen returns at once (the child runs on its own): nothing here blocks the loop.
    proc = subprocess.Popen(  # noqa: ASYNC220
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    try:
        yield proc, (await _listening(proc, info) if listens else "")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 5)
        log.close()


async def _listening(proc: subprocess.Popen[bytes], info: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the agent exited with {proc.returncode}")
        data = _read_info(info)
        if data is not None and data["pid"] == proc.pid:
            return str(data["url"])
        await asyncio.sleep(0.02)
    raise AssertionError("the agent never listened")


def _read_info(info: Path) -> Any:
    try:
        return json.loads(info.read_text())
    except (OSError, ValueError):
        return None


async def restart_broker(kit: Any) -> None:
    """Start the broker again on its data directory, on the port it had."""
    broker = kit.broker
    port = int(broker.client_url.rsplit(":", 1)[1])
    broker.settings = broker.settings.model_copy(update={"port": port})
    write_config(broker.config_file, broker._config(kit.territory.directory))
    broker.server = await asyncio.to_thread(
        start_server,
        broker.config_file,
        ports_dir=broker.root / "ports",
        log_file=broker.root / "nats-server.log",
    )


async def post_alerts(client: httpx.AsyncClient, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        record = to_jsonable(sample_event(EventType.RUNAWAY_ALERT))
        answer = await client.post("/v1/events/runaway_alert", json=record)
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["event_id"])
    return ids


async def test_broker_down_and_agent_sigkilled_nothing_lost_nothing_twice(
    agent_kit, demo_territory
) -> None:
    kit = await agent_kit(demo_territory)
    config = write_agent_config(kit, GEND)
    data_dir = kit.root / "agents" / GEND
    headers = {"Authorization": f"Bearer {kit.token(GEND)}"}
    accepted: list[str] = []
    async with agent_process(config, data_dir) as (proc, url):
        async with httpx.AsyncClient(base_url=url, headers=headers, trust_env=False) as client:
            await kit.until(lambda: _status(client, "/readyz", 200), what="ready (connected)")
            stop_process(kit.broker.server.pid)  # the broker goes away
            await kit.until(lambda: _status(client, "/readyz", 503), what="not ready")
            accepted += await post_alerts(client, 15)
        os.kill(proc.pid, signal.SIGKILL)  # and the agent is killed meanwhile
        await asyncio.to_thread(proc.wait, 15)
        assert proc.returncode == -signal.SIGKILL
    async with agent_process(config, data_dir) as (proc, url):
        async with httpx.AsyncClient(base_url=url, headers=headers, trust_env=False) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).json()["nats"] is False
            accepted += await post_alerts(client, 15)
            await restart_broker(kit)

            async def all_published() -> bool:
                for event_id in accepted:
                    state = (await client.get(f"/v1/events/{event_id}")).json()["state"]
                    if state != "published":
                        return False
                return True

            await kit.until(all_published, bound=60, what="all published")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    ids = [m.headers["Nats-Msg-Id"] for m in await kit.read_stream("INGRESS")]
    assert sorted(ids) == sorted(accepted)  # each exactly once, none lost
    assert len(set(accepted)) == 30


async def _status(client: httpx.AsyncClient, path: str, status: int) -> bool:
    try:
        return (await client.get(path)).status_code == status
    except httpx.HTTPError:
        return False


async def _consumer_idle(kit: Any, partner: str, priority: str) -> bool:
    gateway = await kit.broker.gateway()
    try:
        info = await gateway.api(f"$JS.API.CONSUMER.INFO.DELIVERY.out-{partner}-{priority}")
    finally:
        await gateway.close()
    return (
        info["num_pending"] == 0
        and info["num_ack_pending"] == 0
        and info["delivered"]["consumer_seq"] >= 2
    )


@pytest.mark.parametrize("crash_at", ["after_open", "after_store"])
async def test_sigkill_before_the_receipt_everything_happens_once(
    agent_kit, demo_territory, webhook_receiver, crash_at
) -> None:
    kit = await agent_kit(demo_territory)
    secret = kit.root / "secrets" / "webhook.secret"
    secret.parent.mkdir(mode=0o700, exist_ok=True)
    write_atomic(secret, SECRET + b"\n")
    config = write_agent_config(
        kit, CRIP, webhook_url=webhook_receiver.url, webhook_secret_file=secret
    )
    data_dir = kit.root / "agents" / CRIP
    alert = kit.seal(EventType.RUNAWAY_ALERT, sample_event(EventType.RUNAWAY_ALERT), sender=GEND)
    event_id = str((await kit.deliver(alert, to=[CRIP])).event_id)
    crashing = agent_process(config, data_dir, env={ENV_VAR: crash_at}, listens=False)
    async with crashing as (proc, _url):
        assert await asyncio.to_thread(proc.wait, 30) == -signal.SIGKILL
    assert webhook_receiver.calls == []
    assert await kit.read_stream("RECEIPTS") == []
    headers = {"Authorization": f"Bearer {kit.token(CRIP)}"}
    async with agent_process(config, data_dir) as (proc, url):
        # FLASH deliveries come back after ack_wait (3 s): wait for the redelivery's ack
        await kit.until(
            lambda: _consumer_idle(kit, CRIP, "FLASH"), bound=60, what="redelivered and acked"
        )
        await kit.until(lambda: webhook_receiver.delivered(), what="webhook")
        async with httpx.AsyncClient(base_url=url, headers=headers, trust_env=False) as client:
            items = (await client.get("/v1/inbox")).json()["items"]
        await kit.until(lambda: kit.read_stream("RECEIPTS"), what="receipt")
    assert [i["event_id"] for i in items] == [event_id]
    assert [c["id"] for c in webhook_receiver.calls] == [event_id]
    entries = []
    for msg in await kit.read_stream("RECEIPTS"):
        statement = verify_statement(msg.data, keys=demo_territory.keys())
        entries += [(str(e["event_id"]), e["state"]) for e in statement.record["entries"]]
    assert entries == [(event_id, "DELIVERED")]


async def _publish_many(kit: Any, envelopes: list[bytes], priority: Priority) -> None:
    gateway = await kit.broker.gateway()
    try:
        for start in range(0, len(envelopes), 500):
            chunk = envelopes[start : start + 500]
            await asyncio.gather(
                *(
                    gateway.js_publish(
                        f"ref.out.{CRIP}.{priority.label}", data, msg_id=f"{_id(data)}:{CRIP}"
                    )
                    for data in chunk
                )
            )
    finally:
        await gateway.close()


def _sealed(territory: Any, count: int, priority: Priority) -> list[bytes]:
    crip = territory.identities[CRIP]
    record = sample_event(EventType.DANGER_DECLARATION)
    return [
        seal(
            EventType.DANGER_DECLARATION,
            record,
            sender=territory.identities[SCHOOL],
            partnership=territory.partnership,
            recipients=[Recipient(CRIP, crip.key_id, crip.box_pk)],
            departement="93",
            priority=priority,
        )
        for _ in range(count)
    ]


async def test_flash_overtakes_ten_thousand_routine_events(
    agent_kit, demo_territory, webhook_receiver
) -> None:
    kit = await agent_kit(demo_territory, sync_always=False)  # the subject is order, not disk
    routine = _sealed(demo_territory, 10_000, Priority.ROUTINE)
    first, second = _sealed(demo_territory, 2, Priority.FLASH)
    await _publish_many(kit, routine, Priority.ROUTINE)
    await _publish_many(kit, [first], Priority.FLASH)
    secret = kit.root / "secrets" / "webhook.secret"
    secret.parent.mkdir(mode=0o700, exist_ok=True)
    write_atomic(secret, SECRET + b"\n")
    settings = kit.settings(CRIP, webhook_url=webhook_receiver.url, webhook_secret_file=secret)
    flash_ids = [_id(first), _id(second)]
    async with Agent(settings):
        await kit.until(lambda: _called(webhook_receiver, flash_ids[0]), what="first FLASH")
        calls = [c["id"] for c in webhook_receiver.calls]
        first_at = calls.index(flash_ids[0])
        assert first_at < 100
        # the second one arrives while the routine backlog is being worked through
        await kit.until(lambda: len(webhook_receiver.calls) > 200, what="backlog under way")
        before = len(webhook_receiver.calls)
        await _publish_many(kit, [second], Priority.FLASH)
        await kit.until(lambda: _called(webhook_receiver, flash_ids[1]), what="second FLASH")
        calls = [c["id"] for c in webhook_receiver.calls]
        second_at = calls.index(flash_ids[1])
        print(f"FLASH webhooks at positions {first_at} and {second_at} (published at {before})")
        assert second_at - before < 100
        assert len(calls) < 10_002  # the backlog was not finished first


def _id(envelope: bytes) -> str:
    from relais.schemas.envelope import peek_header

    return str(peek_header(envelope).event_id)


def _called(receiver: Any, webhook_id: str) -> bool:
    return any(c["id"] == webhook_id for c in receiver.delivered())
