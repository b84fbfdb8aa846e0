"""The agent's local HTTP API (FastAPI), for the partner's information system.

Every route but ``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json`` requires
``Authorization: Bearer <token>`` (the token file of the settings); the API listens on
loopback unless told otherwise. Errors are ``application/problem+json`` (RFC 9457) with a
stable ``reason`` code and, for invalid input, the offending field names (never values)::

    POST /v1/events/{event_type}        submit (JSON; Idempotency-Key honoured) -> 202
                                        (one path per event type in the document)
    GET  /v1/events/{event_id}          state of a submitted event
    GET  /v1/inbox?state=&after=&limit= received events, decrypted on read
    GET  /v1/inbox/{event_id}           one received event, decrypted
    POST /v1/inbox/{event_id}/take-charge          -> signed TAKEN_IN_CHARGE receipt
    POST /v1/inbox/{event_id}/decline   {"reason"} -> signed DECLINED receipt
    POST /v1/inbox/{event_id}/conclude  {"outcome"} -> signed CONCLUDED receipt
    GET  /v1/notices?after=&limit=      rejections, escalation and progress notices

A submission is answered ``202`` once sealed and durable in the outbox (it is published in
the background); the answer holds the event id and the recipients the rules gave. The body
is capped (``max_body_bytes``) while it is read, before any parsing (``413``), then checked
against the event type's JSON Schema, which the OpenAPI document publishes
(:mod:`relais.agents.validation`).

No input is answered ``5xx``: every relais error becomes a typed problem (``4xx``, or ``503``
when the agent itself cannot serve: not ready, its own key not valid), and anything else an
opaque ``500`` that is logged as its error class only. Each problem is logged as one line of
codes (status, reason, field codes), never paths or values.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relais.agents.models import InboxState
from relais.agents.problems import (
    PROBLEM_JSON,
    ApiProblem,
    Problem,
    body_too_large,
    install_handlers,
    pydantic_problems,
)
from relais.agents.runtime import CONCLUSIONS, DECLINE_REASONS, OUTCOMES, Agent
from relais.agents.validation import Code, FieldProblem, parse_json_object
from relais.agents.views import item_json, notice_json, sent_json, submission_json
from relais.schemas.domain import EVENT_TYPES, SecrecyClass
from relais.schemas.errors import Reason
from relais.schemas.jsonschema import openapi_components

__all__ = ["API_VERSION", "ApiProblem", "create_app", "openapi_document"]

API_VERSION: Final = "1.0.0"
_EVENT_TYPE_NAMES: Final = sorted(t.value for t in EVENT_TYPES)
_IDEMPOTENCY_KEY_PATTERN: Final = r"^[\x21-\x7e]{1,255}$"
_MAX_CURSOR: Final = 2**63 - 1  # SQLite integers are signed 64-bit
_COMPONENTS, _BODIES = openapi_components()
_DESCRIPTION: Final = (
    "Each `POST /v1/events/<type>` body is the JSON form of that event type's Avro schema,"
    " given here as a JSON Schema (also printed by `relais schemas show <type>`, with an"
    " example from `relais schemas sample <type>`): RFC 3339 date-times with their offset,"
    " `YYYY-MM-DD` dates, base64 bytes. Errors are RFC 9457 problems: `reason` is a relais"
    " reason code, each `errors[]` entry names a field path and a stable `code`, never a"
    " submitted value. Statuses: 202 accepted (durable); 401 token; 403 sender not allowed"
    " by the rule; 404 unknown id; 409 idempotency key reused, no rule, state conflict;"
    " 413 body too large; 415 not JSON; 422 invalid input; 503 the agent cannot serve now."
)

Priority = Literal["FLASH", "URGENT", "ROUTINE"]


# -- documented shapes -------------------------------------------------------------------------


class SubmissionOut(BaseModel):
    """The event id and the routing decision the event was sealed with."""

    event_id: uuid.UUID
    event_type: str
    priority: Priority
    recipients: list[str]
    fallback: list[str]
    rule: str
    triage: bool
    edition: int  # the configuration edition (directory serial) the routing was decided by


class RungOut(BaseModel):
    """Where a sent event stands at one recipient: each step the gateway reported, timed.

    ``state`` is the most advanced step (``pending`` until the gateway routed the event);
    times are ISO 8601 UTC (the gateway's clock for routing and escalation, the recipient's
    signed time for its receipts), ``null`` for a step not reached.
    """

    partner: str
    role: Literal["recipient", "fallback"]
    state: Literal["pending", "routed", "delivered", "taken_in_charge", "declined", "concluded"]
    routed_at: str | None
    delivered_at: str | None
    taken_in_charge_at: str | None
    declined_at: str | None
    decline_reason: str | None = Field(json_schema_extra={"enum": [*DECLINE_REASONS, None]})
    concluded_at: str | None
    outcome: str | None = Field(json_schema_extra={"enum": [*OUTCOMES, None]})
    escalated_at: str | None
    escalated_to: list[str]


class SentEventOut(SubmissionOut):
    """A submitted event, where it stands (derived from the ladders) and each recipient's
    ladder (the recipients, then the fallback recipients it was escalated to)."""

    state: Literal[
        "queued",
        "published",
        "rejected",
        "routed",
        "delivered",
        "declined",
        "escalated",
        "taken_in_charge",
        "concluded",
    ]
    reason: str | None
    created_at: str | None
    published_at: str | None
    ladder: list[RungOut]


class InboxItemOut(BaseModel):
    """A received event; ``fields`` holds only the sections this partner may read."""

    event_id: uuid.UUID
    event_type: str
    priority: Priority
    sender: str
    rule: str | None
    escalation: str | None
    created_at: str | None
    received_at: str | None
    state: Literal["delivered", "taken_in_charge", "declined"]
    decline_reason: str | None
    outcome: str | None = Field(
        default=None,
        description="What this partner reported on the case (take-charge or conclude).",
    )
    cursor: int
    fields: dict[str, Any]
    opened_sections: list[str]
    withheld_sections: list[str]
    problem: str | None


class InboxPage(BaseModel):
    """A page of the inbox; pass ``next_cursor`` as ``after`` for the next one."""

    items: list[InboxItemOut]
    next_cursor: int | None


class NoticeOut(BaseModel):
    """A rejection of an event sent from here, an escalation notice, or a progress notice
    (the steps of events sent from here at their recipients); metadata only. ``event_id`` is
    ``null`` for a progress notice about several events (``record.steps`` names them)."""

    notice_id: str
    kind: Literal["rejection", "escalation_notice", "progress_notice"]
    event_id: str | None
    priority: Priority
    received_at: str | None
    cursor: int
    record: dict[str, Any]


class NoticePage(BaseModel):
    """A page of notices."""

    items: list[NoticeOut]
    next_cursor: int | None


class DeclineIn(BaseModel):
    """Why the partner declines the event."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(json_schema_extra={"enum": list(DECLINE_REASONS)})


class ConcludeIn(BaseModel):
    """What follows from a case taken in charge (told to the event's sender)."""

    model_config = ConfigDict(extra="forbid")

    outcome: str = Field(json_schema_extra={"enum": list(CONCLUSIONS)})


class ConcludeOut(BaseModel):
    """The outcome recorded; the signed ``CONCLUDED`` receipt is queued for the broker."""

    event_id: uuid.UUID
    outcome: str


class ActionOut(BaseModel):
    """The state recorded; the signed receipt is queued for the broker."""

    event_id: uuid.UUID
    state: Literal["taken_in_charge", "declined"]
    decline_reason: str | None


class HealthOut(BaseModel):
    """The process answers."""

    status: Literal["ok"]


class ReadyOut(BaseModel):
    """Keys loaded and valid, directory verified, NATS connected."""

    ready: bool
    keys: bool
    directory: bool
    nats: bool
    outbox_blocked: str | None = Field(
        default=None,
        description="Reason code while the outbox cannot publish (its events stay queued).",
    )


# -- dependencies ------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="The agent's API token (token file).")


def _agent(request: Request) -> Agent:
    agent = request.app.state.agent
    if not isinstance(agent, Agent):
        raise ApiProblem(503, Reason.NOT_READY, "the agent is not running")
    return agent


def _authorised(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    token: bytes | None = request.app.state.token
    given = credentials.credentials.encode("utf-8") if credentials is not None else b""
    if not token or not given or not hmac.compare_digest(given, token):
        raise ApiProblem(401, Reason.UNAUTHORIZED, "a valid bearer token is required")


AgentDep = Annotated[Agent, Depends(_agent)]
EventIdPath = Annotated[uuid.UUID, Path(description="The event id (UUIDv7).")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}} for code in (401, 404, 409, 422, 503)
}


async def _read_json_object(request: Request, cap: int) -> dict[str, Any]:
    """The body as a JSON object: media type (``415``), size before parsing (``413``)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        problem = FieldProblem("content-type", Code.UNSUPPORTED_MEDIA_TYPE)
        raise ApiProblem(415, Reason.INVALID_PAYLOAD, "send application/json", [problem])
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise body_too_large()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise body_too_large()
        chunks.append(chunk)
    return parse_json_object(b"".join(chunks))


# -- routes ------------------------------------------------------------------------------------

events = APIRouter(prefix="/v1/events", tags=["events"], dependencies=[Depends(_authorised)])
inbox = APIRouter(prefix="/v1", tags=["inbox"], dependencies=[Depends(_authorised)])
health = APIRouter(tags=["health"])

_SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}}
    for code in (401, 403, 409, 413, 415, 422, 503)
}
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=_IDEMPOTENCY_KEY_PATTERN,
        description="Retry-safe submission: the same key with the same body answers the"
        " first submission again; with another body, 409 IDEMPOTENCY_KEY_REUSED.",
    ),
]
AcceptWithheld = Annotated[
    list[SecrecyClass] | None,
    Query(
        description="Secret sections the caller accepts to see withheld when no recipient"
        " of the event is entitled to them (otherwise 422 NO_ENTITLED_RECIPIENT).",
    ),
]


async def _submit(
    request: Request,
    agent: Agent,
    event_type: str,
    idempotency_key: str | None,
    accept_withheld: list[SecrecyClass] | None,
) -> Response:
    body = await _read_json_object(request, request.app.state.max_body)
    withheld = tuple(c.value for c in accept_withheld or ())
    sub = await agent.submit(
        event_type, body, idempotency_key=idempotency_key, accept_withheld=withheld
    )
    headers = {"Location": f"/v1/events/{sub.event_id}"}
    if sub.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(submission_json(sub), status_code=202, headers=headers)


def _submit_route(event_type: str) -> Callable[..., Awaitable[Response]]:
    async def submit(
        request: Request,
        agent: AgentDep,
        idempotency_key: IdempotencyKey = None,
        accept_withheld: AcceptWithheld = None,
    ) -> Response:
        return await _submit(request, agent, event_type, idempotency_key, accept_withheld)

    submit.__doc__ = (
        f"Validate a {event_type} against its schema, route, seal and queue it; answered"
        " once durable (``202``)."
    )
    return submit


# One path per event type rather than one templated path whose body is a oneOf: the event
# type is in the path, not in the body, so an OpenAPI discriminator (which reads a body
# property) could not select the schema; with a path each, every validator and code
# generator knows the exact body of each operation (a typed method per event type), and a
# request for an unknown type still gets a problem naming it (the hidden templated route).
for _event_type in _EVENT_TYPE_NAMES:
    events.add_api_route(
        f"/{_event_type}",
        _submit_route(_event_type),
        methods=["POST"],
        status_code=202,
        response_model=SubmissionOut,
        responses=_SUBMIT_ERRORS,
        summary=f"Submit a {_event_type}",
        operation_id=f"submit_{_event_type}",
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": f"The {_event_type}, as JSON (see its schema).",
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{_BODIES[_event_type]}"}
                    }
                },
            }
        },
    )


@events.post("/{event_type}", include_in_schema=False)
async def submit_unknown(event_type: str) -> Response:
    """Any other type: not an event type a partner may publish."""
    problem = FieldProblem("event_type", Code.UNKNOWN_EVENT_TYPE, "unknown")
    raise ApiProblem(422, Reason.UNKNOWN_TYPE, "unknown event type", [problem])


@events.get("/{event_id}", response_model=SentEventOut, responses=_ERRORS, summary="Sent event")
async def get_event(agent: AgentDep, event_id: EventIdPath) -> Response:
    """Where a submitted event stands: queued, published, rejected (reason), escalated."""
    sent = await agent.sent_event(event_id)
    if sent is None:
        raise ApiProblem(404, Reason.UNKNOWN_EVENT, "no such event")
    return JSONResponse(sent_json(sent))


@inbox.get("/inbox", response_model=InboxPage, responses=_ERRORS, summary="List the inbox")
async def list_inbox(
    agent: AgentDep,
    state: Annotated[Literal["delivered", "taken_in_charge", "declined"] | None, Query()] = None,
    after: Annotated[
        int, Query(ge=0, le=_MAX_CURSOR, description="Cursor: the last item seen.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Response:
    """Received events after the cursor, oldest first, decrypted on read."""
    items = await agent.inbox(state=InboxState(state) if state else None, after=after, limit=limit)
    page = [item_json(i) for i in items]
    next_cursor = page[-1]["cursor"] if len(page) == limit else None
    return JSONResponse({"items": page, "next_cursor": next_cursor})


@inbox.get(
    "/inbox/{event_id}", response_model=InboxItemOut, responses=_ERRORS, summary="Inbox event"
)
async def get_inbox_item(agent: AgentDep, event_id: EventIdPath) -> Response:
    """One received event, decrypted (only the sections this partner may read)."""
    item = await agent.inbox_item(event_id)
    if item is None:
        raise ApiProblem(404, Reason.UNKNOWN_EVENT, "no such event")
    return JSONResponse(item_json(item))


@inbox.post(
    "/inbox/{event_id}/take-charge",
    status_code=202,
    response_model=ActionOut,
    responses=_ERRORS,
    summary="Take in charge",
)
async def take_charge(agent: AgentDep, event_id: EventIdPath) -> Response:
    """Record that the partner takes the event in charge; a signed receipt follows."""
    await agent.take_charge(event_id)
    body = {"event_id": str(event_id), "state": "taken_in_charge", "decline_reason": None}
    return JSONResponse(body, status_code=202)


@inbox.post(
    "/inbox/{event_id}/decline",
    status_code=202,
    response_model=ActionOut,
    responses=_ERRORS,
    summary="Decline",
)
async def decline(request: Request, agent: AgentDep, event_id: EventIdPath) -> Response:
    """Record that the partner declines the event; a signed receipt follows."""
    # read like a submission (media type, size cap, depth), not by the framework's parser
    body = await _read_json_object(request, request.app.state.max_body)
    try:
        payload = DeclineIn.model_validate(body)
    except ValidationError as exc:
        problems = pydantic_problems(exc.errors())
        raise ApiProblem(422, Reason.INVALID_PAYLOAD, "invalid request", problems) from exc
    await agent.decline(event_id, payload.reason)
    body = {"event_id": str(event_id), "state": "declined", "decline_reason": payload.reason}
    return JSONResponse(body, status_code=202)


@inbox.post(
    "/inbox/{event_id}/conclude",
    status_code=202,
    response_model=ConcludeOut,
    responses=_ERRORS,
    summary="Report the outcome",
)
async def conclude(agent: AgentDep, event_id: EventIdPath, payload: ConcludeIn) -> Response:
    """Record what follows from a case taken in charge (e.g. the CRIP's decision on a danger
    declaration); a signed ``CONCLUDED`` receipt follows and reaches the event's sender."""
    await agent.conclude(event_id, payload.outcome)
    body = {"event_id": str(event_id), "outcome": payload.outcome}
    return JSONResponse(body, status_code=202)


@inbox.get("/notices", response_model=NoticePage, responses=_ERRORS, summary="Notices")
async def list_notices(
    agent: AgentDep,
    after: Annotated[int, Query(ge=0, le=_MAX_CURSOR)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Response:
    """Rejections and progress of events sent from here, escalation notices, oldest first."""
    page = [notice_json(n) for n in await agent.notices(after=after, limit=limit)]
    next_cursor = page[-1]["cursor"] if len(page) == limit else None
    return JSONResponse({"items": page, "next_cursor": next_cursor})


@health.get("/healthz", response_model=HealthOut, summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@health.get("/readyz", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
async def readyz(request: Request) -> Response:
    """Keys loaded and valid, directory verified, NATS connected (else ``503``)."""
    agent = request.app.state.agent
    if not isinstance(agent, Agent):
        body = {"ready": False, "keys": False, "directory": False, "nats": False}
        return JSONResponse(body, status_code=503)
    state = agent.readiness()
    out = ReadyOut(
        ready=state.ready,
        keys=state.keys,
        directory=state.directory,
        nats=state.nats,
        outbox_blocked=state.outbox_blocked,
    )
    return JSONResponse(out.model_dump(), status_code=200 if state.ready else 503)


@health.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (low-cardinality labels only)."""
    agent = request.app.state.agent
    if not isinstance(agent, Agent):
        return Response(b"", media_type="text/plain")
    data, content_type = agent.metrics.render()
    return Response(data, media_type=content_type)


# -- application -------------------------------------------------------------------------------


def _document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the event bodies' JSON Schemas and the decline body."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        clash = _COMPONENTS.keys() & schemas.keys()
        if clash:  # a model named like an event type or an Avro named type
            raise RuntimeError(f"OpenAPI component names used twice: {sorted(clash)}")
        schemas.update(_COMPONENTS)
        schemas["DeclineIn"] = DeclineIn.model_json_schema()
        _problems_as_problem_json(document)
        decline = document["paths"]["/v1/inbox/{event_id}/decline"]["post"]
        decline["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DeclineIn"}}},
        }
        app.openapi_schema = document
    return app.openapi_schema


def _problems_as_problem_json(document: dict[str, Any]) -> None:
    """Document error bodies under the media type they are sent with (problem+json)."""
    problem = {"$ref": "#/components/schemas/Problem"}
    for operations in document["paths"].values():
        for operation in operations.values():
            for status, answer in operation.get("responses", {}).items():
                content = answer.get("content", {})
                if status.startswith(("4", "5")) and PROBLEM_JSON in content:
                    if content.get("application/json", {}).get("schema") == problem:
                        del content["application/json"]
                    content[PROBLEM_JSON] = {"schema": problem}


def create_app(agent: Agent | None, *, token: bytes | None, max_body: int = 256 * 1024) -> FastAPI:
    """The API of ``agent`` (``None``: only for the OpenAPI document)."""
    app = FastAPI(
        title="relais partner agent",
        version=API_VERSION,
        summary="Submit events, read the inbox, acknowledge: the local API of a relais agent.",
        description=_DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,  # a mistyped path is a 404 problem, not a redirect
    )
    app.state.agent = agent
    app.state.token = token
    app.state.max_body = max_body
    install_handlers(app)
    app.include_router(events)
    app.include_router(inbox)
    app.include_router(health)
    app.openapi = lambda: _document(app)  # type: ignore[method-assign]
    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the API (committed as ``docs/openapi.json``)."""
    return create_app(None, token=None).openapi()
