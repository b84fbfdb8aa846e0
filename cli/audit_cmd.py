"""``relais audit``: verify the tamper-evident audit log.

``verify -s URL --creds FILE --root-public-key K`` reads the whole ``AUDIT`` stream (the
read-only operator user may), recomputes the hash chain, checks every signed checkpoint
(signature by a gateway key of the directory, value, contiguity) and reports records after
the last checkpoint as unsealed. The gateway's key comes from the signed directory: the
last edition on ``ref.dir`` (or ``--directory FILE``), verified against the pinned root key.
``--anchor SEQ:HEX`` (printed by an earlier run) also checks that the log still holds that
checkpoint, which is the only way to notice a log cut after it.

Exit codes: 0 the log verifies; 1 it does not (the first problem is printed with its reason
code and sequence); 2 usage; 3 the broker could not be reached or refused.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from relais.broker_config.connection import connect
from relais.broker_config.directory import Directory, DirectoryKeys, verify_directory
from relais.broker_config.nats_conf import OPERATOR_INBOX
from relais.cli._common import (
    EXIT_FAILURE,
    logs_to_stderr,
    parse_root_public_key,
    reported_errors,
)
from relais.gateway.audit import Anchor, AuditReport, verify_audit
from relais.gateway.jetstream import last_for_subject
from relais.schemas.errors import ConfigError, DirectoryError

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")


@app.callback()
def _audit() -> None:
    """The tamper-evident audit log."""
    logs_to_stderr()


async def _verify(
    server: str,
    creds: Path,
    root: bytes,
    signed_directory: bytes | None,
    anchor: Anchor | None,
    inbox: str,
) -> AuditReport:
    conn = await connect(server, creds=creds, inbox_prefix=inbox, name="relais-audit")
    try:
        if signed_directory is not None:
            signed = signed_directory
        else:
            last = await last_for_subject(conn, "DIRECTORY", "ref.dir")
            if last is None:
                raise DirectoryError("no directory on ref.dir: give --directory")
            signed = last.data
        directory: Directory = verify_directory(signed, root)
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
    server: Annotated[str, typer.Option("--server", "-s", help="NATS URL.")],
    creds: Annotated[
        Path, typer.Option("--creds", help="User nkey seed file (operator).", dir_okay=False)
    ],
    root_public_key: Annotated[
        str,
        typer.Option(
            "--root-public-key",
            envvar="RELAIS_ROOT_PUBLIC_KEY",
            help="Pinned root public key (base64 or a file); checks the gateway's key.",
        ),
    ],
    directory: Annotated[
        Path | None,
        typer.Option("--directory", help="Signed directory (default: ref.dir).", dir_okay=False),
    ] = None,
    anchor: Annotated[
        str | None, typer.Option("--anchor", help="SEQ:HEX of a checkpoint seen before.")
    ] = None,
    inbox_prefix: Annotated[
        str, typer.Option("--inbox-prefix", help="Inbox prefix of the user.")
    ] = OPERATOR_INBOX,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Recompute the audit chain and check every signed checkpoint."""
    with reported_errors():
        root = parse_root_public_key(root_public_key)
        anchored = Anchor.parse(anchor) if anchor is not None else None
        signed = None
        if directory is not None:
            try:
                signed = directory.read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read {directory}: {exc.strerror}") from exc
        report = asyncio.run(_verify(server, creds, root, signed, anchored, inbox_prefix))
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
