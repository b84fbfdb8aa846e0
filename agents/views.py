"""JSON shapes shared by the local HTTP API and the webhook bodies.

A partner's system sees the same object for an event whether it polls ``GET /v1/inbox``
or receives a webhook: ids, codes, times (ISO 8601 UTC), and under ``fields`` the decoded
content of the sections this partner is entitled to, as JSON (``to_jsonable``: ISO dates and
times, base64 bytes). ``withheld_sections`` names the sections it holds no key for.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Final

from relais.agents.models import InboxItem, Notice, Rung, SentEvent, Submission
from relais.schemas.domain import Priority
from relais.schemas.registry import to_jsonable

__all__ = [
    "iso_ms",
    "item_json",
    "notice_json",
    "rung_json",
    "sent_json",
    "submission_json",
    "webhook_body",
]

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def iso_ms(ms: int | None) -> str | None:
    """Unix milliseconds as ISO 8601 UTC (``...Z``), ``None`` kept."""
    if ms is None:
        return None
    moment = _EPOCH + dt.timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def submission_json(sub: Submission) -> dict[str, Any]:
    """The ``202`` answer to a submission."""
    return {
        "event_id": str(sub.event_id),
        "event_type": sub.event_type.value,
        "priority": sub.priority.label,
        "recipients": list(sub.recipients),
        "fallback": list(sub.fallback),
        "rule": sub.rule,
        "triage": sub.triage,
        "edition": sub.edition,
    }


def rung_json(rung: Rung) -> dict[str, Any]:
    """Where a sent event stands at one recipient, each step with its time."""
    return {
        "partner": rung.partner,
        "role": rung.role,
        "state": rung.state,
        "routed_at": iso_ms(rung.routed_at_ms),
        "delivered_at": iso_ms(rung.delivered_at_ms),
        "taken_in_charge_at": iso_ms(rung.taken_in_charge_at_ms),
        "declined_at": iso_ms(rung.declined_at_ms),
        "decline_reason": rung.decline_reason,
        "concluded_at": iso_ms(rung.concluded_at_ms),
        "outcome": rung.outcome,
        "escalated_at": iso_ms(rung.escalated_at_ms),
        "escalated_to": list(rung.escalated_to),
    }


def sent_json(sent: SentEvent) -> dict[str, Any]:
    """``GET /v1/events/{id}``: the routing decision, the state, each recipient's ladder."""
    return {
        "event_id": str(sent.event_id),
        "event_type": sent.event_type.value,
        "priority": sent.priority.label,
        "recipients": list(sent.recipients),
        "fallback": list(sent.fallback),
        "rule": sent.rule,
        "triage": sent.triage,
        "edition": sent.edition,
        "state": sent.state.value,
        "reason": sent.reason,
        "created_at": iso_ms(sent.created_at_ms),
        "published_at": iso_ms(sent.published_at_ms),
        "ladder": [rung_json(r) for r in sent.ladder],
    }


def item_json(item: InboxItem) -> dict[str, Any]:
    """A received event, decrypted (only what this partner may read)."""
    return {
        "event_id": str(item.event_id),
        "event_type": item.event_type.value,
        "priority": item.priority.label,
        "sender": item.sender,
        "rule": item.rule,
        "escalation": item.escalation,
        "created_at": iso_ms(item.created_at_ms),
        "received_at": iso_ms(item.received_at_ms),
        "state": item.state.value,
        "decline_reason": item.decline_reason,
        "outcome": item.outcome,
        "cursor": item.seq,
        "fields": to_jsonable(item.fields),
        "opened_sections": list(item.opened_sections),
        "withheld_sections": list(item.withheld_sections),
        "problem": item.problem,
    }


def notice_json(notice: Notice) -> dict[str, Any]:
    """A rejection, escalation or progress notice (metadata only).

    ``event_id`` is ``None`` for a progress notice about several events (see its steps).
    """
    return {
        "notice_id": notice.notice_id,
        "kind": notice.kind.value,
        "event_id": notice.event_id or None,
        "priority": Priority(notice.priority).label,
        "received_at": iso_ms(notice.received_at_ms),
        "cursor": notice.seq,
        "record": notice.record,
    }


def webhook_body(kind: str, data: dict[str, Any], now_ms: int) -> bytes:
    """A webhook body: ``{"type": "relais.<kind>", "timestamp": ..., "data": {...}}``."""
    document = {"type": f"relais.{kind}", "timestamp": iso_ms(now_ms), "data": data}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
