"""The web interface's application: context, security headers, sessions, login and logout.

:func:`create_web_app` builds the FastAPI application of one agent; the pages are in
:mod:`~relais.agents.web.pages` (inbox, event, sent), :mod:`~relais.agents.web.compose`
and :mod:`~relais.agents.web.admin`. Safe by construction:

* every response carries a Content-Security-Policy without inline scripts or styles
  (``script-src 'self'``), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
  no-referrer``, framing refused, and ``Cache-Control: no-store`` (static files aside);
  under TLS also ``Strict-Transport-Security``;
* templates are Jinja2 with autoescape on: content is shown as text, whatever it holds;
* URLs hold only event ids and event types, never content; forms are posted;
* every page but the login redirects to it without a session; every form carries the
  session's CSRF token; bodies are capped before they are parsed.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Final

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from relais.agents.runtime import Agent
from relais.agents.web import admin, compose, pages
from relais.agents.web.auth import Sessions
from relais.agents.web.context import Page, WebContext, now_ms, web
from relais.agents.web.mailbox import Mailbox
from relais.agents.web.users import USERNAME_RE, LoginOutcome, WebStore

__all__ = ["create_web_app"]

_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_STATIC: Final = {"relais.css": "text/css", "relais.js": "text/javascript"}
_log = structlog.get_logger(__name__)
_LOGIN_MESSAGES: Final = {
    LoginOutcome.LOCKED: "Ce compte est verrouillé après des échecs répétés : demandez à"
    " l'administrateur de votre service de le réinitialiser.",
    LoginOutcome.DISABLED: "Ce compte est désactivé.",
    LoginOutcome.CODE_REQUIRED: "Un second facteur (code à usage unique) est obligatoire pour"
    " ce service et n'est pas configuré pour ce compte : demandez à l'administrateur.",
}
_LOGIN_FAILED: Final = "Identifiant, mot de passe ou code incorrect."


# -- login -------------------------------------------------------------------------------------


async def login_page(request: Request) -> Response:
    """The login form (an anonymous session carries its CSRF token)."""
    ctx = web(request)
    session = ctx.session(request)
    if session is not None and session.authenticated:
        return RedirectResponse("/inbox", status_code=303)
    fresh = session is None
    session = session or ctx.sessions.new()
    response = ctx.render(request, "login.html", session=session, person=None, message=None)
    if fresh:
        ctx.set_cookie(response, session)
    return response


async def login(request: Request) -> Response:
    """Check the password and the code; a new session on success."""
    ctx = web(request)
    session = ctx.session(request)
    if session is None:
        return RedirectResponse("/login", status_code=303)
    form = await ctx.form(request, session)
    username = str(form.get("username", "")).strip().lower()
    password, code = str(form.get("password", "")), str(form.get("code", ""))
    if not USERNAME_RE.fullmatch(username):
        outcome, person = LoginOutcome.UNKNOWN, None
        username = "(invalide)"
    else:
        outcome, person = await asyncio.to_thread(
            ctx.store.login,
            username,
            password,
            code,
            totp_required=ctx.required_second_factor(),
            max_failures=ctx.settings.web.max_failed_logins,
            now_ms=now_ms(),
        )
    _log.info("web.login", partner=ctx.settings.partner_id, username=username, outcome=outcome)
    if person is None:
        message = _LOGIN_MESSAGES.get(outcome, _LOGIN_FAILED)
        return ctx.render(
            request, "login.html", session=session, person=None, message=message, status=401
        )
    ctx.sessions.end(session)  # a new session at login: no fixation
    new = ctx.sessions.new(person.username)
    response = RedirectResponse("/inbox", status_code=303)
    ctx.set_cookie(response, new)
    return response


async def logout(request: Request) -> Response:
    """End the session."""
    ctx = web(request)
    session = ctx.session(request)
    if session is not None:
        await ctx.form(request, session)
        ctx.sessions.end(session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(ctx.cookie_name, path="/")
    return response


# -- errors and headers ------------------------------------------------------------------------


async def _on_page(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, Page):
        return HTMLResponse("Erreur", status_code=500)
    if exc.location is not None:
        return RedirectResponse(exc.location, status_code=exc.status)
    ctx = web(request)
    return ctx.render(
        request, "error.html", session=None, person=None, status=exc.status, message=exc.message
    )


async def _on_http(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    message = {404: "Page inconnue.", 405: "Action non permise."}.get(status, "Requête refusée.")
    return await _on_page(request, Page(status, message))


async def _on_invalid(request: Request, exc: Exception) -> Response:
    return await _on_page(request, Page(404, "Page inconnue."))


def _secure_headers(tls: bool) -> Callable[[Request, Any], Awaitable[Response]]:
    async def add_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        headers = response.headers
        headers["Content-Security-Policy"] = _CSP
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["X-Frame-Options"] = "DENY"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if not request.url.path.startswith("/static/"):
            headers["Cache-Control"] = "no-store"
        if tls:
            headers["Strict-Transport-Security"] = "max-age=31536000"
        return response

    return add_headers


def create_web_app(agent: Agent, store: WebStore, *, mailbox: Mailbox | None = None) -> FastAPI:
    """The web interface of ``agent`` (people and access log in ``store``)."""
    settings = agent.settings
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    env = Environment(
        loader=PackageLoader("relais.agents.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    app.state.web = WebContext(
        agent=agent,
        settings=settings,
        store=store,
        mailbox=mailbox or Mailbox(settings),
        sessions=Sessions(
            idle_seconds=settings.web.idle_timeout_seconds,
            lifetime_seconds=settings.web.session_max_seconds,
        ),
        env=env,
        form_key=secrets.token_bytes(32),
    )
    app.add_exception_handler(Page, _on_page)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_invalid)
    app.middleware("http")(_secure_headers(settings.web.tls))
    app.add_api_route("/login", login_page, methods=["GET"])
    app.add_api_route("/login", login, methods=["POST"])
    app.add_api_route("/logout", logout, methods=["POST"])
    app.include_router(pages.router)
    app.include_router(compose.router)
    app.include_router(admin.router)
    app.add_api_route("/static/{name}", _static_route(), methods=["GET"])
    app.add_api_route("/favicon.ico", _no_icon, methods=["GET"])
    return app


async def _no_icon() -> Response:
    """Browsers ask for an icon; there is none."""
    return Response(status_code=204)


def _static_route() -> Callable[[str], Awaitable[Response]]:
    """The stylesheet and the script, read once from the package (nothing else is served)."""
    files = {
        name: (resources.files("relais.agents.web").joinpath("static", name).read_bytes(), kind)
        for name, kind in _STATIC.items()
    }

    async def static(name: str) -> Response:
        found = files.get(name)
        if found is None:
            raise Page(404, "Page inconnue.")
        data, kind = found
        return Response(data, media_type=kind, headers={"Cache-Control": "max-age=3600"})

    return static
