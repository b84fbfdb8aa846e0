"""Composing an event in the browser: a form per event type, the recipients shown first.

A post is read back into the JSON record a partner's system would send (``forms``), then
checked by the agent's own code: *Vérifier* validates it and asks the routing rules who
will receive it (``plan_event``, as the agent does before sealing); *Envoyer* submits it
through :meth:`~relais.agents.runtime.Agent.submit`, the code path of
``POST /v1/events/{type}``, with the form's random id as idempotency key (a double click
sends once). Sending is accepted only for the very record whose recipients were shown: the
preview carries a keyed digest of it, compared before submitting.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from relais.agents.sealing import plan_event, publishable_schema
from relais.agents.web import labels
from relais.agents.web.context import Page, WebContext, now_ms, web
from relais.agents.web.forms import field_errors, form_for, record_from_form
from relais.broker_config.rules import Decision
from relais.schemas.domain import EventType
from relais.schemas.errors import (
    ConfigError,
    EnvelopeError,
    PayloadError,
    Reason,
    RelaisError,
    RoutingError,
    SchemaError,
)
from relais.schemas.registry import EventSchema

__all__ = ["router"]

router = APIRouter()
_FORM_ID_BYTES: Final = 16
_ROUTING_MESSAGES: Final = {
    Reason.NO_RULE: "Aucun destinataire compétent n'est connu pour ces informations.",
    Reason.SENDER_NOT_ALLOWED: "Votre service ne peut pas émettre ce type de transmission.",
}


@dataclass(frozen=True, slots=True)
class _Draft:
    """What the person typed: the form's id and the raw values, to show them again."""

    form_id: str
    values: dict[str, list[str]] = field(default_factory=dict)


def _schema(ctx: WebContext, event_type: str) -> EventSchema:
    try:
        schema = publishable_schema(event_type)
    except SchemaError as exc:
        raise Page(404, "Type de transmission inconnu.") from exc
    if schema.event_type not in ctx.mailbox.may_send():
        raise Page(403, "Votre service ne peut pas émettre ce type de transmission.")
    return schema


def _digest(ctx: WebContext, event_type: EventType, record: dict[str, Any]) -> str:
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    message = event_type.value.encode() + b"\x00" + text.encode("utf-8")
    return hmac.new(ctx.form_key, message, hashlib.sha256).hexdigest()


@router.get("/compose")
async def compose_index(request: Request) -> Response:
    """The event types this partner may send."""
    ctx = web(request)
    session, person = await ctx.person(request, acts=True)
    types = [(t.value, labels.EVENT_LABELS.get(t.value, t.value)) for t in ctx.mailbox.may_send()]
    return ctx.render(request, "compose_index.html", session=session, person=person, types=types)


@router.get("/compose/{event_type}")
async def compose_form(request: Request, event_type: str) -> Response:
    """An empty form for one event type."""
    ctx = web(request)
    session, person = await ctx.person(request, acts=True)
    schema = _schema(ctx, event_type)
    draft = _Draft(secrets.token_hex(_FORM_ID_BYTES))
    return _render(ctx, request, session, person, schema, draft)


def _render(
    ctx: WebContext,
    request: Request,
    session: Any,
    person: Any,
    schema: EventSchema,
    draft: _Draft,
    *,
    errors: dict[str, str] | None = None,
    general: list[str] | None = None,
    decision: Decision | None = None,
    digest: str = "",
    status: int = 200,
) -> Response:
    return ctx.render(
        request,
        "compose.html",
        session=session,
        person=person,
        event_type=schema.event_type.value,
        title=labels.EVENT_LABELS.get(schema.event_type.value, schema.event_type.value),
        help=str(schema.raw.get("doc", "")),
        form_items=form_for(schema),
        values=draft.values,
        errors=errors or {},
        general=general or [],
        decision=decision,
        digest=digest,
        form_id=draft.form_id,
        status=status,
    )


def _preview(ctx: WebContext, schema: EventSchema, record: dict[str, Any]) -> Decision:
    """Validate and route as the agent will (raises the agent's errors)."""
    datum = schema.from_json(record)
    plan = plan_event(
        schema.event_type,
        datum,
        sender=ctx.settings.partner_id,
        directory=ctx.mailbox.directory(),
        rules=ctx.mailbox.rules,
        at_ms=now_ms(),
    )
    return plan.decision


@router.post("/compose/{event_type}")
async def compose_post(request: Request, event_type: str) -> Response:
    """*Vérifier*: validate and show the recipients; *Envoyer*: submit what was shown."""
    ctx = web(request)
    session, person = await ctx.person(request, acts=True)
    schema = _schema(ctx, event_type)
    form = await ctx.form(request, session)
    form_id = str(form.get("form_id", ""))
    if len(form_id) != 2 * _FORM_ID_BYTES or not all(c in "0123456789abcdef" for c in form_id):
        raise Page(400, "Formulaire invalide : rechargez la page.")
    values = {k: [str(v) for v in form.getlist(k)] for k in form}
    record, missing = record_from_form(schema, form)
    page = _Draft(form_id, values)
    try:
        decision = _preview(ctx, schema, record)
    except PayloadError as exc:
        errors, unplaced = field_errors(exc.fields, form_for(schema))
        errors = {**errors, **missing}
        general = ["Vérifiez les champs signalés."] + [f"Champ invalide : {u}" for u in unplaced]
        return _render(
            ctx,
            request,
            session,
            person,
            schema,
            page,
            errors=errors,
            general=general,
            status=422,
        )
    except RoutingError as exc:
        message = _ROUTING_MESSAGES.get(exc.reason, "Le routage de cette transmission a échoué.")
        return _render(ctx, request, session, person, schema, page, general=[message], status=409)
    digest = _digest(ctx, schema.event_type, record)
    shown = str(form.get("digest", ""))
    if form.get("action") != "send" or not hmac.compare_digest(shown, digest):
        general = (
            []
            if form.get("action") != "send"
            else ["Les informations ont changé : vérifiez les destinataires avant d'envoyer."]
        )
        return _render(
            ctx,
            request,
            session,
            person,
            schema,
            page,
            decision=decision,
            digest=digest,
            general=general,
        )
    return await _send(ctx, request, session, person, schema, record, page)


async def _send(
    ctx: WebContext,
    request: Request,
    session: Any,
    person: Any,
    schema: EventSchema,
    record: dict[str, Any],
    page: _Draft,
) -> Response:
    try:
        sub = await ctx.agent.submit(
            schema.event_type, record, idempotency_key=f"web-{page.form_id}"
        )
    except PayloadError as exc:
        errors, _ = field_errors(exc.fields, form_for(schema))
        return _render(
            ctx,
            request,
            session,
            person,
            schema,
            page,
            errors=errors,
            status=422,
            general=["Vérifiez les champs signalés."],
        )
    except (RoutingError, EnvelopeError, ConfigError, RelaisError) as exc:
        message = _ROUTING_MESSAGES.get(
            exc.reason, "L'agent n'a pas pu accepter la transmission : réessayez plus tard."
        )
        return _render(ctx, request, session, person, schema, page, general=[message], status=503)
    return RedirectResponse(f"/sent/{sub.event_id}", status_code=303)
