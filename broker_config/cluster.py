"""Configuration of a JetStream cluster, and how its streams' replicas stand.

Production runs 3 nodes (streams R3, provisioned with ``replicas=3``): a stream stays
writable while 2 of its 3 replicas are up, and with ``sync_interval: always`` on every node
an acknowledged message is on the disks of a majority. This module writes the configuration
of ``n`` nodes, on one host (rehearsals, tests) or one per host::

    <out>/cluster.json        the layout: hosts, ports, TLS, route credentials (0600), reused
    <out>/creds/<service>.nk  service users' seeds (admin, router, tracker, operator; 0600)
    <out>/n1.json ...         one nats-server configuration per node (0600)
    <data_root>/n1/store      each node's JetStream store, and n1/ports its ports file
    <out>/directory.json      the directory edition the configurations were made from
                              (with root.pub: an older edition is refused on re-runs)

Ports are fixed at generation (routes need them, and stable client URLs let clients
reconnect to a restarted node). On one host: ``base_port + i`` for clients, ``+100`` for
routes, ``+200`` for monitoring, or ports picked by the operating system when no base is
given. On separate hosts (``hosts`` all different) every node uses the same ports:
``base_port`` (default 4222) for clients, ``+2000`` for routes (6222), ``+4000`` for
monitoring (8222, on 127.0.0.1 of each host). Running the generator again on the same
directory keeps the layout and only regenerates the users (after a directory change):
then reload each node (:mod:`relais.broker_config.cluster_ops`).

Routes are password-protected; with ``tls_dir`` (the partnership CA ``ca.crt`` and a
certificate ``<node>.crt``/``<node>.key`` per node, e.g. made by ``relais broker tls``)
the routes use mutual TLS and the client listeners TLS. Nodes outside loopback require it.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import socket
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from relais.broker_config.connection import ClientTls, Connection
from relais.broker_config.directory import Directory, verify_directory
from relais.broker_config.nats_conf import (
    ClusterSettings,
    ServerSettings,
    Service,
    TlsSettings,
    build_config,
    ensure_service_seeds,
    is_loopback,
    service_seed_file,
    write_config,
    write_private_file,
)
from relais.schemas.errors import ConfigError, TransportError

__all__ = [
    "ClusterLayout",
    "ClusterNode",
    "ReplicaState",
    "StreamCluster",
    "free_ports",
    "load_directory_edition",
    "read_layout",
    "read_stream_clusters",
    "store_directory_edition",
    "write_cluster_configs",
]

_LAYOUT: Final = "cluster.json"
_LOOPBACK: Final = "127.0.0.1"
_MONITOR_HOST: Final = "127.0.0.1"
_DEFAULT_CLIENT_PORT: Final = 4222


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One node of a generated cluster."""

    name: str
    config_file: Path
    store_dir: Path
    ports_dir: Path
    log_file: Path
    client_url: str
    monitor_url: str
    route_port: int
    host: str = _LOOPBACK


@dataclass(frozen=True, slots=True)
class ClusterLayout:
    """The generated cluster: its nodes, the service users' seed files and its TLS."""

    nodes: tuple[ClusterNode, ...]
    creds_dir: Path
    tls_dir: Path | None = None
    verify_clients: bool = False

    def creds(self, service: Service) -> Path:
        """The seed file of a service identity (``admin``, ``router``, ...)."""
        return service_seed_file(self.creds_dir, service)

    @property
    def admin_creds(self) -> Path:
        """The provisioning administrator's seed file."""
        return self.creds(Service.ADMIN)

    @property
    def operator_creds(self) -> Path:
        """The read-only operator's seed file."""
        return self.creds(Service.OPERATOR)

    @property
    def client_urls(self) -> list[str]:
        """Client URLs of every node (give them all to clients)."""
        return [node.client_url for node in self.nodes]

    def node(self, name: str) -> ClusterNode:
        """The node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise ConfigError(f"no node {name!r} in the cluster")

    def client_tls(self) -> ClientTls | None:
        """How tools on the generating host verify the nodes (``None`` without TLS).

        With mutual TLS they present the first node's certificate (made for both ends).
        """
        if self.tls_dir is None:
            return None
        if not self.verify_clients:
            return ClientTls(self.tls_dir / "ca.crt")
        first = self.nodes[0].name
        return ClientTls(
            self.tls_dir / "ca.crt", self.tls_dir / f"{first}.crt", self.tls_dir / f"{first}.key"
        )


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that the operating system reports free on loopback."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((_LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


def _ports(nodes: int, base_port: int | None, one_host: bool) -> list[list[int]]:
    if not one_host:
        client = base_port or _DEFAULT_CLIENT_PORT
        if not 1024 <= client <= 65535 - 4000:
            raise ConfigError("base port out of range")
        return [[client, client + 2000, client + 4000] for _ in range(nodes)]
    if base_port is not None:
        if not 1024 <= base_port <= 65535 - 200 - nodes:
            raise ConfigError("base port out of range")
        return [[base_port + i, base_port + 100 + i, base_port + 200 + i] for i in range(nodes)]
    flat = free_ports(3 * nodes)
    return [flat[3 * i : 3 * i + 3] for i in range(nodes)]


def _new_layout(
    nodes: int,
    base_port: int | None,
    hosts: Sequence[str],
    tls_dir: Path | None,
    verify_clients: bool,
    data_root: Path,
) -> dict[str, Any]:
    if len(hosts) != nodes:
        raise ConfigError(f"give one host per node ({nodes}), not {len(hosts)}")
    one_host = len(set(hosts)) == 1
    if not one_host and len(set(hosts)) != nodes:
        raise ConfigError("the nodes are all on one host or each on its own")
    if tls_dir is None and not all(is_loopback(h) for h in hosts):
        raise ConfigError("nodes outside loopback need TLS: give the certificates (--tls-dir)")
    if verify_clients and tls_dir is None:
        raise ConfigError("mutual TLS needs the certificates (--tls-dir)")
    if tls_dir is not None:
        for name in ["ca", *(f"n{i + 1}" for i in range(nodes))]:
            if not (tls_dir / f"{name}.crt").is_file():
                raise ConfigError(f"{tls_dir / name}.crt not found (relais broker tls makes it)")
    return {
        "name": "relais",
        "route_user": "route",
        "route_password": secrets.token_urlsafe(24),
        "tls_dir": None if tls_dir is None else str(tls_dir.resolve()),
        "verify_clients": verify_clients,
        "data_root": str(data_root.resolve()),
        "nodes": [
            {"name": f"n{i + 1}", "host": host, "client": c, "route": r, "monitor": m}
            for i, (host, (c, r, m)) in enumerate(
                zip(hosts, _ports(nodes, base_port, one_host), strict=True)
            )
        ],
    }


def _read_layout_file(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / _LAYOUT
    if not path.exists():
        return None
    try:
        layout: dict[str, Any] = json.loads(path.read_text())
        for node in layout["nodes"]:
            node.setdefault("host", _LOOPBACK)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is damaged") from exc
    layout.setdefault("data_root", str(out_dir.resolve()))
    layout.setdefault("tls_dir", None)
    layout.setdefault("verify_clients", False)
    return layout


def _node_settings(
    layout: dict[str, Any], node: dict[str, Any], *, sync_always: bool
) -> ServerSettings:
    node_dir = Path(layout["data_root"]) / node["name"]
    tls_dir = None if layout["tls_dir"] is None else Path(layout["tls_dir"])
    tls = None
    if tls_dir is not None:
        tls = TlsSettings(
            cert_file=tls_dir / f"{node['name']}.crt",
            key_file=tls_dir / f"{node['name']}.key",
            ca_file=tls_dir / "ca.crt",
            verify_clients=bool(layout["verify_clients"]),
        )
    routes = tuple(
        f"nats://{layout['route_user']}:{layout['route_password']}@{_url_host(n['host'])}"
        f":{n['route']}"
        for n in layout["nodes"]
    )
    return ServerSettings(
        store_dir=node_dir / "store",
        server_name=node["name"],
        host=node["host"],
        port=node["client"],
        monitor_port=node["monitor"],
        ports_file_dir=node_dir / "ports",
        sync_always=sync_always,
        tls=tls,
        cluster=ClusterSettings(
            name=layout["name"],
            host=node["host"],
            port=node["route"],
            routes=routes,
            route_user=layout["route_user"],
            route_password=layout["route_password"],
            tls=tls,  # routes always verify their peers
        ),
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _described(out_dir: Path, layout: dict[str, Any]) -> ClusterLayout:
    scheme = "nats" if layout["tls_dir"] is None else "tls"
    nodes = []
    for node in layout["nodes"]:
        node_dir = Path(layout["data_root"]) / node["name"]
        nodes.append(
            ClusterNode(
                name=node["name"],
                config_file=out_dir / f"{node['name']}.json",
                store_dir=node_dir / "store",
                ports_dir=node_dir / "ports",
                log_file=node_dir / "nats-server.log",
                client_url=f"{scheme}://{_url_host(node['host'])}:{node['client']}",
                monitor_url=f"http://{_MONITOR_HOST}:{node['monitor']}",
                route_port=node["route"],
                host=node["host"],
            )
        )
    tls_dir = None if layout["tls_dir"] is None else Path(layout["tls_dir"])
    return ClusterLayout(tuple(nodes), out_dir / "creds", tls_dir, bool(layout["verify_clients"]))


def read_layout(out_dir: Path) -> ClusterLayout:
    """The cluster generated in ``out_dir`` (:class:`ConfigError` if none was)."""
    layout = _read_layout_file(out_dir)
    if layout is None:
        raise ConfigError(f"no cluster in {out_dir}: write it with relais broker cluster-config")
    return _described(out_dir, layout)


def write_cluster_configs(
    out_dir: Path,
    *,
    nodes: int = 3,
    directory: Directory | None = None,
    base_port: int | None = None,
    sync_always: bool = True,
    hosts: Sequence[str] | None = None,
    tls_dir: Path | None = None,
    verify_clients: bool = False,
    data_root: Path | None = None,
) -> ClusterLayout:
    """Write (or rewrite, keeping the layout) the configurations of an ``nodes``-node cluster.

    ``directory`` must be verified. ``hosts``: each node's address (default: all on
    127.0.0.1). ``tls_dir``: the CA and node certificates (see the module docstring).
    ``data_root``: where each node keeps ``<name>/store`` on its host (default ``out_dir``).
    The layout options apply when the layout is made; a re-run that names others is refused.
    ``sync_always=False`` is for benchmarks only.
    """
    if nodes not in (3, 5):
        raise ConfigError("a JetStream cluster has 3 or 5 nodes")
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    layout = _read_layout_file(out_dir)
    if layout is None:
        layout = _new_layout(
            nodes,
            base_port,
            list(hosts or [_LOOPBACK] * nodes),
            tls_dir,
            verify_clients,
            data_root or out_dir,
        )
        write_private_file(out_dir / _LAYOUT, json.dumps(layout, indent=2).encode())
    elif len(layout["nodes"]) != nodes:
        raise ConfigError(f"{out_dir} holds a cluster of {len(layout['nodes'])} nodes")
    elif hosts is not None and list(hosts) != [n["host"] for n in layout["nodes"]]:
        raise ConfigError(f"{out_dir} holds a cluster on other hosts (remove it to start over)")
    services = ensure_service_seeds(out_dir / "creds")
    described = _described(out_dir, layout)
    one_host = all(is_loopback(n["host"]) for n in layout["nodes"])
    for node, node_view in zip(layout["nodes"], described.nodes, strict=True):
        settings = _node_settings(layout, node, sync_always=sync_always)
        if one_host:  # on this host: make the node's directories here
            for path in (node_view.store_dir.parent, node_view.store_dir, node_view.ports_dir):
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_config(
            node_view.config_file, build_config(directory, services=services, settings=settings)
        )
    return described


# -- the directory edition the configurations carry ---------------------------------------------


def load_directory_edition(out_dir: Path, signed: bytes, root_public_key: bytes) -> Directory:
    """Verify a directory for the cluster of ``out_dir``, refusing an older edition than the
    one its configurations were last made from (under the same root key)."""
    min_serial = None
    stored, root = out_dir / "directory.json", out_dir / "root.pub"
    if stored.exists():
        try:
            pinned = base64.b64decode(root.read_text().strip(), validate=True)
            if pinned == root_public_key:
                min_serial = verify_directory(stored.read_bytes(), pinned).serial
        except (OSError, binascii.Error) as exc:
            raise ConfigError(f"the stored directory of {out_dir} is unreadable") from exc
    return verify_directory(signed, root_public_key, min_serial=min_serial)


def store_directory_edition(out_dir: Path, signed: bytes, root_public_key: bytes) -> None:
    """Record the edition the configurations of ``out_dir`` were made from."""
    write_private_file(out_dir / "directory.json", signed)
    write_private_file(out_dir / "root.pub", base64.b64encode(root_public_key) + b"\n")


# -- replicas ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """One node's copy of a stream: the leader's, or a follower's."""

    node: str
    leader: bool
    current: bool  # a follower that has every message the leader has (the leader: True)
    lag: int = 0  # operations behind the leader
    active_ms: float | None = None  # since the leader last heard from it


@dataclass(frozen=True, slots=True)
class StreamCluster:
    """Where a stream's replicas are (a stream of a single server has one, the leader)."""

    stream: str
    replicas_wanted: int
    leader: str | None
    replicas: tuple[ReplicaState, ...]

    @property
    def healthy(self) -> bool:
        """A leader, and every wanted replica present and current."""
        return (
            self.leader is not None
            and len(self.replicas) == self.replicas_wanted
            and all(r.current for r in self.replicas)
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {**asdict(self), "healthy": self.healthy}


def _stream_cluster(name: str, info: dict[str, Any]) -> StreamCluster:
    cluster = info.get("cluster") or {}
    leader = cluster.get("leader")
    states = []
    if leader:
        states.append(ReplicaState(node=str(leader), leader=True, current=True))
    for peer in cluster.get("replicas") or []:
        active = peer.get("active")
        states.append(
            ReplicaState(
                node=str(peer.get("name", "?")),
                leader=False,
                current=bool(peer.get("current")) and not peer.get("offline", False),
                lag=int(peer.get("lag", 0) or 0),
                active_ms=None if active is None else round(int(active) / 1e6, 1),
            )
        )
    wanted = int((info.get("config") or {}).get("num_replicas", 1) or 1)
    return StreamCluster(name, wanted, leader, tuple(states))


async def read_stream_clusters(conn: Connection, names: Sequence[str]) -> tuple[StreamCluster, ...]:
    """Each stream's leader and replicas, from ``$JS.API.STREAM.INFO`` (operator suffices).

    A stream whose leader is being elected answers with an error: it is shown leaderless.
    """
    result = []
    for name in names:
        try:
            info = await conn.api(f"$JS.API.STREAM.INFO.{name}")
        except TransportError:
            result.append(StreamCluster(name, 0, None, ()))
            continue
        result.append(_stream_cluster(name, info))
    return tuple(result)
