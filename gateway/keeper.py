"""The keeper (tracker role): retention with evidence, and the gauges the alerting rules watch.

Every ``every_seconds`` (:meth:`Keeper.step`):

1. **retention of the tracker**: events that left ``open`` longer ago than the partnership's
   ``tracker_closed_seconds`` (signed in the directory, :mod:`relais.broker_config.retention`)
   are forgotten; the ``PURGED`` audit record (``store`` = ``tracker``, ``count``, ``up_to``)
   is committed with the purge in the tracker's database and then published, so a crash in
   between publishes it at the next start (Nats-Msg-Id ``purge:<store>:<up_to>``);
2. **retention of the streams**: nats-server drops the messages of INGRESS, DELIVERY,
   RECEIPTS, QUARANTINE and AUDIT older than their ``max_age``; the keeper sees the first
   sequence of each move and records it (``PURGED``, ``store`` = the stream name, ``count``
   sequences, ``up_to`` = now minus the limit, ``first_seq``), except for AUDIT itself,
   whose retained start ``relais audit verify`` reports;
3. **watch**: deadlines (open, overdue, next deadline per priority), stream sizes and limits,
   each partner's undelivered backlog and waiting pull requests, the broker's
   ``sync_always``, and an incremental verification of the audit chain
   (:class:`~relais.gateway.audit.AuditVerifier` fed with the new messages: a problem sets
   ``relais_audit_verified_ok`` to 0 until the gateway restarts after an operator looked).

The tracker's database is shared with the tracker on the same event loop; the tracker keeps
a transaction open across awaits, so the keeper writes only when none is open (else it
tries again at the next step) and never awaits inside its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import httpx
import structlog

from relais.broker_config.connection import Connection
from relais.broker_config.retention import STREAM_RETENTION, Retention
from relais.gateway import metrics
from relais.gateway.audit import AUDIT_STREAM, AuditKind, AuditVerifier, append_record
from relais.gateway.jetstream import read_stream
from relais.gateway.policy import Policy
from relais.gateway.tracker_store import TrackerStore
from relais.schemas.domain import Priority
from relais.schemas.errors import RelaisError

__all__ = ["Keeper", "KeeperConfig"]

_log = structlog.get_logger(__name__)
_DELIVERY_CONSUMER_RE: Final = re.compile(r"out-(?P<partner>.+)-(?P<priority>FLASH|URGENT|ROUTINE)")
_NS: Final = 1_000_000_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class KeeperConfig:
    """Tunables of the keeper (from the gateway settings)."""

    every_seconds: float = 5.0
    monitor_url: str | None = None  # nats-server monitoring, for sync_always
    verify_audit: bool = True


class Keeper:
    """Retention and watch for the tracker role (see the module docstring)."""

    def __init__(
        self,
        conn: Connection,
        store: TrackerStore,
        policy: Callable[[], Policy],
        *,
        config: KeeperConfig | None = None,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self._conn = conn
        self._store = store
        self._policy = policy
        self._config = config or KeeperConfig()
        self._clock = clock
        self._verifier: AuditVerifier | None = None
        self._verify_from = 1
        self._reported_problem = False

    @property
    def retention(self) -> Retention:
        """The limits of the directory edition in force."""
        return self._policy().directory.retention

    async def step(self) -> None:
        """One round: retention first (evidence), then the gauges; a part that fails (e.g.
        a call the role's credential does not allow) does not stop the others."""
        self.watch_deadlines()
        parts = [
            self.purge_tracker,
            self.publish_purge_records,
            self.observe_streams,
            self.watch_partners,
            self.watch_sync,
        ]
        if self._config.verify_audit:
            parts.append(self.verify_audit)
        for part in parts:
            try:
                await part()
            except Exception as exc:  # noqa: BLE001 - retried at the next round
                reason = exc.reason.value if isinstance(exc, RelaisError) else type(exc).__name__
                _log.warning("keeper.step_failed", part=part.__name__, reason=reason)

    async def run(self, stop: asyncio.Event) -> None:
        """Run :meth:`step` every ``every_seconds`` until ``stop``."""
        while not stop.is_set():
            await self.step()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.every_seconds):
                    await stop.wait()

    # -- retention ---------------------------------------------------------------------------

    async def purge_tracker(self) -> int:
        """Forget closed events past ``tracker_closed_seconds``; how many (0 when busy)."""
        now = self._clock()
        up_to = self.retention.cutoff_ms("tracker_closed_seconds", now)
        if self._store.in_transaction:
            return 0
        with self._store.transaction():
            count = self._store.purge(up_to)
            if count:
                fields = {"store": "tracker", "count": count, "up_to": up_to, "at": now}
                self._store.keep_purge_record(f"purge:tracker:{up_to}", fields)
        if count:
            metrics.RETENTION_PURGED.labels("tracker").inc(count)
            _log.info("keeper.purged", store="tracker", count=count, up_to=up_to)
        return count

    async def publish_purge_records(self) -> None:
        """Publish the PURGED records committed with their purge, then drop them."""
        for msg_id, fields in self._store.purge_records():
            await append_record(self._conn, AuditKind.PURGED, fields, msg_id=msg_id)
            if not self._store.in_transaction:
                self._store.drop_purge_record(msg_id)

    async def observe_streams(self) -> None:
        """Stream gauges, and a PURGED record when a stream's first sequence moved on."""
        now = self._clock()
        for stream in STREAM_RETENTION:
            info = await self._conn.api(f"$JS.API.STREAM.INFO.{stream}")
            state, config = info.get("state") or {}, info.get("config") or {}
            max_age_s = int(config.get("max_age", 0)) / _NS
            self._stream_gauges(stream, state, config, max_age_s)
            if stream == AUDIT_STREAM:
                # Its own expiry is shown by verification (where the retained chain begins);
                # a record of it would itself expire and call for another, for ever.
                continue
            first_seq = int(state.get("first_seq", 0))
            # Records streams deny delete and purge: sequences before the first were expired.
            seen = self._store.mark(stream) or 1
            if first_seq <= seen:
                continue
            count = first_seq - seen
            up_to = now - int(max_age_s * 1000)
            fields = {
                "store": stream,
                "count": count,
                "up_to": up_to,
                "first_seq": first_seq,
                "at": now,
            }
            await append_record(
                self._conn, AuditKind.PURGED, fields, msg_id=f"purge:{stream}:{first_seq}"
            )
            if not self._store.in_transaction:
                self._store.set_mark(stream, first_seq)
            metrics.RETENTION_PURGED.labels(stream).inc(count)
            _log.info("keeper.expired", store=stream, count=count, first_seq=first_seq)

    @staticmethod
    def _stream_gauges(
        stream: str, state: dict[str, Any], config: dict[str, Any], max_age_s: float
    ) -> None:
        metrics.STREAM_MESSAGES.labels(stream).set(int(state.get("messages", 0)))
        metrics.STREAM_BYTES.labels(stream).set(int(state.get("bytes", 0)))
        metrics.STREAM_MAX_BYTES.labels(stream).set(int(config.get("max_bytes", -1)))
        metrics.STREAM_MAX_AGE.labels(stream).set(max_age_s)
        first_ts = state.get("first_ts")
        if int(state.get("messages", 0)) and isinstance(first_ts, str):
            with contextlib.suppress(ValueError):
                metrics.STREAM_FIRST_TIME.labels(stream).set(_rfc3339_seconds(first_ts))

    # -- watch -------------------------------------------------------------------------------

    def watch_deadlines(self) -> None:
        """Open and overdue events and the next deadline, per priority."""
        now = self._clock()
        summaries = {s.priority: s for s in self._store.deadlines(now)}
        for priority in Priority:
            found = summaries.get(priority.label)
            metrics.TRACKER_OPEN.labels(priority.label).set(found.open if found else 0)
            metrics.TRACKER_OVERDUE.labels(priority.label).set(found.overdue if found else 0)
            if found is not None and found.next_deadline_at is not None:
                seconds = (found.next_deadline_at - now) / 1000
                metrics.TRACKER_NEXT_DEADLINE.labels(priority.label).set(seconds)
            else:
                with contextlib.suppress(KeyError):
                    metrics.TRACKER_NEXT_DEADLINE.remove(priority.label)

    async def watch_partners(self) -> None:
        """Per partner: deliveries not acknowledged yet, and pull requests waiting."""
        waiting: dict[str, int] = {}
        offset = 0
        while True:
            page = await self._conn.api("$JS.API.CONSUMER.LIST.DELIVERY", {"offset": offset})
            listed = page.get("consumers") or []
            for consumer in listed:
                match = _DELIVERY_CONSUMER_RE.fullmatch(str(consumer.get("name", "")))
                if match is None:
                    continue
                partner, priority = match["partner"], match["priority"]
                backlog = int(consumer.get("num_pending", 0))
                backlog += int(consumer.get("num_ack_pending", 0))
                metrics.PARTNER_PENDING.labels(partner, priority).set(backlog)
                waiting[partner] = waiting.get(partner, 0) + int(consumer.get("num_waiting", 0))
            offset += len(listed)
            if not listed or offset >= int(page.get("total", 0)):
                break
        for partner, count in waiting.items():
            metrics.PARTNER_WAITING.labels(partner).set(count)

    async def watch_sync(self) -> None:
        """``relais_broker_sync_always``: 1 only when the server reports it (else 0)."""
        if self._config.monitor_url is None:
            return
        url = f"{self._config.monitor_url.rstrip('/')}/varz"
        durable = False
        try:
            async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
                response = await client.get(url)
                response.raise_for_status()
                config = (response.json().get("jetstream") or {}).get("config") or {}
                durable = config.get("sync_always") is True
        except (httpx.HTTPError, ValueError, AttributeError):
            durable = False  # unreadable is not durable: the alert fires
        metrics.BROKER_SYNC_ALWAYS.set(1 if durable else 0)

    async def verify_audit(self) -> None:
        """Feed the audit messages stored since the last round to the running verifier."""
        policy = self._policy()
        if self._verifier is None:
            info = await self._conn.api(f"$JS.API.STREAM.INFO.{AUDIT_STREAM}")
            retained = bool((info.get("config") or {}).get("max_age", 0))
            self._verifier = AuditVerifier(
                keys=policy.keys, partnership=policy.directory.partnership, retained=retained
            )
        verifier = self._verifier
        verifier.keys = policy.keys  # a newer edition may hold a rotated gateway key
        messages = read_stream(self._conn, AUDIT_STREAM, start=self._verify_from)
        async with contextlib.aclosing(messages):
            async for msg in messages:
                verifier.feed(msg)
                self._verify_from = msg.seq + 1
                if verifier.problem is not None:
                    break
        if verifier.problem is not None:
            metrics.AUDIT_VERIFIED_OK.set(0)
            if not self._reported_problem:
                self._reported_problem = True
                _log.error(
                    "keeper.audit_problem",
                    reason=verifier.problem.reason.value,
                    seq=verifier.problem.seq,
                )
            return
        metrics.AUDIT_VERIFIED_OK.set(1)
        metrics.AUDIT_VERIFIED_SEQ.set(self._verify_from - 1)
        metrics.AUDIT_VERIFIED_TIME.set(self._clock() / 1000)


def _rfc3339_seconds(text: str) -> float:
    """Unix seconds of nats-server's RFC 3339 time (nanosecond fractions cut to micro)."""
    head, _, fraction = text.rstrip("Z").partition(".")
    moment = datetime.fromisoformat(head + "+00:00")
    return moment.timestamp() + (float(f"0.{fraction[:6]}") if fraction else 0.0)
