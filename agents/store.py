"""The agent's durable state: one SQLite database (WAL, ``synchronous=FULL``).

Nothing in it is plaintext content: envelopes are stored sealed (the outbox holds what the
agent sealed at intake, the inbox what it received, decrypted only when read) and the rest
is ids, codes and times. Tables::

    outbox           seq, event_id (unique), type, priority, rule, recipients, fallback,
                     sealed envelope, state (queued|published|rejected|escalated), reason,
                     created/published times, ingress sequence, idempotency key and keyed
                     request fingerprint
    inbox            seq, event_id (unique), type, priority, sender, rule, escalation id,
                     sealed envelope, state (delivered|taken_in_charge|declined), reason,
                     outcome (what this partner reported on the case)
    notices          seq, notice_id (unique), kind, event_id, metadata record (JSON)
    progress         (event_id, partner, state) unique: the steps of our sent events at
                     their recipients, from progress and escalation notices
    receipt_entries  (event_id, state) unique, decline reason, outcome, time, statement it
                     went in
    statements       signed receipt statements, their Nats-Msg-Id, published time
    webhooks         webhook_id (unique), kind, priority, state, attempts, next attempt
    refused          deliveries refused for good: stream sequence, event id, reason code
    purges           what each retention purge forgot: store, count, up-to time (metadata)
    restored         after a restore from a backup, per delivery priority, the last stream
                     sequence the lost state had acknowledged (:mod:`relais.agents.backup`)

Every change that must be atomic is one transaction (one fsync): a batch of deliveries, their
``DELIVERED`` receipt entries and webhook jobs; a take-charge and its receipt entry; a batch
of submissions. :class:`AgentStore` is synchronous and used from one thread only;
:class:`~relais.agents.database.Database` runs it on a dedicated thread for the event loop.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from relais.agents.models import (
    Delivery,
    InboxRecord,
    InboxState,
    Notice,
    NoticeKind,
    Outgoing,
    ProgressStep,
    SentState,
    WebhookJob,
)
from relais.agents.retention import Cutoffs, PurgeCounts, purge_rows
from relais.schemas.errors import ConfigError

__all__ = ["AgentStore", "NoticeIn", "OutboxRow", "StoredBatch"]

_SCHEMA_VERSION: Final = 2
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  event_id TEXT NOT NULL UNIQUE,
  event_type TEXT NOT NULL,
  priority INTEGER NOT NULL,
  rule TEXT NOT NULL,
  triage INTEGER NOT NULL,
  recipients TEXT NOT NULL,
  fallback TEXT NOT NULL,
  envelope BLOB NOT NULL,
  state TEXT NOT NULL,
  reason TEXT,
  created_at INTEGER NOT NULL,
  published_at INTEGER,
  ingress_seq INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0,
  idempotency_key TEXT UNIQUE,
  request_mac BLOB,
  edition INTEGER,
  msg_id TEXT,
  retained BLOB
);
CREATE INDEX IF NOT EXISTS outbox_queue ON outbox(priority, seq) WHERE state = 'queued';
CREATE TABLE IF NOT EXISTS inbox(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  event_id TEXT NOT NULL UNIQUE,
  event_type TEXT NOT NULL,
  priority INTEGER NOT NULL,
  sender TEXT NOT NULL,
  rule TEXT,
  escalation TEXT,
  envelope BLOB NOT NULL,
  stream_seq INTEGER,
  received_at INTEGER NOT NULL,
  state TEXT NOT NULL,
  decline_reason TEXT,
  updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_state ON inbox(state, seq);
CREATE TABLE IF NOT EXISTS notices(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  notice_id TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL,
  event_id TEXT NOT NULL,
  priority INTEGER NOT NULL,
  record TEXT NOT NULL,
  received_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS statements(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  msg_id TEXT NOT NULL,
  data BLOB NOT NULL,
  created_at INTEGER NOT NULL,
  published_at INTEGER
);
CREATE TABLE IF NOT EXISTS receipt_entries(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  event_id TEXT NOT NULL,
  state TEXT NOT NULL,
  decline_reason TEXT,
  at INTEGER NOT NULL,
  statement_id INTEGER REFERENCES statements(id),
  UNIQUE(event_id, state)
);
CREATE TABLE IF NOT EXISTS progress(
  event_id TEXT NOT NULL,
  partner TEXT NOT NULL,
  role TEXT NOT NULL,
  state TEXT NOT NULL,
  decline_reason TEXT,
  outcome TEXT,
  escalated_to TEXT NOT NULL,
  at INTEGER NOT NULL,
  notice_id TEXT NOT NULL,
  PRIMARY KEY(event_id, partner, state)
);
CREATE INDEX IF NOT EXISTS receipt_pending ON receipt_entries(id) WHERE statement_id IS NULL;
CREATE TABLE IF NOT EXISTS webhooks(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  webhook_id TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL,
  priority INTEGER NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_at INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  sent_at INTEGER,
  last_status INTEGER
);
CREATE INDEX IF NOT EXISTS webhooks_pending ON webhooks(priority, seq) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS refused(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  stream_seq INTEGER,
  event_id TEXT,
  priority INTEGER NOT NULL,
  reason TEXT NOT NULL,
  at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS purges(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  store TEXT NOT NULL,
  count INTEGER NOT NULL,
  up_to INTEGER NOT NULL,
  at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS restored(
  priority INTEGER PRIMARY KEY,
  acked_seq INTEGER NOT NULL
);
"""
# Columns added by schema version 2 (a version 1 database gets them when opened).
_ADDED_COLUMNS: Final = (
    ("inbox", "outcome"),
    ("receipt_entries", "outcome"),
    # the configuration edition an event was sealed under, the Nats-Msg-Id of its last
    # sealing, and its record kept encrypted for re-sealing (agents.reseal)
    ("outbox", "edition"),
    ("outbox", "msg_id"),
    ("outbox", "retained"),
)
_OUTBOX_COLUMNS: Final = (
    "event_id, event_type, priority, rule, triage, recipients, fallback, state, reason, "
    "created_at, published_at, ingress_seq, edition"
)
_INBOX_COLUMNS: Final = (
    "seq, event_id, event_type, priority, sender, rule, escalation, envelope, received_at, "
    "state, decline_reason, updated_at, outcome"
)
# Column lists are constants of this module: the f-strings below never hold input (S608).
_WEBHOOK_COLUMNS: Final = "seq, webhook_id, kind, priority, attempts, next_at, created_at"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An outbox row without its envelope (what ``GET /v1/events/{id}`` shows)."""

    event_id: str
    event_type: str
    priority: int
    rule: str
    triage: bool
    recipients: tuple[str, ...]
    fallback: tuple[str, ...]
    state: SentState
    reason: str | None
    created_at_ms: int
    published_at_ms: int | None
    ingress_seq: int | None
    edition: int = 0  # the configuration edition it was (last) sealed under


@dataclass(frozen=True, slots=True)
class NoticeIn:
    """A verified statement of the gateway, to record."""

    notice_id: str
    kind: NoticeKind
    event_id: str
    priority: int
    record: dict[str, Any]
    outbox_state: SentState | None  # what it makes of one of our own sent events
    reason: str | None = None
    steps: tuple[ProgressStep, ...] = ()  # progress of our sent events it reports


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """What :meth:`AgentStore.record_batch` changed."""

    new_events: tuple[str, ...]
    new_notices: tuple[str, ...]
    webhook_jobs: tuple[WebhookJob, ...]


def _outbox_row(row: Sequence[Any]) -> OutboxRow:
    return OutboxRow(
        event_id=row[0],
        event_type=row[1],
        priority=row[2],
        rule=row[3],
        triage=bool(row[4]),
        recipients=tuple(json.loads(row[5])),
        fallback=tuple(json.loads(row[6])),
        state=SentState(row[7]),
        reason=row[8],
        created_at_ms=row[9],
        published_at_ms=row[10],
        ingress_seq=row[11],
        edition=int(row[12] or 0),
    )


def _inbox_record(row: Sequence[Any]) -> InboxRecord:
    return InboxRecord(
        seq=row[0],
        event_id=row[1],
        event_type=row[2],
        priority=row[3],
        sender=row[4],
        rule=row[5],
        escalation=row[6],
        envelope=bytes(row[7]),
        received_at_ms=row[8],
        state=InboxState(row[9]),
        decline_reason=row[10],
        updated_at_ms=row[11],
        outcome=row[12],
    )


def _webhook_job(row: Sequence[Any]) -> WebhookJob:
    return WebhookJob(*row)


class AgentStore:
    """Synchronous access to the agent's database (one thread at a time)."""

    def __init__(self, path: Path) -> None:
        """Open (creating if needed) the database at ``path``; the directory is made 0700."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise ConfigError(f"agent database {path} is from a newer version")
            self._db.executescript(_SCHEMA)
            self._add_columns()
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the agent database {path}: {exc}") from exc
        path.chmod(0o600)

    def _add_columns(self) -> None:
        for table, column in _ADDED_COLUMNS:
            known = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in known:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")

    def close(self) -> None:
        """Close the connection (a WAL checkpoint happens on the last close)."""
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- outbox ------------------------------------------------------------------------------

    def find_idempotent(self, key: str) -> tuple[OutboxRow, bytes | None] | None:
        """The submission made earlier with ``key``, and its request fingerprint."""
        row = self._db.execute(
            f"SELECT {_OUTBOX_COLUMNS}, request_mac FROM outbox WHERE idempotency_key = ?",  # noqa: S608
            (key,),
        ).fetchone()
        return None if row is None else (_outbox_row(row), row[13])

    def insert_outgoing(self, batch: Sequence[Outgoing]) -> list[tuple[OutboxRow, bytes | None]]:
        """Write sealed events in one transaction; per item, the row that answers it.

        An item whose idempotency key is already known is not written: the earlier row
        (and its fingerprint, for the caller to compare) answers it.
        """
        out: list[tuple[OutboxRow, bytes | None]] = []
        with self._tx() as db:
            for item in batch:
                if item.idempotency_key is not None:
                    earlier = self.find_idempotent(item.idempotency_key)
                    if earlier is not None:
                        out.append(earlier)
                        continue
                db.execute(
                    "INSERT INTO outbox(event_id, event_type, priority, rule, triage, recipients,"
                    " fallback, envelope, state, created_at, idempotency_key, request_mac,"
                    " edition, retained) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        item.event_id,
                        item.event_type,
                        item.priority,
                        item.rule,
                        int(item.triage),
                        json.dumps(list(item.recipients)),
                        json.dumps(list(item.fallback)),
                        item.envelope,
                        SentState.QUEUED.value,
                        item.created_at_ms,
                        item.idempotency_key,
                        item.request_mac,
                        item.edition,
                        item.retained,
                    ),
                )
                row = self.sent(item.event_id)
                assert row is not None  # just inserted, same transaction
                out.append((row, item.request_mac))
        return out

    def queued(self, limit: int) -> list[tuple[str, str, int, bytes, str]]:
        """``(event_id, event_type, priority, envelope, msg id)`` still to publish, FLASH
        first; the Nats-Msg-Id is the event id, ``<event id>:e<edition>`` once re-sealed."""
        rows = self._db.execute(
            "SELECT event_id, event_type, priority, envelope, msg_id FROM outbox"
            " WHERE state = 'queued' ORDER BY priority, seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [(r[0], r[1], r[2], bytes(r[3]), r[4] or r[0]) for r in rows]

    def count_queued(self) -> int:
        """How many events wait for the broker."""
        return int(
            self._db.execute("SELECT COUNT(*) FROM outbox WHERE state='queued'").fetchone()[0]
        )

    def mark_published(self, acks: Sequence[tuple[str, int]], at_ms: int) -> None:
        """Record the broker's acknowledgements ``(event_id, ingress sequence)``."""
        with self._tx() as db:
            db.executemany(
                "UPDATE outbox SET state = 'published', published_at = ?, ingress_seq = ?,"
                " attempts = attempts + 1 WHERE event_id = ? AND state = 'queued'",
                [(at_ms, seq, event_id) for event_id, seq in acks],
            )

    # -- re-sealing (agents.reseal) -----------------------------------------------------------

    def retained(self, event_id: str) -> tuple[OutboxRow, bytes | None] | None:
        """A sent event's row and its record kept for re-sealing (``None``: purged)."""
        row = self._db.execute(
            f"SELECT {_OUTBOX_COLUMNS}, retained FROM outbox WHERE event_id = ?",  # noqa: S608
            (event_id,),
        ).fetchone()
        return None if row is None else (_outbox_row(row), row[13])

    def reseal(self, event_id: str, resealed: Outgoing, msg_id: str, *, from_seq: int) -> bool:
        """Queue ``resealed`` in place of the event's envelope (same event id, a new
        Nats-Msg-Id), if the row still holds the publish ``from_seq`` was refused for."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE outbox SET envelope = ?, edition = ?, rule = ?, triage = ?,"
                " recipients = ?, fallback = ?, priority = ?, msg_id = ?, state = 'queued',"
                " reason = NULL WHERE event_id = ? AND ingress_seq IS ?",
                (
                    resealed.envelope,
                    resealed.edition,
                    resealed.rule,
                    int(resealed.triage),
                    json.dumps(list(resealed.recipients)),
                    json.dumps(list(resealed.fallback)),
                    resealed.priority,
                    msg_id,
                    event_id,
                    from_seq,
                ),
            )
            return bool(cursor.rowcount)

    def forget_retained(self, before_ms: int) -> int:
        """Drop the records kept for re-sealing of events created before ``before_ms``."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE outbox SET retained = NULL WHERE retained IS NOT NULL AND created_at < ?",
                (before_ms,),
            )
            return cursor.rowcount

    def sent(self, event_id: str) -> OutboxRow | None:
        """The outbox row of a submitted event."""
        row = self._db.execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE event_id = ?",  # noqa: S608
            (event_id,),
        ).fetchone()
        return None if row is None else _outbox_row(row)

    # -- inbox, notices, refusals ------------------------------------------------------------

    def record_batch(
        self,
        deliveries: Sequence[Delivery],
        notices: Sequence[NoticeIn],
        refused: Sequence[tuple[int | None, str | None, int, str]],
        *,
        at_ms: int,
        webhooks: bool,
    ) -> StoredBatch:
        """One pull batch in one transaction: inbox rows and their ``DELIVERED`` receipt
        entries, notices (and what they make of our sent events), webhook jobs, refusals.

        Idempotent: an event or notice already stored is left as it is (redelivery).
        """
        new_events: list[str] = []
        new_notices: list[str] = []
        jobs: list[WebhookJob] = []
        with self._tx() as db:
            for d in deliveries:
                # Acknowledged by the state a restore replaced: its receipt and webhook went.
                recovered = self._handled_before_restore(d)
                if self._add_delivery(d, at_ms, receipt=not recovered):
                    new_events.append(d.event_id)
                    if webhooks and not recovered:
                        jobs.append(self._add_job(d.event_id, "event", d.priority, at_ms))
            for n in notices:
                if self._add_notice(n, at_ms):
                    new_notices.append(n.notice_id)
                    if webhooks:
                        jobs.append(self._add_job(n.notice_id, "notice", n.priority, at_ms))
            db.executemany(
                "INSERT INTO refused(stream_seq, event_id, priority, reason, at)"
                " VALUES (?,?,?,?,?)",
                [(*r, at_ms) for r in refused],
            )
        return StoredBatch(tuple(new_events), tuple(new_notices), tuple(jobs))

    def _handled_before_restore(self, d: Delivery) -> bool:
        row = self._db.execute(
            "SELECT acked_seq FROM restored WHERE priority = ?", (d.priority,)
        ).fetchone()
        return row is not None and 0 < d.stream_seq <= int(row[0])

    def _add_delivery(self, d: Delivery, at_ms: int, *, receipt: bool = True) -> bool:
        """The inbox row and its ``DELIVERED`` receipt entry; False when already there."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO inbox(event_id, event_type, priority, sender, rule,"
            " escalation, envelope, stream_seq, received_at, state, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                d.event_id,
                d.event_type,
                d.priority,
                d.sender,
                d.rule,
                d.escalation,
                d.envelope,
                d.stream_seq,
                at_ms,
                InboxState.DELIVERED.value,
                at_ms,
            ),
        )
        if receipt:
            self._add_entry(d.event_id, "DELIVERED", None, at_ms)
        return bool(cursor.rowcount)

    def _add_entry(
        self, event_id: str, state: str, reason: str | None, at_ms: int, outcome: str | None = None
    ) -> bool:
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO receipt_entries(event_id, state, decline_reason, at, outcome)"
            " VALUES (?,?,?,?,?)",
            (event_id, state, reason, at_ms, outcome),
        )
        return bool(cursor.rowcount)

    def _add_job(self, webhook_id: str, kind: str, priority: int, at_ms: int) -> WebhookJob:
        self._db.execute(
            "INSERT OR IGNORE INTO webhooks(webhook_id, kind, priority, state, next_at,"
            " created_at) VALUES (?,?,?,'pending',?,?)",
            (webhook_id, kind, priority, at_ms, at_ms),
        )
        row = self._db.execute(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE webhook_id = ?",  # noqa: S608
            (webhook_id,),
        ).fetchone()
        return _webhook_job(row)

    def _add_notice(self, notice: NoticeIn, at_ms: int) -> bool:
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO notices(notice_id, kind, event_id, priority, record,"
            " received_at) VALUES (?,?,?,?,?,?)",
            (
                notice.notice_id,
                notice.kind.value,
                notice.event_id,
                notice.priority,
                json.dumps(notice.record, sort_keys=True),
                at_ms,
            ),
        )
        if notice.outbox_state is SentState.REJECTED:
            self._db.execute(
                "UPDATE outbox SET state = 'rejected', reason = ? WHERE event_id = ?",
                (notice.reason, notice.event_id),
            )
        elif notice.outbox_state is SentState.ESCALATED:
            self._db.execute(
                "UPDATE outbox SET state = 'escalated' WHERE event_id = ?"
                " AND state IN ('queued', 'published')",
                (notice.event_id,),
            )
        self._db.executemany(
            "INSERT OR IGNORE INTO progress(event_id, partner, role, state, decline_reason,"
            " outcome, escalated_to, at, notice_id) VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (
                    step.event_id,
                    step.partner,
                    step.role,
                    step.state,
                    step.decline_reason,
                    step.outcome,
                    json.dumps(list(step.escalated_to)),
                    step.at_ms,
                    notice.notice_id,
                )
                for step in notice.steps
            ],
        )
        return bool(cursor.rowcount)

    def progress(self, event_id: str) -> list[ProgressStep]:
        """The steps the gateway reported for one of our sent events."""
        rows = self._db.execute(
            "SELECT event_id, partner, role, state, at, decline_reason, outcome, escalated_to"
            " FROM progress WHERE event_id = ? ORDER BY at, partner",
            (event_id,),
        ).fetchall()
        return [
            ProgressStep(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(json.loads(r[7])))
            for r in rows
        ]

    def inbox_record(self, event_id: str) -> InboxRecord | None:
        """One inbox row (envelope sealed)."""
        row = self._db.execute(
            f"SELECT {_INBOX_COLUMNS} FROM inbox WHERE event_id = ?",  # noqa: S608
            (event_id,),
        ).fetchone()
        return None if row is None else _inbox_record(row)

    def inbox_records(
        self, *, state: InboxState | None, after: int, limit: int
    ) -> list[InboxRecord]:
        """Inbox rows after ``after`` (a row ``seq``), oldest first."""
        query = f"SELECT {_INBOX_COLUMNS} FROM inbox WHERE seq > ?"  # noqa: S608
        params: list[Any] = [after]
        if state is not None:
            query += " AND state = ?"
            params.append(state.value)
        rows = self._db.execute(query + " ORDER BY seq LIMIT ?", (*params, limit)).fetchall()
        return [_inbox_record(r) for r in rows]

    def act(
        self,
        event_id: str,
        state: InboxState,
        reason: str | None,
        at_ms: int,
        outcome: str | None = None,
    ) -> InboxRecord | None:
        """Move a delivered event to ``state`` and record its receipt entry, atomically.

        Returns the row as it is afterwards (``None``: unknown event). The caller compares:
        a row already in ``state`` is an idempotent repeat, another final state a conflict.
        """
        with self._tx() as db:
            record = self.inbox_record(event_id)
            if record is None or record.state is not InboxState.DELIVERED:
                return record
            db.execute(
                "UPDATE inbox SET state = ?, decline_reason = ?, outcome = ?, updated_at = ?"
                " WHERE event_id = ?",
                (state.value, reason, outcome, at_ms, event_id),
            )
            self._add_entry(event_id, state.value.upper(), reason, at_ms, outcome)
        return self.inbox_record(event_id)

    def conclude(self, event_id: str, outcome: str, at_ms: int) -> InboxRecord | None:
        """Record the outcome of an event taken in charge, and its ``CONCLUDED`` entry.

        Returns the row as it is afterwards (``None``: unknown event); the caller compares
        (not taken in charge, or concluded with another outcome: a conflict).
        """
        with self._tx() as db:
            record = self.inbox_record(event_id)
            if record is None or record.state is not InboxState.TAKEN_IN_CHARGE:
                return record
            if self._add_entry(event_id, "CONCLUDED", None, at_ms, outcome):
                db.execute(
                    "UPDATE inbox SET outcome = ?, updated_at = ? WHERE event_id = ?",
                    (outcome, at_ms, event_id),
                )
        return self.inbox_record(event_id)

    def notices(self, *, after: int, limit: int) -> list[Notice]:
        """Recorded notices after ``after`` (a notice ``seq``), oldest first."""
        rows = self._db.execute(
            "SELECT seq, notice_id, kind, event_id, priority, record, received_at FROM notices"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [self._notice(r) for r in rows]

    def notice(self, notice_id: str) -> Notice | None:
        """One notice by id."""
        row = self._db.execute(
            "SELECT seq, notice_id, kind, event_id, priority, record, received_at FROM notices"
            " WHERE notice_id = ?",
            (notice_id,),
        ).fetchone()
        return None if row is None else self._notice(row)

    @staticmethod
    def _notice(row: Sequence[Any]) -> Notice:
        return Notice(
            row[0], row[1], NoticeKind(row[2]), row[3], row[4], json.loads(row[5]), row[6]
        )

    # -- receipts ----------------------------------------------------------------------------

    def pending_entries(
        self, limit: int
    ) -> list[tuple[int, str, str, str | None, int, str | None]]:
        """``(id, event_id, state, decline_reason, at, outcome)`` not yet in a statement,
        in order."""
        rows = self._db.execute(
            "SELECT id, event_id, state, decline_reason, at, outcome FROM receipt_entries"
            " WHERE statement_id IS NULL ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def save_statement(
        self, entry_ids: Sequence[int], data: bytes, msg_id: str, at_ms: int
    ) -> None:
        """Keep a signed statement and attach its entries (re-sent as is after a crash)."""
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO statements(msg_id, data, created_at) VALUES (?,?,?)",
                (msg_id, data, at_ms),
            )
            db.executemany(
                "UPDATE receipt_entries SET statement_id = ? WHERE id = ?",
                [(cursor.lastrowid, i) for i in entry_ids],
            )

    def unpublished_statements(self) -> list[tuple[int, str, bytes]]:
        """``(id, msg_id, data)`` of statements the broker has not acknowledged yet."""
        rows = self._db.execute(
            "SELECT id, msg_id, data FROM statements WHERE published_at IS NULL ORDER BY id"
        ).fetchall()
        return [(r[0], r[1], bytes(r[2])) for r in rows]

    def mark_statements_published(self, ids: Sequence[int], at_ms: int) -> None:
        """Record the broker's acknowledgement of statements."""
        with self._tx() as db:
            db.executemany(
                "UPDATE statements SET published_at = ? WHERE id = ?", [(at_ms, i) for i in ids]
            )

    # -- webhooks ----------------------------------------------------------------------------

    def pending_webhooks(self) -> list[WebhookJob]:
        """Every webhook call still to make, in dispatch order."""
        rows = self._db.execute(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE state = 'pending'"  # noqa: S608
            " ORDER BY priority, seq"
        ).fetchall()
        return [_webhook_job(r) for r in rows]

    def count_pending_webhooks(self) -> int:
        """How many webhook calls wait."""
        row = self._db.execute("SELECT COUNT(*) FROM webhooks WHERE state = 'pending'").fetchone()
        return int(row[0])

    def webhooks_done(self, done: Sequence[tuple[str, int, int]]) -> None:
        """Calls the partner's system accepted: ``(webhook_id, status, at_ms)``."""
        with self._tx() as db:
            db.executemany(
                "UPDATE webhooks SET state = 'sent', sent_at = ?, attempts = attempts + 1,"
                " last_status = ? WHERE webhook_id = ?",
                [(at_ms, status, webhook_id) for webhook_id, status, at_ms in done],
            )

    def webhook_retry(
        self, webhook_id: str, status: int | None, next_at_ms: int, *, give_up: bool
    ) -> None:
        """A failed call: try again at ``next_at_ms``, or give up (the inbox keeps the event)."""
        with self._tx() as db:
            db.execute(
                "UPDATE webhooks SET attempts = attempts + 1, last_status = ?, next_at = ?,"
                " state = ? WHERE webhook_id = ?",
                (status, next_at_ms, "failed" if give_up else "pending", webhook_id),
            )

    def refused_count(self) -> int:
        """How many deliveries were refused for good."""
        return int(self._db.execute("SELECT COUNT(*) FROM refused").fetchone()[0])

    # -- retention and restore ---------------------------------------------------------------

    def purge(self, limits: Cutoffs, at_ms: int) -> PurgeCounts:
        """Forget the rows past ``limits`` in one transaction (:mod:`relais.agents.retention`)."""
        with self._tx() as db:
            return purge_rows(db, limits, at_ms)

    def set_restored(self, acked: Mapping[int, int]) -> None:
        """After a restore: per priority, the last stream sequence the lost state acked."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO restored VALUES (?, ?) ON CONFLICT(priority) DO UPDATE"
                " SET acked_seq = MAX(acked_seq, excluded.acked_seq)",
                list(acked.items()),
            )
