"""``relais gateway``: run the gateway service (router, tracker, audit checkpoints).

``run --config FILE [--role router|tracker|all]`` runs until SIGTERM or SIGINT; SIGHUP
reloads the signed directory file and the rules. Run one tracker and as many routers as
needed. Settings: see :mod:`relais.gateway.settings`.

Exit codes: 0 stopped cleanly; 1 a check failed (directory signature, rollback, key
file); 2 usage or invalid settings; 3 the broker could not be reached, does not fsync every
write, or refused an operation. Errors are one line on stderr: ``error [REASON]: message``.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from relais.agents.logs import configure_logging
from relais.cli._common import EXIT_USAGE, fail, reported_errors
from relais.gateway.service import ROLES, run_gateway
from relais.gateway.settings import load_settings

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="The gateway service: router, tracker, audit log.")


class Role(StrEnum):
    """Which part of the gateway this process runs."""

    ROUTER = "router"
    TRACKER = "tracker"
    ALL = "all"


@app.callback()
def _gateway() -> None:
    """The gateway service: router, tracker, audit log."""


@app.command("run")
def run(
    config: Annotated[
        Path, typer.Option("--config", help="Gateway settings (TOML).", dir_okay=False)
    ],
    role: Annotated[Role, typer.Option("--role", help="Which roles to run.")] = Role.ALL,
) -> None:
    """Run the gateway until SIGTERM/SIGINT (SIGHUP reloads the directory and rules)."""
    if not config.is_file():
        fail("CONFIG_INVALID", f"no settings file {config}", EXIT_USAGE)
    roles = ROLES if role is Role.ALL else frozenset({role.value})
    configure_logging()
    with reported_errors():
        asyncio.run(run_gateway(load_settings(config), roles))
