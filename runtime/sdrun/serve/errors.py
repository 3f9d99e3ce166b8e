"""The one place where errors become HTTP answers: the library's error classes, the queue's, validation
and HTTP errors, each to a status and a one-line message, in the JSON shape of the API that was called.

OpenAI routes (/v1/...) answer {"error": {"message", "type", "param", "code"}}, as the `openai` client
reads them; the others answer as the AUTOMATIC1111 API does, {"error": KIND, "detail": MESSAGE}.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from sdrun.errors import (
    GraphOutputError,
    GraphRunError,
    ModelFolderError,
    ProviderError,
    SdrunError,
    SettingsError,
)
from sdrun.serve.jobs import ClientDisconnectedError, QueueFullError, ServerStoppingError

log = logging.getLogger("sdrun.serve")
OPENAI_PREFIX = "/v1/"
# The library's errors: a bad setting is the caller's; a broken folder or a missing provider is the
# server's (503: another replica may be fine); a diverged sampling run is a 500 with the fix in its text.
_LIBRARY_STATUS: tuple[tuple[type[SdrunError], int], ...] = (
    (SettingsError, 400),
    (ServerStoppingError, 503),
    (ModelFolderError, 503),
    (ProviderError, 503),
    (GraphOutputError, 500),
    (GraphRunError, 500),
    (SdrunError, 400),
)
# nginx's "client closed request": logged and counted, never read by the client that left.
CLIENT_CLOSED_STATUS = 499
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
_A1111_KINDS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    408: "RequestTimeout",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    503: "ServiceUnavailable",
}


def error_response(
    path: str, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The error body of the API that `path` belongs to."""
    if path.startswith(OPENAI_PREFIX):
        kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        body: dict = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    else:
        body = {"error": _A1111_KINDS.get(status, "HTTPException"), "detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


def _without_paths(request: Request, message: str) -> str:
    """The message with each served folder's absolute path cut to the folder's name: where the server
    keeps its files is no client's business (the log keeps the whole message)."""
    models = getattr(request.app.state, "models", None)
    for worker in models.workers.values() if models is not None else ():
        path = worker.pipeline.folder.path
        for spelling in dict.fromkeys([str(path.resolve()), str(path)]):
            message = message.replace(spelling, worker.name)
    return message


def _validation_message(errors: list) -> tuple[str, str | None]:
    """The first validation error as "field: what is wrong", and the field's name."""
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    field = ".".join(location) or None
    message = first.get("msg", "invalid value").replace("\n", " ")
    return (f"{field}: {message}" if field else message), field


async def _handle(request: Request, error: Exception) -> JSONResponse:
    path = request.url.path
    if isinstance(error, (RequestValidationError, ValidationError)):
        message, field = _validation_message(error.errors())
        return error_response(path, 400, message, field)
    if isinstance(error, ClientDisconnectedError):
        return error_response(
            path, CLIENT_CLOSED_STATUS, "the client closed the connection; its job was cancelled"
        )
    if isinstance(error, QueueFullError):
        return error_response(path, 429, str(error), headers={"Retry-After": str(error.retry_after)})
    if isinstance(error, HTTPException):
        return error_response(path, error.status_code, str(error.detail), headers=error.headers)
    if isinstance(error, SdrunError):
        status = next(code for kind, code in _LIBRARY_STATUS if isinstance(error, kind))
        if status >= 500:
            log.error("%s: %s", path, error)
        return error_response(path, status, _without_paths(request, str(error)))
    log.exception("unexpected error on %s", path, exc_info=error)
    return error_response(
        path, 500, f"internal error ({type(error).__name__}); the server log has the details"
    )


def install_error_handler(app: FastAPI) -> None:
    for kind in (
        RequestValidationError,
        ValidationError,
        ClientDisconnectedError,
        QueueFullError,
        HTTPException,
        SdrunError,
        Exception,
    ):
        app.add_exception_handler(kind, _handle)
