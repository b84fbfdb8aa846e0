"""Reading the inbox: stored envelopes are decrypted only when read.

The inbox keeps what the broker delivered, sealed. Reading an event (``GET /v1/inbox``, a
webhook body) opens it again with the key the header names for this partner: the sections
this partner is entitled to are decrypted, the others are reported as withheld (it holds
no key for them). The stored bytes are verified again, against the signing key the signed
directory lists for the sender (even if revoked or expired since the event was received)
and with the times as at creation, so an old event stays readable and a tampered database
row does not open.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import structlog

from relais.agents.directory_watch import DirectoryView
from relais.agents.keyring import Keyring
from relais.agents.models import InboxItem, InboxRecord
from relais.schemas.domain import EventType, Priority
from relais.schemas.envelope import open_envelope, peek_header
from relais.schemas.errors import EnvelopeError, Reason
from relais.schemas.registry import default_registry

__all__ = ["CONCLUSIONS", "DECLINE_REASONS", "OUTCOMES", "open_stored"]

_log = structlog.get_logger(__name__)


def _entry_enum(name: str) -> tuple[str, ...]:
    entries = default_registry().by_type(EventType.RECEIPT).field_types["entries"]
    found = next(f for f in entries["items"]["fields"] if f["name"] == name)
    enum = next(branch for branch in found["type"] if branch != "null")
    return tuple(enum["symbols"])


#: Why a partner may decline an event (``DeclineReason`` of the receipt schema).
DECLINE_REASONS: Final[tuple[str, ...]] = _entry_enum("decline_reason")
#: What a partner may report on a case (``CaseOutcome`` of the receipt schema).
OUTCOMES: Final[tuple[str, ...]] = _entry_enum("outcome")
#: The outcomes that conclude a case (all but ``ASSESSMENT_UNDER_WAY``).
CONCLUSIONS: Final[tuple[str, ...]] = tuple(o for o in OUTCOMES if o != "ASSESSMENT_UNDER_WAY")


def open_stored(record: InboxRecord, *, keyring: Keyring, view: DirectoryView) -> InboxItem:
    """Decrypt a stored envelope for ``keyring``'s partner (``problem`` set on failure)."""
    header = peek_header(record.envelope)
    fields: dict[str, Any] = {}
    opened: tuple[str, ...] = ()
    withheld = tuple(s.name for s in header.sections)
    problem = None
    me = keyring.partner_id
    ref = next((r for r in (*header.recipients, *header.fallback) if r.partner_id == me), None)
    try:
        if ref is None:
            raise EnvelopeError(Reason.NOT_A_RECIPIENT)
        identity = keyring.by_key_id(ref.key_id)
        if identity is None:
            raise EnvelopeError(Reason.UNKNOWN_KEY)  # the key file was removed
        result = open_envelope(
            record.envelope, recipient=identity, keys=view.historic, now_ms=header.created_at_ms
        )
        fields, opened, withheld = result.fields, result.opened_sections, result.withheld_sections
    except EnvelopeError as exc:
        problem = exc.reason.value
        _log.error("agent.inbox_unreadable", event_id=record.event_id, reason=problem)
    return InboxItem(
        seq=record.seq,
        event_id=uuid.UUID(record.event_id),
        event_type=EventType(record.event_type),
        priority=Priority(record.priority),
        sender=record.sender,
        rule=record.rule,
        escalation=record.escalation,
        received_at_ms=record.received_at_ms,
        created_at_ms=header.created_at_ms,
        state=record.state,
        decline_reason=record.decline_reason,
        fields=fields,
        opened_sections=opened,
        withheld_sections=withheld,
        problem=problem,
        outcome=record.outcome,
    )
