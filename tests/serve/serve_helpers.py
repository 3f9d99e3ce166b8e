"""What the serve tests share: the prompt, a live uvicorn server on loopback, and PNG decoding."""

import base64
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from sdrun.serve.config import ServeConfig

PROMPT = "a red cube on a blue background"
STARTUP_SECONDS = 20


def config_for(folder: Path, **options: object) -> ServeConfig:
    return ServeConfig(folders=(folder,), provider="cpu", **options)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def live_server(config: ServeConfig) -> Iterator[str]:
    """uvicorn serving the app on 127.0.0.1 in a thread; yields its base URL, stops it after."""
    import uvicorn

    from sdrun.serve.app import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STARTUP_SECONDS)


def decode(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return np.asarray(image.convert("RGB"))


def png_parameters(b64: str) -> str:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return image.text["parameters"]
