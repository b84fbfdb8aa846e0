"""``relais schemas``: check and list the shared Avro schemas, and show their JSON contract.

``show TYPE`` prints the JSON Schema (draft 2020-12) of the JSON form a partner's system
submits for an event type (the schema of ``POST /v1/events/TYPE`` in the OpenAPI document);
``sample TYPE [--seed N]`` prints a valid, fictional example of it. An unknown type exits 2
(``error [UNKNOWN_SCHEMA]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from relais.cli._common import EXIT_USAGE, fail
from relais.schemas.check import check_schemas
from relais.schemas.domain import EventType
from relais.schemas.errors import SchemaError
from relais.schemas.jsonschema import example, json_schema
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


_TypeArgument = Annotated[str, typer.Argument(help="Event type, e.g. runaway_alert.")]


def _known(event_type: str) -> EventType:
    try:
        return default_registry().by_type(event_type).event_type
    except SchemaError as exc:
        fail(exc.reason.value, f"unknown event type {event_type!r}", EXIT_USAGE)


@app.command("show")
def show(event_type: _TypeArgument) -> None:
    """Print the JSON Schema of the JSON form of an event type (with its example)."""
    document = json_schema(_known(event_type))
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False))


@app.command("sample")
def sample(
    event_type: _TypeArgument,
    seed: Annotated[int, typer.Option("--seed", help="Another fictional example.")] = 0,
) -> None:
    """Print a valid, fictional example of an event type, ready to submit."""
    typer.echo(json.dumps(example(_known(event_type), seed), indent=2, ensure_ascii=False))
