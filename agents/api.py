"""The agent's local HTTP API (FastAPI), for the partner's information system.

Every route but ``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json`` requires
``Authorization: Bearer <token>`` (the token file of the settings); the API listens on
loopback unless told otherwise. Errors are ``application/problem+json`` (RFC 9457) with a
stable ``reason`` code and, for invalid input, the offending field names (never values)::

    POST /v1/events/{event_type}        submit (JSON; Idempotency-Key honoured) -> 202
    GET  /v1/events/{event_id}          state of a submitted event
    GET  /v1/inbox?state=&after=&limit= received events, decrypted on read
    GET  /v1/inbox/{event_id}           one received event, decrypted
    POST /v1/inbox/{event_id}/take-charge          -> signed TAKEN_IN_CHARGE receipt
    POST /v1/inbox/{event_id}/decline   {"reason"} -> signed DECLINED receipt
    GET  /v1/notices?after=&limit=      rejections and escalation notices

A submission is answered ``202`` once sealed and durable in the outbox (it is published in
the background); the answer holds the event id and the recipients the rules gave. The body
is capped (``max_body_bytes``) while it is read, before any parsing.
"""

from __future__ import annotations

import hmac
import json
import uuid
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from relais.agents.models import InboxState
from relais.agents.runtime import DECLINE_REASONS, Agent
from relais.agents.views import item_json, notice_json, sent_json, submission_json
from relais.schemas.domain import EVENT_TYPES
from relais.schemas.errors import (
    EnvelopeError,
    PayloadError,
    Reason,
    RelaisError,
    RoutingError,
    SchemaError,
)

__all__ = ["API_VERSION", "ApiProblem", "create_app", "openapi_document"]

API_VERSION: Final = "1.0.0"
PROBLEM_JSON: Final = "application/problem+json"
_EVENT_TYPE_NAMES: Final = sorted(t.value for t in EVENT_TYPES)
_TITLES: Final = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_IDEMPOTENCY_KEY_PATTERN: Final = r"^[\x21-\x7e]{1,255}$"

Priority = Literal["FLASH", "URGENT", "ROUTINE"]


# -- documented shapes -------------------------------------------------------------------------


class ProblemField(BaseModel):
    """One invalid field: its name or path, and what is wrong (never its value)."""

    field: str
    problem: str


class Problem(BaseModel):
    """RFC 9457 problem details, with the relais reason code."""

    type: str
    title: str
    status: int
    detail: str | None = None
    reason: str
    errors: list[ProblemField] = Field(default_factory=list)


class SubmissionOut(BaseModel):
    """The event id and the routing decision the event was sealed with."""

    event_id: uuid.UUID
    event_type: str
    priority: Priority
    recipients: list[str]
    fallback: list[str]
    rule: str
    triage: bool


class SentEventOut(SubmissionOut):
    """A submitted event and where it stands."""

    state: Literal["queued", "published", "rejected", "escalated"]
    reason: str | None
    created_at: str | None
    published_at: str | None


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
    """A rejection of an event sent from here, or an escalation notice (metadata only)."""

    notice_id: str
    kind: Literal["rejection", "escalation_notice"]
    event_id: str
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


# -- problems ----------------------------------------------------------------------------------


class ApiProblem(Exception):
    """An error answered as problem+json."""

    def __init__(
        self,
        status: int,
        reason: Reason | str,
        detail: str | None = None,
        errors: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(detail or str(reason))
        self.status = status
        self.reason = str(reason)
        self.detail = detail
        self.errors = errors or []

    def response(self) -> JSONResponse:
        """The problem+json response."""
        body = {
            "type": f"urn:relais:problem:{self.reason.lower()}",
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            "reason": self.reason,
            "errors": [{"field": f, "problem": p} for f, p in self.errors],
        }
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, media_type=PROBLEM_JSON, headers=headers)


def _field_problems(fields: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for text in fields:
        name, _, rest = text.partition(" (")
        out.append((name, rest.rstrip(")") or "does not fit the schema"))
    return out


def problem_for(exc: RelaisError) -> ApiProblem:
    """The HTTP problem for a relais error."""
    reason = exc.reason
    if isinstance(exc, PayloadError):
        return ApiProblem(422, reason, "invalid fields", _field_problems(exc.fields))
    if isinstance(exc, SchemaError):
        return ApiProblem(
            422, Reason.UNKNOWN_TYPE, "unknown event type", [("event_type", "unknown")]
        )
    if isinstance(exc, RoutingError):
        status = 403 if reason is Reason.SENDER_NOT_ALLOWED else 409
        return ApiProblem(status, reason, str(exc))
    if isinstance(exc, EnvelopeError):
        if reason is Reason.OVERSIZE:
            return ApiProblem(422, reason, "the sealed event is too large", [("body", "too large")])
        return ApiProblem(503, reason, "this partner's key is not valid in the directory")
    if reason is Reason.UNKNOWN_EVENT:
        return ApiProblem(404, reason, "no such event")
    if reason is Reason.STATE_CONFLICT:
        return ApiProblem(409, reason, str(exc))
    if reason in (Reason.NOT_READY, Reason.STORE_FAILED):
        return ApiProblem(503, reason, "the agent is not ready")
    return ApiProblem(500, reason, "internal error")


async def _on_problem(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiProblem):
        return exc.response()
    return ApiProblem(500, "INTERNAL").response()


async def _on_relais_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RelaisError):
        return problem_for(exc).response()
    return ApiProblem(500, "INTERNAL").response()


async def _on_validation(request: Request, exc: Exception) -> Response:
    errors: list[tuple[str, str]] = []
    reason = Reason.INVALID_PAYLOAD
    if isinstance(exc, RequestValidationError):
        for err in exc.errors():
            loc = [
                str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")
            ]
            errors.append((".".join(loc) or "body", str(err.get("type", "invalid"))))
    return ApiProblem(422, reason, "invalid request", errors).response()


async def _on_http(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    return ApiProblem(status, "HTTP_" + str(status), _TITLES.get(status)).response()


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
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiProblem(415, Reason.INVALID_PAYLOAD, "send application/json")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise ApiProblem(422, Reason.OVERSIZE, "body too large", [("body", "too large")])
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ApiProblem(422, Reason.OVERSIZE, "body too large", [("body", "too large")])
        chunks.append(chunk)
    try:
        value = json.loads(
            b"".join(chunks),
            object_pairs_hook=_unique_members,
            parse_constant=_no_constant,
        )
    except (ValueError, RecursionError) as exc:
        raise ApiProblem(422, Reason.INVALID_PAYLOAD, "not JSON", [("body", "not JSON")]) from exc
    if not isinstance(value, dict):
        raise ApiProblem(422, Reason.INVALID_PAYLOAD, "not an object", [("body", "not an object")])
    return value


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("duplicate member")
    return members


def _no_constant(text: str) -> Any:
    raise ValueError("NaN and infinities are not JSON")


# -- routes ------------------------------------------------------------------------------------

events = APIRouter(prefix="/v1/events", tags=["events"], dependencies=[Depends(_authorised)])
inbox = APIRouter(prefix="/v1", tags=["inbox"], dependencies=[Depends(_authorised)])
health = APIRouter(tags=["health"])

_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "description": (
            "The event as JSON, per its Avro schema (relais schemas): ISO 8601 dates and"
            " times, base64 bytes."
        ),
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


@events.post(
    "/{event_type}",
    status_code=202,
    response_model=SubmissionOut,
    responses={**_ERRORS, 403: _ERRORS[409], 415: _ERRORS[409]},
    openapi_extra=_SUBMIT_BODY,
    summary="Submit an event",
)
async def submit_event(
    request: Request,
    agent: AgentDep,
    event_type: Annotated[str, Path(json_schema_extra={"enum": _EVENT_TYPE_NAMES})],
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", pattern=_IDEMPOTENCY_KEY_PATTERN)
    ] = None,
) -> Response:
    """Validate, route, seal and queue an event; answered once durable (``202``)."""
    body = await _read_json_object(request, request.app.state.max_body)
    sub = await agent.submit(event_type, body, idempotency_key=idempotency_key)
    headers = {"Location": f"/v1/events/{sub.event_id}"}
    if sub.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(submission_json(sub), status_code=202, headers=headers)


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
    after: Annotated[int, Query(ge=0, description="Cursor: the last item seen.")] = 0,
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
async def decline(agent: AgentDep, event_id: EventIdPath, payload: DeclineIn) -> Response:
    """Record that the partner declines the event; a signed receipt follows."""
    await agent.decline(event_id, payload.reason)
    body = {"event_id": str(event_id), "state": "declined", "decline_reason": payload.reason}
    return JSONResponse(body, status_code=202)


@inbox.get("/notices", response_model=NoticePage, responses=_ERRORS, summary="Notices")
async def list_notices(
    agent: AgentDep,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Response:
    """Rejections of events sent from here and escalation notices, oldest first."""
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
    body = {"ready": state.ready, "keys": state.keys, "directory": state.directory}
    body["nats"] = state.nats
    return JSONResponse(body, status_code=200 if state.ready else 503)


@health.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (low-cardinality labels only)."""
    agent = request.app.state.agent
    if not isinstance(agent, Agent):
        return Response(b"", media_type="text/plain")
    data, content_type = agent.metrics.render()
    return Response(data, media_type=content_type)


# -- application -------------------------------------------------------------------------------


def create_app(agent: Agent | None, *, token: bytes | None, max_body: int = 256 * 1024) -> FastAPI:
    """The API of ``agent`` (``None``: only for the OpenAPI document)."""
    app = FastAPI(
        title="relais partner agent",
        version=API_VERSION,
        summary="Submit events, read the inbox, acknowledge: the local API of a relais agent.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.agent = agent
    app.state.token = token
    app.state.max_body = max_body
    app.add_exception_handler(ApiProblem, _on_problem)
    app.add_exception_handler(RelaisError, _on_relais_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.include_router(events)
    app.include_router(inbox)
    app.include_router(health)
    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the API (committed as ``docs/openapi.json``)."""
    return create_app(None, token=None).openapi()
