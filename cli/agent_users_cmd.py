"""``relais agent users``: the people who use an agent's web interface.

Run on the agent's host, with the agent's settings file (the accounts are in
``<data_dir>/web.sqlite3``; the running agent sees changes at once)::

    relais agent users add --config agent.toml m.durand --role case_officer
    relais agent users list --config agent.toml [--json]
    relais agent users disable --config agent.toml m.durand [--enable]
    relais agent users reset --config agent.toml m.durand

``add`` and ``reset`` print the initial password (random, unless ``--password-file``) and the
TOTP secret with its ``otpauth://`` URI, to hand to the person once; nothing keeps them in
clear. A TOTP second factor is required for every role of a partner entitled to identity or
medical sections, and for administrators everywhere: ``--no-totp`` is refused there. Roles:
``reader`` (reads), ``case_officer`` (also takes in charge, declines, composes, sends),
``admin`` (also the people, the access log and the agent's health).

Exit codes: 0 success; 1 the operation was refused (unknown or existing username, weak
password); 2 usage or invalid settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from relais.agents.keys import read_secret_file
from relais.agents.settings import AgentSettings, load_settings
from relais.agents.web.auth import new_password, totp_uri
from relais.agents.web.context import now_ms
from relais.agents.web.mailbox import Mailbox
from relais.agents.web.users import Role, WebStore
from relais.cli._common import EXIT_USAGE, fail, reported_errors

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="People of the agent's web interface.")

ConfigOption = Annotated[
    Path, typer.Option("--config", help="The agent's settings (TOML or JSON).", dir_okay=False)
]
UsernameArg = Annotated[str, typer.Argument(help="Login id: a-z, 0-9, '.', '_', '-'.")]
PasswordFileOption = Annotated[
    Path | None,
    typer.Option("--password-file", help="Initial password, first line (0600); else random."),
]
NoTotpOption = Annotated[
    bool, typer.Option("--no-totp", help="No second factor (only where none is required).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]


def _settings(config: Path) -> AgentSettings:
    if not config.is_file():
        fail("CONFIG_INVALID", f"no settings file {config}", EXIT_USAGE)
    return load_settings(config)


def _totp(settings: AgentSettings, role: Role, no_totp: bool) -> bool:
    required = role is Role.ADMIN or Mailbox(settings).needs_second_factor()
    if no_totp and required:
        fail(
            "CONFIG_INVALID",
            "a second factor is required for this role at this partner (identity or medical"
            " sections, or administration)",
            EXIT_USAGE,
        )
    return not no_totp


def _password(password_file: Path | None) -> tuple[str, bool]:
    if password_file is None:
        return new_password(), True
    return read_secret_file(password_file, "password").decode("utf-8"), False


def _show(
    settings: AgentSettings,
    username: str,
    role: Role,
    password: str,
    generated: bool,
    secret: str | None,
    as_json: bool,
) -> None:
    doc = {
        "username": username,
        "role": role.value,
        "password": password if generated else None,
        "totp_secret": secret,
        "totp_uri": None if secret is None else totp_uri(secret, username, settings.partner_id),
    }
    if as_json:
        typer.echo(json.dumps(doc, sort_keys=True))
        return
    typer.echo(f"{username}: {role.value}")
    if generated:
        typer.echo(f"initial password: {password}")
    if secret is not None:
        typer.echo(f"TOTP secret: {secret}")
        typer.echo(f"TOTP URI: {doc['totp_uri']}")


@app.command("add")
def add(
    config: ConfigOption,
    username: UsernameArg,
    role: Annotated[Role, typer.Option("--role", help="reader, case_officer or admin.")],
    password_file: PasswordFileOption = None,
    no_totp: NoTotpOption = False,
    as_json: JsonOption = False,
) -> None:
    """Create an account; print its initial password and TOTP secret once."""
    with reported_errors():
        settings = _settings(config)
        totp = _totp(settings, role, no_totp)
        password, generated = _password(password_file)
        store = WebStore(settings.web_database)
        try:
            secret = store.add(username, role, password, totp=totp, now_ms=now_ms())
        finally:
            store.close()
        _show(settings, username, role, password, generated, secret, as_json)


@app.command("reset")
def reset(
    config: ConfigOption,
    username: UsernameArg,
    password_file: PasswordFileOption = None,
    no_totp: NoTotpOption = False,
    as_json: JsonOption = False,
) -> None:
    """New password and TOTP secret, failures cleared, account unlocked."""
    with reported_errors():
        settings = _settings(config)
        store = WebStore(settings.web_database)
        try:
            person = store.get(username)
            if person is None:
                fail("INVALID_PAYLOAD", f"no account {username}", 1)
            totp = _totp(settings, person.role, no_totp)
            password, generated = _password(password_file)
            secret = store.reset(username, password, totp=totp, now_ms=now_ms())
        finally:
            store.close()
        _show(settings, username, person.role, password, generated, secret, as_json)


@app.command("disable")
def disable(
    config: ConfigOption,
    username: UsernameArg,
    enable: Annotated[bool, typer.Option("--enable", help="Enable the account again.")] = False,
) -> None:
    """Disable an account (its sessions end at their next request), or enable it again."""
    with reported_errors():
        settings = _settings(config)
        store = WebStore(settings.web_database)
        try:
            store.set_disabled(username, not enable, now_ms=now_ms())
        finally:
            store.close()
        typer.echo(f"{username}: {'enabled' if enable else 'disabled'}")


@app.command("list")
def list_people(config: ConfigOption, as_json: JsonOption = False) -> None:
    """The accounts: username, role, second factor, state."""
    with reported_errors():
        settings = _settings(config)
        store = WebStore(settings.web_database)
        try:
            people = store.people()
        finally:
            store.close()
    rows = [
        {
            "username": p.username,
            "role": p.role.value,
            "totp": p.totp,
            "state": "disabled" if p.disabled else "locked" if p.locked else "active",
            "failures": p.failures,
        }
        for p in people
    ]
    if as_json:
        typer.echo(json.dumps(rows, sort_keys=True))
        return
    for row in rows:
        totp = "totp" if row["totp"] else "no totp"
        typer.echo(f"{row['username']}\t{row['role']}\t{totp}\t{row['state']}")
