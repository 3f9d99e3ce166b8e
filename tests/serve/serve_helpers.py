"""What the serve tests share: the prompt, a live uvicorn server on loopback, PNG encoding and decoding, and
an init image with an inpainting mask over its left half."""

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
SIDE = 64
LEFT, RIGHT = slice(0, SIDE // 2), slice(SIDE // 2, SIDE)


# FastAPI's TestClient sends `Host: testserver`, a name the server must be told it answers to.
TEST_HOSTS = ("localhost", "testserver")


def config_for(folder: Path, **options: object) -> ServeConfig:
    return ServeConfig(folders=(folder,), provider="cpu", **{"allowed_hosts": TEST_HOSTS, **options})  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def live_server(config: ServeConfig) -> Iterator[str]:
    """The production server (sdrun.serve.server: its bounds and shutdown) on 127.0.0.1 in a thread; yields
    its base URL, stops it after."""
    from sdrun.serve.app import create_app
    from sdrun.serve.server import bind, build_server

    server = build_server(create_app(config), config, log_level="warning")
    port = free_port()
    sock = bind("127.0.0.1", port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
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
        sock.close()


def decode(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return np.asarray(image.convert("RGB"))


def png_parameters(b64: str) -> str:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return image.text["parameters"]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_b64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


def init_image() -> Image.Image:
    return Image.new("RGB", (SIDE, SIDE), (200, 30, 30))


def left_half_mask() -> Image.Image:
    """The library's kind of mask (white = repaint) over the left half."""
    mask = Image.new("L", (SIDE, SIDE), 0)
    mask.paste(255, (0, 0, SIDE // 2, SIDE))
    return mask


def assert_repainted_only(made: np.ndarray, init: Image.Image, repainted: slice, kept: slice) -> None:
    """The init image's pixels in the `kept` columns, others in the `repainted` ones."""
    start = np.asarray(init)
    np.testing.assert_array_equal(made[:, kept], start[:, kept])
    assert np.abs(made[:, repainted].astype(int) - start[:, repainted]).mean() > 10
