"""Run the app on uvicorn, on one machine."""

import logging

import uvicorn

from sdrun.serve.app import create_app
from sdrun.serve.config import ServeConfig

GRACEFUL_SHUTDOWN_SECONDS = 10


def serve_forever(config: ServeConfig, host: str, port: int) -> None:
    """Serve until interrupted; our request log replaces uvicorn's access log (same line, plus the job)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        access_log=False,
        log_level="info",
        # Requests still waiting when the server is stopped get this long; then their jobs are stopped.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
