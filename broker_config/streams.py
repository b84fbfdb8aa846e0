"""Every JetStream stream and consumer of relais, declared in one place, and their provisioning.

Streams (file storage, limits retention)::

    INGRESS     ref.in.<partner>                      records, dedup 2 h
    DELIVERY    ref.out.<partner>.<FLASH|URGENT|ROUTINE>  records, dedup 2 h, atomic batches
    RECEIPTS    ref.rcpt.<partner>                    records, dedup 2 h
    AUDIT       ref.audit.>                           records, dedup 2 h, atomic batches, direct get
    QUARANTINE  ref.quar.>                            records, dedup 2 h
    DIRECTORY   ref.dir                               records, last 5 signed editions, direct get
    ADVISORIES  $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>   90 days
    SEEN        ref.seen.<event id>                   router's replay store: one per id, 8 days
    LEASES      ref.lease.<role>                      who is the active tracker (one per role)

Records streams deny delete and purge, and refuse new messages when full (``discard: new``,
never an old record dropped to make room): every stream has a byte limit, and INGRESS and
RECEIPTS cap the messages each partner may hold there (``max_msgs_per_subject`` with
``discard_new_per_subject``: the subject is the partner's own), so that one partner cannot fill
the store for the others; the limits are :class:`StorageLimits`. A publisher over its limit gets
a JetStream error that the connection reports as ``STORAGE_LIMIT``.

Message schedules, per-message TTL and delete markers are never enabled on them: a stream with
schedules silently stops honouring ``deny_purge``, and nats-server cannot turn TTLs off again
once on. The ``max_age`` of INGRESS, DELIVERY, RECEIPTS, QUARANTINE and AUDIT is the
partnership's decision, signed in the directory
(:class:`~relais.broker_config.retention.Retention`, :func:`with_retention`) and applied by
the next :func:`provision` as an update (``deny_purge`` does not prevent expiry by age); a
``max_age`` below the duplicate window shrinks that window to it (nats-server requires it).
Changes made by hand to a managed field are reverted by :func:`provision`.

``SEEN`` is not a record: it holds, for each event id the router accepted, the ingress
sequence that carried it (one message per subject, written only if the subject is empty:
``Nats-Expected-Last-Subject-Sequence: 0``), and forgets it after :data:`REPLAY_WINDOW`, which
must exceed the router's maximum event age plus the clock skew it tolerates.

Consumers (durable, pull, explicit ack, deliver all):

* ``out-<partner>-<PRIORITY>`` on DELIVERY, filtered on ``ref.out.<partner>.<PRIORITY>``,
  one per priority so that agents serve FLASH before URGENT before ROUTINE;
* ``router`` on INGRESS, ``tracker`` on RECEIPTS, ``tracker-audit`` on AUDIT.

Redelivery follows ``backoff`` (nats-server replaces ``ack_wait`` with the first backoff
step, so the two are declared equal), up to ``max_deliver`` deliveries; the next
delivery after that raises a MAX_DELIVERIES advisory, which the ADVISORIES stream keeps (core
advisories are fire-and-forget). The message itself stays in its stream.

:func:`provision` is idempotent: it creates what is missing, updates what differs in a way
nats-server accepts, and reports (never forces) what cannot be updated. It creates the
consumers of new partners and never deletes anything: the consumers of revoked partners
and their messages are kept for the records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import nats.errors
import structlog
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    ReplayPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError
from nats.js.manager import JetStreamManager
from pydantic import BaseModel, ConfigDict, Field

from relais.broker_config.accounts import delivery_consumer_name
from relais.broker_config.connection import Connection, translate_error
from relais.broker_config.directory import Directory
from relais.broker_config.retention import Retention
from relais.schemas.domain import Priority
from relais.schemas.errors import ConfigError
from relais.schemas.names import (
    AUDIT_STREAM,
    AUDIT_SUBJECTS,
    DELIVERY_STREAM,
    DELIVERY_SUBJECTS,
    DIRECTORY_STREAM,
    DIRECTORY_SUBJECTS,
    INGRESS_STREAM,
    INGRESS_SUBJECTS,
    LEASES_STREAM,
    LEASES_SUBJECTS,
    QUARANTINE_STREAM,
    QUARANTINE_SUBJECTS,
    RECEIPTS_STREAM,
    RECEIPTS_SUBJECTS,
    ROUTER_CONSUMER,
    SEEN_STREAM,
    SEEN_SUBJECTS,
    TRACKER_AUDIT_CONSUMER,
    TRACKER_CONSUMER,
    delivery_subject,
)

__all__ = [
    "ADVISORY_SUBJECTS",
    "DUPLICATE_WINDOW",
    "PARTNER_DELIVERY",
    "REPLAY_WINDOW",
    "SERVICE_CONSUMERS",
    "STREAMS",
    "ConsumerSpec",
    "ConsumerStatus",
    "ProvisionReport",
    "StorageLimits",
    "StreamSpec",
    "StreamStatus",
    "consumers_for",
    "inspect",
    "partner_consumers",
    "provision",
    "stream",
    "with_retention",
]

DUPLICATE_WINDOW: Final = 2 * 3600.0
# How long the router's replay store remembers an event id (the SEEN stream's max_age).
REPLAY_WINDOW: Final = 8 * 86400.0
ADVISORY_SUBJECTS: Final = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>"
_LIST_PAGE = 256

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One stream. ``records``: deny delete and purge (records are never removed by hand)."""

    name: str
    subjects: tuple[str, ...]
    description: str
    records: bool = True
    duplicate_window: float = DUPLICATE_WINDOW
    allow_direct: bool = False
    allow_atomic: bool = False
    max_msgs_per_subject: int = -1
    max_age: float = 0.0
    # The per-partner cap (StorageLimits.partner_messages) applies to this stream.
    per_partner: bool = False

    def config(self, *, replicas: int = 1, limits: StorageLimits | None = None) -> StreamConfig:
        """The nats-py stream configuration with ``replicas`` copies and storage ``limits``."""
        limits = limits or StorageLimits()
        per_subject = self.max_msgs_per_subject
        if self.per_partner:
            per_subject = limits.partner_messages
        return StreamConfig(
            name=self.name,
            description=self.description,
            subjects=list(self.subjects),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            # A full records stream refuses the new message; the others drop their oldest.
            discard=DiscardPolicy.NEW if self.records else DiscardPolicy.OLD,
            discard_new_per_subject=self.per_partner,
            max_bytes=limits.max_bytes(self.name),
            num_replicas=replicas,
            duplicate_window=(
                min(self.duplicate_window, self.max_age) if self.max_age else self.duplicate_window
            ),
            max_msgs_per_subject=per_subject,
            max_age=self.max_age,
            deny_delete=self.records,
            deny_purge=self.records,
            allow_direct=self.allow_direct,
            allow_atomic=self.allow_atomic,
            # Explicitly off: these features would weaken the records guarantees.
            allow_msg_ttl=False,
            allow_msg_schedules=False,
            allow_rollup_hdrs=False,
        )


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """One durable pull consumer with explicit acks."""

    stream: str
    name: str
    filter_subject: str
    description: str
    backoff: tuple[float, ...]
    max_deliver: int
    max_ack_pending: int

    def __post_init__(self) -> None:
        if not self.backoff or any(step <= 0 for step in self.backoff):
            raise ConfigError(f"consumer {self.name}: backoff steps must be positive")
        if self.max_deliver <= len(self.backoff):
            # nats-server refuses it: every backoff step must be usable.
            raise ConfigError(f"consumer {self.name}: max_deliver must exceed the backoff steps")

    @property
    def ack_wait(self) -> float:
        """Time to ack the first delivery (nats-server sets it to the first backoff step)."""
        return self.backoff[0]

    def config(self) -> ConsumerConfig:
        """The nats-py consumer configuration."""
        return ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            description=self.description,
            filter_subject=self.filter_subject,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            replay_policy=ReplayPolicy.INSTANT,
            ack_wait=self.ack_wait,
            backoff=list(self.backoff),
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
        )


_MIB: Final = 1 << 20


class StorageLimits(BaseModel):
    """Bytes per stream and messages per partner (see the module docstring).

    The defaults suit a département (some thousands of referrals a year); the sum of the byte
    limits is reserved by JetStream and must fit in the server's ``max_file_store``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    stream_bytes: dict[str, int] = Field(
        default_factory=lambda: {
            "INGRESS": 2048 * _MIB,
            "DELIVERY": 4096 * _MIB,
            "RECEIPTS": 1024 * _MIB,
            "AUDIT": 1024 * _MIB,
            "QUARANTINE": 512 * _MIB,
            "DIRECTORY": 64 * _MIB,
            "ADVISORIES": 128 * _MIB,
            "SEEN": 256 * _MIB,
            "LEASES": 8 * _MIB,
        }
    )
    # Messages one partner may hold on its own subject of INGRESS and of RECEIPTS.
    partner_messages: int = Field(default=200_000, ge=100)

    def max_bytes(self, stream_name: str) -> int:
        """The byte limit of ``stream_name`` (-1: none)."""
        return self.stream_bytes.get(stream_name, -1)

    @property
    def total_bytes(self) -> int:
        """What JetStream reserves for all the streams together."""
        return sum(v for v in self.stream_bytes.values() if v > 0)

    def fitted(self, available: int, *, share: float = 0.5) -> StorageLimits:
        """These limits, scaled down if they exceed ``share`` of ``available`` bytes."""
        budget = int(available * share)
        if self.total_bytes <= budget:
            return self
        return self.scaled(budget / self.total_bytes)

    def scaled(self, factor: float) -> StorageLimits:
        """The same limits multiplied by ``factor`` (small brokers, tests)."""
        return StorageLimits(
            stream_bytes={k: max(_MIB, int(v * factor)) for k, v in self.stream_bytes.items()},
            partner_messages=max(100, int(self.partner_messages * factor)),
        )


STREAMS: Final[tuple[StreamSpec, ...]] = (
    StreamSpec(
        INGRESS_STREAM, INGRESS_SUBJECTS, "sealed events published by partners", per_partner=True
    ),
    StreamSpec(
        DELIVERY_STREAM,
        DELIVERY_SUBJECTS,
        "routed copies, one per recipient and priority",
        allow_atomic=True,
    ),
    StreamSpec(
        RECEIPTS_STREAM,
        RECEIPTS_SUBJECTS,
        "signed receipts published by partners",
        per_partner=True,
        allow_direct=True,  # the tracker drains what is stored before it escalates
    ),
    StreamSpec(
        AUDIT_STREAM,
        AUDIT_SUBJECTS,
        "metadata-only audit records",
        allow_direct=True,
        allow_atomic=True,
    ),
    StreamSpec(QUARANTINE_STREAM, QUARANTINE_SUBJECTS, "rejected events with their reason codes"),
    StreamSpec(
        DIRECTORY_STREAM,
        DIRECTORY_SUBJECTS,
        "the last signed directory editions",
        duplicate_window=120.0,
        allow_direct=True,
        max_msgs_per_subject=5,
    ),
    StreamSpec(
        "ADVISORIES",
        (ADVISORY_SUBJECTS,),
        "MAX_DELIVERIES advisories (core advisories are not stored otherwise)",
        records=False,
        duplicate_window=120.0,
        max_age=90 * 86400.0,
    ),
    StreamSpec(
        SEEN_STREAM,
        SEEN_SUBJECTS,
        "event ids accepted by the router (replay protection beyond the duplicate window)",
        records=False,
        duplicate_window=120.0,
        allow_direct=True,
        max_msgs_per_subject=1,
        max_age=REPLAY_WINDOW,
    ),
    StreamSpec(
        LEASES_STREAM,
        LEASES_SUBJECTS,
        "leases of the roles that run exactly once (the active tracker)",
        records=False,
        duplicate_window=60.0,
        allow_direct=True,
        max_msgs_per_subject=1,
    ),
)

# Per priority: (backoff in seconds, max_deliver). The last step repeats: a FLASH delivery
# is retried every 5 minutes for about 8 hours; escalation does not wait for it (tracker).
# FLASH's first step is short: a delivery held by an agent that crashed (or whose node
# failed) comes back to its restart within seconds, not a full ack wait; an agent stores
# and acknowledges a delivery in milliseconds, and a redelivery it already stored is dropped
# by event id.
PARTNER_DELIVERY: Final[dict[Priority, tuple[tuple[float, ...], int]]] = {
    Priority.FLASH: ((3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0), 100),
    Priority.URGENT: ((30.0, 60.0, 120.0, 300.0, 600.0), 60),
    Priority.ROUTINE: ((60.0, 300.0, 900.0, 1800.0), 50),
}
_PARTNER_MAX_ACK_PENDING = 1000
# Short first step: the messages a crashed gateway process held are redelivered to another
# (or to its restart) within seconds, which matters for FLASH alerts and their deadlines;
# a redelivery of work already done is harmless (Nats-Msg-Id dedup, idempotent tracker).
_SERVICE_BACKOFF = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_SERVICE_MAX_DELIVER = 100
_SERVICE_MAX_ACK_PENDING = 20_000


def _service(stream_name: str, name: str, filter_subject: str, description: str) -> ConsumerSpec:
    return ConsumerSpec(
        stream=stream_name,
        name=name,
        filter_subject=filter_subject,
        description=description,
        backoff=_SERVICE_BACKOFF,
        max_deliver=_SERVICE_MAX_DELIVER,
        max_ack_pending=_SERVICE_MAX_ACK_PENDING,
    )


SERVICE_CONSUMERS: Final[tuple[ConsumerSpec, ...]] = (
    _service(INGRESS_STREAM, ROUTER_CONSUMER, INGRESS_SUBJECTS[0], "gateway router"),
    _service(RECEIPTS_STREAM, TRACKER_CONSUMER, RECEIPTS_SUBJECTS[0], "gateway tracker"),
    _service(AUDIT_STREAM, TRACKER_AUDIT_CONSUMER, AUDIT_SUBJECTS[0], "gateway tracker (audit)"),
)
# Streams whose consumers provision() looks after (and reports when undeclared).
_CONSUMER_STREAMS: Final = ("INGRESS", "RECEIPTS", "AUDIT", "DELIVERY")


def with_retention(retention: Retention | None) -> tuple[StreamSpec, ...]:
    """:data:`STREAMS` with the ``max_age`` that ``retention`` gives (default: the defaults)."""
    limits = retention or Retention()
    out = []
    for spec in STREAMS:
        max_age = limits.stream_max_age(spec.name)
        out.append(spec if max_age is None else dataclasses.replace(spec, max_age=max_age))
    return tuple(out)


def stream(name: str) -> StreamSpec:
    """The declared stream ``name`` (:class:`ConfigError` if unknown)."""
    for spec in STREAMS:
        if spec.name == name:
            return spec
    raise ConfigError(f"no stream {name!r}")


def partner_consumers(partner_id: str) -> tuple[ConsumerSpec, ...]:
    """The three DELIVERY consumers of a partner, FLASH first."""
    specs = []
    for priority in Priority:
        backoff, max_deliver = PARTNER_DELIVERY[priority]
        specs.append(
            ConsumerSpec(
                stream="DELIVERY",
                name=delivery_consumer_name(partner_id, priority),
                filter_subject=delivery_subject(partner_id, priority),
                description=f"{priority.label} deliveries to {partner_id}",
                backoff=backoff,
                max_deliver=max_deliver,
                max_ack_pending=_PARTNER_MAX_ACK_PENDING,
            )
        )
    return tuple(specs)


def consumers_for(directory: Directory | None) -> tuple[ConsumerSpec, ...]:
    """Service consumers and those of every partner of ``directory`` that is not revoked."""
    specs = list(SERVICE_CONSUMERS)
    if directory is not None:
        for partner in directory.partners:
            if not partner.revoked:
                specs.extend(partner_consumers(partner.id))
    return tuple(specs)


# -- provisioning ------------------------------------------------------------------------------


@dataclass(slots=True)
class ProvisionReport:
    """What :func:`provision` did. Names: ``STREAM`` or ``STREAM/consumer``."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # differences nats-server cannot apply (or refused), left as they are
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    # consumers found but not declared (revoked partners): kept with their messages
    kept: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when something was created or updated."""
        return bool(self.created or self.updated)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": len(self.unchanged),
            "conflicts": [{"name": n, "reason": r} for n, r in self.conflicts],
            "kept": self.kept,
        }


_STREAM_FIELDS = (
    "description",
    "subjects",
    "retention",
    "storage",
    "discard",
    "discard_new_per_subject",
    "max_bytes",
    "num_replicas",
    "duplicate_window",
    "max_msgs_per_subject",
    "max_age",
    "deny_delete",
    "deny_purge",
    "allow_direct",
    "allow_atomic",
    "allow_msg_ttl",
    "allow_msg_schedules",
    "allow_rollup_hdrs",
)
_STREAM_IMMUTABLE = ("storage",)
_CONSUMER_FIELDS = (
    "description",
    "filter_subject",
    "deliver_policy",
    "ack_policy",
    "replay_policy",
    "ack_wait",
    "backoff",
    "max_deliver",
    "max_ack_pending",
)
_CONSUMER_IMMUTABLE = ("deliver_policy", "ack_policy", "replay_policy")


def _normalised(config: StreamConfig | ConsumerConfig, names: Iterable[str]) -> dict[str, Any]:
    # as_dict() turns durations into integer nanoseconds (no float noise); the server omits
    # false booleans it does not know or does not use, so absent means False.
    raw = config.as_dict()
    return {name: (False if raw.get(name) is None else raw[name]) for name in names}


def _differences(
    wanted: StreamConfig | ConsumerConfig,
    actual: StreamConfig | ConsumerConfig,
    names: Iterable[str],
) -> list[str]:
    left, right = _normalised(wanted, names), _normalised(actual, names)
    return sorted(name for name in left if left[name] != right[name])


async def _ensure_stream(
    js: JetStreamManager, wanted: StreamConfig, report: ProvisionReport
) -> None:
    name = wanted.name or ""
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        info = None
    except nats.errors.Error as exc:
        raise translate_error(exc, f"stream {name}") from exc
    try:
        if info is None:
            await js.add_stream(wanted)
            report.created.append(name)
            return
        diff = _differences(wanted, info.config, _STREAM_FIELDS)
        if not diff:
            report.unchanged.append(name)
        elif frozen := [d for d in diff if d in _STREAM_IMMUTABLE]:
            report.conflicts.append((name, f"cannot change {', '.join(frozen)}"))
        else:
            try:
                await js.update_stream(wanted)
            except APIError as exc:
                report.conflicts.append((name, f"update refused: {exc.description}"))
            else:
                report.updated.append(name)
    except nats.errors.Error as exc:
        raise translate_error(exc, f"stream {name}") from exc


async def _existing_consumers(js: JetStreamManager, stream_name: str) -> dict[str, ConsumerInfo]:
    found: dict[str, ConsumerInfo] = {}
    offset = 0
    while True:
        try:
            page = await js.consumers_info(stream_name, offset=offset)
        except nats.errors.Error as exc:
            raise translate_error(exc, f"consumers of {stream_name}") from exc
        found.update((info.name, info) for info in page)
        if len(page) < _LIST_PAGE:
            return found
        offset += len(page)


async def _ensure_consumer(
    js: JetStreamManager,
    spec: ConsumerSpec,
    existing: ConsumerInfo | None,
    report: ProvisionReport,
) -> None:
    label = f"{spec.stream}/{spec.name}"
    wanted = spec.config()
    if existing is not None:
        diff = _differences(wanted, existing.config, _CONSUMER_FIELDS)
        if not diff:
            report.unchanged.append(label)
            return
        if frozen := [d for d in diff if d in _CONSUMER_IMMUTABLE]:
            report.conflicts.append((label, f"cannot change {', '.join(frozen)}"))
            return
    try:
        await js.add_consumer(spec.stream, wanted)  # create, or update in place
    except APIError as exc:
        if existing is None:
            raise translate_error(exc, f"consumer {label}") from exc
        report.conflicts.append((label, f"update refused: {exc.description}"))
        return
    except nats.errors.Error as exc:
        raise translate_error(exc, f"consumer {label}") from exc
    (report.created if existing is None else report.updated).append(label)


async def provision(
    js: JetStreamManager,
    directory: Directory | None,
    *,
    replicas: int = 1,
    limits: StorageLimits | None = None,
) -> ProvisionReport:
    """Create or update every stream and consumer for ``directory`` (idempotent).

    ``js`` must be a JetStream context of the administrator (the only identity allowed to
    administer JetStream). ``directory`` must be verified; ``None`` provisions streams and
    service consumers only. ``replicas``: 1 for a single server, 3 for a production cluster.
    ``limits``: :class:`StorageLimits` (default: the defaults).
    Raises :class:`TransportError` when the broker cannot be reached or refuses to create.
    """
    if replicas not in (1, 3, 5):
        raise ConfigError("replicas must be 1, 3 or 5")
    report = ProvisionReport()
    for stream_spec in with_retention(directory.retention if directory is not None else None):
        await _ensure_stream(js, stream_spec.config(replicas=replicas, limits=limits), report)
    wanted = consumers_for(directory)
    for stream_name in _CONSUMER_STREAMS:
        existing = await _existing_consumers(js, stream_name)
        declared = [spec for spec in wanted if spec.stream == stream_name]
        for spec in declared:
            await _ensure_consumer(js, spec, existing.get(spec.name), report)
        names = {spec.name for spec in declared}
        report.kept.extend(f"{stream_name}/{n}" for n in sorted(existing) if n not in names)
    _log.info(
        "broker.provisioned",
        created=len(report.created),
        updated=len(report.updated),
        unchanged=len(report.unchanged),
        conflicts=len(report.conflicts),
        kept=len(report.kept),
    )
    return report


# -- inspection --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """Counters of one stream."""

    name: str
    messages: int
    bytes: int
    consumers: int
    replicas: int
    leader: str | None
    max_bytes: int = -1  # the stream's byte limit (-1: none)
    partner_messages: int = -1  # messages one partner may hold on its subject (-1: no cap)


@dataclass(frozen=True, slots=True)
class ConsumerStatus:
    """Counters of one consumer."""

    stream: str
    name: str
    num_pending: int
    num_ack_pending: int
    num_redelivered: int
    num_waiting: int


async def _paged(conn: Connection, subject: str, key: str) -> list[Any]:
    items: list[Any] = []
    while True:
        page = await conn.api(subject, {"offset": len(items)})
        batch = page.get(key) or []
        items.extend(batch)
        if not batch or len(items) >= int(page.get("total", 0)):
            return items


async def inspect(conn: Connection) -> tuple[tuple[StreamStatus, ...], tuple[ConsumerStatus, ...]]:
    """Counters of every stream and consumer, read through the JetStream API.

    Needs only the operator user's read-only permissions (names, info, lists).
    """
    names = await _paged(conn, "$JS.API.STREAM.NAMES", "streams")
    streams: list[StreamStatus] = []
    consumers: list[ConsumerStatus] = []
    for name in sorted(names):
        info = await conn.api(f"$JS.API.STREAM.INFO.{name}")
        state, config = info.get("state", {}), info.get("config", {})
        streams.append(
            StreamStatus(
                name=name,
                messages=state.get("messages", 0),
                bytes=state.get("bytes", 0),
                consumers=state.get("consumer_count", 0),
                replicas=config.get("num_replicas", 1),
                leader=(info.get("cluster") or {}).get("leader"),
                max_bytes=config.get("max_bytes", -1),
                partner_messages=(
                    config.get("max_msgs_per_subject", -1)
                    if config.get("discard_new_per_subject")
                    else -1
                ),
            )
        )
        listed = await _paged(conn, f"$JS.API.CONSUMER.LIST.{name}", "consumers")
        consumers.extend(
            ConsumerStatus(
                stream=name,
                name=c["name"],
                num_pending=c.get("num_pending", 0),
                num_ack_pending=c.get("num_ack_pending", 0),
                num_redelivered=c.get("num_redelivered", 0),
                num_waiting=c.get("num_waiting", 0),
            )
            for c in listed
        )
    return tuple(streams), tuple(consumers)
