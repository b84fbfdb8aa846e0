"""What every page of the web interface uses: the context, the page exception, helpers."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment
from starlette.datastructures import FormData

from relais.agents.runtime import Agent
from relais.agents.settings import AgentSettings
from relais.agents.web import labels
from relais.agents.web.auth import Session, Sessions, csrf_matches
from relais.agents.web.display import format_ms
from relais.agents.web.mailbox import Mailbox
from relais.agents.web.users import Person, Role, WebStore

__all__ = ["MAX_FORM_BYTES", "Page", "WebContext", "event_id_of", "now_ms", "web"]

COOKIE: Final = "relais_session"
TLS_COOKIE: Final = "__Host-relais_session"  # the prefix forces Secure, Path=/, no Domain
MAX_FORM_BYTES: Final = 256 * 1024


class Page(Exception):
    """Stop and answer with a page: a redirect (``location``) or an error (``status``)."""

    def __init__(self, status: int, message: str = "", *, location: str | None = None) -> None:
        super().__init__(message or str(status))
        self.status = status
        self.message = message
        self.location = location


def now_ms() -> int:
    """Unix milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass
class WebContext:
    """Everything the pages use (held in ``app.state.web``)."""

    agent: Agent
    settings: AgentSettings
    store: WebStore
    mailbox: Mailbox
    sessions: Sessions
    env: Environment
    form_key: bytes  # keys the compose preview digests; new at every start

    @property
    def cookie_name(self) -> str:
        """The session cookie's name (``__Host-`` prefixed under TLS)."""
        return TLS_COOKIE if self.settings.web.tls else COOKIE

    def session(self, request: Request) -> Session | None:
        """The live session of this request's cookie."""
        return self.sessions.get(request.cookies.get(self.cookie_name))

    async def person(
        self, request: Request, *, acts: bool = False, administers: bool = False
    ) -> tuple[Session, Person]:
        """The logged-in person (else a redirect to the login), with the role asked for."""
        session = self.session(request)
        if session is None or session.username is None:
            raise Page(303, location="/login")
        person = await asyncio.to_thread(self.store.get, session.username)
        if person is None or person.disabled or person.locked:
            self.sessions.end(session)
            raise Page(303, location="/login")
        if (acts and not person.role.acts) or (administers and not person.role.administers):
            raise Page(403, "Votre rôle ne permet pas d'accéder à cette page.")
        return session, person

    def required_second_factor(self) -> frozenset[Role]:
        """Roles that must give a TOTP code: all where identity or medical sections are
        readable, administrators everywhere."""
        if self.mailbox.needs_second_factor():
            return frozenset(Role)
        return frozenset({Role.ADMIN})

    async def form(self, request: Request, session: Session) -> FormData:
        """The posted form, capped and checked against the session's CSRF token."""
        declared = request.headers.get("content-length", "")
        if not declared.isdigit() or int(declared) > MAX_FORM_BYTES:
            raise Page(413, "Formulaire trop volumineux.")
        form = await request.form(max_files=0, max_fields=2000, max_part_size=MAX_FORM_BYTES)
        given = form.get("csrf")
        if not isinstance(given, str) or not csrf_matches(session, given):
            raise Page(403, "Formulaire expiré ou invalide : rechargez la page.")
        return form

    def render(
        self,
        request: Request,
        template: str,
        *,
        session: Session | None,
        person: Person | None,
        status: int = 200,
        **values: Any,
    ) -> HTMLResponse:
        """A page of the interface."""
        page = self.env.get_template(template).render(
            partner=self.settings.partner_id,
            partner_name=self.mailbox.name_of(self.settings.partner_id),
            person=person,
            csrf=session.csrf if session is not None else "",
            labels=labels,
            format_ms=format_ms,
            name_of=self.mailbox.name_of,
            poll_seconds=self.settings.web.inbox_poll_seconds,
            **values,
        )
        return HTMLResponse(page, status_code=status)

    def set_cookie(self, response: Response, session: Session) -> None:
        """Attach the session cookie."""
        response.set_cookie(
            self.cookie_name,
            session.token,
            httponly=True,
            samesite="strict",
            secure=self.settings.web.tls,
            path="/",
        )


def web(request: Request) -> WebContext:
    """The context of the application serving ``request``."""
    ctx = request.app.state.web
    if not isinstance(ctx, WebContext):
        raise Page(503, "Le service n'est pas prêt.")
    return ctx


def event_id_of(text: str) -> str:
    """A canonical event id from a path (else a 404 page)."""
    try:
        return str(uuid.UUID(text))
    except ValueError as exc:
        raise Page(404, "Événement inconnu.") from exc
