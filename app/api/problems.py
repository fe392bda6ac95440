"""One error body for every 4xx and 5xx: RFC 9457 problem details.

Domain errors carry their own status and message. Anything unexpected becomes a 500
with a fixed message and the request id, while the traceback goes to the log.
"""

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.context import current_request_id
from app.errors import (
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMedia,
)

logger = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "https://mms.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"

_STATUS_KINDS: dict[int, type[ServiceError]] = {
    400: MalformedRequest,
    404: NotFound,
    413: PayloadTooLarge,
    415: UnsupportedMedia,
}


def problem_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """Return OpenAPI `responses` documenting each status with the problem-details body."""
    from app.schemas import Problem

    schema = Problem.model_json_schema()
    return {
        status: {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}}}
        for status, description in descriptions.items()
    }


def problem_body(
    status: int, kind: str, title: str, detail: str, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + kind,
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": current_request_id(),
    }
    body.update({key: value for key, value in extra.items() if value is not None})
    return body


def _printable_text(text: str) -> str:
    # A lone surrogate from a JSON \\u escape cannot be encoded as UTF-8 in the response.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def problem_response(error: ServiceError) -> JSONResponse:
    body = problem_body(
        error.status,
        error.kind,
        error.title,
        _printable_text(error.detail),
        field=error.field,
        value=_json_safe(error.value),
        limit=error.limit,
    )
    headers = {}
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse(body, status_code=error.status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _json_safe(value: Any) -> Any:
    """Return `value` in a form that JSON can carry: no NaN or infinity, no lone surrogate."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return _printable_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500:
        logger.warning("request failed with %d: %s", exc.status, exc.detail)
    return problem_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
    detail = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    body = problem_body(422, "invalid-input", "Invalid input", detail, field=field, errors=_json_safe(exc.errors()))
    return JSONResponse(body, status_code=422, media_type=PROBLEM_MEDIA_TYPE)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = _STATUS_KINDS.get(exc.status_code)
    if exc.status_code == 400:
        # Starlette raises a bare 400 when the multipart body cannot be parsed.
        return problem_response(MalformedRequest(f"invalid multipart body: {exc.detail}", field="body"))
    if kind is not None:
        return problem_response(kind(str(exc.detail)))
    body = problem_body(exc.status_code, f"http-{exc.status_code}", str(exc.detail), str(exc.detail))
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers, media_type=PROBLEM_MEDIA_TYPE)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = problem_body(
        500,
        "internal-error",
        "Internal server error",
        "the server failed to process the request; report the request_id to the operator",
    )
    return JSONResponse(body, status_code=500, media_type=PROBLEM_MEDIA_TYPE)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
