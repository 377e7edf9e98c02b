"""Every error as an RFC 9457 problem document; never a stack trace or a secret."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from emailq.errors import BrokerUnavailable, FieldError, InvalidEmail

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_S = 5  # when the broker is down or full: long enough to fail over or free room
TITLES = {
    400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
    405: "Method not allowed", 409: "Conflict", 413: "Request body too large",
    415: "Unsupported media type", 422: "Invalid request", 429: "Too many requests",
    500: "Internal error", 503: "Service unavailable",
}  # fmt: skip


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors)
        self.headers = headers or {}


def problem_response(
    status: int,
    detail: str,
    errors: Sequence[FieldError] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    title = TITLES.get(status, "Error")
    body: dict[str, Any] = {
        "type": f"https://emailq.dev/problems/{title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": _encodable(detail),
    }
    if errors:
        body["errors"] = [
            {"field": _encodable(e.field), "message": _encodable(e.message)} for e in errors
        ]
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def _encodable(text: str) -> str:
    # Why: a field named by a JSON key may hold an unpaired surrogate (JSON "\ud800"), which
    # the UTF-8 response body cannot; the error would otherwise become a 500.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, error: Problem) -> JSONResponse:
        return problem_response(error.status, error.detail, error.errors, error.headers)

    @app.exception_handler(InvalidEmail)
    async def _invalid(request: Request, error: InvalidEmail) -> JSONResponse:
        return problem_response(422, "the email is not valid", error.errors)

    @app.exception_handler(BrokerUnavailable)
    async def _unavailable(request: Request, error: BrokerUnavailable) -> JSONResponse:
        # A dependency is down or full: the request was fine and may be sent again.
        log.warning("broker unavailable on %s %s: %s", request.method, request.url.path,
                    type(error).__name__)  # fmt: skip
        detail = f"the queue cannot take or answer requests now ({type(error).__name__})"
        return problem_response(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(RequestValidationError)
    async def _request(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            FieldError(".".join(str(p) for p in e["loc"]), str(e["msg"])) for e in error.errors()
        ]
        return problem_response(422, "the request is not valid", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        headers = dict(error.headers) if error.headers else None
        return problem_response(error.status_code, str(error.detail), headers=headers)

    @app.exception_handler(Exception)
    async def _crash(request: Request, error: Exception) -> JSONResponse:
        log.error("unhandled %s on %s %s", type(error).__name__, request.method, request.url.path)
        return problem_response(500, "the server could not handle this request")
