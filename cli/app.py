"""The ``relais`` command: operators' and partner administrators' entry point.

Exit codes (documented in ``docs/operations.md``):

* 0 — success;
* 1 — a check failed (verification, validation, schema check, audit verification);
* 2 — usage error (bad option or argument);
* 3 — the broker or a service could not be reached or refused the operation.
"""

from __future__ import annotations

import typer

from relais.cli import (
    agent_cmd,
    audit_cmd,
    backup_cmd,
    broker_cmd,
    directory_cmd,
    gateway_cmd,
    keys_cmd,
    ops_cmd,
    rules_cmd,
    schemas_cmd,
)
from relais.cli import demo as demo_cmd

__all__ = ["app", "main"]

app = typer.Typer(
    name="relais",
    help=(
        "relais: secure referral exchange for the territorial partnerships"
        " (operators never see content)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(keys_cmd.app, name="keys", help="Partner key pairs and encrypted key files.")
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


def main() -> None:
    """Console-script entry point."""
    app()
