"""Webhook delivery to the partner's system, Standard Webhooks signed, in priority order.

Each received event (and each notice: rejection, escalation) is one webhook call, made
after the event is safely in the inbox. The call is ``POST <webhook_url>`` with a JSON body
and the Standard Webhooks headers::

    webhook-id         the event id (or notice id): the receiver deduplicates on it
    webhook-timestamp  Unix seconds of this attempt
    webhook-signature  v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>

The body is built when the call is made (the event is decrypted then, never stored in
clear). Any 2xx is success. Retry policy:

* 429 and 503: the receiver asks to slow down; the whole endpoint pauses for its
  ``Retry-After`` (seconds or an HTTP date), or the backoff when absent;
* connection failures and timeouts: the endpoint is down; it pauses with exponential
  backoff (doubling from ``webhook_backoff_initial_seconds`` up to the maximum, half of it
  random), and the call is tried again first when it resumes;
* any other status: that call alone is retried with the same backoff;
* after ``webhook_give_up_seconds`` a call is abandoned: the event stays in the inbox
  (``GET /v1/inbox``), which is also how a partner without webhooks works.

Calls start in priority order (FLASH first, then arrival), at most
``webhook_concurrency`` at a time. A failed webhook never counts as taking in charge:
``TAKEN_IN_CHARGE`` is only ever sent by an explicit action of the partner. Redirects are
not followed (content goes to the configured URL only).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hashlib
import heapq
import hmac
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Final

import httpx
import structlog

from relais.agents.database import Database
from relais.agents.metrics import AgentMetrics
from relais.agents.models import WebhookJob
from relais.schemas.domain import Priority
from relais.schemas.errors import RelaisError

__all__ = [
    "WebhookDispatcher",
    "WebhookPolicy",
    "backoff_delay",
    "parse_retry_after",
    "sign_webhook",
]

_MAX_RETRY_AFTER: Final = 86_400.0
_USER_AGENT: Final = "relais-agent/1"
_log = structlog.get_logger(__name__)

#: Builds the JSON body of a job (``None``: nothing to send any more).
Render = Callable[[WebhookJob], Awaitable[bytes | None]]


def sign_webhook(secret: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value (Standard Webhooks, ``v1``)."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    mac = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or HTTP date)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), _MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - now, 0.0), _MAX_RETRY_AFTER)


def backoff_delay(
    attempt: int, initial: float, maximum: float, rng: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped."""
    ceiling = min(maximum, initial * 2 ** max(attempt - 1, 0))
    return float(ceiling / 2 + rng() * ceiling / 2)


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """Where and how webhook calls are made."""

    url: str
    secret: bytes
    timeout: float
    concurrency: int
    backoff_initial: float
    backoff_max: float
    give_up_after: float


def _now() -> float:
    return time.time()


class WebhookDispatcher:
    """Makes the pending webhook calls, FLASH first, retrying as documented above."""

    def __init__(
        self,
        policy: WebhookPolicy,
        *,
        db: Database,
        render: Render,
        metrics: AgentMetrics,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Call ``policy.url`` with bodies from ``render``; jobs come from the database."""
        self._policy = policy
        self._db = db
        self._render = render
        self._metrics = metrics
        self._transport = transport
        self._ready: list[tuple[tuple[int, int], WebhookJob]] = []
        self._delayed: list[tuple[float, tuple[int, int], WebhookJob]] = []
        self._queued: set[str] = set()
        self._wake = asyncio.Event()
        self._paused_until = 0.0
        self._endpoint_failures = 0
        self._slots = asyncio.Semaphore(policy.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._succeeded: list[tuple[str, int, int]] = []
        self._recorder: asyncio.Task[None] | None = None

    def enqueue(self, jobs: Iterable[WebhookJob]) -> None:
        """New calls to make (ignored when already queued)."""
        for job in jobs:
            if job.webhook_id in self._queued:
                continue
            self._queued.add(job.webhook_id)
            if job.next_at_ms / 1000 > _now():
                heapq.heappush(self._delayed, (job.next_at_ms / 1000, job.order, job))
            else:
                heapq.heappush(self._ready, (job.order, job))
        self._wake.set()

    @property
    def pending(self) -> int:
        """Calls queued or in flight."""
        return len(self._queued)

    async def run(self, stop: asyncio.Event) -> None:
        """Load the pending calls and make them until ``stop``."""
        self.enqueue(await self._db.run(self._db.store.pending_webhooks))
        async with httpx.AsyncClient(
            timeout=self._policy.timeout,
            trust_env=False,
            follow_redirects=False,
            transport=self._transport,
        ) as client:
            try:
                while not stop.is_set():
                    job = await self._next(stop)
                    if job is None:
                        continue
                    task = asyncio.create_task(self._send(client, job))
                    self._tasks.add(task)
                    task.add_done_callback(self._finished)
            finally:
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                if self._recorder is not None:
                    await asyncio.gather(self._recorder, return_exceptions=True)
                await self._record_succeeded()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            _log.error("agent.webhook_task_failed", error=type(task.exception()).__name__)

    async def _next(self, stop: asyncio.Event) -> WebhookJob | None:
        """The best job to start now, once a slot is free (``None``: look again)."""
        now = _now()
        while self._delayed and self._delayed[0][0] <= now:
            _, order, job = heapq.heappop(self._delayed)
            heapq.heappush(self._ready, (order, job))
        wait = self._paused_until - now
        if wait <= 0 and not self._ready:
            wait = self._delayed[0][0] - now if self._delayed else 1.0
        if wait > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(self._wake, stop), timeout=min(wait, 1.0))
            return None
        await self._slots.acquire()
        if stop.is_set() or not self._ready or self._paused_until > _now():
            self._slots.release()
            return None
        return heapq.heappop(self._ready)[1]  # the best, chosen once a slot is free

    async def _send(self, client: httpx.AsyncClient, job: WebhookJob) -> None:
        try:
            body = await self._render(job)
        except RelaisError as exc:  # the database failed: try again later
            _log.error("agent.webhook_render_failed", reason=exc.reason.value)
            await self._reschedule(job, _now() + self._backoff(job.attempts + 1))
            return
        if body is None:
            await self._settle(job, None, give_up=True, outcome="vanished")
            return
        timestamp = int(_now())
        headers = {
            "content-type": "application/json",
            "user-agent": _USER_AGENT,
            "webhook-id": job.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_webhook(self._policy.secret, job.webhook_id, timestamp, body),
        }
        try:
            response = await client.post(self._policy.url, content=body, headers=headers)
        except httpx.HTTPError:
            self._endpoint_failures += 1
            self._pause(self._backoff(self._endpoint_failures))
            await self._retry(job, None, self._paused_until, "unreachable")
            return
        self._endpoint_failures = 0
        status = response.status_code
        if 200 <= status < 300:
            await self._done(job, status)
        elif status in (429, 503):
            wait = parse_retry_after(response.headers.get("retry-after"), _now())
            self._pause(wait if wait is not None else self._backoff(job.attempts + 1))
            await self._retry(job, status, self._paused_until, "throttled")
        else:
            await self._retry(job, status, _now() + self._backoff(job.attempts + 1), "failed")

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self._policy.backoff_initial, self._policy.backoff_max)

    def _pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, _now() + seconds)

    async def _done(self, job: WebhookJob, status: int) -> None:
        # Recorded in batches: one transaction for all the calls that succeeded meanwhile.
        # A call made but not yet recorded when the agent dies is made again after a
        # restart, with the same webhook-id, which the receiver deduplicates on.
        self._succeeded.append((job.webhook_id, status, int(_now() * 1000)))
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_succeeded())
        self._queued.discard(job.webhook_id)
        self._log(job, "delivered", status)

    async def _record_succeeded(self) -> None:
        while self._succeeded:
            batch, self._succeeded = self._succeeded, []
            try:
                await self._db.run(self._db.store.webhooks_done, batch)
            except RelaisError as exc:
                _log.error("agent.webhook_record_failed", reason=exc.reason.value)
                return

    async def _retry(self, job: WebhookJob, status: int | None, at: float, outcome: str) -> None:
        give_up = _now() - job.created_at_ms / 1000 > self._policy.give_up_after
        if give_up:
            await self._settle(job, status, give_up=True, outcome="abandoned")
            return
        await self._db.run(
            self._db.store.webhook_retry, job.webhook_id, status, int(at * 1000), give_up=False
        )
        await self._reschedule(job, at)
        self._log(job, outcome, status)

    async def _reschedule(self, job: WebhookJob, at: float) -> None:
        later = replace(job, attempts=job.attempts + 1, next_at_ms=int(at * 1000))
        heapq.heappush(self._delayed, (at, later.order, later))
        self._wake.set()

    async def _settle(
        self, job: WebhookJob, status: int | None, *, give_up: bool, outcome: str
    ) -> None:
        await self._db.run(
            self._db.store.webhook_retry, job.webhook_id, status, job.next_at_ms, give_up=give_up
        )
        self._queued.discard(job.webhook_id)
        self._log(job, outcome, status)

    def _log(self, job: WebhookJob, outcome: str, status: int | None) -> None:
        priority = Priority(job.priority).label
        self._metrics.webhooks.labels(job.kind, priority, outcome).inc()
        self._metrics.webhooks_pending.set(len(self._queued))
        # A call that failed (or was given up) is the partner's to look at: a warning, seen
        # at the default level; a delivery or a throttled call is routine.
        log = _log.warning if outcome in _FAILED_OUTCOMES else _log.info
        log(
            "agent.webhook",
            webhook_id=job.webhook_id,
            kind=job.kind,
            priority=priority,
            outcome=outcome,
            status=status,
            attempt=job.attempts + 1,
        )


_FAILED_OUTCOMES: Final = frozenset({"unreachable", "failed", "abandoned", "vanished"})


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
