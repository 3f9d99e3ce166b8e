"""uvicorn's HTTP/1.1 protocol with the two bounds it lacks (as of uvicorn 0.55): a deadline for a
request's headers, and a cap on open connections.

uvicorn times out only an idle keep-alive connection; one that sends its headers a byte at a time, or
never finishes them, is held for ever, and enough of them use up the process's open files (then even
/health goes unanswered). Here every connection must complete a request's headers within
`header_timeout` seconds of opening (or of its previous answer), and one that would pass `max_connections`
open ones is closed at once (uvicorn's `limit_concurrency` only answers 503 to a connection's request,
once its headers are in, so it bounds neither). The body has its own deadline in the app
(sdrun.serve.body_limit).
"""

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class BoundedH11Protocol(H11Protocol):
    """Set `header_timeout` and `max_connections` on a subclass (`bounded_protocol`); uvicorn builds one
    instance per connection from its config."""

    header_timeout: float
    max_connections: int
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            transport.close()  # before uvicorn counts it: the file is freed at once
            return
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.transport is not None:  # not when connection_made refused it
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # The headers are in once h11 has a request; a body sent after the answer (a route that did
        # not read it) keeps the deadline, so that it cannot trickle in for ever either.
        if self.conn.their_state is not h11.IDLE and self._in_request():
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self._in_request() and not self.transport.is_closing():
            self.transport.close()


def bounded_protocol(header_timeout: float, max_connections: int) -> type[BoundedH11Protocol]:
    """The protocol class to give uvicorn (`Config(http=...)`)."""
    return type(
        "SdrunH11Protocol",
        (BoundedH11Protocol,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )
