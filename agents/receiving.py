"""Receiving: pull the partner's deliveries, FLASH before URGENT before ROUTINE.

Three pullers, one per delivery consumer (``out-<id>-FLASH|URGENT|ROUTINE``), each hold at
most one small batch ready (lean ``Connection.fetch`` long polls, so a FLASH message is on
its way as soon as it is stored). One processor takes the next batch from the most urgent
priority that has one. A FLASH alert never waits behind a backlog of routine deliveries,
nor for the whole batch in hand: a less urgent batch is examined a millisecond at a time
(:data:`PREEMPT_SECONDS`), and when a more urgent batch is waiting the processor puts the
batch aside with what it has examined so far (nothing stored or acknowledged yet) and takes
it up again where it stopped once nothing more urgent waits.

For each message of a batch, in this order:

1. an event envelope is verified (signature, times, keys, digests) and opened with the key
   the header names for this partner, which decrypts every section the partner is entitled
   to (checking commitments and the routing metadata); a statement (rejection, escalation
   or progress notice) is verified and its signer must be a partner of kind ``gateway``;
2. the batch is written in one transaction: envelopes SEALED in the inbox (keyed by event
   id: a redelivery changes nothing), their ``DELIVERED`` receipt entries, notices (a
   rejection marks our sent event rejected; progress and escalation notices add steps to
   the ladders of our sent events, :mod:`~relais.agents.progress`), webhook jobs, and
   refusals with their reason;
3. messages are acknowledged; refused ones are terminated (never redelivered), except those
   a newer directory, key file or software version could cure (unknown sender, key or
   schema), which are retried ``retry_deliveries`` times first. Content is never logged;
4. the receipt sender is woken: it signs the pending ``DELIVERED`` entries and publishes
   them (:mod:`~relais.agents.receipts`) while the next batch is processed. The entries are
   in the database since step 2, so a receipt is never lost once its message is
   acknowledged; entries that accumulate while a receipt is being published go together in
   the next statement (receipts are batched across pull batches under load, and sent at
   once when idle). After a FLASH batch the processor waits for the signature (not for
   the broker), so that the alert's receipt does not compete for the interpreter with
   the routine work that follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from nats.aio.msg import Msg

from relais.agents.database import Database
from relais.agents.directory_watch import DirectoryView, DirectoryWatch
from relais.agents.faults import crash_point
from relais.agents.keyring import Keyring
from relais.agents.link import Link
from relais.agents.metrics import AgentMetrics
from relais.agents.models import Delivery, NoticeKind, SentState
from relais.agents.progress import escalation_steps, notice_steps
from relais.agents.receipts import ReceiptSender
from relais.agents.store import NoticeIn, StoredBatch
from relais.broker_config.nats_conf import delivery_consumer_name
from relais.schemas.domain import (
    PARTNER_ID_RE,
    ROUTING_VALUE_RE,
    EventType,
    PartnerKind,
    Priority,
)
from relais.schemas.envelope import KIND_EVENT, open_envelope, peek_header, verify_envelope
from relais.schemas.errors import EnvelopeError, Reason, RelaisError, TransportError
from relais.schemas.names import DELIVERY_STREAM, H_ESCALATION, H_EVENT_ID, H_RULE
from relais.schemas.registry import to_jsonable
from relais.schemas.statements import KINDS, verify_statement

__all__ = ["DELIVERY_STREAM", "PREEMPT_SECONDS", "ReceiveConfig", "Receiver", "Refusal"]

# A less urgent batch is examined this long at a time before looking for a more urgent one.
PREEMPT_SECONDS: Final = 0.001
_RULE_RE: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,96}")
# Reasons a newer directory, an added key file or a software upgrade can cure.
_CURABLE: Final = frozenset(
    {
        Reason.UNKNOWN_SENDER,
        Reason.UNKNOWN_KEY,
        Reason.KEY_NOT_YET_VALID,
        Reason.UNKNOWN_SCHEMA,
        Reason.UNKNOWN_TYPE,
    }
)
_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ReceiveConfig:
    """Tuning of the receive path (from the agent settings)."""

    batch: int
    expires: float
    retry_deliveries: int
    retry_delay: float
    webhooks: bool


@dataclass(frozen=True, slots=True)
class Refusal:
    """A delivery this partner will not store, and why (a reason code, never content)."""

    reason: Reason
    event_id: str | None
    event_type: str


_Examined = Delivery | NoticeIn | Refusal


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _stored_ms(msg: Msg) -> int | None:
    """When the stream stored ``msg`` (Unix ms, from its ack subject); ``None``: unknown."""
    try:
        return int(msg.metadata.timestamp.timestamp() * 1000)
    except (ValueError, IndexError, AttributeError):
        return None


def _stream_seq(msg: Msg) -> tuple[int | None, int]:
    """``(stream sequence, deliveries so far)`` from the ack subject."""
    try:
        meta = msg.metadata
        return meta.sequence.stream, meta.num_delivered
    except (ValueError, IndexError, AttributeError):
        return None, 1


def _header(msg: Msg, name: str) -> str | None:
    value = (msg.headers or {}).get(name)
    return value if isinstance(value, str) else None


def _uuid_text(value: str | None) -> str | None:
    try:
        return str(uuid.UUID(value)) if value else None
    except ValueError:
        return None


class Receiver:
    """Pulls, verifies, stores, acknowledges (see the module docstring)."""

    def __init__(
        self,
        config: ReceiveConfig,
        *,
        keyring: Keyring,
        watch: DirectoryWatch,
        link: Link,
        db: Database,
        receipts: ReceiptSender,
        metrics: AgentMetrics,
        refresh_directory: Callable[[], Awaitable[bool]],
        on_stored: Callable[[StoredBatch], None],
    ) -> None:
        """Receive for ``keyring.partner_id``."""
        self._config = config
        self._me = keyring.partner_id
        self._keyring = keyring
        self._watch = watch
        self._link = link
        self._db = db
        self._receipts = receipts
        self._metrics = metrics
        self._refresh = refresh_directory
        self._on_stored = on_stored
        self._slots: dict[Priority, asyncio.Queue[list[Msg]]] = {
            p: asyncio.Queue(maxsize=1) for p in Priority
        }
        # A batch interrupted by a more urgent one, with the results so far (taken first).
        self._rest: dict[Priority, tuple[list[Msg], list[_Examined]]] = {}
        self._ready = asyncio.Event()
        self._newer_named = False  # an envelope named a newer configuration edition

    async def run(self, stop: asyncio.Event) -> None:
        """Pull and process until ``stop``."""
        tasks = [asyncio.create_task(self._pull(p, stop)) for p in Priority]
        tasks.append(asyncio.create_task(self._process(stop)))
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _pull(self, priority: Priority, stop: asyncio.Event) -> None:
        consumer = delivery_consumer_name(self._me, priority)
        delay = 0.1
        while not stop.is_set():
            conn = await self._link.connected(stop)
            try:
                msgs = await conn.fetch(
                    DELIVERY_STREAM, consumer, self._config.batch, expires=self._config.expires
                )
                delay = 0.1
            except TransportError as exc:
                _log.warning("agent.pull_retry", priority=priority.label, reason=exc.reason.value)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                delay = min(delay * 2, 5.0)
                continue
            if msgs:
                await self._slots[priority].put(msgs)  # waits while one batch is still ready
                self._ready.set()

    def _take(self) -> tuple[Priority, list[Msg], list[_Examined]] | None:
        """The next batch, most urgent first: ``(priority, messages, results so far)``."""
        for priority in Priority:  # FLASH, URGENT, ROUTINE
            rest = self._rest.pop(priority, None)
            if rest is not None:
                return priority, *rest
            slot = self._slots[priority]
            if not slot.empty():
                return priority, slot.get_nowait(), []
        return None

    def _more_urgent_waiting(self, priority: Priority) -> bool:
        return any(p in self._rest or not self._slots[p].empty() for p in Priority if p < priority)

    async def _process(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            taken = self._take()
            if taken is None:
                self._ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), timeout=1.0)
                continue
            started = time.perf_counter()
            await self.handle(*taken)
            self._metrics.batch_seconds.labels(taken[0].label).observe(
                time.perf_counter() - started
            )

    async def handle(
        self, priority: Priority, msgs: list[Msg], examined: list[_Examined] | None = None
    ) -> None:
        """Verify, store and acknowledge one pulled batch, then wake the receipt sender.

        ``examined``: the results of the first messages, examined before a more urgent batch
        interrupted this one (see the module docstring), which may interrupt it again.
        """
        view = self._watch.current
        done = await self._examine_batch(priority, msgs, view, list(examined or []))
        if done is None:
            return  # handed back: a more urgent batch goes first
        examined = done
        if self._newer_named:  # its sender routes by a newer edition already: fetch it now
            self._newer_named = False
            await self._refresh()
        curable = any(isinstance(e, Refusal) and e.reason in _CURABLE for e in examined)
        if curable and await self._refresh():  # a newer directory may know the sender now
            view = self._watch.current
            examined = [self._examine(m, view) for m in msgs]
        crash_point("after_open")
        deliveries = [e for e in examined if isinstance(e, Delivery)]
        notices = [e for e in examined if isinstance(e, NoticeIn)]
        final, later = self._sort_refusals(msgs, examined)
        try:
            stored = await self._db.run(
                self._db.store.record_batch,
                deliveries,
                notices,
                [(_stream_seq(m)[0], r.event_id, int(priority), r.reason.value) for m, r in final],
                at_ms=_now_ms(),
                webhooks=self._config.webhooks,
            )
        except RelaisError as exc:
            # Nothing stored: every message comes back after the delay.
            _log.error("agent.inbox_write_failed", reason=exc.reason.value)
            await self._settle(self._link.conn, msgs, examined, [], msgs, acked=False)
            return
        crash_point("after_store")
        # Stored with their DELIVERED entries: the receipt sender publishes them (and keeps
        # trying if the broker does not answer), so the messages are done with.
        await self._settle(self._link.conn, msgs, examined, final, later, acked=True)
        if (deliveries or notices) and priority is Priority.FLASH:
            await self._receipts.sign_now()  # before going back to less urgent work
        elif deliveries or notices:
            self._receipts.wake()
        self._on_stored(stored)
        self._report(priority, examined, stored, final)

    async def _examine_batch(
        self, priority: Priority, msgs: list[Msg], view: DirectoryView, examined: list[_Examined]
    ) -> list[_Examined] | None:
        """Examine the messages ``examined`` does not cover yet; every result, or ``None``.

        Below FLASH, the event loop gets a turn every :data:`PREEMPT_SECONDS` (the pullers
        put what they fetch in their slots); when a more urgent batch is waiting, the batch
        is handed back with what was examined so far (nothing stored, nothing acknowledged),
        to be taken again before new batches of this priority, and ``None`` is returned.
        """
        if priority is Priority.FLASH:
            return [*examined, *(self._examine(m, view) for m in msgs[len(examined) :])]
        clock = time.perf_counter
        until = clock() + PREEMPT_SECONDS
        start = len(examined)
        for index in range(start, len(msgs)):
            if index > start and clock() >= until:
                # A fetched message takes a few turns of the loop to reach its slot.
                for _ in range(2):
                    await asyncio.sleep(0)
                if self._more_urgent_waiting(priority):
                    self._rest[priority] = (msgs, examined)
                    return None
                until = clock() + PREEMPT_SECONDS
            examined.append(self._examine(msgs[index], view))
        return examined

    def _sort_refusals(
        self, msgs: list[Msg], examined: list[_Examined]
    ) -> tuple[list[tuple[Msg, Refusal]], list[Msg]]:
        final: list[tuple[Msg, Refusal]] = []
        later: list[Msg] = []
        for msg, result in zip(msgs, examined, strict=True):
            if not isinstance(result, Refusal):
                continue
            delivered = _stream_seq(msg)[1]
            if result.reason is Reason.NOT_READY:
                later.append(msg)  # our own failure: never dropped for it
            elif result.reason in _CURABLE and delivered < self._config.retry_deliveries:
                later.append(msg)
            else:
                final.append((msg, result))
        return final, later

    async def _settle(
        self,
        conn: Any,
        msgs: list[Msg],
        examined: list[_Examined],
        final: list[tuple[Msg, Refusal]],
        later: list[Msg],
        acked: bool,
    ) -> None:
        if conn is None:
            return
        try:
            if acked:
                for msg, result in zip(msgs, examined, strict=True):
                    if not isinstance(result, Refusal):
                        await conn.ack(msg)
            for msg, _ in final:
                await conn.term(msg)
            for msg in later:
                await conn.nak(msg, delay=self._config.retry_delay)
        except TransportError as exc:
            # Unacknowledged messages come back: storing them again changes nothing.
            _log.warning("agent.ack_failed", reason=exc.reason.value)

    # -- verification ----------------------------------------------------------------------

    def _examine(self, msg: Msg, view: DirectoryView) -> _Examined:
        try:
            return self._examine_unguarded(msg, view)
        except Exception as exc:  # noqa: BLE001 - a defect here must not drop the message
            _log.error("agent.examine_failed", error=type(exc).__name__)
            return self._refusal(msg, Reason.NOT_READY)

    def _examine_unguarded(self, msg: Msg, view: DirectoryView) -> _Examined:
        data = msg.data
        if len(data) < 5:
            return self._refusal(msg, Reason.TRUNCATED)
        if data[4] == KIND_EVENT:
            return self._examine_envelope(msg, view)
        if data[4] in KINDS:
            return self._examine_statement(msg, view)
        return self._refusal(msg, Reason.WRONG_KIND)

    def _refusal(self, msg: Msg, reason: Reason) -> Refusal:
        event_id = _uuid_text(_header(msg, H_EVENT_ID))
        event_type = "unknown"
        with contextlib.suppress(RelaisError, ValueError, IndexError):
            header = peek_header(msg.data)  # unverified: ids for the record only
            event_id, event_type = str(header.event_id), header.event_type.value
        return Refusal(reason, event_id, event_type)

    def _examine_envelope(self, msg: Msg, view: DirectoryView) -> Delivery | Refusal:
        try:
            env = verify_envelope(msg.data, keys=view.keys)
            h = env.header
            self._newer_named = self._newer_named or h.edition > view.serial
            ref = next((r for r in (*h.recipients, *h.fallback) if r.partner_id == self._me), None)
            if ref is None:
                raise EnvelopeError(Reason.NOT_A_RECIPIENT)
            identity = self._keyring.by_key_id(ref.key_id)
            if identity is None:
                raise EnvelopeError(Reason.UNKNOWN_KEY)
            open_envelope(env, recipient=identity, keys=view.keys)  # decrypts: checks it all
        except EnvelopeError as exc:
            return self._refusal(msg, exc.reason)
        rule = _header(msg, H_RULE)
        return Delivery(
            event_id=str(h.event_id),
            event_type=h.event_type.value,
            # An escalated copy may come on a more urgent subject than the sender's priority:
            # it is served (webhooks) at the more urgent of the two.
            priority=min(int(h.priority), int(self._priority_of(msg))),
            sender=h.sender,
            rule=rule if rule is not None and _RULE_RE.fullmatch(rule) else None,
            escalation=_uuid_text(_header(msg, H_ESCALATION)),
            envelope=msg.data,
            stream_seq=_stream_seq(msg)[0] or 0,
        )

    def _examine_statement(self, msg: Msg, view: DirectoryView) -> NoticeIn | Refusal:
        priority = int(self._priority_of(msg))
        try:
            # Key validity is judged when the broker stored it, not when the signer says.
            statement = verify_statement(msg.data, keys=view.keys, now_ms=_stored_ms(msg))
            if view.keys.partner_kind(statement.signer) is not PartnerKind.GATEWAY:
                raise EnvelopeError(Reason.SIGNER_NOT_GATEWAY)
            record = statement.record
            if statement.event_type is EventType.REJECTION:
                return self._rejection(record, priority, statement.signer)
            if statement.event_type is EventType.ESCALATION_NOTICE:
                return self._escalation(record, priority, statement.signer)
            if statement.event_type is EventType.PROGRESS_NOTICE:
                return self._progress(record, priority, statement.signer)
            raise EnvelopeError(Reason.WRONG_KIND)
        except EnvelopeError as exc:
            return self._refusal(msg, exc.reason)

    def _rejection(self, record: dict[str, Any], priority: int, signer: str) -> NoticeIn:
        if record["sender"] != self._me:
            raise EnvelopeError(Reason.NOT_A_RECIPIENT)
        code = str(record["reason_code"])
        reason = code if ROUTING_VALUE_RE.fullmatch(code) else "UNKNOWN"
        return NoticeIn(
            notice_id=str(record["rejection_id"]),
            kind=NoticeKind.REJECTION,
            event_id=str(record["event_id"]),
            priority=priority,
            record={**to_jsonable(record), "reason_code": reason, "signer": signer},
            outbox_state=SentState.REJECTED,
            reason=reason,
        )

    def _escalation(self, record: dict[str, Any], priority: int, signer: str) -> NoticeIn:
        own = record["sender"] == self._me
        if not own and self._me not in record["fallback_recipients"]:
            raise EnvelopeError(Reason.NOT_A_RECIPIENT)
        return NoticeIn(
            notice_id=str(record["notice_id"]),
            kind=NoticeKind.ESCALATION_NOTICE,
            event_id=str(record["event_id"]),
            priority=priority,
            record={**to_jsonable(record), "signer": signer},
            outbox_state=SentState.ESCALATED if own else None,
            steps=escalation_steps(record) if own else (),
        )

    def _progress(self, record: dict[str, Any], priority: int, signer: str) -> NoticeIn:
        """Steps of our own sent events at their recipients (protocol §7.3)."""
        if record["sender"] != self._me:
            raise EnvelopeError(Reason.NOT_A_RECIPIENT)
        steps = notice_steps(record)
        if not all(PARTNER_ID_RE.fullmatch(s.partner) for s in steps):
            raise EnvelopeError(Reason.MALFORMED_HEADER)
        events = {s.event_id for s in steps}
        return NoticeIn(
            notice_id=str(record["notice_id"]),
            kind=NoticeKind.PROGRESS_NOTICE,
            event_id=events.pop() if len(events) == 1 else "",  # "": about several events
            priority=priority,
            record={**to_jsonable(record), "signer": signer},
            outbox_state=None,
            steps=steps,
        )

    @staticmethod
    def _priority_of(msg: Msg) -> Priority:
        label = msg.subject.rsplit(".", 1)[-1]
        return Priority[label] if label in Priority.__members__ else Priority.URGENT

    # -- reporting -------------------------------------------------------------------------

    def _report(
        self,
        priority: Priority,
        examined: list[_Examined],
        stored: StoredBatch,
        final: list[tuple[Msg, Refusal]],
    ) -> None:
        new_events, new_notices = set(stored.new_events), set(stored.new_notices)
        finals = {id(r) for _, r in final}
        for result in examined:
            if isinstance(result, Delivery):
                outcome = "stored" if result.event_id in new_events else "duplicate"
                self._line("agent.delivered", result.event_id, result.event_type, priority, outcome)
            elif isinstance(result, NoticeIn):
                outcome = "stored" if result.notice_id in new_notices else "duplicate"
                self._line("agent.notice", result.event_id, result.kind.value, priority, outcome)
            else:
                outcome = "terminated" if id(result) in finals else "retry_later"
                self._line(
                    "agent.refused",
                    result.event_id,
                    result.event_type,
                    priority,
                    outcome,
                    result.reason.value,
                )

    def _line(
        self,
        what: str,
        event_id: str | None,
        event_type: str,
        priority: Priority,
        outcome: str,
        reason: str = "",
    ) -> None:
        self._metrics.deliveries.labels(event_type, priority.label, outcome, reason).inc()
        _log.info(
            what,
            event_id=event_id,
            event_type=event_type,
            priority=priority.label,
            outcome=outcome,
            reason=reason or None,
        )
