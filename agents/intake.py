"""Intake: sealed submissions written to the outbox, many per transaction, idempotently.

A submission is answered only once its sealed event is durable in the outbox. Concurrent
submissions are written together (group commit): the writer takes every submission waiting
and commits them in one transaction, so one fsync answers many requests.

Idempotency: a submission may carry a key (``Idempotency-Key``). The outbox remembers the
key with a fingerprint of the request: HMAC-SHA256, under a key derived from the partner's
private key, of the event type and the canonical JSON of the record (so the fingerprint at
rest reveals nothing of the content). The same key with the same request answers the first
submission again and queues nothing; with another request it is refused
(``IDEMPOTENCY_KEY_REUSED``). Two concurrent submissions with one key resolve inside the
writer's transaction: the first is written, the second answered with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from typing import Any, Final

import structlog

from relais.agents.database import Database
from relais.agents.metrics import AgentMetrics
from relais.agents.models import Outgoing, Submission
from relais.agents.store import OutboxRow
from relais.schemas.domain import EventType, Priority
from relais.schemas.errors import ConfigError, PayloadError, Reason, RelaisError
from relais.schemas.registry import to_jsonable

__all__ = ["Intake"]

_MAX_BATCH: Final = 256
_log = structlog.get_logger(__name__)

_Waiting = tuple[Outgoing, "asyncio.Future[tuple[OutboxRow, bytes | None]]"]


class Intake:
    """Writes submissions to the outbox (see the module docstring)."""

    def __init__(self, *, db: Database, metrics: AgentMetrics, mac_key: bytes) -> None:
        """Write through ``db``; fingerprint requests with ``mac_key``."""
        self._db = db
        self._metrics = metrics
        self._mac_key = mac_key
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self._closed = False

    def fingerprint(self, event_type: EventType, datum: Mapping[str, Any]) -> bytes:
        """The keyed fingerprint of a request (event type and canonical JSON record)."""
        text = json.dumps(to_jsonable(dict(datum)), sort_keys=True, separators=(",", ":"))
        message = event_type.value.encode() + b"\x00" + text.encode("utf-8")
        return hmac.new(self._mac_key, message, hashlib.sha256).digest()

    async def earlier(self, key: str, mac: bytes) -> Submission | None:
        """The submission made earlier with ``key`` (``None``: none), if it is the same."""
        found = await self._db.run(self._db.store.find_idempotent, key)
        return None if found is None else self._replayed(found, mac)

    async def write(self, outgoing: Outgoing) -> Submission:
        """Queue ``outgoing`` for the writer (:meth:`run`) and return once it is durable."""
        if self._closed:
            raise ConfigError("the agent is not running", reason=Reason.NOT_READY)
        future: asyncio.Future[tuple[OutboxRow, bytes | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self._queue.put_nowait((outgoing, future))
        row, mac = await future
        if row.event_id != outgoing.event_id:  # a concurrent submission with the key won
            return self._replayed((row, mac), outgoing.request_mac)
        self.report(row, "accepted")
        return submission(row, replayed=False)

    def _replayed(self, earlier: tuple[OutboxRow, bytes | None], mac: bytes | None) -> Submission:
        row, stored = earlier
        if stored is None or mac is None or not hmac.compare_digest(stored, mac):
            self._metrics.submitted.labels(
                row.event_type, Priority(row.priority).label, "refused", "IDEMPOTENCY_KEY_REUSED"
            ).inc()
            raise PayloadError(
                "the Idempotency-Key was used for another request",
                fields=("Idempotency-Key",),
                reason=Reason.IDEMPOTENCY_KEY_REUSED,
            )
        self.report(row, "replayed")
        return submission(row, replayed=True)

    def report(self, row: OutboxRow, outcome: str) -> None:
        """The canonical log line and the metric of a submission."""
        priority = Priority(row.priority).label
        self._metrics.submitted.labels(row.event_type, priority, outcome, "").inc()
        _log.info(
            "agent.submitted",
            event_id=row.event_id,
            event_type=row.event_type,
            priority=priority,
            outcome=outcome,
            rule=row.rule,
        )

    async def run(self) -> None:
        """Write waiting submissions, as many as are queued, one transaction at a time."""
        try:
            while True:
                batch = [await self._queue.get()]
                while not self._queue.empty() and len(batch) < _MAX_BATCH:
                    batch.append(self._queue.get_nowait())
                await self._commit(batch)
        finally:
            self._closed = True
            while not self._queue.empty():
                _, future = self._queue.get_nowait()
                future.cancel()

    async def _commit(self, batch: list[_Waiting]) -> None:
        try:
            rows = await self._db.run(self._db.store.insert_outgoing, [o for o, _ in batch])
        except RelaisError as exc:
            _log.error("agent.outbox_write_failed", reason=exc.reason.value)
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        ConfigError("the outbox cannot be written", reason=Reason.NOT_READY)
                    )
            return
        for (_, future), row in zip(batch, rows, strict=True):
            if not future.done():
                future.set_result(row)


def submission(row: OutboxRow, *, replayed: bool) -> Submission:
    """The answer to a submission, from its outbox row."""
    return Submission(
        event_id=uuid.UUID(row.event_id),
        event_type=EventType(row.event_type),
        priority=Priority(row.priority),
        recipients=row.recipients,
        fallback=row.fallback,
        rule=row.rule,
        triage=row.triage,
        replayed=replayed,
        edition=row.edition,
    )
