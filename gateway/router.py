"""The router: policy enforcement between a sender's ingress and its recipients' deliveries.

Several router processes share the durable ``router`` consumer on ``INGRESS`` and pull it in
batches. For each message, cheapest checks first, the outcome is a value (:class:`Routed`
or :class:`Quarantined`), never an exception:

1. the authenticated sender is the ``<id>`` of the subject ``ref.in.<id>`` (NATS lets a
   partner publish only there);
2. :func:`~relais.schemas.envelope.verify_envelope` against the current directory
   (framing, schema, times, the sender's key, signature, digests): its reason code;
3. the signer is that sender (``SIGNER_NOT_INGRESS_IDENTITY``);
4. not older than the maximum age (``STALE``; the future is ``FROM_FUTURE`` in step 2);
5. the rules, on the header's routing metadata: sender kind allowed
   (``SENDER_NOT_ALLOWED``), recipients and fallback exactly the rules' and sealed to keys
   the directory lists as valid (``RECIPIENTS_NOT_RULES``), priority
   (``PRIORITY_NOT_RULES``), département (``DEPARTEMENT_NOT_RULES``), each secret section's
   audience within the entitled partners (``AUDIENCE_NOT_ENTITLED``);
6. replay: the event id is claimed in the shared replay store
   (:class:`~relais.gateway.replay.SeenStore`); a redelivery of the same ingress message is
   not a replay, another ingress message with the same id is (``REPLAY``).

Routed: one copy per recipient on ``ref.out.<r>.<PRIORITY>`` (``Nats-Msg-Id:
<event id>:<r>``; fallback recipients get nothing now: the tracker releases the envelope
to them if the deadline passes), then the ``ROUTED`` audit record
(``<event id>:routed``), then the ack. Quarantined: the original bytes on
``ref.quar.<REASON>``, the ``QUARANTINED`` audit record, a rejection signed by the gateway
for the authenticated sender (``URGENT``), then the ack (all keyed by the ingress
sequence). Every step is idempotent, so a router killed at any point leaves a message that
another router (or the same, restarted) completes without duplicating anything. An
unexpected failure naks the message with a delay: it is retried, never dropped.

The router holds no content key and never decrypts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from nats.aio.msg import Msg

from relais.broker_config.connection import Connection
from relais.broker_config.rules import Decision
from relais.gateway.audit import AuditKind, append_record
from relais.gateway.delivery import publish_copy, publish_statement, statement_id
from relais.gateway.jetstream import publish
from relais.gateway.metrics import ROUTER_EVENTS, ROUTER_SECONDS
from relais.gateway.policy import Policy
from relais.gateway.replay import SeenStore
from relais.schemas.domain import PARTNER_ID_RE, EventType, Priority
from relais.schemas.envelope import (
    DEFAULT_SKEW_MS,
    EnvelopeHeader,
    LocalIdentity,
    RecipientRef,
    VerifiedEnvelope,
    peek_header,
    verify_envelope,
)
from relais.schemas.errors import EnvelopeError, Reason, RelaisError
from relais.schemas.registry import MAIN_SECTION
from relais.schemas.statements import sign_statement

__all__ = [
    "INGRESS_STREAM",
    "ROUTER_CONSUMER",
    "Admitted",
    "Outcome",
    "Quarantined",
    "Refused",
    "Routed",
    "Router",
    "RouterConfig",
    "admit",
    "ingress_identity",
]

INGRESS_STREAM: Final = "INGRESS"
ROUTER_CONSUMER: Final = "router"
NIL_EVENT_ID: Final = uuid.UUID(int=0)
_DAY_MS: Final = 86_400_000

_log = structlog.get_logger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Tunables of a router (from the gateway settings)."""

    max_age_ms: int = 7 * _DAY_MS
    skew_ms: int = DEFAULT_SKEW_MS
    batch: int = 100
    fetch_expires: float = 0.5
    retry_delay: float = 2.0


@dataclass(frozen=True, slots=True)
class Admitted:
    """An envelope that passed every check but replay, and the rules' decision for it."""

    envelope: VerifiedEnvelope
    decision: Decision

    @property
    def rule(self) -> str:
        """``<rule id>@<rules version>``."""
        return f"{self.decision.rule_id}@{self.decision.ruleset_version}"


@dataclass(frozen=True, slots=True)
class Refused:
    """Why an envelope is refused; ``header`` when it was verified (authentic ids)."""

    reason: Reason
    header: EnvelopeHeader | None = None


@dataclass(frozen=True, slots=True)
class Routed:
    """The event went to its recipients."""

    event_id: uuid.UUID
    event_type: EventType
    rule: str
    priority: Priority
    recipients: tuple[str, ...]
    fallback: tuple[str, ...]
    ingress_seq: int


@dataclass(frozen=True, slots=True)
class Quarantined:
    """The event was refused: kept in QUARANTINE, the sender told why."""

    reason: Reason
    ingress_seq: int
    event_id: uuid.UUID | None
    verified: bool


Outcome = Routed | Quarantined


def ingress_identity(subject: str) -> str | None:
    """The partner id of ``ref.in.<id>``, or ``None`` for any other subject."""
    parts = subject.split(".")
    if len(parts) == 3 and parts[:2] == ["ref", "in"] and PARTNER_ID_RE.fullmatch(parts[2]):
        return parts[2]
    return None


def _keys_listed(refs: tuple[RecipientRef, ...], policy: Policy, at_ms: int) -> bool:
    """Every recipient was sealed to a key the directory lists as valid at ``at_ms``."""
    for ref in refs:
        partner = policy.directory.get(ref.partner_id)
        key = partner.key(ref.key_id) if partner is not None else None
        if key is None or not key.valid_at(at_ms):
            return False
    return True


def _against_rules(h: EnvelopeHeader, decision: Decision, policy: Policy) -> Reason | None:
    if not decision.sender_allowed:
        return Reason.SENDER_NOT_ALLOWED
    if h.recipient_ids != decision.recipients or h.fallback_ids != decision.fallback:
        return Reason.RECIPIENTS_NOT_RULES
    if not _keys_listed((*h.recipients, *h.fallback), policy, h.created_at_ms):
        return Reason.RECIPIENTS_NOT_RULES
    if h.priority is not decision.priority:
        return Reason.PRIORITY_NOT_RULES
    if h.departement != decision.departement:
        return Reason.DEPARTEMENT_NOT_RULES
    for section in h.sections:
        entitled = decision.audiences.get(section.name, ())
        if section.name != MAIN_SECTION and not set(section.audience) <= set(entitled):
            return Reason.AUDIENCE_NOT_ENTITLED
    return None


def admit(
    data: bytes, *, sender: str, policy: Policy, now_ms: int, config: RouterConfig
) -> Admitted | Refused:
    """Every check of an ingress message but replay (pure: no I/O). See the module docstring."""
    try:
        env = verify_envelope(data, keys=policy.keys, now_ms=now_ms, skew_ms=config.skew_ms)
    except EnvelopeError as exc:
        return Refused(exc.reason)
    h = env.header
    if h.sender != sender:
        return Refused(Reason.SIGNER_NOT_INGRESS_IDENTITY, h)
    if h.created_at_ms < now_ms - config.max_age_ms:
        return Refused(Reason.STALE, h)
    decision = policy.rules.decide(
        h.event_type, h.routing, sender=sender, directory=policy.directory
    )
    reason = _against_rules(h, decision, policy)
    if reason is not None:
        return Refused(reason, h)
    return Admitted(env, decision)


def _routed_record(data: bytes, admitted: Admitted, seq: int, now: int) -> dict[str, Any]:
    """The ROUTED audit record: ids, codes, times, and where the original envelope is."""
    h, decision = admitted.envelope.header, admitted.decision
    deadline = decision.deadline_seconds
    return {
        "event_id": str(h.event_id),
        "event_type": h.event_type.value,
        "sender": h.sender,
        "recipients": list(h.recipient_ids),
        "fallback": list(h.fallback_ids),
        "rule": admitted.rule,
        "priority": h.priority.label,
        "departement": h.departement,
        "routing": dict(h.routing),
        "closes_case": decision.closes_case,
        "ingress_seq": seq,
        "digest": hashlib.sha256(data).hexdigest(),
        "created_at": h.created_at_ms,
        "at": now,
        "deadline_at": now + deadline * 1000 if deadline is not None else None,
    }


def _peek(data: bytes) -> EnvelopeHeader | None:
    try:
        return peek_header(data)
    except EnvelopeError:
        return None


def _millis(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class Router:
    """One router: pulls ``INGRESS`` through the shared ``router`` consumer."""

    def __init__(
        self,
        conn: Connection,
        policy: Policy,
        signer: LocalIdentity,
        *,
        config: RouterConfig | None = None,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self._conn = conn
        self.policy = policy  # replaced as a whole when a new directory edition is loaded
        self._signer = signer
        self._config = config or RouterConfig()
        self._clock = clock
        self._seen = SeenStore(conn)

    async def check_replay_window(self) -> None:
        """Refuse to start when the replay store forgets ids before the router would."""
        await self._seen.check_window((self._config.max_age_ms + self._config.skew_ms) / 1000)

    async def run(self, stop: asyncio.Event) -> None:
        """Route until ``stop`` is set (the batch in hand is finished first)."""
        while not stop.is_set():
            try:
                batch = await self._conn.fetch(
                    INGRESS_STREAM,
                    ROUTER_CONSUMER,
                    self._config.batch,
                    expires=self._config.fetch_expires,
                )
            except RelaisError as exc:
                _log.warning("router.fetch_failed", reason=exc.reason.value)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await stop.wait()
                continue
            if batch:
                await asyncio.gather(*(self.handle(msg) for msg in batch))

    async def handle(self, msg: Msg) -> Outcome | None:
        """Route or quarantine one ingress message, then ack it; ``None``: nak-ed for a retry."""
        started = time.perf_counter()
        seq = 0
        try:
            seq = msg.metadata.sequence.stream
            outcome = await self._process(msg, seq)
            await self._conn.ack(msg)
        except Exception as exc:  # noqa: BLE001 - never drop a message: retry anything unexpected
            reason = exc.reason.value if isinstance(exc, RelaisError) else type(exc).__name__
            _log.warning("router.retry", seq=seq, reason=reason)
            ROUTER_EVENTS.labels("retried", reason, "").inc()
            with contextlib.suppress(RelaisError):
                await self._conn.nak(msg, delay=self._config.retry_delay)
            return None
        elapsed = time.perf_counter() - started
        self._record(outcome, msg.subject, elapsed)
        return outcome

    def _record(self, outcome: Outcome, subject: str, elapsed: float) -> None:
        ms = round(elapsed * 1000, 2)
        if isinstance(outcome, Routed):
            ROUTER_EVENTS.labels("routed", "", outcome.priority.label).inc()
            ROUTER_SECONDS.labels("routed").observe(elapsed)
            _log.info(
                "router.routed",
                event_id=str(outcome.event_id),
                event_type=outcome.event_type.value,
                sender=ingress_identity(subject),
                rule=outcome.rule,
                priority=outcome.priority.label,
                recipients=list(outcome.recipients),
                seq=outcome.ingress_seq,
                ms=ms,
            )
        else:
            ROUTER_EVENTS.labels("quarantined", outcome.reason.value, "").inc()
            ROUTER_SECONDS.labels("quarantined").observe(elapsed)
            _log.info(
                "router.quarantined",
                reason=outcome.reason.value,
                event_id=str(outcome.event_id) if outcome.event_id else None,
                verified=outcome.verified,
                sender=ingress_identity(subject),
                seq=outcome.ingress_seq,
                ms=ms,
            )

    async def _process(self, msg: Msg, seq: int) -> Outcome:
        sender = ingress_identity(msg.subject)
        now = self._clock()
        if sender is None:
            return await self._quarantine(msg.data, "", seq, Refused(Reason.MALFORMED_HEADER), now)
        checked = admit(
            msg.data, sender=sender, policy=self.policy, now_ms=now, config=self._config
        )
        if isinstance(checked, Refused):
            return await self._quarantine(msg.data, sender, seq, checked, now)
        header = checked.envelope.header
        if not await self._seen.claim(header.event_id, seq):
            return await self._quarantine(
                msg.data, sender, seq, Refused(Reason.REPLAY, header), now
            )
        return await self._route(msg.data, checked, seq, now)

    async def _route(self, data: bytes, admitted: Admitted, seq: int, now: int) -> Routed:
        h = admitted.envelope.header
        await asyncio.gather(
            *(
                publish_copy(
                    self._conn,
                    data,
                    partner=partner,
                    priority=h.priority,
                    event_id=h.event_id,
                    event_type=h.event_type,
                    rule=admitted.rule,
                )
                for partner in h.recipient_ids
            )
        )
        record = _routed_record(data, admitted, seq, now)
        await append_record(self._conn, AuditKind.ROUTED, record, msg_id=f"{h.event_id}:routed")
        return Routed(
            event_id=h.event_id,
            event_type=h.event_type,
            rule=admitted.rule,
            priority=h.priority,
            recipients=h.recipient_ids,
            fallback=h.fallback_ids,
            ingress_seq=seq,
        )

    async def _quarantine(
        self, data: bytes, sender: str, seq: int, refused: Refused, now: int
    ) -> Quarantined:
        verified = refused.header is not None
        ids = refused.header or _peek(data)  # unverified: ids only, and only if it parses
        headers = {
            "Relais-Reason": refused.reason.value,
            "Relais-Ingress-Seq": str(seq),
            "Relais-Sender": sender,
        }
        if ids is not None:
            headers["Relais-Event-Id"] = str(ids.event_id)
            headers["Relais-Claimed-Sender"] = ids.sender
        if refused.header is not None:
            headers["Relais-Type"] = refused.header.event_type.value
        subject = f"ref.quar.{refused.reason.value}"
        await publish(self._conn, subject, data, msg_id=f"quar:{seq}", headers=headers)
        record = {
            "event_id": str(ids.event_id) if ids is not None else None,
            "event_type": refused.header.event_type.value if refused.header else None,
            "sender": sender,
            "claimed_sender": ids.sender if ids is not None else None,
            "reason": refused.reason.value,
            "verified": verified,
            "ingress_seq": seq,
            "at": now,
        }
        await append_record(self._conn, AuditKind.QUARANTINED, record, msg_id=f"quar:{seq}")
        event_id = ids.event_id if ids is not None else NIL_EVENT_ID
        if sender:
            await self._reject(sender, seq, event_id, refused.reason, now)
        return Quarantined(refused.reason, seq, ids.event_id if ids else None, verified)

    async def _reject(
        self, sender: str, seq: int, event_id: uuid.UUID, reason: Reason, now: int
    ) -> None:
        rejection_id = statement_id("rejection", seq, event_id)
        statement = sign_statement(
            EventType.REJECTION,
            {
                "rejection_id": rejection_id,
                "event_id": event_id,
                "sender": sender,
                "reason_code": reason.value,
                "ingress_sequence": seq,
                "rejected_at": _millis(now),
            },
            signer=self._signer,
            now_ms=now,
        )
        await publish_statement(
            self._conn,
            statement,
            partner=sender,
            priority=Priority.URGENT,
            statement_uuid=rejection_id,
            statement_type=EventType.REJECTION,
            event_id=event_id,
        )
