"""The inbox, an opened event (take in charge, decline) and the events sent from here.

Opening an event is the only place where content is decrypted for a person, and it is
logged first: the access log line (who, when, which event, which sections) is durable
before the page is rendered; if it cannot be written, nothing is shown.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from relais.agents.inbox import DECLINE_REASONS
from relais.agents.web import labels
from relais.agents.web.context import Page, event_id_of, now_ms, web
from relais.agents.web.display import format_ms, section_rows
from relais.agents.web.mailbox import InboxRow
from relais.schemas.errors import PayloadError, Reason, RelaisError
from relais.schemas.registry import default_registry

__all__ = ["router"]

router = APIRouter()


@router.get("/")
async def home(request: Request) -> Response:
    """The inbox is the home page."""
    return RedirectResponse("/inbox", status_code=303)


def _row_json(ctx: Any, row: InboxRow) -> dict[str, Any]:
    body = row.as_json()
    body.update(
        type_label=labels.EVENT_LABELS.get(row.event_type, row.event_type),
        priority_label=labels.PRIORITY_LABELS[row.priority.label],
        sender_name=ctx.mailbox.name_of(row.sender),
        state_label=labels.STATE_LABELS.get(row.state, row.state),
        received=format_ms(row.received_at_ms),
        url=f"/events/{row.event_id}",
    )
    return body


@router.get("/inbox")
async def inbox(request: Request) -> Response:
    """Events received: awaiting a decision first (FLASH, URGENT, ROUTINE), then decided."""
    ctx = web(request)
    session, person = await ctx.person(request)
    rows = await asyncio.to_thread(ctx.mailbox.inbox)
    return ctx.render(
        request,
        "inbox.html",
        session=session,
        person=person,
        rows=[_row_json(ctx, r) for r in rows],
        now=now_ms(),
    )


@router.get("/inbox.json")
async def inbox_json(request: Request) -> Response:
    """The inbox's rows for its refresh (metadata only, no content)."""
    ctx = web(request)
    await ctx.person(request)
    rows = await asyncio.to_thread(ctx.mailbox.inbox)
    return JSONResponse({"now_ms": now_ms(), "rows": [_row_json(ctx, r) for r in rows]})


@router.get("/events/{event_id}")
async def event(request: Request, event_id: str) -> Response:
    """One received event, decrypted now, its opening logged."""
    ctx = web(request)
    session, person = await ctx.person(request)
    eid = event_id_of(event_id)
    item = await ctx.agent.inbox_item(eid)
    meta = await asyncio.to_thread(ctx.mailbox.inbox_row, eid)
    if item is None or meta is None:
        raise Page(404, "Événement inconnu.")
    opened = item.opened_sections if item.problem is None else ()
    try:
        await asyncio.to_thread(
            ctx.store.record_access, person.username, "open", eid, opened, now_ms=now_ms()
        )
    except RelaisError as exc:
        raise Page(
            503, "Le journal des accès ne peut pas être écrit : rien n'est affiché."
        ) from exc
    schema = default_registry().by_type(item.event_type)
    sections = [
        (name, labels.SECTION_LABELS.get(name, name), section_rows(schema, item.fields, name))
        for name in opened
    ]
    withheld = [(name, labels.SECTION_LABELS.get(name, name)) for name in item.withheld_sections]
    return ctx.render(
        request,
        "event.html",
        session=session,
        person=person,
        item=item,
        meta=_row_json(ctx, meta),
        sections=sections,
        withheld=withheld,
        decline_reasons=[(r, labels.DECLINE_LABELS.get(r, r)) for r in DECLINE_REASONS],
        now=now_ms(),
        notice=request.query_params.get("fait"),
    )


async def _act(request: Request, event_id: str, action: str) -> Response:
    ctx = web(request)
    session, person = await ctx.person(request, acts=True)
    form = await ctx.form(request, session)
    eid = event_id_of(event_id)
    reason = str(form.get("reason", ""))
    try:
        if action == "take_charge":
            await ctx.agent.take_charge(eid)
        else:
            await ctx.agent.decline(eid, reason)
    except PayloadError as exc:
        raise Page(422, "Choisissez un motif de refus.") from exc
    except RelaisError as exc:
        if exc.reason is Reason.UNKNOWN_EVENT:
            raise Page(404, "Événement inconnu.") from exc
        if exc.reason is Reason.STATE_CONFLICT:
            raise Page(409, "Une décision a déjà été prise sur cet événement.") from exc
        raise Page(503, "L'agent n'a pas pu enregistrer la décision.") from exc
    await asyncio.to_thread(
        ctx.store.record_access, person.username, action, eid, (), now_ms=now_ms()
    )
    return RedirectResponse(f"/events/{eid}?fait={action}", status_code=303)


@router.post("/events/{event_id}/take-charge")
async def take_charge(request: Request, event_id: str) -> Response:
    """Take the event in charge: the signed receipt goes to the partnership."""
    return await _act(request, event_id, "take_charge")


@router.post("/events/{event_id}/decline")
async def decline(request: Request, event_id: str) -> Response:
    """Decline the event with a reason."""
    return await _act(request, event_id, "decline")


@router.get("/sent")
async def sent(request: Request) -> Response:
    """The events sent from here, newest first."""
    ctx = web(request)
    session, person = await ctx.person(request, acts=True)
    rows = await asyncio.to_thread(ctx.mailbox.sent)
    return ctx.render(request, "sent.html", session=session, person=person, rows=rows)


def _rungs(sent: Any, row: Any) -> list[dict[str, Any]]:
    """Per recipient: its steps as the agent knows them (the gateway's progress notices
    when the agent records them, else what the outbox knows)."""
    ladder = getattr(sent, "ladder", ()) if sent is not None else ()
    out = []
    for rung in ladder:
        steps = [
            (labels.STEP_LABELS[name], format_ms(at))
            for name, at in (
                ("routed", rung.routed_at_ms),
                ("delivered", rung.delivered_at_ms),
                ("taken_in_charge", rung.taken_in_charge_at_ms),
                ("declined", rung.declined_at_ms),
                ("escalated", rung.escalated_at_ms),
            )
            if at is not None
        ]
        out.append(
            {
                "partner": rung.partner,
                "fallback": rung.role == "fallback",
                "state": labels.STEP_LABELS.get(rung.state, "En attente"),
                "steps": steps,
                "decline_reason": labels.DECLINE_LABELS.get(rung.decline_reason or "", ""),
                "escalated_to": list(rung.escalated_to),
            }
        )
    if out:
        return out
    state = labels.SENT_STATE_LABELS.get(row.state, row.state)
    return [
        {"partner": p, "fallback": False, "state": state, "steps": [], "decline_reason": ""}
        for p in row.recipients
    ]


@router.get("/sent/{event_id}")
async def sent_event(request: Request, event_id: str) -> Response:
    """One sent event: where it stands at each recipient, and the gateway's notices."""
    ctx = web(request)
    session, person = await ctx.person(request, acts=True)
    eid = event_id_of(event_id)
    rows = await asyncio.to_thread(ctx.mailbox.sent, eid)
    if not rows:
        raise Page(404, "Événement inconnu.")
    sent_state = await ctx.agent.sent_event(eid)
    notices = await asyncio.to_thread(ctx.mailbox.notices, eid)
    return ctx.render(
        request,
        "sent_event.html",
        session=session,
        person=person,
        row=rows[0],
        rungs=_rungs(sent_state, rows[0]),
        state=labels.SENT_STATE_LABELS.get(
            getattr(sent_state, "state", rows[0].state), rows[0].state
        ),
        notices=notices,
    )
