"""Helpers shared by the ``relais`` commands: exit codes, error reporting, secrets and keys,
and the options of every command that talks to the broker.

Exit codes (also in ``docs/operations.md`` §9): 0 success, 1 a check failed, 2 usage error,
3 the broker or a service could not be reached or refused. Every failure is one line on
stderr, ``error [CODE]: what happened; what to do``, and no traceback.

Broker options, natscli's conventions: ``-s/--server URL`` (environment ``RELAIS_SERVER``,
else ``NATS_URL``); ``--creds FILE``, a NATS ``.creds`` file (``NATS_CREDS``, or the older
``RELAIS_CREDS``), or ``--nkey FILE``, a bare user nkey seed file such as the broker's
``creds/operator.nk`` (``NATS_NKEY``); or ``--data-dir DIR`` for an embedded broker started
with ``relais broker up`` (its URL and operator seed file are read from there; values of the
environment or of a saved context give way to it). A seed file given to ``--creds`` is still
accepted, with a deprecation warning: a bare seed and a ``.creds`` file cannot be mistaken
for one another. ``--root-public-key`` (``RELAIS_ROOT_PUBLIC_KEY``) pins the root key that
the signed directory must verify against; ``--json`` prints one JSON document on stdout.
Options not given on the command line nor in the environment come from the selected
context (``relais context``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import structlog
import typer

from relais.agents.keys import MAX_SECRET_FILE_BYTES, read_secret_file
from relais.broker_config.connection import Connection, connect, is_creds_file
from relais.broker_config.directory import Directory, verify_directory
from relais.broker_config.embedded import BrokerPaths, read_info, running_pid
from relais.broker_config.nats_conf import OPERATOR_INBOX, read_seed_public_key
from relais.gateway.jetstream import last_for_subject
from relais.schemas.errors import (
    ConfigError,
    DirectoryError,
    PermissionDenied,
    Reason,
    RelaisError,
    TransportError,
)
from relais.schemas.names import DIRECTORY_STREAM, DIRECTORY_SUBJECT

__all__ = [
    "EXIT_FAILURE",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "BrokerTarget",
    "CredsOption",
    "DataDirOption",
    "DirectoryFileOption",
    "JsonOption",
    "NkeyOption",
    "RootKeyOption",
    "ServerOption",
    "TimeoutOption",
    "broker_target",
    "connect_operator",
    "fail",
    "load_directory",
    "logs_to_stderr",
    "read_directory_file",
    "read_passphrase",
    "reported_errors",
    "warn",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
_MAX_PASSPHRASE_BYTES = MAX_SECRET_FILE_BYTES


def fail(reason: str, message: str, code: int) -> NoReturn:
    """Print one error line on stderr and exit with ``code``."""
    typer.echo(f"error [{reason}]: {message}", err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """Print one warning line on stderr (never on stdout, which carries the output)."""
    typer.echo(f"warning: {message}", err=True)


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


def read_passphrase(
    passphrase_file: Path | None, passphrase_env: str | None, *, confirm: bool
) -> bytes:
    """The passphrase from a file, an environment variable or a hidden prompt."""
    if passphrase_file is not None and passphrase_env is not None:
        raise ConfigError("give --passphrase-file or --passphrase-env, not both")
    if passphrase_file is not None:
        passphrase = read_secret_file(passphrase_file, "passphrase", min_bytes=0)
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


def logs_to_stderr() -> None:
    """Send structlog's default print logger to stderr: stdout carries command output.

    The ``relais`` command configures logging at start (warnings only unless ``-v``); this
    covers a command run on its own (its sub-application called directly).
    """
    if isinstance(structlog.get_config()["logger_factory"], structlog.PrintLoggerFactory):
        structlog.configure(logger_factory=_stderr_logger)


def _stderr_logger(*args: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)  # sys.stderr as of now: it may be redirected


# -- broker options ----------------------------------------------------------------------------

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        "-s",
        envvar=["RELAIS_SERVER", "NATS_URL"],
        show_envvar=True,
        help="NATS URL of the broker, e.g. nats://127.0.0.1:4222.",
    ),
]
CredsOption = Annotated[
    Path | None,
    typer.Option(
        "--creds",
        envvar=["NATS_CREDS", "RELAIS_CREDS"],
        show_envvar=True,
        dir_okay=False,
        help="A NATS .creds file (user nkey seed block, JWT optional), mode 0600.",
    ),
]
NkeyOption = Annotated[
    Path | None,
    typer.Option(
        "--nkey",
        envvar="NATS_NKEY",
        show_envvar=True,
        dir_okay=False,
        help="A bare user nkey seed file, e.g. the broker's creds/operator.nk (0600).",
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        file_okay=False,
        help="Data directory of an embedded broker (instead of -s and --creds/--nkey).",
    ),
]
RootKeyOption = Annotated[
    str | None,
    typer.Option(
        "--root-public-key",
        envvar="RELAIS_ROOT_PUBLIC_KEY",
        show_envvar=True,
        help="Pinned root Ed25519 public key: base64, or a file (root .pub.json or base64).",
    ),
]
DirectoryFileOption = Annotated[
    Path | None,
    typer.Option(
        "--directory",
        dir_okay=False,
        help="Signed directory file (default: the last edition on ref.dir).",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="One JSON document on stdout.", metavar="")
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", min=0.5, max=600.0, help="Seconds to wait for the broker."),
]


@dataclass(frozen=True, slots=True)
class BrokerTarget:
    """Where the broker is and whose credentials to use (see :func:`broker_target`).

    ``creds``: a bare nkey seed file or a ``.creds`` file (the connection tells them apart).
    """

    url: str
    creds: Path
    monitor_url: str | None = None


def _given(ctx: typer.Context | None, name: str) -> bool:
    """True when the option ``name`` was typed (not taken from the environment)."""
    if ctx is None:
        return True
    # typer vendors click: compare the source's name, not click's enum
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("ENVIRONMENT", "DEFAULT", "DEFAULT_MAP")


def _checked_creds(path: Path) -> Path:
    """A ``--creds`` file: a ``.creds`` file, or (deprecated) a bare seed file."""
    if is_creds_file(path):
        return path
    try:
        read_seed_public_key(path)
    except ConfigError as exc:
        raise ConfigError(
            f"{path} is not a NATS .creds file (no USER NKEY SEED block) nor an nkey seed"
        ) from exc
    warn(f"{path} is a bare nkey seed: give it with --nkey (--creds is for .creds files)")
    return path


def _checked_nkey(path: Path) -> Path:
    """A ``--nkey`` file: a bare user nkey seed file."""
    if is_creds_file(path):
        raise ConfigError(f"{path} is a .creds file: give it with --creds, not --nkey")
    read_seed_public_key(path)
    return path


def _credentials(ctx: typer.Context | None, creds: Path | None, nkey: Path | None) -> Path | None:
    """The credential file of ``--creds`` or ``--nkey``; a typed one wins over a default."""
    if creds is not None and nkey is not None:
        typed_creds, typed_nkey = _given(ctx, "creds"), _given(ctx, "nkey")
        if typed_creds == typed_nkey:
            raise ConfigError("give --creds FILE or --nkey FILE, not both")
        creds, nkey = (creds, None) if typed_creds else (None, nkey)
    if creds is not None:
        return _checked_creds(creds)
    return _checked_nkey(nkey) if nkey is not None else None


def broker_target(
    ctx: typer.Context | None,
    server: str | None,
    creds: Path | None,
    data_dir: Path | None,
    *,
    nkey: Path | None = None,
) -> BrokerTarget:
    """The broker of ``--data-dir``, or of ``-s`` and ``--creds``/``--nkey`` (options,
    environment or saved context).

    ``ctx`` tells options typed on the command line from other values, which give way to
    ``--data-dir``. :class:`ConfigError` for a missing or contradictory choice.
    """
    if data_dir is not None:
        typed = [
            flag
            for flag, name, value in (
                ("-s", "server", server),
                ("--creds", "creds", creds),
                ("--nkey", "nkey", nkey),
            )
            if value is not None and _given(ctx, name)
        ]
        if typed:
            raise ConfigError(f"give --data-dir or {' and '.join(typed)}, not both")
        if running_pid(data_dir) is None:
            raise TransportError(
                f"no broker is running on {data_dir}: start it with relais broker up",
                reason=Reason.NOT_CONNECTED,
            )
        info = read_info(data_dir)
        return BrokerTarget(info.client_url, BrokerPaths(data_dir).operator_creds, info.monitor_url)
    file = _credentials(ctx, creds, nkey)
    if server is None or file is None:
        raise ConfigError(
            "which broker? give -s URL and --creds FILE or --nkey FILE (or NATS_URL and"
            " NATS_CREDS/NATS_NKEY, or a context: relais context add), or --data-dir DIR"
        )
    return BrokerTarget(server, file)


async def connect_operator(
    target: BrokerTarget, *, wait: float, name: str, inbox_prefix: str = OPERATOR_INBOX
) -> Connection:
    """A connection as the read-only operator user, every wait bounded by ``wait`` seconds.

    Errors say what to do: credentials the broker does not know, credentials of another
    user (a partner's: its permissions refuse the operator's inbox), a broker that did not
    answer within ``wait`` seconds.
    """
    try:
        return await connect(
            target.url,
            creds=target.creds,
            inbox_prefix=inbox_prefix,
            name=name,
            connect_timeout=wait,
            request_timeout=wait,
        )
    except PermissionDenied as exc:
        if "authorization violation" in str(exc):
            raise PermissionDenied(
                f"the broker at {target.url} does not know the credentials {target.creds}:"
                " give the operator's (creds/operator.nk of the broker, with --nkey)"
            ) from exc
        raise PermissionDenied(
            f"{target.creds} are not the operator's credentials (the broker refuses them the"
            " operator's inbox): give the broker's creds/operator.nk with --nkey"
        ) from exc
    except TransportError as exc:
        if exc.reason is not Reason.NOT_CONNECTED:
            raise
        raise TransportError(
            f"cannot reach the broker at {target.url} within {wait:g} s: is it running?"
            " (check -s/--server, or give a longer --timeout)",
            reason=Reason.NOT_CONNECTED,
        ) from exc


def read_directory_file(path: Path | None) -> bytes | None:
    """The bytes of a signed directory file (``None`` for none: read ``ref.dir`` instead)."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


async def load_directory(conn: Connection | None, signed: bytes | None, root: bytes) -> Directory:
    """The signed directory (``signed``, else the last edition on ``ref.dir``), verified
    against the pinned root key ``root``."""
    if signed is None:
        if conn is None:
            raise ConfigError("give --directory FILE, or a broker to read ref.dir from")
        last = await last_for_subject(conn, DIRECTORY_STREAM, DIRECTORY_SUBJECT)
        if last is None:
            raise DirectoryError("no directory on ref.dir: give --directory")
        signed = last.data
    return verify_directory(signed, root)
