"""Trackers on several hosts, exactly one active: the standby stays warm, takes over in seconds.

Every tracker process (``relais gateway run --role tracker`` on each host, each with its own
data directory) contends for the lease (:mod:`relais.gateway.lease`):

* **standby**: it reads ``AUDIT`` itself (direct gets, its own cursor), up to what the
  active tracker has acknowledged, and learns silently what was recorded there (events,
  recipients, deadlines, receipt states, escalations, closures); it reads ``RECEIPTS`` up to
  the active tracker's acknowledgement too and keeps each verified entry aside. It sends
  nothing and writes nothing.
* **active**: on taking the lease it catches up the same way, applies the entries kept aside
  (the receipts the previous tracker had kept for events it did not know yet), drains the
  receipts stored but not yet acknowledged, then runs the tracker's own loops (durable
  consumers, deadlines) and the jobs that must run once (audit checkpoints, retention). Before
  each escalation pass it drains again what ``RECEIPTS`` holds beyond the consumer's
  acknowledgement floor: a take-in-charge stored before the deadline is never missed because
  the consumer was backing off. It renews the lease every ``ttl / 4``; losing it stops every
  loop at once (fencing: see the lease).

A tracker that starts with an empty database (its host or disk lost) rebuilds everything
from the streams the same way, from sequence 1: nothing of the partnership's state lives only
on one disk. Two trackers started active by mistake still have one lease between them: the
other stays a standby. And since every message a tracker publishes carries a Nats-Msg-Id
derived from the event, even a brief overlap sends nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final

import structlog

from relais.broker_config.connection import Connection
from relais.gateway import metrics
from relais.gateway.jetstream import StoredMessage, read_stream
from relais.gateway.lease import Lease
from relais.gateway.tracker import AUDIT_CONSUMER, RECEIPTS_CONSUMER, Tracker
from relais.gateway.tracker_store import TrackerStore
from relais.schemas.errors import RelaisError

__all__ = ["ActiveTracker", "LeaderJob"]

LeaderJob = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
_AUDIT: Final = "AUDIT"
_RECEIPTS: Final = "RECEIPTS"
_CHUNK: Final = 500

_log = structlog.get_logger(__name__)


class ActiveTracker:
    """Runs one tracker as the active one or as a standby (see the module docstring)."""

    def __init__(
        self,
        tracker: Tracker,
        store: TrackerStore,
        conn: Connection,
        lease: Lease,
        *,
        jobs: Sequence[LeaderJob] = (),
    ) -> None:
        self.tracker = tracker
        self._store = store
        self._conn = conn
        self.lease = lease
        self._jobs = tuple(jobs)
        self.active = False
        tracker.may_act = lease.held
        tracker.before_escalation = self.drain_receipts

    async def run(self, stop: asyncio.Event) -> None:
        """Contend for the lease until ``stop``: standby, or active while it holds it."""
        try:
            while not stop.is_set():
                if await self.lease.attempt():
                    await self._lead(stop)
                    continue
                await self._follow()
                await _pause(stop, self.lease.config.renew_every)
        finally:
            self.tracker.silent = False
            await self.lease.release()

    # -- standby -------------------------------------------------------------------------------

    async def _follow(self) -> None:
        self.tracker.silent = True
        metrics.TRACKER_ACTIVE.set(0)
        try:
            await self.catch_up(park=True)
        except RelaisError as exc:
            _log.warning("tracker.standby_behind", reason=exc.reason.value)

    async def catch_up(self, *, park: bool) -> None:
        """Read AUDIT and RECEIPTS up to what the active tracker acknowledged."""
        audit_floor = await self._ack_floor(_AUDIT, AUDIT_CONSUMER)
        await self._read(_AUDIT, audit_floor, self.tracker.learn_stored)
        receipts_floor = await self._ack_floor(_RECEIPTS, RECEIPTS_CONSUMER)

        async def receipts(msgs: Sequence[StoredMessage]) -> None:
            await self.tracker.receipts_stored(msgs, park=park)

        await self._read(_RECEIPTS, receipts_floor, receipts)

    async def drain_receipts(self) -> None:
        """Apply the receipts stored beyond the consumer's acknowledgement (active only)."""
        if self.tracker.silent:
            return

        async def apply(msgs: Sequence[StoredMessage]) -> None:
            await self.tracker.receipts_stored(msgs, park=False)

        await self._read(_RECEIPTS, None, apply)

    async def _ack_floor(self, stream: str, consumer: str) -> int:
        info = await self._conn.api(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}")
        return int((info.get("ack_floor") or {}).get("stream_seq", 0))

    async def _read(
        self,
        stream: str,
        until: int | None,
        apply: Callable[[Sequence[StoredMessage]], Coroutine[Any, Any, None]],
    ) -> None:
        """Apply ``stream`` from the store's cursor on, up to ``until`` (None: the end)."""
        start = self._store.applied(stream) + 1
        if until is not None and start > until:
            return
        chunk: list[StoredMessage] = []
        async with contextlib.aclosing(read_stream(self._conn, stream, start=start)) as messages:
            async for msg in messages:
                if until is not None and msg.seq > until:
                    break
                chunk.append(msg)
                if len(chunk) >= _CHUNK:
                    await apply(chunk)
                    chunk = []
        if chunk:
            await apply(chunk)

    # -- active --------------------------------------------------------------------------------

    async def _lead(self, stop: asyncio.Event) -> None:
        term = asyncio.Event()  # the end of this term: lease lost, or stop
        self.tracker.silent = False
        self.active = True
        metrics.TRACKER_ACTIVE.set(1)
        _log.info("tracker.active", holder=self.lease.holder)
        try:
            await self.catch_up(park=True)
            await self.tracker.apply_parked()
            await self.drain_receipts()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._keep_lease(stop, term))
                group.create_task(self.tracker.run(term))
                for job in self._jobs:
                    group.create_task(job(term))
        except RelaisError as exc:
            _log.warning("tracker.takeover_failed", reason=exc.reason.value)
            await _pause(stop, self.lease.config.renew_every)
        finally:
            self.active = False
            metrics.TRACKER_ACTIVE.set(0)

    async def _keep_lease(self, stop: asyncio.Event, term: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await _pause(stop, self.lease.config.renew_every)
                if stop.is_set():
                    break
                if not await self.lease.attempt():
                    _log.warning("tracker.lease_lost", holder=self.lease.holder)
                    break
        finally:
            term.set()


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
