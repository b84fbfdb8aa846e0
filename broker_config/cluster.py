"""Configuration of a JetStream cluster on loopback (development, tests, rehearsals).

Production runs 3 nodes (streams R3, provisioned with ``replicas=3``): a stream stays
writable while 2 of its 3 replicas are up, and with ``sync_interval: always`` on every node
an acknowledged message is on the disks of a majority. This module writes the configuration
of ``n`` nodes on one host::

    <out>/cluster.json        the layout: ports and route credentials (0600), reused on re-runs
    <out>/creds/<service>.nk  service users' seeds (admin, router, tracker, operator; 0600)
    <out>/creds/operator.nk
    <out>/n1.json ...         one nats-server configuration per node (0600)
    <out>/n1/store, n1/ports  each node's JetStream store and ports file directory

Ports are fixed at generation (routes need them, and stable client URLs let clients
reconnect to a restarted node): ``base_port + i`` for clients, ``+100`` for routes, ``+200``
for monitoring, or ports picked by the operating system when no base is given. Running the
generator again on the same directory keeps the layout and only regenerates the users (after
a directory change): then reload each node (``nats-server --signal reload=<pid>``).

Routes are password-protected here; across hosts they must also use TLS (``cluster.tls``),
which this loopback generator does not configure.
"""

from __future__ import annotations

import json
import secrets
import socket
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relais.broker_config.directory import Directory
from relais.broker_config.nats_conf import (
    ClusterSettings,
    ServerSettings,
    Service,
    build_config,
    ensure_service_seeds,
    service_seed_file,
    write_config,
    write_private_file,
)
from relais.schemas.errors import ConfigError

__all__ = ["ClusterLayout", "ClusterNode", "free_ports", "write_cluster_configs"]

_LAYOUT = "cluster.json"
_HOST = "127.0.0.1"


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


@dataclass(frozen=True, slots=True)
class ClusterLayout:
    """The generated cluster: its nodes and the service users' seed files."""

    nodes: tuple[ClusterNode, ...]
    creds_dir: Path

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


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that the operating system reports free on loopback."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((_HOST, 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


def _layout(out_dir: Path, nodes: int, base_port: int | None) -> dict[str, Any]:
    path = out_dir / _LAYOUT
    if path.exists():
        try:
            layout: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is damaged") from exc
        if len(layout.get("nodes", [])) != nodes:
            raise ConfigError(f"{out_dir} holds a cluster of {len(layout['nodes'])} nodes")
        return layout
    if base_port is not None:
        if not 1024 <= base_port <= 65535 - 200 - nodes:
            raise ConfigError("base port out of range")
        ports = [[base_port + i, base_port + 100 + i, base_port + 200 + i] for i in range(nodes)]
    else:
        flat = free_ports(3 * nodes)
        ports = [flat[3 * i : 3 * i + 3] for i in range(nodes)]
    layout = {
        "name": "relais",
        "route_user": "route",
        "route_password": secrets.token_urlsafe(24),
        "nodes": [
            {"name": f"n{i + 1}", "client": c, "route": r, "monitor": m}
            for i, (c, r, m) in enumerate(ports)
        ],
    }
    write_private_file(path, json.dumps(layout, indent=2).encode())
    return layout


def _node_settings(
    out_dir: Path, layout: dict[str, Any], node: dict[str, Any], *, sync_always: bool
) -> tuple[ServerSettings, ClusterNode]:
    node_dir = out_dir / node["name"]
    for path in (node_dir, node_dir / "store", node_dir / "ports"):
        path.mkdir(mode=0o700, exist_ok=True)
    routes = tuple(
        f"nats://{layout['route_user']}:{layout['route_password']}@{_HOST}:{n['route']}"
        for n in layout["nodes"]
    )
    settings = ServerSettings(
        store_dir=node_dir / "store",
        server_name=node["name"],
        port=node["client"],
        monitor_port=node["monitor"],
        ports_file_dir=node_dir / "ports",
        sync_always=sync_always,
        cluster=ClusterSettings(
            name=layout["name"],
            host=_HOST,
            port=node["route"],
            routes=routes,
            route_user=layout["route_user"],
            route_password=layout["route_password"],
        ),
    )
    described = ClusterNode(
        name=node["name"],
        config_file=out_dir / f"{node['name']}.json",
        store_dir=node_dir / "store",
        ports_dir=node_dir / "ports",
        log_file=node_dir / "nats-server.log",
        client_url=f"nats://{_HOST}:{node['client']}",
        monitor_url=f"http://{_HOST}:{node['monitor']}",
        route_port=node["route"],
    )
    return settings, described


def write_cluster_configs(
    out_dir: Path,
    *,
    nodes: int = 3,
    directory: Directory | None = None,
    base_port: int | None = None,
    sync_always: bool = True,
) -> ClusterLayout:
    """Write (or rewrite, keeping the layout) the configurations of an ``nodes``-node cluster.

    ``directory`` must be verified. ``sync_always=False`` is for benchmarks only.
    """
    if nodes not in (3, 5):
        raise ConfigError("a JetStream cluster has 3 or 5 nodes")
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    layout = _layout(out_dir, nodes, base_port)
    services = ensure_service_seeds(out_dir / "creds")
    generated = []
    for node in layout["nodes"]:
        settings, described = _node_settings(out_dir, layout, node, sync_always=sync_always)
        config = build_config(directory, services=services, settings=settings)
        write_config(described.config_file, config)
        generated.append(described)
    return ClusterLayout(tuple(generated), out_dir / "creds")
