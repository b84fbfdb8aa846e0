"""The tracker's durable state: SQLite (WAL, ``synchronous=FULL``) under the gateway's data dir.

Tables::

    events    one row per routed event: who, which rule, the ingress sequence and digest of
              the original envelope, its deadline, its state (open, taken, escalated, closed)
    parties   one row per (event, partner): role (recipient, fallback) and state
              (ROUTED < DELIVERED < TAKEN_IN_CHARGE | DECLINED; TAKEN_IN_CHARGE < CONCLUDED),
              with the decline reason and the outcome
    early     receipt entries for events not known yet (their ROUTED audit record is late)
    closures  closing events (runaway ended) whose case is not known yet
    steps     the progress of each (event, partner) still to tell, or told, its sender: one
              row per step (unique), written with the change it reports, later attached to
              the progress notice that carries it
    notices   signed progress notices, kept until the broker acknowledged them (a notice
              re-sent after a crash is the same bytes, so the duplicate window absorbs it)
    marks     per stream governed by retention, its first sequence when last looked at
    purges    PURGED audit records committed with their purge, until the log stored them

Retention (:meth:`TrackerStore.purge`): events that left ``open`` longer ago than the
partnership's ``tracker_closed_seconds`` are forgotten with their parties, and so are early
receipts and parked closures older than that (their event never came).

Every change is idempotent: an event is inserted once, a party's state only moves forward
(a duplicate, older or conflicting receipt changes nothing), an event leaves ``open`` once.
The store holds ids, codes and times only. It is used from one thread (the event loop);
callers group changes in :meth:`TrackerStore.transaction`.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from relais.schemas.errors import ConfigError

__all__ = [
    "DeadlineSummary",
    "EarlyReceipt",
    "EventState",
    "Party",
    "PartyState",
    "Step",
    "StepState",
    "StoredNotice",
    "TrackedEvent",
    "TrackerStore",
    "lock_path",
]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    sender TEXT NOT NULL,
    rule TEXT NOT NULL,
    priority TEXT NOT NULL,
    ingress_seq INTEGER NOT NULL,
    digest TEXT NOT NULL,
    routed_at INTEGER NOT NULL,
    deadline_at INTEGER,
    fallback TEXT NOT NULL,
    state TEXT NOT NULL,
    state_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_due ON events (state, deadline_at);
CREATE TABLE IF NOT EXISTS parties (
    event_id TEXT NOT NULL,
    partner TEXT NOT NULL,
    role TEXT NOT NULL,
    state TEXT NOT NULL,
    decline_reason TEXT,
    at INTEGER NOT NULL,
    outcome TEXT,
    PRIMARY KEY (event_id, partner)
);
CREATE TABLE IF NOT EXISTS early (
    event_id TEXT NOT NULL,
    partner TEXT NOT NULL,
    state TEXT NOT NULL,
    decline_reason TEXT,
    at INTEGER NOT NULL,
    outcome TEXT,
    PRIMARY KEY (event_id, partner, state)
);
CREATE TABLE IF NOT EXISTS closures (
    case_ref TEXT PRIMARY KEY,
    closing_event TEXT NOT NULL,
    closing_sender TEXT NOT NULL,
    alert_sender TEXT,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_left ON events (state, state_at);
CREATE TABLE IF NOT EXISTS cursors (
    stream TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS marks (
    stream TEXT PRIMARY KEY,
    first_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS purges (
    msg_id TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sender TEXT NOT NULL,
    priority TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    partner TEXT NOT NULL,
    role TEXT NOT NULL,
    state TEXT NOT NULL,
    decline_reason TEXT,
    outcome TEXT,
    escalated_to TEXT NOT NULL,
    at INTEGER NOT NULL,
    notice_id TEXT,
    UNIQUE (event_id, partner, state)
);
CREATE INDEX IF NOT EXISTS steps_pending ON steps (id) WHERE notice_id IS NULL;
CREATE TABLE IF NOT EXISTS notices (
    notice_id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    priority TEXT NOT NULL,
    event_id TEXT,
    data BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    published_at INTEGER
);
CREATE INDEX IF NOT EXISTS notices_unpublished ON notices (created_at)
    WHERE published_at IS NULL;
"""
# Columns added since the first version of the database: (table, column, declaration).
_ADDED_COLUMNS: Final = (("parties", "outcome", "TEXT"), ("early", "outcome", "TEXT"))


def lock_path(database: Path) -> Path:
    """The lock file a running tracker holds (``relais gateway restore`` refuses it then)."""
    return database.with_name(database.name + ".lock")


def _lock(path: Path) -> int | None:
    # One tracker per database: a second one, or a restore under a live one, is refused.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise ConfigError(f"another tracker uses {path.parent}") from exc
    return fd


class EventState(StrEnum):
    """Where an event stands for the partnership."""

    OPEN = "open"  # waiting to be taken in charge
    TAKEN = "taken"  # a recipient took it in charge: no escalation
    ESCALATED = "escalated"  # the deadline passed: released to the fallback recipients
    CLOSED = "closed"  # its case was closed (e.g. runaway ended): no escalation


class PartyState(StrEnum):
    """Where an event stands at one recipient (receipt states, plus ROUTED)."""

    ROUTED = "ROUTED"
    DELIVERED = "DELIVERED"
    TAKEN_IN_CHARGE = "TAKEN_IN_CHARGE"
    DECLINED = "DECLINED"
    CONCLUDED = "CONCLUDED"  # taken in charge, and the partner reported what follows

    @property
    def rank(self) -> int:
        """Order of the states; DECLINED is final, CONCLUDED comes after TAKEN_IN_CHARGE."""
        return _RANK[self]

    def follows(self, current: PartyState) -> bool:
        """True when a party in ``current`` may move to this state (forward only; a
        declined event is never concluded)."""
        if current is PartyState.DECLINED:
            return False
        return self.rank > current.rank


_RANK: Final = {
    PartyState.ROUTED: 0,
    PartyState.DELIVERED: 1,
    PartyState.TAKEN_IN_CHARGE: 2,
    PartyState.DECLINED: 2,
    PartyState.CONCLUDED: 3,
}


class StepState(StrEnum):
    """A step of an (event, partner) told to the event's sender (progress notices)."""

    ROUTED = "ROUTED"
    DELIVERED = "DELIVERED"
    TAKEN_IN_CHARGE = "TAKEN_IN_CHARGE"
    DECLINED = "DECLINED"
    CONCLUDED = "CONCLUDED"
    ESCALATED = "ESCALATED"


@dataclass(frozen=True, slots=True)
class TrackedEvent:
    """One routed event as the tracker follows it."""

    event_id: uuid.UUID
    event_type: str
    sender: str
    rule: str
    priority: str
    ingress_seq: int
    digest: str
    routed_at: int
    deadline_at: int | None
    fallback: tuple[str, ...]
    state: EventState
    state_at: int


@dataclass(frozen=True, slots=True)
class Party:
    """One recipient (or fallback recipient) of an event."""

    partner: str
    role: str  # "recipient" or "fallback"
    state: PartyState
    decline_reason: str | None
    at: int
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class EarlyReceipt:
    """A receipt entry kept until its event is known."""

    partner: str
    state: PartyState
    decline_reason: str | None
    at: int
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One step to tell the sender of an event (a row of ``steps``)."""

    sender: str
    priority: str  # of the progress notice that carries it (URGENT or ROUTINE)
    event_id: uuid.UUID
    event_type: str
    partner: str
    role: str  # "recipient" or "fallback"
    state: StepState
    at: int
    decline_reason: str | None = None
    outcome: str | None = None
    escalated_to: tuple[str, ...] = ()
    id: int = 0  # set when read back from the store


@dataclass(frozen=True, slots=True)
class StoredNotice:
    """A signed progress notice the broker has not acknowledged yet."""

    notice_id: str
    sender: str
    priority: str
    event_id: str | None  # when every step of it is about one event
    data: bytes


@dataclass(frozen=True, slots=True)
class DeadlineSummary:
    """Per priority: events with a deadline not taken in charge, for the watch metrics."""

    priority: str
    open: int  # waiting, deadline not passed yet
    overdue: int  # deadline passed, nobody took it in charge, not closed (escalated or not)
    next_deadline_at: int | None  # earliest deadline among the open ones


def _event(row: sqlite3.Row) -> TrackedEvent:
    return TrackedEvent(
        event_id=uuid.UUID(row["event_id"]),
        event_type=row["event_type"],
        sender=row["sender"],
        rule=row["rule"],
        priority=row["priority"],
        ingress_seq=row["ingress_seq"],
        digest=row["digest"],
        routed_at=row["routed_at"],
        deadline_at=row["deadline_at"],
        fallback=tuple(json.loads(row["fallback"])),
        state=EventState(row["state"]),
        state_at=row["state_at"],
    )


class TrackerStore:
    """The tracker's SQLite database (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = _lock(lock_path(path))
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._add_columns()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the tracker database {path}: {exc}") from exc
        self._depth = 0

    def _add_columns(self) -> None:
        """Bring a database made by an earlier version up to date (columns only added)."""
        for table, column, declaration in _ADDED_COLUMNS:
            known = {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in known:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        """Close the database (and release its lock)."""
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit of changes (committed on exit, rolled back on an exception)."""
        if self._depth:
            raise ConfigError("tracker store transactions do not nest")
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._depth = 0

    # -- events --------------------------------------------------------------------------------

    def add_event(self, record: Mapping[str, Any]) -> bool:
        """Insert a routed event (a ROUTED audit record) and its recipients; False if known."""
        event_id, at = record["event_id"], int(record["at"])
        inserted = self._db.execute(
            "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                event_id,
                record["event_type"],
                record["sender"],
                record["rule"],
                record["priority"],
                int(record["ingress_seq"]),
                record["digest"],
                at,
                record.get("deadline_at"),
                json.dumps(list(record.get("fallback", []))),
                EventState.OPEN.value,
                at,
            ),
        ).rowcount
        if not inserted:
            return False
        for partner in record["recipients"]:
            self.add_party(uuid.UUID(event_id), partner, "recipient", at)
        return True

    def event(self, event_id: uuid.UUID) -> TrackedEvent | None:
        """The event, or ``None`` when the tracker has not learnt it (yet)."""
        row = self._db.execute("SELECT * FROM events WHERE event_id = ?", (str(event_id),))
        found = row.fetchone()
        return _event(found) if found is not None else None

    def set_state(self, event_id: uuid.UUID, state: EventState, at: int) -> bool:
        """Move an event to ``state``; False when it is already there."""
        changed = self._db.execute(
            "UPDATE events SET state = ?, state_at = ? WHERE event_id = ? AND state != ?",
            (state.value, at, str(event_id), state.value),
        ).rowcount
        return bool(changed)

    def due(self, now_ms: int) -> list[TrackedEvent]:
        """Open events whose deadline has passed, oldest deadline first."""
        rows = self._db.execute(
            "SELECT * FROM events WHERE state = ? AND deadline_at IS NOT NULL"
            " AND deadline_at <= ? ORDER BY deadline_at",
            (EventState.OPEN.value, now_ms),
        )
        return [_event(row) for row in rows.fetchall()]

    # -- parties -------------------------------------------------------------------------------

    def add_party(self, event_id: uuid.UUID, partner: str, role: str, at: int) -> None:
        """A recipient or fallback recipient of an event, in state ROUTED (kept if present)."""
        self._db.execute(
            "INSERT OR IGNORE INTO parties (event_id, partner, role, state, at) VALUES (?,?,?,?,?)",
            (str(event_id), partner, role, PartyState.ROUTED.value, at),
        )

    def parties(self, event_id: uuid.UUID) -> list[Party]:
        """The recipients and fallback recipients of an event."""
        rows = self._db.execute(
            "SELECT * FROM parties WHERE event_id = ? ORDER BY role DESC, partner",
            (str(event_id),),
        )
        return [
            Party(
                r["partner"],
                r["role"],
                PartyState(r["state"]),
                r["decline_reason"],
                r["at"],
                r["outcome"],
            )
            for r in rows.fetchall()
        ]

    def advance(
        self,
        event_id: uuid.UUID,
        partner: str,
        state: PartyState,
        decline_reason: str | None,
        at: int,
        outcome: str | None = None,
    ) -> bool:
        """Move a party forward to ``state``; False when that is not forward (nothing changes)."""
        row = self._db.execute(
            "SELECT state FROM parties WHERE event_id = ? AND partner = ?",
            (str(event_id), partner),
        ).fetchone()
        if row is None or not state.follows(PartyState(row["state"])):
            return False
        self._db.execute(
            "UPDATE parties SET state = ?, decline_reason = ?, at = ?, outcome = ?"
            " WHERE event_id = ? AND partner = ?",
            (state.value, decline_reason, at, outcome, str(event_id), partner),
        )
        return True

    # -- early receipts and closures -------------------------------------------------------------

    def park_receipt(self, event_id: uuid.UUID, entry: EarlyReceipt) -> None:
        """Keep a receipt entry until its event is known."""
        self._db.execute(
            "INSERT OR IGNORE INTO early (event_id, partner, state, decline_reason, at, outcome)"
            " VALUES (?,?,?,?,?,?)",
            (
                str(event_id),
                entry.partner,
                entry.state.value,
                entry.decline_reason,
                entry.at,
                entry.outcome,
            ),
        )

    def early_events(self) -> list[uuid.UUID]:
        """The events for which receipt entries are kept."""
        rows = self._db.execute("SELECT DISTINCT event_id FROM early").fetchall()
        return [uuid.UUID(r["event_id"]) for r in rows]

    def take_early(self, event_id: uuid.UUID) -> list[EarlyReceipt]:
        """The receipt entries kept for ``event_id`` (removed from the store), oldest first."""
        rows = self._db.execute(
            "SELECT * FROM early WHERE event_id = ? ORDER BY at", (str(event_id),)
        ).fetchall()
        self._db.execute("DELETE FROM early WHERE event_id = ?", (str(event_id),))
        return [
            EarlyReceipt(
                r["partner"], PartyState(r["state"]), r["decline_reason"], r["at"], r["outcome"]
            )
            for r in rows
        ]

    def park_closure(
        self,
        case_ref: uuid.UUID,
        closing_event: str,
        closing_sender: str,
        alert_sender: str | None,
        at: int,
    ) -> None:
        """Keep a closing event until the case it closes is known."""
        self._db.execute(
            "INSERT OR IGNORE INTO closures VALUES (?,?,?,?,?)",
            (str(case_ref), closing_event, closing_sender, alert_sender, at),
        )

    def take_closure(self, case_ref: uuid.UUID) -> dict[str, Any] | None:
        """The closing event kept for ``case_ref`` (removed from the store), if any."""
        row = self._db.execute(
            "SELECT * FROM closures WHERE case_ref = ?", (str(case_ref),)
        ).fetchone()
        if row is None:
            return None
        self._db.execute("DELETE FROM closures WHERE case_ref = ?", (str(case_ref),))
        return dict(row)

    # -- progress steps and notices ----------------------------------------------------------

    def add_step(self, step: Step) -> bool:
        """Record a step to tell the sender; False when that step was recorded already."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO steps (sender, priority, event_id, event_type, partner, role,"
            " state, decline_reason, outcome, escalated_to, at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                step.sender,
                step.priority,
                str(step.event_id),
                step.event_type,
                step.partner,
                step.role,
                step.state.value,
                step.decline_reason,
                step.outcome,
                json.dumps(sorted(step.escalated_to)),
                step.at,
            ),
        )
        return bool(cursor.rowcount)

    def pending_steps(self, limit: int) -> list[Step]:
        """Steps no notice carries yet, oldest first."""
        rows = self._db.execute(
            "SELECT * FROM steps WHERE notice_id IS NULL ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        return [
            Step(
                sender=r["sender"],
                priority=r["priority"],
                event_id=uuid.UUID(r["event_id"]),
                event_type=r["event_type"],
                partner=r["partner"],
                role=r["role"],
                state=StepState(r["state"]),
                at=r["at"],
                decline_reason=r["decline_reason"],
                outcome=r["outcome"],
                escalated_to=tuple(json.loads(r["escalated_to"])),
                id=r["id"],
            )
            for r in rows
        ]

    def save_notice(self, notice: StoredNotice, step_ids: list[int], at: int) -> None:
        """Keep a signed notice and attach the steps it carries."""
        self._db.execute(
            "INSERT OR IGNORE INTO notices (notice_id, sender, priority, event_id, data,"
            " created_at) VALUES (?,?,?,?,?,?)",
            (notice.notice_id, notice.sender, notice.priority, notice.event_id, notice.data, at),
        )
        self._db.executemany(
            "UPDATE steps SET notice_id = ? WHERE id = ?",
            [(notice.notice_id, step_id) for step_id in step_ids],
        )

    def unpublished_notices(self) -> list[StoredNotice]:
        """Signed notices the broker has not acknowledged yet, oldest first."""
        rows = self._db.execute(
            "SELECT * FROM notices WHERE published_at IS NULL ORDER BY created_at, notice_id"
        ).fetchall()
        return [
            StoredNotice(r["notice_id"], r["sender"], r["priority"], r["event_id"], r["data"])
            for r in rows
        ]

    def notices_published(self, notice_ids: list[str], at: int) -> None:
        """Record the broker's acknowledgement of notices."""
        self._db.executemany(
            "UPDATE notices SET published_at = ? WHERE notice_id = ?",
            [(at, notice_id) for notice_id in notice_ids],
        )

    # -- retention and watch ---------------------------------------------------------------

    def purge(self, before_ms: int) -> int:
        """Forget events that left ``open`` before ``before_ms``, their parties, and early
        receipts and parked closures older than that; the number of events forgotten.

        Call inside :meth:`transaction`. An open event is never forgotten: its deadline is
        still watched.
        """
        old = "SELECT event_id FROM events WHERE state != ? AND state_at < ?"
        params = (EventState.OPEN.value, before_ms)
        self._db.execute(f"DELETE FROM parties WHERE event_id IN ({old})", params)  # noqa: S608
        count = self._db.execute(
            "DELETE FROM events WHERE state != ? AND state_at < ?", params
        ).rowcount
        self._db.execute("DELETE FROM early WHERE at < ?", (before_ms,))
        self._db.execute("DELETE FROM closures WHERE at < ?", (before_ms,))
        return int(count)

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open (another task of the loop is inside one)."""
        return self._db.in_transaction

    def keep_purge_record(self, msg_id: str, record: Mapping[str, Any]) -> None:
        """Keep a PURGED audit record to publish (in the purge's own transaction)."""
        self._db.execute(
            "INSERT OR IGNORE INTO purges VALUES (?, ?)", (msg_id, json.dumps(dict(record)))
        )

    def purge_records(self) -> list[tuple[str, dict[str, Any]]]:
        """PURGED audit records not yet stored by the log: ``(msg_id, fields)``."""
        rows = self._db.execute("SELECT msg_id, record FROM purges ORDER BY msg_id").fetchall()
        return [(r[0], json.loads(r[1])) for r in rows]

    def drop_purge_record(self, msg_id: str) -> None:
        """The log stored this record."""
        self._db.execute("DELETE FROM purges WHERE msg_id = ?", (msg_id,))

    def applied(self, stream: str) -> int:
        """The last sequence of ``stream`` this store has applied (0: none: rebuild it)."""
        row = self._db.execute("SELECT seq FROM cursors WHERE stream = ?", (stream,)).fetchone()
        return 0 if row is None else int(row["seq"])

    def set_applied(self, stream: str, seq: int) -> None:
        """Record that ``stream`` was applied up to ``seq`` (never moves back)."""
        self._db.execute(
            "INSERT INTO cursors VALUES (?, ?) ON CONFLICT(stream) DO UPDATE SET seq ="
            " max(seq, excluded.seq)",
            (stream, seq),
        )

    def mark(self, stream: str) -> int | None:
        """The first sequence of ``stream`` recorded by :meth:`set_mark`, if any."""
        row = self._db.execute("SELECT first_seq FROM marks WHERE stream = ?", (stream,))
        found = row.fetchone()
        return None if found is None else int(found["first_seq"])

    def set_mark(self, stream: str, first_seq: int) -> None:
        """Record the first sequence of ``stream`` seen now."""
        self._db.execute(
            "INSERT INTO marks VALUES (?, ?) ON CONFLICT(stream) DO UPDATE SET first_seq ="
            " excluded.first_seq",
            (stream, first_seq),
        )

    def deadlines(self, now_ms: int) -> list[DeadlineSummary]:
        """Per priority: open, overdue (as ``relais overdue`` counts) and the next deadline."""
        rows = self._db.execute(
            "SELECT priority,"
            " SUM(CASE WHEN state = 'open' AND deadline_at > ?1 THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN deadline_at <= ?1 THEN 1 ELSE 0 END),"
            " MIN(CASE WHEN state = 'open' AND deadline_at > ?1 THEN deadline_at END)"
            " FROM events e WHERE deadline_at IS NOT NULL AND state IN ('open', 'escalated')"
            " AND NOT EXISTS (SELECT 1 FROM parties p WHERE p.event_id = e.event_id"
            " AND p.state IN ('TAKEN_IN_CHARGE', 'CONCLUDED')) GROUP BY priority",
            (now_ms,),
        ).fetchall()
        return [DeadlineSummary(r[0], int(r[1]), int(r[2]), r[3]) for r in rows]
