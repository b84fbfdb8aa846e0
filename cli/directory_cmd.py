"""``relais directory``: build, sign, verify and inspect the signed partner directory.

The partnership administrator edits an unsigned *working document* (the ``signed`` object of
the directory, as indented JSON) with ``init``, ``add``, ``add-key`` and ``revoke``, then
``sign`` publishes the next edition: the serial is bumped and written back to the working
document before the signed file is written, so two editions never share a serial.

An edition is the partnership's whole configuration: the directory *and* the routing rules
(``init`` embeds the packaged rules; ``sign --rules FILE`` embeds another rules file, which
is validated first and kept in the working document for the next editions), valid for
``--valid-for-days`` (default 31) from its signature. ``verify`` and ``show`` refuse an
expired edition (``DIRECTORY_EXPIRED``).

``verify`` and ``show`` check a signed file against the pinned root public key (base64, or a
file holding it: the root's ``.pub.json`` export or the base64 text) before printing
anything; they show organisation data only (ids, kinds, names, départements, key ids and
validity, revocations), never key material.

Exit codes: 0 success; 1 verification or validation failure (bad signature, rollback,
invalid directory, wrong passphrase...); 2 usage (bad option, missing or existing file,
unknown partner or key). Errors are one line on stderr: ``error [REASON]: message``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from relais.agents.keys import (
    PublicKey,
    load_key_file,
    read_public_key,
    read_root_public_key,
    write_atomic,
)
from relais.broker_config.directory import (
    DEFAULT_VALIDITY,
    Directory,
    Partner,
    add_key,
    add_partner,
    bump_serial,
    dump_directory,
    format_utc,
    is_valid_departement,
    new_directory,
    new_partner,
    new_partner_key,
    parse_directory,
    revoke_key,
    revoke_partner,
    sign_directory,
    to_ms,
    utc_now,
    verify_directory,
    with_rules,
)
from relais.broker_config.edition import rules_of
from relais.broker_config.rules import load_rules
from relais.cli._common import JsonOption, read_passphrase, reported_errors, warn
from relais.cli.keys_cmd import PassphraseEnvOption, PassphraseFileOption
from relais.schemas.domain import PartnerKind
from relais.schemas.errors import ConfigError

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="The signed partner directory.")

_MAX_VALID_DAYS = 3660

DirectoryOption = Annotated[
    Path,
    typer.Option("--directory", help="The unsigned working document.", dir_okay=False),
]
RootPublicKeyOption = Annotated[
    str,
    typer.Option(
        "--root-public-key",
        help="Pinned root Ed25519 public key: base64, or a file (root .pub.json or base64).",
    ),
]
ValidDaysOption = Annotated[
    int,
    typer.Option("--valid-days", min=1, max=_MAX_VALID_DAYS, help="Key validity from now."),
]


# -- helpers -----------------------------------------------------------------------------------


def _emit(document: dict[str, Any], **more: Any) -> None:
    """The ``--json`` document of an editing command."""
    typer.echo(json.dumps({**document, **more}, ensure_ascii=False))


def _positional_partner(argument: str | None, option: str | None) -> str:
    """The partner id, an argument as everywhere else (``--partner-id`` still read, warned)."""
    if argument is not None and option is not None:
        raise ConfigError("give the partner id once, as an argument")
    if option is not None:
        warn("--partner-id is deprecated: give the partner id as an argument")
        return option
    if argument is None:
        raise ConfigError("missing argument PARTNER_ID: relais directory add PARTNER_ID ...")
    return argument


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _load_working(path: Path) -> Directory:
    return parse_directory(_read(path, "working document"))


def _save_working(path: Path, directory: Directory, *, overwrite: bool = True) -> None:
    write_atomic(path, dump_directory(directory), mode=0o644, overwrite=overwrite)


def _public_key_for(path: Path, partner_id: str) -> PublicKey:
    public = read_public_key(path)
    if public.partner_id != partner_id:
        raise ConfigError(f"{path} is a key of {public.partner_id!r}, not of {partner_id!r}")
    return public


def _validity(valid_days: int) -> dict[str, Any]:
    start = utc_now()
    return {"not_before": start, "not_after": start + timedelta(days=valid_days)}


def _verified(signed: Path, root_public_key: str, min_serial: int | None = None) -> Directory:
    root_pk = read_root_public_key(root_public_key)
    data = _read(signed, "signed directory")
    directory = verify_directory(data, root_pk, min_serial=min_serial, now_ms=to_ms(utc_now()))
    rules_of(directory)  # an edition whose rules do not validate is refused (RULES_INVALID)
    return directory


def _check_departements(codes: list[str]) -> None:
    bad = [c for c in codes if not is_valid_departement(c)]
    if bad:
        raise ConfigError(f"not INSEE département codes: {', '.join(bad)}")


def _partner_row(partner: Partner) -> dict[str, Any]:
    return {
        "id": partner.id,
        "kind": partner.kind.value,
        "name": partner.name,
        "departements": list(partner.departements),
        "revoked": partner.revoked,
        "nats_user": partner.nats_nkey is not None,
        "keys": [
            {
                "key_id": k.key_id,
                "not_before": format_utc(k.not_before),
                "not_after": format_utc(k.not_after),
                "revoked": k.revoked,
            }
            for k in partner.keys
        ],
    }


def _summary(directory: Directory) -> dict[str, Any]:
    return {
        "partnership": directory.partnership,
        "serial": directory.serial,
        "issued_at": format_utc(directory.issued_at),
        "expires_at": format_utc(directory.valid_until),
        "rules_version": rules_of(directory).version,
        "root_key_id": directory.root_key_id,
        "partners": len(directory.partners),
    }


# -- editing the working document --------------------------------------------------------------


@app.command("init")
def init(
    partnership: Annotated[str, typer.Option("--partnership", help="Partnership id.")],
    root_key: Annotated[
        Path, typer.Option("--root-key", help="Root key file or its .pub.json.", dir_okay=False)
    ],
    out: Annotated[Path, typer.Option("--out", help="Working document to create.", dir_okay=False)],
    as_json: JsonOption = False,
) -> None:
    """Create an empty working document naming the root key (no passphrase needed)."""
    with reported_errors():
        directory = new_directory(partnership, read_public_key(root_key).key_id)
        _save_working(out, directory, overwrite=False)
    if as_json:
        _emit(
            {"working_document": str(out), "partnership": partnership},
            root_key_id=directory.root_key_id,
        )
        return
    typer.echo(
        f"working document {out}: partnership {partnership}, root key {directory.root_key_id}"
    )


@app.command("add")
def add(
    directory_path: DirectoryOption,
    partner_id: Annotated[str | None, typer.Argument(help="Partner id.")] = None,
    *,
    kind: Annotated[PartnerKind, typer.Option("--kind", help="Partner kind.")],
    name: Annotated[str, typer.Option("--name", help="Organisation name.")],
    public_key: Annotated[
        Path, typer.Option("--public-key", help="The partner's .pub.json.", dir_okay=False)
    ],
    departement: Annotated[
        list[str] | None,
        typer.Option("--departement", help="INSEE département code (repeatable)."),
    ] = None,
    valid_days: ValidDaysOption = 365,
    nats_nkey: Annotated[
        str | None, typer.Option("--nats-nkey", help="The partner's NATS user public nkey.")
    ] = None,
    partner_id_option: Annotated[
        str | None, typer.Option("--partner-id", hidden=True, help="Deprecated: the argument.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Add a partner with its first key, valid from now for --valid-days."""
    departements = departement or []
    with reported_errors():
        partner_id = _positional_partner(partner_id, partner_id_option)
        _check_departements(departements)
        directory = _load_working(directory_path)
        public = _public_key_for(public_key, partner_id)
        key = new_partner_key(public.sign_pk, public.box_pk, **_validity(valid_days))
        partner = new_partner(
            partner_id,
            kind,
            name,
            departements=departements,
            keys=(key,),
            nats_nkey=nats_nkey,
        )
        _save_working(directory_path, add_partner(directory, partner))
    if as_json:
        _emit({"added": partner_id, "kind": kind.value}, key_id=key.key_id)
        return
    typer.echo(f"added {partner_id} ({kind.value}) with key {key.key_id}")


@app.command("add-key")
def add_key_cmd(
    directory_path: DirectoryOption,
    partner_id: Annotated[str, typer.Argument(help="Partner id.")],
    public_key: Annotated[
        Path, typer.Option("--public-key", help="The new .pub.json.", dir_okay=False)
    ],
    valid_days: ValidDaysOption = 365,
    as_json: JsonOption = False,
) -> None:
    """Add a new key to a partner (rotation: the newest valid key is used for sealing)."""
    with reported_errors():
        directory = _load_working(directory_path)
        public = _public_key_for(public_key, partner_id)
        key = new_partner_key(public.sign_pk, public.box_pk, **_validity(valid_days))
        _save_working(directory_path, add_key(directory, partner_id, key))
    if as_json:
        _emit({"partner": partner_id}, key_id=key.key_id)
        return
    typer.echo(f"added key {key.key_id} to {partner_id}")


@app.command("revoke")
def revoke(
    directory_path: DirectoryOption,
    partner_id: Annotated[str, typer.Argument(help="Partner id.")],
    key_id: Annotated[
        str | None, typer.Option("--key-id", help="Revoke only this key of the partner.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke a partner, or one of its keys (kept in the directory, marked revoked)."""
    with reported_errors():
        directory = _load_working(directory_path)
        if key_id is None:
            updated = revoke_partner(directory, partner_id)
        else:
            updated = revoke_key(directory, partner_id, key_id)
        _save_working(directory_path, updated)
    if as_json:
        _emit({"revoked": partner_id}, key_id=key_id)
        return
    typer.echo(f"revoked {partner_id}" + (f" key {key_id}" if key_id else ""))


@app.command("sign")
def sign(
    directory_path: DirectoryOption,
    root_key: Annotated[Path, typer.Option("--root-key", help="Root key file.", dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", help="Signed directory file.", dir_okay=False)],
    passphrase_file: PassphraseFileOption = None,
    passphrase_env: PassphraseEnvOption = None,
    rules: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            help="Routing rules file (TOML) to embed; default: the rules already embedded.",
            dir_okay=False,
        ),
    ] = None,
    valid_for_days: Annotated[
        int,
        typer.Option("--valid-for-days", min=1, max=366, help="Validity of the edition."),
    ] = DEFAULT_VALIDITY.days,
    as_json: JsonOption = False,
) -> None:
    """Sign the next edition (directory and rules): bump the serial, write the signed file."""
    with reported_errors():
        directory = _load_working(directory_path)
        if rules is not None:
            text = _read(rules, "rules file").decode("utf-8", "replace")
            load_rules(text)  # refused before anything is signed (RULES_INVALID)
            directory = with_rules(directory, text)
        version = rules_of(directory).version
        passphrase = read_passphrase(passphrase_file, passphrase_env, confirm=False)
        root = load_key_file(root_key, passphrase)
        edition = bump_serial(directory, valid_for=timedelta(days=valid_for_days))
        signed = sign_directory(edition, root)  # refuses a root key the document does not name
        _save_working(directory_path, edition)
        write_atomic(out, signed, mode=0o644, overwrite=True)
    if as_json:
        _emit(
            {"signed": str(out), "serial": edition.serial, "partners": len(edition.partners)},
            rules_version=version,
            valid_until=format_utc(edition.valid_until),
        )
        return
    typer.echo(
        f"signed serial {edition.serial} ({len(edition.partners)} partners, rules version"
        f" {version}, valid until {format_utc(edition.valid_until)}) -> {out}"
    )


# -- checking a signed file --------------------------------------------------------------------


@app.command("verify")
def verify(
    signed: Annotated[Path, typer.Argument(help="Signed directory file.", dir_okay=False)],
    root_public_key: RootPublicKeyOption,
    min_serial: Annotated[
        int | None, typer.Option("--min-serial", min=0, help="Refuse older editions.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Verify the signature against the pinned root key, then validate the directory."""
    with reported_errors():
        directory = _verified(signed, root_public_key, min_serial)
    summary = _summary(directory)
    if as_json:
        typer.echo(json.dumps({"ok": True, **summary}))
        return
    typer.echo(
        f"directory ok: partnership {summary['partnership']}, serial {summary['serial']}, "
        f"issued {summary['issued_at']}, expires {summary['expires_at']}, rules version "
        f"{summary['rules_version']}, {summary['partners']} partners"
    )


@app.command("show")
def show(
    signed: Annotated[Path, typer.Argument(help="Signed directory file.", dir_okay=False)],
    root_public_key: RootPublicKeyOption,
    kind: Annotated[PartnerKind | None, typer.Option("--kind", help="Only this kind.")] = None,
    departement: Annotated[
        str | None, typer.Option("--departement", help="Only partners of this département.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Verify, then list partners: id, kind, départements, keys and validity, revocations."""
    with reported_errors():
        if departement is not None:
            _check_departements([departement])
        directory = _verified(signed, root_public_key)
    partners = [
        p
        for p in directory.partners
        if (kind is None or p.kind is kind)
        and (departement is None or departement in p.departements)
    ]
    rows = [_partner_row(p) for p in sorted(partners, key=lambda p: p.id)]
    if as_json:
        typer.echo(json.dumps({**_summary(directory), "partners": rows}, ensure_ascii=False))
        return
    summary = _summary(directory)
    typer.echo(
        f"partnership {summary['partnership']} serial {summary['serial']} "
        f"issued {summary['issued_at']}: {len(rows)} of {summary['partners']} partners"
    )
    for row in rows:
        typer.echo(_text_row(row))


def _text_row(row: dict[str, Any]) -> str:
    deps = ",".join(row["departements"]) or "-"
    status = "  REVOKED" if row["revoked"] else ""
    lines = [f"{row['id']}  {row['kind']}  {deps}  {row['name']}{status}"]
    for k in row["keys"]:
        flag = "  revoked" if k["revoked"] else ""
        lines.append(f"    key {k['key_id']}  {k['not_before']} .. {k['not_after']}{flag}")
    return "\n".join(lines)
