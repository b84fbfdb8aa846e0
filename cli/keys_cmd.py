"""``relais keys``: partner key pairs and their encrypted key files.

Exit codes: 0 success; 1 a check failed (wrong passphrase, badly protected or damaged key
file, invalid directory or signature); 2 usage (bad option, missing or existing file,
unusable passphrase). Errors are one line on stderr, ``error [REASON]: message``; no
command ever prints a secret.

``new root`` also writes the root's public signing key as base64 text beside the key file
(``root.key`` -> ``root.pub``): the value to pin (``--root-public-key root.pub``,
``root_public_key = "root.pub"``); the ``.pub.json`` export is accepted there too.

Passphrases come from ``--passphrase-file`` (first line; refused when accessible to group
or others), from the environment variable named by ``--passphrase-env``, or from a hidden
prompt.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated, Any

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
    JsonOption,
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
    "root_public_path",
]

ROOT_ID = "root"

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


def root_public_path(key_file: Path) -> Path:
    """Where ``keys new root`` writes the key to pin: ``NAME.pub`` for ``NAME.key``."""
    if key_file.suffix == ".key":
        return key_file.with_suffix(".pub")
    return key_file.with_name(key_file.name + ".pub")


def _print(document: dict[str, Any], as_json: bool) -> None:
    """``--json``: the document; else one ``name: value`` line per entry."""
    if as_json:
        typer.echo(json.dumps(document))
        return
    for name, value in document.items():
        typer.echo(f"{name.replace('_', ' ')}: {value}")


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
    as_json: JsonOption = False,
) -> None:
    """Generate a key pair, write the encrypted key file (0600) and FILE.pub.json
    (for the root key, also NAME.pub: its public key in base64, the value to pin)."""
    pub = public_key_path(out)
    root_pub = root_public_path(out) if partner_id == ROOT_ID else None
    with reported_errors():
        for path in (out, pub, *([root_pub] if root_pub else [])):
            if path.exists() or path.is_symlink():
                raise ConfigError(f"refusing to overwrite {path}")
        keys = PartnerKeys.generate(partner_id)  # checks the partner id first
        passphrase = read_passphrase(passphrase_file, passphrase_env, confirm=True)
        if len(passphrase.decode("utf-8", "replace")) < MIN_NEW_PASSPHRASE_CHARS:
            raise ConfigError(f"passphrase shorter than {MIN_NEW_PASSPHRASE_CHARS} characters")
        write_key_file(out, keys, passphrase)
        write_public_key(pub, keys)
        if root_pub is not None:
            pinned = base64.b64encode(keys.sign_pk).decode("ascii") + "\n"
            write_atomic(root_pub, pinned.encode("ascii"), mode=0o644)
    document: dict[str, Any] = {
        "partner": keys.partner_id,
        "key_id": keys.key_id,
        "key_file": str(out),
        "public_key": str(pub),
    }
    if root_pub is not None:
        document["root_public_key"] = str(root_pub)
    _print(document, as_json)


@app.command("nats-user")
def nats_user(
    partner_id: Annotated[str, typer.Argument(help="Partner id the credential is for.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Seed file to create (0600, never overwritten).", dir_okay=False
        ),
    ],
    as_json: JsonOption = False,
) -> None:
    """Generate the partner's NATS user nkey: the seed stays here, the public nkey is enrolled.

    ``--out NAME.creds`` writes a NATS ``.creds`` file (its seed block; for ``--creds``),
    any other name a bare seed file (for ``--nkey`` and the agent's ``creds``)."""
    with reported_errors():
        if not PARTNER_ID_RE.fullmatch(partner_id):
            raise ConfigError(f"invalid partner id {partner_id!r}")
        seed = nats_user_seed()
        write_atomic(out, _creds_text(seed) if out.suffix == ".creds" else seed + b"\n")
        public = nats_user_public(seed)
    _print(
        {
            "partner": partner_id,
            "seed_file": str(out),
            "public_nkey": public,
            "enrol_with": f"relais directory add {partner_id} ... --nats-nkey {public}",
        },
        as_json,
    )


def _creds_text(seed: bytes) -> bytes:
    """natscli's ``.creds`` layout with the seed block only: relais's broker authenticates
    users by nkey, so there is no user JWT to carry."""
    return (
        b"-----BEGIN USER NKEY SEED-----\n"
        + seed
        + b"\n------END USER NKEY SEED------\n\n"
        + b"*************************************************************\n"
        + b"NKEY Seed printed above can be used to sign and prove identity.\n"
        + b"NKEYs are sensitive and should be treated as secrets.\n"
        + b"*************************************************************\n"
    )
