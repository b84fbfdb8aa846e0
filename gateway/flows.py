"""What operators see: the partnership's flows, folded from the audit log. Never content.

The audit records (``docs/protocol.md`` §8.1) tell the story of every event: ``ROUTED`` (who
sent what type to whom, priority, département, rule, deadline), ``RECEIPT`` (a recipient
received, took in charge or declined it), ``ESCALATED`` (the deadline passed: the fallback
recipients got it), ``CLOSED`` (a runaway ended) and ``QUARANTINED`` (refused, with a reason
code). :class:`FlowBook` folds them, purely, into views::

    book = FlowBook.from_records(records, directory=verified_directory)  # directory optional
    book.flows(event_type="runaway_alert", limit=20)   # newest first
    book.trace(event_id)                               # the path, step by step, or None
    book.pending(now_ms)     # unresolved, deadline not passed (or none)
    book.overdue(now_ms)     # deadline passed and nobody took it in charge, escalated or not
    book.quarantine()        # refused events and their reason codes
    book.stats()             # counts with small-count suppression, take-in-charge delays
    book.awaiting_by_partner()  # per partner: deliveries still waiting for its decision

and two readers do the I/O, as the read-only ``operator`` NATS user may:
:func:`read_audit_records` (every record of ``AUDIT`` by direct gets, through
:func:`relais.gateway.jetstream.read_stream`) and :func:`read_backlog` (per partner and
priority, the deliveries its agent has not acknowledged yet, from consumer information).

Definitions (all times are Unix milliseconds, as in the records):

* an event is *taken* when any recipient (or fallback recipient) took it in charge, and
  *resolved* when taken, closed, or declined by every recipient;
* *pending*: not resolved, and its deadline (if it has one) not passed;
* *overdue*: it has a deadline, the deadline passed, it is neither taken nor closed;
* take-in-charge delay of one partner: from when it could have the event (routing, or the
  escalation for a fallback recipient) to the moment its signed receipt says it took it in
  charge (the partner's clock, so a delay is never negative).

What never appears: content (records have none), and the routing metadata that describes the
child or the situation rather than where it is handled: only :data:`SHOWN_ROUTING_KEYS`
(départements, case references, partner ids) are kept, so ``prostitution_suspected``,
``in_care``, ``imminent`` and any key a future schema adds are dropped. :meth:`FlowBook.stats`
publishes no count between 1 and 4 (:data:`SUPPRESSED`), nor delay statistics over fewer
than 5 take-in-charge delays, so that no child can be singled out from the statistics.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from relais.broker_config.connection import Connection
from relais.broker_config.directory import Directory
from relais.gateway.audit import (
    AUDIT_STREAM,
    AUDITED_ROUTING_KEYS,
    RECORD_SUBJECT,
    AuditKind,
    decode_record,
)
from relais.gateway.jetstream import read_stream
from relais.schemas.domain import Priority
from relais.schemas.errors import EnvelopeError

__all__ = [
    "SHOWN_ROUTING_KEYS",
    "SMALL_COUNT",
    "SUPPRESSED",
    "AuditSnapshot",
    "Closure",
    "DelayStats",
    "Delivery",
    "DeliveryState",
    "Escalation",
    "Flow",
    "FlowBook",
    "FlowStatus",
    "QuarantineEntry",
    "Stats",
    "Step",
    "Trace",
    "iso_utc",
    "month_of",
    "read_audit_records",
    "read_backlog",
    "suppress_small",
]

# Routing metadata that says where and between whom an event is handled, not who the child
# is nor what happened: what the router keeps in its records (records older than that rule
# may hold more: the views filter again).
SHOWN_ROUTING_KEYS: Final = AUDITED_ROUTING_KEYS
SMALL_COUNT: Final = 5
SUPPRESSED: Final = "<5"
_UNKNOWN_KIND: Final = "unknown"
_KINDS: Final = frozenset(kind.value for kind in AuditKind)
_LIST_PAGE_KEY: Final = "consumers"

Count = int | str  # a published count: exact, or SUPPRESSED


def suppress_small(count: int) -> Count:
    """``count``, or ``"<5"`` when it is between 1 and 4 (0 is shown: nothing to single out)."""
    return SUPPRESSED if 0 < count < SMALL_COUNT else count


def month_of(ms: int) -> str:
    """``YYYY-MM`` of a time in Unix milliseconds, in UTC."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m")


class DeliveryState(StrEnum):
    """Where one (event, partner) stands; only moves forward, as in the tracker."""

    ROUTED = "ROUTED"
    DELIVERED = "DELIVERED"
    TAKEN_IN_CHARGE = "TAKEN_IN_CHARGE"
    DECLINED = "DECLINED"
    CONCLUDED = "CONCLUDED"  # taken in charge, and the partner reported the outcome


_RANK: Final = {
    DeliveryState.ROUTED: 0,
    DeliveryState.DELIVERED: 1,
    DeliveryState.TAKEN_IN_CHARGE: 2,
    DeliveryState.DECLINED: 2,
    DeliveryState.CONCLUDED: 3,
}
_TAKEN: Final = frozenset({DeliveryState.TAKEN_IN_CHARGE, DeliveryState.CONCLUDED})


class FlowStatus(StrEnum):
    """One word for an event: the most advanced of what happened to it."""

    ROUTED = "routed"  # on its way: no recipient confirmed it yet
    DELIVERED = "delivered"  # every recipient's agent has it
    DECLINED = "declined"  # every recipient declined it
    ESCALATED = "escalated"  # its deadline passed; the fallback recipients have it
    TAKEN = "taken_in_charge"  # someone took it in charge
    CLOSED = "closed"  # the case was closed (e.g. the runaway ended)


@dataclass(slots=True)
class Delivery:
    """One partner's copy of an event: recipient, or fallback recipient after escalation."""

    partner: str
    role: str  # "recipient" or "fallback"
    kind: str | None
    available_at: int | None  # routed (recipient) or escalated (fallback)
    state: DeliveryState = DeliveryState.ROUTED
    delivered_at: int | None = None
    taken_at: int | None = None
    declined_at: int | None = None
    decline_reason: str | None = None
    concluded_at: int | None = None
    outcome: str | None = None  # a code (receipt outcome), never the reasons

    @property
    def waiting(self) -> bool:
        """True while the partner has neither taken it in charge nor declined it."""
        return self.state in (DeliveryState.ROUTED, DeliveryState.DELIVERED)

    @property
    def take_delay_ms(self) -> int | None:
        """From availability to take in charge (never negative), or ``None``."""
        if self.taken_at is None or self.available_at is None:
            return None
        return max(0, self.taken_at - self.available_at)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "partner": self.partner,
            "kind": self.kind,
            "role": self.role,
            "state": self.state.value,
            "available_at": self.available_at,
            "delivered_at": self.delivered_at,
            "taken_at": self.taken_at,
            "declined_at": self.declined_at,
            "decline_reason": self.decline_reason,
            "concluded_at": self.concluded_at,
            "outcome": self.outcome,
            "take_delay_ms": self.take_delay_ms,
        }


@dataclass(frozen=True, slots=True)
class Escalation:
    """The deadline passed: who was overdue, who the event went to."""

    at: int
    deadline_at: int | None
    overdue: tuple[str, ...]
    fallback: tuple[str, ...]
    released: bool  # the original envelope reached the fallback recipients
    notice_id: str | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Closure:
    """The case was closed by another event (``runaway_ended``)."""

    at: int
    closed_by: str | None
    closed_by_sender: str | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """A refused event: reason code, who published it, ids only if its header parsed."""

    at: int
    reason: str
    sender: str  # the authenticated sender (the ingress subject's)
    claimed_sender: str | None  # the header's, unverified
    event_id: str | None
    event_type: str | None  # only when the envelope verified
    verified: bool
    ingress_seq: int | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


@dataclass(slots=True)
class Flow:
    """One routed event and everything the audit log says happened to it since."""

    event_id: str
    event_type: str
    sender: str
    priority: str
    departement: str | None
    rule: str | None
    routed_at: int
    created_at: int | None
    deadline_at: int | None
    fallback: tuple[str, ...]
    routing: dict[str, str]  # SHOWN_ROUTING_KEYS only
    closes_case: str | None  # the case this event closes (a runaway_ended's case_ref)
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    escalation: Escalation | None = None
    closure: Closure | None = None

    @property
    def recipients(self) -> tuple[Delivery, ...]:
        """The recipients' deliveries (not the fallback's), sorted by partner."""
        return tuple(d for _, d in sorted(self.deliveries.items()) if d.role == "recipient")

    @property
    def taken(self) -> bool:
        """Someone (recipient or fallback) took it in charge."""
        return any(d.state in _TAKEN for d in self.deliveries.values())

    @property
    def declined_by_all(self) -> bool:
        """Every recipient declined it (and nobody took it in charge)."""
        recipients = self.recipients
        return bool(recipients) and all(d.state is DeliveryState.DECLINED for d in recipients)

    @property
    def resolved(self) -> bool:
        """Taken in charge, closed, or declined by every recipient."""
        return self.taken or self.closure is not None or self.declined_by_all

    @property
    def status(self) -> FlowStatus:
        """The most advanced of what happened (see :class:`FlowStatus`)."""
        if self.closure is not None:
            return FlowStatus.CLOSED
        if self.taken:
            return FlowStatus.TAKEN
        if self.escalation is not None:
            return FlowStatus.ESCALATED
        if self.declined_by_all:
            return FlowStatus.DECLINED
        recipients = self.recipients
        if recipients and all(d.state is not DeliveryState.ROUTED for d in recipients):
            return FlowStatus.DELIVERED
        return FlowStatus.ROUTED

    @property
    def waiting(self) -> tuple[str, ...]:
        """Partners that have the event and have neither taken it in charge nor declined it."""
        return tuple(p for p, d in sorted(self.deliveries.items()) if d.waiting)

    @property
    def first_taken_at(self) -> int | None:
        """When it was first taken in charge, or ``None``."""
        times = [d.taken_at for d in self.deliveries.values() if d.taken_at is not None]
        return min(times) if times else None

    def involves(self, partner: str) -> bool:
        """True when ``partner`` sent it or received it (fallback recipients once escalated)."""
        return partner == self.sender or partner in self.deliveries

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (times in Unix milliseconds)."""
        first = self.first_taken_at
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "sender": self.sender,
            "priority": self.priority,
            "departement": self.departement,
            "rule": self.rule,
            "status": self.status.value,
            "routed_at": self.routed_at,
            "created_at": self.created_at,
            "deadline_at": self.deadline_at,
            "first_taken_at": first,
            "take_delay_ms": None if first is None else max(0, first - self.routed_at),
            "recipients": [d.to_json() for _, d in sorted(self.deliveries.items())],
            "fallback": list(self.fallback),
            "waiting": list(self.waiting),
            "routing": dict(sorted(self.routing.items())),
            "closes_case": self.closes_case,
            "escalation": None if self.escalation is None else self.escalation.to_json(),
            "closure": None if self.closure is None else self.closure.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Step:
    """One step of an event's path: what happened, when, and to or by whom."""

    at: int
    step: str  # PUBLISHED, ROUTED, DELIVERED, TAKEN_IN_CHARGE, DECLINED, ESCALATED, ...
    partner: str | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Trace:
    """The path of one event id: its flow (if it was routed) and any refusal of it."""

    event_id: str
    flow: Flow | None
    quarantined: tuple[QuarantineEntry, ...]
    steps: tuple[Step, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "event_id": self.event_id,
            "flow": None if self.flow is None else self.flow.to_json(),
            "quarantined": [q.to_json() for q in self.quarantined],
            "steps": [s.to_json() for s in self.steps],
        }


@dataclass(frozen=True, slots=True)
class DelayStats:
    """Take-in-charge delays of one partner kind (suppressed under 5 samples)."""

    samples: Count
    median_ms: int | None
    p90_ms: int | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Stats:
    """Published statistics: every count between 1 and 4 is already :data:`SUPPRESSED`."""

    events: Count
    escalated: Count
    quarantined: Count
    by_type: dict[str, Count]
    by_departement: dict[str, Count]
    by_month: dict[str, Count]
    delays: dict[str, DelayStats]  # by partner kind

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


def _nearest_rank(sorted_values: list[int], fraction: float) -> int:
    index = max(0, math.ceil(fraction * len(sorted_values)) - 1)
    return sorted_values[index]


def _delay_stats(samples: list[int]) -> DelayStats:
    if len(samples) < SMALL_COUNT:
        return DelayStats(suppress_small(len(samples)), None, None)
    ordered = sorted(samples)
    return DelayStats(len(ordered), _nearest_rank(ordered, 0.5), _nearest_rank(ordered, 0.9))


def _breakdown(counter: Counter[str]) -> dict[str, Count]:
    return {key: suppress_small(n) for key, n in sorted(counter.items())}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if type(value) is int else None


def _priority_rank(label: str) -> int:
    return Priority[label].value if label in Priority.__members__ else len(Priority)


def _ids(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(sorted(v for v in value if isinstance(v, str)))


class FlowBook:
    """Flows folded from audit records; build it with :meth:`from_records`."""

    def __init__(self, directory: Directory | None = None) -> None:
        self._directory = directory
        self._flows: dict[str, Flow] = {}
        self._quarantine: list[QuarantineEntry] = []
        # records about an event seen before its ROUTED record (kept, applied once it comes)
        self._early: defaultdict[str, list[Mapping[str, Any]]] = defaultdict(list)
        self.ignored = 0  # records that could not be folded (missing or mistyped members)

    # -- folding -----------------------------------------------------------------------------

    @classmethod
    def from_records(
        cls, records: Iterable[Mapping[str, Any]], directory: Directory | None = None
    ) -> FlowBook:
        """Fold decoded audit records (in stream order). ``directory`` adds partner kinds."""
        book = cls(directory)
        for record in records:
            book.add(record)
        return book

    def add(self, record: Mapping[str, Any]) -> None:
        """Fold one more record (records of an event may come in any order)."""
        kind = record.get("kind")
        if kind == AuditKind.QUARANTINED:
            self._add_quarantined(record)
            return
        event_id = _text(record.get("event_id"))
        if event_id is None or kind not in _KINDS:
            self.ignored += 1
            return
        if kind == AuditKind.ROUTED:
            self._add_routed(event_id, record)
            return
        flow = self._flows.get(event_id)
        if flow is None:
            self._early[event_id].append(record)
            return
        if not self._apply(flow, record):
            self.ignored += 1

    def _kind(self, partner: str) -> str | None:
        if self._directory is None:
            return None
        found = self._directory.get(partner)
        return None if found is None else found.kind.value

    def _add_routed(self, event_id: str, record: Mapping[str, Any]) -> None:
        at, sender = _int(record.get("at")), _text(record.get("sender"))
        event_type = _text(record.get("event_type"))
        if at is None or sender is None or event_type is None or event_id in self._flows:
            self.ignored += 1
            return
        raw_routing = record.get("routing")
        routing = {
            str(k): str(v)
            for k, v in (raw_routing.items() if isinstance(raw_routing, dict) else ())
            if k in SHOWN_ROUTING_KEYS and isinstance(v, str)
        }
        flow = Flow(
            event_id=event_id,
            event_type=event_type,
            sender=sender,
            priority=_text(record.get("priority")) or "?",
            departement=_text(record.get("departement")),
            rule=_text(record.get("rule")),
            routed_at=at,
            created_at=_int(record.get("created_at")),
            deadline_at=_int(record.get("deadline_at")),
            fallback=_ids(record.get("fallback")),
            routing=routing,
            closes_case=routing.get("case_ref") if record.get("closes_case") is True else None,
        )
        for partner in _ids(record.get("recipients")):
            flow.deliveries[partner] = Delivery(partner, "recipient", self._kind(partner), at)
        self._flows[event_id] = flow
        for early in self._early.pop(event_id, []):
            if not self._apply(flow, early):
                self.ignored += 1

    def _apply(self, flow: Flow, record: Mapping[str, Any]) -> bool:
        at = _int(record.get("at"))
        if at is None:
            return False
        kind = record.get("kind")
        if kind == AuditKind.RECEIPT:
            return self._receipt(flow, record, at)
        if kind == AuditKind.ESCALATED:
            if flow.escalation is None:
                fallback = _ids(record.get("fallback")) or flow.fallback
                flow.escalation = Escalation(
                    at=at,
                    deadline_at=_int(record.get("deadline_at")),
                    overdue=_ids(record.get("overdue")),
                    fallback=fallback,
                    released=record.get("released") is True,
                    notice_id=_text(record.get("notice_id")),
                )
                for partner in fallback:
                    known = flow.deliveries.get(partner)
                    if known is None:
                        kind_of = self._kind(partner)
                        flow.deliveries[partner] = Delivery(partner, "fallback", kind_of, at)
                    elif known.available_at is None:  # it answered before this was folded
                        known.available_at = at
            return True
        if kind == AuditKind.CLOSED:
            if flow.closure is None:
                flow.closure = Closure(
                    at, _text(record.get("closed_by")), _text(record.get("closed_by_sender"))
                )
            return True
        return False

    def _receipt(self, flow: Flow, record: Mapping[str, Any], at: int) -> bool:
        partner = _text(record.get("partner"))
        try:
            state = DeliveryState(str(record.get("state")))
        except ValueError:
            return False
        if partner is None:
            return False
        delivery = flow.deliveries.get(partner)
        if delivery is None:
            # A fallback recipient may answer its escalation notice before the ESCALATED
            # record is folded; anyone else is not a party (the tracker refuses those).
            role = "fallback" if partner in flow.fallback else "recipient"
            delivery = Delivery(partner, role, self._kind(partner), None)
            flow.deliveries[partner] = delivery
        when = _int(record.get("receipt_at")) or at
        if state is DeliveryState.DELIVERED:
            delivery.delivered_at = delivery.delivered_at or when
        elif state is DeliveryState.TAKEN_IN_CHARGE:
            delivery.taken_at = delivery.taken_at or when
            delivery.outcome = delivery.outcome or _text(record.get("outcome"))
        elif state is DeliveryState.DECLINED:
            delivery.declined_at = delivery.declined_at or when
            delivery.decline_reason = _text(record.get("decline_reason"))
        elif state is DeliveryState.CONCLUDED:
            delivery.concluded_at = delivery.concluded_at or when
            delivery.outcome = _text(record.get("outcome"))
        if _RANK[state] > _RANK[delivery.state]:
            delivery.state = state
        return True

    def _add_quarantined(self, record: Mapping[str, Any]) -> None:
        at, reason = _int(record.get("at")), _text(record.get("reason"))
        if at is None or reason is None:
            self.ignored += 1
            return
        self._quarantine.append(
            QuarantineEntry(
                at=at,
                reason=reason,
                sender=_text(record.get("sender")) or "",
                claimed_sender=_text(record.get("claimed_sender")),
                event_id=_text(record.get("event_id")),
                event_type=_text(record.get("event_type")),
                verified=record.get("verified") is True,
                ingress_seq=_int(record.get("ingress_seq")),
            )
        )

    # -- views ---------------------------------------------------------------------------------

    def get(self, event_id: str) -> Flow | None:
        """The flow of a routed event, or ``None``."""
        return self._flows.get(event_id)

    def flows(
        self,
        *,
        event_type: str | None = None,
        partner: str | None = None,
        since_ms: int | None = None,
        limit: int | None = None,
    ) -> list[Flow]:
        """Routed events, newest first, optionally filtered (type, a partner involved, since)."""
        found = [
            f
            for f in self._flows.values()
            if (event_type is None or f.event_type == event_type)
            and (partner is None or f.involves(partner))
            and (since_ms is None or f.routed_at >= since_ms)
        ]
        found.sort(key=lambda f: (f.routed_at, f.event_id), reverse=True)
        return found if limit is None else found[:limit]

    def pending(self, now_ms: int) -> list[Flow]:
        """Unresolved events whose deadline has not passed (or without one), oldest first."""
        found = [
            f
            for f in self._flows.values()
            if not f.resolved and f.waiting and (f.deadline_at is None or now_ms < f.deadline_at)
        ]
        return sorted(found, key=lambda f: (_priority_rank(f.priority), f.routed_at, f.event_id))

    def overdue(self, now_ms: int) -> list[Flow]:
        """Events past their deadline that nobody took in charge (escalated or not)."""
        found = [
            f
            for f in self._flows.values()
            if f.deadline_at is not None
            and now_ms >= f.deadline_at
            and not f.taken
            and f.closure is None
        ]
        return sorted(found, key=lambda f: (f.deadline_at or 0, f.event_id))

    def quarantine(self, *, reason: str | None = None) -> list[QuarantineEntry]:
        """Refused events, newest first, optionally of one reason code."""
        found = [q for q in self._quarantine if reason is None or q.reason == reason]
        return sorted(found, key=lambda q: (q.at, q.ingress_seq or 0), reverse=True)

    def awaiting_by_partner(self) -> dict[str, int]:
        """Per partner: events of unresolved flows it has not taken in charge nor declined."""
        counts: Counter[str] = Counter()
        for flow in self._flows.values():
            if not flow.resolved:
                counts.update(flow.waiting)
        return dict(counts)

    def trace(self, event_id: str) -> Trace | None:
        """The path of ``event_id`` step by step, or ``None`` when the log never saw it."""
        flow = self._flows.get(event_id)
        refused = tuple(q for q in self._quarantine if q.event_id == event_id)
        if flow is None and not refused:
            return None
        steps = [Step(q.at, "QUARANTINED", q.sender, q.reason) for q in refused]
        if flow is not None:
            steps.extend(_flow_steps(flow))
        steps.sort(key=lambda s: (s.at, _STEP_ORDER.get(s.step, 9)))
        return Trace(event_id, flow, tuple(sorted(refused, key=lambda q: q.at)), tuple(steps))

    def stats(self) -> Stats:
        """Counts by type, département and month (UTC), delays by partner kind, suppressed."""
        flows = list(self._flows.values())
        delays: defaultdict[str, list[int]] = defaultdict(list)
        for flow in flows:
            for delivery in flow.deliveries.values():
                delay = delivery.take_delay_ms
                if delay is not None:
                    delays[delivery.kind or _UNKNOWN_KIND].append(delay)
        return Stats(
            events=suppress_small(len(flows)),
            escalated=suppress_small(sum(1 for f in flows if f.escalation is not None)),
            quarantined=suppress_small(len(self._quarantine)),
            by_type=_breakdown(Counter(f.event_type for f in flows)),
            by_departement=_breakdown(Counter(f.departement or "none" for f in flows)),
            by_month=_breakdown(Counter(month_of(f.routed_at) for f in flows)),
            delays={kind: _delay_stats(v) for kind, v in sorted(delays.items())},
        )


_STEP_ORDER: Final = {
    "PUBLISHED": 0,
    "QUARANTINED": 1,
    "ROUTED": 2,
    "DELIVERED": 3,
    "TAKEN_IN_CHARGE": 4,
    "DECLINED": 4,
    "CONCLUDED": 5,
    "ESCALATED": 6,
    "CLOSED": 7,
}


def _flow_steps(flow: Flow) -> list[Step]:
    steps: list[Step] = []
    if flow.created_at is not None:
        steps.append(Step(flow.created_at, "PUBLISHED", flow.sender, flow.event_type))
    recipients = ", ".join(d.partner for d in flow.recipients)
    detail = f"{flow.priority} by {flow.rule or '?'} to {recipients or 'nobody'}"
    if flow.deadline_at is not None:
        detail += f"; deadline {iso_utc(flow.deadline_at)}"
    if flow.closes_case is not None:
        detail += f"; closes case {flow.closes_case}"
    steps.append(Step(flow.routed_at, "ROUTED", None, detail))
    for partner, d in sorted(flow.deliveries.items()):
        if d.delivered_at is not None:
            steps.append(Step(d.delivered_at, "DELIVERED", partner, d.role))
        if d.taken_at is not None:
            steps.append(Step(d.taken_at, "TAKEN_IN_CHARGE", partner, d.role))
        if d.declined_at is not None:
            steps.append(Step(d.declined_at, "DECLINED", partner, d.decline_reason or ""))
        if d.concluded_at is not None:
            steps.append(Step(d.concluded_at, "CONCLUDED", partner, d.outcome or ""))
    if flow.escalation is not None:
        e = flow.escalation
        detail = f"overdue: {', '.join(e.overdue) or '-'}; to {', '.join(e.fallback) or '-'}"
        detail += "" if e.released else " (original not released)"
        steps.append(Step(e.at, "ESCALATED", None, detail))
    if flow.closure is not None:
        c = flow.closure
        steps.append(Step(c.at, "CLOSED", c.closed_by_sender, f"by event {c.closed_by or '?'}"))
    return steps


def iso_utc(ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` of a time in Unix milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- reading from the broker -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditSnapshot:
    """The decoded records of the ``AUDIT`` stream up to ``last_seq``."""

    records: tuple[dict[str, Any], ...]
    malformed: int  # records that are not canonical (``relais audit verify`` says more)
    last_seq: int


async def read_audit_records(
    conn: Connection, progress: Callable[[int, int], None] | None = None
) -> AuditSnapshot:
    """Every audit record (not the checkpoints) up to the stream's last sequence now.

    Direct gets, which the read-only operator user may do. ``progress(done, total)`` is
    called as messages are read (``total``: the last sequence when reading began).
    """
    info = await conn.api(f"$JS.API.STREAM.INFO.{AUDIT_STREAM}")
    last_seq = int((info.get("state") or {}).get("last_seq", 0))
    records: list[dict[str, Any]] = []
    malformed = 0
    if last_seq == 0:
        return AuditSnapshot((), 0, 0)
    async with contextlib.aclosing(read_stream(conn, AUDIT_STREAM)) as messages:
        async for msg in messages:
            if msg.seq > last_seq:
                break
            if progress is not None:
                progress(msg.seq, last_seq)
            if msg.subject != RECORD_SUBJECT:
                continue
            try:
                records.append(decode_record(msg.data))
            except EnvelopeError:
                malformed += 1
    return AuditSnapshot(tuple(records), malformed, last_seq)


async def read_backlog(conn: Connection) -> dict[str, dict[str, int]]:
    """Per partner and priority: deliveries its agent has not acknowledged yet.

    From the ``out-<partner>-<PRIORITY>`` consumers of ``DELIVERY`` (waiting to be pulled plus
    pulled but not acknowledged). Consumer information only: no message is read.
    """
    backlog: defaultdict[str, dict[str, int]] = defaultdict(dict)
    offset = 0
    while True:
        page = await conn.api("$JS.API.CONSUMER.LIST.DELIVERY", {"offset": offset})
        batch = page.get(_LIST_PAGE_KEY) or []
        for consumer in batch:
            name = str(consumer.get("name", ""))
            stem, _, label = name.rpartition("-")
            if not stem.startswith("out-") or label not in Priority.__members__:
                continue
            queued = int(consumer.get("num_pending", 0)) + int(consumer.get("num_ack_pending", 0))
            backlog[stem.removeprefix("out-")][label] = queued
        offset += len(batch)
        if not batch or offset >= int(page.get("total", 0)):
            return dict(backlog)
