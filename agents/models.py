"""What the agent's Python API returns, and the rows its store exchanges with the runtime.

Everything here is metadata (ids, codes, times) except :class:`InboxItem.fields`, the
decrypted content, which only ever exists in memory, on the way to the partner's system.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from relais.schemas.domain import EventType, Priority

__all__ = [
    "Delivery",
    "InboxItem",
    "InboxRecord",
    "InboxState",
    "Notice",
    "NoticeKind",
    "Outgoing",
    "ProgressStep",
    "Readiness",
    "Rung",
    "SentEvent",
    "SentState",
    "Submission",
    "WebhookJob",
]


class SentState(StrEnum):
    """Where an event the partner submitted stands.

    The outbox stores ``queued``, ``published``, ``rejected`` and ``escalated``; the others
    are derived from the recipients' progress the gateway reports (progress notices, see
    :func:`relais.agents.progress.derived_state`).
    """

    QUEUED = "queued"  # sealed and durable in the outbox, not yet stored by the broker
    PUBLISHED = "published"  # stored on the partner's ingress subject
    REJECTED = "rejected"  # the gateway quarantined it (signed rejection, with a reason)
    ROUTED = "routed"  # the gateway delivered it to (some of) its recipients' subjects
    DELIVERED = "delivered"  # every recipient's agent has it
    DECLINED = "declined"  # every recipient declined it (and nobody took it in charge)
    ESCALATED = "escalated"  # not taken in charge in time: released to the fallback
    TAKEN_IN_CHARGE = "taken_in_charge"  # a recipient (or fallback recipient) took it
    CONCLUDED = "concluded"  # a recipient that took it reported its outcome


class InboxState(StrEnum):
    """Where a received event stands at this partner."""

    DELIVERED = "delivered"
    TAKEN_IN_CHARGE = "taken_in_charge"
    DECLINED = "declined"


class NoticeKind(StrEnum):
    """Signed statements of the gateway that reach a partner on its delivery subjects."""

    REJECTION = "rejection"
    ESCALATION_NOTICE = "escalation_notice"
    PROGRESS_NOTICE = "progress_notice"


@dataclass(frozen=True, slots=True)
class Submission:
    """The answer to a submission: the event id and the routing decision it was sealed with."""

    event_id: uuid.UUID
    event_type: EventType
    priority: Priority
    recipients: tuple[str, ...]
    fallback: tuple[str, ...]
    rule: str
    triage: bool
    replayed: bool = False  # an earlier submission with the same idempotency key
    edition: int = 0  # the configuration edition (directory serial) it was sealed under


@dataclass(frozen=True, slots=True)
class ProgressStep:
    """One step of one of our sent events at one recipient, as the gateway reported it."""

    event_id: str
    partner: str
    role: str  # "recipient" or "fallback"
    state: str  # ROUTED, DELIVERED, TAKEN_IN_CHARGE, DECLINED, CONCLUDED, ESCALATED
    at_ms: int
    decline_reason: str | None = None
    outcome: str | None = None
    escalated_to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rung:
    """Where a sent event stands at one recipient: every step reported so far, with times."""

    partner: str
    role: str  # "recipient" or "fallback"
    state: str  # the most advanced step (lowercase), "pending" before the gateway routed it
    routed_at_ms: int | None = None
    delivered_at_ms: int | None = None
    taken_in_charge_at_ms: int | None = None
    declined_at_ms: int | None = None
    decline_reason: str | None = None
    concluded_at_ms: int | None = None
    outcome: str | None = None
    escalated_at_ms: int | None = None
    escalated_to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SentEvent:
    """The state of a submitted event."""

    event_id: uuid.UUID
    event_type: EventType
    priority: Priority
    recipients: tuple[str, ...]
    fallback: tuple[str, ...]
    rule: str
    triage: bool
    state: SentState
    reason: str | None
    created_at_ms: int
    published_at_ms: int | None
    ingress_seq: int | None
    ladder: tuple[Rung, ...] = ()  # one rung per recipient, then per fallback recipient
    edition: int = 0  # the configuration edition it was (last) sealed under


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A sealed event to write to the outbox."""

    event_id: str
    event_type: str
    priority: int
    rule: str
    triage: bool
    recipients: tuple[str, ...]
    fallback: tuple[str, ...]
    envelope: bytes
    created_at_ms: int
    idempotency_key: str | None = None
    request_mac: bytes | None = None
    edition: int = 0  # the configuration edition it was sealed under
    retained: bytes | None = None  # the record, encrypted at rest, for re-sealing


@dataclass(frozen=True, slots=True)
class Delivery:
    """A verified envelope for this partner, to store sealed in the inbox."""

    event_id: str
    event_type: str
    priority: int
    sender: str
    rule: str | None
    escalation: str | None
    envelope: bytes
    stream_seq: int


@dataclass(frozen=True, slots=True)
class InboxRecord:
    """An inbox row as stored: the envelope is still sealed."""

    seq: int
    event_id: str
    event_type: str
    priority: int
    sender: str
    rule: str | None
    escalation: str | None
    envelope: bytes
    received_at_ms: int
    state: InboxState
    decline_reason: str | None
    updated_at_ms: int
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class InboxItem:
    """A received event, decrypted for the partner (only the sections it is entitled to)."""

    seq: int
    event_id: uuid.UUID
    event_type: EventType
    priority: Priority
    sender: str
    rule: str | None
    escalation: str | None
    received_at_ms: int
    created_at_ms: int
    state: InboxState
    decline_reason: str | None
    fields: dict[str, Any] = field(repr=False)
    opened_sections: tuple[str, ...]
    withheld_sections: tuple[str, ...]
    problem: str | None = None  # reason code when the stored envelope cannot be opened now
    outcome: str | None = None  # what this partner reported on the case (receipt outcome)


@dataclass(frozen=True, slots=True)
class Notice:
    """A verified rejection or escalation notice (metadata only)."""

    seq: int
    notice_id: str
    kind: NoticeKind
    event_id: str
    priority: int
    record: dict[str, Any]
    received_at_ms: int


@dataclass(frozen=True, slots=True)
class WebhookJob:
    """One webhook call still to make: an inbox event or a notice."""

    seq: int
    webhook_id: str
    kind: str  # "event" or "notice"
    priority: int
    attempts: int
    next_at_ms: int
    created_at_ms: int

    @property
    def order(self) -> tuple[int, int]:
        """Dispatch order: priority first, then arrival."""
        return (self.priority, self.seq)


@dataclass(frozen=True, slots=True)
class Readiness:
    """What ``/readyz`` reports."""

    keys: bool
    directory: bool
    nats: bool
    # Why the outbox cannot publish right now (e.g. STORAGE_LIMIT: this partner's share of the
    # ingress stream is full); its events stay queued. Does not make the agent unready: it
    # still receives.
    outbox_blocked: str | None = None

    @property
    def ready(self) -> bool:
        """Keys loaded, directory verified and NATS connected."""
        return self.keys and self.directory and self.nats
