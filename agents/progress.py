"""The sender's view of its events: each recipient's ladder, from the gateway's notices.

The gateway's tracker tells the sender every step of each (event, recipient) in signed
progress notices (``docs/protocol.md`` §7.3): ``ROUTED`` → ``DELIVERED`` →
``TAKEN_IN_CHARGE`` / ``DECLINED`` (reason) → ``CONCLUDED`` (outcome), and ``ESCALATED``
(to whom, when) for a recipient that had not taken the event in charge at its deadline; a
fallback recipient's ladder starts with its ``ROUTED`` step, the release on escalation. The
escalation notice (kind ``0x04``) also yields the ``ESCALATED`` steps, so either notice is
enough. Steps are stored once per (event, partner, state) whatever the order and the
repetitions in which notices arrive; the ladder shows each step's time and the event's
state is derived from the ladders (:func:`derived_state`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from relais.agents.models import ProgressStep, Rung, SentState

__all__ = ["derived_state", "escalation_steps", "ladder", "notice_steps"]

# Most advanced first wins the rung's state; DECLINED and TAKEN_IN_CHARGE are both final.
_RANK: Final = {"ROUTED": 1, "DELIVERED": 2, "TAKEN_IN_CHARGE": 3, "DECLINED": 3, "CONCLUDED": 4}
_STORED_ONLY: Final = frozenset({SentState.QUEUED, SentState.REJECTED})


def _ms(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def notice_steps(record: Mapping[str, Any]) -> tuple[ProgressStep, ...]:
    """The steps of a verified ``progress_notice`` record."""
    return tuple(
        ProgressStep(
            event_id=str(uuid.UUID(str(s["event_id"]))),
            partner=str(s["partner"]),
            role=str(s["role"]).lower(),
            state=str(s["state"]),
            at_ms=_ms(s["at"]),
            decline_reason=s.get("decline_reason"),
            outcome=s.get("outcome"),
            escalated_to=tuple(str(p) for p in s.get("escalated_to") or ()),
        )
        for s in record["steps"]
    )


def escalation_steps(record: Mapping[str, Any]) -> tuple[ProgressStep, ...]:
    """The ``ESCALATED`` step of each overdue recipient of a verified escalation notice."""
    event_id = str(uuid.UUID(str(record["event_id"])))
    fallback = tuple(str(p) for p in record["fallback_recipients"])
    return tuple(
        ProgressStep(
            event_id=event_id,
            partner=str(partner),
            role="recipient",
            state="ESCALATED",
            at_ms=_ms(record["escalated_at"]),
            escalated_to=fallback,
        )
        for partner in record["overdue_recipients"]
    )


def _rung(partner: str, role: str, steps: Iterable[ProgressStep]) -> Rung:
    times: dict[str, int] = {}
    reason = outcome = None
    escalated_to: tuple[str, ...] = ()
    state = "pending"
    rank = 0
    for step in steps:
        times.setdefault(step.state, step.at_ms)
        if step.state == "DECLINED":
            reason = step.decline_reason
        elif step.state == "CONCLUDED" or (step.outcome and outcome is None):
            outcome = step.outcome
        elif step.state == "ESCALATED":
            escalated_to = step.escalated_to
        if _RANK.get(step.state, 0) > rank:
            rank, state = _RANK[step.state], step.state.lower()
    return Rung(
        partner=partner,
        role=role,
        state=state,
        routed_at_ms=times.get("ROUTED"),
        delivered_at_ms=times.get("DELIVERED"),
        taken_in_charge_at_ms=times.get("TAKEN_IN_CHARGE"),
        declined_at_ms=times.get("DECLINED"),
        decline_reason=reason,
        concluded_at_ms=times.get("CONCLUDED"),
        outcome=outcome,
        escalated_at_ms=times.get("ESCALATED"),
        escalated_to=escalated_to,
    )


def ladder(
    recipients: Sequence[str], fallback: Sequence[str], steps: Sequence[ProgressStep]
) -> tuple[Rung, ...]:
    """One rung per recipient the event was sealed for (``pending`` until the gateway says
    more), then one per fallback recipient the event reached (its release on escalation)."""
    by_partner: dict[str, list[ProgressStep]] = {}
    for step in sorted(steps, key=lambda s: (s.at_ms, _RANK.get(s.state, 0))):
        by_partner.setdefault(step.partner, []).append(step)
    rungs = [_rung(p, "recipient", by_partner.pop(p, ())) for p in recipients]
    reached = [p for p in fallback if p in by_partner]
    reached += sorted(p for p in by_partner if p not in fallback)  # named by the gateway only
    rungs += [_rung(p, "fallback", by_partner[p]) for p in reached]
    return tuple(rungs)


def derived_state(stored: SentState, rungs: Sequence[Rung]) -> SentState:
    """The event's state: the most advanced of what happened to it at its recipients.

    ``queued`` and ``rejected`` are the outbox's; then, in order: ``concluded`` (someone
    that took it in charge reported an outcome), ``taken_in_charge`` (by a recipient or a
    fallback recipient), ``escalated``, ``declined`` (by every recipient), ``delivered``
    (every recipient's agent has it), ``routed``, and ``published`` before any notice.
    """
    if stored in _STORED_ONLY:
        return stored
    states = {r.state for r in rungs}
    recipients = [r for r in rungs if r.role == "recipient"]
    if "concluded" in states:
        return SentState.CONCLUDED
    if "taken_in_charge" in states:
        return SentState.TAKEN_IN_CHARGE
    if stored is SentState.ESCALATED or any(r.escalated_at_ms is not None for r in rungs):
        return SentState.ESCALATED
    if recipients and all(r.state == "declined" for r in recipients):
        return SentState.DECLINED
    if recipients and all(r.state not in ("pending", "routed") for r in recipients):
        return SentState.DELIVERED
    if any(r.routed_at_ms is not None for r in rungs):
        return SentState.ROUTED
    return stored
