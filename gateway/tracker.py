"""The tracker: receipts, deadlines, escalation and case closure, durable across crashes.

Inputs, each through a durable consumer, acked only after the SQLite commit:

* ``tracker-audit`` on ``AUDIT``: ``ROUTED`` records teach it each event, its recipients,
  fallback recipients, deadline and where the original envelope is (ingress sequence and
  SHA-256 digest); ``ESCALATED`` and ``CLOSED`` records written by an earlier run that died
  before its commit bring the state up to date;
* ``tracker`` on ``RECEIPTS``: receipt statements, verified (signature, key in the
  directory; the signer must be the partner of the subject ``ref.rcpt.<id>`` and the
  receipt's ``recipient``, and a recipient or fallback recipient of each event it names).
  A receipt for an event not known yet is kept until its ``ROUTED`` record arrives.

State per (event, recipient): ``ROUTED`` → ``DELIVERED`` → ``TAKEN_IN_CHARGE`` /
``DECLINED``, then ``CONCLUDED`` (with an outcome) after ``TAKEN_IN_CHARGE``, moving forward
only, so duplicate and out-of-order receipts change nothing.
Each change is written to the audit log (``RECEIPT``, Nats-Msg-Id
``<event id>:<partner>:<state>``) *before* the commit: a crash in between replays the same
change, which the broker deduplicates.

Deadlines: an open event whose deadline passed (checked every tick, so within a tick of
it, and at once after a restart: deadlines live in SQLite) is escalated: the original
envelope, read back from ``INGRESS`` by its sequence and checked against its digest, goes
to each fallback recipient on ``FLASH`` with ``Relais-Escalation``; an escalation notice
signed by the gateway goes to each fallback recipient (``FLASH``) and to the sender
(``URGENT``); then the ``ESCALATED`` record, then the commit. Every message carries a
Nats-Msg-Id derived from the event, so an escalation redone after a crash sends nothing
twice. An event taken in charge by any recipient, or whose case was closed, is not
escalated. A routed event of a closing rule (``runaway_ended``, routing ``case_ref`` = the
alert's event id, ``alert_sender`` = the alert's sender) closes the alert's case for all its
recipients (``CLOSED``).

Every change of an (event, recipient), and every escalation, is also a step told to the
event's sender in signed progress notices (:mod:`~relais.gateway.progress`), recorded in the
same transaction as the change and sent after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from nats.aio.msg import Msg

from relais.broker_config.connection import Connection
from relais.gateway.audit import AuditKind, append_record, decode_record
from relais.gateway.delivery import publish_copy, publish_statement, statement_id
from relais.gateway.jetstream import StoredMessage, get_message
from relais.gateway.metrics import TRACKER_CLOSED, TRACKER_ESCALATIONS, TRACKER_RECEIPTS
from relais.gateway.policy import Policy
from relais.gateway.progress import ProgressNotifier
from relais.gateway.router import INGRESS_STREAM
from relais.gateway.tracker_store import (
    EarlyReceipt,
    EventState,
    PartyState,
    StepState,
    TrackedEvent,
    TrackerStore,
)
from relais.schemas.domain import PARTNER_ID_RE, EventType, Priority
from relais.schemas.envelope import LocalIdentity
from relais.schemas.errors import EnvelopeError, Reason, RelaisError
from relais.schemas.names import AUDIT_RECORD_SUBJECT, ingress_subject
from relais.schemas.statements import sign_statement, verify_statement

__all__ = ["AUDIT_CONSUMER", "RECEIPTS_CONSUMER", "Change", "Tracker", "TrackerConfig"]

AUDIT_CONSUMER: Final = "tracker-audit"
_CONCURRENT_ESCALATIONS: Final = 16
RECEIPTS_CONSUMER: Final = "tracker"
_AUDIT_STREAM: Final = "AUDIT"
_RECEIPTS_STREAM: Final = "RECEIPTS"

_log = structlog.get_logger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _stored_ms(msg: Msg) -> int | None:
    """When the stream stored ``msg`` (Unix ms, from its ack subject); ``None``: unknown."""
    try:
        return int(msg.metadata.timestamp.timestamp() * 1000)
    except (ValueError, IndexError, AttributeError):
        return None


def _stream_seq(msg: Msg) -> int:
    try:
        return int(msg.metadata.sequence.stream)
    except (ValueError, AttributeError):
        return 0


def _header_ms(headers: Mapping[str, str]) -> int | None:
    """When the stream stored a message read by direct get (``Nats-Time-Stamp``)."""
    stamp = headers.get("Nats-Time-Stamp", "")
    try:
        seconds, _, fraction = stamp.rstrip("Z").partition(".")
        moment = datetime.fromisoformat(seconds).replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000) + int((fraction + "000")[:3] or 0)
    except ValueError:
        return None


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _millis(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """Tunables of the tracker (from the gateway settings)."""

    tick: float = 0.5  # how often deadlines are checked
    batch: int = 200
    fetch_expires: float = 0.5
    retry_delay: float = 2.0


@dataclass(frozen=True, slots=True)
class Change:
    """An audit record to write for a change of state (before the change is committed)."""

    msg_id: str
    kind: AuditKind
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Receipt:
    msg: Msg
    signer: str
    entries: tuple[tuple[uuid.UUID, EarlyReceipt], ...]


class Tracker:
    """Follows every routed event until it is taken in charge, escalated or closed."""

    def __init__(
        self,
        conn: Connection,
        store: TrackerStore,
        policy: Policy,
        signer: LocalIdentity,
        *,
        config: TrackerConfig | None = None,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self._conn = conn
        self._store = store
        self.policy = policy  # replaced as a whole when a new directory edition is loaded
        self._signer = signer
        self._config = config or TrackerConfig()
        self._clock = clock
        self._lock = asyncio.Lock()  # one unit of work on the store at a time
        # Set by gateway.active while this tracker is a standby: it learns what the active
        # one recorded, sends nothing and writes nothing (no steps, no audit records).
        self.silent = False
        # Fencing (gateway.active): escalate only while this returns True.
        self.may_act: Callable[[], bool] = lambda: True
        # Called before each escalation pass: receipts stored but not yet delivered to the
        # tracker's consumer are applied first (gateway.active drains them).
        self.before_escalation: Callable[[], Awaitable[None]] | None = None
        self.progress = ProgressNotifier(
            conn,
            store,
            signer,
            partnership=lambda: self.policy.directory.partnership,
            lock=self._lock,
            clock=clock,
        )

    # -- loops ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume audit records and receipts and watch deadlines until ``stop`` is set."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._consume(stop, _AUDIT_STREAM, AUDIT_CONSUMER, self.on_audit))
            group.create_task(
                self._consume(stop, _RECEIPTS_STREAM, RECEIPTS_CONSUMER, self.on_receipts)
            )
            group.create_task(self._watch_deadlines(stop))

    async def _consume(
        self,
        stop: asyncio.Event,
        stream: str,
        consumer: str,
        handler: Callable[[list[Msg]], Awaitable[None]],
    ) -> None:
        while not stop.is_set():
            try:
                batch = await self._conn.fetch(
                    stream, consumer, self._config.batch, expires=self._config.fetch_expires
                )
                if batch:
                    await handler(batch)
            except Exception as exc:  # noqa: BLE001 - unacked messages come again: keep going
                _log.warning("tracker.consume_failed", consumer=consumer, reason=_reason(exc))
                await _pause(stop, 1.0)

    async def _watch_deadlines(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if self.before_escalation is not None:
                    await self.before_escalation()
                await self.escalate_due()
            except Exception as exc:  # noqa: BLE001 - still open: retried at the next tick
                _log.error("tracker.escalation_failed", reason=_reason(exc))
            await self._send_progress()  # what an earlier flush could not send
            await _pause(stop, self._config.tick)

    async def _send_progress(self) -> None:
        try:
            await self.progress.flush()
        except Exception as exc:  # noqa: BLE001 - the steps stay stored: sent at the next tick
            _log.warning("tracker.progress_failed", reason=_reason(exc))

    async def _commit(
        self,
        msgs: list[Msg],
        work: Callable[[], list[Change]],
        *,
        applied: tuple[str, int] | None = None,
    ) -> None:
        """Run ``work`` in one transaction, audit its changes, commit, then ack ``msgs``.

        ``applied``: ``(stream, seq)`` recorded in the same transaction (the store's cursor).
        """
        async with self._lock:
            try:
                with self._store.transaction():
                    changes = work()
                    if applied is not None:
                        self._store.set_applied(*applied)
                    await asyncio.gather(
                        *(
                            append_record(self._conn, c.kind, c.fields, msg_id=c.msg_id)
                            for c in changes
                        )
                    )
            except Exception as exc:  # noqa: BLE001 - rolled back; the messages come again
                _log.warning("tracker.retry", reason=_reason(exc), messages=len(msgs))
                for msg in msgs:
                    with contextlib.suppress(RelaisError):
                        await self._conn.nak(msg, delay=self._config.retry_delay)
                return
        for msg in msgs:
            await self._conn.ack(msg)
        for change in changes:
            self._log_change(change)
        await self._send_progress()

    # -- audit records -------------------------------------------------------------------------

    async def on_audit(self, msgs: list[Msg]) -> None:
        """Learn routed events (and converge on escalations and closures) from audit records."""
        records: list[dict[str, Any]] = []
        for msg in msgs:
            if msg.subject != AUDIT_RECORD_SUBJECT:
                continue  # checkpoints
            try:
                records.append(decode_record(msg.data))
            except EnvelopeError:
                _log.error("tracker.audit_record_malformed", seq=msg.metadata.sequence.stream)

        def work() -> list[Change]:
            """Learn every record of the batch."""
            changes: list[Change] = []
            for record in records:
                changes.extend(self._learn(record))
            return changes

        last = max((_stream_seq(m) for m in msgs), default=0)
        await self._commit(msgs, work, applied=(_AUDIT_STREAM, last) if last else None)

    async def learn_stored(self, msgs: Sequence[StoredMessage]) -> None:
        """Learn audit records read from the stream itself (a standby, or a rebuild).

        Silent: what they record was done and recorded by the tracker that wrote them.
        """
        records = []
        for msg in msgs:
            if msg.subject == AUDIT_RECORD_SUBJECT:
                try:
                    records.append(decode_record(msg.data))
                except EnvelopeError:
                    _log.error("tracker.audit_record_malformed", seq=msg.seq)
        silent, self.silent = self.silent, True
        try:
            last = max((m.seq for m in msgs), default=0)

            def work() -> list[Change]:
                for record in records:
                    self._learn(record)
                return []

            await self._commit([], work, applied=(_AUDIT_STREAM, last) if last else None)
        finally:
            self.silent = silent

    def _learn(self, record: dict[str, Any]) -> list[Change]:
        kind = record["kind"]
        if kind == AuditKind.ROUTED:
            return self._routed(record)
        if kind == AuditKind.RECEIPT:
            self._recorded_receipt(record)
            return []
        event_id = record.get("event_id")
        if kind in (AuditKind.ESCALATED, AuditKind.CLOSED) and event_id:
            state = EventState.ESCALATED if kind == AuditKind.ESCALATED else EventState.CLOSED
            event = self._store.event(uuid.UUID(event_id))
            at = int(record["at"])
            if event is not None and (state is EventState.CLOSED or event.state is EventState.OPEN):
                self._store.set_state(event.event_id, state, at)
                if state is EventState.ESCALATED:
                    for fallback in event.fallback:
                        self._store.add_party(event.event_id, fallback, "fallback", at)
                    overdue = [str(p) for p in record.get("overdue") or ()]
                    if not self.silent:
                        self.progress.escalated(event, overdue, bool(record.get("released")), at)
        return []

    def _recorded_receipt(self, record: dict[str, Any]) -> None:
        """A state change some tracker recorded (``RECEIPT``): the same change, silently."""
        try:
            event_id = uuid.UUID(str(record["event_id"]))
            state = PartyState(record["state"])
            partner, at = str(record["partner"]), int(record["receipt_at"])
        except (KeyError, ValueError, TypeError):
            return
        event = self._store.event(event_id)
        if event is None:
            return
        role = "fallback" if partner in event.fallback else "recipient"
        self._store.add_party(event_id, partner, role, at)
        self._store.advance(
            event_id, partner, state, record.get("decline_reason"), at, record.get("outcome")
        )
        taking = state in (PartyState.TAKEN_IN_CHARGE, PartyState.CONCLUDED)
        if taking and event.state is EventState.OPEN:
            self._store.set_state(event_id, EventState.TAKEN, int(record.get("at") or at))

    def _routed(self, record: dict[str, Any]) -> list[Change]:
        if not self._store.add_event(record):
            if record.get("resealed_from") is not None:
                # The sender's re-sealing under a newer edition: its added recipients are
                # followed like the first ones.
                event_id, at = uuid.UUID(record["event_id"]), int(record["at"])
                for partner in record["recipients"]:
                    self._store.add_party(event_id, partner, "recipient", at)
            return []
        event_id = uuid.UUID(record["event_id"])
        if self.silent:
            # What the active tracker did with it (receipts kept for it, a closure) is in
            # its own records; the parked entries wait for a takeover (apply_parked).
            return []
        event = self._store.event(event_id)
        if event is not None:  # just added
            for partner in record["recipients"]:
                self.progress.step(event, partner, "recipient", StepState.ROUTED, event.routed_at)
        changes = [
            c
            for early in self._store.take_early(event_id)
            if (c := self._apply(event_id, early)) is not None
        ]
        parked = self._store.take_closure(event_id)
        if parked is not None:
            changes.extend(
                self._close(
                    event_id,
                    closing_event=parked["closing_event"],
                    closing_sender=parked["closing_sender"],
                    alert_sender=parked["alert_sender"],
                    at=int(parked["at"]),
                )
            )
        routing = record.get("routing") or {}
        case_ref = routing.get("case_ref")
        if record.get("closes_case") and case_ref:
            try:
                case = uuid.UUID(case_ref)
            except ValueError:
                return changes
            changes.extend(
                self._close(
                    case,
                    closing_event=record["event_id"],
                    closing_sender=record["sender"],
                    alert_sender=routing.get("alert_sender"),
                    at=int(record["at"]),
                )
            )
        return changes

    def _close(
        self,
        case: uuid.UUID,
        *,
        closing_event: str,
        closing_sender: str,
        alert_sender: str | None,
        at: int,
    ) -> list[Change]:
        alert = self._store.event(case)
        if alert is None:
            self._store.park_closure(case, closing_event, closing_sender, alert_sender, at)
            return []
        if alert_sender != alert.sender:
            # Whoever closes a case names who declared it: a closing event that does not
            # match the case (a wrong or guessed case_ref) must not stop its escalation.
            _log.warning("tracker.close_refused", event_id=str(case), closing_event=closing_event)
            return []
        if not self._store.set_state(case, EventState.CLOSED, at):
            return []
        fields = {
            "event_id": str(case),
            "event_type": alert.event_type,
            "sender": alert.sender,
            "closed_by": closing_event,
            "closed_by_sender": closing_sender,
            "at": at,
        }
        return [Change(f"{case}:closed", AuditKind.CLOSED, fields)]

    # -- receipts ------------------------------------------------------------------------------

    async def on_receipts(self, msgs: list[Msg]) -> None:
        """Verify receipt statements and move (event, recipient) states forward."""
        accepted: list[_Receipt] = []
        for msg in msgs:
            verified = self._verify_receipt(msg.subject, msg.data, _stored_ms(msg))
            if verified is None:
                with contextlib.suppress(RelaisError):
                    await self._conn.term(msg)  # stays in RECEIPTS; never retried
            else:
                accepted.append(_Receipt(msg, *verified))

        def work() -> list[Change]:
            """Apply every entry of every accepted receipt."""
            changes: list[Change] = []
            for receipt in accepted:
                for event_id, entry in receipt.entries:
                    change = self._apply(event_id, entry)
                    if change is not None:
                        changes.append(change)
            return changes

        last = max((_stream_seq(r.msg) for r in accepted), default=0)
        applied = (_RECEIPTS_STREAM, last) if last else None
        await self._commit([r.msg for r in accepted], work, applied=applied)

    async def receipts_stored(self, msgs: Sequence[StoredMessage], *, park: bool) -> None:
        """Receipts read from the stream itself: applied (the active tracker), or kept for a
        takeover (``park``: a standby, which records nothing)."""
        verified = [
            v
            for m in msgs
            if (v := self._verify_receipt(m.subject, m.data, _header_ms(m.headers))) is not None
        ]

        def work() -> list[Change]:
            changes: list[Change] = []
            for _, entries in verified:
                for event_id, entry in entries:
                    if park:
                        self._store.park_receipt(event_id, entry)
                    elif (change := self._apply(event_id, entry)) is not None:
                        changes.append(change)
            return changes

        last = max((m.seq for m in msgs), default=0)
        await self._commit([], work, applied=(_RECEIPTS_STREAM, last) if last else None)

    async def apply_parked(self) -> None:
        """Apply every kept receipt entry whose event is known now (at a takeover)."""

        def work() -> list[Change]:
            changes: list[Change] = []
            for event_id in self._store.early_events():
                if self._store.event(event_id) is None:
                    continue
                for entry in self._store.take_early(event_id):
                    if (change := self._apply(event_id, entry)) is not None:
                        changes.append(change)
            return changes

        await self._commit([], work)

    def _verify_receipt(
        self, subject: str, data: bytes, stored_ms: int | None
    ) -> tuple[str, tuple[tuple[uuid.UUID, EarlyReceipt], ...]] | None:
        parts = subject.split(".")
        partner = parts[2] if len(parts) == 3 and PARTNER_ID_RE.fullmatch(parts[2]) else ""
        try:
            statement = verify_statement(
                data,
                keys=self.policy.keys,
                expected=EventType.RECEIPT,
                now_ms=stored_ms,  # key validity when the broker received it
            )
            reason = None
            if not (statement.signer == partner == statement.record["recipient"]):
                reason = Reason.SIGNER_NOT_INGRESS_IDENTITY
            elif not all(_outcome_fits(e) for e in statement.record["entries"]):
                reason = Reason.INVALID_PAYLOAD
        except EnvelopeError as exc:
            reason = exc.reason
        if reason is not None:
            _log.warning("tracker.receipt_refused", reason=reason.value, partner=partner)
            return None
        entries = tuple(
            (
                uuid.UUID(str(e["event_id"])),
                EarlyReceipt(
                    statement.signer,
                    PartyState(e["state"]),
                    e.get("decline_reason"),
                    _ms(e["at"]),
                    e.get("outcome"),
                ),
            )
            for e in statement.record["entries"]
        )
        return statement.signer, entries

    def _apply(self, event_id: uuid.UUID, entry: EarlyReceipt) -> Change | None:
        event = self._store.event(event_id)
        if event is None:
            self._store.park_receipt(event_id, entry)
            return None
        parties = {p.partner for p in self._store.parties(event_id)} | set(event.fallback)
        if entry.partner not in parties:
            _log.warning("tracker.receipt_not_a_party", event_id=str(event_id))
            return None
        role = "fallback" if entry.partner in event.fallback else "recipient"
        self._store.add_party(event_id, entry.partner, role, entry.at)
        if not self._store.advance(
            event_id, entry.partner, entry.state, entry.decline_reason, entry.at, entry.outcome
        ):
            return None
        taking = entry.state in (PartyState.TAKEN_IN_CHARGE, PartyState.CONCLUDED)
        if taking and event.state is EventState.OPEN:
            self._store.set_state(event_id, EventState.TAKEN, self._clock())
        self.progress.step(
            event,
            entry.partner,
            role,
            StepState(entry.state.value),
            entry.at,
            decline_reason=entry.decline_reason,
            outcome=entry.outcome,
        )
        fields = {
            "event_id": str(event_id),
            "event_type": event.event_type,
            "partner": entry.partner,
            "state": entry.state.value,
            "decline_reason": entry.decline_reason,
            "outcome": entry.outcome,
            "receipt_at": entry.at,
            "at": self._clock(),
        }
        return Change(f"{event_id}:{entry.partner}:{entry.state.value}", AuditKind.RECEIPT, fields)

    # -- deadlines -----------------------------------------------------------------------------

    async def escalate_due(self) -> list[uuid.UUID]:
        """Escalate every open event whose deadline has passed; their ids."""
        async with self._lock:
            due = self._store.due(self._clock())
        # Concurrently (bounded): one escalation waiting out a broker timeout must not delay
        # the others past their deadlines.
        gate = asyncio.Semaphore(_CONCURRENT_ESCALATIONS)

        async def one(event: TrackedEvent) -> uuid.UUID | None:
            async with gate:
                if not self.may_act():
                    return None  # no longer the active tracker: the new one escalates
                return await self._escalate(event.event_id)

        results = await asyncio.gather(*(one(e) for e in due), return_exceptions=True)
        done = [r for r in results if isinstance(r, uuid.UUID)]
        if done:
            await self._send_progress()
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise failed[0]  # the others went ahead; this one is retried at the next tick
        return done

    async def _original(self, event: TrackedEvent) -> bytes | None:
        stored = await get_message(self._conn, INGRESS_STREAM, event.ingress_seq)
        if (
            stored is None
            or stored.subject != ingress_subject(event.sender)
            or hashlib.sha256(stored.data).hexdigest() != event.digest
        ):
            _log.error("tracker.original_missing", event_id=str(event.event_id))
            return None
        return stored.data

    async def _escalate(self, event_id: uuid.UUID) -> uuid.UUID | None:
        """Release the original to the fallback recipients, notify, audit, then commit.

        The store is read and written under the lock; the broker's work runs outside it, so
        that escalations proceed side by side and receipts keep being applied meanwhile.
        """
        async with self._lock:
            event = self._store.event(event_id)
            if event is None or event.state is not EventState.OPEN:
                return None  # taken in charge or closed meanwhile
            overdue = [
                p.partner
                for p in self._store.parties(event.event_id)
                if p.role == "recipient" and p.state is not PartyState.TAKEN_IN_CHARGE
            ]
        now = self._clock()
        notice_id = statement_id("escalation", event.event_id)
        original = await self._original(event)
        if original is not None:
            await self._release(event, original, notice_id)
        await self._notify(event, self._notice(event, notice_id, overdue, now), notice_id)
        fields = {
            "event_id": str(event.event_id),
            "event_type": event.event_type,
            "sender": event.sender,
            "rule": event.rule,
            "priority": event.priority,
            "deadline_at": event.deadline_at,
            "fallback": list(event.fallback),
            "overdue": overdue,
            "notice_id": str(notice_id),
            "ingress_seq": event.ingress_seq,
            "released": original is not None,
            "at": now,
        }
        await append_record(
            self._conn, AuditKind.ESCALATED, fields, msg_id=f"{event.event_id}:escalated"
        )
        async with self._lock:
            with self._store.transaction():
                current = self._store.event(event.event_id)
                # a take-in-charge applied meanwhile keeps its state; the fallbacks are added
                if current is not None and current.state is EventState.OPEN:
                    self._store.set_state(event.event_id, EventState.ESCALATED, now)
                for fallback in event.fallback:
                    self._store.add_party(event.event_id, fallback, "fallback", now)
                self.progress.escalated(event, overdue, original is not None, now)
        TRACKER_ESCALATIONS.labels(event.priority).inc()
        late_ms = now - (event.deadline_at or now)
        _log.info(
            "tracker.escalated",
            event_id=str(event.event_id),
            event_type=event.event_type,
            rule=event.rule,
            fallback=list(event.fallback),
            released=original is not None,
            late_ms=late_ms,
        )
        return event.event_id

    async def _release(self, event: TrackedEvent, original: bytes, notice_id: uuid.UUID) -> None:
        """The original envelope to each fallback recipient, FLASH, marked as an escalation."""
        await asyncio.gather(
            *(
                publish_copy(
                    self._conn,
                    original,
                    partner=fallback,
                    priority=Priority.FLASH,
                    event_id=event.event_id,
                    event_type=EventType(event.event_type),
                    rule=event.rule,
                    escalation=notice_id,
                )
                for fallback in event.fallback
            )
        )

    async def _notify(self, event: TrackedEvent, notice: bytes, notice_id: uuid.UUID) -> None:
        """The signed notice to each fallback recipient (FLASH) and to the sender (URGENT)."""
        targets = [(fb, Priority.FLASH) for fb in event.fallback]
        targets.append((event.sender, Priority.URGENT))
        await asyncio.gather(
            *(
                publish_statement(
                    self._conn,
                    notice,
                    partner=partner,
                    priority=priority,
                    statement_uuid=notice_id,
                    statement_type=EventType.ESCALATION_NOTICE,
                    event_id=event.event_id,
                    rule=event.rule,
                )
                for partner, priority in targets
            )
        )

    def _notice(
        self, event: TrackedEvent, notice_id: uuid.UUID, overdue: list[str], now: int
    ) -> bytes:
        record = {
            "notice_id": notice_id,
            "event_id": event.event_id,
            "event_type": event.event_type,
            "rule_id": event.rule,
            "deadline": _millis(event.deadline_at or now),
            "escalated_at": _millis(now),
            "overdue_recipients": overdue,
            "fallback_recipients": list(event.fallback),
            "sender": event.sender,
        }
        return sign_statement(
            EventType.ESCALATION_NOTICE,
            record,
            signer=self._signer,
            partnership=self.policy.directory.partnership,
            now_ms=now,
        )

    # -- logging -------------------------------------------------------------------------------

    def _log_change(self, change: Change) -> None:
        fields = change.fields
        if change.kind is AuditKind.RECEIPT:
            TRACKER_RECEIPTS.labels(fields["state"]).inc()
            _log.info(
                "tracker.receipt",
                event_id=fields["event_id"],
                partner=fields["partner"],
                state=fields["state"],
                decline_reason=fields["decline_reason"],
            )
        elif change.kind is AuditKind.CLOSED:
            TRACKER_CLOSED.inc()
            _log.info("tracker.closed", event_id=fields["event_id"], closed_by=fields["closed_by"])


def _outcome_fits(entry: Mapping[str, Any]) -> bool:
    """A ``CONCLUDED`` entry names its outcome (a conclusion, not ``ASSESSMENT_UNDER_WAY``);
    only ``TAKEN_IN_CHARGE`` and ``CONCLUDED`` entries may carry one."""
    state, outcome = entry["state"], entry.get("outcome")
    if state == PartyState.CONCLUDED:
        return outcome is not None and outcome != "ASSESSMENT_UNDER_WAY"
    return outcome is None or state == PartyState.TAKEN_IN_CHARGE


def _reason(exc: Exception) -> str:
    """A reason code, or the exception's type name: never its message (it may hold data)."""
    return exc.reason.value if isinstance(exc, RelaisError) else type(exc).__name__


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
