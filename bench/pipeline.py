"""End-to-end pipeline throughput and latency, secured against plaintext, measured in one run.

What is measured (4 recipients per event, a FLASH runaway alert of the demo territory)::

    sender: agent sealing -> ref.in.<sender> -> router -> ref.out.<r>.FLASH (x4)
      -> 4 recipient agents (pull, verify, open, SQLite inbox, ack, signed DELIVERED receipt)
      -> ref.rcpt.<r> -> tracker (verify the receipt, SQLite, RECEIPT audit record)

Secured pipeline: the production components, each in its own OS process (as deployed:
nothing runs in-process with anything else), against a real nats-server started for the
run from the configuration ``relais.broker_config`` generates (the demo territory's users
and permissions, streams and consumers provisioned as ``relais broker up`` does):

* sender: the agent's own sealing (``plan_event``: Avro validation and the routing rules;
  ``seal_planned``: encryption, key wrapping, signature), published to ``ref.in.<sender>``
  with ``Nats-Msg-Id = event id`` as the agent's outbox publisher does. Not measured: the
  sender's SQLite outbox (the same in both pipelines, before the path measured here);
* router: ``run_gateway(settings, {"router"})``, what ``relais gateway run --role router``
  runs (verification, rules, replay store, copies, ROUTED audit record);
* tracker: ``run_gateway(settings, {"tracker"})`` (receipt verification, tracker store,
  RECEIPT audit records, the audit checkpointer);
* recipients: one process per partner running the real
  :class:`~relais.agents.runtime.Agent` (no HTTP API, no webhook): pull, verify, open,
  SQLite inbox, acks, signed receipts.

Logs are configured as in production (one JSON line per event handled, to a file).

Plaintext pipeline: *the same processes running the same production code*, with only the
security work replaced by plain JSON (:func:`install_plaintext`): the sender JSON-encodes
the record with its routing fields (no Avro validation, no rules, no encryption, no
signature); the router's ``admit`` (signature, freshness, rules, audiences) becomes a JSON
parse; the recipient's verify and open become a JSON parse; receipts are JSON, unsigned;
the tracker parses them instead of verifying. Everything else is identical: subjects,
users, permissions, streams and consumers (on a second nats-server of the same
configuration and fsync mode, idle while the other pipeline runs), the stored messages of
an event (ingress, replay-store claim, 4 copies, ROUTED record, receipts, RECEIPT records),
the SQLite stores and transactions, acks, logs and metrics, and the batching. The ratio is
therefore the cost of the security work alone.

End-to-end latency: from the moment the sender starts sealing (resp. encoding) an event to
the moment the broker stored the tracker's RECEIPT (DELIVERED) audit record of its last
recipient (the store timestamp, read from an observer's push consumer on ``AUDIT``, on
the same host's clock). Per round and pipeline:

* saturated: a closed loop keeping ``--window`` events in flight; events/s is the
  throughput, p50/p99 are latencies at saturation (mostly queueing: window / throughput);
* paced: ``--rate`` events/s, below saturation: the latency of the path itself.

Rounds alternate secured and plaintext (the order flips every round); medians of the
rounds are printed, for the broker's default fsync and for ``sync_interval: always`` (the
production setting; the default mode needs the gateway's development flag
``allow_unsafe_no_fsync``), with each component's CPU per event (from /proc) and the
stored messages per event.

FLASH under backlog (fsync always, secured): ``--backlog`` ROUTINE events (care
orientations sealed to crip-93 with the real ``seal``) are published directly into
``ref.out.crip-93.ROUTINE``, with the router's headers, while crip-93's agent is stopped;
the agent is started again, and FLASH runaway alerts (through the router, 4 recipients)
are sent at ``--flash-rate`` while the backlog drains. Latency: sealing starts -> the
broker stored crip-93's signed receipt naming the alert (verified, opened, stored,
acknowledged, receipt signed). Compared with crip-93's empty queue before (sequential),
and with ase-93, a recipient of the same alerts with an empty queue, at the same moments
(simultaneous: the same machine load, which the drain itself adds to every hop here since
everything shares the same cores).

Machines here are noisy and shared: compare ratios measured in the same run, never
absolute figures across runs.

    python bench/pipeline.py [--quick] [--rounds 3] [--events 2000] [--window 128]
        [--rate 50] [--backlog 50000] [--modes default,always]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

RECIPIENTS = ("ase-93", "crip-93", "maraude-93", "parquet-93-bobigny")
SENDER = "gend-93-bobigny"
WATCHED = "crip-93"  # the recipient of the FLASH-under-backlog measurement
CONTROL = "ase-93"  # another recipient of the same FLASH alerts, with an empty queue
BACKLOG_SENDER = "ase-93"
PASSPHRASE = b"phrase de passe du banc d'essai"
RECORD_POOL = 32
STREAMS_OF_AN_EVENT = ("INGRESS", "SEEN", "DELIVERY", "AUDIT", "RECEIPTS")
# PERFORMANCE.md, a throwaway prototype (4 recipients, 3 processes on 2 cores), events/s
PROTOTYPE = {"default": (475, 1903), "always": (247, 369)}
_READY = "READY"
_UNSTAMPED = [0]  # pushed messages without a store timestamp (should stay 0)


def _now() -> float:
    """Wall-clock seconds: compared with the broker's store timestamps (same host)."""
    return time.time()


def _stored_at(msg: Any) -> float:
    """When the broker stored a message pushed by a consumer (its ack subject says)."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) >= 9 and tokens[:2] == ["$JS", "ACK"]:
        return int(tokens[-2]) / 1e9
    _UNSTAMPED[0] += 1
    return _now()


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- the world: territory on disk, brokers ------------------------------------------------------


@dataclass
class Broker:
    """One nats-server for one pipeline."""

    root: Path
    pid: int
    client_url: str
    monitor_url: str
    gateway_creds: Path  # the administrator's: provisioning and the bench's own observation
    sync_always: bool

    @property
    def router_creds(self) -> Path:
        """The router role's seed file."""
        return self.root / "creds" / "router.nk"

    @property
    def tracker_creds(self) -> Path:
        """The tracker role's seed file."""
        return self.root / "creds" / "tracker.nk"


def write_world(root: Path) -> Any:
    """The demo territory written under ``root`` (cheap key-file KDF: agents start fast)."""
    from relais.agents.keys import write_atomic
    from relais.agents.territory import build_territory

    territory = build_territory()
    territory.write(root, passphrase=PASSPHRASE, opslimit=1, memlimit=8192)
    write_atomic(root / "passphrase", PASSPHRASE + b"\n", overwrite=True)
    return territory


async def start_broker(root: Path, territory: Any, *, sync_always: bool) -> Broker:
    """A relais nats-server (generated configuration, provisioned), as the tests start one."""
    from relais.broker_config.embedded import provision_as_admin, start_server
    from relais.broker_config.nats_conf import (
        ServerSettings,
        build_config,
        ensure_service_seeds,
        write_config,
    )

    for sub in ("store", "ports", "creds"):
        (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    settings = ServerSettings(
        store_dir=root / "store", ports_file_dir=root / "ports", sync_always=sync_always
    )
    gateway_creds = root / "creds" / "admin.nk"
    config = build_config(
        territory.directory, services=ensure_service_seeds(root / "creds"), settings=settings
    )
    write_config(root / "nats-server.json", config)
    server = await asyncio.to_thread(
        start_server,
        root / "nats-server.json",
        ports_dir=root / "ports",
        log_file=root / "nats-server.log",
    )
    try:
        await provision_as_admin(
            server.client_url,
            admin_creds=gateway_creds,
            monitor_url=server.monitor_url,
            directory=territory.directory,
            allow_unsafe=not sync_always,
        )
    except BaseException:
        stop_broker_pid(server.pid)
        raise
    return Broker(
        root, server.pid, server.client_url, server.monitor_url, gateway_creds, sync_always
    )


def stop_broker_pid(pid: int) -> None:
    from relais.broker_config.embedded import stop_process

    with contextlib.suppress(Exception):
        stop_process(pid)


def server_version(broker: Broker) -> str:
    varz = httpx.get(f"{broker.monitor_url}/varz", timeout=5.0, trust_env=False).json()
    return str(varz.get("version"))


def stream_counts(broker: Broker) -> dict[str, int]:
    jsz = httpx.get(
        f"{broker.monitor_url}/jsz", params={"streams": "true"}, timeout=5.0, trust_env=False
    ).json()
    return {
        s["name"]: s["state"]["messages"]
        for account in jsz.get("account_details", [])
        for s in account.get("stream_detail", [])
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- plaintext: the security work replaced by JSON ---------------------------------------------


def plain_envelope(record: dict[str, Any], routing: dict[str, Any]) -> bytes:
    """The plaintext event: the record as JSON with its routing fields (no validation)."""
    from relais.schemas.registry import to_jsonable

    return json.dumps({**routing, "record": to_jsonable(record)}).encode()


def install_plaintext() -> None:
    """Replace the security work of this process's components by JSON (see the docstring).

    Router: ``admit`` (verification, freshness, rules, audiences) becomes a JSON parse.
    Recipient agent: verify + open (unwrap, decrypt, Avro decode) becomes a JSON parse;
    receipt statements are JSON, unsigned. Tracker: receipt verification becomes a JSON
    parse. Everything else runs unchanged.
    """
    from relais.agents import receipts, receiving
    from relais.agents.models import Delivery
    from relais.gateway import router, tracker
    from relais.gateway.tracker_store import EarlyReceipt, PartyState
    from relais.schemas.domain import EventType, Priority
    from relais.schemas.registry import to_jsonable

    def plain_admit(
        data: bytes, *, sender: str, policy: Any, now_ms: int, config: Any, **_: Any
    ) -> Any:
        body = json.loads(data)
        header = SimpleNamespace(
            event_id=uuid.UUID(body["event_id"]),
            event_type=EventType(body["event_type"]),
            sender=body["sender"],
            recipient_ids=tuple(body["recipients"]),
            fallback_ids=tuple(body["fallback"]),
            priority=Priority[body["priority"]],
            departement=body["departement"],
            routing=body["routing"],
            created_at_ms=body["created_at"],
            edition=policy.serial,
            rules_version=1,
        )
        decision = SimpleNamespace(
            rule_id=body["rule"],
            ruleset_version=1,
            deadline_seconds=body["deadline"],
            closes_case=False,
        )
        return router.Admitted(
            SimpleNamespace(header=header),  # type: ignore[arg-type]
            decision,  # type: ignore[arg-type]
            deliver_to=header.recipient_ids,
            fallback=header.fallback_ids,
            edition=policy.serial,
        )

    router.admit = plain_admit

    def plain_examine(self: Any, msg: Any, view: Any) -> Any:
        body = json.loads(msg.data)
        return Delivery(
            event_id=body["event_id"],
            event_type=body["event_type"],
            priority=int(Priority[body["priority"]]),
            sender=body["sender"],
            rule=(msg.headers or {}).get("Relais-Rule"),
            escalation=None,
            envelope=msg.data,
            stream_seq=receiving._stream_seq(msg)[0] or 0,
        )

    receiving.Receiver._examine_unguarded = plain_examine  # type: ignore[method-assign]

    def plain_sign(event_type: Any, record: dict[str, Any], *, signer: Any, **_: Any) -> bytes:
        return json.dumps(to_jsonable(record)).encode()

    receipts.sign_statement = plain_sign  # type: ignore[attr-defined,assignment]

    def plain_receipt(self: Any, subject: str, data: bytes, stored_ms: Any) -> Any:
        body = json.loads(data)
        partner = subject.split(".")[2]
        entries = tuple(
            (
                uuid.UUID(e["event_id"]),
                EarlyReceipt(
                    partner,
                    PartyState(e["state"]),
                    e.get("decline_reason"),
                    tracker._ms(dt.datetime.fromisoformat(e["at"])),
                    e.get("outcome"),
                ),
            )
            for e in body["entries"]
        )
        return partner, entries

    tracker.Tracker._verify_receipt = plain_receipt  # type: ignore[method-assign]


# -- workers (each one OS process) --------------------------------------------------------------


async def _stdin_closed() -> None:
    """Wait until the driver closes our stdin (the signal to stop)."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)


def _configure_logs(path: str) -> None:
    """Production logging (JSON lines), to a file."""
    from relais.agents.logs import configure_logging

    stream = open(path, "a", buffering=1 << 16)  # noqa: SIM115 - lives as long as the process
    configure_logging(json_output=True, stream=stream)


async def worker_gateway(spec: dict[str, Any]) -> None:
    """``run_gateway`` with one role, what ``relais gateway run --role <role>`` runs."""
    from relais.gateway.service import run_gateway
    from relais.gateway.settings import load_settings

    world = Path(spec["world"])
    settings = load_settings(
        nats_url=spec["client_url"],
        monitor_url=spec["monitor_url"],
        router_creds=spec["router_creds"],
        tracker_creds=spec["tracker_creds"],
        key_file=world / "keys" / "gateway.key",
        passphrase_file=world / "passphrase",
        directory_file=world / "directory.json",
        root_public_key=str(world / "root.pub"),
        data_dir=Path(spec["data_dir"]),
        allow_unsafe_no_fsync=not spec["sync_always"],
    )
    knobs = dict(spec.get("knobs") or {})
    if "atomic" in knobs:  # exploration only (--knobs): atomic batches on or off
        from relais.gateway import jetstream

        jetstream.use_atomic_batches(bool(knobs.pop("atomic")))
    if knobs:  # exploration only: RouterConfig values the gateway settings do not expose
        import functools

        from relais.gateway import router, service

        service.RouterConfig = functools.partial(  # type: ignore[attr-defined,assignment]
            router.RouterConfig, **knobs
        )
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_gateway(settings, {spec["role"]}, stop=stop, handle_signals=False)
    )
    await asyncio.sleep(0.5)
    if task.done():
        task.result()
    print(_READY, flush=True)
    await _stdin_closed()
    stop.set()
    await task


async def worker_recipients(spec: dict[str, Any]) -> None:
    """The real partner agents of ``spec["partners"]`` (one per process by default)."""
    from relais.agents.runtime import Agent
    from relais.agents.settings import load_settings

    world = Path(spec["world"])
    agents = []
    for partner in spec["partners"]:
        settings = load_settings(
            None,
            partner_id=partner,
            key_files=[world / "keys" / f"{partner}.key"],
            passphrase_file=world / "passphrase",
            root_public_key=str(world / "root.pub"),
            directory_file=world / "directory.json",
            nats_url=spec["client_url"],
            creds=world / "creds" / f"{partner}.nk",
            data_dir=Path(spec["data_dir"]) / partner,
            api_enabled=False,
        )
        agent = Agent(settings)
        await agent.start()
        agents.append(agent)
    while not all(a.readiness().nats for a in agents):  # noqa: ASYNC110 - polling readiness
        await asyncio.sleep(0.02)
    print(_READY, flush=True)
    await _stdin_closed()
    await asyncio.gather(*(a.stop() for a in agents))


class Observer:
    """Sees the tracker's audit records (and receipts) through push consumers, as gateway."""

    def __init__(self, conn: Any, expected: int) -> None:
        self._conn = conn
        self._expected = expected
        self.started: dict[str, float] = {}
        self.routed: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.first_receipt: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self._keys: Any = None
        self.receipts: dict[str, dict[str, float]] = {}  # partner -> event id -> seen at
        self._receipt_waiters: dict[tuple[str, str], asyncio.Future[float]] = {}

    async def _push(self, stream: str, subject: str, cb: Callable[[Any], Awaitable[None]]) -> None:
        inbox = self._conn.nc.new_inbox()
        await self._conn.subscribe(inbox, cb=cb)
        await self._conn.api(
            f"$JS.API.CONSUMER.CREATE.{stream}",
            {
                "stream_name": stream,
                "config": {
                    "deliver_subject": inbox,
                    "deliver_policy": "new",
                    "ack_policy": "none",
                    "filter_subject": subject,
                    "inactive_threshold": 60_000_000_000,
                },
            },
        )

    async def start(self) -> None:
        await self._push("AUDIT", "ref.audit.rec", self._on_audit)

    async def watch_receipts(self, partners: Sequence[str], keys: Any) -> None:
        """Also note when each of ``partners`` publishes its receipt of an event."""
        self._keys = keys
        for partner in partners:
            self.receipts[partner] = {}
            await self._push("RECEIPTS", f"ref.rcpt.{partner}", self._on_receipt)

    def expect_receipt(self, event_id: str, partner: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._receipt_waiters[(event_id, partner)] = future
        return future

    def expect(self, event_id: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters[event_id] = future
        return future

    def _complete(self, event_id: str, at: float) -> None:
        self.done[event_id] = at
        future = self._waiters.pop(event_id, None)
        if future is not None and not future.done():
            future.set_result(at)

    async def _on_audit(self, msg: Any) -> None:
        at = _stored_at(msg)
        record = json.loads(msg.data)
        event_id = record.get("event_id")
        if record.get("kind") == "ROUTED":
            self.routed[event_id] = at
        elif record.get("kind") == "RECEIPT" and record.get("state") == "DELIVERED":
            count = self._counts.get(event_id, 0) + 1
            if count == 1:
                self.first_receipt[event_id] = at
            self._counts[event_id] = count
            if count == self._expected:
                self._complete(event_id, at)

    async def _on_receipt(self, msg: Any) -> None:
        at = _stored_at(msg)
        partner = msg.subject.rsplit(".", 1)[-1]
        if msg.data[:1] == b"{":  # plaintext receipts
            entries = json.loads(msg.data)["entries"]
        else:
            from relais.schemas.statements import verify_statement

            entries = verify_statement(msg.data, keys=self._keys).record["entries"]
        for entry in entries:
            key = (str(entry["event_id"]), partner)
            future = self._receipt_waiters.pop(key, None)
            if future is not None and not future.done():
                future.set_result(at)


class Source:
    """Makes events as the sender's agent does (secured) or as plain JSON (plaintext)."""

    def __init__(self, territory_root: Path, secured: bool) -> None:
        from relais.agents.keyring import Keyring
        from relais.broker_config.directory import verify_directory
        from relais.broker_config.rules import default_rules
        from relais.schemas.domain import EventType
        from relais.schemas.samples import sample_event

        self.secured = secured
        self.rules = default_rules()
        root_pk = _read_root(territory_root)
        self.directory = verify_directory((territory_root / "directory.json").read_bytes(), root_pk)
        self.keyring = Keyring.load([territory_root / "keys" / f"{SENDER}.key"], PASSPHRASE)
        self.records = [
            sample_event(EventType.RUNAWAY_ALERT, in_care=True, prostitution_suspected=True)
            for _ in range(RECORD_POOL)
        ]
        self.event_type = EventType.RUNAWAY_ALERT
        self._i = 0
        from relais.agents.sealing import plan_event

        plan = plan_event(
            self.event_type,
            self.records[0],
            sender=SENDER,
            directory=self.directory,
            rules=self.rules,
            at_ms=time.time_ns() // 1_000_000,
        )
        if tuple(plan.decision.recipients) != RECIPIENTS:
            raise SystemExit(f"unexpected recipients {plan.decision.recipients}")
        d = plan.decision
        self.plain_routing = {
            "event_type": self.event_type.value,
            "sender": SENDER,
            "recipients": list(d.recipients),
            "fallback": list(d.fallback),
            "priority": d.priority.label,
            "departement": d.departement,
            "rule": f"{d.rule_id}@{d.ruleset_version}",
            "deadline": d.deadline_seconds,
        }

    def make(self) -> tuple[str, bytes]:
        """``(event id, bytes to publish)`` for the next event."""
        from relais.agents.sealing import plan_event, seal_planned
        from relais.schemas.envelope import new_event_id

        record = self.records[self._i % RECORD_POOL]
        self._i += 1
        now = time.time_ns() // 1_000_000
        event_id = new_event_id(now)
        if not self.secured:
            from relais.schemas.registry import default_registry

            routing = default_registry().by_type(self.event_type).routing_metadata(record)
            body = {
                **self.plain_routing,
                "event_id": str(event_id),
                "routing": routing,
                "created_at": now,
            }
            return str(event_id), plain_envelope(record, body)
        plan = plan_event(
            self.event_type,
            record,
            sender=SENDER,
            directory=self.directory,
            rules=self.rules,
            at_ms=now,
        )
        envelope = seal_planned(
            plan,
            sender=self.keyring.signer(self.directory, now),
            now_ms=now,
            ttl_ms=86_400_000,
            event_id=event_id,
        )
        return str(event_id), envelope


def _read_root(world: Path) -> bytes:
    from relais.agents.keys import read_root_public_key

    return read_root_public_key(str(world / "root.pub"))


class Sender:
    """Load generator and observer (one process, two connections)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.world = Path(spec["world"])
        self.source = Source(self.world, spec["secured"])
        self.conn: Any = None
        self.gw: Any = None
        self.observer: Observer | None = None
        self._pending: set[asyncio.Task[Any]] = set()

    async def open(self) -> None:
        from relais.broker_config.connection import connect
        from relais.broker_config.nats_conf import GATEWAY_INBOX, inbox_prefix

        self.conn = await connect(
            self.spec["client_url"],
            creds=self.world / "creds" / f"{SENDER}.nk",
            inbox_prefix=inbox_prefix(SENDER),
            name=SENDER,
            request_timeout=30.0,
        )
        self.gw = await connect(
            self.spec["client_url"],
            creds=Path(self.spec["gateway_creds"]),
            inbox_prefix=GATEWAY_INBOX,
            name="bench-observer",
            request_timeout=30.0,
        )
        self.observer = Observer(self.gw, len(RECIPIENTS))
        await self.observer.start()

    async def _publish(self, event_id: str, data: bytes) -> None:
        await self.conn.js_publish(f"ref.in.{SENDER}", data, msg_id=event_id)

    def _send(self) -> tuple[str, asyncio.Future[float], float]:
        assert self.observer is not None
        started = _now()
        event_id, data = self.source.make()
        future = self.observer.expect(event_id)
        self.observer.started[event_id] = started
        task = asyncio.create_task(self._publish(event_id, data))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return event_id, future, started

    async def saturated(self, n: int, window: int) -> dict[str, Any]:
        """Closed loop: ``window`` events in flight, ``n`` events."""
        slots = asyncio.Semaphore(window)
        latencies: list[float] = []
        done_at: list[float] = []

        async def one() -> None:
            await slots.acquire()
            _, future, started = self._send()

            def finished(f: asyncio.Future[float]) -> None:
                slots.release()
                if not f.cancelled():
                    latencies.append(f.result() - started)
                    done_at.append(f.result())

            future.add_done_callback(finished)

        t0 = _now()
        for _ in range(n):
            await one()
        deadline = _now() + 120
        while len(latencies) < n and _now() < deadline:  # noqa: ASYNC110 - bounded wait
            await asyncio.sleep(0.01)
        elapsed = max(done_at) - t0 if done_at else float("nan")
        return {
            "events": n,
            "completed": len(latencies),
            "seconds": elapsed,
            "eps": len(latencies) / elapsed,
            "p50": _percentile(latencies, 50) * 1000,
            "p99": _percentile(latencies, 99) * 1000,
        }

    async def paced(self, n: int, rate: float) -> dict[str, Any]:
        """Open loop at ``rate`` events/s: latencies of the path itself, and its stages."""
        obs = self.observer
        assert obs is not None
        sent: list[tuple[str, asyncio.Future[float], float]] = []
        t0 = _now()
        for i in range(n):
            delay = t0 + i / rate - _now()
            if delay > 0:
                await asyncio.sleep(delay)
            sent.append(self._send())
        latencies, routed, first = [], [], []
        for event_id, future, started in sent:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    latencies.append(await future - started)
            if event_id in obs.routed:
                routed.append(obs.routed[event_id] - started)
            if event_id in obs.first_receipt:
                first.append(obs.first_receipt[event_id] - started)
        return {
            "events": n,
            "completed": len(latencies),
            "p50": _percentile(latencies, 50) * 1000,
            "p99": _percentile(latencies, 99) * 1000,
            "routed_p50": _percentile(routed, 50) * 1000,
            "first_receipt_p50": _percentile(first, 50) * 1000,
            "unstamped": _UNSTAMPED[0],
        }

    async def flash(
        self, n: int, rate: float, watch: list[str], until_pending: int
    ) -> dict[str, Any]:
        """FLASH alerts at ``rate``; per partner of ``watch``, latency to its receipt.

        Stops early once the ROUTINE backlog of ``watch[0]`` falls below ``until_pending``
        (``-1``: send all ``n``).
        """
        from relais.schemas.domain import Priority

        obs = self.observer
        assert obs is not None
        if not obs.receipts:
            from relais.broker_config.directory import DirectoryKeys

            await obs.watch_receipts(watch, DirectoryKeys(self.source.directory))
        consumer = f"out-{watch[0]}-{Priority.ROUTINE.label}"
        sent: list[tuple[str, float, dict[str, asyncio.Future[float]]]] = []
        pending_seen: list[int] = []
        t0 = _now()
        for i in range(n):
            if until_pending >= 0 and i % 5 == 0:
                info = await self.gw.api(f"$JS.API.CONSUMER.INFO.DELIVERY.{consumer}")
                pending = int(info.get("num_pending", 0)) + int(info.get("num_ack_pending", 0))
                pending_seen.append(pending)
                if pending < until_pending:
                    break
            delay = t0 + i / rate - _now()
            if delay > 0:
                await asyncio.sleep(delay)
            event_id, _, started = self._send()
            sent.append((event_id, started, {p: obs.expect_receipt(event_id, p) for p in watch}))
        latencies: dict[str, list[float]] = {p: [] for p in watch}
        routed = []
        for event_id, started, futures in sent:
            for partner, future in futures.items():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(120):
                        latencies[partner].append(await future - started)
            if event_id in obs.routed:
                routed.append(obs.routed[event_id] - started)
        result: dict[str, Any] = {
            "events": len(sent),
            "routed_p50": _percentile(routed, 50) * 1000,
            "routed_p99": _percentile(routed, 99) * 1000,
            "backlog_first": pending_seen[0] if pending_seen else None,
            "backlog_last": pending_seen[-1] if pending_seen else None,
        }
        for partner, values in latencies.items():
            result[partner] = {
                "completed": len(values),
                "p50": _percentile(values, 50) * 1000,
                "p99": _percentile(values, 99) * 1000,
                "max": max(values, default=float("nan")) * 1000,
            }
        return result


async def worker_sender(spec: dict[str, Any]) -> None:
    sender = Sender(spec)
    await sender.open()
    print(_READY, flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        kind = command.pop("cmd")
        if kind == "saturated":
            result = await sender.saturated(**command)
        elif kind == "paced":
            result = await sender.paced(**command)
        elif kind == "flash":
            result = await sender.flash(**command)
        else:
            raise SystemExit(f"unknown command {kind}")
        print(json.dumps(result), flush=True)
    await sender.conn.close()
    await sender.gw.close()


WORKERS: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, None]]] = {
    "gateway": worker_gateway,
    "recipients": worker_recipients,
    "sender": worker_sender,
}


def run_worker(kind: str, spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    _configure_logs(spec["log"])
    if not spec["secured"]:
        install_plaintext()
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            asyncio.run(WORKERS[kind](spec))
        finally:
            profiler.disable()
            profiler.dump_stats(spec["profile"])
    else:
        asyncio.run(WORKERS[kind](spec))


# -- driver -------------------------------------------------------------------------------------


@dataclass
class Worker:
    """A worker process seen from the driver."""

    name: str
    proc: asyncio.subprocess.Process

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def command(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(body).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died")
        result: dict[str, Any] = json.loads(line)
        return result

    async def stop(self, wait: float = 20.0) -> None:
        if self.proc.returncode is None and self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(wait):
                await self.proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)  # our own child, by its pid
            await self.proc.wait()


@dataclass
class Pipeline:
    """One pipeline (secured or plaintext) on its own broker, and its worker processes."""

    name: str
    secured: bool
    broker: Broker
    world: Path
    work: Path
    profile: bool = False
    knobs: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] | None = None  # extra environment of the workers
    workers: dict[str, Worker] = field(default_factory=dict)

    def spec(self, role: str, **extra: Any) -> dict[str, Any]:
        return {
            "secured": self.secured,
            "world": str(self.world),
            "client_url": self.broker.client_url,
            "monitor_url": self.broker.monitor_url,
            "gateway_creds": str(self.broker.gateway_creds),
            "router_creds": str(self.broker.router_creds),
            "tracker_creds": str(self.broker.tracker_creds),
            "sync_always": self.broker.sync_always,
            "data_dir": str(self.work / role),
            "log": str(self.work / f"{role}.log"),
            "role": role,
            "profile": str(self.work / f"{role}.prof") if self.profile else None,
            "knobs": self.knobs,
            **extra,
        }

    async def launch(self, name: str, kind: str, spec: dict[str, Any]) -> Worker:
        spec_file = self.work / f"{name}.json"
        spec_file.write_text(json.dumps(spec))
        stderr = (self.work / f"{name}.stderr").open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--worker",
                kind,
                "--spec",
                str(spec_file),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, **self.env} if self.env else None,
            )
        finally:
            stderr.close()
        worker = Worker(name, proc)
        self.workers[name] = worker
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            line = await proc.stdout.readline()
        if line.strip().decode() != _READY:
            tail = (self.work / f"{name}.stderr").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"worker {name} did not start:\n{tail}")
        return worker

    async def start(self, per_process: int, recipients: Sequence[str] = RECIPIENTS) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        groups = [recipients[i : i + per_process] for i in range(0, len(recipients), per_process)]
        await asyncio.gather(
            self.launch("router", "gateway", self.spec("router")),
            self.launch("tracker", "gateway", self.spec("tracker")),
            *(
                self.launch(f"agents{i}", "recipients", self.spec(f"agents{i}", partners=group))
                for i, group in enumerate(groups)
            ),
        )
        await self.launch("sender", "sender", self.spec("sender"))

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers.values()))
        self.workers.clear()

    def cpu(self) -> dict[str, float]:
        usage = {name: cpu_seconds(w.pid) for name, w in self.workers.items()}
        usage["nats-server"] = cpu_seconds(self.broker.pid)
        return usage


def _per_event(after: dict[str, float], before: dict[str, float], events: int) -> dict[str, float]:
    """µs of CPU per event, the recipient agents summed up."""
    used = {k: (after[k] - before.get(k, 0.0)) / max(events, 1) * 1e6 for k in after}
    agents = sum(v for k, v in used.items() if k.startswith("agents"))
    return {k: v for k, v in used.items() if not k.startswith("agents")} | {"agents": agents}


async def measure_mode(
    args: argparse.Namespace, base: Path, territory: Any, *, sync_always: bool
) -> dict[str, Any]:
    """Alternate secured / plaintext rounds on two brokers of the same fsync mode."""
    mode = "always" if sync_always else "default"
    pipes: list[Pipeline] = []
    results: dict[str, dict[str, list[Any]]] = {}
    try:
        for name, secured in (("secured", True), ("plaintext", False)):
            broker = await start_broker(
                base / mode / name / "broker", territory, sync_always=sync_always
            )
            pipes.append(
                Pipeline(
                    name,
                    secured,
                    broker,
                    base / "world",
                    base / mode / name,
                    args.profile,
                    args.knobs,
                )
            )
            results[name] = {"sat": [], "paced": [], "cpu": []}
        version = server_version(pipes[0].broker)
        await asyncio.gather(*(p.start(args.agents_per_process) for p in pipes))
        for pipe in pipes:  # warm-up: connections, caches, first SQLite pages
            await pipe.workers["sender"].command(
                {"cmd": "saturated", "n": args.warmup, "window": args.window}
            )
        for rnd in range(args.rounds):
            for pipe in pipes if rnd % 2 == 0 else pipes[::-1]:
                sender = pipe.workers["sender"]
                before = pipe.cpu()
                sat = await sender.command(
                    {"cmd": "saturated", "n": args.events, "window": args.window}
                )
                cpu = _per_event(pipe.cpu(), before, sat["completed"])
                paced = await sender.command(
                    {"cmd": "paced", "n": args.paced_events, "rate": args.rate}
                )
                for kind, value in (("sat", sat), ("paced", paced), ("cpu", cpu)):
                    results[pipe.name][kind].append(value)
                print(
                    f"  [{mode}] round {rnd + 1} {pipe.name:>9}: {sat['eps']:5.0f} events/s"
                    f" (saturated p50 {sat['p50']:.0f} ms, p99 {sat['p99']:.0f} ms);"
                    f" paced {args.rate:g}/s p50 {paced['p50']:.1f} ms, p99 {paced['p99']:.1f} ms",
                    flush=True,
                )
        counts = {p.name: stream_counts(p.broker) for p in pipes}
    finally:
        await asyncio.gather(*(p.stop() for p in pipes), return_exceptions=True)
        for p in pipes:
            stop_broker_pid(p.broker.pid)
    return {"mode": mode, "version": version, "results": results, "counts": counts}


def report_mode(summary: dict[str, Any], args: argparse.Namespace) -> None:
    res = summary["results"]
    sec, pt = res["secured"], res["plaintext"]

    def med(r: dict[str, list[Any]], kind: str, key: str) -> float:
        return _median([x[key] for x in r[kind]])

    mode = summary["mode"]
    print(
        f"\nfsync {mode} (nats-server {summary['version']}), 4 recipients,"
        f" medians of {len(sec['sat'])} round(s)"
    )
    head = ("", "events/s", "sat. p50", "sat. p99", "paced p50", "paced p99", "routed", "1st rcpt")
    print(" ".join(f"{h:>10}" for h in head))
    for name, r in (("secured", sec), ("plaintext", pt)):
        cells = [
            f"{med(r, 'sat', 'eps'):.0f}",
            f"{med(r, 'sat', 'p50'):.0f} ms",
            f"{med(r, 'sat', 'p99'):.0f} ms",
            f"{med(r, 'paced', 'p50'):.1f} ms",
            f"{med(r, 'paced', 'p99'):.1f} ms",
            f"{med(r, 'paced', 'routed_p50'):.1f} ms",
            f"{med(r, 'paced', 'first_receipt_p50'):.1f} ms",
        ]
        print(" ".join(f"{c:>10}" for c in [name, *cells]))
    ratios = [s["eps"] / p["eps"] for s, p in zip(sec["sat"], pt["sat"], strict=True)]
    proto_s, proto_p = PROTOTYPE[mode]
    print(
        f"secured/plaintext events/s: {_median(ratios):.2f} (median of the per-round ratios "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + f"); prototype in PERFORMANCE.md: {proto_s} / {proto_p} = {proto_s / proto_p:.2f}"
    )
    print(
        f"paced {args.rate:g} events/s: 'routed' = the ROUTED record stored, '1st rcpt' = the"
        " first RECEIPT record stored (p50), from the start of sealing"
    )
    for name, r in (("secured", sec), ("plaintext", pt)):
        cpu = {k: _median([c[k] for c in r["cpu"]]) for k in r["cpu"][0]}
        parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(cpu.items()))
        print(f"  CPU µs/event, saturated, {name}: {sum(cpu.values()):.0f} ({parts})")
    for name, counts in summary["counts"].items():
        events = max(counts.get("INGRESS", 0), 1)
        per = {s: counts.get(s, 0) / events for s in STREAMS_OF_AN_EVENT}
        print(
            f"  stored messages per event, {name}: {sum(per.values()):.2f} ("
            + ", ".join(f"{s} {v:.2f}" for s, v in per.items())
            + ")"
        )
    unstamped = max((p.get("unstamped", 0) for r in (sec, pt) for p in r["paced"]), default=0)
    if unstamped:
        print(f"  warning: {unstamped} observed messages had no store timestamp")


async def measure_backlog(args: argparse.Namespace, base: Path, territory: Any) -> dict[str, Any]:
    """FLASH latency to crip-93 with an empty queue, then behind a ROUTINE backlog.

    The same alerts also go to ase-93, whose queue stays empty: its latency at the same
    moments is the control.
    """
    broker = await start_broker(base / "backlog" / "broker", territory, sync_always=True)
    pipe = Pipeline("secured", True, broker, base / "world", base / "backlog", args.profile)
    flash = {"cmd": "flash", "rate": args.flash_rate, "watch": [WATCHED, CONTROL]}
    try:
        pipe.work.mkdir(parents=True, exist_ok=True)
        await asyncio.gather(
            pipe.launch("router", "gateway", pipe.spec("router")),
            pipe.launch("tracker", "gateway", pipe.spec("tracker")),
            *(
                pipe.launch(f"agent-{p}", "recipients", pipe.spec(f"agent-{p}", partners=[p]))
                for p in RECIPIENTS
            ),
        )
        sender = await pipe.launch("sender", "sender", pipe.spec("sender"))
        await sender.command({**flash, "n": 20, "until_pending": -1})  # warm-up
        empty = await sender.command({**flash, "n": args.flash_events, "until_pending": -1})
        _print_flash("empty queues", empty)
        await pipe.workers.pop(f"agent-{WATCHED}").stop()
        started = _now()
        await publish_backlog(broker, base / "world", args.backlog)
        print(
            f"  {args.backlog} ROUTINE events sealed for {WATCHED} and published to"
            f" ref.out.{WATCHED}.ROUTINE while its agent was stopped"
            f" ({_now() - started:.0f} s)",
            flush=True,
        )
        drain_start = _now()
        await pipe.launch(
            f"agent-{WATCHED}", "recipients", pipe.spec(f"agent-{WATCHED}", partners=[WATCHED])
        )
        loaded = await sender.command(
            {**flash, "n": 10**6, "until_pending": max(1, args.backlog // 10)}
        )
        loaded["seconds"] = _now() - drain_start
        _print_flash(f"{WATCHED} draining its backlog", loaded)
    finally:
        await pipe.stop()
        stop_broker_pid(broker.pid)
    return {"empty": empty, "loaded": loaded}


def _print_flash(title: str, result: dict[str, Any]) -> None:
    parts = [
        f"{p} p50 {result[p]['p50']:.1f} ms, p99 {result[p]['p99']:.1f} ms"
        for p in (WATCHED, CONTROL)
    ]
    extra = ""
    if result.get("backlog_first") is not None:
        extra = (
            f"; {WATCHED}'s ROUTINE queue {result['backlog_first']} ->"
            f" {result['backlog_last']} in {result.get('seconds', 0):.0f} s"
        )
    print(
        f"  FLASH, {title}: {'; '.join(parts)} (routed p50 {result['routed_p50']:.1f} ms,"
        f" p99 {result['routed_p99']:.1f} ms; {result['events']} alerts{extra})",
        flush=True,
    )


def _seal_backlog(job: tuple[str, int]) -> list[tuple[str, bytes]]:
    """Seal ``count`` care orientations from ase-93 for crip-93 (a process-pool task)."""
    from relais.agents.keyring import Keyring
    from relais.broker_config.directory import DirectoryKeys, verify_directory
    from relais.schemas.domain import EventType, Priority
    from relais.schemas.envelope import Recipient, new_event_id, seal
    from relais.schemas.samples import sample_event

    world, count = job
    root = Path(world)
    directory = verify_directory((root / "directory.json").read_bytes(), _read_root(root))
    keyring = Keyring.load([root / "keys" / f"{BACKLOG_SENDER}.key"], PASSPHRASE)
    now = time.time_ns() // 1_000_000
    key_id, box_pk = DirectoryKeys(directory).box_key(WATCHED, now)
    target = Recipient(WATCHED, key_id, box_pk)
    signer = keyring.signer(directory, now)
    records = [sample_event(EventType.CARE_ORIENTATION, addressed_to=WATCHED) for _ in range(16)]
    out = []
    for i in range(count):
        event_id = new_event_id(now)
        envelope = seal(
            EventType.CARE_ORIENTATION,
            records[i % 16],
            sender=signer,
            partnership=directory.partnership,
            recipients=[target],
            departement="93",
            priority=Priority.ROUTINE,
            now_ms=now,
            event_id=event_id,
        )
        out.append((str(event_id), envelope))
    return out


async def publish_backlog(broker: Broker, world: Path, count: int) -> None:
    """Seal ``count`` ROUTINE events for crip-93 (2 processes), publish them as the router."""
    from relais.broker_config.connection import connect
    from relais.broker_config.nats_conf import GATEWAY_INBOX
    from relais.gateway.delivery import copy_message
    from relais.gateway.jetstream import publish_many
    from relais.schemas.domain import EventType, Priority

    chunk = 1000
    jobs = [(str(world), min(chunk, count - i)) for i in range(0, count, chunk)]
    conn = await connect(
        broker.client_url,
        creds=broker.gateway_creds,
        inbox_prefix=GATEWAY_INBOX,
        name="bench-backlog",
        request_timeout=60.0,
    )
    try:
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            for sealed in pool.imap(_seal_backlog, jobs):
                copies = [
                    copy_message(
                        envelope,
                        partner=WATCHED,
                        priority=Priority.ROUTINE,
                        event_id=uuid.UUID(event_id),
                        event_type=EventType.CARE_ORIENTATION,
                        rule="care-orientation@1",
                    )
                    for event_id, envelope in sealed
                ]
                failed = [r for r in await publish_many(conn, copies) if isinstance(r, Exception)]
                if failed:
                    raise failed[0]
    finally:
        await conn.close()


async def main_async(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="relais-bench-"))
    print(
        "relais pipeline bench: 4 recipients per event; every component in its own OS process"
        " (sender + observer, router, tracker, one process per recipient agent), two"
        f" nats-servers per fsync mode (secured, plaintext); {os.cpu_count()} CPUs;"
        f" work dir {base}",
        flush=True,
    )
    summaries = []
    try:
        territory = write_world(base / "world")
        for mode in args.modes:
            summary = await measure_mode(args, base, territory, sync_always=mode == "always")
            summaries.append(summary)
            report_mode(summary, args)
        backlog = None
        if args.backlog > 0:
            print("\nFLASH under a ROUTINE backlog (fsync always, secured)", flush=True)
            backlog = await measure_backlog(args, base, territory)
        print("\n== summary ==")
        for summary in summaries:
            report_mode(summary, args)
        if backlog is not None:
            empty, loaded = backlog["empty"], backlog["loaded"]
            print(
                f"\nFLASH p99 to {WATCHED} with {args.backlog} ROUTINE events queued for it:"
                f" {loaded[WATCHED]['p99']:.1f} ms (p50 {loaded[WATCHED]['p50']:.1f} ms)\n"
                f"  vs. its empty queue before (sequential): {empty[WATCHED]['p99']:.1f} ms"
                f" (p50 {empty[WATCHED]['p50']:.1f}): ratio"
                f" {loaded[WATCHED]['p99'] / empty[WATCHED]['p99']:.2f}\n"
                f"  vs. {CONTROL}'s empty queue, same alerts, same moments:"
                f" {loaded[CONTROL]['p99']:.1f} ms (p50 {loaded[CONTROL]['p50']:.1f}): ratio"
                f" {loaded[WATCHED]['p99'] / loaded[CONTROL]['p99']:.2f}   (target ≤ 2)"
            )
    except BaseException:
        print(f"failed: the work directory {base} is kept", file=sys.stderr)
        raise
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per pipeline and mode")
    parser.add_argument("--events", type=int, default=2000, help="events per saturated run")
    parser.add_argument("--window", type=int, default=128, help="events in flight, saturated")
    parser.add_argument("--warmup", type=int, default=300, help="events before the rounds")
    parser.add_argument("--rate", type=float, default=50.0, help="events/s of the paced run")
    parser.add_argument("--paced-events", type=int, default=250)
    parser.add_argument("--backlog", type=int, default=50_000, help="ROUTINE events; 0: skip")
    parser.add_argument("--flash-rate", type=float, default=20.0, help="FLASH alerts/s")
    parser.add_argument("--flash-events", type=int, default=100, help="alerts, empty queues")
    parser.add_argument("--modes", default="default,always", help="fsync modes to measure")
    parser.add_argument(
        "--agents-per-process", type=int, default=1, help="recipient agents per OS process"
    )
    parser.add_argument(
        "--knobs",
        type=json.loads,
        default={},
        help='exploration: RouterConfig fields and "atomic" (0/1) for the gateway, as JSON',
    )
    parser.add_argument("--profile", action="store_true", help="cProfile every worker")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.events, args.warmup = 1, 400, 100
        args.paced_events, args.backlog, args.flash_events = 60, 2000, 30
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    return args


def main() -> int:
    args = parse_args()
    if args.worker:
        run_worker(args.worker, args.spec)
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
