"""Re-sealing: a change of configuration edition never costs an honest event.

An event is sealed for the recipients the edition in force at the agent gives. When the
gateway moves to a newer edition first (an enrolment, a revocation, a key rotation, a rules
change), the router either delivers the envelope to the recipients it was sealed for and
asks for the rest (rejection ``EDITION_CHANGED``), or refuses it because it no longer fits
(``RECIPIENTS_NOT_RULES``, a revoked key...). Either way the agent, not a person, mends it:

1. it fetches the last edition on ``ref.dir`` at once (no waiting for the poll);
2. if the event was sealed under an older edition than the one now in force, it plans the
   event again with the new edition's rules and directory, seals it with the *same* event
   id and queues it in place of the old envelope, published with the Nats-Msg-Id
   ``<event id>:e<edition>`` (the broker's duplicate window would drop a second
   ``<event id>``); the router delivers a re-sealed event only to the recipients that did
   not get the earlier envelope, so each gets it once;
3. otherwise (the event itself is wrong, or the cause is not an edition change) the event
   stays ``rejected`` and the partner's system or a person is told, as before.

The record is needed to seal again, and the sender is never a recipient of its own
envelope: the outbox keeps it, encrypted with a key derived from the partner's private key
(XSalsa20-Poly1305, :class:`RecordBox`), for :data:`RETAIN_MS` after the event was created,
then forgets it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import structlog
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from relais.agents.database import Database
from relais.agents.directory_watch import DirectoryWatch
from relais.agents.keyring import Keyring
from relais.agents.models import Notice, NoticeKind, Outgoing
from relais.agents.sealing import Plan, plan_event, publishable_schema, seal_planned
from relais.broker_config.rules import RuleSet
from relais.schemas.domain import EventType
from relais.schemas.errors import ConfigError, Reason, RelaisError
from relais.schemas.registry import to_jsonable

__all__ = ["RESEAL_REASONS", "RETAIN_MS", "RecordBox", "Resealer", "outgoing_row"]

# Rejections an edition change can cause (recipients, audiences, priority, département or
# sender kind per the new rules; a rotated or revoked key; an edition the router does not
# honour any more): re-sealed under the edition in force.
RESEAL_REASONS: Final = frozenset(
    {
        Reason.EDITION_CHANGED,
        Reason.RECIPIENTS_NOT_RULES,
        Reason.AUDIENCE_NOT_ENTITLED,
        Reason.PRIORITY_NOT_RULES,
        Reason.DEPARTEMENT_NOT_RULES,
        Reason.SENDER_NOT_ALLOWED,
        Reason.UNKNOWN_KEY,
        Reason.REVOKED_KEY,
        Reason.EXPIRED_KEY,
        Reason.KEY_NOT_YET_VALID,
    }
)
RETAIN_MS: Final = 2 * 86_400_000
# The edition the router names may reach ref.dir a moment after its rejection.
_REFRESH_ATTEMPTS: Final = 5
_REFRESH_PAUSE: Final = 0.5
_LABEL: Final = b"relais/1 agent outbox retention"

_log = structlog.get_logger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class RecordBox:
    """Encrypts the records kept for re-sealing (never ``repr``-s its key)."""

    __slots__ = ("_box",)

    def __init__(self, keyring: Keyring) -> None:
        """A key derived from the partner's first key file (as the idempotency key is)."""
        key = hmac.new(keyring.idempotency_key(), _LABEL, hashlib.sha256).digest()
        self._box = SecretBox(key)

    def close(self, record: Mapping[str, Any]) -> bytes:
        """The record (an Avro datum), encrypted."""
        text = json.dumps(to_jsonable(dict(record)), sort_keys=True, separators=(",", ":"))
        return bytes(self._box.encrypt(text.encode("utf-8")))

    def open(self, event_type: EventType | str, blob: bytes) -> Mapping[str, Any]:
        """The record back, as an Avro datum (``ConfigError`` when it does not open)."""
        try:
            text = self._box.decrypt(blob)
            return publishable_schema(event_type).from_json(json.loads(text))
        except (CryptoError, ValueError) as exc:
            raise ConfigError("a record kept for re-sealing does not open") from exc

    def __repr__(self) -> str:
        return "RecordBox()"


def outgoing_row(
    plan: Plan,
    event_id: str,
    envelope: bytes,
    now_ms: int,
    *,
    retained: bytes | None,
    key: str | None = None,
    mac: bytes | None = None,
) -> Outgoing:
    """The outbox row of a sealed event."""
    decision = plan.decision
    return Outgoing(
        event_id=event_id,
        event_type=plan.event_type.value,
        priority=int(decision.priority),
        rule=f"{decision.rule_id}@{decision.ruleset_version}",
        triage=decision.triage,
        recipients=decision.recipients,
        fallback=decision.fallback,
        envelope=envelope,
        created_at_ms=now_ms,
        idempotency_key=key,
        request_mac=mac,
        edition=plan.edition,
        retained=retained,
    )


class Resealer:
    """Re-seals this partner's events rejected because of an edition change."""

    def __init__(
        self,
        *,
        keyring: Keyring,
        watch: DirectoryWatch,
        db: Database,
        box: RecordBox,
        rules: Callable[[], RuleSet],
        refresh: Callable[[], Awaitable[bool]],
        queued: Callable[[], None],
        ttl_ms: int,
        on_resealed: Callable[[str], None] | None = None,
    ) -> None:
        """Re-seal with ``keyring`` under ``watch``'s edition, then call ``queued``."""
        self._keyring = keyring
        self._watch = watch
        self._db = db
        self._box = box
        self._rules = rules
        self._refresh = refresh
        self._queued = queued
        self._ttl_ms = ttl_ms
        self._on_resealed = on_resealed
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def notices(self, notices: list[Notice]) -> None:
        """Look at newly stored notices: each rejection an edition change caused is mended."""
        for notice in notices:
            if notice.kind is not NoticeKind.REJECTION or notice.event_id in self._busy:
                continue
            try:
                reason = Reason(str(notice.record.get("reason_code")))
            except ValueError:
                continue
            if reason not in RESEAL_REASONS:
                continue  # the event itself is wrong: the partner is told, nothing else
            self._busy.add(notice.event_id)
            task = asyncio.get_running_loop().create_task(self._mend(notice, reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Wait for the re-sealings under way (tests, orderly stop)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _mend(self, notice: Notice, reason: Reason) -> None:
        event_id = notice.event_id
        try:
            outcome = await self._reseal(event_id, notice.record, reason)
        except RelaisError as exc:
            outcome = f"refused:{exc.reason.value}"
        finally:
            self._busy.discard(event_id)
        level = _log.info if outcome.startswith("resealed") else _log.warning
        level("agent.reseal", event_id=event_id, reason=reason.value, outcome=outcome)

    async def _reseal(self, event_id: str, rejection: Mapping[str, Any], reason: Reason) -> str:
        found = await self._db.run(self._db.store.retained, event_id)
        if found is None:
            return "unknown_event"
        row, blob = found
        seq = rejection.get("ingress_sequence")
        if row.ingress_seq != seq:
            return "stale_rejection"  # an earlier publish of an event since re-sealed
        if blob is None:
            return "record_forgotten"
        for attempt in range(_REFRESH_ATTEMPTS):
            await self._refresh()
            if self._watch.serial > row.edition:
                break
            if attempt + 1 < _REFRESH_ATTEMPTS:
                await asyncio.sleep(_REFRESH_PAUSE * (attempt + 1))
        view = self._watch.current
        if view.serial <= row.edition:
            return "no_newer_edition"  # not an edition change: the event stays rejected
        record = self._box.open(row.event_type, blob)
        now = _now_ms()
        plan = plan_event(
            row.event_type,
            record,
            sender=self._keyring.partner_id,
            directory=view.directory,
            rules=self._rules(),
            at_ms=now,
        )
        envelope = seal_planned(
            plan,
            sender=self._keyring.signer(view.directory, now),
            now_ms=now,
            ttl_ms=self._ttl_ms,
            event_id=uuid.UUID(event_id),
        )
        resealed = outgoing_row(plan, event_id, envelope, now, retained=blob)
        msg_id = f"{event_id}:e{view.serial}"
        if not await self._db.run(
            self._db.store.reseal, event_id, resealed, msg_id, from_seq=int(seq or 0)
        ):
            return "stale_rejection"
        self._queued()
        if self._on_resealed is not None:
            self._on_resealed(reason.value)
        return f"resealed:e{row.edition}->e{view.serial}"
