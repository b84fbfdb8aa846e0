"""Problems: how the agent's HTTP API answers what it refuses (RFC 9457 problem+json).

Every answer that is not a success is one JSON object::

    {"type": "urn:relais:problem:<reason>", "title": ..., "status": 422, "detail": ...,
     "reason": "INVALID_PAYLOAD",
     "errors": [{"field": "child.birth_date", "code": "NOT_A_DATE", "problem": "..."}]}

``reason`` is a relais :class:`~relais.schemas.errors.Reason` code (or ``HTTP_<status>``
for the framework's own answers, ``INTERNAL`` for the opaque ``500``); ``errors[].code`` is a
stable :class:`~relais.agents.validation.Code`; neither ever carries a submitted value.

:func:`problem_for` maps every relais error to a typed answer: ``4xx`` for the caller's
input, ``503`` when the agent itself cannot serve (not ready, its own key not valid, its
store or broker failing). :class:`Guard` is the last line: any other exception is answered
as an opaque ``500`` and logged as its class only, so no traceback (which would hold the
submitted values) reaches the log, which stays one JSON object per line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import structlog
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relais.agents.validation import Code, ContractError, FieldProblem, safe_name
from relais.schemas.errors import (
    EnvelopeError,
    PayloadError,
    Reason,
    RelaisError,
    RoutingError,
    SchemaError,
)

__all__ = [
    "PROBLEM_JSON",
    "ApiProblem",
    "Guard",
    "Problem",
    "ProblemField",
    "body_too_large",
    "install_handlers",
    "problem_for",
]

PROBLEM_JSON: Final = "application/problem+json"
_TITLES: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# This agent's own key or identity is not valid in the directory: not the caller's fault.
_OWN_KEY_REASONS: Final = frozenset(
    {
        Reason.UNKNOWN_SENDER,
        Reason.UNKNOWN_KEY,
        Reason.REVOKED_KEY,
        Reason.EXPIRED_KEY,
        Reason.KEY_NOT_YET_VALID,
        Reason.REVOKED_PARTNER,
    }
)
_log = structlog.get_logger(__name__)


class ProblemField(BaseModel):
    """One problem: the field's path (``child.birth_date``), a stable code, what is wrong.

    Never the submitted value. ``field`` is ``body`` for the body as a whole and
    ``sections.<name>`` for a secret section no recipient is entitled to.
    """

    field: str
    code: str = Field(json_schema_extra={"enum": [c.value for c in Code]})
    problem: str


class Problem(BaseModel):
    """RFC 9457 problem details, with the relais reason code."""

    type: str
    title: str
    status: int
    detail: str | None = None
    reason: str
    errors: list[ProblemField] = Field(default_factory=list)


class ApiProblem(Exception):
    """An error answered as problem+json (raise it from a route)."""

    def __init__(
        self,
        status: int,
        reason: Reason | str,
        detail: str | None = None,
        problems: Sequence[FieldProblem] = (),
    ) -> None:
        super().__init__(detail or str(reason))
        self.status = status
        self.reason = str(reason)
        self.detail = detail
        self.problems = tuple(problems)

    def response(self) -> JSONResponse:
        """The problem+json response (and its log line: codes only)."""
        body = {
            "type": f"urn:relais:problem:{self.reason.lower()}",
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            "reason": self.reason,
            "errors": [
                {"field": p.path, "code": p.code.value, "problem": p.problem} for p in self.problems
            ],
        }
        _log.info(
            "agent.api_problem",
            status=self.status,
            reason=self.reason,
            codes=sorted({p.code.value for p in self.problems}),
        )
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, media_type=PROBLEM_JSON, headers=headers)


def _field_problems(fields: tuple[str, ...]) -> list[FieldProblem]:
    out = []
    for text in fields:
        name, _, rest = text.partition(" (")
        out.append(FieldProblem(name, Code.DOES_NOT_FIT_SCHEMA, rest.rstrip(")")))
    return out


def body_too_large() -> ApiProblem:
    problem = FieldProblem("body", Code.BODY_TOO_LARGE)
    return ApiProblem(413, Reason.OVERSIZE, "body too large", [problem])


def problem_for(exc: RelaisError) -> ApiProblem:
    """The HTTP problem for a relais error: typed, ``4xx`` unless the agent cannot serve."""
    reason = exc.reason
    if isinstance(exc, ContractError):
        return ApiProblem(422, reason, "invalid request", exc.problems)
    if isinstance(exc, PayloadError):
        if reason is Reason.IDEMPOTENCY_KEY_REUSED:
            problem = FieldProblem("Idempotency-Key", Code.IDEMPOTENCY_KEY_REUSED)
            return ApiProblem(409, reason, "the key was used for another request", [problem])
        return ApiProblem(422, reason, "invalid fields", _field_problems(exc.fields))
    if isinstance(exc, SchemaError):
        problem = FieldProblem("event_type", Code.UNKNOWN_EVENT_TYPE, "unknown")
        return ApiProblem(422, Reason.UNKNOWN_TYPE, "unknown event type", [problem])
    if isinstance(exc, RoutingError):
        status = 403 if reason is Reason.SENDER_NOT_ALLOWED else 409
        return ApiProblem(status, reason, str(exc))
    if isinstance(exc, EnvelopeError):
        if reason is Reason.OVERSIZE:
            return ApiProblem(413, reason, "the sealed event is too large", [])
        if reason in _OWN_KEY_REASONS:
            return ApiProblem(503, reason, "this partner's key is not valid in the directory")
        # a value sealing refused that the contract let through: the caller's input
        return ApiProblem(422, reason, "the event cannot be sealed as given")
    if reason is Reason.UNKNOWN_EVENT:
        return ApiProblem(404, reason, "no such event")
    if reason is Reason.STATE_CONFLICT:
        return ApiProblem(409, reason, str(exc))
    # not ready, store or broker failure, configuration: the agent's state, not the input
    return ApiProblem(503, reason, "the agent cannot serve this request now")


async def _on_problem(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiProblem):
        return exc.response()
    return _opaque(exc)


async def _on_relais_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RelaisError):
        return problem_for(exc).response()
    return _opaque(exc)


_PYDANTIC_CODES: Final = {
    "missing": Code.MISSING,
    "extra_forbidden": Code.UNKNOWN_FIELD,
    "uuid_parsing": Code.NOT_A_UUID,
    "greater_than_equal": Code.BELOW_MINIMUM,
    "greater_than": Code.BELOW_MINIMUM,
    "less_than_equal": Code.ABOVE_MAXIMUM,
    "less_than": Code.ABOVE_MAXIMUM,
    "string_pattern_mismatch": Code.PATTERN_MISMATCH,
    "string_too_long": Code.TOO_LONG,
    "literal_error": Code.NOT_IN_ENUM,
    "enum": Code.NOT_IN_ENUM,
    "json_invalid": Code.NOT_JSON,
    "int_parsing": Code.WRONG_TYPE,
    "int_type": Code.WRONG_TYPE,
    "string_type": Code.WRONG_TYPE,
}


def pydantic_problems(errors: Sequence[Any]) -> list[FieldProblem]:
    """Problems of a pydantic validation (parameters, headers, small bodies), codes mapped."""
    out = []
    for err in errors:
        where = err.get("loc", ())
        # header names are the API's (Idempotency-Key): kept as they are spelled
        loc = [p if where[:1] == ("header",) else safe_name(p) for p in where[1:]]
        if where[:1] not in (("body",), ("query",), ("path",), ("header",)):
            loc = [safe_name(p) for p in where]
        code = _PYDANTIC_CODES.get(str(err.get("type", "")), Code.INVALID_PARAMETER)
        out.append(FieldProblem(".".join(loc) or "body", code))
    return out


async def _on_validation(request: Request, exc: Exception) -> Response:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    problems = pydantic_problems(errors)
    return ApiProblem(422, Reason.INVALID_PAYLOAD, "invalid request", problems).response()


async def _on_http(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    return ApiProblem(status, "HTTP_" + str(status), _TITLES.get(status)).response()


def _opaque(exc: BaseException) -> JSONResponse:
    """An opaque ``500``: logged as its class only (its message may carry a value)."""
    _log.error("agent.api_error", status=500, error=type(exc).__name__)
    body = {
        "type": "urn:relais:problem:internal",
        "title": _TITLES[500],
        "status": 500,
        "detail": None,
        "reason": "INTERNAL",
        "errors": [],
    }
    return JSONResponse(body, status_code=500, media_type=PROBLEM_JSON)


class Guard:
    """Outermost of the application's middleware: no exception escapes to the server.

    Starlette answers an unhandled exception with a text ``500`` and re-raises it, so that
    the server logs its traceback, which holds the submitted values and breaks the
    one-JSON-object-per-line log. Here it is answered as an opaque problem and logged as
    its class; a response already started is ended instead.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001 - the boundary: nothing may escape
            if started:
                _log.error("agent.api_error", status=None, error=type(exc).__name__)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await _opaque(exc)(scope, receive, send)


def install_handlers(app: Any) -> None:
    """Answer every error of ``app`` as a problem (see the module docstring)."""
    app.add_exception_handler(ApiProblem, _on_problem)
    app.add_exception_handler(RelaisError, _on_relais_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_middleware(Guard)
