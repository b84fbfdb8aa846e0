"""``relais agent``: run a partner's agent, and its API's OpenAPI document.

``run --config FILE`` runs the agent (outbox, inbox, receipts, webhooks, local HTTP API)
until SIGTERM or SIGINT. Settings: :mod:`relais.agents.settings` (TOML, or JSON for a
``.json`` file; ``RELAIS_AGENT_*`` variables override it). Without ``passphrase_file`` the
key files' passphrase is asked on the terminal.

``users add|disable|reset|list`` manages the people of the agent's web interface
(:mod:`relais.cli.agent_users_cmd`).

``openapi`` prints the OpenAPI document of the local API; ``openapi --check FILE`` exits 1
when FILE (the committed ``docs/openapi.json``) differs from it.

Exit codes: 0 success; 1 a check failed (directory signature, key file, OpenAPI document
out of date); 2 usage or invalid settings; 3 the broker refused an operation. Errors are one
line on stderr: ``error [REASON]: message``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from relais.agents.api import openapi_document
from relais.agents.keys import read_secret_file
from relais.agents.logs import configure_logging
from relais.agents.service import serve
from relais.agents.settings import load_settings
from relais.cli._common import EXIT_FAILURE, EXIT_USAGE, fail, read_passphrase, reported_errors
from relais.cli.agent_users_cmd import app as users_app

__all__ = ["app", "render_openapi"]

app = typer.Typer(no_args_is_help=True, help="A partner's agent: outbox, inbox, local API.")
# ``relais agent users``: the people of the web interface (cli/agent_users_cmd.py).
app.add_typer(users_app, name="users")


@app.callback()
def _agent() -> None:
    """A partner's agent: outbox, inbox, local API."""


@app.command("run")
def run(
    config: Annotated[
        Path, typer.Option("--config", help="Agent settings (TOML or JSON).", dir_okay=False)
    ],
) -> None:
    """Run the agent until SIGTERM/SIGINT."""
    if not config.is_file():
        fail("CONFIG_INVALID", f"no settings file {config}", EXIT_USAGE)
    configure_logging()
    with reported_errors():
        settings = load_settings(config)
        if settings.passphrase_file is not None:
            passphrase = read_secret_file(settings.passphrase_file, "passphrase")
        else:
            passphrase = read_passphrase(None, None, confirm=False)
        asyncio.run(serve(settings, passphrase=passphrase))


def render_openapi() -> str:
    """The OpenAPI document as committed: indented JSON and a final newline."""
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"


@app.command("openapi")
def openapi(
    check: Annotated[
        Path | None,
        typer.Option(
            "--check", help="Exit 1 if this file differs from the document.", dir_okay=False
        ),
    ] = None,
) -> None:
    """Print the OpenAPI document of the local API, or check a committed copy."""
    text = render_openapi()
    if check is None:
        typer.echo(text, nl=False)
        return
    try:
        committed: Any = json.loads(check.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        fail("CONFIG_INVALID", f"cannot read {check} as JSON", EXIT_FAILURE)
    if committed != json.loads(text):
        fail(
            "OPENAPI_OUT_OF_DATE",
            f"{check} differs from the API; regenerate it: relais agent openapi > {check}",
            EXIT_FAILURE,
        )
    typer.echo(f"{check} is up to date")


if __name__ == "__main__":  # python -m relais.cli.agent_cmd run --config FILE
    app(prog_name="relais agent")
