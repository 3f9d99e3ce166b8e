"""What one request may cost the server: the event loop stays free while a body's images are decoded and
encoded (so /health answers), and the work of one request is bounded before it is queued."""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from PIL import Image
from serve_helpers import PROMPT, init_image, png_b64, png_bytes

httpx = pytest.importorskip("httpx")

# A converted image takes the worker thread this long; /health must answer well within it.
SLOW_SECONDS = 2.0
HEALTH_BOUND_SECONDS = 1.0


@contextmanager
def slowed(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> Iterator[threading.Event]:
    """`owner.name` made SLOW_SECONDS slower; the event is set once a call has begun."""
    original = getattr(owner, name)
    entered = threading.Event()

    def slow(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        time.sleep(SLOW_SECONDS)
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(owner, name, slow)
        yield entered


def _health_while(entered: threading.Event, url: str, send: Callable[[], httpx.Response]) -> float:
    """Seconds /health took while `send`'s request was inside the slowed function; `send` must succeed."""
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(send()), daemon=True)
    thread.start()
    assert entered.wait(30), "the request never reached the slowed function"
    started = time.perf_counter()
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    seconds = time.perf_counter() - started
    thread.join(60)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    return seconds


IMAGE_ROUTES = {
    "a1111 img2img": lambda url: httpx.post(
        f"{url}/sdapi/v1/img2img",
        json={"prompt": PROMPT, "init_images": [png_b64(init_image())], "steps": 2, "seed": 1},
        timeout=60,
    ),
    "openai edits": lambda url: httpx.post(
        f"{url}/v1/images/edits",
        files={"image": ("i.png", png_bytes(init_image()), "image/png")},
        data={"prompt": PROMPT, "steps": "2", "seed": "1"},
        timeout=60,
    ),
}


@pytest.mark.parametrize("route", IMAGE_ROUTES)
def test_health_answers_while_an_init_image_is_opened(
    route: str, server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with slowed(monkeypatch, Image, "open") as entered:
        seconds = _health_while(entered, server_url, lambda: IMAGE_ROUTES[route](server_url))
    assert seconds < HEALTH_BOUND_SECONDS, f"/health took {seconds:.1f} s while {route} opened its image"


@pytest.mark.parametrize(
    "route", ["/v1/images/generations", "/sdapi/v1/txt2img"], ids=["openai generations", "a1111 txt2img"]
)
def test_health_answers_while_pngs_are_encoded(
    route: str, server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with slowed(monkeypatch, Image.Image, "save") as entered:
        send = lambda: httpx.post(  # noqa: E731
            f"{server_url}{route}", json={"prompt": PROMPT, "steps": 2, "seed": 1}, timeout=60
        )
        seconds = _health_while(entered, server_url, send)
    assert seconds < HEALTH_BOUND_SECONDS, f"/health took {seconds:.1f} s while {route} encoded its PNG"
