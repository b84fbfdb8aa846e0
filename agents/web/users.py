"""The people of a partner who use the web interface, their login attempts and the access log.

One SQLite database beside the agent's (``<data_dir>/web.sqlite3``, 0600, WAL), written by
the running agent and by ``relais agent users`` alike. Tables::

    people       username, role, argon2id password hash, TOTP secret and the last time step
                 used (a code is accepted once), disabled, consecutive failures, locked
    login_log    every login attempt: time, username as typed (an id), outcome code
    access_log   every opening of an event's content and every decision on it: time,
                 username, action, event id, the sections shown; never content

``login_log`` and ``access_log`` are append-only: triggers refuse any UPDATE or DELETE
(CNIL recommendation on logging, 2021: the traces of who read what must not be rewritten
by the application that produced them).

Lock-out: ``max_failures`` consecutive failures (wrong password or wrong code) lock the
account until an administrator resets it (``relais agent users reset``); a locked or
disabled account is refused even with the right password.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from relais.agents.web.auth import (
    PasswordHasher,
    check_password_strength,
    new_totp_secret,
    totp_step_accepted,
)
from relais.schemas.errors import ConfigError, PayloadError, Reason

__all__ = [
    "USERNAME_RE",
    "AccessEntry",
    "LoginOutcome",
    "Person",
    "Role",
    "WebStore",
]

USERNAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")
_SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS people(
  username TEXT PRIMARY KEY,
  role TEXT NOT NULL,
  password_hash TEXT NOT NULL,
  totp_secret TEXT,
  totp_last_step INTEGER NOT NULL DEFAULT 0,
  disabled INTEGER NOT NULL DEFAULT 0,
  failures INTEGER NOT NULL DEFAULT 0,
  locked INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS login_log(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  at INTEGER NOT NULL,
  username TEXT NOT NULL,
  outcome TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS access_log(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  at INTEGER NOT NULL,
  username TEXT NOT NULL,
  action TEXT NOT NULL,
  event_id TEXT NOT NULL,
  sections TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS login_log_no_update BEFORE UPDATE ON login_log
  BEGIN SELECT RAISE(ABORT, 'login_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS login_log_no_delete BEFORE DELETE ON login_log
  BEGIN SELECT RAISE(ABORT, 'login_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS access_log_no_update BEFORE UPDATE ON access_log
  BEGIN SELECT RAISE(ABORT, 'access_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS access_log_no_delete BEFORE DELETE ON access_log
  BEGIN SELECT RAISE(ABORT, 'access_log is append-only'); END;
"""
_PEOPLE_COLUMNS: Final = "username, role, totp_secret, disabled, failures, locked, created_at"
_BUSY_TIMEOUT_SECONDS: Final = 10.0


class Role(StrEnum):
    """What a person may do in the web interface."""

    READER = "reader"  # reads the inbox and the events (the sections the partner may read)
    CASE_OFFICER = "case_officer"  # also takes in charge, declines, composes and sends
    ADMIN = "admin"  # also sees the people, the access log and the agent's health

    @property
    def acts(self) -> bool:
        """May take in charge, decline, compose and send."""
        return self in (Role.CASE_OFFICER, Role.ADMIN)

    @property
    def administers(self) -> bool:
        """May see the admin pages."""
        return self is Role.ADMIN


class LoginOutcome(StrEnum):
    """The outcome code of a login attempt, as logged."""

    OK = "ok"
    UNKNOWN = "unknown_user"
    BAD_PASSWORD = "bad_password"  # noqa: S105 - an outcome code, not a password
    BAD_CODE = "bad_code"
    CODE_REQUIRED = "totp_not_enrolled"
    LOCKED = "locked"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class Person:
    """An account (never its password hash)."""

    username: str
    role: Role
    totp: bool
    disabled: bool
    failures: int
    locked: bool
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class AccessEntry:
    """One line of the access log."""

    seq: int
    at_ms: int
    username: str
    action: str
    event_id: str
    sections: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        """The JSON-lines export form."""
        return {
            "seq": self.seq,
            "at_ms": self.at_ms,
            "username": self.username,
            "action": self.action,
            "event_id": self.event_id,
            "sections": list(self.sections),
        }


def _person(row: Sequence[Any]) -> Person:
    return Person(
        username=row[0],
        role=Role(row[1]),
        totp=row[2] is not None,
        disabled=bool(row[3]),
        failures=int(row[4]),
        locked=bool(row[5]),
        created_at_ms=int(row[6]),
    )


def check_username(username: str) -> str:
    """``username`` if it is a valid login id (lower case letters, digits, ``.``, ``_``, ``-``)."""
    if not USERNAME_RE.fullmatch(username):
        raise PayloadError("invalid username", fields=("username",))
    return username


class WebStore:
    """The web interface's database (see the module docstring); safe across threads."""

    def __init__(self, path: Path, *, hasher: PasswordHasher | None = None) -> None:
        """Open (creating if needed) the database at ``path`` (its directory made 0700)."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._hasher = hasher or PasswordHasher()
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                path,
                isolation_level=None,
                check_same_thread=False,
                timeout=_BUSY_TIMEOUT_SECONDS,
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise ConfigError(f"web database {path} is from a newer version")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the web database {path}: {exc}") from exc
        path.chmod(0o600)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- people ------------------------------------------------------------------------------

    def add(
        self, username: str, role: Role, password: str, *, totp: bool, now_ms: int
    ) -> str | None:
        """Create an account; its TOTP secret (base32) when ``totp``, else ``None``.

        Raises ``PayloadError`` (invalid username, weak password) and
        ``PayloadError(STATE_CONFLICT)`` when the username is taken.
        """
        check_username(username)
        check_password_strength(password)
        digest = self._hasher.hash(password)
        secret = new_totp_secret() if totp else None
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO people(username, role, password_hash, totp_secret, created_at,"
                    " updated_at) VALUES (?,?,?,?,?,?)",
                    (username, role.value, digest, secret, now_ms, now_ms),
                )
        except sqlite3.IntegrityError as exc:
            raise PayloadError(
                "this username exists", fields=("username",), reason=Reason.STATE_CONFLICT
            ) from exc
        return secret

    def get(self, username: str) -> Person | None:
        """One account (``None``: unknown)."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_PEOPLE_COLUMNS} FROM people WHERE username = ?",  # noqa: S608
                (username,),
            ).fetchone()
        return None if row is None else _person(row)

    def people(self) -> list[Person]:
        """Every account, by username."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_PEOPLE_COLUMNS} FROM people ORDER BY username"  # noqa: S608
            ).fetchall()
        return [_person(r) for r in rows]

    def set_disabled(self, username: str, disabled: bool, *, now_ms: int) -> None:
        """Disable (or enable again) an account; its sessions end at their next request."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE people SET disabled = ?, updated_at = ? WHERE username = ?",
                (int(disabled), now_ms, username),
            )
        if not cursor.rowcount:
            raise PayloadError("no such account", fields=("username",))

    def reset(self, username: str, password: str, *, totp: bool, now_ms: int) -> str | None:
        """New password, new TOTP secret (when ``totp``), failures cleared and unlocked."""
        check_password_strength(password)
        digest = self._hasher.hash(password)
        secret = new_totp_secret() if totp else None
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE people SET password_hash = ?, totp_secret = ?, totp_last_step = 0,"
                " failures = 0, locked = 0, updated_at = ? WHERE username = ?",
                (digest, secret, now_ms, username),
            )
        if not cursor.rowcount:
            raise PayloadError("no such account", fields=("username",))
        return secret

    # -- login -------------------------------------------------------------------------------

    def login(
        self,
        username: str,
        password: str,
        code: str,
        *,
        totp_required: frozenset[Role],
        max_failures: int,
        now_ms: int,
    ) -> tuple[LoginOutcome, Person | None]:
        """Check a login attempt and log it; the outcome and, on success, the account.

        The password is checked even for an unknown user (same work, so timing does not
        tell which usernames exist). The roles in ``totp_required`` must give a code. A
        wrong password or code counts a failure;
        ``max_failures`` in a row lock the account.
        """
        with self._tx() as db:
            row = db.execute(
                "SELECT password_hash, totp_secret, totp_last_step, disabled, locked, failures,"
                " role FROM people WHERE username = ?",
                (username,),
            ).fetchone()
            outcome = self._judge(db, username, row, password, code, totp_required, max_failures)
            db.execute(
                "INSERT INTO login_log(at, username, outcome) VALUES (?,?,?)",
                (now_ms, username[:64], outcome.value),
            )
        if outcome is not LoginOutcome.OK:
            return outcome, None
        return outcome, self.get(username)

    def _judge(
        self,
        db: sqlite3.Connection,
        username: str,
        row: Sequence[Any] | None,
        password: str,
        code: str,
        totp_required: frozenset[Role],
        max_failures: int,
    ) -> LoginOutcome:
        if row is None:
            self._hasher.dummy_verify(password)
            return LoginOutcome.UNKNOWN
        digest, secret, last_step, disabled, locked, failures, role = row
        if not self._hasher.verify(digest, password):
            self._fail(db, username, failures, max_failures)
            return LoginOutcome.BAD_PASSWORD
        if disabled:
            return LoginOutcome.DISABLED
        if locked:
            return LoginOutcome.LOCKED
        if secret is None and Role(role) in totp_required:
            return LoginOutcome.CODE_REQUIRED
        step = 0
        if secret is not None:
            accepted = totp_step_accepted(secret, code, after_step=int(last_step))
            if accepted is None:
                self._fail(db, username, failures, max_failures)
                return LoginOutcome.BAD_CODE
            step = accepted
        updates = "failures = 0, totp_last_step = MAX(totp_last_step, ?)"
        db.execute(f"UPDATE people SET {updates} WHERE username = ?", (step, username))  # noqa: S608
        if self._hasher.needs_rehash(digest):
            db.execute(
                "UPDATE people SET password_hash = ? WHERE username = ?",
                (self._hasher.hash(password), username),
            )
        return LoginOutcome.OK

    @staticmethod
    def _fail(db: sqlite3.Connection, username: str, failures: int, max_failures: int) -> None:
        db.execute(
            "UPDATE people SET failures = failures + 1, locked = (failures + 1 >= ?)"
            " OR locked WHERE username = ?",
            (max_failures, username),
        )

    def login_log(self, limit: int = 200) -> list[tuple[int, int, str, str]]:
        """The last login attempts ``(seq, at_ms, username, outcome)``, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, at, username, outcome FROM login_log ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    # -- access log --------------------------------------------------------------------------

    def record_access(
        self, username: str, action: str, event_id: str, sections: Sequence[str], *, now_ms: int
    ) -> None:
        """Append one line to the access log (durable before the content is shown)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO access_log(at, username, action, event_id, sections)"
                " VALUES (?,?,?,?,?)",
                (now_ms, username, action, event_id, json.dumps(list(sections))),
            )

    def access_log(self, *, after: int = 0, limit: int | None = None) -> list[AccessEntry]:
        """Access log lines after the sequence ``after``, oldest first."""
        query = "SELECT seq, at, username, action, event_id, sections FROM access_log"
        query += " WHERE seq > ? ORDER BY seq"
        params: tuple[Any, ...] = (after,)
        if limit is not None:
            query += " LIMIT ?"
            params = (after, limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [AccessEntry(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5]))) for r in rows]

    def recent_access(self, limit: int = 200) -> list[AccessEntry]:
        """The last access log lines, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, at, username, action, event_id, sections FROM access_log"
                " ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [AccessEntry(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5]))) for r in rows]
