"""Run the app on uvicorn, on one machine: bind the port and load the models before serving (so that a
port in use, a missing folder or two folders of one name are a one-line error, not a traceback from
uvicorn's lifespan), bound slow clients (sdrun.serve.connections), and stop cleanly on SIGTERM or Ctrl-C.

Stopping: uvicorn stops accepting connections; the jobs waiting in the queues are answered 503 at once
(ServerStoppingError, in the API's error shape); the running job has `shutdown_grace_seconds` to finish,
then its request is answered 503 too and the job stops at its next sampler step.
"""

import asyncio
import logging
import socket
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from sdrun.errors import SettingsError
from sdrun.serve.app import create_app, load_models
from sdrun.serve.config import KEEP_ALIVE_SECONDS, MAX_HEADER_BYTES, ServeConfig
from sdrun.serve.connections import bounded_protocol
from sdrun.serve.jobs import Models

log = logging.getLogger("sdrun.serve")
# After the grace, uvicorn waits this much longer for the answers (all 503s by then) before it cancels
# what is left; cancelling would answer a plain-text 500 and log a traceback.
ANSWER_MARGIN_SECONDS = 5


class StoppingServer(uvicorn.Server):
    """uvicorn's server, telling the models when shutdown starts (uvicorn's lifespan shutdown comes only
    after every connection has closed, too late to answer the waiting requests)."""

    def __init__(self, config: uvicorn.Config, models: Callable[[], Models], grace_seconds: float) -> None:
        super().__init__(config)
        self._models = models
        self._grace_seconds = grace_seconds

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        models = self._models()
        models.refuse_waiting()
        asyncio.get_running_loop().call_later(self._grace_seconds, models.abandon_running)
        await super().shutdown(sockets)


def build_server(app: FastAPI, config: ServeConfig, log_level: str = "info") -> StoppingServer:
    """The uvicorn server for `app`, with this config's bounds; `run(sockets=[bind(...)])` serves."""
    uvicorn_config = uvicorn.Config(
        app,
        http=bounded_protocol(config.header_timeout_seconds, config.max_connections),
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=int(config.shutdown_grace_seconds + ANSWER_MARGIN_SECONDS),
    )
    return StoppingServer(uvicorn_config, lambda: app.state.models, config.shutdown_grace_seconds)


def bind(host: str, port: int) -> socket.socket:
    """The listening address, taken before the models load; SettingsError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse the port
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise SettingsError(
            f"cannot listen on {host}:{port} ({error.strerror}): stop what uses the port or pass another "
            "--port, and check --host"
        ) from None
    sock.set_inheritable(True)
    return sock


def serve_forever(config: ServeConfig, host: str, port: int) -> None:
    """Serve until interrupted; our request log replaces uvicorn's access log (same line, plus the job)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sock = bind(host, port)
    try:
        app = create_app(config)
        app.state.models = load_models(config, app.state.metrics)
        # uvicorn names no address when given a socket.
        log.info("serving on http://%s:%d", f"[{host}]" if ":" in host else host, port)
        build_server(app, config).run(sockets=[sock])
    finally:
        sock.close()
