"""Helpers shared by the ``relais`` commands: exit codes, error reporting, secrets and keys.

Exit codes (also in ``docs/operations.md``): 0 success, 1 a check failed, 2 usage error,
3 the broker or a service could not be reached.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import structlog
import typer

from relais.agents.keys import read_public_key
from relais.schemas.errors import ConfigError, RelaisError, TransportError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "fail",
    "logs_to_stderr",
    "parse_root_public_key",
    "read_passphrase",
    "reported_errors",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
_MAX_PASSPHRASE_BYTES = 4096
_MAX_KEY_FILE_BYTES = 16 * 1024


def fail(reason: str, message: str, code: int) -> NoReturn:
    """Print one error line on stderr and exit with ``code``."""
    typer.echo(f"error [{reason}]: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def reported_errors() -> Iterator[None]:
    """One stderr line per relais error: usage 2, unreachable broker 3, other failures 1."""
    try:
        yield
    except ConfigError as exc:
        fail(exc.reason.value, str(exc), EXIT_USAGE)
    except TransportError as exc:
        fail(exc.reason.value, str(exc), EXIT_UNREACHABLE)
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


def parse_root_public_key(value: str) -> bytes:
    """A pinned root Ed25519 public key: base64 text, or a file (``.pub.json`` or base64)."""
    text = value
    path = Path(value)
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        if len(data) > _MAX_KEY_FILE_BYTES:
            raise ConfigError(f"{path} is too large for a public key")
        if data.lstrip().startswith(b"{"):
            return read_public_key(path).sign_pk
        text = data.decode("ascii", "replace").strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise ConfigError("the root public key must be 32 bytes in base64")
    return raw


def logs_to_stderr() -> None:
    """Send structlog's default print logger to stderr: stdout carries command output."""
    if isinstance(structlog.get_config()["logger_factory"], structlog.PrintLoggerFactory):
        structlog.configure(logger_factory=_stderr_logger)


def _stderr_logger(*args: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)  # sys.stderr as of now: it may be redirected
