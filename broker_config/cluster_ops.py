"""Operating a generated cluster from one of its hosts: provision, reload, find its nodes.

:func:`provision_cluster` connects to every node's client URL with the provisioning
(administrator) credential and creates or updates the streams with ``replicas`` copies (3 in
production); it first checks on a node of this host that the server fsyncs every write.
:func:`reload_cluster` applies a new directory edition: it rewrites every node's
configuration (:func:`~relais.broker_config.cluster.write_cluster_configs`, layout kept),
checks each with ``nats-server -t``, signals each node running on this host to reload
(found by its ports file, ``<ports>/nats-server_<pid>.ports``, and its command line), then
provisions the new partners' consumers. Nodes on other hosts are listed as such: copy their
configuration there and reload them with their service manager (``systemctl reload
relais-broker@n2``), then run the provisioning once more (it is idempotent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import structlog

from relais.broker_config.cluster import (
    ClusterLayout,
    ClusterNode,
    load_directory_edition,
    read_layout,
    store_directory_edition,
    write_cluster_configs,
)
from relais.broker_config.directory import Directory
from relais.broker_config.embedded import is_alive, provision_as_admin, signal_reload
from relais.broker_config.nats_conf import check_config
from relais.broker_config.streams import ProvisionReport
from relais.schemas.errors import ConfigError, Reason, TransportError

__all__ = [
    "ClusterReload",
    "local_monitor",
    "provision_cluster",
    "reload_cluster",
    "running_node_pid",
]

_PORTS_FILE_RE = re.compile(r"_(\d+)\.ports$")
_log = structlog.get_logger(__name__)


def running_node_pid(node: ClusterNode) -> int | None:
    """The pid of ``node``'s nats-server when it runs on this host, else ``None``."""
    if not node.ports_dir.is_dir():
        return None
    for path in node.ports_dir.glob("*.ports"):
        match = _PORTS_FILE_RE.search(path.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid > 1 and is_alive(pid) and _runs_config(pid, node.config_file):
            return pid
    return None


def _runs_config(pid: int, config_file: Path) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False  # not ours to signal, or gone
    return str(config_file).encode() in args or str(config_file.resolve()).encode() in args


def _healthy(node: ClusterNode) -> bool:
    try:
        return httpx.get(f"{node.monitor_url}/healthz", timeout=2.0, trust_env=False).is_success
    except httpx.HTTPError:
        return False


def local_monitor(layout: ClusterLayout) -> str:
    """The monitoring URL of a healthy node on this host (monitoring is loopback only)."""
    for node in layout.nodes:
        if _healthy(node):
            return node.monitor_url
    raise TransportError(
        "no node of the cluster answers on this host's monitoring ports: run this on a node's host",
        reason=Reason.NOT_CONNECTED,
    )


async def provision_cluster(
    layout: ClusterLayout,
    *,
    directory: Directory | None,
    replicas: int = 3,
    allow_unsafe: bool = False,
) -> ProvisionReport:
    """Create or update the streams and consumers of the cluster with ``replicas`` copies."""
    if replicas not in (1, 3, 5) or replicas > len(layout.nodes):
        raise ConfigError(f"replicas: 1, 3 or 5, at most the {len(layout.nodes)} nodes")
    return await provision_as_admin(
        layout.client_urls,
        admin_creds=layout.admin_creds,
        monitor_url=local_monitor(layout),
        directory=directory,
        allow_unsafe=allow_unsafe,
        replicas=replicas,
        tls=layout.client_tls(),
    )


@dataclass(frozen=True, slots=True)
class ClusterReload:
    """What :func:`reload_cluster` did on each node, and the provisioning that followed."""

    reloaded: tuple[str, ...]
    elsewhere: tuple[str, ...]  # not running on this host: reload them there
    report: ProvisionReport


async def reload_cluster(
    out_dir: Path,
    *,
    directory: bytes,
    root_public_key: bytes,
    replicas: int = 3,
    sync_always: bool = True,
    ready_timeout: float = 30.0,
) -> ClusterReload:
    """Apply a new directory edition to every node of the cluster of ``out_dir``.

    An edition older than the one the configurations carry is refused. The new partners'
    consumers are provisioned at the end (the nodes of other hosts get their users when
    they are reloaded there).
    """
    layout = read_layout(out_dir)
    verified = load_directory_edition(out_dir, directory, root_public_key)
    write_cluster_configs(
        out_dir, nodes=len(layout.nodes), directory=verified, sync_always=sync_always
    )
    for node in layout.nodes:
        check_config(node.config_file)
    store_directory_edition(out_dir, directory, root_public_key)
    reloaded, elsewhere = [], []
    for node in layout.nodes:
        pid = running_node_pid(node)
        if pid is None:
            elsewhere.append(node.name)
            continue
        await signal_reload(pid, node.monitor_url, ready_timeout=ready_timeout)
        reloaded.append(node.name)
        _log.info("cluster.node_reloaded", node=node.name, serial=verified.serial)
    # Consumers live in the hub account: they can be made before the other hosts reload.
    report = await provision_cluster(
        layout, directory=verified, replicas=replicas, allow_unsafe=not sync_always
    )
    return ClusterReload(tuple(reloaded), tuple(elsewhere), report)
