"""The partner administrator's pages: people, access log (and its export), the agent's health.

People are managed with ``relais agent users`` on the agent's host; the page lists them.
The access log is shown newest first and exported as JSON lines, oldest first
(``/admin/access-log.jsonl``): ids, codes and times, never content.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from fastapi.responses import Response

from relais.agents.web.context import web

__all__ = ["router"]

router = APIRouter()


@router.get("/admin")
async def admin(request: Request) -> Response:
    """People, the agent's health, the last openings and login attempts."""
    ctx = web(request)
    session, person = await ctx.person(request, administers=True)
    people = await asyncio.to_thread(ctx.store.people)
    access = await asyncio.to_thread(ctx.store.recent_access, 200)
    logins = await asyncio.to_thread(ctx.store.login_log, 50)
    backlog = await asyncio.to_thread(ctx.mailbox.backlog)
    readiness = ctx.agent.readiness()
    directory = ctx.mailbox.directory()
    return ctx.render(
        request,
        "admin.html",
        session=session,
        person=person,
        people=people,
        access=access,
        logins=logins,
        backlog=backlog,
        readiness=readiness,
        edition=ctx.agent.directory_serial,
        directory_issued=directory.issued_at.strftime("%d/%m/%Y"),
        second_factor=sorted(r.value for r in ctx.required_second_factor()),
    )


@router.get("/admin/access-log.jsonl")
async def access_log_export(request: Request) -> Response:
    """The whole access log as JSON lines (one opening or decision per line)."""
    ctx = web(request)
    await ctx.person(request, administers=True)
    entries = await asyncio.to_thread(ctx.store.access_log)
    body = "".join(json.dumps(e.as_json(), sort_keys=True) + "\n" for e in entries)
    return Response(
        body,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="journal-des-acces.jsonl"'},
    )
