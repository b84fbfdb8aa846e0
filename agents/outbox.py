"""Store and forward: publish the sealed events of the outbox to ``ref.in.<partner>``.

Submissions are written to the outbox (sealed, durable) before they are answered; this task
publishes what is queued, FLASH first then in arrival order, with ``Nats-Msg-Id`` set to
the event id (``<event id>:e<edition>`` for an event re-sealed under a newer configuration
edition, :mod:`~relais.agents.reseal`), so a publish repeated after a lost acknowledgement, a
broker restart or an agent crash is stored once (the broker's duplicate window; beyond it,
the router's replay store). Publishes are pipelined: a window of them is sent at once and their
acknowledgements awaited together. While the broker is away the task waits for the
connection; a failed window is retried with exponential backoff and jitter (stamina).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import stamina
import structlog

from relais.agents.database import Database
from relais.agents.link import Link
from relais.agents.metrics import AgentMetrics
from relais.broker_config.connection import PubAck
from relais.schemas.domain import Priority
from relais.schemas.errors import TransportError
from relais.schemas.names import ingress_subject

__all__ = ["Publisher", "ingress_subject"]

_log = structlog.get_logger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Publisher:
    """Drains the outbox to the broker."""

    def __init__(
        self,
        *,
        partner_id: str,
        link: Link,
        db: Database,
        metrics: AgentMetrics,
        window: int,
        backoff_max: float,
    ) -> None:
        """Publish as ``partner_id`` through ``link``, ``window`` publishes at a time."""
        self._subject = ingress_subject(partner_id)
        self._link = link
        self._db = db
        self._metrics = metrics
        self._window = window
        self._backoff_max = backoff_max
        self._wake = asyncio.Event()
        # The reason code of the last failed publish, until one succeeds (for /readyz).
        self.blocked: str | None = None

    def wake(self) -> None:
        """Something was queued: publish it now."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish whatever is queued, then wait for more, until ``stop``."""
        while not stop.is_set():
            self._wake.clear()
            async for attempt in stamina.retry_context(
                on=TransportError,
                attempts=None,
                timeout=None,
                wait_initial=0.05,
                wait_max=self._backoff_max,
                wait_jitter=0.2,
            ):
                with attempt:
                    await self._drain(stop)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)

    async def _drain(self, stop: asyncio.Event) -> None:
        store = self._db.store
        while not stop.is_set():
            rows = await self._db.run(store.queued, self._window)
            self._metrics.outbox_queued.set(await self._db.run(store.count_queued))
            if not rows:
                return
            conn = await self._link.connected(stop)
            results = await asyncio.gather(
                *(conn.js_publish(self._subject, env, msg_id=mid) for _, _, _, env, mid in rows),
                return_exceptions=True,
            )
            acks: list[tuple[str, int]] = []
            failure: TransportError | None = None
            for (event_id, event_type, priority, _, _), result in zip(rows, results, strict=True):
                if isinstance(result, PubAck):
                    acks.append((event_id, result.seq))
                    self._published(event_id, event_type, priority, result)
                elif isinstance(result, TransportError):
                    failure = failure or result
                elif isinstance(result, BaseException):
                    raise result
            if acks:
                await self._db.run(store.mark_published, acks, _now_ms())
            self.blocked = None if failure is None else failure.reason.value
            if failure is not None:
                self._metrics.publish_failures.labels(failure.reason.value).inc()
                _log.warning("agent.publish_retry", reason=failure.reason.value)
                raise failure

    def _published(self, event_id: str, event_type: str, priority: int, ack: PubAck) -> None:
        label = Priority(priority).label
        self._metrics.published.labels(event_type, label).inc()
        _log.info(
            "agent.published",
            event_id=event_id,
            event_type=event_type,
            priority=label,
            outcome="duplicate" if ack.duplicate else "published",
            ingress_seq=ack.seq,
        )
