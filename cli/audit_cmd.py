"""``relais audit``: verify the tamper-evident audit log.

``verify -s URL --creds FILE --root-public-key K`` (or ``RELAIS_SERVER``, ``RELAIS_CREDS``,
``RELAIS_ROOT_PUBLIC_KEY``; or ``--data-dir`` of an embedded broker) reads the whole
``AUDIT`` stream (the read-only operator user may), recomputes the hash chain, checks every
signed checkpoint (signature by a gateway key of the directory, value, contiguity) and
reports records after the last checkpoint as unsealed. The gateway's key comes from the
signed directory: the last edition on ``ref.dir`` (or ``--directory FILE``), verified against
the pinned root key.
``--anchor SEQ:HEX`` (printed by an earlier run) also checks that the log still holds that
checkpoint, which is the only way to notice a log cut after it.

Exit codes: 0 the log verifies; 1 it does not (the first problem is printed with its reason
code and sequence); 2 usage; 3 the broker could not be reached or refused.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from relais.agents.keys import read_root_public_key
from relais.broker_config.directory import DirectoryKeys
from relais.broker_config.nats_conf import OPERATOR_INBOX
from relais.cli._common import (
    EXIT_FAILURE,
    BrokerTarget,
    CredsOption,
    DataDirOption,
    DirectoryFileOption,
    JsonOption,
    NkeyOption,
    ServerOption,
    TimeoutOption,
    broker_target,
    connect_operator,
    load_directory,
    logs_to_stderr,
    read_directory_file,
    reported_errors,
)
from relais.gateway.audit import Anchor, AuditReport, verify_audit

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")


@app.callback()
def _audit() -> None:
    """The tamper-evident audit log."""
    logs_to_stderr()


async def _verify(
    target: BrokerTarget,
    root: bytes,
    signed_directory: bytes | None,
    anchor: Anchor | None,
    inbox: str,
    wait: float,
) -> AuditReport:
    conn = await connect_operator(target, wait=wait, name="relais-audit", inbox_prefix=inbox)
    try:
        directory = await load_directory(conn, signed_directory, root)
        return await verify_audit(
            conn,
            keys=DirectoryKeys(directory),
            partnership=directory.partnership,
            anchor=anchor,
        )
    finally:
        await conn.close()


@app.command("verify")
def verify(
    ctx: typer.Context,
    root_public_key: Annotated[
        str,
        typer.Option(
            "--root-public-key",
            envvar="RELAIS_ROOT_PUBLIC_KEY",
            show_envvar=True,
            help="Pinned root public key (base64 or a file); checks the gateway's key.",
        ),
    ],
    server: ServerOption = None,
    creds: CredsOption = None,
    nkey: NkeyOption = None,
    directory: DirectoryFileOption = None,
    anchor: Annotated[
        str | None, typer.Option("--anchor", help="SEQ:HEX of a checkpoint seen before.")
    ] = None,
    data_dir: DataDirOption = None,
    inbox_prefix: Annotated[
        str, typer.Option("--inbox-prefix", help="Inbox prefix of the user.")
    ] = OPERATOR_INBOX,
    timeout: TimeoutOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Recompute the audit chain and check every signed checkpoint."""
    with reported_errors():
        root = read_root_public_key(root_public_key)
        anchored = Anchor.parse(anchor) if anchor is not None else None
        signed = read_directory_file(directory)
        target = broker_target(ctx, server, creds, data_dir, nkey=nkey)
        report = asyncio.run(_verify(target, root, signed, anchored, inbox_prefix, timeout))
    if as_json:
        typer.echo(json.dumps(report.to_json()))
    else:
        _print(report)
    if not report.ok:
        raise typer.Exit(EXIT_FAILURE)


def _print(report: AuditReport) -> None:
    verdict = "ok" if report.ok else "FAILED"
    typer.echo(
        f"audit log {verdict}: {report.records} records, {report.checkpoints} checkpoints,"
        f" sealed through {report.sealed_through}, {report.unsealed} unsealed"
    )
    if report.anchor:
        typer.echo(f"anchor: {report.anchor}")
    if report.problem is not None:
        problem = report.problem
        typer.echo(f"error [{problem.reason.value}] at sequence {problem.seq}: {problem.detail}")
