"""ASGI middleware bounding a request's body: 413 from its Content-Length before anything is read, and
413 as soon as a body without one (or lying about it) passes the bound while it streams in."""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdrun.serve.errors import error_response


def _too_large(max_bytes: int) -> HTTPException:
    return HTTPException(413, f"the request body is larger than the {max_bytes:,} bytes this server takes")


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            # Refused before the app runs (the error handler is inside it): the same body, built here.
            response = error_response(scope["path"], 413, _too_large(self.max_bytes).detail)
            await response(scope, receive, send)
            return
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body reading, so that the app's one error handler answers.
                    raise _too_large(self.max_bytes)
            return message

        await self.app(scope, bounded_receive, send)
