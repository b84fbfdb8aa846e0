"""Progress notices: the tracker tells each sender how every recipient handled its events.

Every change the tracker makes to an (event, partner) is also a *step* for the event's
sender: ``ROUTED`` (the router delivered the copy; for a fallback recipient, the release on
escalation), ``DELIVERED``, ``TAKEN_IN_CHARGE``, ``DECLINED`` (with its reason),
``CONCLUDED`` (with its outcome: what the recipient decided, e.g. the CRIP's decision on a
danger declaration, which the declarant must be told), ``ESCALATED`` (the deadline passed
before this recipient took the event in charge, with the fallback recipients it went to).
Steps are ids, codes and times only; nothing of the content.

A step is written to the tracker's store in the same transaction as the change it reports
(:meth:`ProgressNotifier.step`), so it is never lost once the change is committed. After
each unit of work (and at every tick, for what failed before) :meth:`ProgressNotifier.flush`
groups the pending steps per sender and notice priority, up to :data:`MAX_STEPS` per notice
(one notice per batch of receipts or audit records, not one per step), signs each notice
with the gateway's key (statement kind ``0x05``, context ``progress``), keeps the signed bytes
and only then publishes them on ``ref.out.<sender>.<URGENT|ROUTINE>`` with ``Nats-Msg-Id``
``<notice id>:<sender>``: a notice re-sent after a crash is the same bytes, stored once. The
notice id is named by the steps it carries (UUID v5), never by the store's row numbers.

Progress of a ``FLASH`` or ``URGENT`` event goes on the sender's ``URGENT`` subject (its
agent serves alerts addressed to it first), of a ``ROUTINE`` event on ``ROUTINE``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import structlog

from relais.broker_config.connection import Connection
from relais.gateway.delivery import publish_statement, statement_id
from relais.gateway.tracker_store import (
    Step,
    StepState,
    StoredNotice,
    TrackedEvent,
    TrackerStore,
)
from relais.schemas.domain import EventType, Priority
from relais.schemas.envelope import LocalIdentity
from relais.schemas.errors import RelaisError
from relais.schemas.statements import sign_statement

__all__ = ["MAX_STEPS", "ProgressNotifier", "notice_priority", "progress_record"]

# About 150 bytes per step: far below the 64 KiB statement cap.
MAX_STEPS: Final = 200
_log = structlog.get_logger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _millis(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def notice_priority(event_priority: str) -> str:
    """The subject priority of the progress of an event of ``event_priority`` (a label)."""
    return Priority.ROUTINE.label if event_priority == Priority.ROUTINE.label else "URGENT"


def progress_record(
    notice_id: uuid.UUID, sender: str, steps: Sequence[Step], now: int
) -> dict[str, Any]:
    """The ``progress_notice`` record carrying ``steps`` (all about events of ``sender``)."""
    return {
        "notice_id": notice_id,
        "sender": sender,
        "steps": [
            {
                "event_id": s.event_id,
                "event_type": s.event_type,
                "partner": s.partner,
                "role": s.role.upper(),
                "state": s.state.value,
                "decline_reason": s.decline_reason,
                "outcome": s.outcome,
                "escalated_to": sorted(s.escalated_to),
                "at": _millis(s.at),
            }
            for s in steps
        ],
        "issued_at": _millis(now),
    }


def _groups(steps: Sequence[Step]) -> Iterator[tuple[str, str, list[Step]]]:
    """``(sender, priority, steps)`` in order of first appearance, at most MAX_STEPS each."""
    by_target: dict[tuple[str, str], list[Step]] = {}
    for step in steps:
        by_target.setdefault((step.sender, step.priority), []).append(step)
    for (sender, priority), group in by_target.items():
        for start in range(0, len(group), MAX_STEPS):
            yield sender, priority, group[start : start + MAX_STEPS]


class ProgressNotifier:
    """Records steps with the tracker's changes and sends them as signed notices."""

    def __init__(
        self,
        conn: Connection,
        store: TrackerStore,
        signer: LocalIdentity,
        *,
        partnership: Callable[[], str],
        lock: asyncio.Lock,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        """Use ``store`` under ``lock`` (the tracker's: one unit of work at a time); sign
        for ``partnership()`` (the directory edition in force)."""
        self._conn = conn
        self._store = store
        self._signer = signer
        self._partnership = partnership
        self._lock = lock
        self._clock = clock
        self._sending = asyncio.Lock()  # one flush at a time publishes

    def step(
        self,
        event: TrackedEvent,
        partner: str,
        role: str,
        state: StepState,
        at: int,
        *,
        decline_reason: str | None = None,
        outcome: str | None = None,
        escalated_to: Sequence[str] = (),
    ) -> None:
        """Record a step of ``event`` at ``partner`` (inside the caller's transaction)."""
        self._store.add_step(
            Step(
                sender=event.sender,
                priority=notice_priority(event.priority),
                event_id=event.event_id,
                event_type=event.event_type,
                partner=partner,
                role=role,
                state=state,
                at=at,
                decline_reason=decline_reason,
                outcome=outcome,
                escalated_to=tuple(escalated_to),
            )
        )

    def escalated(
        self, event: TrackedEvent, overdue: Sequence[str], released: bool, at: int
    ) -> None:
        """The steps of an escalation: each overdue recipient's, and each fallback's release."""
        for partner in overdue:
            self.step(
                event, partner, "recipient", StepState.ESCALATED, at, escalated_to=event.fallback
            )
        if released:
            for fallback in event.fallback:
                self.step(event, fallback, "fallback", StepState.ROUTED, at)

    async def flush(self) -> int:
        """Sign the pending steps into notices and publish every unpublished one; how many.

        A notice the broker does not acknowledge stays stored and is sent again by the next
        flush (the tracker flushes at every tick).
        """
        async with self._sending:
            async with self._lock:
                todo = self._sign_pending()
            if not todo:
                return 0
            results = await asyncio.gather(
                *(self._publish(notice) for notice in todo), return_exceptions=True
            )
            done = [n.notice_id for n, r in zip(todo, results, strict=True) if r is None]
            for result in results:
                if isinstance(result, BaseException) and not isinstance(result, RelaisError):
                    raise result
            if done:
                async with self._lock:
                    with self._store.transaction():
                        self._store.notices_published(done, self._clock())
            if len(done) < len(todo):
                _log.warning("tracker.progress_retry", notices=len(todo) - len(done))
            return len(done)

    def _sign_pending(self) -> list[StoredNotice]:
        now = self._clock()
        with self._store.transaction():
            while steps := self._store.pending_steps(MAX_STEPS * 10):
                for sender, priority, group in _groups(steps):
                    # Named by what it says: a tracker rebuilt from the streams, whose
                    # steps are numbered afresh, never reuses an id for other steps (the
                    # broker would drop the notice as a duplicate), and telling the same
                    # steps again is stored once.
                    told = (f"{s.event_id}:{s.partner}:{s.state.value}" for s in group)
                    notice_id = statement_id("progress", sender, *told)
                    record = progress_record(notice_id, sender, group, now)
                    data = sign_statement(
                        EventType.PROGRESS_NOTICE,
                        record,
                        signer=self._signer,
                        partnership=self._partnership(),
                        now_ms=now,
                    )
                    events = {s.event_id for s in group}
                    only = str(group[0].event_id) if len(events) == 1 else None
                    notice = StoredNotice(str(notice_id), sender, priority, only, data)
                    self._store.save_notice(notice, [s.id for s in group], now)
            return self._store.unpublished_notices()

    async def _publish(self, notice: StoredNotice) -> None:
        await publish_statement(
            self._conn,
            notice.data,
            partner=notice.sender,
            priority=Priority[notice.priority],
            statement_uuid=uuid.UUID(notice.notice_id),
            statement_type=EventType.PROGRESS_NOTICE,
            event_id=None if notice.event_id is None else uuid.UUID(notice.event_id),
        )
        _log.info(
            "tracker.progress",
            notice_id=notice.notice_id,
            sender=notice.sender,
            priority=notice.priority,
        )
