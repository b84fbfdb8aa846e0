"""From a validated record to a sealed envelope, exactly as the router will check it.

:func:`plan_event` validates the record against its Avro schema, computes its routing
metadata and asks the routing rules (with the signed directory in use) who gets it: the
recipients, the fallback recipients released on escalation, the priority, the département
and, for each secret section, the partners entitled to it. :func:`seal_planned` seals with
exactly that decision, to the key the directory lists for each recipient now, and binds
the edition (directory serial) and rules version it decided with in the header. The router
recomputes the same decision from the header and quarantines any difference, so an agent
never improvises: no rule and no triage desk found means no event (``NO_RULE``), a sender
kind the rule does not allow is refused before sealing (``SENDER_NOT_ALLOWED``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relais.broker_config.directory import Directory, DirectoryKeys
from relais.broker_config.rules import Decision, RuleSet
from relais.schemas.domain import EVENT_TYPES, EventType
from relais.schemas.envelope import LocalIdentity, Recipient, seal
from relais.schemas.errors import EnvelopeError, Reason, RoutingError, SchemaError
from relais.schemas.registry import EventSchema, SchemaRegistry, default_registry

__all__ = ["Plan", "plan_event", "publishable_schema", "seal_planned"]


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated record and the routing decision it will be sealed with."""

    schema: EventSchema
    record: Mapping[str, Any]
    decision: Decision
    recipients: tuple[Recipient, ...]
    fallback: tuple[Recipient, ...]
    partnership: str  # the directory's, bound in the envelope's header
    edition: int = 0  # the configuration edition (directory serial) decided with, bound too

    @property
    def event_type(self) -> EventType:
        """The event type."""
        return self.schema.event_type

    @property
    def audiences(self) -> dict[str, tuple[str, ...]]:
        """Secret sections and the partners entitled to them (empty ones left out)."""
        return {name: who for name, who in self.decision.audiences.items() if who}


def publishable_schema(
    event_type: EventType | str, registry: SchemaRegistry | None = None
) -> EventSchema:
    """The current schema of an event type a partner may publish (not a statement type).

    Raises ``SchemaError(UNKNOWN_TYPE)``.
    """
    try:
        schema = (registry or default_registry()).by_type(event_type)
    except SchemaError as exc:
        raise SchemaError("unknown event type", reason=Reason.UNKNOWN_TYPE) from exc
    if schema.event_type not in EVENT_TYPES:
        raise SchemaError("not an event type", reason=Reason.UNKNOWN_TYPE)
    return schema


def _recipient(keys: DirectoryKeys, partner_id: str, at_ms: int) -> Recipient:
    try:
        key_id, box_pk = keys.box_key(partner_id, at_ms)
    except EnvelopeError as exc:
        raise RoutingError(
            f"recipient {partner_id} has no valid key ({exc.reason.value})", reason=exc.reason
        ) from exc
    return Recipient(partner_id, key_id, box_pk)


def plan_event(
    event_type: EventType | str,
    record: Mapping[str, Any],
    *,
    sender: str,
    directory: Directory,
    rules: RuleSet,
    at_ms: int,
    registry: SchemaRegistry | None = None,
) -> Plan:
    """Validate ``record`` (an Avro datum) and decide its routing.

    Raises ``SchemaError(UNKNOWN_TYPE)``, ``PayloadError`` naming the invalid fields,
    ``RoutingError`` (``NO_RULE``, ``SENDER_NOT_ALLOWED``, or the key reason of a recipient
    the directory lists without a valid key).
    """
    schema = publishable_schema(event_type, registry)
    schema.validate(record)
    routing = schema.routing_metadata(record)
    decision = rules.decide(schema.event_type, routing, sender=sender, directory=directory)
    if not decision.recipients:
        raise RoutingError("no competent recipient and no triage desk", reason=Reason.NO_RULE)
    if not decision.sender_allowed:
        raise RoutingError(
            f"rule {decision.rule_id} does not accept this sender's kind",
            reason=Reason.SENDER_NOT_ALLOWED,
        )
    keys = DirectoryKeys(directory)
    return Plan(
        schema=schema,
        record=record,
        decision=decision,
        recipients=tuple(_recipient(keys, p, at_ms) for p in decision.recipients),
        fallback=tuple(_recipient(keys, p, at_ms) for p in decision.fallback),
        partnership=directory.partnership,
        edition=directory.serial,
    )


def seal_planned(
    plan: Plan,
    *,
    sender: LocalIdentity,
    now_ms: int,
    ttl_ms: int,
    event_id: uuid.UUID | None = None,
    registry: SchemaRegistry | None = None,
) -> bytes:
    """Seal the planned event (raises ``EnvelopeError``, e.g. ``OVERSIZE``)."""
    return seal(
        plan.event_type,
        plan.record,
        sender=sender,
        partnership=plan.partnership,
        edition=plan.edition,
        rules_version=plan.decision.ruleset_version,
        recipients=plan.recipients,
        fallback=plan.fallback,
        departement=plan.decision.departement,
        priority=plan.decision.priority,
        audiences=plan.audiences,
        registry=registry,
        now_ms=now_ms,
        ttl_ms=ttl_ms,
        event_id=event_id,
    )
