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


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/images/generations", {"size": "2048x2048", "n": 16, "steps": 150}),
        ("/sdapi/v1/txt2img", {"width": 2048, "height": 2048, "batch_size": 16, "steps": 150}),
    ],
    ids=["openai", "a1111"],
)
def test_work_above_the_servers_bound_is_refused(route: str, body: dict, server_url: str) -> None:
    """The issue's request (4.5 minutes a step on a CPU, 150 steps, 16 images) within every other limit:
    400 before it is queued, saying the bound and what to ask instead."""
    answer = httpx.post(f"{server_url}{route}", json={"prompt": PROMPT, **body}, timeout=30)
    assert answer.status_code == 400, answer.text
    assert "above the limit of 1,600" in answer.text and "fewer images or a smaller size" in answer.text
    assert httpx.get(f"{server_url}/health").json()["jobs"] == 0


PASS_SECONDS = 1.0


@pytest.fixture(scope="module")
def sequential_url(served_folder) -> Iterator[str]:
    """A server whose guidance runs as two UNet passes a step (--low-memory)."""
    from serve_helpers import config_for, live_server

    with live_server(config_for(served_folder, low_memory=True)) as url:
        yield url


@pytest.fixture
def slow_passes(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, int], threading.Event]:
    """UNet passes of PASS_SECONDS, counted with the VAE decodes; the event is set as the first begins."""
    from sdrun.networks import UNetGraph, VaeDecoderGraph

    counts = {"unet": 0, "vae": 0}
    entered = threading.Event()
    predict, decode = UNetGraph.predict, VaeDecoderGraph.decode

    def slow_predict(*args: Any, **kwargs: Any) -> Any:
        counts["unet"] += 1
        entered.set()
        time.sleep(PASS_SECONDS)
        return predict(*args, **kwargs)

    def counted_decode(*args: Any, **kwargs: Any) -> Any:
        counts["vae"] += 1
        return decode(*args, **kwargs)

    monkeypatch.setattr(UNetGraph, "predict", slow_predict)
    monkeypatch.setattr(VaeDecoderGraph, "decode", counted_decode)
    return counts, entered


def test_interrupt_stops_within_one_unet_pass(sequential_url: str, slow_passes) -> None:
    counts, entered = slow_passes
    body = {"prompt": PROMPT, "steps": 3, "cfg_scale": 7, "seed": 1}
    answers: list[httpx.Response] = []
    sent = threading.Thread(
        target=lambda: answers.append(httpx.post(f"{sequential_url}/sdapi/v1/txt2img", json=body, timeout=60))
    )
    sent.start()
    assert entered.wait(30)
    httpx.post(f"{sequential_url}/sdapi/v1/interrupt", timeout=10)
    sent.join(60)
    assert answers and answers[0].status_code == 200, answers
    assert len(answers[0].json()["images"]) == 1
    assert counts == {"unet": 1, "vae": 1}  # the first step's second pass never ran


def test_a_departed_clients_job_stops_within_one_unet_pass(sequential_url: str, slow_passes) -> None:
    import json
    import socket
    from urllib.parse import urlsplit

    counts, entered = slow_passes
    address = urlsplit(sequential_url)
    payload = json.dumps({"prompt": PROMPT, "steps": 3, "guidance_scale": 7, "seed": 1}).encode()
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        assert entered.wait(30)
    deadline = time.monotonic() + 10 * PASS_SECONDS
    while httpx.get(f"{sequential_url}/health").json()["jobs"]:
        assert time.monotonic() < deadline, "the job outlived its client"
        time.sleep(0.05)
    assert counts == {"unet": 1, "vae": 0}  # no second pass, nothing decoded for nobody
