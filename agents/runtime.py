"""The partner agent: its Python API and the background tasks that never lose an event.

::

    async with Agent(load_settings(Path("agent.toml"))) as agent:
        sub = await agent.submit("runaway_alert", record, idempotency_key="fpr-2025-0042")
        for item in await agent.inbox(state=InboxState.DELIVERED):
            await agent.take_charge(item.event_id)

Starting loads the key files (several during a rotation), verifies the directory (the file
given, or the newer edition cached from an earlier run) and opens the database; the
connection to the broker is then made in the background, so the agent accepts events and
serves its inbox while the broker is away. Background tasks: the connection, the outbox
publisher (:mod:`~relais.agents.outbox`), the receiver (:mod:`~relais.agents.receiving`),
the receipt sender (:mod:`~relais.agents.receipts`), the webhook dispatcher
(:mod:`~relais.agents.webhooks`), the directory poller and the intake writer, which writes
concurrent submissions in one transaction (one fsync for many answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Collection, Mapping
from typing import Any, Self

import httpx
import structlog

from relais.agents.database import Database
from relais.agents.directory_watch import DirectoryWatch
from relais.agents.inbox import CONCLUSIONS, DECLINE_REASONS, OUTCOMES, open_stored
from relais.agents.intake import Intake
from relais.agents.keyring import Keyring
from relais.agents.keys import read_root_public_key, read_secret_file
from relais.agents.link import Link
from relais.agents.metrics import AgentMetrics
from relais.agents.models import (
    InboxItem,
    InboxState,
    Notice,
    Readiness,
    SentEvent,
    Submission,
    WebhookJob,
)
from relais.agents.outbox import Publisher
from relais.agents.progress import derived_state, ladder
from relais.agents.receipts import ReceiptSender
from relais.agents.receiving import ReceiveConfig, Receiver
from relais.agents.reseal import RETAIN_MS, RecordBox, Resealer, outgoing_row
from relais.agents.retention import PurgeCounts, cutoffs
from relais.agents.sealing import plan_event, publishable_schema, seal_planned
from relais.agents.settings import AgentSettings, read_webhook_secret
from relais.agents.store import StoredBatch
from relais.agents.validation import check_record, check_sections
from relais.agents.views import item_json, notice_json, webhook_body
from relais.agents.webhooks import WebhookDispatcher, WebhookPolicy
from relais.broker_config.rules import RuleSet, load_rules
from relais.schemas.domain import EventType, Priority
from relais.schemas.envelope import LocalIdentity, new_event_id
from relais.schemas.errors import (
    ConfigError,
    DirectoryError,
    EnvelopeError,
    PayloadError,
    Reason,
    RelaisError,
    TransportError,
)

__all__ = ["CONCLUSIONS", "DECLINE_REASONS", "OUTCOMES", "Agent"]

_log = structlog.get_logger(__name__)
_FINAL_FLUSH_SECONDS = 2.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Agent:
    """One partner's agent (see the module docstring)."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        passphrase: bytes | None = None,
        rules: RuleSet | None = None,
        webhook_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Prepare an agent; nothing is read or opened before :meth:`start`.

        ``passphrase`` unlocks the key files (else read from ``settings.passphrase_file``).
        """
        self.settings = settings
        self.metrics = AgentMetrics()
        self._passphrase = passphrase
        self._rules = rules
        self._webhook_transport = webhook_transport
        self._db = Database()
        self._link = Link(
            settings.partner_id,
            settings.servers,
            settings.creds,
            connect_timeout=settings.connect_timeout_seconds,
            request_timeout=settings.request_timeout_seconds,
            tls=settings.broker_tls,
        )
        self._keyring: Keyring | None = None
        self._watch: DirectoryWatch | None = None
        self._intake: Intake | None = None
        self._lock_fd: int | None = None
        self._publisher: Publisher | None = None
        self._receipts: ReceiptSender | None = None
        self._webhooks: WebhookDispatcher | None = None
        self._receiver: Receiver | None = None
        self._box: RecordBox | None = None
        self._resealer: Resealer | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._mending: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load keys and directory, open the database, start the background tasks."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        keyring = await self._load_keys()
        if s.partner_id != keyring.partner_id:
            raise ConfigError("the key files are not those of partner_id")
        self._keyring = keyring
        s.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_data_dir()
        try:
            initial = s.directory_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the directory file {s.directory_file}") from exc
        root = read_root_public_key(s.root_public_key)
        self._watch = DirectoryWatch(root, initial, cache=s.directory_cache)
        self._watch.initialise_cache()
        self.metrics.directory_serial.set(self._watch.serial)
        if self._rules is None and s.rules_file:
            # A local override, for tests and demonstrations only: in a partnership every
            # agent and the router route with the rules of the edition in force.
            self._rules = load_rules(s.rules_file)
            _log.warning("agent.rules_override", version=self._rules.version)
        await self._db.open(s.database)
        self._build(keyring, self._watch)
        self._spawn()
        _log.info("agent.started", partner=s.partner_id, directory_serial=self._watch.serial)

    def _lock_data_dir(self) -> None:
        """One agent per data directory: a second one would race the first on its consumers."""
        fd = os.open(self.settings.data_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"another agent runs on {self.settings.data_dir}") from exc
        self._lock_fd = fd

    async def _load_keys(self) -> Keyring:
        passphrase = self._passphrase
        if passphrase is None:
            if self.settings.passphrase_file is None:
                raise ConfigError("no passphrase: give passphrase_file or a passphrase")
            passphrase = read_secret_file(self.settings.passphrase_file, "passphrase")
        return await asyncio.to_thread(Keyring.load, self.settings.key_files, passphrase)

    def _build(self, keyring: Keyring, watch: DirectoryWatch) -> None:
        s = self.settings
        self._intake = Intake(db=self._db, metrics=self.metrics, mac_key=keyring.idempotency_key())
        self._publisher = Publisher(
            partner_id=s.partner_id,
            link=self._link,
            db=self._db,
            metrics=self.metrics,
            window=s.publish_window,
            backoff_max=s.publish_backoff_max_seconds,
        )
        self._receipts = ReceiptSender(
            partner_id=s.partner_id,
            partnership=watch.current.directory.partnership,
            signer=self._signer,
            link=self._link,
            db=self._db,
            metrics=self.metrics,
        )
        self._webhooks = self._webhook_dispatcher()
        self._receiver = Receiver(
            ReceiveConfig(
                batch=s.fetch_batch,
                expires=s.pull_expires_seconds,
                retry_deliveries=s.retry_deliveries,
                retry_delay=s.retry_delay_seconds,
                webhooks=self._webhooks is not None,
            ),
            keyring=keyring,
            watch=watch,
            link=self._link,
            db=self._db,
            receipts=self._receipts,
            metrics=self.metrics,
            refresh_directory=self.refresh_directory,
            on_stored=self._stored,
        )
        self._box = RecordBox(keyring)
        self._resealer = Resealer(
            keyring=keyring,
            watch=watch,
            db=self._db,
            box=self._box,
            rules=self._routing_rules,
            refresh=self.refresh_directory,
            queued=self._publisher.wake,
            ttl_ms=int(s.event_ttl_seconds * 1000),
            on_resealed=lambda reason: self.metrics.resealed.labels(reason).inc(),
        )

    def _webhook_dispatcher(self) -> WebhookDispatcher | None:
        s = self.settings
        if s.webhook_url is None or s.webhook_secret_file is None:
            return None  # the partner's system polls the inbox
        policy = WebhookPolicy(
            url=s.webhook_url,
            secret=read_webhook_secret(s.webhook_secret_file),
            timeout=s.webhook_timeout_seconds,
            concurrency=s.webhook_concurrency,
            backoff_initial=s.webhook_backoff_initial_seconds,
            backoff_max=s.webhook_backoff_max_seconds,
            give_up_after=s.webhook_give_up_seconds,
        )
        return WebhookDispatcher(
            policy,
            db=self._db,
            render=self._render,
            metrics=self.metrics,
            transport=self._webhook_transport,
        )

    def _spawn(self) -> None:
        if (
            self._publisher is None
            or self._receipts is None
            or self._receiver is None
            or self._intake is None
        ):
            raise ConfigError("the agent is not built", reason=Reason.NOT_READY)
        runners = [
            self._link.run(self._stop),
            self._publisher.run(self._stop),
            self._receipts.run(self._stop),
            self._receiver.run(self._stop),
            self._housekeeping(self._stop),
            self._intake.run(),
        ]
        if self._webhooks is not None:
            runners.append(self._webhooks.run(self._stop))
        self._tasks = [asyncio.create_task(self._supervised(r)) for r in runners]

    async def _supervised(self, runner: Any) -> None:
        try:
            await runner
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A background task must not die silently: the agent would look alive.
            reason = exc.reason.value if isinstance(exc, RelaisError) else type(exc).__name__
            _log.error("agent.task_failed", reason=reason)
            self._stop.set()
            raise

    async def stop(self) -> None:
        """Stop the background tasks, send the receipts still pending, close everything."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._receipts is not None and self._link.is_connected:
            # Best effort: whatever is not sent now is sent by the next start.
            with contextlib.suppress(RelaisError, TimeoutError):
                async with asyncio.timeout(_FINAL_FLUSH_SECONDS):
                    await self._receipts.flush()
        await self._link.close()
        await self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None
        _log.info("agent.stopped", partner=self.settings.partner_id)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def stopped(self) -> asyncio.Event:
        """Set when the agent stops (or a background task failed)."""
        return self._stop

    # -- state ---------------------------------------------------------------------------------

    def readiness(self) -> Readiness:
        """Keys loaded and valid in the directory, directory verified, NATS connected."""
        keys = False
        if self._keyring is not None and self._watch is not None:
            try:
                self._keyring.signer(self._watch.current.directory, _now_ms())
                keys = True
            except EnvelopeError:
                keys = False
        connected = self._link.is_connected
        self.metrics.nats_connected.set(1 if connected else 0)
        blocked = self._publisher.blocked if self._publisher is not None else None
        return Readiness(
            keys=keys, directory=self._watch is not None, nats=connected, outbox_blocked=blocked
        )

    @property
    def directory_serial(self) -> int:
        """Serial of the directory edition in use."""
        return self._require_watch().serial

    @property
    def partner_id(self) -> str:
        """This agent's partner id."""
        return self.settings.partner_id

    def _require_watch(self) -> DirectoryWatch:
        if self._watch is None:
            raise ConfigError("the agent is not started", reason=Reason.NOT_READY)
        return self._watch

    def _require_keys(self) -> Keyring:
        if self._keyring is None:
            raise ConfigError("the agent is not started", reason=Reason.NOT_READY)
        return self._keyring

    def _signer(self) -> LocalIdentity:
        return self._require_keys().signer(self._require_watch().current.directory, _now_ms())

    # -- publishing ----------------------------------------------------------------------------

    async def submit(
        self,
        event_type: EventType | str,
        record: Mapping[str, Any],
        idempotency_key: str | None = None,
        *,
        accept_withheld: Collection[str] = (),
    ) -> Submission:
        """Validate, route, seal and durably queue one event; its id and recipients.

        ``record`` is an Avro datum or its JSON form (RFC 3339 date-times with their offset,
        ``YYYY-MM-DD`` dates, base64 bytes), checked against the published contract
        (:mod:`relais.agents.validation`). The same ``idempotency_key`` with the same
        content answers the first submission again (nothing new is queued); with other
        content it is refused (``PayloadError(IDEMPOTENCY_KEY_REUSED)``). A secret section
        no recipient is entitled to is refused unless named in ``accept_withheld``. Other
        errors: ``SchemaError`` (``UNKNOWN_TYPE``), ``ContractError`` naming the invalid
        fields, ``RoutingError`` (``NO_RULE``, ``SENDER_NOT_ALLOWED``...), ``EnvelopeError``
        (``OVERSIZE``; or this partner's key is not valid), ``ConfigError(NOT_READY)``.
        """
        watch, keyring = self._require_watch(), self._require_keys()
        intake = self._require_intake()
        schema = publishable_schema(event_type)
        now = _now_ms()
        if watch.current.directory.expired(now):
            # Routing by a configuration nobody vouches for any more could reach revoked
            # partners: refused until a valid edition arrives (the partner's system retries).
            raise DirectoryError(
                "the configuration edition in use has expired", reason=Reason.DIRECTORY_EXPIRED
            )
        datum = check_record(schema, record, now_ms=now)
        mac = None
        if idempotency_key is not None:
            mac = intake.fingerprint(schema.event_type, datum)
            earlier = await intake.earlier(idempotency_key, mac)
            if earlier is not None:
                return earlier
        plan = plan_event(
            schema.event_type,
            datum,
            sender=keyring.partner_id,
            directory=watch.current.directory,
            rules=self._routing_rules(),
            at_ms=now,
        )
        check_sections(plan, accept_withheld)
        event_id = new_event_id(now)
        envelope = seal_planned(
            plan,
            sender=keyring.signer(watch.current.directory, now),
            now_ms=now,
            ttl_ms=int(self.settings.event_ttl_seconds * 1000),
            event_id=event_id,
        )
        retained = self._box.close(datum) if self._box is not None else None
        sub = await intake.write(
            outgoing_row(
                plan,
                str(event_id),
                envelope,
                now,
                retained=retained,
                key=idempotency_key,
                mac=mac,
            )
        )
        if self._publisher is not None:
            self._publisher.wake()
        return sub

    def _require_intake(self) -> Intake:
        if self._intake is None or self._stop.is_set():
            raise ConfigError("the agent is not running", reason=Reason.NOT_READY)
        return self._intake

    async def sent_event(self, event_id: uuid.UUID | str) -> SentEvent | None:
        """The state of an event submitted here and each recipient's ladder, as the
        gateway's notices told them (``None``: unknown id)."""
        eid = str(uuid.UUID(str(event_id)))
        row = await self._db.run(self._db.store.sent, eid)
        if row is None:
            return None
        rungs = ladder(
            row.recipients, row.fallback, await self._db.run(self._db.store.progress, eid)
        )
        return SentEvent(
            event_id=uuid.UUID(row.event_id),
            event_type=EventType(row.event_type),
            priority=Priority(row.priority),
            recipients=row.recipients,
            fallback=row.fallback,
            rule=row.rule,
            triage=row.triage,
            state=derived_state(row.state, rungs),
            reason=row.reason,
            created_at_ms=row.created_at_ms,
            published_at_ms=row.published_at_ms,
            ingress_seq=row.ingress_seq,
            ladder=rungs,
            edition=row.edition,
        )

    # -- receiving -----------------------------------------------------------------------------

    def _stored(self, stored: StoredBatch) -> None:
        if self._webhooks is not None and stored.webhook_jobs:
            self._webhooks.enqueue(stored.webhook_jobs)
        if stored.new_notices and self._resealer is not None:
            task = asyncio.get_running_loop().create_task(self._mend(stored.new_notices))
            self._mending.add(task)
            task.add_done_callback(self._mending.discard)

    async def _mend(self, notice_ids: tuple[str, ...]) -> None:
        """Hand new rejections to the re-sealer (an edition change re-seals by itself)."""
        try:
            found = [await self._db.run(self._db.store.notice, nid) for nid in notice_ids]
        except RelaisError as exc:
            _log.error("agent.reseal_lookup_failed", reason=exc.reason.value)
            return
        if self._resealer is not None:
            self._resealer.notices([n for n in found if n is not None])

    def _routing_rules(self) -> RuleSet:
        """The rules of the edition in force (or the local override of tests and demos)."""
        return self._rules or self._require_watch().current.rules

    async def inbox(
        self, *, state: InboxState | None = None, after: int = 0, limit: int = 50
    ) -> list[InboxItem]:
        """Received events after the cursor ``after``, oldest first, decrypted."""
        records = await self._db.run(
            self._db.store.inbox_records, state=state, after=after, limit=limit
        )
        return [self._open(r) for r in records]

    async def inbox_item(self, event_id: uuid.UUID | str) -> InboxItem | None:
        """One received event, decrypted (``None``: not in the inbox)."""
        record = await self._db.run(self._db.store.inbox_record, str(uuid.UUID(str(event_id))))
        return None if record is None else self._open(record)

    def _open(self, record: Any) -> InboxItem:
        return open_stored(record, keyring=self._require_keys(), view=self._require_watch().current)

    async def notices(self, *, after: int = 0, limit: int = 50) -> list[Notice]:
        """Rejections, escalation and progress notices received, oldest first."""
        return await self._db.run(self._db.store.notices, after=after, limit=limit)

    async def take_charge(
        self, event_id: uuid.UUID | str, outcome: str | None = None
    ) -> InboxState:
        """Record that the partner takes the event in charge; the signed receipt follows.

        ``outcome`` (optional, e.g. ``ASSESSMENT_UNDER_WAY``) travels with the receipt to the
        event's sender.
        """
        if outcome is not None and outcome not in OUTCOMES:
            raise PayloadError("unknown outcome", fields=("outcome",))
        return await self._act(event_id, InboxState.TAKEN_IN_CHARGE, None, outcome)

    async def conclude(self, event_id: uuid.UUID | str, outcome: str) -> str:
        """Record the outcome of a case taken in charge (``CONCLUDED`` receipt); the gateway
        tells the sender (e.g. the CRIP's decision on a danger declaration, art. L226-5 CASF).

        Once per event: the same outcome again changes nothing, another one is a conflict.
        """
        if outcome not in CONCLUSIONS:
            raise PayloadError("unknown outcome", fields=("outcome",))
        eid = str(uuid.UUID(str(event_id)))
        record = await self._db.run(self._db.store.conclude, eid, outcome, _now_ms())
        if record is None:
            self.metrics.actions.labels("conclude", "unknown").inc()
            raise RelaisError("no such event in the inbox", reason=Reason.UNKNOWN_EVENT)
        if record.state is not InboxState.TAKEN_IN_CHARGE or record.outcome != outcome:
            self.metrics.actions.labels("conclude", "conflict").inc()
            raise RelaisError(
                "the event is not taken in charge, or concluded otherwise",
                reason=Reason.STATE_CONFLICT,
            )
        if self._receipts is not None:
            self._receipts.wake()
        self.metrics.actions.labels("conclude", "recorded").inc()
        _log.info(
            "agent.action",
            event_id=eid,
            event_type=record.event_type,
            priority=Priority(record.priority).label,
            outcome="concluded",
            reason=outcome,
        )
        return outcome

    async def decline(self, event_id: uuid.UUID | str, reason: str) -> InboxState:
        """Record that the partner declines the event (``reason`` from the receipt schema)."""
        if reason not in DECLINE_REASONS:
            raise PayloadError("unknown decline reason", fields=("reason",))
        return await self._act(event_id, InboxState.DECLINED, reason)

    async def _act(
        self,
        event_id: uuid.UUID | str,
        state: InboxState,
        reason: str | None,
        outcome: str | None = None,
    ) -> InboxState:
        eid = str(uuid.UUID(str(event_id)))
        record = await self._db.run(self._db.store.act, eid, state, reason, _now_ms(), outcome)
        action = "take_charge" if state is InboxState.TAKEN_IN_CHARGE else "decline"
        if record is None:
            self.metrics.actions.labels(action, "unknown").inc()
            raise RelaisError("no such event in the inbox", reason=Reason.UNKNOWN_EVENT)
        if record.state is not state or record.decline_reason != reason:
            self.metrics.actions.labels(action, "conflict").inc()
            raise RelaisError(
                f"the event is already {record.state.value}", reason=Reason.STATE_CONFLICT
            )
        if self._receipts is not None:
            self._receipts.wake()
        self.metrics.actions.labels(action, "recorded").inc()
        _log.info(
            "agent.action",
            event_id=eid,
            event_type=record.event_type,
            priority=Priority(record.priority).label,
            outcome=state.value,
            reason=reason,
        )
        return state

    async def _render(self, job: WebhookJob) -> bytes | None:
        """The webhook body of a job, decrypted now (``None``: nothing to send)."""
        if job.kind == "event":
            record = await self._db.run(self._db.store.inbox_record, job.webhook_id)
            if record is None:
                return None
            return webhook_body("event", item_json(self._open(record)), _now_ms())
        notice = await self._db.run(self._db.store.notice, job.webhook_id)
        if notice is None:
            return None
        return webhook_body(notice.kind.value, notice_json(notice), _now_ms())

    # -- directory ---------------------------------------------------------------------------

    async def refresh_directory(self) -> bool:
        """Fetch the last edition on ``ref.dir`` now; True when a newer one was applied."""
        watch = self._require_watch()
        conn = self._link.conn
        if conn is None or not conn.is_connected:
            return False
        try:
            applied = await watch.poll(conn)
        except TransportError as exc:
            _log.warning("agent.directory_poll_failed", reason=exc.reason.value)
            return False
        self.metrics.directory_serial.set(watch.serial)
        return applied

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """Poll the directory every ``directory_poll_seconds``, purge past the retention
        limits (:mod:`relais.agents.retention`), refresh gauges every second."""
        every = self.settings.directory_poll_seconds
        next_poll = next_purge = time.monotonic()
        while not stop.is_set():
            self.readiness()
            self._watch_expiry()
            if time.monotonic() >= next_poll and self._link.is_connected:
                await self.refresh_directory()
                next_poll = time.monotonic() + every
            if time.monotonic() >= next_purge:
                try:
                    await self.purge()
                except RelaisError as exc:  # retried at the next round; the rows stay
                    _log.error("agent.purge_failed", reason=exc.reason.value)
                next_purge = time.monotonic() + self._purge_every()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(every, 1.0, self._purge_every()))

    def _watch_expiry(self) -> None:
        """Gauge of the edition's seconds left; warning ahead of its end, error once past."""
        _, left = self._require_watch().expiry()
        self.metrics.directory_expires_seconds.set(left)

    def _purge_every(self) -> float:
        # A quarter of the shortest limit (at most a minute): rows outlive it by that at most.
        r = self._require_watch().current.directory.retention
        shortest = min(r.agent_inbox_seconds, r.agent_unanswered_seconds, r.agent_outbox_seconds)
        return min(60.0, max(0.25, shortest / 4))

    async def purge(self) -> PurgeCounts:
        """Forget inbox, outbox and notice rows past the partnership's retention limits now.

        Evidence stays on the partner's side (an agent cannot write the partnership's audit
        log): a ``purges`` row, the ``agent.purged`` log line and ``relais_agent_purged_total``.
        """
        retention = self._require_watch().current.directory.retention
        now = _now_ms()
        await self._db.run(self._db.store.forget_retained, now - RETAIN_MS)
        counts = await self._db.run(self._db.store.purge, cutoffs(retention, now), now)
        for store, count in (
            ("inbox", counts.inbox),
            ("outbox", counts.outbox),
            ("notices", counts.notices),
        ):
            if count:
                self.metrics.purged.labels(store).inc(count)
        if counts.total:
            _log.info(
                "agent.purged",
                inbox=counts.inbox,
                outbox=counts.outbox,
                notices=counts.notices,
                up_to=now - 1000 * retention.agent_inbox_seconds,
            )
        return counts
