"""A bounded burst against a small queue, and a client that leaves: every request answered at once with an
image or 429 (never a 5xx, never another request's image), the server serving normally after, and a
departed client's job cancelled at its next step."""

import json
import re
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from serve_helpers import PROMPT, config_for, decode, live_server

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

CLIENTS = 24
QUEUE = 4
STEPS = 6


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def _metric(text: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(f"{name}{{{label_text}}}" if labels else name) + r" ([0-9.e+-]+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def test_a_burst_gets_images_or_429_and_the_server_serves_after(
    served_folder: Path, library_pixels: Callable[..., np.ndarray]
) -> None:
    with live_server(config_for(served_folder, queue_depth=QUEUE)) as url:

        def ask(seed: int) -> tuple[int, httpx.Response]:
            body = {"prompt": PROMPT, "seed": seed, "steps": STEPS}
            return seed, httpx.post(f"{url}/v1/images/generations", json=body, timeout=60)

        resident_before = _resident_bytes()
        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(ask, range(100, 100 + CLIENTS)))
        assert time.monotonic() - started < 60
        statuses = [response.status_code for _, response in answers]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= QUEUE + 1 and statuses.count(429) >= 1, statuses
        for seed, response in answers:
            if response.status_code == 429:
                assert int(response.headers["Retry-After"]) >= 1
                assert response.json()["error"]["type"] == "rate_limit_error"
            else:  # its own seed's picture, once
                (image,) = response.json()["data"]
                np.testing.assert_array_equal(decode(image["b64_json"]), library_pixels(seed, steps=STEPS))
        # Jobs run one at a time: the burst adds no more than a few buffers to the server's memory.
        assert _resident_bytes() - resident_before < 200 * 2**20

        after = httpx.post(f"{url}/v1/images/generations", json={"prompt": PROMPT, "seed": 1, "steps": 2})
        assert after.status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
        route = "/v1/images/generations"
        assert _metric(metrics, "sdrun_requests_total", route=route, status="200") == statuses.count(200) + 1
        assert _metric(metrics, "sdrun_requests_total", route=route, status="429") == statuses.count(429)
        assert _metric(metrics, "sdrun_image_seconds_count") == statuses.count(200) + 1
        assert _metric(metrics, "sdrun_queue_depth", model=served_folder.name) == 0


def test_a_client_that_disconnects_has_its_job_cancelled(served_folder: Path) -> None:
    with live_server(config_for(served_folder)) as url:
        # 16 images of 150 steps: tens of seconds unless the job stops when its client leaves.
        body = json.dumps({"prompt": PROMPT, "seed": 1, "steps": 150, "n": 16}).encode()
        address = urlsplit(url)
        with socket.create_connection((address.hostname, address.port)) as connection:
            connection.sendall(
                b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            deadline = time.monotonic() + 10
            while httpx.get(f"{url}/sdapi/v1/progress").json()["state"]["sampling_step"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        left = time.monotonic()
        while httpx.get(f"{url}/health").json()["jobs"]:
            assert time.monotonic() - left < 5, "the job went on after its client left"
            time.sleep(0.05)
        metrics = httpx.get(f"{url}/metrics").text
        assert _metric(metrics, "sdrun_requests_total", route="/v1/images/generations", status="499") == 1
        assert (
            httpx.post(f"{url}/v1/images/generations", json={"prompt": PROMPT, "steps": 2}).status_code == 200
        )
