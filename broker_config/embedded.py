"""The embedded broker: one nats-server on loopback, owned by a data directory.

Data directory (mode 0700)::

    nats-server.json     the generated configuration (0600, rewritten on reload)
    store/               the JetStream store
    creds/admin.nk       provisioning administrator seed (0600), created on first start;
                         used by ``relais broker up|reload|provision`` only
    creds/router.nk      the router role's seed (0600)
    creds/tracker.nk     the tracker role's seed (tracker, checkpointer, directory publisher)
    creds/operator.nk    read-only operator user seed (0600)
    ports/               nats-server writes ``<exe>_<pid>.ports`` (the real ports) here
    nats-server.pid      pid of the detached server
    nats-server.log      its log (appended)
    broker.json          where it listens, for ``status``, ``reload`` and ``down``
    network.json         listen address and ports, monitoring port, TLS files: given to
                         ``up`` once, reused by every restart (:mod:`.network`)
    storage.json         the streams' storage limits, fitted to the disk at the first start
    directory.json       the signed directory in use, and root.pub the root key it verifies against
    lock                 flock(2) held by the running server

Without ``--listen``, the first start lets the operating system choose the ports (``-1``),
learns them from the ports file and records them in ``network.json``: later starts listen on
the same ports, so the URL given to agents and the gateway stays right. The lock is
taken before the server is spawned and its file descriptor is inherited by the server, so the
lock lives exactly as long as the server process: a second ``up`` on the same data directory
is refused, and a SIGKILL-ed server leaves no stale lock (a stale pid file is never trusted:
nothing is signalled unless the lock is held).

Production notes: run nats-server under a service manager (systemd unit with
``Restart=on-failure`` and ``LimitNOFILE``) rather than detached; keep the store on a local
disk (``sync_interval: always`` makes every acknowledged write an fsync); use a 3-node cluster
with R3 streams (:mod:`relais.broker_config.cluster`); keep ``creds/`` readable by the gateway
account only. POSIX only (``posix_spawn``, ``flock``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import structlog

from relais.broker_config.accounts import expiring_partners, partner_users
from relais.broker_config.cluster import StreamCluster, read_stream_clusters
from relais.broker_config.connection import ClientTls, connect, require_sync_always
from relais.broker_config.directory import Directory, verify_directory
from relais.broker_config.nats_conf import (
    GATEWAY_INBOX,
    OPERATOR_INBOX,
    ServerSettings,
    Service,
    build_config,
    check_config,
    ensure_service_seeds,
    nats_server_binary,
    service_seed_file,
    write_config,
    write_private_file,
)
from relais.broker_config.network import NetworkSettings
from relais.broker_config.streams import (
    ConsumerStatus,
    ProvisionReport,
    StorageLimits,
    StreamStatus,
    inspect,
    provision,
)
from relais.schemas.errors import ConfigError, Reason, TransportError

__all__ = [
    "BrokerInfo",
    "BrokerPaths",
    "BrokerStatus",
    "ServerProcess",
    "broker_down",
    "broker_reload",
    "broker_status",
    "broker_up",
    "is_alive",
    "provision_as_admin",
    "read_info",
    "running_pid",
    "signal_reload",
    "spawn_server",
    "start_server",
    "stop_process",
    "wait_ready",
    "warn_key_expiry",
]

_T = TypeVar("_T")
_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class BrokerPaths:
    """The files of one data directory."""

    data_dir: Path

    @property
    def config_file(self) -> Path:
        """Generated nats-server configuration."""
        return self.data_dir / "nats-server.json"

    @property
    def store_dir(self) -> Path:
        """JetStream store."""
        return self.data_dir / "store"

    @property
    def creds_dir(self) -> Path:
        """Service users' seed files."""
        return self.data_dir / "creds"

    def service_creds(self, service: Service) -> Path:
        """The seed file of a service identity."""
        return service_seed_file(self.creds_dir, service)

    @property
    def admin_creds(self) -> Path:
        """The provisioning administrator's seed file (never given to the gateway)."""
        return self.service_creds(Service.ADMIN)

    @property
    def router_creds(self) -> Path:
        """The router role's seed file."""
        return self.service_creds(Service.ROUTER)

    @property
    def tracker_creds(self) -> Path:
        """The tracker role's seed file."""
        return self.service_creds(Service.TRACKER)

    @property
    def operator_creds(self) -> Path:
        """The read-only operator user's seed file."""
        return self.service_creds(Service.OPERATOR)

    @property
    def ports_dir(self) -> Path:
        """Where nats-server writes the ports it listens on."""
        return self.data_dir / "ports"

    @property
    def pid_file(self) -> Path:
        """Pid of the running server."""
        return self.data_dir / "nats-server.pid"

    @property
    def log_file(self) -> Path:
        """Server log."""
        return self.data_dir / "nats-server.log"

    @property
    def state_file(self) -> Path:
        """Where the running server listens (JSON)."""
        return self.data_dir / "broker.json"

    @property
    def directory_file(self) -> Path:
        """The signed directory in use."""
        return self.data_dir / "directory.json"

    @property
    def root_key_file(self) -> Path:
        """The root public key (base64) the directory in use was verified against."""
        return self.data_dir / "root.pub"

    @property
    def network_file(self) -> Path:
        """Listen address, ports and TLS, recorded for restarts."""
        return self.data_dir / "network.json"

    def network(self) -> NetworkSettings:
        """The recorded network settings (loopback, ports chosen at first start, if none)."""
        return NetworkSettings.load(self.network_file) or NetworkSettings()

    @property
    def lock_file(self) -> Path:
        """Locked by the running server."""
        return self.data_dir / "lock"

    def create(self) -> None:
        """Create the data directory and its subdirectories (mode 0700)."""
        for path in (self.data_dir, self.store_dir, self.creds_dir, self.ports_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)


@dataclass(frozen=True, slots=True)
class ServerProcess:
    """A running nats-server and where it listens."""

    pid: int
    client_url: str
    monitor_url: str


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """What ``broker up`` reports, and ``broker.json`` records."""

    data_dir: str
    pid: int
    client_url: str
    monitor_url: str
    creds_dir: str
    sync_always: bool
    tls_ca_file: str | None = None  # the CA clients verify the server against (with TLS)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


# -- processes ---------------------------------------------------------------------------------


def _poll(check: Callable[[], _T | None], *, timeout: float, what: str, pid: int) -> _T:
    """Poll ``check`` until it returns a value, the deadline passes or ``pid`` exits."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        result = check()
        if result is not None:
            return result
        if not is_alive(pid):
            raise TransportError(f"nats-server exited while {what}", reason=Reason.NOT_CONNECTED)
        if time.monotonic() > deadline:
            raise TransportError(f"timed out {what}", reason=Reason.TIMEOUT)
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _check_pid(pid: int) -> None:
    # 0 and negative pids name process groups for kill(2) and waitpid(2): never that.
    if pid <= 1:
        raise ConfigError(f"not a server process id: {pid}")


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs (a child of ours that exited is reaped here)."""
    _check_pid(pid)
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        waited = 0
    if waited == pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def spawn_server(config_file: Path, *, log_file: Path, inherit_fd: int | None = None) -> int:
    """Start nats-server detached (own session, output appended to ``log_file``); its pid.

    ``inherit_fd`` is passed on to the server (the data directory lock).
    """
    binary = nats_server_binary()
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    env = {k: v for k, v in os.environ.items() if k.startswith("GO") or k == "TZ"}
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, log_fd, 1),
        (os.POSIX_SPAWN_DUP2, log_fd, 2),
    ]
    try:
        if inherit_fd is not None:
            os.set_inheritable(inherit_fd, True)
        argv = [binary.name, "-c", str(config_file)]
        return os.posix_spawn(
            str(binary),
            argv,
            env,
            file_actions=actions,
            setsid=True,
            # A signal ignored by this process would stay ignored by the server.
            setsigdef=(signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE),
        )
    except OSError as exc:
        raise TransportError(f"cannot start nats-server: {exc.strerror}") from exc
    finally:
        if inherit_fd is not None:
            os.set_inheritable(inherit_fd, False)
        os.close(log_fd)


def _read_ports(ports_dir: Path, pid: int) -> tuple[str, str] | None:
    for path in ports_dir.glob(f"*_{pid}.ports"):
        try:
            ports = json.loads(path.read_text())
            return str(ports["nats"][0]), str(ports["monitoring"][0])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None  # being written: try again
    return None


def _healthy(monitor_url: str) -> bool:
    try:
        response = httpx.get(f"{monitor_url}/healthz", timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def wait_ready(pid: int, *, ports_dir: Path, timeout: float = 30.0) -> ServerProcess:
    """Wait for the ports file of ``pid``, then for ``/healthz`` to answer ok."""
    client_url, monitor_url = _poll(
        lambda: _read_ports(ports_dir, pid), timeout=timeout, what="writing its ports", pid=pid
    )
    _poll(
        lambda: True if _healthy(monitor_url) else None,
        timeout=timeout,
        what="becoming healthy",
        pid=pid,
    )
    return ServerProcess(pid=pid, client_url=client_url, monitor_url=monitor_url)


def _clear_ports(ports_dir: Path) -> None:
    for stale in ports_dir.glob("*.ports"):  # left behind by a killed server
        stale.unlink(missing_ok=True)


def start_server(
    config_file: Path,
    *,
    ports_dir: Path,
    log_file: Path,
    timeout: float = 30.0,
    inherit_fd: int | None = None,
) -> ServerProcess:
    """Spawn nats-server and wait until it is healthy (stopped again if it never is)."""
    _clear_ports(ports_dir)
    pid = spawn_server(config_file, log_file=log_file, inherit_fd=inherit_fd)
    try:
        return wait_ready(pid, ports_dir=ports_dir, timeout=timeout)
    except BaseException:
        stop_process(pid, timeout=5.0)
        raise


def stop_process(pid: int, *, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` (SIGTERM: a clean shutdown), wait, then SIGKILL after ``timeout``."""
    _check_pid(pid)
    for current, wait in ((sig, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, current)
        deadline = time.monotonic() + wait
        delay = 0.005
        while is_alive(pid):
            if time.monotonic() > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        else:
            return
    raise TransportError(f"nats-server {pid} does not stop", reason=Reason.TIMEOUT)


# -- data directory ----------------------------------------------------------------------------


def _try_lock(paths: BrokerPaths) -> int | None:
    """The locked descriptor of the data directory, or ``None`` if a server holds it."""
    fd = os.open(paths.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _running_pid(paths: BrokerPaths) -> int | None:
    """The pid of the server holding the data directory's lock, ``None`` if none does."""
    if not paths.lock_file.exists():
        return None
    fd = _try_lock(paths)
    if fd is not None:
        os.close(fd)
        return None
    try:
        pid = int(paths.pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{paths.data_dir} is locked but has no pid file") from exc
    _check_pid(pid)
    return pid


def running_pid(data_dir: Path) -> int | None:
    """The pid of the server running on ``data_dir``, ``None`` if none is."""
    return _running_pid(BrokerPaths(data_dir))


def read_info(data_dir: Path) -> BrokerInfo:
    """What ``broker.json`` records (:class:`ConfigError` if no broker was started here)."""
    path = BrokerPaths(data_dir).state_file
    try:
        return BrokerInfo(**json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise ConfigError(f"no broker was started in {data_dir}") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is damaged") from exc


def _stored_directory(paths: BrokerPaths) -> tuple[bytes, bytes] | None:
    if not paths.directory_file.exists():
        return None
    try:
        root = base64.b64decode(paths.root_key_file.read_text().strip(), validate=True)
        return paths.directory_file.read_bytes(), root
    except (OSError, binascii.Error) as exc:
        raise ConfigError(f"the stored directory of {paths.data_dir} is unreadable") from exc


def _load_directory(
    paths: BrokerPaths, signed: bytes | None, root_public_key: bytes | None
) -> Directory | None:
    """Verify the new signed directory (no rollback) or the stored one; ``None`` if none."""
    stored = _stored_directory(paths)
    if signed is None:
        return None if stored is None else verify_directory(stored[0], stored[1])
    if root_public_key is None:
        raise ConfigError("a directory needs the root public key to verify it")
    min_serial = None
    if stored is not None and stored[1] == root_public_key:
        min_serial = verify_directory(stored[0], stored[1]).serial
    return verify_directory(signed, root_public_key, min_serial=min_serial)


KEY_EXPIRY_WARNING_MS = 14 * 86_400_000


def warn_key_expiry(directory: Directory, *, at_ms: int | None = None) -> None:
    """Log the partners left without a NATS user (no valid key) and those about to be."""
    now = time.time_ns() // 1_000_000 if at_ms is None else at_ms
    with_user = {p.id for p in partner_users(directory, at_ms=now)}
    lapsed = sorted(
        p.id
        for p in directory.partners
        if not p.revoked and p.nats_nkey is not None and p.id not in with_user
    )
    if lapsed:
        _log.warning("broker.partners_without_valid_key", partners=lapsed)
    for partner_id, until in expiring_partners(
        directory, within_ms=KEY_EXPIRY_WARNING_MS, at_ms=now
    ):
        _log.warning(
            "broker.partner_keys_expiring",
            partner=partner_id,
            days_left=round((until - now) / 86_400_000, 1),
        )


def _storage_limits(paths: BrokerPaths) -> StorageLimits:
    """The streams' limits of this data directory: fitted to the disk once, then kept.

    Kept in ``storage.json`` so that a reload never lowers a limit because the disk filled.
    """
    path = paths.data_dir / "storage.json"
    try:
        return StorageLimits.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is damaged") from exc
    limits = StorageLimits().fitted(shutil.disk_usage(paths.store_dir).free)
    write_private_file(path, limits.model_dump_json(indent=2).encode() + b"\n")
    return limits


def _store_directory(paths: BrokerPaths, signed: bytes, root_public_key: bytes) -> None:
    write_private_file(paths.directory_file, signed)
    write_private_file(paths.root_key_file, base64.b64encode(root_public_key) + b"\n")


def _write_server_config(
    paths: BrokerPaths,
    directory: Directory | None,
    *,
    sync_always: bool,
    network: NetworkSettings | None = None,
) -> None:
    net = network or paths.network()
    settings = ServerSettings(
        store_dir=paths.store_dir,
        ports_file_dir=paths.ports_dir,
        sync_always=sync_always,
        host=net.host,
        port=net.port,
        monitor_port=net.monitor_port,
        tls=net.tls,
    )
    config = build_config(
        directory, services=ensure_service_seeds(paths.creds_dir), settings=settings
    )
    if directory is not None:
        warn_key_expiry(directory)
    # Checked before it replaces the configuration in use: a refused file must not be left
    # for the next start.
    candidate = paths.config_file.with_name(f".{paths.config_file.name}.new")
    write_config(candidate, config)
    try:
        check_config(candidate)
        os.replace(candidate, paths.config_file)
    finally:
        candidate.unlink(missing_ok=True)


async def provision_as_admin(
    servers: str | list[str],
    *,
    admin_creds: Path,
    monitor_url: str,
    directory: Directory | None,
    allow_unsafe: bool = False,
    replicas: int = 1,
    limits: StorageLimits | None = None,
    tls: ClientTls | None = None,
) -> ProvisionReport:
    """Check durability, connect as the administrator and provision streams and consumers.

    ``limits``: the streams' storage limits (default: :class:`StorageLimits` fitted to the
    free space of this machine's disk, for an embedded broker). ``tls``: how to verify the
    broker (see :func:`~relais.broker_config.connection.connect`).
    """
    await require_sync_always(monitor_url, allow_unsafe=allow_unsafe)
    conn = await connect(
        servers, creds=admin_creds, inbox_prefix=GATEWAY_INBOX, name="relais-provision", tls=tls
    )
    try:
        return await provision(conn.jetstream(), directory, replicas=replicas, limits=limits)
    finally:
        await conn.close()


# -- commands ----------------------------------------------------------------------------------


def _spawn_locked(
    paths: BrokerPaths,
    signed: bytes | None,
    root_public_key: bytes | None,
    *,
    sync_always: bool,
    network: NetworkSettings,
) -> tuple[Directory | None, int]:
    """Lock the data directory, write the configuration, spawn the server holding the lock."""
    paths.create()
    lock_fd = _try_lock(paths)
    if lock_fd is None:
        raise ConfigError(f"a broker is already running on {paths.data_dir}")
    try:
        verified = _load_directory(paths, signed, root_public_key)
        _write_server_config(paths, verified, sync_always=sync_always, network=network)
        _clear_ports(paths.ports_dir)
        pid = spawn_server(paths.config_file, log_file=paths.log_file, inherit_fd=lock_fd)
    finally:
        os.close(lock_fd)  # the server holds the lock from now on
    try:
        write_private_file(paths.pid_file, f"{pid}\n".encode())
    except BaseException:
        stop_process(pid)
        raise
    return verified, pid


async def broker_up(
    data_dir: Path,
    *,
    directory: bytes | None = None,
    root_public_key: bytes | None = None,
    sync_always: bool = True,
    ready_timeout: float = 30.0,
    network: NetworkSettings | None = None,
) -> tuple[BrokerInfo, ProvisionReport]:
    """Start the embedded broker on ``data_dir``, wait until healthy, provision it.

    ``directory``: a signed directory file's bytes, verified against ``root_public_key``
    (an edition older than the stored one is refused; a different root key replaces the
    pinned one, which only ``up`` may do); without it the stored directory is used, if any.
    ``network``: where to listen and the TLS files (default: what ``network.json`` records,
    else loopback with ports chosen now and recorded); a listener outside loopback without
    TLS is refused. Refuses (:class:`ConfigError`) when a server already runs on
    ``data_dir``. ``sync_always=False`` is for development only.
    """
    paths = BrokerPaths(data_dir)
    net = network or paths.network()
    net.check()
    verified, pid = _spawn_locked(
        paths, directory, root_public_key, sync_always=sync_always, network=net
    )
    try:
        server = await asyncio.to_thread(
            wait_ready, pid, ports_dir=paths.ports_dir, timeout=ready_timeout
        )
        net = net.with_ports(_port_of(server.client_url), _port_of(server.monitor_url))
        client_url = net.client_url()
        report = await provision_as_admin(
            client_url,
            admin_creds=paths.admin_creds,
            monitor_url=server.monitor_url,
            directory=verified,
            allow_unsafe=not sync_always,
            limits=_storage_limits(paths),
            tls=net.client_tls(),
        )
        if directory is not None and root_public_key is not None:
            _store_directory(paths, directory, root_public_key)
        net.save(paths.network_file)
        info = BrokerInfo(
            data_dir=str(data_dir),
            pid=server.pid,
            client_url=client_url,
            monitor_url=server.monitor_url,
            creds_dir=str(paths.creds_dir),
            sync_always=sync_always,
            tls_ca_file=str(net.tls.ca_file) if net.tls and net.tls.ca_file else None,
        )
        write_private_file(paths.state_file, json.dumps(info.to_json()).encode())
    except BaseException:
        await asyncio.to_thread(stop_process, pid)  # no half-started broker left behind
        raise
    _log.info("broker.up", pid=server.pid, client=server.client_url, sync_always=sync_always)
    return info, report


def _network_in_force(paths: BrokerPaths) -> NetworkSettings:
    """The recorded settings with the ports of the running configuration.

    nats-server refuses a reload that changes a port, even from ``-1`` (chosen at start) to
    the port it chose: the recorded ports apply from the next start.
    """
    try:
        config = json.loads(paths.config_file.read_text())
        port, monitor = int(config["port"]), int(str(config["http"]).rsplit(":", 1)[1])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ConfigError(f"{paths.config_file} is damaged") from exc
    return paths.network().model_copy(update={"port": port, "monitor_port": monitor})


def _port_of(url: str) -> int:
    try:
        return int(url.rsplit(":", 1)[1].split("/", 1)[0])
    except (IndexError, ValueError) as exc:
        raise TransportError(f"nats-server reports no port in {url!r}") from exc


def broker_down(data_dir: Path, *, timeout: float = 10.0) -> int | None:
    """Stop the server of ``data_dir`` (SIGTERM, then SIGKILL after ``timeout``).

    Returns its pid, or ``None`` when none was running.
    """
    paths = BrokerPaths(data_dir)
    pid = _running_pid(paths)
    if pid is not None:
        _check_identity(pid, paths)
        stop_process(pid, timeout=timeout)
        _log.info("broker.down", pid=pid)
    for stale in (paths.pid_file, paths.state_file):
        stale.unlink(missing_ok=True)
    return pid


def _check_identity(pid: int, paths: BrokerPaths) -> None:
    """Refuse to signal a pid that is not our nats-server (where /proc tells)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            args = cmdline.read_bytes().split(b"\0")
            cwd = Path(f"/proc/{pid}/cwd").resolve()
        except OSError:
            return
        # The server may have been given a relative path (started from another directory):
        # compare where each argument points, not how it was spelled.
        wanted = paths.config_file.resolve()
        given = {(cwd / os.fsdecode(a)).resolve() for a in args if a}
        if wanted not in given:
            raise ConfigError(f"pid {pid} is not the nats-server of {paths.data_dir}")


async def _config_load_time(monitor_url: str) -> str:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        response = await client.get(f"{monitor_url}/varz")
    response.raise_for_status()
    return str(response.json().get("config_load_time", ""))


async def signal_reload(pid: int, monitor_url: str, *, ready_timeout: float = 30.0) -> None:
    """Make nats-server ``pid`` reload its configuration and wait until it has.

    Sends SIGHUP (what ``nats-server --signal reload=<pid>`` sends) and polls ``/varz`` until
    ``config_load_time`` changes. A configuration the server refuses leaves the old one in
    force and ends in :class:`TransportError` (``TIMEOUT``): check it with
    :func:`~relais.broker_config.nats_conf.check_config` first.

    The server is made to reload twice: nats-server 2.15.1 does not wire the service imports
    of an account that a reload adds (its clients get "no responders" from the hub; see also
    nats-server issue 8560) until the next reload, which finds the account in place. A
    second reload of the same file changes nothing else, and a test checks that a partner
    enrolled by a reload works at once.
    """
    deadline = time.monotonic() + ready_timeout
    try:
        for _ in range(2):
            before = await _config_load_time(monitor_url)
            os.kill(pid, signal.SIGHUP)
            while await _config_load_time(monitor_url) == before:
                if time.monotonic() > deadline:
                    raise TransportError("the server did not reload", reason=Reason.TIMEOUT)
                await asyncio.sleep(0.02)
    except (httpx.HTTPError, ValueError, ProcessLookupError) as exc:
        raise TransportError("cannot reload the server", reason=Reason.NOT_CONNECTED) from exc


async def broker_reload(
    data_dir: Path, *, directory: bytes, root_public_key: bytes, ready_timeout: float = 30.0
) -> ProvisionReport:
    """Apply a new directory edition to the running server without losing messages.

    Verifies it (an older serial than the edition in use is refused), regenerates the users,
    validates the configuration with ``nats-server -t``, signals a reload (SIGHUP, what
    ``nats-server --signal reload=<pid>`` sends), waits until ``/varz`` shows the new
    ``config_load_time``, then provisions the consumers of new partners. A revoked partner's
    user is removed (nats-server closes its connections); its consumers and messages stay.
    """
    paths = BrokerPaths(data_dir)
    pid = _running_pid(paths)
    if pid is None:
        raise ConfigError(f"no broker is running on {data_dir}")
    _check_identity(pid, paths)
    info = read_info(data_dir)
    stored = _stored_directory(paths)
    if stored is not None and stored[1] != root_public_key:
        # The pinned root changes only through an explicit restart (down, then up).
        raise ConfigError("the root public key differs from the one in use")
    verified = _load_directory(paths, directory, root_public_key)
    _write_server_config(
        paths, verified, sync_always=info.sync_always, network=_network_in_force(paths)
    )
    await signal_reload(pid, info.monitor_url, ready_timeout=ready_timeout)
    _store_directory(paths, directory, root_public_key)
    report = await provision_as_admin(
        info.client_url,
        admin_creds=paths.admin_creds,
        monitor_url=info.monitor_url,
        directory=verified,
        allow_unsafe=not info.sync_always,
        limits=_storage_limits(paths),
        tls=paths.network().client_tls(),
    )
    _log.info("broker.reloaded", pid=pid, serial=verified.serial if verified else None)
    return report


# -- status ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    """Health, durability and counters of a broker."""

    client_url: str
    monitor_url: str | None
    healthy: bool | None
    sync_always: bool | None
    version: str | None
    streams: tuple[StreamStatus, ...] = field(default=())
    consumers: tuple[ConsumerStatus, ...] = field(default=())
    # each stream's leader and replicas (one replica, the leader, on a single server)
    replicas: tuple[StreamCluster, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {**asdict(self), "replicas": [r.to_json() for r in self.replicas]}


async def _monitoring(monitor_url: str, max_wait: float) -> tuple[bool, bool | None, str | None]:
    try:
        async with httpx.AsyncClient(timeout=max_wait, trust_env=False) as client:
            health = await client.get(f"{monitor_url}/healthz")
            varz = (await client.get(f"{monitor_url}/varz")).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise TransportError("monitoring unreachable", reason=Reason.NOT_CONNECTED) from exc
    config = (varz.get("jetstream") or {}).get("config") or {}
    return health.status_code == 200, config.get("sync_always") is True, varz.get("version")


async def broker_status(
    server_url: str,
    *,
    creds: Path,
    monitor_url: str | None = None,
    max_wait: float = 5.0,
    tls: ClientTls | None = None,
) -> BrokerStatus:
    """Health, ``sync_always``, stream/consumer counters and each stream's replicas, read as
    the operator user.

    ``server_url``: one URL, or a cluster's, comma-separated. ``monitor_url`` (loopback
    only) adds health, version and ``sync_always``. Raises :class:`TransportError`
    (``NOT_CONNECTED``) when the broker is unreachable.
    """
    healthy = sync = None
    version = None
    if monitor_url is not None:
        healthy, sync, version = await _monitoring(monitor_url, max_wait)
    conn = await connect(
        [url.strip() for url in server_url.split(",") if url.strip()],
        creds=creds,
        inbox_prefix=OPERATOR_INBOX,
        name="relais-status",
        connect_timeout=max_wait,
        request_timeout=max_wait,
        tls=tls,
    )
    try:
        streams, consumers = await inspect(conn)
        replicas = await read_stream_clusters(conn, [s.name for s in streams])
    finally:
        await conn.close()
    return BrokerStatus(
        client_url=server_url,
        monitor_url=monitor_url,
        healthy=healthy,
        sync_always=sync,
        version=version,
        streams=streams,
        consumers=consumers,
        replicas=replicas,
    )
