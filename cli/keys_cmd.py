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

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from relais.agents.keys import PartnerKeys, write_key_file, write_public_key
from relais.schemas.errors import ConfigError, RelaisError

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

EXIT_FAILURE = 1
EXIT_USAGE = 2
MIN_NEW_PASSPHRASE_CHARS = 12
_MAX_PASSPHRASE_BYTES = 4096

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


def fail(reason: str, message: str, code: int) -> NoReturn:
    """Print one error line on stderr and exit with ``code``."""
    typer.echo(f"error [{reason}]: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn relais errors into one stderr line: ConfigError exits 2, any other exits 1."""
    try:
        yield
    except ConfigError as exc:
        fail(exc.reason.value, str(exc), EXIT_USAGE)
    except RelaisError as exc:
        fail(exc.reason.value, str(exc), EXIT_FAILURE)


def _from_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"passphrase file {path} is not a regular file")
        if mode & 0o077:
            raise ConfigError(
                f"passphrase file {path} is accessible to others (mode {stat.S_IMODE(mode):04o})"
            )
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(_MAX_PASSPHRASE_BYTES + 1)
    finally:
        os.close(fd)
    return data.split(b"\n", 1)[0].removesuffix(b"\r")


def read_passphrase(
    passphrase_file: Path | None, passphrase_env: str | None, *, confirm: bool
) -> bytes:
    """The passphrase from a file, an environment variable or a hidden prompt."""
    if passphrase_file is not None and passphrase_env is not None:
        raise ConfigError("give --passphrase-file or --passphrase-env, not both")
    if passphrase_file is not None:
        passphrase = _from_file(passphrase_file)
    elif passphrase_env is not None:
        value = os.environ.get(passphrase_env)
        if value is None:
            raise ConfigError(f"environment variable {passphrase_env} is not set")
        passphrase = value.encode("utf-8")
    else:
        text = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm)
        passphrase = str(text).encode("utf-8")
    if not passphrase or len(passphrase) > _MAX_PASSPHRASE_BYTES:
        raise ConfigError("empty or oversized passphrase")
    return passphrase


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
