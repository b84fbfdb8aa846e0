"""``relais schemas``: check and list the shared Avro schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from relais.schemas.check import check_schemas
from relais.schemas.registry import SchemaRegistry, default_registry, schema_root

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True)

_RootOption = Annotated[
    Path | None,
    typer.Option("--root", help="Schema tree to check (default: the packaged schemas)."),
]
_JsonOption = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]


@app.command("check")
def check(root: _RootOption = None, as_json: _JsonOption = False) -> None:
    """Parse every schema, apply the lint rules, check BACKWARD_TRANSITIVE compatibility.

    Exit 0 when everything holds, 1 otherwise.
    """
    problems = check_schemas(root if root is not None else schema_root())
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": not problems,
                    "problems": [
                        {"schema": p.schema, "reason": p.reason.value, "message": p.message}
                        for p in problems
                    ],
                }
            )
        )
    else:
        for p in problems:
            typer.echo(f"{p.reason.value}\t{p.schema}\t{p.message}", err=True)
        if not problems:
            typer.echo("schemas ok")
    raise typer.Exit(1 if problems else 0)


@app.command("list")
def list_schemas(root: _RootOption = None, as_json: _JsonOption = False) -> None:
    """List event types with their fingerprint, version count and sections."""
    registry = SchemaRegistry.from_directory(root) if root is not None else default_registry()
    rows: list[dict[str, Any]] = [
        {
            "event_type": s.event_type.value,
            "schema": s.full_name,
            "fingerprint": s.fingerprint.hex(),
            "sections": list(s.section_names),
            "earlier_versions": [h.version for h in registry.history.get(s.event_type, [])],
        }
        for s in registry.current()
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        typer.echo(
            f"{row['event_type']:<28} {str(row['fingerprint'])[:16]}  "
            f"sections={','.join(row['sections'])}  history={row['earlier_versions']}"
        )
