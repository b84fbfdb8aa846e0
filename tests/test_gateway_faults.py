"""The gateway as real processes (``python -m relais.gateway``) killed with SIGKILL, and
the faults it must refuse to start with.

* A FLASH runaway alert with a short deadline (a rules file) is escalated within 2 s of its
  deadline although the gateway was killed and restarted in between; an alert whose
  deadline passed while the gateway was down is escalated as soon as it is back. The
  fallback recipient opens the original envelope with its own key.
* Two routers share the ``router`` consumer; one is killed mid-load (300 events): every
  recipient's consumer holds exactly one copy of each event it should get, and the audit
  log one ``ROUTED`` record per event.

* Settings: relative paths, bad values, a gateway key the directory does not list as the
  gateway's, a directory edition older than the one on ``ref.dir``, ``relais gateway run``
  with a bad configuration.

Readiness is read from the processes' own log lines (``gateway.started``) and from the
broker's state; every wait is bounded. The canary written into every event's content must
not appear in any of the processes' logs.
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
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nacl.pwhash import argon2id
from typer.testing import CliRunner

from relais.agents.keys import read_root_public_key, read_secret_file, write_key_file
from relais.broker_config.directory import bump_serial, sign_directory
from relais.broker_config.rules import default_rules, default_rules_text, with_deadline
from relais.cli.gateway_cmd import app as gateway_app
from relais.gateway.audit import RECORD_SUBJECT, decode_record
from relais.gateway.jetstream import read_stream
from relais.gateway.policy import Policy, check_gateway_identity
from relais.gateway.service import load_policy, publish_directory
from relais.gateway.settings import load_settings
from relais.schemas.domain import EventType, Priority
from relais.schemas.envelope import open_envelope, peek_header
from relais.schemas.errors import ConfigError, DirectoryError, Reason
from relais.schemas.samples import sample_event

CANARY = "TEMOIN-CANARI-PANNES"
GEND = "gend-93-bobigny"
SCHOOL = "college-93-jaures"
PARQUET = "parquet-93-bobigny"
PASSPHRASE = b"phrase de passe de la passerelle"
GATEWAY_COMMAND = (sys.executable, "-m", "relais.gateway")
BOUND = 30.0  # upper bound of a wait, not a performance target


@dataclass
class GatewayProcess:
    """One ``python -m relais.gateway`` process and its log file."""

    config: Path
    role: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def start(self) -> None:
        self.started_at = time.monotonic()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*GATEWAY_COMMAND, "--config", str(self.config), "--role", self.role],
                stdout=out,
                stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def count(self, event: str) -> int:
        return sum(1 for line in self.lines() if line.get("event") == event)

    async def ready(self, starts: int = 1) -> float:
        """Wait for the ``starts``-th ``gateway.started`` line; when it was seen."""
        deadline = time.monotonic() + BOUND
        while self.count("gateway.started") < starts:
            assert self.process is not None
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the gateway did not start"
            await asyncio.sleep(0.05)
        return time.monotonic()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=BOUND)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=BOUND)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise
        return self.process.returncode


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.process is not None and proc.process.poll() is None:
                proc.process.kill()
                proc.process.wait(timeout=BOUND)


def write_config(root: Path, broker, territory, *, deadline: int | None = None) -> Path:
    """Gateway settings for ``broker``: key file, passphrase, directory, root key, rules."""
    root.mkdir(parents=True, exist_ok=True)
    write_key_file(
        root / "gateway.key",
        territory.identities["gateway"],
        PASSPHRASE,
        opslimit=argon2id.OPSLIMIT_MIN,
        memlimit=argon2id.MEMLIMIT_MIN,
    )
    passphrase = root / "gateway.pass"
    passphrase.write_bytes(PASSPHRASE + b"\n")
    passphrase.chmod(0o600)
    (root / "directory.json").write_bytes(territory.signed_directory)
    (root / "root.pub").write_text(territory.root_public_b64 + "\n")
    rules = default_rules_text()
    if deadline is not None:
        rules = with_deadline(rules, "runaway-alert", deadline)
    (root / "rules.toml").write_text(rules)
    config = root / "gateway.toml"
    config.write_text(
        "\n".join(
            [
                f'nats_url = "{broker.client_url}"',
                f'monitor_url = "{broker.monitor_url}"',
                f'router_creds = "{broker.router_creds}"',
                f'tracker_creds = "{broker.tracker_creds}"',
                'key_file = "gateway.key"',
                'passphrase_file = "gateway.pass"',
                'directory_file = "directory.json"',
                'root_public_key = "root.pub"',
                'rules_file = "rules.toml"',
                'data_dir = "data"',
                "escalation_tick_seconds = 0.2",
                "checkpoint_interval_seconds = 1.0",
                "",
            ]
        )
    )
    return config


async def publish_as(broker, partner: str, data: bytes) -> None:
    conn = await broker.partner(partner)
    try:
        await conn.js_publish(f"ref.in.{partner}", data, msg_id=str(peek_header(data).event_id))
    finally:
        await conn.close()


async def routed_records(conn) -> list[dict[str, Any]]:
    return [
        record
        async for msg in read_stream(conn, "AUDIT")
        if msg.subject == RECORD_SUBJECT and (record := decode_record(msg.data))["kind"] == "ROUTED"
    ]


async def escalated_ids(conn) -> list[str]:
    found = [
        record["event_id"]
        async for msg in read_stream(conn, "AUDIT")
        if msg.subject == RECORD_SUBJECT
        and (record := decode_record(msg.data))["kind"] == "ESCALATED"
    ]
    return sorted(found)


async def consumer_idle(conn, stream: str, consumer: str) -> bool:
    info = await conn.api(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}")
    return info["num_pending"] == 0 and info["num_ack_pending"] == 0


async def learnt(conn, event_id: str) -> dict[str, Any]:
    """The ROUTED record of ``event_id`` once the tracker has acknowledged it (committed)."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        found = [r for r in await routed_records(conn) if r["event_id"] == event_id]
        if found and await consumer_idle(conn, "AUDIT", "tracker-audit"):
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError("the tracker did not learn the alert")


async def escalated_copy(broker, partner: str, event_id: str) -> tuple[float, Any]:
    """Wait for the escalated envelope on ``partner``'s FLASH consumer: (when, message)."""
    conn = await broker.partner(partner)
    deadline = time.monotonic() + BOUND
    try:
        while time.monotonic() < deadline:
            for msg in await conn.fetch("DELIVERY", f"out-{partner}-FLASH", 10, expires=0.2):
                await conn.ack(msg)
                headers = msg.headers or {}
                if headers.get("Relais-Event-Id") == event_id and msg.data[4] == 0x01:
                    assert "Relais-Escalation" in headers
                    return time.time(), msg
    finally:
        await conn.close()
    raise AssertionError("no escalation")


@pytest.mark.slow
async def test_escalation_survives_sigkill_and_restart(
    broker_factory, demo_territory, territory_directory, sealer, tmp_path, processes
):
    t = demo_territory
    broker = await broker_factory(territory_directory(t))
    config = write_config(tmp_path / "gw", broker, t, deadline=6)
    gateway = GatewayProcess(config, "all", tmp_path / "gateway.log")
    processes.append(gateway)
    gateway.start()
    await gateway.ready()
    conn = await broker.gateway()
    try:
        record = sample_event(
            EventType.RUNAWAY_ALERT, canary=CANARY, prostitution_suspected=False, in_care=False
        )
        alert = sealer(t, EventType.RUNAWAY_ALERT, record, sender=GEND)
        event_id = str(peek_header(alert).event_id)
        assert PARQUET in peek_header(alert).fallback_ids
        await publish_as(broker, GEND, alert)
        routed = await learnt(conn, event_id)
        gateway.kill()  # between routing and the deadline
        gateway.start()
        await gateway.ready(starts=2)
        arrived, copy = await escalated_copy(broker, PARQUET, event_id)
        late_ms = arrived * 1000 - routed["deadline_at"]
        assert late_ms <= 2000, f"escalated {late_ms:.0f} ms after the deadline"
        opened = open_envelope(copy.data, recipient=t.identities[PARQUET], keys=t.keys())
        assert CANARY in repr(opened.fields)

        # Overdue while the gateway is down: escalated as soon as it is back.
        second = sealer(t, EventType.RUNAWAY_ALERT, record, sender=GEND)
        second_id = str(peek_header(second).event_id)
        await publish_as(broker, GEND, second)
        routed = await learnt(conn, second_id)
        gateway.kill()
        await asyncio.sleep(max(0.0, (routed["deadline_at"] + 500) / 1000 - time.time()))
        gateway.start()
        ready = await gateway.ready(starts=3)
        await escalated_copy(broker, PARQUET, second_id)
        assert time.monotonic() - ready <= 2.0
        # the ESCALATED record follows the deliveries: poll for it
        wanted = sorted([event_id, second_id])
        deadline = time.monotonic() + BOUND
        while (got := await escalated_ids(conn)) != wanted:
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    assert gateway.stop() == 0
    assert CANARY not in gateway.log.read_text()


def routable_events(t, sealer, count: int) -> list[tuple[str, bytes]]:
    events = []
    for n in range(count):
        if n % 3 == 0:
            record = sample_event(EventType.DANGER_DECLARATION, canary=CANARY)
            events.append((SCHOOL, sealer(t, EventType.DANGER_DECLARATION, record, sender=SCHOOL)))
        else:
            record = sample_event(EventType.RUNAWAY_ALERT, canary=CANARY, in_care=n % 2 == 0)
            events.append((GEND, sealer(t, EventType.RUNAWAY_ALERT, record, sender=GEND)))
    return events


async def count_copies(broker, partners: set[str]) -> Counter[tuple[str, str]]:
    """(event id, partner) -> copies on the partner's consumers, pulled until quiet."""
    copies: Counter[tuple[str, str]] = Counter()
    for partner in sorted(partners):
        conn = await broker.partner(partner)
        try:
            for priority in Priority:
                consumer = f"out-{partner}-{priority.label}"
                while batch := await conn.fetch("DELIVERY", consumer, 500, expires=0.3):
                    for msg in batch:
                        await conn.ack(msg)
                        copies[(msg.headers["Relais-Event-Id"], partner)] += 1
        finally:
            await conn.close()
    return copies


@pytest.mark.slow
async def test_two_routers_one_killed_mid_load(
    broker_factory, demo_territory, territory_directory, sealer, tmp_path, processes
):
    t = demo_territory
    broker = await broker_factory(territory_directory(t))
    config = write_config(tmp_path / "gw", broker, t)
    routers = [GatewayProcess(config, "router", tmp_path / f"router{i}.log") for i in (1, 2)]
    processes.extend(routers)
    for router in routers:
        router.start()
    for router in routers:
        await router.ready()
    events = routable_events(t, sealer, 300)
    headers = [peek_header(data) for _, data in events]
    expected = {(str(h.event_id), p) for h in headers for p in h.recipient_ids}
    senders = {s: await broker.partner(s) for s in (GEND, SCHOOL)}
    conn = await broker.gateway()
    try:
        for sender, data in events:
            await senders[sender].js_publish(
                f"ref.in.{sender}", data, msg_id=str(peek_header(data).event_id)
            )
        deadline = time.monotonic() + BOUND
        while routers[0].count("router.routed") < 20:
            assert time.monotonic() < deadline, "router 1 did not route"
            await asyncio.sleep(0.01)
        routers[0].kill()
        killed_after = routers[0].count("router.routed")
        while len(await routed_records(conn)) < len(events) or not await consumer_idle(
            conn, "INGRESS", "router"
        ):
            assert time.monotonic() < deadline + BOUND, "not every event was routed"
            await asyncio.sleep(0.2)
        records = await routed_records(conn)
        copies = await count_copies(broker, {p for _, p in expected})
    finally:
        await conn.close()
        for sender_conn in senders.values():
            await sender_conn.close()
    assert killed_after < len(events), "the router was killed mid-load"
    assert Counter(r["event_id"] for r in records) == Counter(
        str(peek_header(data).event_id) for _, data in events
    )
    assert set(copies) == expected
    assert set(copies.values()) == {1}
    assert broker.stream_counts()["DELIVERY"] == len(expected)
    assert routers[1].stop() == 0
    for router in routers:
        assert CANARY not in router.log.read_text()


# -- configuration faults ----------------------------------------------------------------------


def test_settings_file_and_refusals(broker_factory, demo_territory, tmp_path) -> None:
    t = demo_territory
    broker = type("B", (), {"client_url": "nats://127.0.0.1:1", "monitor_url": "http://x"})()
    broker.router_creds = tmp_path / "router.nk"
    broker.tracker_creds = tmp_path / "tracker.nk"
    config = write_config(tmp_path / "gw", broker, t, deadline=5)
    settings = load_settings(config)
    assert settings.key_file == (tmp_path / "gw" / "gateway.key").resolve()
    assert settings.database == (tmp_path / "gw" / "data" / "tracker.sqlite3").resolve()
    assert read_root_public_key(settings.root_public_key) == t.root_public_key
    assert read_secret_file(settings.passphrase_file, "passphrase") == PASSPHRASE
    policy, signed = load_policy(settings)
    assert signed == t.signed_directory
    assert policy.rules.by_type[EventType.RUNAWAY_ALERT].deadline_seconds == 5
    check_gateway_identity(policy, t.identities["gateway"], int(time.time() * 1000))
    with pytest.raises(ConfigError):
        check_gateway_identity(policy, t.identities[GEND], int(time.time() * 1000))
    with pytest.raises(ConfigError):
        load_settings(config, max_age_seconds=-1)
    (tmp_path / "gw" / "gateway.pass").chmod(0o644)
    with pytest.raises(ConfigError):
        read_secret_file(settings.passphrase_file, "passphrase")
    result = CliRunner().invoke(gateway_app, ["run", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    (tmp_path / "bad.toml").write_text('nats_url = "nats://x"\n')
    result = CliRunner().invoke(gateway_app, ["run", "--config", str(tmp_path / "bad.toml")])
    assert result.exit_code == 2
    assert "CONFIG_INVALID" in result.stderr


async def test_refuses_an_older_directory_edition(
    broker_factory, demo_territory, territory_directory
) -> None:
    t = demo_territory
    broker = await broker_factory(territory_directory(t))
    newer = bump_serial(t.directory)
    signed_newer = sign_directory(newer, t.root)
    conn = await broker.gateway()
    try:
        policy = Policy(newer, default_rules())
        assert await publish_directory(conn, signed_newer, policy, t.root_public_key)
        old = Policy(t.directory, default_rules())
        with pytest.raises(DirectoryError) as caught:
            await publish_directory(conn, t.signed_directory, old, t.root_public_key)
        assert caught.value.reason is Reason.DIRECTORY_ROLLBACK
    finally:
        await conn.close()


@pytest.mark.slow
async def test_roles_started_before_the_broker_come_up_by_themselves(
    demo_territory, tmp_path, processes
):
    """The router, two trackers (one becomes the standby) and a third tracker started with
    the same directory edition all wait for a broker that is down, then start when it comes
    back: no supervisor, no exit on a passing error (not even the concurrent publications of
    the same directory edition)."""
    import socket
    from types import SimpleNamespace

    from relais.broker_config import embedded
    from relais.broker_config.network import NetworkSettings

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    t = demo_territory
    data_dir = tmp_path / "broker"
    network = NetworkSettings(port=free_port(), monitor_port=free_port())
    info, _ = await embedded.broker_up(
        data_dir, directory=t.signed_directory, root_public_key=t.root_public_key, network=network
    )
    embedded.broker_down(data_dir)  # the broker is down when the roles start
    paths = embedded.BrokerPaths(data_dir)
    broker = SimpleNamespace(
        client_url=info.client_url,
        monitor_url=info.monitor_url,
        router_creds=paths.router_creds,
        tracker_creds=paths.tracker_creds,
    )
    roles = ["router", "tracker", "tracker"]
    started = []
    for n, role in enumerate(roles):
        config = write_config(tmp_path / f"gw{n}", broker, t)
        started.append(GatewayProcess(config, role, tmp_path / f"{role}{n}.log"))
    processes.extend(started)
    for proc in started:
        proc.start()
    try:
        await asyncio.sleep(1.5)  # they retry meanwhile (a real wait: the broker is down)
        for proc in started:
            assert proc.process is not None
            assert proc.process.poll() is None, proc.log.read_text()  # still there
        again, _ = await embedded.broker_up(data_dir)  # the same ports, kept in network.json
        assert again.client_url == info.client_url
        for proc in started:
            await proc.ready()
            assert proc.count("gateway.start_retry") >= 1
        trackers = [p for p in started if p.role == "tracker"]
        deadline = time.monotonic() + BOUND
        while sum(p.count("tracker.active") for p in trackers) < 1:
            assert time.monotonic() < deadline, "no tracker became active"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        assert sum(p.count("tracker.active") for p in trackers) == 1  # the other one waits
    finally:
        for proc in started:
            proc.stop()
        embedded.broker_down(data_dir)
