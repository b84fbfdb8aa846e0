"""What the pages list, read without decrypting anything: inbox, sent events, notices, health.

The lists show metadata only (type, priority, sender, times, state, deadline), read from the
agent's database (tables documented in :mod:`relais.agents.store`) over a read-only
connection, and from each stored envelope's header (its sender, creation time and expiry,
verified when the envelope was received). Content is decrypted only when a person opens an
event, through :meth:`relais.agents.runtime.Agent.inbox_item`, and that opening is logged.

The directory edition is the one the agent keeps current in its data directory (the cache
it writes on every new edition), verified against the pinned root key; the rules are the
agent's own (its rules file, or the packaged rules): the pages and the agent decide alike.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from relais.agents.keys import read_root_public_key
from relais.agents.settings import AgentSettings
from relais.broker_config.directory import Directory, verify_directory
from relais.broker_config.edition import rules_of
from relais.broker_config.rules import RuleSet, load_rules
from relais.schemas.domain import EventType, PartnerKind, Priority, SecrecyClass
from relais.schemas.envelope import peek_header
from relais.schemas.errors import EnvelopeError, RelaisError

__all__ = ["InboxRow", "Mailbox", "NoticeRow", "SentRow"]

_LIST_LIMIT: Final = 500


@dataclass(frozen=True, slots=True)
class InboxRow:
    """A received event as the inbox lists it (no content)."""

    event_id: str
    event_type: str
    priority: Priority
    sender: str
    state: str
    decline_reason: str | None
    created_at_ms: int | None
    received_at_ms: int
    deadline_ms: int | None  # take in charge before this (while delivered)
    escalation: bool

    def as_json(self) -> dict[str, Any]:
        """For the inbox's refresh (metadata only)."""
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "priority": self.priority.label,
            "sender": self.sender,
            "state": self.state,
            "received_at_ms": self.received_at_ms,
            "deadline_ms": self.deadline_ms,
            "escalation": self.escalation,
        }


@dataclass(frozen=True, slots=True)
class SentRow:
    """An event sent from here (no content)."""

    event_id: str
    event_type: str
    priority: Priority
    recipients: tuple[str, ...]
    fallback: tuple[str, ...]
    state: str
    reason: str | None
    created_at_ms: int
    published_at_ms: int | None


@dataclass(frozen=True, slots=True)
class NoticeRow:
    """A verified statement of the gateway about an event sent from here."""

    kind: str
    event_id: str
    received_at_ms: int
    record: dict[str, Any]


class Mailbox:
    """Read-only views for the pages (see the module docstring)."""

    def __init__(self, settings: AgentSettings) -> None:
        """Views over the data of the agent configured by ``settings``."""
        self._settings = settings
        self._root = read_root_public_key(settings.root_public_key)
        # A local rules file overrides the edition's rules, as it does for the agent.
        self._override = load_rules(settings.rules_file) if settings.rules_file else None
        self._lock = threading.Lock()
        self._directory: Directory | None = None
        self._directory_stamp: tuple[int, int] | None = None
        self._edition_rules: tuple[int, RuleSet] | None = None

    @property
    def rules(self) -> RuleSet:
        """The routing rules the agent uses: those of the edition in force, or its override."""
        if self._override is not None:
            return self._override
        directory = self.directory()
        with self._lock:
            if self._edition_rules is None or self._edition_rules[0] != directory.serial:
                self._edition_rules = (directory.serial, rules_of(directory))
            return self._edition_rules[1]

    # -- directory ---------------------------------------------------------------------------

    def directory(self) -> Directory:
        """The edition the agent uses (re-read when its cache file changes)."""
        with self._lock:
            path = self._settings.directory_cache
            if not path.is_file():
                path = self._settings.directory_file
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if self._directory is None or stamp != self._directory_stamp:
                self._directory = verify_directory(path.read_bytes(), self._root)
                self._directory_stamp = stamp
            return self._directory

    def name_of(self, partner_id: str) -> str:
        """A partner's name as the directory gives it (its id when unknown)."""
        partner = self.directory().get(partner_id)
        return partner_id if partner is None else partner.name

    def kind(self) -> PartnerKind | None:
        """This partner's kind."""
        partner = self.directory().get(self._settings.partner_id)
        return None if partner is None else partner.kind

    def entitled_classes(self) -> tuple[str, ...]:
        """The secrecy classes this partner's kind may read (identity, medical)."""
        kind = self.kind()
        return tuple(c.value for c, kinds in self.rules.secrecy.items() if kind in kinds)

    def needs_second_factor(self) -> bool:
        """This partner may read identity or medical sections: every person needs TOTP."""
        secret = {SecrecyClass.IDENTITY.value, SecrecyClass.MEDICAL.value}
        return bool(secret & set(self.entitled_classes()))

    def may_send(self) -> list[EventType]:
        """The event types whose rule accepts this partner's kind as a sender."""
        kind = self.kind()
        return [t for t, rule in self.rules.by_type.items() if kind in rule.senders]

    # -- agent database ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        uri = f"file:{self._settings.database}?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=10.0)
        try:
            yield db
        finally:
            db.close()

    def inbox(self) -> list[InboxRow]:
        """Received events: those awaiting a decision first (FLASH, URGENT, ROUTINE, oldest
        first within a priority), then those decided, newest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT event_id, event_type, priority, sender, state, decline_reason,"
                " received_at, escalation, rule, envelope FROM inbox"
                " ORDER BY state != 'delivered', priority,"
                " CASE WHEN state = 'delivered' THEN seq ELSE -seq END LIMIT ?",
                (_LIST_LIMIT,),
            ).fetchall()
        return [self._inbox_row(r) for r in rows]

    def _inbox_row(self, row: Sequence[Any]) -> InboxRow:
        event_id, event_type, priority, sender, state, reason, received, escalation = row[:8]
        created = None
        deadline = None
        with contextlib.suppress(EnvelopeError, RelaisError, ValueError):
            created = peek_header(bytes(row[9])).created_at_ms
        rule = self.rules.by_type.get(EventType(event_type))
        if state == "delivered" and rule is not None and rule.deadline_seconds is not None:
            deadline = (created or int(received)) + rule.deadline_seconds * 1000
        return InboxRow(
            event_id=event_id,
            event_type=event_type,
            priority=Priority(priority),
            sender=sender,
            state=state,
            decline_reason=reason,
            created_at_ms=created,
            received_at_ms=int(received),
            deadline_ms=deadline,
            escalation=escalation is not None,
        )

    def inbox_row(self, event_id: str) -> InboxRow | None:
        """One received event's metadata."""
        with self._read() as db:
            row = db.execute(
                "SELECT event_id, event_type, priority, sender, state, decline_reason,"
                " received_at, escalation, rule, envelope FROM inbox WHERE event_id = ?",
                (event_id,),
            ).fetchone()
        return None if row is None else self._inbox_row(row)

    def sent(self, event_id: str | None = None) -> list[SentRow]:
        """Events sent from here, newest first (or the one ``event_id``)."""
        query = (
            "SELECT event_id, event_type, priority, recipients, fallback, state, reason,"
            " created_at, published_at FROM outbox"
        )
        params: tuple[Any, ...] = (_LIST_LIMIT,)
        if event_id is not None:
            query += " WHERE event_id = ?"
            params = (event_id, 1)
        with self._read() as db:
            rows = db.execute(query + " ORDER BY seq DESC LIMIT ?", params).fetchall()
        return [
            SentRow(
                event_id=r[0],
                event_type=r[1],
                priority=Priority(r[2]),
                recipients=tuple(json.loads(r[3])),
                fallback=tuple(json.loads(r[4])),
                state=r[5],
                reason=r[6],
                created_at_ms=int(r[7]),
                published_at_ms=None if r[8] is None else int(r[8]),
            )
            for r in rows
        ]

    def notices(self, event_id: str) -> list[NoticeRow]:
        """The gateway's statements about one event sent from here, oldest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT kind, event_id, received_at, record FROM notices WHERE event_id = ?"
                " ORDER BY seq",
                (event_id,),
            ).fetchall()
        return [NoticeRow(r[0], r[1], int(r[2]), json.loads(r[3])) for r in rows]

    def backlog(self) -> dict[str, int]:
        """Counts for the health page: outbox waiting, unsent receipts, refused deliveries."""
        with self._read() as db:
            queued = db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'queued'")
            receipts = db.execute("SELECT COUNT(*) FROM receipt_entries WHERE statement_id IS NULL")
            counts = {"outbox": int(queued.fetchone()[0]), "receipts": int(receipts.fetchone()[0])}
            counts["refused"] = int(db.execute("SELECT COUNT(*) FROM refused").fetchone()[0])
        return counts
