"""The gateway service: router and tracker roles as asyncio tasks of one process.

:func:`run_gateway` checks that the broker fsyncs every write (``require_sync_always``;
refused unless ``allow_unsafe_no_fsync``), loads the gateway's signing key, the signed
directory (verified against the pinned root key) and the rules, connects as the gateway
user, publishes the directory on ``ref.dir`` when it is newer than the last edition there
(an older one is refused: ``DIRECTORY_ROLLBACK``), then runs the roles until SIGTERM or
SIGINT:

* ``router``: :class:`~relais.gateway.router.Router` (run as many router processes as
  needed: they share the durable consumer);
* ``tracker``: :class:`~relais.gateway.tracker.Tracker` and the audit
  :class:`~relais.gateway.checkpoint.Checkpointer` (run exactly one).

The configuration edition (:mod:`relais.broker_config.edition`) is the directory and the
routing rules it embeds, signed together: the router and the tracker route with those rules
(``rules_file`` in the settings overrides them, for tests and demonstrations only). An
expired edition is refused (``DIRECTORY_EXPIRED``) at start and on reload; the gateway
warns ahead of the end of the edition in force (``gateway.directory_expiring``, gauge
``relais_gateway_directory_expires_seconds``). SIGHUP reloads the directory file (a newer,
unexpired edition only), publishes the edition and hands the new policy to the roles; the
router honours the edition it replaces for its grace period. Logs: structlog, one JSON
object per line when stderr is not a terminal, one canonical line per event handled, ids
and codes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import stamina
import structlog

from relais.agents.keys import (
    PartnerKeys,
    load_key_file,
    read_root_public_key,
    read_secret_file,
)
from relais.broker_config.connection import Connection, connect, require_sync_always
from relais.broker_config.directory import verify_directory
from relais.broker_config.edition import ExpiryState, expiry_state, verify_edition
from relais.broker_config.nats_conf import ROUTER_INBOX, TRACKER_INBOX
from relais.broker_config.rules import load_rules
from relais.gateway import metrics
from relais.gateway.active import ActiveTracker, LeaderJob
from relais.gateway.checkpoint import Checkpointer
from relais.gateway.jetstream import last_for_subject, publish, use_atomic_batches
from relais.gateway.keeper import Keeper, KeeperConfig
from relais.gateway.lease import Lease
from relais.gateway.policy import Policy, check_gateway_identity
from relais.gateway.router import Router, RouterConfig
from relais.gateway.settings import GatewaySettings
from relais.gateway.tracker import Tracker, TrackerConfig
from relais.gateway.tracker_store import TrackerStore
from relais.schemas.errors import (
    ConfigError,
    DirectoryError,
    Reason,
    RelaisError,
    TransportError,
)
from relais.schemas.names import DIRECTORY_SUBJECT

__all__ = ["ROLES", "load_policy", "publish_directory", "run_gateway"]

ROLES: Final = frozenset({"router", "tracker"})
_DIRECTORY_STREAM: Final = "DIRECTORY"
_DIRECTORY_SUBJECT: Final = DIRECTORY_SUBJECT

_EXPIRY_TICK: Final = 10.0
_log = structlog.get_logger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _read(path: Any, what: str) -> bytes:
    try:
        return bytes(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def load_policy(
    settings: GatewaySettings, *, min_serial: int | None = None
) -> tuple[Policy, bytes]:
    """The verified edition the settings name (its directory and its rules), and its bytes.

    Refused: an older edition than ``min_serial`` (``DIRECTORY_ROLLBACK``), an expired one
    (``DIRECTORY_EXPIRED``), one whose rules are invalid (``RULES_INVALID``).
    """
    signed = _read(settings.directory_file, "the signed directory")
    root = read_root_public_key(settings.root_public_key)
    edition = verify_edition(signed, root, min_serial=min_serial, now_ms=_now_ms())
    if settings.rules_file is None:
        return Policy(edition.directory, edition.rules), signed
    rules = load_rules(settings.rules_file)
    _log.warning("gateway.rules_override", version=rules.version, edition=edition.serial)
    return Policy(edition.directory, rules), signed


async def watch_expiry(policy: Callable[[], Policy], stop: asyncio.Event) -> None:
    """Gauges of the edition in force; a warning ahead of its end, an error once past."""
    reported: tuple[int, ExpiryState] | None = None
    while not stop.is_set():
        current = policy()
        state, left = expiry_state(current.directory, _now_ms())
        metrics.DIRECTORY_SERIAL.set(current.serial)
        metrics.DIRECTORY_EXPIRES.set(left)
        if state is not ExpiryState.VALID and reported != (current.serial, state):
            reported = (current.serial, state)
            log = _log.error if state is ExpiryState.EXPIRED else _log.warning
            log(f"gateway.directory_{state.value}", serial=current.serial, seconds_left=round(left))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=_EXPIRY_TICK)


async def publish_directory(
    conn: Connection, signed: bytes, policy: Policy, root_public_key: bytes
) -> bool:
    """Publish the edition on ``ref.dir`` unless the last one there is as new; True if published.

    An edition there that is newer than ours is refused (``DIRECTORY_ROLLBACK``): the agents
    would route by rules the gateway does not apply.
    """
    last = await last_for_subject(conn, _DIRECTORY_STREAM, _DIRECTORY_SUBJECT)
    if last is not None:
        try:
            current = verify_directory(last.data, root_public_key).serial
        except DirectoryError:
            current = -1  # not a valid edition: replaced by ours
        if current > policy.serial:
            raise DirectoryError(
                f"{DIRECTORY_SUBJECT} holds edition {current}, newer than {policy.serial}",
                reason=Reason.DIRECTORY_ROLLBACK,
            )
        if current == policy.serial:
            return False
    await publish(conn, _DIRECTORY_SUBJECT, signed, msg_id=f"directory-{policy.serial}")
    _log.info("gateway.directory_published", serial=policy.serial)
    return True


@dataclass
class _Gateway:
    """The roles of one gateway process and what they share (each role its own connection)."""

    settings: GatewaySettings
    conns: dict[str, Connection]
    signer: PartnerKeys
    policy: Policy
    roles: frozenset[str]
    router: Router | None = None
    tracker: Tracker | None = None
    store: TrackerStore | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    reloads: set[asyncio.Task[None]] = field(default_factory=set)

    def build(self) -> None:
        """Create the roles this process runs."""
        s = self.settings
        if "router" in self.roles:
            config = RouterConfig(
                max_age_ms=int(s.max_age_seconds * 1000),
                skew_ms=int(s.skew_seconds * 1000),
                batch=s.router_batch,
            )
            self.router = Router(self.conns["router"], self.policy, self.signer, config=config)
        if "tracker" in self.roles:
            self.store = TrackerStore(s.database)
            self.tracker = Tracker(
                self.conns["tracker"],
                self.store,
                self.policy,
                self.signer,
                config=TrackerConfig(tick=s.escalation_tick_seconds),
            )

    def schedule_reload(self) -> None:
        """SIGHUP: reload in a task (signal handlers cannot await)."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self.reloads.add(task)
        task.add_done_callback(self.reloads.discard)

    async def reload(self) -> None:
        """Load a newer directory edition and the rules; keep the old ones on any error."""
        try:
            policy, signed = load_policy(self.settings, min_serial=self.policy.serial)
            root = read_root_public_key(self.settings.root_public_key)
            check_gateway_identity(policy, self.signer, _now_ms())
            if "tracker" in self.conns:  # the directory publisher is the tracker's role
                await publish_directory(self.conns["tracker"], signed, policy, root)
        except RelaisError as exc:
            _log.error("gateway.reload_refused", reason=exc.reason.value)
            return
        self.policy = policy
        for role in (self.router, self.tracker):
            if role is not None:
                role.policy = policy
        _log.info("gateway.reloaded", serial=policy.serial, rules=policy.rules.version)

    async def run(self, stop: asyncio.Event) -> None:
        """Run the roles until ``stop``; the first role to fail stops the others."""
        self.build()
        jobs: list[Coroutine[Any, Any, None]] = [watch_expiry(lambda: self.policy, stop)]
        if self.router is not None:
            await _started("replay window", self.router.check_replay_window)
            jobs.append(self.router.run(stop))
        if self.tracker is not None and self.store is not None:
            checkpointer = Checkpointer(
                self.conns["tracker"],
                self.signer,
                partnership=self.policy.directory.partnership,
                every_records=self.settings.checkpoint_every_records,
                every_seconds=self.settings.checkpoint_interval_seconds,
                anchor_file=self.settings.data_dir / "audit-anchor.json",
            )
            tick = min(1.0, self.settings.checkpoint_interval_seconds)

            async def checkpoints(term: asyncio.Event) -> None:
                await checkpointer.run(term, tick=tick)

            keeper = Keeper(  # retention with evidence, and the watch gauges
                self.conns["tracker"],
                self.store,
                lambda: self.policy,
                config=KeeperConfig(monitor_url=self.settings.monitor_url),
            )
            once: list[LeaderJob] = [checkpoints, keeper.run]
            # Exactly one active tracker among the processes that run the role; the others
            # are warm standbys (gateway.active).
            active = ActiveTracker(
                self.tracker,
                self.store,
                self.conns["tracker"],
                # one holder per data directory: a restart takes its own lease back at once
                Lease(
                    self.conns["tracker"],
                    holder=f"{socket.gethostname()}:{self.settings.data_dir.resolve()}",
                ),
                jobs=once,
            )
            jobs.append(active.run(stop))
        self.tasks = [asyncio.create_task(job) for job in jobs]
        done, _ = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        if failed:
            stop.set()
            await asyncio.wait(self.tasks)
            error = failed[0].exception()
            if error is not None:
                raise error


_ROLE_INBOXES: Final = {"router": ROUTER_INBOX, "tracker": TRACKER_INBOX}


async def _connect_roles(settings: GatewaySettings, roles: frozenset[str]) -> dict[str, Connection]:
    """One connection per role, each with the role's own credential."""
    given = {"router": settings.router_creds, "tracker": settings.tracker_creds}
    creds = {role: path for role in sorted(roles) if (path := given[role]) is not None}
    if missing := sorted(roles - creds.keys()):
        raise ConfigError(f"no credential for the role {missing[0]} ({missing[0]}_creds)")
    conns: dict[str, Connection] = {}
    try:
        for role, path in creds.items():
            conns[role] = await connect(
                settings.servers,
                creds=path,
                inbox_prefix=_ROLE_INBOXES[role],
                name=f"relais-gateway-{role}",
                tls=settings.broker_tls,
            )
    except BaseException:
        for conn in conns.values():
            await conn.close()
        raise
    return conns


def _install_signals(stop: asyncio.Event, gateway: _Gateway) -> list[int]:
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
        installed.append(sig)
    loop.add_signal_handler(signal.SIGHUP, gateway.schedule_reload)
    installed.append(signal.SIGHUP)
    return installed


# Broker errors that pass (a node restarting, a leader election, a concurrent starter
# publishing the same edition): retried at start-up. Refusals (permissions, a server that
# does not fsync, bad files) are not: they stop the process with their reason.
_T = TypeVar("_T")
_TRANSIENT: Final = frozenset({Reason.NOT_CONNECTED, Reason.TIMEOUT, Reason.BROKER_ERROR})


def _transient(exc: Exception) -> bool:
    return isinstance(exc, TransportError) and exc.reason in _TRANSIENT


async def _durable(settings: GatewaySettings) -> bool:
    """``require_sync_always`` against the first node whose monitoring answers."""
    urls = [u.strip() for u in settings.monitor_url.split(",") if u.strip()]
    failure: TransportError | None = None
    for url in urls:
        try:
            return await require_sync_always(url, allow_unsafe=settings.allow_unsafe_no_fsync)
        except TransportError as exc:
            if exc.reason is not Reason.NOT_CONNECTED:
                raise
            failure = exc
    raise failure or TransportError("no monitoring URL", reason=Reason.NOT_CONNECTED)


async def _started(what: str, step: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a start-up step, retrying it while the broker's errors are transient."""
    async for attempt in stamina.retry_context(
        on=_transient, attempts=None, timeout=None, wait_initial=0.2, wait_max=5.0
    ):
        with attempt:
            if attempt.num > 1:
                _log.warning("gateway.start_retry", step=what, attempt=attempt.num)
            return await step()
    raise AssertionError("unreachable: retry_context without limits")  # pragma: no cover


async def run_gateway(
    settings: GatewaySettings,
    roles: Collection[str] = ROLES,
    *,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Run the gateway roles until SIGTERM/SIGINT (or ``stop``); see the module docstring."""
    wanted = frozenset(roles)
    if not wanted or not wanted <= ROLES:
        raise ConfigError(f"roles must be among {sorted(ROLES)}")
    durable = await _started("durability", lambda: _durable(settings))
    # Atomic batches share one fsync; on a broker that does not fsync they only cost.
    use_atomic_batches(durable)
    passphrase = read_secret_file(settings.passphrase_file, "passphrase")
    signer = load_key_file(settings.key_file, passphrase)
    policy, signed = load_policy(settings)
    check_gateway_identity(policy, signer, _now_ms())
    root = read_root_public_key(settings.root_public_key)
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_port)
    conns = await _started("connect", lambda: _connect_roles(settings, wanted))
    stop = stop or asyncio.Event()
    gateway = _Gateway(settings, conns, signer, policy, wanted)
    installed: list[int] = []
    try:
        if "tracker" in conns:
            tracker_conn = conns["tracker"]
            await _started(
                "directory", lambda: publish_directory(tracker_conn, signed, policy, root)
            )
        if handle_signals:
            installed = _install_signals(stop, gateway)
        _log.info(
            "gateway.started",
            roles=sorted(wanted),
            serial=policy.serial,
            rules=policy.rules.version,
        )
        await gateway.run(stop)
    finally:
        loop = asyncio.get_running_loop()
        for sig in installed:
            loop.remove_signal_handler(sig)
        for conn in conns.values():
            await conn.close()
        if gateway.store is not None:
            gateway.store.close()
        _log.info("gateway.stopped", roles=sorted(wanted))
