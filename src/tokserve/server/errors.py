"""The one place where exceptions become OpenAI error envelopes: HTTP responses before a stream starts, the final
`data: {"error": ...}` event after it did."""

import logging
import traceback
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokserve.errors import (
    AuthenticationFailed,
    BodyTimeout,
    ContextLengthExceeded,
    GenerationFailed,
    HostNotAllowed,
    InvalidRequest,
    LimitExceeded,
    ModelNotFound,
    NotReady,
    Overloaded,
    RequestTooLarge,
    ResponseNotFound,
    TokservError,
)
from tokserve.schemas import Error, ErrorResponse
from tokserve.server.dependencies import state_of
from tokserve.server.metrics import Metrics

logger = logging.getLogger(__name__)

# Looked up along the exception's MRO, so the most specific class wins: (status, type, code).
_KINDS: dict[type[TokservError], tuple[int, str, str | None]] = {
    ContextLengthExceeded: (400, "invalid_request_error", "context_length_exceeded"),
    RequestTooLarge: (413, "invalid_request_error", "request_too_large"),
    BodyTimeout: (408, "invalid_request_error", "request_timeout"),
    LimitExceeded: (400, "invalid_request_error", "limit_exceeded"),
    ModelNotFound: (404, "invalid_request_error", "model_not_found"),
    ResponseNotFound: (404, "invalid_request_error", "response_not_found"),
    HostNotAllowed: (400, "invalid_request_error", "host_not_allowed"),
    InvalidRequest: (400, "invalid_request_error", None),
    AuthenticationFailed: (401, "invalid_request_error", "invalid_api_key"),
    Overloaded: (429, "rate_limit_error", "overloaded"),
    NotReady: (503, "service_unavailable", None),
    GenerationFailed: (500, "server_error", None),
    TokservError: (500, "server_error", None),
}


# An unexpected error is logged with its innermost frames only (where it failed; a RecursionError has a thousand
# alike), cut to this many characters: one request must not be able to flood the log.
_TRACEBACK_FRAMES = 20
_MAX_LOGGED_CHARS = 8_000
_UNEXPECTED = ErrorResponse(error=Error(message="Internal server error.", type="server_error"))


class ClientDisconnected(Exception):
    """The client left before its response started; nobody reads the answer."""


def _kind(error: TokservError) -> tuple[int, str, str | None]:
    for cls in type(error).__mro__:
        if cls in _KINDS:
            return _KINDS[cls]
    raise AssertionError("TokservError is in the table")


def error_response(error: TokservError) -> tuple[int, ErrorResponse]:
    """The status and envelope of a tokserve error."""
    status, kind, code = _kind(error)
    if isinstance(error, NotReady):
        code = error.state
    return status, ErrorResponse(error=Error(message=error.message, type=kind, param=error.param, code=code))


def error_body(error: TokservError, metrics: Metrics) -> ErrorResponse:
    """The error envelope of a failure after the stream started (counted in `metrics`)."""
    return _counted(error_response(error)[1], metrics)


def unexpected_body(metrics: Metrics) -> ErrorResponse:
    """The error envelope of a failure no handler expected, after the stream started (counted in `metrics`)."""
    return _counted(_UNEXPECTED, metrics)


def _counted(body: ErrorResponse, metrics: Metrics) -> ErrorResponse:
    metrics.error(body.error.type, body.error.code)
    return body


def _json(request: Request, status: int, body: ErrorResponse, retry_after: int | None = None) -> JSONResponse:
    state_of(request).metrics.error(body.error.type, body.error.code)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def error_json(request: Request, error: TokservError) -> JSONResponse:
    """The HTTP response of a tokserve error, counted in the metrics; also for middleware that answers itself."""
    status, body = error_response(error)
    if status >= 500 and not isinstance(error, NotReady):
        logger.error("Request failed: %s", error.message)
    return _json(request, status, body, getattr(error, "retry_after", None))


async def _tokserve_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TokservError)
    return error_json(request, exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 `{"detail"}` becomes a 400 envelope naming the first offending field."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return _json(request, 400, _invalid(f"Malformed JSON in the request body: {first['msg']}"))
    path = first.get("ctx", {}).get("param") or _field_path(first["loc"], exc.body)
    message = f"{path or 'body'}: {first['msg']}"
    code = "unsupported_parameter" if first["type"] == "unsupported_parameter" else None
    return _json(request, 400, _invalid(message, path or None, code))


def _field_path(loc: Sequence[int | str], body: Any) -> str:
    """The dotted path of the field at fault, as the client wrote it: `messages.0.content`.

    pydantic's `loc` also names the union member it tried (`messages.0.user.content`); those names are not in the
    body, so following the body drops them. A missing field, the last part, is kept.
    """
    path: list[str] = []
    node = body
    parts = [part for part in loc if part != "body"]
    for position, part in enumerate(parts):
        if _holds(node, part):
            node = node[part]
        elif position < len(parts) - 1 or not isinstance(node, dict):
            continue  # a union member's name
        path.append(str(part))
    return ".".join(path)


def _holds(node: Any, part: int | str) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    response = _json(request, exc.status_code, ErrorResponse(error=Error(message=str(exc.detail), type=kind)))
    response.headers.update(exc.headers or {})  # a 405's Allow
    return response


async def _client_disconnected(request: Request, _: Exception) -> JSONResponse:
    # 499, nginx's "client closed request": only the access log ever sees it.
    return _json(request, 499, _invalid("The client disconnected."))


def log_unexpected(error: BaseException) -> None:
    """Log an error no handler expected, once, with a bounded traceback."""
    text = "".join(traceback.format_exception(error, limit=-_TRACEBACK_FRAMES, chain=False))
    if len(text) > _MAX_LOGGED_CHARS:
        half = _MAX_LOGGED_CHARS // 2
        text = f"{text[:half]}\n[... {len(text) - 2 * half} characters left out ...]\n{text[-half:]}"
    logger.error("Unexpected error: %s", text.rstrip())


class UnexpectedErrors:
    """ASGI middleware: an exception no handler took becomes a 500 envelope (if the response has not started) and
    one bounded log record.

    Not an `Exception` handler: Starlette's ServerErrorMiddleware runs those and then re-raises, so uvicorn logged
    the whole traceback a second time.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_note(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as error:
            log_unexpected(error)
            if not started:  # else the response is cut short, which the client sees
                await _json(Request(scope), 500, _UNEXPECTED)(scope, receive, send)


def _invalid(message: str, param: str | None = None, code: str | None = None) -> ErrorResponse:
    return ErrorResponse(error=Error(message=message, type="invalid_request_error", param=param, code=code))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TokservError, _tokserve_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnected, _client_disconnected)
