"""ASGI middleware bounding a request's body: 413 from its Content-Length before anything is read, 413 as
soon as a body without one (or lying about it) passes the bound while it streams in, and 408 when it has
not all arrived `timeout` seconds after its headers (a client sending a byte now and then would otherwise
hold its connection, and the route reading it, for ever)."""

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdrun.serve.errors import error_response


def _too_large(max_bytes: int) -> HTTPException:
    return HTTPException(413, f"the request body is larger than the {max_bytes:,} bytes this server takes")


def _too_slow(timeout: float) -> HTTPException:
    # Connection: close, so that uvicorn does not go on reading the rest of the slow body.
    return HTTPException(
        408,
        f"the request body did not arrive within {timeout:g} s: send it faster, or a smaller one",
        headers={"Connection": "close"},
    )


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

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
        complete = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout

        async def bounded_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body, receive waits for a disconnect for as long as the job runs
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                # Raised inside the route's body reading, so that the app's one error handler answers.
                raise _too_slow(self.timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _too_large(self.max_bytes)
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        await self.app(scope, bounded_receive, send)
