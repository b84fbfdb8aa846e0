"""``relais broker``: the embedded NATS broker (start, inspect, reload, stop) and cluster configs.

``up`` starts nats-server detached on 127.0.0.1 with ports chosen by the operating system,
waits until ``/healthz`` answers, checks that it fsyncs every write, provisions streams and
consumers, and prints where it listens. ``reload`` applies a new directory edition (users
regenerated, consumers of new partners created, nothing deleted). ``status`` reads health,
durability and counters as the read-only operator user; ``down`` stops the server.

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
from relais.broker_config.cluster import write_cluster_configs
from relais.broker_config.directory import verify_directory
from relais.broker_config.embedded import (
    BrokerStatus,
    broker_down,
    broker_reload,
    broker_status,
    broker_up,
)
from relais.broker_config.streams import ProvisionReport
from relais.cli._checks import broker_check
from relais.cli._common import (
    EXIT_FAILURE,
    EXIT_UNREACHABLE,
    CredsOption,
    NkeyOption,
    ServerOption,
    broker_target,
    logs_to_stderr,
    reported_errors,
)
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


@app.command("up")
def up(
    data_dir: DataDirOption,
    directory: DirectoryOption = None,
    root_public_key: RootKeyOption = None,
    dev_no_fsync: UnsafeOption = False,
    timeout: TimeoutOption = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Start nats-server on 127.0.0.1 for DATA_DIR, wait until healthy, provision it."""
    with reported_errors():
        signed, root = _directory_args(directory, root_public_key)
        if dev_no_fsync:
            typer.echo("WARNING: fsync disabled, acknowledged messages can be lost", err=True)
        info, report = asyncio.run(
            broker_up(
                data_dir,
                directory=signed,
                root_public_key=root,
                sync_always=not dev_no_fsync,
                ready_timeout=timeout,
            )
        )
    if as_json:
        typer.echo(json.dumps({**info.to_json(), "provisioning": report.to_json()}))
        return
    typer.echo(f"nats-server running (pid {info.pid})")
    typer.echo(f"  client:      {info.client_url}")
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
    lines.append("consumers:                          pending  ack pending  redelivered")
    lines += [
        f"  {c.stream + '/' + c.name:<32} {c.num_pending:>9} {c.num_ack_pending:>12} "
        f"{c.num_redelivered:>12}"
        for c in status.consumers
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
    timeout: TimeoutOption = 5.0,
    as_json: JsonOption = False,
    check: Annotated[
        bool,
        typer.Option("--check", help="Nagios-style: one line; exit 0 OK, 1 WARNING, 2 CRITICAL."),
    ] = False,
) -> None:
    """Health, fsync setting, streams and consumers (as the read-only operator user)."""
    with reported_errors():
        if data_dir is not None and monitor is not None:
            raise ConfigError("--monitor goes with -s, not with --data-dir")
        target = broker_target(ctx, server, creds, data_dir, nkey=nkey)
    if check:
        broker_check(target, target.monitor_url or monitor, timeout)
    with reported_errors():
        result = asyncio.run(
            broker_status(
                target.url,
                creds=target.creds,
                monitor_url=target.monitor_url or monitor,
                max_wait=timeout,
            )
        )
    if as_json:
        typer.echo(json.dumps(result.to_json()))
    else:
        for line in _status_lines(result):
            typer.echo(line)
    if result.healthy is False:
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
    data_dir: DataDirOption,
    directory: Annotated[
        Path, typer.Option("--directory", help="New signed directory.", dir_okay=False, exists=True)
    ],
    root_public_key: Annotated[
        str, typer.Option("--root-public-key", help="Pinned root public key (base64 or file).")
    ],
    timeout: TimeoutOption = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Apply a new directory edition: users regenerated, new partners provisioned."""
    with reported_errors():
        try:
            signed = directory.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {directory}: {exc.strerror}") from exc
        root = read_root_public_key(root_public_key)
        report = asyncio.run(
            broker_reload(data_dir, directory=signed, root_public_key=root, ready_timeout=timeout)
        )
    if as_json:
        typer.echo(json.dumps(report.to_json()))
        return
    typer.echo("configuration reloaded")
    for line in _report_lines(report):
        typer.echo(line)


@app.command("cluster-config")
def cluster_config(
    out: Annotated[Path, typer.Option("--out", help="Output directory.", file_okay=False)],
    nodes: Annotated[int, typer.Option("--nodes", help="3 or 5 nodes.")] = 3,
    directory: DirectoryOption = None,
    root_public_key: RootKeyOption = None,
    base_port: Annotated[
        int | None, typer.Option("--base-port", help="Client ports from here (else OS-chosen).")
    ] = None,
    dev_no_fsync: UnsafeOption = False,
    as_json: JsonOption = False,
) -> None:
    """Write the configurations of a JetStream cluster on 127.0.0.1 (streams R3)."""
    with reported_errors():
        signed, root = _directory_args(directory, root_public_key)
        verified = None if signed is None or root is None else verify_directory(signed, root)
        layout = write_cluster_configs(
            out, nodes=nodes, directory=verified, base_port=base_port, sync_always=not dev_no_fsync
        )
    rows: list[dict[str, Any]] = [
        {
            "name": n.name,
            "config": str(n.config_file),
            "client_url": n.client_url,
            "monitor_url": n.monitor_url,
        }
        for n in layout.nodes
    ]
    if as_json:
        typer.echo(json.dumps({"nodes": rows, "creds_dir": str(layout.creds_dir)}))
        return
    for row in rows:
        typer.echo(f"{row['name']}: nats-server -c {row['config']}   ({row['client_url']})")
    typer.echo(f"credentials: {layout.creds_dir}; provision with replicas=3")
