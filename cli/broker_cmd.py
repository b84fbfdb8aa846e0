"""``relais broker``: the embedded NATS broker (start, inspect, reload, stop) and cluster configs.

``up`` starts nats-server detached (on 127.0.0.1 unless ``--listen`` says otherwise; a
listener outside loopback needs ``--tls-cert``/``--tls-key``/``--tls-ca``), waits until
``/healthz`` answers, checks that it fsyncs every write, provisions streams and consumers, and
prints where it listens; the address, ports and TLS files are recorded in the data directory
and reused by the next ``up``. ``reload`` applies a new directory edition (users regenerated,
consumers of new partners created, nothing deleted), to one data directory or to every node
of a cluster (``--cluster``). ``status`` reads health, durability, counters and each stream's
leader and replicas as the read-only operator user; ``down`` stops the server.
``cluster-config`` writes a cluster's node configurations, ``provision`` creates its streams
with ``--replicas 3``, and ``tls`` makes a test CA and certificates (:mod:`.tls_cmd`).

Exit codes: 0 success; 1 the broker answers but is unhealthy or a check failed (bad
directory signature, rollback); 2 usage (bad option, a broker already running on the data
directory, none running); 3 the broker could not be reached or refused the operation.
``status`` takes ``--data-dir``, or ``-s URL --creds FILE`` (environment ``RELAIS_SERVER``
or ``NATS_URL``, and ``RELAIS_CREDS``, which give way to ``--data-dir``).
Errors are one line on stderr: ``error [REASON]: message``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from relais.agents.keys import read_root_public_key
from relais.broker_config.cluster import (
    load_directory_edition,
    read_layout,
    store_directory_edition,
    write_cluster_configs,
)
from relais.broker_config.cluster_ops import provision_cluster, reload_cluster
from relais.broker_config.connection import ClientTls
from relais.broker_config.directory import verify_directory
from relais.broker_config.embedded import (
    BrokerPaths,
    BrokerStatus,
    broker_down,
    broker_reload,
    broker_status,
    broker_up,
)
from relais.broker_config.nats_conf import TlsSettings
from relais.broker_config.network import parse_listen
from relais.broker_config.streams import ProvisionReport
from relais.cli._checks import broker_check
from relais.cli._common import (
    EXIT_FAILURE,
    EXIT_UNREACHABLE,
    BrokerTarget,
    CredsOption,
    NkeyOption,
    ServerOption,
    broker_target,
    logs_to_stderr,
    reported_errors,
)
from relais.cli.tls_cmd import tls as tls_command
from relais.schemas.errors import ConfigError

__all__ = ["EXIT_UNREACHABLE", "app"]


app = typer.Typer(no_args_is_help=True, help="The embedded NATS broker.")

DataDirOption = Annotated[
    Path,
    typer.Option("--data-dir", help="The broker's data directory.", file_okay=False),
]
DirectoryOption = Annotated[
    Path | None,
    typer.Option("--directory", help="Signed directory file.", dir_okay=False, exists=True),
]
RootKeyOption = Annotated[
    str | None,
    typer.Option(
        "--root-public-key",
        help="Pinned root Ed25519 public key: base64, or a file (root .pub.json or base64).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=1.0, max=600.0, help="Seconds to wait for the server.")
]
UnsafeOption = Annotated[
    bool,
    typer.Option(
        "--dev-no-fsync",
        help="UNSAFE, development and benchmarks only: do not fsync every write.",
    ),
]


ClusterOption = Annotated[
    Path | None,
    typer.Option("--cluster", help="A cluster's directory (from cluster-config).", file_okay=False),
]


@app.callback()
def _logs_to_stderr() -> None:
    """The embedded NATS broker."""
    logs_to_stderr()


def _directory_args(
    directory: Path | None, root_key: str | None
) -> tuple[bytes | None, bytes | None]:
    if directory is None:
        if root_key is not None:
            raise ConfigError("--root-public-key goes with --directory")
        return None, None
    if root_key is None:
        raise ConfigError("--directory needs --root-public-key")
    try:
        return directory.read_bytes(), read_root_public_key(root_key)
    except OSError as exc:
        raise ConfigError(f"cannot read {directory}: {exc.strerror}") from exc


def _report_lines(report: ProvisionReport) -> list[str]:
    lines = [
        f"provisioned: {len(report.created)} created, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged"
    ]
    lines += [f"  kept (not in the directory): {name}" for name in report.kept]
    lines += [f"  CONFLICT {name}: {reason}" for name, reason in report.conflicts]
    return lines


def _tls_args(
    cert: Path | None, key: Path | None, ca: Path | None, verify_clients: bool
) -> TlsSettings | None:
    if cert is None and key is None:
        if ca is not None or verify_clients:
            raise ConfigError("--tls-ca and --tls-verify-clients go with --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise ConfigError("give --tls-cert and --tls-key together")
    if ca is None:
        raise ConfigError("--tls-cert needs --tls-ca, the partnership CA clients verify with")
    return TlsSettings(
        cert_file=cert.resolve(),
        key_file=key.resolve(),
        ca_file=ca.resolve(),
        verify_clients=verify_clients,
    )


@app.command("up")
def up(
    data_dir: DataDirOption,
    directory: DirectoryOption = None,
    root_public_key: RootKeyOption = None,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            help="HOST:PORT of the client listener (default 127.0.0.1, port chosen once; kept).",
        ),
    ] = None,
    monitor_port: Annotated[
        int | None,
        typer.Option("--monitor-port", min=0, max=65535, help="Monitoring port on 127.0.0.1."),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", dir_okay=False, exists=True, help="Server certificate (PEM)."),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", dir_okay=False, exists=True, help="Its private key (PEM, 0600)."),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option("--tls-ca", dir_okay=False, exists=True, help="The partnership CA (PEM)."),
    ] = None,
    tls_verify_clients: Annotated[
        bool, typer.Option("--tls-verify-clients", help="Mutual TLS: clients need a certificate.")
    ] = False,
    dev_no_fsync: UnsafeOption = False,
    timeout: TimeoutOption = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Start nats-server for DATA_DIR, wait until healthy, provision it.

    Listen settings given here are recorded in DATA_DIR and reused by the next ``up``.
    """
    with reported_errors():
        signed, root = _directory_args(directory, root_public_key)
        network = (
            BrokerPaths(data_dir)
            .network()
            .merged(
                listen=None if listen is None else parse_listen(listen),
                monitor_port=monitor_port,
                tls=_tls_args(tls_cert, tls_key, tls_ca, tls_verify_clients),
            )
        )
        if dev_no_fsync:
            typer.echo("WARNING: fsync disabled, acknowledged messages can be lost", err=True)
        info, report = asyncio.run(
            broker_up(
                data_dir,
                directory=signed,
                root_public_key=root,
                sync_always=not dev_no_fsync,
                ready_timeout=timeout,
                network=network,
            )
        )
    if as_json:
        typer.echo(json.dumps({**info.to_json(), "provisioning": report.to_json()}))
        return
    typer.echo(f"nats-server running (pid {info.pid})")
    typer.echo(f"  client:      {info.client_url}")
    if info.tls_ca_file is not None:
        typer.echo(f"  TLS:         clients verify against {info.tls_ca_file}")
    typer.echo(f"  monitoring:  {info.monitor_url}")
    typer.echo(
        f"  credentials: {info.creds_dir} (router.nk, tracker.nk for the gateway; operator.nk;"
        " admin.nk for provisioning only)"
    )
    typer.echo(f"  fsync every write: {'yes' if info.sync_always else 'NO (development only)'}")
    for line in _report_lines(report):
        typer.echo(line)


def _limit(value: int) -> str:
    return "none" if value is None or value < 0 else str(value)


def _status_lines(status: BrokerStatus) -> list[str]:
    health = {True: "ok", False: "UNHEALTHY", None: "unknown (no monitoring URL)"}
    sync = {True: "yes", False: "NO", None: "unknown (no monitoring URL)"}
    lines = [
        f"broker {status.client_url} (nats-server {status.version or '?'})",
        f"  health: {health[status.healthy]}",
        f"  fsync every write: {sync[status.sync_always]}",
        "streams:",
    ]
    lines += [
        f"  {s.name:<12} {s.messages:>10} msgs {s.bytes:>14} bytes  R{s.replicas}"
        f"  limit {_limit(s.max_bytes)} bytes"
        + (f", {s.partner_messages} msgs per partner" if s.partner_messages > 0 else "")
        for s in status.streams
    ]
    lines += _replica_lines(status)
    lines.append("consumers:                          pending  ack pending  redelivered")
    lines += [
        f"  {c.stream + '/' + c.name:<32} {c.num_pending:>9} {c.num_ack_pending:>12} "
        f"{c.num_redelivered:>12}"
        for c in status.consumers
    ]
    return lines


def _replica_lines(status: BrokerStatus) -> list[str]:
    if not any(r.replicas_wanted > 1 for r in status.replicas):
        return []
    lines = ["replicas:"]
    nodes: dict[str, list[int]] = {}  # node -> [leads, follows, behind]
    for stream in status.replicas:
        peers = ", ".join(
            f"{r.node} {'current' if r.current else f'BEHIND ({r.lag})'}"
            for r in stream.replicas
            if not r.leader
        )
        state = "ok" if stream.healthy else "DEGRADED"
        lines.append(
            f"  {stream.stream:<12} R{stream.replicas_wanted}  leader {stream.leader or 'NONE'}"
            f"  followers: {peers or 'none'}  [{state}]"
        )
        for r in stream.replicas:
            counts = nodes.setdefault(r.node, [0, 0, 0])
            counts[0 if r.leader else 1] += 1
            counts[2] += 0 if r.current else 1
    lines.append("nodes:")
    lines += [
        f"  {name:<12} leads {leads}, follows {follows}"
        + (f", BEHIND on {behind}" if behind else ", current")
        for name, (leads, follows, behind) in sorted(nodes.items())
    ]
    return lines


@app.command("status")
def status(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Data directory of an embedded broker.", file_okay=False),
    ] = None,
    server: ServerOption = None,
    creds: CredsOption = None,
    nkey: NkeyOption = None,
    monitor: Annotated[
        str | None, typer.Option("--monitor", help="Monitoring URL (with -s), loopback only.")
    ] = None,
    cluster: ClusterOption = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            "--tls-ca", envvar="NATS_CA", dir_okay=False, help="The partnership CA (TLS)."
        ),
    ] = None,
    timeout: TimeoutOption = 5.0,
    as_json: JsonOption = False,
    check: Annotated[
        bool,
        typer.Option("--check", help="Nagios-style: one line; exit 0 OK, 1 WARNING, 2 CRITICAL."),
    ] = False,
) -> None:
    """Health, fsync setting, streams, replicas and consumers (as the read-only operator).

    ``--cluster DIR`` reads every node of a cluster written by cluster-config.
    """
    with reported_errors():
        if data_dir is not None and monitor is not None:
            raise ConfigError("--monitor goes with -s, not with --data-dir")
        tls = None if tls_ca is None else ClientTls(tls_ca)
        if cluster is not None:
            if data_dir is not None or server is not None:
                raise ConfigError("give --cluster, --data-dir or -s, one of them")
            layout = read_layout(cluster)
            target = BrokerTarget(",".join(layout.client_urls), layout.operator_creds)
            tls = tls or layout.client_tls()
        else:
            target = broker_target(ctx, server, creds, data_dir, nkey=nkey)
        if data_dir is not None:
            tls = tls or BrokerPaths(data_dir).network().client_tls()
        if check and cluster is not None:
            raise ConfigError("--check reads one node: give -s or --data-dir, not --cluster")
    if check:
        broker_check(target, target.monitor_url or monitor, timeout)
    with reported_errors():
        result = asyncio.run(
            broker_status(
                target.url,
                creds=target.creds,
                monitor_url=target.monitor_url or monitor,
                max_wait=timeout,
                tls=tls,
            )
        )
    if as_json:
        typer.echo(json.dumps(result.to_json()))
    else:
        for line in _status_lines(result):
            typer.echo(line)
    if result.healthy is False:
        raise typer.Exit(EXIT_FAILURE)
    if cluster is None and (result.healthy is None or result.sync_always is None):
        # Without the monitoring endpoint the health and the fsync setting are unknown: a
        # status that cannot tell is not a success.
        typer.echo(
            "error [NOT_CONNECTED]: health and fsync unknown: give --monitor URL (the node's "
            "monitoring endpoint, on its host) or --data-dir",
            err=True,
        )
        raise typer.Exit(EXIT_FAILURE)


@app.command("down")
def down(
    data_dir: DataDirOption, timeout: TimeoutOption = 10.0, as_json: JsonOption = False
) -> None:
    """Stop the server of DATA_DIR: SIGTERM, then SIGKILL after --timeout seconds."""
    with reported_errors():
        pid = broker_down(data_dir, timeout=timeout)
    if as_json:
        typer.echo(json.dumps({"stopped": pid is not None, "pid": pid}))
        return
    typer.echo("no broker running" if pid is None else f"nats-server {pid} stopped")


@app.command("reload")
def reload(
    directory: Annotated[
        Path, typer.Option("--directory", help="New signed directory.", dir_okay=False, exists=True)
    ],
    root_public_key: Annotated[
        str, typer.Option("--root-public-key", help="Pinned root public key (base64 or file).")
    ],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="The broker's data directory.", file_okay=False),
    ] = None,
    cluster: ClusterOption = None,
    replicas: Annotated[
        int, typer.Option("--replicas", help="With --cluster: copies of each stream.")
    ] = 3,
    timeout: TimeoutOption = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Apply a new directory edition: users regenerated, new partners provisioned.

    With ``--cluster DIR``: every node's configuration is rewritten and each node running
    on this host reloaded; the others are listed (reload them on their hosts).
    """
    with reported_errors():
        if (data_dir is None) == (cluster is None):
            raise ConfigError("give --data-dir DIR or --cluster DIR")
        try:
            signed = directory.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {directory}: {exc.strerror}") from exc
        root = read_root_public_key(root_public_key)
        elsewhere: tuple[str, ...] = ()
        reloaded: tuple[str, ...] = ()
        if data_dir is not None:
            report = asyncio.run(
                broker_reload(
                    data_dir, directory=signed, root_public_key=root, ready_timeout=timeout
                )
            )
        elif cluster is not None:
            done = asyncio.run(
                reload_cluster(
                    cluster,
                    directory=signed,
                    root_public_key=root,
                    replicas=replicas,
                    ready_timeout=timeout,
                )
            )
            report, reloaded, elsewhere = done.report, done.reloaded, done.elsewhere
    if as_json:
        document = report.to_json()
        if cluster is not None:
            document = {"reloaded": list(reloaded), "elsewhere": list(elsewhere), **document}
        typer.echo(json.dumps(document))
        return
    typer.echo("configuration reloaded" + (f" on {', '.join(reloaded)}" if reloaded else ""))
    for name in elsewhere:
        typer.echo(f"  {name}: not running on this host: copy its configuration, reload it there")
    for line in _report_lines(report):
        typer.echo(line)


@app.command("provision")
def provision(
    cluster: Annotated[
        Path,
        typer.Option(
            "--cluster", help="A cluster's directory (from cluster-config).", file_okay=False
        ),
    ],
    replicas: Annotated[int, typer.Option("--replicas", help="Copies of each stream: 3 or 5.")] = 3,
    directory: DirectoryOption = None,
    root_public_key: RootKeyOption = None,
    dev_no_fsync: UnsafeOption = False,
    as_json: JsonOption = False,
) -> None:
    """Create or update a running cluster's streams and consumers with the admin credential.

    Run on a node's host (it checks on its loopback monitoring that the server fsyncs);
    without --directory, the edition the cluster's configurations were made from is used.
    """
    with reported_errors():
        layout = read_layout(cluster)
        signed, root = _directory_args(directory, root_public_key)
        verified = None
        if signed is not None and root is not None:
            verified = load_directory_edition(cluster, signed, root)
        elif (cluster / "directory.json").exists():
            stored_root = read_root_public_key(str(cluster / "root.pub"))
            verified = verify_directory((cluster / "directory.json").read_bytes(), stored_root)
        report = asyncio.run(
            provision_cluster(
                layout, directory=verified, replicas=replicas, allow_unsafe=dev_no_fsync
            )
        )
    if as_json:
        typer.echo(json.dumps({"replicas": replicas, **report.to_json()}))
        return
    typer.echo(f"cluster of {len(layout.nodes)} nodes, streams R{replicas}")
    for line in _report_lines(report):
        typer.echo(line)


@app.command("cluster-config")
def cluster_config(
    out: Annotated[Path, typer.Option("--out", help="Output directory.", file_okay=False)],
    nodes: Annotated[int, typer.Option("--nodes", help="3 or 5 nodes.")] = 3,
    directory: DirectoryOption = None,
    root_public_key: RootKeyOption = None,
    base_port: Annotated[
        int | None,
        typer.Option(
            "--base-port",
            help="Client port (one host: the first of consecutive ones; default OS-chosen;"
            " separate hosts: 4222, routes +2000, monitoring +4000).",
        ),
    ] = None,
    hosts: Annotated[
        str | None,
        typer.Option("--hosts", help="Each node's IP address, comma-separated (default loopback)."),
    ] = None,
    tls_dir: Annotated[
        Path | None,
        typer.Option(
            "--tls-dir",
            help="ca.crt and n1.crt/.key... (relais broker tls): client and route TLS.",
            file_okay=False,
            exists=True,
        ),
    ] = None,
    tls_verify_clients: Annotated[
        bool, typer.Option("--tls-verify-clients", help="Mutual TLS for clients too.")
    ] = False,
    data_root: Annotated[
        Path | None,
        typer.Option("--data-root", help="Where each node keeps <name>/store on its host."),
    ] = None,
    dev_no_fsync: UnsafeOption = False,
    as_json: JsonOption = False,
) -> None:
    """Write the configurations of a 3- or 5-node JetStream cluster (streams R3).

    The layout (hosts, ports, TLS) is fixed by the first run; a re-run with a new
    directory regenerates the users only (then: relais broker reload --cluster).
    """
    with reported_errors():
        signed, root = _directory_args(directory, root_public_key)
        verified = None
        if signed is not None and root is not None:
            verified = load_directory_edition(out, signed, root)
        layout = write_cluster_configs(
            out,
            nodes=nodes,
            directory=verified,
            base_port=base_port,
            sync_always=not dev_no_fsync,
            hosts=None if hosts is None else [h.strip() for h in hosts.split(",")],
            tls_dir=tls_dir,
            verify_clients=tls_verify_clients,
            data_root=data_root,
        )
        if signed is not None and root is not None:
            store_directory_edition(out, signed, root)
    rows: list[dict[str, Any]] = [
        {
            "name": n.name,
            "config": str(n.config_file),
            "client_url": n.client_url,
            "monitor_url": n.monitor_url,
            "store_dir": str(n.store_dir),
        }
        for n in layout.nodes
    ]
    if as_json:
        typer.echo(json.dumps({"nodes": rows, "creds_dir": str(layout.creds_dir)}))
        return
    for row in rows:
        typer.echo(f"{row['name']}: nats-server -c {row['config']}   ({row['client_url']})")
    typer.echo(
        f"credentials: {layout.creds_dir}; once the nodes run:"
        f" relais broker provision --cluster {out} --replicas 3"
    )


app.command("tls")(tls_command)
