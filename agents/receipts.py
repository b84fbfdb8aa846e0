"""Signed receipts: ``DELIVERED``, ``TAKEN_IN_CHARGE``, ``DECLINED``, ``CONCLUDED`` (with the
case's outcome) on ``ref.rcpt.<partner>``.

Receipt entries are recorded in the database in the same transaction as what they
acknowledge (the inbox row, the take-charge). :meth:`ReceiptSender.flush` then groups the
pending entries into statements (up to :data:`MAX_ENTRIES` per statement: receipts are
batched, protocol §7.2), signs each, keeps the signed bytes, and only then publishes them
with ``Nats-Msg-Id`` = the hex SHA-256 of the statement body (the encoded receipt record).
A statement whose publication was interrupted is re-sent byte for byte after a restart, so
the broker's duplicate window stores it once; the tracker is idempotent in any case.

The sender runs as a task woken by whoever records entries (the receiver after each stored
batch, take-charge and decline), so entries recorded while a statement is being published
go together in the next one: one statement per pull batch when idle, fewer under load.
Each flush is one trip to the database thread (sign and save the pending entries, list what
is unpublished), and publishing is not awaited before the next flush. The broker's
acknowledgements are recorded lazily, by the first flush at least :data:`MARK_AFTER_SECONDS`
later or when the agent stops (one transaction for many): a crash in between re-sends those
statements, which the duplicate window and the tracker absorb.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import structlog

from relais.agents.database import Database
from relais.agents.link import Link
from relais.agents.metrics import AgentMetrics
from relais.schemas.domain import EventType
from relais.schemas.envelope import LocalIdentity
from relais.schemas.errors import RelaisError, TransportError
from relais.schemas.names import receipts_subject
from relais.schemas.registry import MAIN_SECTION, default_registry
from relais.schemas.statements import sign_statement

__all__ = [
    "MARK_AFTER_SECONDS",
    "MAX_ENTRIES",
    "ReceiptSender",
    "receipt_record",
    "receipts_subject",
    "statement_msg_id",
]

# About 40 bytes per entry: far below the 64 KiB statement cap.
MAX_ENTRIES: Final = 500
# How long the broker's acknowledgement of a statement may stay unrecorded (see above).
MARK_AFTER_SECONDS: Final = 1.0
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_log = structlog.get_logger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def receipt_record(
    partner_id: str, entries: Sequence[tuple[str, str, str | None, int, str | None]]
) -> dict[str, Any]:
    """The receipt record for ``(event_id, state, decline_reason, at_ms, outcome)`` entries."""
    return {
        "recipient": partner_id,
        "entries": [
            {
                "event_id": event_id,
                "state": state,
                "decline_reason": reason,
                "outcome": outcome,
                "at": _EPOCH + dt.timedelta(milliseconds=at_ms),
            }
            for event_id, state, reason, at_ms, outcome in entries
        ],
    }


def statement_msg_id(record: dict[str, Any]) -> str:
    """``Nats-Msg-Id`` of a receipt: hex SHA-256 of the statement body (protocol §7.2)."""
    body = default_registry().by_type(EventType.RECEIPT).encode_section(MAIN_SECTION, record)
    return hashlib.sha256(body).hexdigest()


class ReceiptSender:
    """Turns pending receipt entries into signed, published statements."""

    def __init__(
        self,
        *,
        partner_id: str,
        signer: Callable[[], LocalIdentity],
        link: Link,
        partnership: str,
        db: Database,
        metrics: AgentMetrics,
    ) -> None:
        """Sign with ``signer()`` (the current key) and publish through ``link``."""
        self._partner_id = partner_id
        self._subject = receipts_subject(partner_id)
        self._signer = signer
        self._partnership = partnership
        self._link = link
        self._db = db
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        # statement id -> when the broker acknowledged it (not yet recorded in the database)
        self._unrecorded: dict[int, int] = {}
        self._in_flight: set[int] = set()  # statements being published
        self._publishing: set[asyncio.Task[int]] = set()
        self._failures: list[BaseException] = []

    def wake(self) -> None:
        """New entries were recorded: flush soon."""
        self._wake.set()

    async def flush(self) -> int:
        """Sign pending entries and publish every unpublished statement; how many were.

        Every acknowledgement is recorded before it returns (e.g. when the agent stops).
        Raises ``TransportError`` when the broker does not acknowledge (the statements stay
        stored and are re-sent by the next flush), ``RelaisError`` when no key may sign.
        """
        todo = await self._prepare(record_all=True)
        published = await self._publish(todo)
        async with self._lock:
            if self._unrecorded:
                marks = list(self._unrecorded)
                await self._db.run(self._db.store.mark_statements_published, marks, _now_ms())
                for sid in marks:
                    self._unrecorded.pop(sid, None)
        return published

    async def _prepare(self, *, record_all: bool) -> list[tuple[int, str, bytes]]:
        """Sign and save what is pending; the statements to publish now (marked in flight)."""
        async with self._lock:
            now = _now_ms()
            due = [
                sid
                for sid, at in self._unrecorded.items()
                if record_all or now - at >= MARK_AFTER_SECONDS * 1000
            ]
            signed, pending = await self._db.run(self._sign_pending, due, now)
            for sid in due:
                del self._unrecorded[sid]
            for state in signed:
                self._metrics.receipts.labels(state).inc()
            todo = [
                row
                for row in pending
                if row[0] not in self._unrecorded and row[0] not in self._in_flight
            ]
            self._in_flight.update(row[0] for row in todo)
            return todo

    def _sign_pending(
        self, acknowledged: Sequence[int], now: int
    ) -> tuple[list[str], list[tuple[int, str, bytes]]]:
        """On the database thread: record acknowledgements, sign and save the pending
        entries, list the unpublished statements; the states signed and that list."""
        store = self._db.store
        if acknowledged:
            store.mark_statements_published(acknowledged, now)
        states: list[str] = []
        while True:
            rows = store.pending_entries(MAX_ENTRIES)
            if not rows:
                return states, store.unpublished_statements()
            record = receipt_record(self._partner_id, [r[1:] for r in rows])
            data = sign_statement(
                EventType.RECEIPT, record, signer=self._signer(), partnership=self._partnership
            )
            store.save_statement([r[0] for r in rows], data, statement_msg_id(record), now)
            states.extend(row[2] for row in rows)

    async def _publish(self, todo: list[tuple[int, str, bytes]]) -> int:
        """Publish statements marked in flight by :meth:`_prepare` (unmarked however it ends)."""
        try:
            if not todo:
                return 0
            conn = self._link.require()
            results = await asyncio.gather(
                *(conn.js_publish(self._subject, data, msg_id=mid) for _, mid, data in todo),
                return_exceptions=True,
            )
            at = _now_ms()
            for (sid, _, _), res in zip(todo, results, strict=True):
                if not _failed(res):
                    self._unrecorded[sid] = at
            for res in results:
                if isinstance(res, BaseException):
                    raise res
            return len(todo)
        finally:
            self._in_flight.difference_update(row[0] for row in todo)

    async def sign_now(self) -> None:
        """Sign and save what is pending now and start publishing it (not awaited).

        For the receiver after a FLASH batch: the signature is made while the receiver
        waits, before it goes back to less urgent work that would compete with it for the
        interpreter. Failures are left to :meth:`run`, which retries.
        """
        try:
            todo = await self._prepare(record_all=False)
        except RelaisError as exc:  # TransportError included
            _log.warning("agent.receipts_deferred", reason=exc.reason.value)
            self.wake()
            return
        self._start_publishing(todo)

    def _start_publishing(self, todo: list[tuple[int, str, bytes]]) -> None:
        if not todo:
            return
        task = asyncio.get_running_loop().create_task(self._publish(todo))
        self._publishing.add(task)
        task.add_done_callback(self._published)

    def _published(self, task: asyncio.Task[int]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._failures.append(task.exception())  # type: ignore[arg-type]
            self.wake()

    async def run(self, stop: asyncio.Event) -> None:
        """Flush when woken (stored deliveries, take-charge, decline) or every second.

        Signing and saving are done one flush at a time; publishing is not awaited before
        the next flush, so a receipt recorded meanwhile (a FLASH delivery behind a routine
        backlog) does not wait for the acknowledgement of the statements before it.
        """
        delay = 0.1
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(delay, 1.0))
                self._wake.clear()
                try:
                    if self._failures:
                        raise self._failures.pop(0)
                    todo = await self._prepare(record_all=False)
                    delay = 0.1
                except (TransportError, RelaisError) as exc:
                    self._failures.clear()
                    _log.warning("agent.receipts_retry", reason=exc.reason.value)
                    delay = min(delay * 2, 30.0)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                    continue
                self._start_publishing(todo)
        finally:
            for task in list(self._publishing):
                task.cancel()
            if self._publishing:
                await asyncio.wait(set(self._publishing))


def _failed(result: object) -> bool:
    return isinstance(result, BaseException)
