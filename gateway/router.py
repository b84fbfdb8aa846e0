"""The router: policy enforcement between a sender's ingress and its recipients' deliveries.

Several router processes share the durable ``router`` consumer on ``INGRESS`` and pull it in
batches. For each message, cheapest checks first, the outcome is a value (:class:`Routed`
or :class:`Quarantined`), never an exception:

1. the authenticated sender is the ``<id>`` of the subject ``ref.in.<id>`` (NATS lets a
   partner publish only there);
2. :func:`~relais.schemas.envelope.verify_envelope` against the directory of the edition
   in force (framing, schema, times, the sender's key, signature, digests): its reason
   code; a revoked sender is refused at once, whatever edition it sealed under;
3. the signer is that sender (``SIGNER_NOT_INGRESS_IDENTITY``);
4. not older than the maximum age (``STALE``; the future is ``FROM_FUTURE`` in step 2);
5. the rules, on the header's routing metadata: sender kind allowed
   (``SENDER_NOT_ALLOWED``), recipients and fallback exactly the rules' and sealed to keys
   the directory lists as valid (``RECIPIENTS_NOT_RULES``), priority
   (``PRIORITY_NOT_RULES``), département (``DEPARTEMENT_NOT_RULES``), each secret section's
   audience within the entitled partners (``AUDIENCE_NOT_ENTITLED``). An envelope that does
   not fit the edition in force but names (header ``edition``) an earlier edition replaced
   less than ``RouterConfig.grace_ms`` ago, and fits that one exactly, is routed all the
   same (:class:`~relais.gateway.policy.Editions`) to the recipients it was sealed for that
   the edition in force still names with a valid key; when the edition in force names
   others too, the sender gets a signed rejection ``EDITION_CHANGED`` (not a quarantine)
   and its agent re-seals. An envelope naming a *newer* edition than the router's is
   retried ``ahead_retries`` times (another router or gateway may be ahead) first;
6. replay: the event id is claimed in the shared replay store
   (:class:`~relais.gateway.replay.SeenStore`); a redelivery of the same ingress message is
   not a replay, another ingress message with the same id is (``REPLAY``), unless it is
   the same sender's re-sealing of it under a newer edition than the envelope that holds
   the id (read back from ``INGRESS``): then it is claimed as ``<event id>-e<edition>``
   and goes only to the recipients the first envelope did not reach.

Routed: one copy per recipient on ``ref.out.<r>.<PRIORITY>`` (``Nats-Msg-Id:
<event id>:<r>``; fallback recipients get nothing now: the tracker releases the envelope
to them if the deadline passes), then the ``ROUTED`` audit record
(``<event id>:routed``, ``<event id>:routed:e<edition>`` for a re-sealing; it names the
``edition`` and ``rules_version`` the sender sealed under and the ``edition_in_force``),
then the ack. Quarantined: the original bytes on
``ref.quar.<REASON>``, the ``QUARANTINED`` audit record, a rejection signed by the gateway
for the authenticated sender (``URGENT``), then the ack (all keyed by the ingress
sequence). Every step is idempotent, so a router killed at any point leaves a message that
another router (or the same, restarted) completes without duplicating anything. An
unexpected failure naks the message with a delay: it is retried, never dropped.

A pulled batch is routed in steps, each with every publish of the batch in flight at once:
the checks (CPU), the replay-store claims, all the copies, all the ``ROUTED`` records, then
the acks; quarantines run alongside. A message is acked only once all its own publishes
are acknowledged; one whose step failed is nak-ed, the others go on. Copies (``DELIVERY``)
and records (``AUDIT``) of a batch big enough go as atomic batches
(:func:`~relais.gateway.jetstream.publish_many`): with ``sync_interval: always`` a stream
writes its messages one fsync after the other, so the copies of 50 events take 200 fsyncs
one by one and one as a batch. ``RouterConfig.pipeline`` batches are in hand at once, so
the streams of one batch's steps work while another batch is being checked.

The router holds no content key and never decrypts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import structlog
from nats.aio.msg import Msg

from relais.broker_config.connection import Connection
from relais.gateway.admission import Admitted, Refused, RouterConfig, admit, routed_record
from relais.gateway.audit import RECORD_SUBJECT, AuditKind, append_record, encode_record
from relais.gateway.delivery import copy_message, publish_statement, statement_id
from relais.gateway.jetstream import Outgoing, publish, publish_many
from relais.gateway.metrics import ROUTER_EVENTS, ROUTER_SECONDS
from relais.gateway.policy import Editions, Policy
from relais.gateway.replay import Claim, SeenStore
from relais.schemas.domain import PARTNER_ID_RE, EventType, Priority
from relais.schemas.envelope import (
    EnvelopeHeader,
    LocalIdentity,
    peek_header,
)
from relais.schemas.errors import EnvelopeError, Reason, RelaisError
from relais.schemas.names import (
    H_CLAIMED_SENDER,
    H_EVENT_ID,
    H_INGRESS_SEQ,
    H_REASON,
    H_SENDER,
    H_TYPE,
    quarantine_subject,
)
from relais.schemas.statements import sign_statement

__all__ = [
    "INGRESS_STREAM",
    "ROUTER_CONSUMER",
    "Admitted",
    "Outcome",
    "Quarantined",
    "Refused",
    "Routed",
    "Router",
    "RouterConfig",
    "admit",
    "ingress_identity",
]

INGRESS_STREAM: Final = "INGRESS"
ROUTER_CONSUMER: Final = "router"
NIL_EVENT_ID: Final = uuid.UUID(int=0)
_DAY_MS: Final = 86_400_000

_log = structlog.get_logger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Routed:
    """The event went to its recipients."""

    event_id: uuid.UUID
    event_type: EventType
    rule: str
    priority: Priority
    recipients: tuple[str, ...]
    fallback: tuple[str, ...]
    ingress_seq: int


@dataclass(frozen=True, slots=True)
class Quarantined:
    """The event was refused: kept in QUARANTINE, the sender told why."""

    reason: Reason
    ingress_seq: int
    event_id: uuid.UUID | None
    verified: bool


Outcome = Routed | Quarantined


def ingress_identity(subject: str) -> str | None:
    """The partner id of ``ref.in.<id>``, or ``None`` for any other subject."""
    parts = subject.split(".")
    if len(parts) == 3 and parts[:2] == ["ref", "in"] and PARTNER_ID_RE.fullmatch(parts[2]):
        return parts[2]
    return None


def _note(job: _Job) -> str:
    """What the replay store keeps with an event id: edition, sender, who it went to."""
    assert job.admitted is not None
    return f"e{job.header.edition} {job.sender} {','.join(job.admitted.deliver_to)}"


def _parse_note(note: str) -> tuple[int, str, frozenset[str]]:
    """``(edition, sender, recipients)`` of a note (``(-1, "", {})`` for an older entry)."""
    parts = note.split(" ")
    if len(parts) != 3 or not parts[0].startswith("e") or not parts[0][1:].isdigit():
        return -1, "", frozenset()
    return int(parts[0][1:]), parts[1], frozenset(p for p in parts[2].split(",") if p)


def _peek(data: bytes) -> EnvelopeHeader | None:
    try:
        return peek_header(data)
    except EnvelopeError:
        return None


def _millis(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _exception(error: BaseException) -> Exception:
    if isinstance(error, Exception):
        return error
    raise error  # cancellation and the like are not a step's result


@dataclass(slots=True, eq=False)
class _Job:
    """One ingress message on its way through :meth:`Router.handle_batch`."""

    msg: Msg
    seq: int = 0
    sender: str = ""
    admitted: Admitted | None = None
    refused: Refused | None = None
    outcome: Outcome | None = None
    error: Exception | None = None

    @property
    def header(self) -> EnvelopeHeader:
        if self.admitted is not None:
            return self.admitted.envelope.header
        if self.refused is not None and self.refused.header is not None:
            return self.refused.header
        raise RelaisError("no verified header")

    @property
    def rule(self) -> str:
        assert self.admitted is not None
        return self.admitted.rule

    @property
    def recipients(self) -> tuple[str, ...]:
        assert self.admitted is not None
        return self.admitted.deliver_to


class Router:
    """One router: pulls ``INGRESS`` through the shared ``router`` consumer."""

    def __init__(
        self,
        conn: Connection,
        policy: Policy,
        signer: LocalIdentity,
        *,
        config: RouterConfig | None = None,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self._conn = conn
        self._signer = signer
        self._config = config or RouterConfig()
        self._clock = clock
        self._editions = Editions(policy, grace_ms=self._config.grace_ms)
        self._seen = SeenStore(conn)

    @property
    def policy(self) -> Policy:
        """The edition in force."""
        return self._editions.current

    @policy.setter
    def policy(self, policy: Policy) -> None:
        # Replaced as a whole when a new edition is loaded; the one it replaces is honoured
        # for the grace period.
        self._editions.replace(policy, self._clock())

    async def check_replay_window(self) -> None:
        """Refuse to start when the replay store forgets ids before the router would."""
        await self._seen.check_window((self._config.max_age_ms + self._config.skew_ms) / 1000)

    async def run(self, stop: asyncio.Event) -> None:
        """Route until ``stop`` is set (the batches in hand are finished first)."""
        slots = asyncio.Semaphore(max(1, self._config.pipeline))
        running: set[asyncio.Task[list[Outcome | None]]] = set()
        failed: list[BaseException] = []

        def finished(task: asyncio.Task[list[Outcome | None]]) -> None:
            running.discard(task)
            slots.release()
            if not task.cancelled() and task.exception() is not None:
                failed.append(task.exception())  # type: ignore[arg-type]

        try:
            while not stop.is_set():
                await slots.acquire()
                if failed:
                    raise failed[0]  # a defect, not a message's failure: stop the role
                try:
                    batch = await self._conn.fetch(
                        INGRESS_STREAM,
                        ROUTER_CONSUMER,
                        self._config.batch,
                        expires=self._config.fetch_expires,
                    )
                except RelaisError as exc:
                    slots.release()
                    _log.warning("router.fetch_failed", reason=exc.reason.value)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await stop.wait()
                    continue
                if not batch:
                    slots.release()
                    continue
                task = asyncio.create_task(self.handle_batch(batch))
                running.add(task)
                task.add_done_callback(finished)
        finally:
            if running:
                await asyncio.wait(set(running))

    async def handle(self, msg: Msg) -> Outcome | None:
        """Route or quarantine one ingress message, then ack it; ``None``: nak-ed for a retry."""
        return (await self.handle_batch([msg]))[0]

    async def handle_batch(self, msgs: Sequence[Msg]) -> list[Outcome | None]:
        """Route or quarantine each message, then ack it; ``None``: nak-ed for a retry."""
        started = time.perf_counter()
        now = self._clock()
        jobs = [_Job(msg) for msg in msgs]
        for job in jobs:
            try:
                self._check(job, now)
            except Exception as exc:  # noqa: BLE001 - never drop a message: retry it
                job.error = exc
        admitted = [j for j in jobs if j.admitted is not None]
        refused = [j for j in jobs if j.refused is not None and j.error is None]
        await asyncio.gather(
            self._route_all(admitted, now), *(self._quarantine_job(j, now) for j in refused)
        )
        elapsed = time.perf_counter() - started
        for job in jobs:
            await self._settle(job, elapsed)
        return [job.outcome if job.error is None else None for job in jobs]

    def _check(self, job: _Job, now: int) -> None:
        """Every check but replay: ``job.admitted`` or ``job.refused`` (no I/O)."""
        job.seq = job.msg.metadata.sequence.stream
        sender = ingress_identity(job.msg.subject)
        if sender is None:
            job.refused = Refused(Reason.MALFORMED_HEADER)
            return
        job.sender = sender
        checked = admit(
            job.msg.data,
            sender=sender,
            policy=self.policy,
            now_ms=now,
            config=self._config,
            editions=self._editions,
        )
        if isinstance(checked, Refused):
            if checked.ahead and job.msg.metadata.num_delivered <= self._config.ahead_retries:
                # Another router (or gateway) is on a newer edition: let it, or us once
                # reloaded, judge it rather than refuse it now.
                job.error = RelaisError("edition ahead of this router", reason=checked.reason)
                return
            job.refused = checked
        else:
            job.admitted = checked

    async def _route_all(self, jobs: list[_Job], now: int) -> None:
        """Claim the event ids, then every copy, then every ``ROUTED`` record."""
        if not jobs:
            return
        claims = await asyncio.gather(
            *(self._seen.claim_noted(str(j.header.event_id), j.seq, _note(j)) for j in jobs),
            return_exceptions=True,
        )
        claimed: list[_Job] = []
        replays: list[_Job] = []
        for job, claim in zip(jobs, claims, strict=True):
            if isinstance(claim, BaseException):
                job.error = _exception(claim)
            elif claim.held:
                claimed.append(job)
            else:
                try:
                    resealed = await self._resealed(job, claim)
                except Exception as exc:  # noqa: BLE001 - never drop a message: retry it
                    job.error = exc
                    continue
                if resealed:
                    claimed.append(job)
                else:
                    job.refused, job.admitted = Refused(Reason.REPLAY, job.header), None
                    replays.append(job)
        await asyncio.gather(
            self._deliver(claimed, now), *(self._quarantine_job(j, now) for j in replays)
        )

    async def _resealed(self, job: _Job, first: Claim) -> bool:
        """Is this the sender's re-sealing, under a newer edition, of an envelope already
        routed? If so (and claimed as such now), it goes to those the first did not reach."""
        h, admitted = job.header, job.admitted
        edition, sender, reached = _parse_note(first.note)
        if admitted is None or first.seq is None or sender != h.sender or h.edition <= edition:
            return False
        again = await self._seen.claim_noted(f"{h.event_id}-e{h.edition}", job.seq, _note(job))
        if not again.held:
            return False  # a replay of the re-sealing itself
        job.admitted = Admitted(
            admitted.envelope,
            admitted.decision,
            tuple(p for p in admitted.deliver_to if p not in reached),
            admitted.fallback,
            admitted.missing,
            edition=admitted.edition,
            resealed_from=first.seq,
        )
        return True

    async def _deliver(self, jobs: list[_Job], now: int) -> None:
        copies = [(job, self._copy(job, partner)) for job in jobs for partner in job.recipients]
        await self._publish_step(copies)
        records = [(job, self._routed_message(job, now)) for job in jobs if job.error is None]
        await self._publish_step(records)
        for job in jobs:
            if job.error is None and job.admitted is not None and job.admitted.missing:
                # Delivered to those it was sealed for; the sender re-seals for the others.
                try:
                    await self._reject(
                        job.sender, job.seq, job.header.event_id, Reason.EDITION_CHANGED, now
                    )
                except Exception as exc:  # noqa: BLE001 - retried: every step is idempotent
                    job.error = exc
            if job.error is None:
                job.outcome = self._routed(job)

    async def _publish_step(self, step: list[tuple[_Job, Outgoing]]) -> None:
        """Publish the messages of one step (one stream); a failure fails its job."""
        results = await publish_many(
            self._conn, [m for _, m in step], atomic_min=self._config.atomic_min
        )
        for (job, _), result in zip(step, results, strict=True):
            if isinstance(result, Exception) and job.error is None:
                job.error = result

    @staticmethod
    def _copy(job: _Job, partner: str) -> Outgoing:
        h = job.header
        return copy_message(
            job.msg.data,
            partner=partner,
            priority=h.priority,
            event_id=h.event_id,
            event_type=h.event_type,
            rule=job.rule,
        )

    @staticmethod
    def _routed_message(job: _Job, now: int) -> Outgoing:
        assert job.admitted is not None
        record = routed_record(job.msg.data, job.admitted, job.seq, now)
        resealed = job.admitted.resealed_from is not None
        suffix = f":e{job.header.edition}" if resealed else ""
        return Outgoing(
            RECORD_SUBJECT,
            encode_record(AuditKind.ROUTED, record),
            msg_id=f"{job.header.event_id}:routed{suffix}",
        )

    @staticmethod
    def _routed(job: _Job) -> Routed:
        h = job.header
        return Routed(
            event_id=h.event_id,
            event_type=h.event_type,
            rule=job.rule,
            priority=h.priority,
            recipients=job.recipients,
            fallback=job.admitted.fallback if job.admitted is not None else h.fallback_ids,
            ingress_seq=job.seq,
        )

    async def _quarantine_job(self, job: _Job, now: int) -> None:
        assert job.refused is not None
        try:
            job.outcome = await self._quarantine(
                job.msg.data, job.sender, job.seq, job.refused, now
            )
        except Exception as exc:  # noqa: BLE001 - never drop a message: retry it
            job.error = exc

    async def _settle(self, job: _Job, elapsed: float) -> None:
        """Ack a job done, nak one that failed (retried after ``retry_delay``)."""
        if job.error is None and job.outcome is not None:
            try:
                await self._conn.ack(job.msg)
            except Exception as exc:  # noqa: BLE001 - not acked: it comes back, done again
                job.error = exc
            else:
                self._record(job.outcome, job.msg.subject, elapsed)
                return
        error = job.error or RelaisError("not routed")
        reason = error.reason.value if isinstance(error, RelaisError) else type(error).__name__
        _log.warning("router.retry", seq=job.seq, reason=reason)
        ROUTER_EVENTS.labels("retried", reason, "").inc()
        with contextlib.suppress(RelaisError):
            await self._conn.nak(job.msg, delay=self._config.retry_delay)

    def _record(self, outcome: Outcome, subject: str, elapsed: float) -> None:
        ms = round(elapsed * 1000, 2)
        if isinstance(outcome, Routed):
            ROUTER_EVENTS.labels("routed", "", outcome.priority.label).inc()
            ROUTER_SECONDS.labels("routed").observe(elapsed)
            _log.info(
                "router.routed",
                event_id=str(outcome.event_id),
                event_type=outcome.event_type.value,
                sender=ingress_identity(subject),
                rule=outcome.rule,
                priority=outcome.priority.label,
                recipients=list(outcome.recipients),
                seq=outcome.ingress_seq,
                ms=ms,
            )
        else:
            ROUTER_EVENTS.labels("quarantined", outcome.reason.value, "").inc()
            ROUTER_SECONDS.labels("quarantined").observe(elapsed)
            _log.info(
                "router.quarantined",
                reason=outcome.reason.value,
                event_id=str(outcome.event_id) if outcome.event_id else None,
                verified=outcome.verified,
                sender=ingress_identity(subject),
                seq=outcome.ingress_seq,
                ms=ms,
            )

    async def _quarantine(
        self, data: bytes, sender: str, seq: int, refused: Refused, now: int
    ) -> Quarantined:
        verified = refused.header is not None
        ids = refused.header or _peek(data)  # unverified: ids only, and only if it parses
        headers = {
            H_REASON: refused.reason.value,
            H_INGRESS_SEQ: str(seq),
            H_SENDER: sender,
        }
        if ids is not None:
            headers[H_EVENT_ID] = str(ids.event_id)
            headers[H_CLAIMED_SENDER] = ids.sender
        if refused.header is not None:
            headers[H_TYPE] = refused.header.event_type.value
        subject = quarantine_subject(refused.reason.value)
        await publish(self._conn, subject, data, msg_id=f"quar:{seq}", headers=headers)
        record = {
            "event_id": str(ids.event_id) if ids is not None else None,
            "event_type": refused.header.event_type.value if refused.header else None,
            "sender": sender,
            "claimed_sender": ids.sender if ids is not None else None,
            "reason": refused.reason.value,
            "verified": verified,
            "ingress_seq": seq,
            "at": now,
        }
        await append_record(self._conn, AuditKind.QUARANTINED, record, msg_id=f"quar:{seq}")
        event_id = ids.event_id if ids is not None else NIL_EVENT_ID
        partner = self.policy.directory.get(sender) if sender else None
        if sender and (partner is None or not partner.revoked):  # revoked: nothing more
            await self._reject(sender, seq, event_id, refused.reason, now)
        return Quarantined(refused.reason, seq, ids.event_id if ids else None, verified)

    async def _reject(
        self, sender: str, seq: int, event_id: uuid.UUID, reason: Reason, now: int
    ) -> None:
        rejection_id = statement_id("rejection", seq, event_id)
        statement = sign_statement(
            EventType.REJECTION,
            {
                "rejection_id": rejection_id,
                "event_id": event_id,
                "sender": sender,
                "reason_code": reason.value,
                "ingress_sequence": seq,
                "rejected_at": _millis(now),
            },
            signer=self._signer,
            partnership=self.policy.directory.partnership,
            now_ms=now,
        )
        await publish_statement(
            self._conn,
            statement,
            partner=sender,
            priority=Priority.URGENT,
            statement_uuid=rejection_id,
            statement_type=EventType.REJECTION,
            event_id=event_id,
        )
