"""Signed receipts: ``DELIVERED``, ``TAKEN_IN_CHARGE``, ``DECLINED`` on ``ref.rcpt.<partner>``.

Receipt entries are recorded in the database in the same transaction as what they
acknowledge (the inbox row, the take-charge). :meth:`ReceiptSender.flush` then groups the
pending entries into statements (up to :data:`MAX_ENTRIES` per statement: receipts are
batched, protocol §7.2), signs each, keeps the signed bytes, and only then publishes them
with ``Nats-Msg-Id`` = the hex SHA-256 of the statement body (the encoded receipt record).
A statement whose publication was interrupted is re-sent byte for byte after a restart, so
the broker's duplicate window stores it once; the tracker is idempotent in any case.
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
from relais.schemas.registry import MAIN_SECTION, default_registry
from relais.schemas.statements import sign_statement

__all__ = ["MAX_ENTRIES", "ReceiptSender", "receipt_record", "receipts_subject", "statement_msg_id"]

# About 40 bytes per entry: far below the 64 KiB statement cap.
MAX_ENTRIES: Final = 500
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_log = structlog.get_logger(__name__)


def receipts_subject(partner_id: str) -> str:
    """``ref.rcpt.<partner>``: where a partner publishes its receipts."""
    return f"ref.rcpt.{partner_id}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def receipt_record(
    partner_id: str, entries: Sequence[tuple[str, str, str | None, int]]
) -> dict[str, Any]:
    """The receipt record for ``(event_id, state, decline_reason, at_ms)`` entries."""
    return {
        "recipient": partner_id,
        "entries": [
            {
                "event_id": event_id,
                "state": state,
                "decline_reason": reason,
                "at": _EPOCH + dt.timedelta(milliseconds=at_ms),
            }
            for event_id, state, reason, at_ms in entries
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
        db: Database,
        metrics: AgentMetrics,
    ) -> None:
        """Sign with ``signer()`` (the current key) and publish through ``link``."""
        self._partner_id = partner_id
        self._subject = receipts_subject(partner_id)
        self._signer = signer
        self._link = link
        self._db = db
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """New entries were recorded: flush soon."""
        self._wake.set()

    async def flush(self) -> int:
        """Sign pending entries and publish every unpublished statement; how many were.

        Raises ``TransportError`` when the broker does not acknowledge (the statements stay
        stored and are re-sent by the next flush), ``RelaisError`` when no key may sign.
        """
        async with self._lock:
            await self._sign_pending()
            return await self._publish_stored()

    async def _sign_pending(self) -> None:
        store = self._db.store
        while True:
            rows = await self._db.run(store.pending_entries, MAX_ENTRIES)
            if not rows:
                return
            record = receipt_record(self._partner_id, [r[1:] for r in rows])
            data = sign_statement(EventType.RECEIPT, record, signer=self._signer())
            msg_id = statement_msg_id(record)
            await self._db.run(store.save_statement, [r[0] for r in rows], data, msg_id, _now_ms())
            for row in rows:
                self._metrics.receipts.labels(row[2]).inc()

    async def _publish_stored(self) -> int:
        store = self._db.store
        pending = await self._db.run(store.unpublished_statements)
        if not pending:
            return 0
        conn = self._link.require()
        results = await asyncio.gather(
            *(conn.js_publish(self._subject, data, msg_id=mid) for _, mid, data in pending),
            return_exceptions=True,
        )
        done = [sid for (sid, _, _), res in zip(pending, results, strict=True) if not _failed(res)]
        if done:
            await self._db.run(store.mark_statements_published, done, _now_ms())
        for res in results:
            if isinstance(res, BaseException):
                raise res
        return len(done)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush when woken (take-charge, decline) or every second, until ``stop``."""
        delay = 0.1
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(delay, 1.0))
            self._wake.clear()
            try:
                await self.flush()
                delay = 0.1
            except (TransportError, RelaisError) as exc:
                _log.warning("agent.receipts_retry", reason=exc.reason.value)
                delay = min(delay * 2, 30.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)


def _failed(result: object) -> bool:
    return isinstance(result, BaseException)
