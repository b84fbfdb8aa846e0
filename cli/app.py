"""The ``relais`` command: operators' and partner administrators' entry point.

Exit codes (documented in ``docs/operations.md``):

* 0 — success;
* 1 — a check failed (verification, validation, schema check, audit verification);
* 2 — usage error (bad option or argument);
* 3 — the broker or a service could not be reached or refused the operation.

Global options, before the command: ``--version``; ``-v`` (info) and ``-vv`` (debug) logs on
stderr, warnings and errors only without; ``--context NAME`` (``RELAIS_CONTEXT``), the
saved connection whose values are every command's defaults (``relais context``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from relais.agents.logs import set_verbosity
from relais.cli import (
    agent_cmd,
    audit_cmd,
    backup_cmd,
    broker_cmd,
    context_cmd,
    directory_cmd,
    gateway_cmd,
    keys_cmd,
    ops_cmd,
    rules_cmd,
    schemas_cmd,
)
from relais.cli import demo as demo_cmd
from relais.cli._common import reported_errors

__all__ = ["app", "main"]


# -- help as operators read it -------------------------------------------------------------------


class _PlainArgument(TyperArgument):
    """An argument shown in the usage line as ``PARTNER_ID`` (``[NAME]`` when optional)."""

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        """The usage piece, without typer's braces."""
        name = self.display_name_raw
        name = name if self.required else f"[{name}]"
        return [name + ("..." if self.nargs != 1 else "")]


def _polish(command: Any, ctx: Any) -> None:
    """Arguments in capitals without braces, flags without a ``<bool>`` type, everywhere."""
    for param in command.get_params(ctx):
        if isinstance(param, TyperArgument):
            if param.metavar is None:
                param.metavar = (param.name or "").upper()
            param.__class__ = _PlainArgument  # the same object: only its usage piece changes
        elif isinstance(param, TyperOption) and (param.is_flag or param.count):
            param.metavar = ""  # a flag takes no value: show none
    lister, getter = getattr(command, "list_commands", None), getattr(command, "get_command", None)
    if lister is not None and getter is not None:
        for name in lister(ctx):
            sub = getter(ctx, name)
            if sub is not None:
                _polish(sub, ctx)


class _RelaisGroup(TyperGroup):
    """The root group: every command it resolves is polished (:func:`_polish`) first."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The root's own options, polished."""
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperOption) and (param.is_flag or param.count):
                param.metavar = ""
        return params

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """A subcommand, polished."""
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _polish(command, ctx)
        return command


app = typer.Typer(
    cls=_RelaisGroup,
    name="relais",
    help=(
        "relais: secure referral exchange for the territorial partnerships"
        " (operators never see content)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(keys_cmd.app, name="keys", help="Partner key pairs and encrypted key files.")
app.add_typer(context_cmd.app, name="context", help="Saved broker connections (natscli-style).")
app.add_typer(directory_cmd.app, name="directory", help="The signed partner directory.")
app.add_typer(schemas_cmd.app, name="schemas", help="The shared Avro schemas.")
app.add_typer(broker_cmd.app, name="broker", help="The NATS broker: embedded server, status.")
app.add_typer(rules_cmd.app, name="rules", help="The routing rules of the partnership.")
app.add_typer(gateway_cmd.app, name="gateway", help="The gateway: router, tracker, audit log.")
app.add_typer(audit_cmd.app, name="audit", help="The tamper-evident audit log.")
app.add_typer(agent_cmd.app, name="agent", help="A partner's agent: outbox, inbox, local API.")
app.command("demo")(demo_cmd.demo)
ops_cmd.register(app)  # flows, trace, pending, overdue, partners, quarantine, stats
backup_cmd.register(agent_cmd.app, gateway_cmd.app)  # agent/gateway backup, restore


def _version() -> str:
    try:
        return version("relais")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"relais {_version()}")
        raise typer.Exit


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose", "-v", count=True, show_default=False, help="-v info, -vv debug logs."
        ),
    ] = 0,
    context: Annotated[
        str | None,
        typer.Option(
            "--context",
            envvar="RELAIS_CONTEXT",
            show_envvar=True,
            help="Saved connection to use (default: the selected one).",
        ),
    ] = None,
    _version_flag: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """relais: secure referral exchange for the territorial partnerships (operators never see
    content)."""
    set_verbosity(verbose)
    if ctx.invoked_subcommand == "context":
        return  # saving or choosing a context never takes another's values
    with reported_errors():
        chosen = context_cmd.load_context(context)
    if chosen is not None:
        ctx.default_map = context_cmd.context_defaults(ctx.command, ctx, chosen[1])


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # python -m relais.cli.app
    main()
