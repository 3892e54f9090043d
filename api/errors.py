"""The one error family of the API and the one place its handlers are registered.

Every error response is `{"error": {"code": str, "message": str, "field"?: str}}`. Services raise
`AppError` subclasses; request validation errors become 422 naming the offending field; an
unreachable database or broker is a 503 `service_unavailable` with `Retry-After`, never a 500.

The OpenAPI schema documents these bodies (`ErrorResponse`, `OpenAIErrorResponse`) for every status
a route can answer: routers and routes declare theirs with `error_responses`, and `document_errors`
drops the validation body FastAPI would document otherwise, which no route answers with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu import exceptions as kombu_exc
from pydantic import BaseModel, Field
from redis import exceptions as redis_exc
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from infra.db.outage import is_connection_error

log = logging.getLogger(__name__)


class AppError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field
        self.headers = headers


class BadRequest(AppError):
    status_code = 400
    code = "bad_request"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str = "missing or invalid API key", **kwargs: Any):
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kwargs)


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "unsupported_media_type"


class Unprocessable(AppError):
    status_code = 422
    code = "invalid"


class ServiceUnavailable(AppError):
    status_code = 503
    code = "service_unavailable"


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    return {"error": err}


# OpenAI-compatible routes answer in OpenAI's error shape, a superset of ours (`type` and `param`
# added), and with 400 rather than 422 for an invalid body, as OpenAI's clients expect.
OPENAI_COMPATIBLE_PREFIXES = ("/v1/chat/",)
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error"}


def _openai_compatible(request: Request) -> bool:
    return request.url.path.startswith(OPENAI_COMPATIBLE_PREFIXES)


def openai_error_body(code: str, message: str, field: str | None, status: int) -> dict[str, Any]:
    body = error_body(code, message, field)
    default = "invalid_request_error" if status < 500 else "server_error"
    body["error"].update(type=_OPENAI_TYPES.get(status, default), param=field)
    return body


class FieldProblem(BaseModel):
    field: str | None = Field(description="The offending input, as a dotted path.")
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable reason, e.g. `run_finished`.")
    message: str = Field(description="What went wrong, for a person.")
    field: str | None = Field(None, description="The offending input, as a dotted path.")
    details: list[FieldProblem] | None = Field(
        None, description="Request validation errors only: every problem found, not just the first."
    )


class ErrorResponse(BaseModel):
    """The body of every error response (`error_body`)."""

    error: ErrorDetail


class OpenAIErrorDetail(ErrorDetail):
    type: str = Field(description="OpenAI's error type, e.g. `invalid_request_error`.")
    param: str | None = Field(description="OpenAI's name for `field`.")


class OpenAIErrorResponse(BaseModel):
    """The body of every error response of the OpenAI-compatible routes (`openai_error_body`)."""

    error: OpenAIErrorDetail


_RESPONSE_DESCRIPTIONS = {
    400: "Malformed request: a body that cannot be parsed",
    401: "Missing or invalid API key",
    403: "Not allowed for this key or session (a browser session's change needs its CSRF token)",
    404: "Not found, or not visible to this key",
    409: "Conflicts with the resource's current state",
    413: "Request body over the size limit",
    415: "Unsupported Content-Type",
    422: "Invalid input: `error.field` names it",
    429: "Rate limited: retry after `Retry-After` seconds",
    503: "A service it depends on (database, broker, model) is unavailable: retry later",
    504: "No inference worker answered in time",
}


def error_responses(*statuses: int, openai: bool = False) -> dict[int | str, dict[str, Any]]:
    """FastAPI's `responses=` for these error statuses, with the error body of ours or, for the
    OpenAI-compatible routes, of OpenAI's shape. Routers declare what all their routes can answer,
    routes add their own (404, 409, ...)."""
    model = OpenAIErrorResponse if openai else ErrorResponse
    return {status: {"model": model, "description": _RESPONSE_DESCRIPTIONS[status]} for status in statuses}


def _without_fastapi_validation_body(schema: dict[str, Any]) -> dict[str, Any]:
    fastapi_body = {"$ref": "#/components/schemas/HTTPValidationError"}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            content = responses.get("422", {}).get("content", {})
            if content.get("application/json", {}).get("schema") == fastapi_body:
                del responses["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    return schema


def document_errors(app: FastAPI) -> None:
    """Leave out of the OpenAPI schema the 422 body FastAPI documents on every operation with
    parameters that declares none: the handlers never answer with it (`_validation_error` answers
    with ours, declared by the routers, and with 400 on the OpenAI-compatible routes)."""
    generate = app.openapi
    app.openapi = lambda: _without_fastapi_validation_body(generate())  # type: ignore[method-assign]


def _field_of(loc: Sequence[Any]) -> str | None:
    # ("body", "config", "train", "beta") -> "config.train.beta"; drop the location kind.
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in {"body", "query", "path", "header"} else list(loc)
    return ".".join(str(p) for p in parts) or None


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    if _openai_compatible(request):
        body = openai_error_body(exc.code, exc.message, exc.field, exc.status_code)
    else:
        body = error_body(exc.code, exc.message, exc.field)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = _field_of(first.get("loc", ()))
    message = f"{field}: {first['msg']}" if field else str(first["msg"])
    status = 400 if _openai_compatible(request) else 422
    if status == 400:
        body = openai_error_body("validation_error", message, field, status)
    else:
        body = error_body("validation_error", message, field)
    body["error"]["details"] = [
        {"field": _field_of(e.get("loc", ())), "message": e.get("msg", "")} for e in errors
    ]
    return JSONResponse(body, status_code=status)


def _allowed_methods(request: Request) -> str:
    """The methods some route serves at the request's path (asked of the router, method by method)."""
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
    code = codes.get(exc.status_code, "http_error")
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        # Starlette's Allow names the methods of the first route on the path only; GET and POST
        # /v1/runs are two routes.
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    if _openai_compatible(request):
        body = openai_error_body(code, str(exc.detail), None, exc.status_code)
    else:
        body = error_body(code, str(exc.detail))
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)


# How long a client is told to wait when the database or the broker is unreachable (Retry-After).
RETRY_AFTER_SECONDS = 5
# What an outage raises: the database (a dropped or refused connection, an exhausted pool) and the
# broker (kombu's connection errors, redis' of the event and inference channels).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.DBAPIError,  # only those about the connection, see _unreachable
    sa_exc.TimeoutError,
    kombu_exc.OperationalError,
    redis_exc.ConnectionError,
    redis_exc.TimeoutError,
)


def _unreachable(exc: Exception) -> str | None:
    """The dependency `exc` says is unreachable ("database" or "broker"), or None for other errors."""
    if is_connection_error(exc):
        return "database"
    if isinstance(exc, kombu_exc.OperationalError | redis_exc.ConnectionError | redis_exc.TimeoutError):
        return "broker"
    return None


async def _outage(request: Request, exc: Exception) -> JSONResponse:
    """503 with Retry-After, never a 500, while the database or the broker cannot be reached."""
    what = _unreachable(exc)
    if what is None:
        return await _unhandled(request, exc)
    cause = getattr(exc, "orig", None) or exc
    first_line = (str(cause).strip().splitlines() or [""])[0]  # no SQL, no parameters
    log.warning(
        "%s %s: %s unreachable: %s: %s",
        request.method,
        request.url.path,
        what,
        type(cause).__name__,
        first_line,
    )
    code, message = "service_unavailable", f"the {what} is unreachable; retry later"
    if _openai_compatible(request):
        body = openai_error_body(code, message, None, 503)
    else:
        body = error_body(code, message)
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for error in OUTAGE_ERRORS:
        app.add_exception_handler(error, _outage)
    app.add_exception_handler(Exception, _unhandled)


class TooManyRequests(AppError):
    """A per-key rate limit was reached (api.rate_limits); `Retry-After` says when to try again."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


# OpenAI marks a limit on the request rate with the type "requests" (its clients raise RateLimitError
# on the status alone).
_OPENAI_TYPES[429] = "requests"
