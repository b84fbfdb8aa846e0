"""``relais context``: saved broker connections (natscli's ``nats context``).

A context names a broker (``-s`` URL), the credentials to use there (``--creds`` a NATS
``.creds`` file, or ``--nkey`` a seed file) and the pinned root public key; the selected
context gives every command its defaults. Precedence: an option typed on the command line,
then the environment (``NATS_URL``, ``NATS_CREDS``...), then the context chosen with
``relais --context NAME`` (or ``RELAIS_CONTEXT``), else the selected one.

The contexts are one JSON file, ``$XDG_CONFIG_HOME/relais/contexts.json`` (default
``~/.config/relais/``), mode 0600 in a 0700 directory; it holds paths and public values only
(never a seed: credential files stay where they are). Paths are saved absolute.

Exit codes: 0 success; 2 usage (bad name, unknown context, unusable file).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final

import typer

from relais.agents.keys import write_atomic
from relais.broker_config.connection import is_creds_file
from relais.broker_config.nats_conf import read_seed_public_key
from relais.cli._common import JsonOption, reported_errors
from relais.schemas.errors import ConfigError

__all__ = ["CONTEXT_FIELDS", "app", "context_defaults", "contexts_file", "load_context"]

app = typer.Typer(no_args_is_help=True, help="Saved broker connections, natscli-style.")

# The options a context fills, by parameter name (the same in every command).
CONTEXT_FIELDS: Final = ("server", "creds", "nkey", "root_public_key")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_FILE_BYTES: Final = 1 << 20
_SKIPPED_GROUPS: Final = frozenset({"context"})  # saving a context never takes another's values


def contexts_file() -> Path:
    """Where the contexts are kept: ``$XDG_CONFIG_HOME/relais/contexts.json``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "relais" / "contexts.json"


def _read() -> dict[str, Any]:
    path = contexts_file()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {"selected": None, "contexts": {}}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = json.loads(data[:_MAX_FILE_BYTES])
        contexts = document["contexts"]
        if not isinstance(contexts, dict) or not all(
            isinstance(v, dict) for v in contexts.values()
        ):
            raise TypeError("contexts")
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a relais contexts file: fix or remove it") from exc
    return {"selected": document.get("selected"), "contexts": contexts}


def _write(document: Mapping[str, Any]) -> None:
    path = contexts_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_atomic(path, text.encode("utf-8"), mode=0o600, overwrite=True)


def _check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"invalid context name {name!r} (letters, digits, '.', '_', '-')")
    return name


def load_context(name: str | None) -> tuple[str, dict[str, str]] | None:
    """The context ``name`` (or the selected one when ``None``): ``(name, values)``.

    ``None`` when no name is given and none is selected; :class:`ConfigError` for an unknown
    name or an unreadable file.
    """
    document = _read()
    chosen = name if name is not None else document["selected"]
    if chosen is None:
        return None
    values = document["contexts"].get(chosen)
    if values is None:
        raise ConfigError(f"no context {chosen!r}: see relais context ls")
    return chosen, {k: str(v) for k, v in values.items() if k in CONTEXT_FIELDS and v}


def context_defaults(command: Any, ctx: typer.Context, values: Mapping[str, str]) -> Any:
    """Click's ``default_map`` giving ``values`` to every command below ``command`` that has
    such parameters: a dict of parameter names, and of subcommand names for groups."""
    defaults: dict[str, Any] = {p.name: values[p.name] for p in command.params if p.name in values}
    # typer vendors click: a group is whatever lists and gets commands
    lister, getter = getattr(command, "list_commands", None), getattr(command, "get_command", None)
    if lister is None or getter is None:
        return defaults
    for name in lister(ctx):
        sub = None if name in _SKIPPED_GROUPS else getter(ctx, name)
        nested = context_defaults(sub, ctx, values) if sub is not None else None
        if nested:
            defaults[name] = nested
    return defaults


# -- commands ----------------------------------------------------------------------------------


def _absolute(path: Path | None) -> str | None:
    return None if path is None else str(path.expanduser().resolve())


def _root_key_value(value: str | None) -> str | None:
    """A root key given as a file is saved as its absolute path; base64 as it is."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path.resolve()) if path.is_file() else value


def _row(name: str, values: Mapping[str, Any], selected: str | None) -> dict[str, Any]:
    return {
        "name": name,
        "selected": name == selected,
        **{field: values.get(field) for field in CONTEXT_FIELDS},
    }


@app.callback()
def _context() -> None:
    """Saved broker connections, natscli-style."""


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Name of the context.", metavar="NAME")],
    server: Annotated[
        str | None, typer.Option("--server", "-s", help="NATS URL of the broker.")
    ] = None,
    creds: Annotated[
        Path | None,
        typer.Option("--creds", help="A NATS .creds file (0600).", dir_okay=False),
    ] = None,
    nkey: Annotated[
        Path | None,
        typer.Option("--nkey", help="A bare user nkey seed file (0600).", dir_okay=False),
    ] = None,
    root_public_key: Annotated[
        str | None,
        typer.Option("--root-public-key", help="Pinned root public key: base64, or a file."),
    ] = None,
    select: Annotated[
        bool, typer.Option("--select", help="Select it as well.", metavar="")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Save a context (replacing one of that name); the files are checked, not copied."""
    with reported_errors():
        _check_name(name)
        if creds is not None and nkey is not None:
            raise ConfigError("give --creds FILE or --nkey FILE, not both")
        if creds is not None and not is_creds_file(creds):
            raise ConfigError(f"{creds} is not a NATS .creds file: a bare seed goes with --nkey")
        if nkey is not None:
            if is_creds_file(nkey):
                raise ConfigError(f"{nkey} is a .creds file: give it with --creds")
            read_seed_public_key(nkey)
        values = {
            "server": server,
            "creds": _absolute(creds),
            "nkey": _absolute(nkey),
            "root_public_key": _root_key_value(root_public_key),
        }
        document = _read()
        document["contexts"][name] = {k: v for k, v in values.items() if v is not None}
        if select or document["selected"] is None:
            document["selected"] = name
        _write(document)
    row = _row(name, document["contexts"][name], document["selected"])
    if as_json:
        typer.echo(json.dumps(row))
        return
    typer.echo(f"context {name} saved{' and selected' if row['selected'] else ''}")


@app.command("select")
def select_cmd(
    name: Annotated[str, typer.Argument(help="Name of the context.", metavar="NAME")],
    as_json: JsonOption = False,
) -> None:
    """Select the context every command uses by default."""
    with reported_errors():
        document = _read()
        if name not in document["contexts"]:
            raise ConfigError(f"no context {name!r}: see relais context ls")
        document["selected"] = name
        _write(document)
    if as_json:
        typer.echo(json.dumps({"selected": name}))
        return
    typer.echo(f"context {name} selected")


@app.command("ls")
def ls(as_json: JsonOption = False) -> None:
    """List the saved contexts (the selected one marked *)."""
    with reported_errors():
        document = _read()
    rows = [_row(n, v, document["selected"]) for n, v in sorted(document["contexts"].items())]
    if as_json:
        typer.echo(json.dumps({"file": str(contexts_file()), "contexts": rows}))
        return
    if not rows:
        typer.echo("no context saved: relais context add NAME -s URL --creds FILE")
    for row in rows:
        typer.echo(f"{'*' if row['selected'] else ' '} {row['name']}")
        for field in CONTEXT_FIELDS:
            if row[field]:
                typer.echo(f"    {field}: {row[field]}")


@app.command("rm")
def rm(
    name: Annotated[str, typer.Argument(help="Name of the context.", metavar="NAME")],
    as_json: JsonOption = False,
) -> None:
    """Remove a context (if it was selected, none is any more)."""
    with reported_errors():
        document = _read()
        if document["contexts"].pop(name, None) is None:
            raise ConfigError(f"no context {name!r}: see relais context ls")
        if document["selected"] == name:
            document["selected"] = None
        _write(document)
    if as_json:
        typer.echo(json.dumps({"removed": name, "selected": document["selected"]}))
        return
    typer.echo(f"context {name} removed")
