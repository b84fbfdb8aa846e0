"""``relais broker tls``: the partnership's certificate authority and the broker's certificates.

The broker's client listener and cluster routes use TLS with certificates of one CA, the
partnership's; agents, the gateway and the CLI verify the broker's certificate against it
(``tls_ca_file``), and, for mutual TLS, present a client certificate it signed. This
command runs ``openssl`` (1.1.1 or 3.x) to make that CA and the certificates, the steps
docs/operations.md also gives by hand::

    relais broker tls --out /etc/relais/tls \\
        --server n1=10.0.0.1,broker1.partenariat.example --server n2=10.0.0.2 ... \\
        --client gendarmerie-93

    <out>/ca.crt, ca.key        the CA (EC P-256, 5 years; keep ca.key offline)
    <out>/<name>.crt, .key      a certificate (EC P-256, 397 days) for each name: servers with
                                their host names and IP addresses, usable for both ends of a
                                route (serverAuth and clientAuth); clients with clientAuth

Keys are written in a 0700 directory and made 0600. A run on a directory that already has a
CA keeps it, and keeps every certificate that exists (remove one to renew it). A CA made this
way suits a rehearsal or a partnership that runs its own; an existing PKI's certificates work
the same (any PEM files).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from shutil import which
from typing import Annotated

import typer

from relais.cli._common import JsonOption, reported_errors
from relais.schemas.errors import ConfigError

__all__ = ["Issued", "make_certificates", "tls"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")
_CA_DAYS = 5 * 365
_LEAF_DAYS = 397
_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Issued:
    """What one run made or kept."""

    ca_file: Path
    created: tuple[str, ...]
    kept: tuple[str, ...]


def _openssl() -> str:
    found = which("openssl")
    if found is None:
        raise ConfigError("openssl not found: install it (Debian: apt-get install openssl)")
    return found


def _run(args: list[str]) -> None:
    try:
        done = subprocess.run(
            [_openssl(), *args], capture_output=True, timeout=_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run openssl {args[0]}") from exc
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ConfigError(f"openssl {args[0]} failed: {lines[-1] if lines else 'unknown'}")


def _san(hosts: list[str]) -> str:
    entries = []
    for host in hosts:
        try:
            entries.append(f"IP:{ipaddress.ip_address(host)}")
        except ValueError:
            if not _HOST_RE.fullmatch(host):
                raise ConfigError(f"not a host name or IP address: {host!r}") from None
            entries.append(f"DNS:{host}")
    return ",".join(entries)


def _make_ca(out: Path, subject: str) -> None:
    _run(
        [
            "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(out / "ca.key"), "-out", str(out / "ca.crt"),
            "-days", str(_CA_DAYS), "-sha256", "-subj", f"/O={subject}/CN={subject} CA",
            "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ]
    )  # fmt: skip
    os.chmod(out / "ca.key", 0o600)


def _issue(out: Path, name: str, hosts: list[str] | None, subject: str) -> None:
    usage = "serverAuth,clientAuth" if hosts is not None else "clientAuth"
    extensions = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        f"extendedKeyUsage={usage}",
    ]
    if hosts:
        extensions.append(f"subjectAltName={_san(hosts)}")
    with tempfile.TemporaryDirectory(dir=out) as work:
        csr, ext = Path(work) / "req.csr", Path(work) / "ext.cnf"
        ext.write_text("\n".join(extensions) + "\n")
        _run(
            [
                "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(out / f"{name}.key"), "-out", str(csr),
                "-subj", f"/O={subject}/CN={name}",
            ]
        )  # fmt: skip
        os.chmod(out / f"{name}.key", 0o600)
        _run(
            [
                "x509", "-req", "-in", str(csr), "-CA", str(out / "ca.crt"),
                "-CAkey", str(out / "ca.key"), "-set_serial", str(int.from_bytes(os.urandom(16))),
                "-days", str(_LEAF_DAYS), "-sha256", "-extfile", str(ext),
                "-out", str(out / f"{name}.crt"),
            ]
        )  # fmt: skip


def make_certificates(
    out: Path,
    *,
    servers: dict[str, list[str]],
    clients: Sequence[str] = (),
    subject: str = "relais",
) -> Issued:
    """Make (or keep) the CA in ``out`` and a certificate per server and client name.

    ``servers`` maps a node's name to the host names and IP addresses clients and peers use
    to reach it. :class:`ConfigError` for a bad name or an ``openssl`` failure.
    """
    names = [*servers, *clients]
    for name in names:
        if not _NAME_RE.fullmatch(name) or name == "ca":
            raise ConfigError(f"not a certificate name: {name!r}")
    if len(set(names)) != len(names):
        raise ConfigError("each certificate name once")
    if not re.fullmatch(r"[A-Za-z0-9 _.-]{1,64}", subject):
        raise ConfigError("the subject is letters, digits, spaces, '_', '.' and '-'")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    created: list[str] = []
    kept: list[str] = []
    if not (out / "ca.crt").exists():
        _make_ca(out, subject)
        created.append("ca")
    elif not (out / "ca.key").exists() and any(not (out / f"{n}.crt").exists() for n in names):
        raise ConfigError(f"{out}/ca.key is not here: bring it back to issue certificates")
    for name in names:
        if (out / f"{name}.crt").exists():
            kept.append(name)
            continue
        _issue(out, name, servers.get(name) if name in servers else None, subject)
        created.append(name)
    return Issued(out / "ca.crt", tuple(created), tuple(kept))


def _parse_server(value: str) -> tuple[str, list[str]]:
    name, sep, hosts = value.partition("=")
    listed = [h.strip() for h in hosts.split(",") if h.strip()]
    if not sep or not listed:
        raise ConfigError(f"--server NAME=HOST[,HOST...], not {value!r}")
    return name.strip(), listed


def tls(
    out: Annotated[Path, typer.Option("--out", help="Directory of the CA and certificates.")],
    server: Annotated[
        list[str] | None,
        typer.Option("--server", help="NAME=HOST[,HOST...]: a broker node's certificate (repeat)."),
    ] = None,
    client: Annotated[
        list[str] | None,
        typer.Option("--client", help="NAME: a client certificate for mutual TLS (repeat)."),
    ] = None,
    subject: Annotated[
        str, typer.Option("--subject", help="Organisation in the certificates.")
    ] = "relais",
    as_json: JsonOption = False,
) -> None:
    """Make the partnership's test CA (kept if present) and certificates with openssl."""
    with reported_errors():
        servers = dict(_parse_server(value) for value in server or [])
        issued = make_certificates(out, servers=servers, clients=client or [], subject=subject)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ca_file": str(issued.ca_file),
                    "created": list(issued.created),
                    "kept": list(issued.kept),
                }
            )
        )
        return
    typer.echo(f"CA: {issued.ca_file} (keep {out / 'ca.key'} offline once done)")
    for name in issued.created:
        if name != "ca":
            typer.echo(f"  created {out / name}.crt, {name}.key (0600)")
    for name in issued.kept:
        typer.echo(f"  kept    {out / name}.crt")
