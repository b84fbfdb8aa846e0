"""Backups of an agent's or the gateway's SQLite state, and their restore.

A backup is a directory (0700)::

    manifest.json     format, role (agent|gateway), partner id, time, database file, SHA-256
    <name>.sqlite3    consistent snapshot (SQLite online backup API, rollback journal)
    keys/<file>       the key files, byte for byte: they stay encrypted (relais-key/1)
    <extra files>     e.g. the gateway's audit anchor

The snapshot is taken with ``sqlite3.Connection.backup`` in one step, so it is one
transaction's view of the database even while the agent or the gateway writes to it; it is
checked (``PRAGMA integrity_check``) before the manifest is written, and the manifest last,
so a directory without one is not a backup. Passphrases are never copied.

Restore refuses to run over a live store (the agent's ``agent.lock`` or the tracker's lock
is held), refuses a backup of another partner or role, or whose database does not match its
digest; the database it replaces is moved aside, never deleted (``replaced-<time>/``), and
key files are put back only where none exists (a rotation since the backup is kept).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from relais.schemas.errors import ConfigError

__all__ = [
    "BACKUP_FORMAT",
    "MANIFEST",
    "Manifest",
    "held_lock",
    "read_manifest",
    "restore_database",
    "restore_extra",
    "restore_keys",
    "snapshot",
    "write_backup",
]

BACKUP_FORMAT: Final = "relais-backup/1"
MANIFEST: Final = "manifest.json"
_ROLES: Final = frozenset({"agent", "gateway"})


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a backup holds."""

    role: str
    partner: str
    created_at_ms: int
    database: str
    sha256: str
    keys: tuple[str, ...]
    extra: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The manifest document."""
        return {
            "format": BACKUP_FORMAT,
            "role": self.role,
            "partner": self.partner,
            "created_at_ms": self.created_at_ms,
            "database": self.database,
            "sha256": self.sha256,
            "keys": list(self.keys),
            "extra": list(self.extra),
        }


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def snapshot(source: Path, target: Path) -> None:
    """Copy the database ``source`` to ``target`` (new file, 0600) with the online backup API."""
    if not source.is_file():
        raise ConfigError(f"no database {source}")
    if target.exists():
        raise ConfigError(f"{target} exists")
    try:
        src = sqlite3.connect(source)
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # one step: a single consistent read transaction
            # A single self-contained file, whatever the source's journal mode.
            dst.execute("PRAGMA journal_mode=DELETE")
            if dst.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise ConfigError(f"the snapshot of {source} does not pass integrity_check")
        finally:
            dst.close()
            src.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot back up {source}: {type(exc).__name__}") from exc
    target.chmod(0o600)
    _fsync(target)


def write_backup(
    output: Path,
    *,
    role: str,
    partner: str,
    database: Path,
    keys: Sequence[Path],
    extra: Sequence[Path] = (),
) -> Manifest:
    """Write a backup directory at ``output`` (absent or empty); its manifest."""
    if role not in _ROLES:
        raise ConfigError(f"role must be one of {sorted(_ROLES)}")
    if output.exists() and any(output.iterdir()):
        raise ConfigError(f"{output} is not empty")
    output.mkdir(mode=0o700, parents=True, exist_ok=True)
    output.chmod(0o700)
    snapshot(database, output / database.name)
    (output / "keys").mkdir(mode=0o700, exist_ok=True)
    for key in keys:
        _copy_private(key, output / "keys" / key.name)
    copied_extra = []
    for path in extra:
        if path.is_file():
            _copy_private(path, output / path.name)
            copied_extra.append(path.name)
    manifest = Manifest(
        role=role,
        partner=partner,
        created_at_ms=time.time_ns() // 1_000_000,
        database=database.name,
        sha256=_digest(output / database.name),
        keys=tuple(k.name for k in keys),
        extra=tuple(copied_extra),
    )
    body = json.dumps(manifest.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    _write_private(output / MANIFEST, body)  # last: without it, not a backup
    return manifest


def _copy_private(source: Path, target: Path) -> None:
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror}") from exc
    _write_private(target, data)


def _write_private(target: Path, data: bytes) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(backup: Path, *, role: str, partner: str) -> Manifest:
    """The manifest of ``backup``, checked against ``role``, ``partner`` and the database."""
    try:
        body = json.loads((backup / MANIFEST).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{backup} is not a relais backup (no readable manifest)") from exc
    if not isinstance(body, dict) or body.get("format") != BACKUP_FORMAT:
        raise ConfigError(f"{backup}: unsupported backup format")
    try:
        manifest = Manifest(
            role=str(body["role"]),
            partner=str(body["partner"]),
            created_at_ms=int(body["created_at_ms"]),
            database=Path(str(body["database"])).name,
            sha256=str(body["sha256"]),
            keys=tuple(Path(str(k)).name for k in body["keys"]),
            extra=tuple(Path(str(e)).name for e in body["extra"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{backup}: malformed manifest") from exc
    if (manifest.role, manifest.partner) != (role, partner):
        raise ConfigError(
            f"{backup} is a backup of {manifest.role} {manifest.partner!r}, not of"
            f" {role} {partner!r}"
        )
    if _digest(backup / manifest.database) != manifest.sha256:
        raise ConfigError(f"{backup}: the database does not match the manifest's digest")
    return manifest


@contextlib.contextmanager
def held_lock(path: Path, what: str) -> Iterator[None]:
    """Hold the lock a running agent or tracker holds; :class:`ConfigError` if it is live."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise ConfigError(f"{what} is running on {path.parent}: stop it first") from exc
        yield
    finally:
        os.close(fd)


def restore_database(backup: Path, manifest: Manifest, target: Path) -> Path | None:
    """Put the backup's database at ``target``; the directory the old one was moved to.

    The caller holds the store's lock (:func:`held_lock`).
    """
    aside = None
    present = [p for p in _database_files(target) if p.exists()]
    if present:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = target.parent / f"replaced-{stamp}"
        aside.mkdir(mode=0o700)
        for path in present:  # the database with its WAL: a consistent pair
            path.rename(aside / path.name)
    staging = target.with_name(target.name + ".restoring")
    staging.unlink(missing_ok=True)
    snapshot(backup / manifest.database, staging)
    staging.rename(target)
    return aside


def restore_keys(backup: Path, manifest: Manifest, key_files: Sequence[Path]) -> list[Path]:
    """Put back the backed-up key files that are missing; the paths written."""
    written = []
    for path in key_files:
        source = backup / "keys" / path.name
        if path.name in manifest.keys and not path.exists() and source.is_file():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _copy_private(source, path)
            written.append(path)
    return written


def restore_extra(backup: Path, manifest: Manifest, target_dir: Path) -> list[Path]:
    """Put back the extra files (e.g. the audit anchor) where none exists."""
    written = []
    for name in manifest.extra:
        target = target_dir / name
        if not target.exists():
            shutil.copyfile(backup / name, target)
            target.chmod(0o600)
            written.append(target)
    return written


def _database_files(database: Path) -> tuple[Path, ...]:
    return (
        database,
        database.with_name(database.name + "-wal"),
        database.with_name(database.name + "-shm"),
    )
