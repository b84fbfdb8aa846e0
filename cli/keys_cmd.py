"""``relais keys``: partner key pairs and their encrypted key files.

Exit codes: 0 success; 1 a check failed (wrong passphrase, badly protected or damaged key
file, invalid directory or signature); 2 usage (bad option, missing or existing file,
unusable passphrase). Errors are one line on stderr, ``error [REASON]: message``; no
command ever prints a secret.

Passphrases come from ``--passphrase-file`` (first line; refused when accessible to group
or others), from the environment variable named by ``--passphrase-env``, or from a hidden
prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from relais.agents.keys import (
    PartnerKeys,
    nats_user_public,
    nats_user_seed,
    write_atomic,
    write_key_file,
    write_public_key,
)
from relais.cli._common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    fail,
    read_passphrase,
    reported_errors,
)
from relais.schemas.domain import PARTNER_ID_RE
from relais.schemas.errors import ConfigError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "MIN_NEW_PASSPHRASE_CHARS",
    "PassphraseEnvOption",
    "PassphraseFileOption",
    "app",
    "fail",
    "public_key_path",
    "read_passphrase",
    "reported_errors",
]

MIN_NEW_PASSPHRASE_CHARS = 12

app = typer.Typer(no_args_is_help=True, help="Partner key pairs and encrypted key files.")

PassphraseFileOption = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help="File whose first line is the passphrase (mode 0600).",
        dir_okay=False,
    ),
]
PassphraseEnvOption = Annotated[
    str | None,
    typer.Option("--passphrase-env", help="Name of an environment variable holding it."),
]


def public_key_path(key_file: Path) -> Path:
    """Where ``keys new`` writes the public export: ``FILE.pub.json``."""
    return key_file.with_name(key_file.name + ".pub.json")


@app.callback()
def _keys() -> None:
    """Partner key pairs and encrypted key files."""


@app.command("new")
def new(
    partner_id: Annotated[str, typer.Argument(help="Partner id (or 'root' for the root key).")],
    out: Annotated[
        Path, typer.Option("--out", help="Key file to create (never overwritten).", dir_okay=False)
    ],
    passphrase_file: PassphraseFileOption = None,
    passphrase_env: PassphraseEnvOption = None,
) -> None:
    """Generate a key pair, write the encrypted key file (0600) and FILE.pub.json."""
    pub = public_key_path(out)
    with reported_errors():
        for path in (out, pub):
            if path.exists() or path.is_symlink():
                raise ConfigError(f"refusing to overwrite {path}")
        keys = PartnerKeys.generate(partner_id)  # checks the partner id first
        passphrase = read_passphrase(passphrase_file, passphrase_env, confirm=True)
        if len(passphrase.decode("utf-8", "replace")) < MIN_NEW_PASSPHRASE_CHARS:
            raise ConfigError(f"passphrase shorter than {MIN_NEW_PASSPHRASE_CHARS} characters")
        write_key_file(out, keys, passphrase)
        write_public_key(pub, keys)
    typer.echo(f"partner: {keys.partner_id}")
    typer.echo(f"key id: {keys.key_id}")
    typer.echo(f"key file: {out}")
    typer.echo(f"public key: {pub}")


@app.command("nats-user")
def nats_user(
    partner_id: Annotated[str, typer.Argument(help="Partner id the credential is for.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Seed file to create (0600, never overwritten).", dir_okay=False
        ),
    ],
) -> None:
    """Generate the partner's NATS user nkey: the seed stays here, the public nkey is enrolled."""
    with reported_errors():
        if not PARTNER_ID_RE.fullmatch(partner_id):
            raise ConfigError(f"invalid partner id {partner_id!r}")
        seed = nats_user_seed()
        write_atomic(out, seed + b"\n")
        public = nats_user_public(seed)
    typer.echo(f"partner: {partner_id}")
    typer.echo(f"seed file: {out}")
    typer.echo(f"public nkey: {public}")
    typer.echo(f"enrol with: relais directory add ... --nats-nkey {public}")
