"""Messages the gateway puts on ``DELIVERY`` (protocol §7.1): envelope copies and statements.

Headers carry ids and codes only: ``Nats-Msg-Id`` (``<event id>:<partner>`` for an envelope
copy, ``<statement id>:<partner>`` for a statement), ``Relais-Event-Id``, ``Relais-Type``,
``Relais-Rule`` and, on an envelope released to a fallback recipient, ``Relais-Escalation``.
Copies stored through an atomic batch (:func:`~relais.gateway.jetstream.publish_many`, the
router under load) also keep nats-server's ``Nats-Batch-Id`` (random), ``Nats-Batch-Sequence``
and, on the last one, ``Nats-Batch-Commit``.

Statement ids (rejection, escalation notice) are derived from what they are about
(:func:`statement_id`), so a statement re-signed after a crash carries the same id and the
broker's duplicate window stores it once. A progress notice (:mod:`~relais.gateway.progress`)
may be about several events: it has no ``Relais-Event-Id`` then.
"""

from __future__ import annotations

import uuid
from typing import Final

from relais.broker_config.connection import Connection
from relais.gateway.jetstream import Outgoing, Published, publish
from relais.schemas.domain import EventType, Priority
from relais.schemas.names import H_ESCALATION, H_EVENT_ID, H_RULE, H_TYPE, delivery_subject

__all__ = [
    "H_ESCALATION",
    "H_EVENT_ID",
    "H_RULE",
    "H_TYPE",
    "copy_message",
    "delivery_subject",
    "publish_copy",
    "publish_statement",
    "statement_id",
]

# A fixed namespace for the name-based (v5) ids of the gateway's statements.
_NAMESPACE: Final = uuid.UUID("5f0c8e1e-5a8b-4d55-9a52-2b8f3d6a7c10")


def statement_id(kind: str, *parts: object) -> uuid.UUID:
    """A stable id for the statement of ``kind`` about ``parts`` (UUID version 5)."""
    return uuid.uuid5(_NAMESPACE, "/".join((kind, *(str(p) for p in parts))))


def copy_message(
    envelope: bytes,
    *,
    partner: str,
    priority: Priority,
    event_id: uuid.UUID,
    event_type: EventType,
    rule: str,
    escalation: uuid.UUID | None = None,
) -> Outgoing:
    """The copy of an envelope for ``partner`` (deduplicated on ``<event id>:<partner>``)."""
    headers = {H_EVENT_ID: str(event_id), H_TYPE: event_type.value, H_RULE: rule}
    if escalation is not None:
        headers[H_ESCALATION] = str(escalation)
    return Outgoing(
        delivery_subject(partner, priority),
        envelope,
        msg_id=f"{event_id}:{partner}",
        headers=headers,
    )


async def publish_copy(
    conn: Connection,
    envelope: bytes,
    *,
    partner: str,
    priority: Priority,
    event_id: uuid.UUID,
    event_type: EventType,
    rule: str,
    escalation: uuid.UUID | None = None,
) -> Published:
    """Publish one copy (:func:`copy_message`) and wait for its acknowledgement."""
    copy = copy_message(
        envelope,
        partner=partner,
        priority=priority,
        event_id=event_id,
        event_type=event_type,
        rule=rule,
        escalation=escalation,
    )
    return await publish(conn, copy.subject, copy.payload, msg_id=copy.msg_id, headers=copy.headers)


async def publish_statement(
    conn: Connection,
    statement: bytes,
    *,
    partner: str,
    priority: Priority,
    statement_uuid: uuid.UUID,
    statement_type: EventType,
    event_id: uuid.UUID | None,
    rule: str | None = None,
) -> Published:
    """A signed statement about ``event_id`` for ``partner`` (deduplicated on its id).

    ``event_id`` is ``None`` for a statement about several events (a progress notice):
    then no ``Relais-Event-Id`` header.
    """
    headers = {H_TYPE: statement_type.value}
    if event_id is not None:
        headers[H_EVENT_ID] = str(event_id)
    if rule is not None:
        headers[H_RULE] = rule
    return await publish(
        conn,
        delivery_subject(partner, priority),
        statement,
        msg_id=f"{statement_uuid}:{partner}",
        headers=headers,
    )
