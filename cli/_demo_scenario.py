"""The scenario ``relais demo`` plays on a running world, and what it checks.

Nine events, each sent by a partner's agent and followed to the end (recipients' inboxes,
receipts in the tracker, audit records); nothing is faked or skipped:

1. the gendarmerie declares the runaway of a child in care of Paris, placed in 93, through
   its agent's local HTTP API (FLASH); the CRIP takes it in charge;
2. the hospital refers a child after lifting medical secrecy; the medical section opens only
   for the parquet, the UAPED and the médecin référent (a marker planted in a medical field
   shows it); the UAPED takes it in charge;
3. a school's social worker sends a danger declaration to the CRIP, which takes it in charge;
4. a hotel reports a suspicious stay to the police and the gendarmerie; the police takes it;
5. the parquet sends a judicial requisition to a rental platform, which takes it in charge
6. and answers it: the answer goes to the parquet only;
7. the police declares another runaway that nobody takes in charge: at the deadline the
   tracker releases it to the on-duty parquet and the coordination desk (escalation);
8. a forged alert, claiming to come from the gendarmerie but signed with a key the directory
   does not list, is published with the hotel's NATS account: quarantined with a reason
   code, and the hotel gets a rejection signed by the gateway;
9. the gendarmerie ends the first runaway: the tracker closes its case.

Then the checks, from what actually happened: every recipient the rules give received each
event (``lost``) and nobody else did (``misdelivered``); for every event in every inbox, the
sections the recipient's agent decrypted are exactly those its kind is entitled to by the
secrecy policy (``unauthorized_section_reads``, ``entitled_sections_withheld``); every
delivery was confirmed to the tracker by a signed receipt; the audit log verifies
(:mod:`relais.cli._demo_checks`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Protocol

import httpx

from relais.agents.keys import PartnerKeys
from relais.agents.models import InboxItem, NoticeKind, SentState
from relais.agents.sealing import plan_event, seal_planned
from relais.agents.views import submission_json
from relais.broker_config.connection import connect
from relais.broker_config.directory import DirectoryKeys
from relais.broker_config.nats_conf import inbox_prefix
from relais.cli._demo_checks import Read, check_read, failed_checks
from relais.cli._demo_world import StepTimeout, World
from relais.gateway.audit import verify_audit
from relais.schemas.domain import EventType
from relais.schemas.envelope import peek_header
from relais.schemas.errors import RelaisError
from relais.schemas.names import ingress_subject
from relais.schemas.registry import to_jsonable
from relais.schemas.samples import sample_event

__all__ = [
    "API_PARTNER",
    "CANARY",
    "DEADLINE_SECONDS",
    "PARTNERS",
    "Flow",
    "Reporter",
    "Scenario",
]

GEND: Final = "gend-93-bobigny"
POLICE: Final = "police-93-saint-denis"
CRIP: Final = "crip-93"
PARQUET: Final = "parquet-93-bobigny"
UAPED: Final = "uaped-93-jean-verdier"
HOSPITAL: Final = "hopital-93-avicenne"
SCHOOL: Final = "college-93-jaures"
HOTEL: Final = "hotel-93-gare"
PLATFORM: Final = "location-courte"

#: Partners whose agents run: senders, recipients and fallback recipients of the scenario.
PARTNERS: Final = (
    GEND, POLICE, CRIP, "ase-93", "ase-75", PARQUET, UAPED, "medref-93", HOSPITAL, SCHOOL,
    HOTEL, PLATFORM, "maraude-93", "coord-93",
)  # fmt: skip
#: The partner whose agent is driven through its local HTTP API.
API_PARTNER: Final = GEND
#: The runaway alert's take-in-charge deadline in the demo rules (seconds).
DEADLINE_SECONDS: Final = 3
#: Planted in the medical referral's medical fields (``CANARY-medical``) and main text.
CANARY: Final = "TEMOIN-SECRET-MEDICAL"
_MEDICAL_CANARY: Final = f"{CANARY}-medical"
_TTL_MS: Final = 86_400_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Flow:
    """One event of the scenario, as far as it went (ids, parties, times: no content)."""

    step: int
    title: str
    event_type: str
    sender: str
    channel: str
    event_id: str | None = None
    priority: str | None = None
    rule: str | None = None
    recipients: tuple[str, ...] = ()
    fallback: tuple[str, ...] = ()
    claimed_sender: str | None = None  # forged events only
    created_at: int | None = None
    routed_ms: int | None = None
    # partner -> milliseconds after the event was created
    delivered: dict[str, int] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)
    taken_in_charge: dict[str, int] = field(default_factory=dict)
    escalation: dict[str, Any] | None = None
    quarantine: dict[str, Any] | None = None
    closed_by: int | None = None  # step of the event that closed the case
    waiting: str | None = None  # what the flow waits for now

    @property
    def expected(self) -> tuple[str, ...]:
        """Who must hold the event: its recipients, and its fallback once escalated."""
        if self.quarantine is not None:
            return ()
        return self.recipients + (self.fallback if self.escalation is not None else ())

    @property
    def state(self) -> str:
        """The furthest state the event reached."""
        if self.quarantine is not None:
            return "quarantined"
        if self.closed_by is not None:
            return "closed"
        if self.escalation is not None:
            return "escalated"
        if self.taken_in_charge:
            return "taken_in_charge"
        if self.delivered:
            return "delivered"
        return "routed" if self.routed_ms is not None else "published"

    def to_json(self) -> dict[str, Any]:
        """The flow as JSON (ids, parties, states, delays in milliseconds)."""
        out = asdict(self)
        out["state"] = self.state
        out["recipients"] = list(self.recipients)
        out["fallback"] = list(self.fallback)
        del out["waiting"]
        return out


class Reporter(Protocol):
    """Who shows the scenario as it goes."""

    def changed(self, flows: Sequence[Flow]) -> None:
        """A flow was added or moved on."""

    def reads(self, flow: Flow, rows: Sequence[Read]) -> None:
        """What each recipient of ``flow`` could read."""


async def _all(*works: Awaitable[Any]) -> list[Any]:
    """Run ``works`` concurrently to the end, then raise the first failure, if any."""
    results = await asyncio.gather(*works, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class Scenario:
    """Plays the scenario on ``world`` and checks it (see the module docstring)."""

    def __init__(self, world: World, reporter: Reporter) -> None:
        self.world = world
        self.reporter = reporter
        self.flows: list[Flow] = []
        self.problems: list[str] = []
        self._canaries: dict[str, str] = {}  # event id -> marker planted in it

    # -- the story -----------------------------------------------------------------------------

    async def play(self) -> None:
        """Every step, in order (the escalation is awaited last: it takes its deadline)."""
        alert = await self._runaway_alert()
        await self._medical_referral()
        await self._simple(SCHOOL, EventType.DANGER_DECLARATION, "danger declaration", CRIP)
        await self._simple(HOTEL, EventType.LODGING_SUSPICION_REPORT, "hotel suspicion", POLICE)
        await self._requisition()
        unanswered = await self._unanswered_alert()
        await self._forged_alert()
        await self._runaway_ended(alert)
        await self._escalation(unanswered)

    def _new(self, title: str, event_type: EventType, sender: str, channel: str) -> Flow:
        flow = Flow(len(self.flows) + 1, title, event_type.value, sender, channel)
        self.flows.append(flow)
        self.reporter.changed(self.flows)
        return flow

    async def _guard(self, flow: Flow, work: Awaitable[None]) -> None:
        """Run a step's waits; a timeout is recorded as a problem and the scenario goes on."""
        try:
            await work
        except StepTimeout as exc:
            self.problems.append(f"step {flow.step} ({flow.title}): {exc}")
        finally:
            flow.waiting = None
            self.reporter.changed(self.flows)

    def _accept(self, flow: Flow, answer: Mapping[str, Any]) -> None:
        flow.event_id = str(answer["event_id"])
        flow.priority = str(answer["priority"])
        flow.rule = str(answer["rule"])
        flow.recipients = tuple(answer["recipients"])
        flow.fallback = tuple(answer["fallback"])
        self.reporter.changed(self.flows)

    async def _submit(self, flow: Flow, record: Mapping[str, Any]) -> None:
        sub = await self.world.agents[flow.sender].submit(flow.event_type, record)
        self._accept(flow, submission_json(sub))  # what the local API would answer

    async def _runaway_alert(self) -> Flow:
        flow = self._new("runaway alert", EventType.RUNAWAY_ALERT, GEND, "local HTTP API")
        record = sample_event(
            EventType.RUNAWAY_ALERT, in_care=True, guardian_dept="75", prostitution_suspected=True
        )
        async with httpx.AsyncClient(
            base_url=self.world.api_url or "",
            headers=self.world.api_headers,
            trust_env=False,
            timeout=10.0,
        ) as api:
            answer = await api.post(
                "/v1/events/runaway_alert",
                json=to_jsonable(record),
                headers={"Idempotency-Key": f"FPR-DEMO-{_now_ms()}"},
            )
        if answer.status_code != 202:
            raise RelaisError(f"the gendarmerie's agent answered {answer.status_code}")
        self._accept(flow, answer.json())
        await self._guard(flow, self._deliver_and_take(flow, CRIP, show_reads=True))
        return flow

    async def _medical_referral(self) -> None:
        flow = self._new("medical referral", EventType.MEDICAL_REFERRAL, HOSPITAL, "Python API")
        await self._submit(flow, sample_event(EventType.MEDICAL_REFERRAL, canary=CANARY))
        if flow.event_id is not None:
            self._canaries[flow.event_id] = _MEDICAL_CANARY
        await self._guard(flow, self._deliver_and_take(flow, UAPED, show_reads=True))

    async def _simple(self, sender: str, event_type: EventType, title: str, taker: str) -> Flow:
        flow = self._new(title, event_type, sender, "Python API")
        await self._submit(flow, sample_event(event_type))
        await self._guard(flow, self._deliver_and_take(flow, taker))
        return flow

    async def _requisition(self) -> None:
        flow = self._new(
            "judicial requisition", EventType.JUDICIAL_REQUISITION, PARQUET, "Python API"
        )
        await self._submit(
            flow, sample_event(EventType.JUDICIAL_REQUISITION, addressed_to=PLATFORM)
        )
        await self._guard(flow, self._deliver_and_take(flow, PLATFORM))
        answer = self._new(
            "requisition answer", EventType.REQUISITION_ANSWER, PLATFORM, "Python API"
        )
        record = sample_event(
            EventType.REQUISITION_ANSWER, case_ref=flow.event_id, requester=PARQUET
        )
        await self._submit(answer, record)
        await self._guard(answer, self._deliver_and_take(answer, PARQUET))

    async def _unanswered_alert(self) -> Flow:
        flow = self._new("runaway alert, unanswered", EventType.RUNAWAY_ALERT, POLICE, "Python API")
        record = sample_event(EventType.RUNAWAY_ALERT, in_care=False, prostitution_suspected=False)
        await self._submit(flow, record)

        async def delivered() -> None:
            await self._routed(flow)
            await self._delivered(flow, flow.recipients)

        await self._guard(flow, delivered())
        flow.waiting = f"nobody takes it in charge: deadline {DEADLINE_SECONDS} s"
        self.reporter.changed(self.flows)
        return flow

    async def _runaway_ended(self, alert: Flow) -> None:
        flow = self._new("runaway ended", EventType.RUNAWAY_ENDED, GEND, "Python API")
        record = sample_event(
            EventType.RUNAWAY_ENDED,
            case_ref=alert.event_id,
            alert_sender=GEND,
            in_care=True,
            guardian_dept="75",
            prostitution_suspected=True,
        )
        await self._submit(flow, record)

        async def closes() -> None:
            await self._deliver_and_take(flow, CRIP)
            await self._audit_record("CLOSED", "the case to close", event_id=alert.event_id)
            alert.closed_by = flow.step

        await self._guard(flow, closes())

    async def _escalation(self, flow: Flow) -> None:
        async def escalated() -> None:
            record = await self._audit_record(
                "ESCALATED",
                "the escalation",
                bound=DEADLINE_SECONDS + 20.0,
                event_id=flow.event_id,
            )
            flow.escalation = {
                "deadline_seconds": DEADLINE_SECONDS,
                "after_ms": record["at"] - (flow.created_at or record["at"]),
                "late_ms": record["at"] - (record["deadline_at"] or record["at"]),
                "fallback": record["fallback"],
                "overdue": record["overdue"],
                "released": record["released"],
                "notice_to_sender": False,
            }
            flow.waiting = "released to the fallback recipients"
            self.reporter.changed(self.flows)
            await self._delivered(flow, flow.fallback, released=True)
            sender = self.world.agents[flow.sender]

            async def notified() -> bool:
                sent = await sender.sent_event(flow.event_id or "")
                return sent is not None and sent.state is SentState.ESCALATED

            await self.world.until(notified, what="the escalation notice to the sender")
            flow.escalation["notice_to_sender"] = True

        await self._guard(flow, escalated())

    async def _forged_alert(self) -> None:
        flow = self._new("runaway alert, forged", EventType.RUNAWAY_ALERT, HOTEL, "NATS, forged")
        flow.claimed_sender = GEND
        t = self.world.territory
        now = _now_ms()
        plan = plan_event(
            EventType.RUNAWAY_ALERT,
            sample_event(EventType.RUNAWAY_ALERT),
            sender=GEND,
            directory=t.directory,
            rules=self.world.rules,
            at_ms=now,
        )
        rogue = PartnerKeys.generate(GEND)  # the gendarmerie's name, a key nobody listed
        envelope = seal_planned(plan, sender=rogue, now_ms=now, ttl_ms=_TTL_MS)
        header = peek_header(envelope)
        flow.event_id = str(header.event_id)
        flow.priority = header.priority.label
        flow.recipients = plan.decision.recipients  # what it claims; nobody may get it
        broker = self.world.broker
        if broker is None:
            raise RelaisError("the broker is not running")
        conn = await connect(
            broker.client_url,
            creds=self.world.root / "territory" / "creds" / f"{HOTEL}.nk",
            inbox_prefix=inbox_prefix(HOTEL),
            name="relais-demo-forger",
        )
        try:
            await conn.js_publish(ingress_subject(HOTEL), envelope, msg_id=flow.event_id)
        finally:
            await conn.close()
        flow.waiting = "the router's verdict"
        self.reporter.changed(self.flows)
        await self._guard(flow, self._quarantined(flow))

    async def _quarantined(self, flow: Flow) -> None:
        record = await self._audit_record("QUARANTINED", "the quarantine", event_id=flow.event_id)
        flow.quarantine = {
            "reason": record["reason"],
            "authenticated_sender": record["sender"],
            "claimed_sender": record["claimed_sender"],
            "rejection_reason": None,
        }
        hotel = self.world.agents[HOTEL]

        async def rejected() -> str | None:
            for notice in await hotel.notices(limit=200):
                if notice.kind is NoticeKind.REJECTION and notice.event_id == flow.event_id:
                    return str(notice.record["reason_code"])
            return None

        reason = await self.world.until(rejected, what="the rejection to the hotel")
        flow.quarantine["rejection_reason"] = reason

    # -- following an event --------------------------------------------------------------------

    async def _deliver_and_take(self, flow: Flow, taker: str, *, show_reads: bool = False) -> None:
        await self._routed(flow)
        await self._delivered(flow, flow.recipients)
        if show_reads:
            rows = []
            for partner in flow.recipients:
                item = await self.world.agents[partner].inbox_item(flow.event_id or "")
                if item is not None:
                    rows.append(self._read(flow, partner, item))
            self.reporter.reads(flow, rows)
        await self.world.agents[taker].take_charge(flow.event_id or "")
        record = await self._audit_record(
            "RECEIPT",
            f"the tracker to learn that {taker} took it in charge",
            event_id=flow.event_id,
            partner=taker,
            state="TAKEN_IN_CHARGE",
        )
        flow.taken_in_charge[taker] = record["at"] - (flow.created_at or record["at"])

    async def _audit_record(
        self, kind: str, what: str, *, bound: float = 20.0, **match: Any
    ) -> dict[str, Any]:
        audit = self.world.require_audit()

        async def found() -> dict[str, Any] | None:
            await audit.refresh()
            records = audit.find(kind, **match)
            return records[0] if records else None

        record: dict[str, Any] = await self.world.until(found, what=what, bound=bound)
        return record

    async def _routed(self, flow: Flow) -> None:
        record = await self._audit_record(
            "ROUTED", f"the router to route step {flow.step}", event_id=flow.event_id
        )
        flow.created_at = int(record["created_at"])
        flow.routed_ms = int(record["at"]) - flow.created_at
        if (tuple(record["recipients"]), tuple(record["fallback"])) != (
            flow.recipients,
            flow.fallback,
        ):
            self.problems.append(f"step {flow.step}: the router and the agent disagree")
        self.reporter.changed(self.flows)

    async def _delivered(
        self, flow: Flow, partners: Sequence[str], *, released: bool = False
    ) -> None:
        into = flow.released if released else flow.delivered
        created = flow.created_at or 0

        async def one(partner: str) -> None:
            agent = self.world.agents[partner]

            async def arrived() -> InboxItem | None:
                item = await agent.inbox_item(flow.event_id or "")
                if item is None or (released and item.escalation is None):
                    return None
                return item

            item = await self.world.until(arrived, what=f"step {flow.step} to reach {partner}")
            into[partner] = item.received_at_ms - created
            self.reporter.changed(self.flows)

        await _all(*(one(p) for p in partners))

    # -- checks --------------------------------------------------------------------------------

    def _read(self, flow: Flow, partner: str, item: InboxItem) -> Read:
        return check_read(
            flow.step,
            partner,
            item,
            directory=self.world.territory.directory,
            rules=self.world.rules,
            canary=self._canaries.get(str(item.event_id)),
        )

    async def _receipts_missing(self) -> int:
        """Deliveries the tracker never learnt of from a signed receipt (waited for a while)."""
        audit = self.world.require_audit()
        wanted = {
            (f.event_id, p) for f in self.flows for p in (*f.delivered, *f.released) if f.event_id
        }

        async def confirmed() -> bool:
            await audit.refresh()
            seen = {(r["event_id"], r["partner"]) for r in audit.find("RECEIPT")}
            return wanted <= seen

        try:
            await self.world.until(confirmed, what="the receipts of every delivery")
        except StepTimeout as exc:
            self.problems.append(str(exc))
        seen = {(r["event_id"], r["partner"]) for r in audit.find("RECEIPT")}
        return len(wanted - seen)

    async def result(self) -> dict[str, Any]:
        """Inventory every inbox, check the invariants, verify the audit log: the report."""
        receipts_missing = await self._receipts_missing()
        by_id = {f.event_id: f for f in self.flows if f.event_id}
        reads: list[Read] = []
        held: set[tuple[str, str]] = set()
        misdelivered = unreadable = 0
        for partner, agent in self.world.agents.items():
            for item in await agent.inbox(limit=500):
                flow = by_id.get(str(item.event_id))
                if flow is None or partner not in flow.expected:
                    misdelivered += 1
                    continue
                held.add((str(item.event_id), partner))
                if item.problem is not None:
                    unreadable += 1
                    continue
                reads.append(self._read(flow, partner, item))
        lost = sum(1 for f in self.flows for p in f.expected if (f.event_id or "", p) not in held)
        audit = self.world.require_audit()
        await audit.refresh()
        report = await self._verify_audit()
        counts = {
            "events": len(self.flows),
            "routed": len(audit.find("ROUTED")),
            "deliveries": len(held),
            "taken_in_charge": len(audit.find("RECEIPT", state="TAKEN_IN_CHARGE")),
            "escalations": len(audit.find("ESCALATED")),
            "quarantined": len(audit.find("QUARANTINED")),
            "closed": len(audit.find("CLOSED")),
            "unauthorized_section_reads": sum(len(r.unauthorized) for r in reads),
            "entitled_sections_withheld": sum(len(r.missing) for r in reads),
            "lost": lost,
            "misdelivered": misdelivered,
            "unreadable": unreadable,
            "receipts_missing": receipts_missing,
        }
        failures = failed_checks(counts, report, self.problems)
        return {
            "ok": not failures,
            **counts,
            "failures": failures,
            "audit": report,
            "rules": {
                "version": self.world.rules.version,
                "runaway_alert_deadline_seconds": DEADLINE_SECONDS,
            },
            "flows": [f.to_json() for f in self.flows],
            "reads": [r.to_json() for r in reads],
        }

    async def _verify_audit(self) -> dict[str, Any]:
        operator = self.world.operator
        if operator is None:
            raise RelaisError("no operator connection")
        directory = self.world.territory.directory
        report = await verify_audit(
            operator, keys=DirectoryKeys(directory), partnership=directory.partnership
        )
        out = report.to_json()
        return {k: out[k] for k in ("ok", "records", "checkpoints", "unsealed", "problem")}
